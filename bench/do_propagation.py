"""How far a hard intervention do(node = code) spreads through the shipped checkpoint's no-action graph.

    python bench/do_propagation.py                      # 192 random do() on 64 test images
    python bench/do_propagation.py --checkpoint runs/cpu/model --trials 500

Draws test-split images of procedural shapes3d, sets one random node to one random code with ``model.do`` and
counts the other nodes whose code changed ("followers"). Prints the number of trials with any follower, the mean
and the largest number of followers.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from causalvq import CausalVQ
from causalvq.data import load_dataset, render_images
from causalvq.data.pairs import TransitionSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="assets/causalvq-shapes3d")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--trials", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = CausalVQ.from_pretrained(args.checkpoint).eval()
    cfg = model.config
    dataset = load_dataset("shapes3d", image_size=cfg.image_size)
    rng = np.random.default_rng(args.seed)
    images = render_images(dataset, TransitionSampler(dataset, split="test").sample_images(args.images, rng),
                           cfg.image_size)
    followers = np.zeros(args.trials, dtype=np.int64)
    with torch.no_grad():
        codes = model.encode_codes(images)  # (b, k, h, w)
        for t in range(args.trials):
            i, node, code = t % args.images, int(rng.integers(cfg.num_nodes)), int(rng.integers(cfg.codebook_size))
            changed = model.do(codes[i:i + 1], node, code).changed[0].clone()  # (n,)
            changed[node] = False
            followers[t] = int(changed.sum())
    print(f"{args.checkpoint}: {args.trials} do() on {args.images} test images: {(followers > 0).sum()} with any "
          f"follower, {followers.mean():.3f} followers on average, at most {followers.max()}")


if __name__ == "__main__":
    main()
