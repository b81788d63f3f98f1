"""Rendering throughput and memory of the procedural datasets, and of the pair stream that feeds training.

``python bench/bench_data.py [--images 20000] [--batch 256]``

Prints images/s at 64×64 for shapes3d and dsprites, cold (a fresh dataset: includes the lazy geometry / sprite
caches) and warm (caches filled), the pair stream's pairs/s at 32 px, Python-heap peaks (tracemalloc) and the
process's peak RSS. Random factor vectors, batches of ``--batch``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc

import numpy as np
import torch

from causalvq.data import load_dataset
from causalvq.data.pairs import TransitionSampler
from causalvq.data.streams import PairStream


def _render_rate(ds, factors: np.ndarray, batch: int) -> tuple[float, float]:
    """Images per wall-clock second and per CPU second (the latter is robust to other jobs on the machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(factors), batch):
        ds.render(factors[i:i + batch])
    return len(factors) / (time.perf_counter() - wall), len(factors) / (time.process_time() - cpu)


def bench_dataset(name: str, n: int, batch: int) -> None:
    factors = load_dataset(name).sample_factors(n, np.random.default_rng(0))
    tracemalloc.start()
    ds = load_dataset(name)
    cold = _render_rate(ds, factors, batch)
    _, peak_cold = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    warm = _render_rate(ds, factors, batch)
    _, peak_warm = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{name:9s} 64x64  cold {cold[0]:8,.0f} img/s ({cold[1]:8,.0f} per CPU-s)   "
          f"warm {warm[0]:8,.0f} img/s ({warm[1]:8,.0f} per CPU-s)   "
          f"heap peak cold {peak_cold / 2**20:5.1f} MiB, warm {peak_warm / 2**20:5.1f} MiB")


def bench_stream(n: int, batch: int) -> None:
    ds = load_dataset("shapes3d")
    ds.render(ds.sample_factors(4000, np.random.default_rng(1)))  # fill most of the geometry cache
    stream = PairStream(ds, TransitionSampler(ds), size=n, image_size=32, batch_size=batch)
    start = time.perf_counter()
    pairs = sum(b["x"].shape[0] for b in stream)
    rate = pairs / (time.perf_counter() - start)
    print(f"PairStream shapes3d -> 32 px float: {rate:,.0f} pairs/s (x and y rendered and converted; n={n})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000, help="images rendered per measurement")
    parser.add_argument("--batch", type=int, default=256, help="images per render call")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"numpy {np.__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; n={args.images}, batch={args.batch}")
    for name in ("shapes3d", "dsprites"):
        bench_dataset(name, args.images, args.batch)
    bench_stream(args.images // 2, args.batch)
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
