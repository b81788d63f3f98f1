"""Why the retrieval score stays the official mean over nodes (fidelity table, B6b).

    python bench/ablation_retrieval_score.py [--steps 150]

Trains the transition layer of the small CPU model from scratch on random code grids, cycling base, action and
retrieval batches, once with ``retrieval_score="mean"`` and once with ``"sum"``, and prints the base-mode code
cross-entropy and copy accuracy (uniform guessing: ln 64 = 4.16, accuracy 1/64). With the sum the retrieval loss
is minimised early by making every output uniform and the base task never starts.
"""

from __future__ import annotations

import argparse

import torch

from causalvq import kernels
from causalvq.config import ModelConfig
from causalvq.model import CausalVQ


def run(score: str, steps: int) -> list[tuple[int, float, float]]:
    torch.manual_seed(0)
    # the official graph gradient, as when docs/fidelity.md's B6b figures were measured
    model = CausalVQ(ModelConfig(retrieval_score=score, gated_attention=False)).train()
    opt = torch.optim.Adam(model.transition_parameters(), 2e-3)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for step in range(steps):
        codes = torch.randint(0, 64, (32, 1, 8, 8), generator=gen)
        actions = torch.randint(0, 12, (32,), generator=gen)
        mode = step % 3
        if mode == 0:
            loss = model.base_losses(codes).loss
        elif mode == 1:
            loss = model.transition_losses(codes, codes, actions).loss
        else:
            loss = model.retrieval_losses(codes[:8], codes[:8], actions[:8]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 30 == 29:
            with torch.no_grad():
                base = model.base_losses(codes)
            rows.append((step + 1, base.ce.item(), base.accuracy.item()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)
    kernels.enable()
    results = {score: run(score, args.steps) for score in ("mean", "sum")}
    print("step  | mean: base CE, copy acc | sum: base CE, copy acc")
    for (step, ce_m, acc_m), (_, ce_s, acc_s) in zip(results["mean"], results["sum"]):
        print(f"{step:5d} | {ce_m:8.3f} {acc_m:8.3f}      | {ce_s:8.3f} {acc_s:8.3f}")


if __name__ == "__main__":
    main()
