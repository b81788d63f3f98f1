"""Why node features use a unit-norm positional encoding (fidelity table, B18).

    python bench/ablation_positional.py [--checkpoint assets/causalvq-shapes3d] [--steps 600] [--pairs 6000]

Encodes shapes3d transition pairs of the train split with the checkpoint's (frozen) image model, then trains a
fresh transition layer on them twice from the same seed, once with the official raw sinusoidal encoding (rows of
norm √(N/2)) and once with rows of norm 1 (``unit_positional``), alternating base and action batches of 32 at
Adam lr 2e-3. Prints, on pairs of the test split in deterministic evaluation mode: the accuracy on the nodes
whose code the action changes, on the other nodes, the no-action copy accuracy, and the intervention mask's
recall of the changed nodes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from causalvq import kernels
from causalvq.data import load_dataset, render_images
from causalvq.data.pairs import TransitionSampler
from causalvq.metrics.evaluation import sample_step_pairs
from causalvq.metrics.scores import move_factors
from causalvq.model import CausalVQ


def encode_pairs(model: CausalVQ, split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat node codes of x and y `(n, L)` and actions `(n,)` of one-step pairs of ``split``."""
    ds = load_dataset("shapes3d", image_size=model.config.image_size)
    x_factors, actions = sample_step_pairs(TransitionSampler(ds, split, seed=0), n, 1, np.random.default_rng(seed))
    y_factors, _ = move_factors(x_factors, actions, 1, ds.factor_sizes)
    size = model.config.image_size

    def encode(factors: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model.flatten_codes(model.encode_codes(render_images(ds, factors[i:i + 512], size)))
                              for i in range(0, len(factors), 512)])

    return encode(x_factors), encode(y_factors), torch.as_tensor(actions)


def run(checkpoint: str, unit: bool, train: tuple, test: tuple, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    image_model = CausalVQ.from_pretrained(checkpoint)
    # the official graph gradient and δ = 0.01, as when docs/fidelity.md's B18 figures were measured
    model = CausalVQ(image_model.config.replace(unit_positional=unit, gated_attention=False, delta=0.01))
    model.load_state_dict({k: v for k, v in image_model.state_dict().items() if not k.startswith("transition.")},
                          strict=False)
    model.train()
    opt = torch.optim.Adam(model.transition_parameters(), 2e-3)
    gen = torch.Generator().manual_seed(0)
    cx, cy, act = train
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(cx), (32,), generator=gen)
        grid = lambda nodes, idx=idx: model.unflatten_codes(nodes[idx])  # noqa: E731
        loss = (model.base_losses(grid(cx)) if step % 3 == 0
                else model.transition_losses(grid(cx), grid(cy), act[idx])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    tx, ty, ta = test
    with torch.no_grad():
        out = model.transition(tx, ta, sample=False)
        copy = model.transition(tx, None, sample=False).probs.argmax(-1)
    pred, changed = out.probs.argmax(-1), tx != ty
    hit = pred == ty
    return {"changed": float(hit[changed].float().mean()), "unchanged": float(hit[~changed].float().mean()),
            "copy": float((copy == tx).float().mean()), "recall": float((out.mask > 0)[changed].float().mean()),
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="assets/causalvq-shapes3d")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels.enable()
    image_model = CausalVQ.from_pretrained(args.checkpoint).eval()
    train = encode_pairs(image_model, "train", args.pairs, seed=1)
    test = encode_pairs(image_model, "test", 1024, seed=2)
    print(f"{args.steps} steps, {args.pairs} train pairs, 1024 test pairs; accuracy in deterministic evaluation")
    print("positional encoding    | changed nodes | unchanged | copy  | mask recall | train s")
    for name, unit in (("raw, norm √(N/2)", False), ("unit norm (B18)", True)):
        r = run(args.checkpoint, unit, train, test, args.steps)
        print(f"{name:22s} | {r['changed']:13.3f} | {r['unchanged']:9.3f} | {r['copy']:.3f} | {r['recall']:11.3f} | "
              f"{r['seconds']:7.0f}")


if __name__ == "__main__":
    main()
