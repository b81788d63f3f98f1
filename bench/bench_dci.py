"""Wall time of DCI's classifier fits, serial against one thread per factor fit at once.

``python bench/bench_dci.py [--dims 4096] [--stages 2] [--repeats 2]``

The evaluation's ``cpu`` sizes: 160 training and 80 test points, Shapes3D's six factors (10, 10, 10, 8, 4, 15
values), standard normal codes of ``--dims`` (the encoder representation's width), GBT with ``--stages`` boosting
stages (the evaluation uses 20; 2 keep the bench short). Alternates ``n_jobs = 1`` and ``n_jobs = 2`` in the same
process and checks that both give the same importances.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from causalvq.metrics import dci_importance

SIZES = (10, 10, 10, 8, 4, 15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=4096)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((240, args.dims))
    factors = np.stack([rng.integers(0, s, 240) for s in SIZES], axis=1)
    seen = {}
    for _ in range(args.repeats):
        for jobs in (1, 2):
            start = time.perf_counter()
            matrix, _, _ = dci_importance(codes[:160], factors[:160], codes[160:], factors[160:],
                                          n_estimators=args.stages, n_jobs=jobs)  # fmt: skip
            print(f"n_jobs {jobs}: {time.perf_counter() - start:.1f} s")
            seen.setdefault(jobs, matrix)
    print("same importances:", np.array_equal(seen[1], seen[2]))


if __name__ == "__main__":
    main()
