"""CPU time of the disentanglement section's chance column: the "unrelated" baseline (the representation of images
unrelated to the factors asked, the default) against the "noise" one (standard normal codes as wide), per
representation of a checkpoint, at the recipes' ``cpu`` sizes, in the same process.

    python bench/bench_baseline.py                                     # the shipped checkpoint, both representations
    python bench/bench_baseline.py --checkpoint runs/x/model --representation codes_onehot

Each line is one ``evaluate_representation`` (DCI, MIG, SAP, FactorVAE) in this process's CPU seconds, with its DCI
disentanglement and FactorVAE accuracy beside it. The representation itself is timed too: a baseline that costs
about as much as the representation is what "unrelated" aims at; gradient-boosted trees on thousands of continuous
dims are what makes "noise" slow for one-hot codes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from causalvq.data.pairs import TransitionSampler
from causalvq.explore.checkpoints import SHIPPED_CHECKPOINT, find_dataset
from causalvq.metrics.disentanglement import (
    SIZE_PRESETS,
    evaluate_representation,
    noise_baseline,
    unrelated_baseline,
)
from causalvq.metrics.evaluation import REPRESENTATIONS, representation_dims, representation_fn
from causalvq.model import CausalVQ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    parser.add_argument("--representation", nargs="+", default=list(REPRESENTATIONS), choices=list(REPRESENTATIONS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = CausalVQ.from_pretrained(args.checkpoint).eval()
    dataset = find_dataset(model.config)
    sampler = TransitionSampler(dataset, split="test")
    sizes, factor_sizes = SIZE_PRESETS["cpu"], tuple(dataset.factor_sizes)
    for name in args.representation:
        represent = representation_fn(model, dataset, name)
        dims = representation_dims(model.config, name)
        sample, rng = sampler.sample_images, np.random.default_rng
        timed(name, dims, "representation",
              lambda: evaluate_representation(represent, sample, factor_sizes, rng(args.seed), sizes))  # noqa: B023
        timed(name, dims, "unrelated",
              lambda: unrelated_baseline(represent, sample, factor_sizes, rng(args.seed + 1), sizes))  # noqa: B023
        timed(name, dims, "noise",
              lambda: noise_baseline(dims, sample, factor_sizes, rng(args.seed + 1), sizes))  # noqa: B023


def timed(name: str, dims: int, label: str, run) -> None:
    """Run one evaluation now and print its CPU seconds and two of its scores."""
    start = time.process_time()
    scores = run()
    print(f"{name:>13} ({dims} dims)  {label:>14}: {time.process_time() - start:6.1f} CPU s   DCI disent. "
          f"{scores['dci.disentanglement']:.3f}   FactorVAE {scores['factor_vae.eval_accuracy']:.3f}", flush=True)

if __name__ == "__main__":
    main()
