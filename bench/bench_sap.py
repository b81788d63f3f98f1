"""Wall time of the discrete SAP score's LinearSVC fits, in this process against worker processes.

``python bench/bench_sap.py [--dims 2048] [--kind onehot|normal] [--repeats 2]``

The evaluation's ``cpu`` sizes: 1,000 points split 2 : 1, Shapes3D's six factors (10, 10, 10, 8, 4, 15 values).
``--kind onehot``: ``--dims`` binary dims, one-hot codes of 64 nodes whose codes follow the factors with noise
(the ``codes_onehot`` representation); ``normal``: standard normal dims (the ``encoder`` representation's
statistics). Alternates ``n_jobs = 1`` and ``n_jobs = 2`` in the same process and checks that both give the same
matrix. The evaluation fits d·f such classifiers per representation and baseline.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from causalvq.metrics import sap_score_matrix

SIZES = (10, 10, 10, 8, 4, 15)
N = 1000


def representation(kind: str, dims: int, factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal((N, dims))
    nodes, v = 64, max(1, dims // 64)
    # each node's code: a hash of one factor's value, replaced by a random code for a fifth of the points
    codes = (factors[:, np.arange(nodes) % len(SIZES)] * 7 + np.arange(nodes)) % v  # (N, nodes)
    noisy = rng.random((N, nodes)) < 0.2
    codes = np.where(noisy, rng.integers(0, v, (N, nodes)), codes)
    return np.eye(v)[codes].reshape(N, nodes * v)  # (N, nodes·v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--kind", choices=("onehot", "normal"), default="onehot")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(0, s, N) for s in SIZES], axis=1)
    codes = representation(args.kind, args.dims, factors, rng)
    fits = int((codes.var(axis=0) > 0).sum()) * len(SIZES)
    print(f"{args.kind}: {codes.shape[1]} dims, {fits} fits")
    seen = {}
    for _ in range(args.repeats):
        for jobs in (1, 2):
            start = time.perf_counter()
            matrix = sap_score_matrix(codes, factors, n_jobs=jobs)
            print(f"n_jobs {jobs}: {time.perf_counter() - start:.1f} s")
            seen.setdefault(jobs, matrix)
    print("same matrix:", np.array_equal(seen[1], seen[2]))


if __name__ == "__main__":
    main()
