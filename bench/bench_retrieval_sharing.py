"""One-pair action retrieval, model side: the A passes sharing what they have in common against one dense pass
per action, in the same process, on dataset pairs of a checkpoint.

    python bench/bench_retrieval_sharing.py                               # the shipped checkpoint
    python bench/bench_retrieval_sharing.py --checkpoint runs/x/model --pairs 32 --repeats 5
    python bench/bench_retrieval_sharing.py --torch        # plain torch instead of the fused kernel

Both paths score the A actions of one pair (deterministic, no gradients) and give the same scores (checked).
"shared" is what ``CausalVQ.retrieve_action_codes`` runs (``CausalTransition._shared_passes``: the no-action pass
once, then per action only the rows its intervention rewires and their children); "dense" is one batched pass of
the A copies computing every row. Each pair is timed alternately on both paths; the figures are medians over
pairs of the best of ``--repeats``, in wall time and in this process's CPU time (steadier on a shared machine).
The mask size and the rows the shared passes recompute are printed beside them: the saving follows them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from causalvq import kernels
from causalvq.data import render_images
from causalvq.data.pairs import TransitionSampler
from causalvq.explore.checkpoints import SHIPPED_CHECKPOINT, find_dataset
from causalvq.model import CausalVQ


def _best(fn, repeats: int) -> tuple[float, float]:
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return min(wall) * 1e3, min(cpu) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torch", action="store_true", help="plain torch (default: the fused kernel, as the app)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernel = not args.torch and kernels.enable()
    model = CausalVQ.from_pretrained(args.checkpoint).eval()
    cfg = model.config
    dataset = find_dataset(cfg)
    if dataset is None:
        raise SystemExit(f"{args.checkpoint}: no procedural dataset matches this checkpoint's factors")
    x_f, _, _ = TransitionSampler(dataset, split="test").sample_pairs(args.pairs, np.random.default_rng(0))
    with torch.inference_mode():
        cx = model.flatten_codes(model.encode_codes(render_images(dataset, x_f, cfg.image_size)))
    A = cfg.num_actions
    actions = torch.arange(A)
    tr = model.transition
    rows, sizes, rows_shared, rows_dense = [], [], [], []
    with torch.inference_mode():
        for i in range(args.pairs):
            codes = cx[i:i + 1]
            shared = lambda codes=codes: tr(codes, actions, sample=False, copies=A)  # noqa: E731
            dense = lambda codes=codes: tr(codes.repeat_interleave(A, 0), actions, sample=False)  # noqa: E731
            a, b = shared(), dense()
            if not torch.allclose(a.probs, b.probs, atol=1e-5):
                raise SystemExit(f"pair {i}: the two paths disagree by {(a.probs - b.probs).abs().max():.2e}")
            rows_shared.append(_best(shared, args.repeats))
            rows_dense.append(_best(dense, args.repeats))
            sizes.append(a.mask.sum(1).float().mean().item())
            fed = (a.graph.transpose(1, 2).bool() & a.mask.bool()[:, None, :]).any(-1) | a.mask.bool()
            rows.append(fed.sum(1).float().mean().item())
    med = lambda xs, j: statistics.median(x[j] for x in xs)  # noqa: E731
    print(f"checkpoint {args.checkpoint.name}: {args.pairs} test pairs, {A} actions, {cfg.num_nodes} nodes, "
          f"{args.threads} thread(s), {'fused kernel' if kernel else 'plain torch'}")
    print(f"mask size per action pass: {statistics.mean(sizes):.1f} nodes; intervened or fed by them: "
          f"{statistics.mean(rows):.1f} of {cfg.num_nodes}")
    for j, unit in ((0, "wall"), (1, "CPU")):
        s, d = med(rows_shared, j), med(rows_dense, j)
        print(f"one-pair retrieval, {unit} ms: shared {s:.1f}, dense {d:.1f}, dense / shared {d / s:.2f}×")


if __name__ == "__main__":
    main()
