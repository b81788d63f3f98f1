"""Where the transition gets the codes of a step's kept nodes wrong: inside the mask or outside it.

    python bench/kept_codes.py [--checkpoint assets/causalvq-shapes3d] [--pairs 512] [--seed 1]

A one-step test pair (x, a, y) keeps node i when c^x_i = c^y_i. Outside the mask the prediction is the head
"unchanged"; inside it the head "intervened by a" (B21-B24 decide the mask, B29 trains that head on every node).
Prints, for kept nodes outside and inside the deterministic mask, how many there are and the share whose predicted
code is y's, and the same for the nodes the step changes. Only the checkpoint's own dataset (procedural) is used.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from causalvq.data import render_images
from causalvq.data.pairs import TransitionSampler
from causalvq.explore.checkpoints import find_dataset
from causalvq.model import CausalVQ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="assets/causalvq-shapes3d")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    model = CausalVQ.from_pretrained(args.checkpoint).eval()
    cfg = model.config
    dataset = find_dataset(cfg)
    if dataset is None:
        raise SystemExit(f"{args.checkpoint}: no procedural dataset matches this checkpoint's factors")
    x_f, y_f, actions = TransitionSampler(dataset, split="test").sample_pairs(args.pairs,
                                                                             np.random.default_rng(args.seed))
    with torch.inference_mode():
        cx = model.encode_codes(render_images(dataset, x_f, cfg.image_size))
        cy = model.encode_codes(render_images(dataset, y_f, cfg.image_size))
        t = model.transition_codes(cx, torch.as_tensor(actions))
    fx, fy, fp = (model.flatten_codes(c) for c in (cx, cy, t.codes))
    kept, mask, right = fx == fy, t.mask, fp == fy
    print(f"{args.checkpoint}: {args.pairs} one-step test pairs, {cfg.num_nodes} nodes each")
    for name, sel in (("kept, outside the mask", kept & ~mask), ("kept, inside the mask", kept & mask),
                      ("kept, all", kept), ("changed, outside the mask", ~kept & ~mask),
                      ("changed, inside the mask", ~kept & mask), ("changed, all", ~kept)):
        share = right[sel].float().mean().item() if sel.any() else float("nan")
        print(f"{name:>26}: {int(sel.sum()):6d} nodes, y's code predicted on {share:.3f}")


if __name__ == "__main__":
    main()
