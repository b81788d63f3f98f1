"""Which edges of a checkpoint's graph carry its interventions: the no-action discoverer's or the actions'.

    python bench/edge_carriers.py                                   # the shipped checkpoint, recipe cpu
    python bench/edge_carriers.py --checkpoint runs/s3s/model --recipe cpu

On the one- and three-step test pairs of ``python -m train evaluate`` (the same draws: seed ``eval.seed``, the
intervention stream), prints
- the in-edges of the deterministic action-mode graph (probability > 0.5, self-loops excluded) per intervened node,
  which its action's discoverer gives (the rewired in-edges), and per kept node, which the no-action discoverer
  gives;
- intervention accuracy at 1 and 3 steps with every edge, then with the no-action discoverer's edge probabilities
  set to 0, the action discoverers', and both.
A discoverer whose edges can be removed at no cost carries nothing the intervention uses.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from causalvq import CausalVQ
from causalvq.data import render_images
from causalvq.metrics.evaluation import _STREAMS, evaluate_intervention, sample_step_pairs
from train.data import make_sampler, open_dataset
from train.recipes import load_recipe


@contextmanager
def without_edges(model: CausalVQ, which: str) -> Iterator[None]:
    """Within the block, the discoverers named by ``which`` ("no-action", "action", "both" or "none") give
    probability 0 to every edge."""
    removed = {"none": (), "no-action": (True,), "action": (False,), "both": (True, False)}[which]  # no-action?
    discoverers = model.transition.discoverers
    forward = discoverers.forward

    def drop(P: torch.Tensor, index: torch.Tensor | int, *args, **kwargs) -> torch.Tensor:
        probs = forward(P, index, *args, **kwargs)
        no_action = isinstance(index, int) and index == 0  # discoverer 0; the action ones come as a tensor or > 0
        return torch.zeros_like(probs) if no_action in removed else probs

    discoverers.forward = drop
    try:
        yield
    finally:
        del discoverers.forward  # back to the class's method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="assets/causalvq-shapes3d")
    parser.add_argument("--recipe", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = CausalVQ.from_pretrained(args.checkpoint).eval()
    recipe = load_recipe(args.recipe)
    dataset = open_dataset(recipe.data)
    sampler = make_sampler(dataset, recipe.data, "test")
    rng = np.random.default_rng([recipe.eval.seed, _STREAMS["intervention"]])
    pairs = {k: sample_step_pairs(sampler, recipe.eval.num_pairs, k, rng) for k in (1, 2, 3)}  # the eval's draws

    x, actions = pairs[1]
    with torch.inference_mode():
        nodes = model.transition.node_features(model.flatten_codes(model.encode_codes(
            render_images(dataset, x, model.config.image_size))))
        probs, mask, _ = model.transition.edges(nodes, torch.as_tensor(actions), sample=False)
        n = probs.shape[-1]
        in_edges = ((probs > 0.5) & ~torch.eye(n, dtype=torch.bool)).sum(1).float()  # (b, n): per target
        intervened = mask > 0.5
    print(f"{args.checkpoint}: {len(x)} one-step pairs, {intervened.sum(1).float().mean():.1f} intervened nodes a pair")
    print(f"  in-edges per intervened node {in_edges[intervened].mean():.2f} (rewired), per kept node "
          f"{in_edges[~intervened].mean():.2f} (no-action discoverer); mean over nodes {in_edges.mean():.2f}")
    for which in ("none", "no-action", "action", "both"):
        with without_edges(model, which):
            scores = [evaluate_intervention(model, dataset, *pairs[k], k, recipe.eval.batch_size) for k in (1, 3)]
        per_factor = ", ".join(f"{f} {v:.3f}" for f, v in scores[0].per_factor_accuracy.items())
        print(f"  edges removed: {which:9s} intervention 1 / 3 steps {scores[0].accuracy:.3f} / "
              f"{scores[1].accuracy:.3f}  (1 step: {per_factor})")


if __name__ == "__main__":
    main()
