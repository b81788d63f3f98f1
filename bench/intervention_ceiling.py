"""How high can intervention accuracy go with this image model? The score of a perfect transition layer.

    python bench/intervention_ceiling.py [--checkpoint assets/causalvq-shapes3d] [--pairs 512] [--steps 1 3]

Intervention accuracy (``causalvq.metrics.evaluation.evaluate_intervention``) decodes the predicted codes of y and
asks whether the image is strictly nearest (pixel MSE) to the true y among x and every k-step neighbour of x. A
transition layer that predicted every code of y exactly would still be judged on ``decode(encode(y))``, the image
model's own rendering of y: when a step moves few pixels, that rendering can be nearer to a neighbour than to y.
This prints, on the test split with the evaluation's pair draw, per factor:

- **ceiling**: the prediction is ``decode(encode(y))`` (every code right);
- **copy**: the prediction is ``decode(encode(x))`` (no code moved), the floor of a layer that learned nothing.

Only the image model is used, so a stage-1 checkpoint is enough.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from causalvq.data import load_dataset, render_images
from causalvq.data.pairs import TransitionSampler
from causalvq.metrics.evaluation import _STREAMS, sample_step_pairs
from causalvq.metrics.scores import move_factors, nearest_candidate
from causalvq.model import CausalVQ


def hits(model: CausalVQ, dataset, x_factors: np.ndarray, actions: np.ndarray, steps: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    sizes, s = tuple(dataset.factor_sizes), model.config.image_size
    b = len(x_factors)
    moved, valid = zip(*(move_factors(x_factors, np.full(b, a), steps, sizes) for a in range(2 * len(sizes))))
    cand = np.stack([x_factors, *moved], 1)  # (b, m, f)
    cand_valid = torch.from_numpy(np.stack([np.ones(b, dtype=bool), *valid], 1))
    target = torch.as_tensor(actions, dtype=torch.long) + 1
    out = {"ceiling": [], "copy": []}
    with torch.no_grad():
        for i in range(0, b, 64):
            f = cand[i:i + 64]
            safe = np.where(cand_valid[i:i + 64, :, None].numpy(), f, f[:, :1])  # invalid candidates: any image
            images = render_images(dataset, safe.reshape(-1, f.shape[-1]), s).unflatten(0, f.shape[:2])
            rows, t = torch.arange(len(f)), target[i:i + 64]
            x, y = images[:, 0], images[rows, t]
            for name, source in (("ceiling", y), ("copy", x)):
                pred = model.decode_codes(model.encode_codes(source))
                out[name].append(nearest_candidate(pred, images, cand_valid[i:i + 64], t).hit)
    return {k: torch.cat(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="assets/causalvq-shapes3d")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = CausalVQ.from_pretrained(args.checkpoint).eval()
    dataset = load_dataset("shapes3d")
    sampler = TransitionSampler(dataset, split="test")
    rng = np.random.default_rng([args.seed, _STREAMS["intervention"]])
    names = tuple(dataset.factor_names)
    print(f"{args.checkpoint}: {model.config.image_size} px, {args.pairs} test pairs per k")
    for k in args.steps:
        x_factors, actions = sample_step_pairs(sampler, args.pairs, k, rng)
        h = hits(model, dataset, x_factors, actions, k)
        factor = torch.as_tensor(actions) % len(names)
        for name, hit in h.items():
            per = ", ".join(f"{n} {hit[factor == f].float().mean():.2f}" for f, n in enumerate(names))
            print(f"k = {k}  {name:>7}: {hit.float().mean():.3f}   ({per})")


if __name__ == "__main__":
    main()
