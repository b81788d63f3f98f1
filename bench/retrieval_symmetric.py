"""Would scoring a move from both ends pick the right (action, k) more often? A diagnostic for the reject search.

    python bench/retrieval_symmetric.py [--checkpoint assets/causalvq-shapes3d] [--images 128] [--threads 2]

``causalvq.metrics.reject.search_moves`` scores a move (a, k) by y's node NLL after k steps of a from x. The
backward score is x's NLL after k steps of the opposite action from y; "both" adds the two. On the reject pairs of
the test split (``draw_pairs``, the evaluation's draw), prints how often the closest move is the pair's own, for
one-step and 2-3-step single-factor pairs (no threshold: the search alone), overall and per factor. The backward
search runs one chain set per pair instead of one per image x, so it costs about as many transitions as pairs per x
times the forward search.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from einops import rearrange

from causalvq.data.pairs import TransitionSampler
from causalvq.explore.checkpoints import find_dataset
from causalvq.metrics import reject
from causalvq.model import CausalVQ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="assets/causalvq-shapes3d")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = CausalVQ.from_pretrained(args.checkpoint).eval()
    ds = find_dataset(model.config)
    if ds is None:
        raise SystemExit(f"{args.checkpoint}: no procedural dataset matches this checkpoint's factors")
    K, A, F = reject.STEPS, model.num_actions, ds.num_factors
    pairs = reject.draw_pairs(TransitionSampler(ds, split="test"), args.images, K,
                              np.random.default_rng([0, reject._STREAM]))
    scores = reject.score_pairs(model, ds, pairs, K)
    nodes_x = reject._encode(model, ds, pairs.x, 64)
    single = np.flatnonzero(pairs.kind == reject.SINGLE)
    backward = np.full_like(scores.distances, np.inf)
    with torch.inference_mode():
        for s in range(0, len(single), 8):
            rows = single[s:s + 8]
            out = reject.search_moves(model, scores.targets[rows], nodes_x[torch.from_numpy(pairs.source[rows])], K)
            backward[rows] = out.distances.numpy()
    backward = backward[:, (np.arange(A) + F) % A]  # entry (a, k): y moved k steps by the opposite of a
    own = pairs.action * K + pairs.steps - 1
    one, multi = pairs.steps == 1, np.isin(pairs.steps, (2, 3))
    print(f"{args.checkpoint}: {len(single)} single-factor test pairs from {len(pairs.x)} images")
    for name, d in (("forward", scores.distances), ("backward", backward), ("both", scores.distances + backward)):
        best = rearrange(d, "p a k -> p (a k)").argmin(-1)
        right = best == own
        per = ", ".join(f"{n} {right[multi & (pairs.action % F == f)].mean():.2f}"
                        for f, n in enumerate(ds.factor_names))
        print(f"{name:>8}: closest move is the pair's own: 1 step {right[one].mean():.3f}, 2-3 steps "
              f"{right[multi].mean():.3f} ({per})")


if __name__ == "__main__":
    main()
