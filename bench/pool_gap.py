"""How much better a transition layer predicts its training pairs than test pairs: the codes of y it gets right.

    python bench/pool_gap.py --checkpoint runs/pool120/model --pool runs/pool120/stage2_codes.safetensors

Scores the release's deterministic transition (``transition_codes``) on ``--pairs`` pairs of a stage-2 code pool
(``stage2_codes.safetensors`` of a run folder: training-split pairs it was fitted on) and on as many one-step test
pairs of the checkpoint's procedural dataset. Prints the share of y's codes predicted on the nodes the step changes
(overall and per factor) and on the nodes it keeps. A large gap says the layer learns its pool by heart.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from safetensors.torch import load_file

from causalvq.data import render_images
from causalvq.data.pairs import TransitionSampler
from causalvq.explore.checkpoints import find_dataset
from causalvq.model import CausalVQ


def score(model: CausalVQ, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, batch: int = 256) -> str:
    """Codes of y right on changed and kept nodes of pairs ``x, y (b, k, h, w)`` under actions ``a (b,)``."""
    with torch.inference_mode():
        p = torch.cat([model.transition_codes(x[i:i + batch], a[i:i + batch]).codes for i in range(0, len(a), batch)])
    p, x, y = p.flatten(1), x.flatten(1), y.flatten(1)
    changed, right = x != y, p == y
    F = model.num_actions // 2
    per = [f"{name.split()[0]} {right[a % F == f][changed[a % F == f]].float().mean():.3f}"
           for f, name in enumerate(model.action_names[:F])]
    return (f"changed {right[changed].float().mean():.3f}, kept {right[~changed].float().mean():.3f}; "
            f"changed per factor: {', '.join(per)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--pool", required=True, help="stage2_codes.safetensors of the run that trained it")
    parser.add_argument("--pairs", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = CausalVQ.from_pretrained(args.checkpoint).eval()
    pool = load_file(args.pool)
    idx = torch.randperm(len(pool["actions"]), generator=torch.Generator().manual_seed(0))[:args.pairs]
    print("training pool:", score(model, pool["codes_x"][idx].long(), pool["codes_y"][idx].long(),
                                  pool["actions"][idx].long()))
    dataset = find_dataset(model.config)
    if dataset is None:
        raise SystemExit(f"{args.checkpoint}: no procedural dataset matches this checkpoint's factors")
    xf, yf, a = TransitionSampler(dataset, split="test").sample_pairs(args.pairs, np.random.default_rng(7))
    with torch.inference_mode():
        encode = lambda f: torch.cat([model.encode_codes(render_images(dataset, f[i:i + 256], model.config.image_size))  # noqa: E731
                                      for i in range(0, len(f), 256)])
        print("test pairs:   ", score(model, encode(xf), encode(yf), torch.as_tensor(a).long()))


if __name__ == "__main__":
    main()
