"""Shared inputs of the disentanglement metrics: the checks every core runs, the seeded train/test split, and the
sampling and representation callables of the wrappers.

Axis legend: `n` points, `d` representation dimensions, `f` factors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

SampleFn = Callable[[int, np.random.Generator], np.ndarray]  # (n, rng) -> int factors (n, f)
RepresentFn = Callable[[np.ndarray], np.ndarray]  # int factors (n, f) -> float codes (n, d)
Importance = Literal["gbt", "extra_trees"]

CONSTANT_VAR = 1e-12  # a dimension whose variance is at most this is treated as constant


def check_inputs(codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``codes (n, d)`` to float64 and ``factors (n, f)`` to contiguous labels 0..K-1."""
    codes = np.asarray(codes)
    factors = np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2:
        raise ValueError(f"codes must be (n, d) and factors (n, f); got shapes {codes.shape} and {factors.shape}")
    if codes.shape[0] != factors.shape[0]:
        raise ValueError(f"codes has {codes.shape[0]} points but factors has {factors.shape[0]}")
    if codes.shape[0] < 2 or codes.shape[1] < 1 or factors.shape[1] < 1:
        raise ValueError(f"need at least 2 points, 1 code dim and 1 factor; got {codes.shape}, {factors.shape}")
    if not np.issubdtype(factors.dtype, np.integer):
        raise ValueError(f"factors must hold integer factor values, got dtype {factors.dtype}")
    codes = codes.astype(np.float64)
    if not np.isfinite(codes).all():
        raise ValueError("codes contain NaN or inf")
    labels = np.stack([np.unique(col, return_inverse=True)[1].reshape(-1) for col in factors.T], axis=1)
    return codes, labels  # (n, d), (n, f)


def split_indices(n: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random train/test split of ``n`` points (a fixed split, not the given order: an enumerated
    factor grid in C order would otherwise put whole factor values on one side)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    num_train = int(round(n * train_fraction))
    if not 1 <= num_train <= n - 1:
        raise ValueError(f"{n} points cannot be split into non-empty train and test sets at {train_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[:num_train], perm[num_train:]


def top_two_gap(matrix: np.ndarray) -> np.ndarray:
    """Per column of a `(d, f)` score matrix: best minus second-best row (second-best 0 when d = 1) `(f,)`."""
    ordered = np.sort(matrix, axis=0)[::-1]  # (d, f), descending
    second = ordered[1] if matrix.shape[0] > 1 else np.zeros(matrix.shape[1])
    return ordered[0] - second


def sample_factors(sample_fn: SampleFn, n: int, rng: np.random.Generator, factor_sizes: Sequence[int]) -> np.ndarray:
    factors = np.asarray(sample_fn(n, rng))
    if factors.shape != (n, len(factor_sizes)):
        raise ValueError(f"sample_fn({n}, rng) must return ({n}, {len(factor_sizes)}), got {factors.shape}")
    return factors


def represent(represent_fn: RepresentFn, factors: np.ndarray) -> np.ndarray:
    codes = np.asarray(represent_fn(factors), dtype=np.float64)
    if codes.ndim != 2 or codes.shape[0] != factors.shape[0]:
        raise ValueError(f"represent_fn must return ({factors.shape[0]}, d) codes, got {codes.shape}")
    return codes
