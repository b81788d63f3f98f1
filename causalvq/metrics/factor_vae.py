"""The FactorVAE score (Kim & Mnih 2018): how well a majority-vote classifier names the factor held fixed in a
group of points from the representation dimension with the least normalised variance.

Axis legend: `n` points, `d` representation dimensions, `f` factors, `g` groups, `b` points per group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from einops import rearrange

from causalvq.metrics.inputs import CONSTANT_VAR, RepresentFn, SampleFn, represent, sample_factors


@dataclass(frozen=True)
class FactorVAEResult:
    """FactorVAE score: accuracy of the majority-vote classifier from argmin-variance dim to fixed factor."""

    train_accuracy: float  # accuracy on the votes it was fitted on
    eval_accuracy: float  # accuracy on fresh votes: the reported score (chance ≈ 1/f)
    num_active_dims: int  # code dims kept after pruning
    tied_votes: float = 0.0  # share of the votes whose lowest normalised variance several dims shared


def prune_dims(global_variances: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Active-dim mask `(d,)`: global std at least ``threshold`` (disentanglement_lib's ``prune_dims``, set to
    0.05 in its metric configs) and variance above ``1e-12``, so that a constant dim never divides by zero
    even with ``threshold=0``. The threshold is absolute: rescale codes whose natural scale is far from 1."""
    global_variances = np.asarray(global_variances, dtype=np.float64)
    return (np.sqrt(global_variances) >= threshold) & (global_variances > CONSTANT_VAR)


def _argbest(values: np.ndarray, rng: np.random.Generator | None, lowest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `(r, c)` values: the column of the lowest (or highest) value and whether several columns share
    it `(r,)`, `(r,)`. Ties go to a column drawn uniformly among the tied ones, or to the first with ``rng=None``
    (numpy's argmin / argmax, as disentanglement_lib)."""
    best = values.min(axis=1, keepdims=True) if lowest else values.max(axis=1, keepdims=True)
    tied = values == best  # (r, c)
    several = tied.sum(axis=1) > 1  # (r,)
    if rng is None:
        return tied.argmax(axis=1), several
    return np.where(tied, rng.random(values.shape), -1.0).argmax(axis=1), several


def factor_vae_votes(
    group_codes: np.ndarray,
    fixed_factors: np.ndarray,
    num_factors: int,
    global_variances: np.ndarray,
    active: np.ndarray,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, int]:
    """Votes of g groups, each a batch of points that share the value of one factor.

    Args:
        group_codes: float `(g, b, d)`, the representation of each group's b points.
        fixed_factors: int `(g,)`, the factor held fixed in each group.
        num_factors: f.
        global_variances: float `(d,)` variance of each dim over the whole data.
        active: bool `(d,)` mask from :func:`prune_dims`; must not be empty.
        rng: breaks ties of the lowest normalised variance at random; ``None`` takes the first tied dim, as
            disentanglement_lib's ``np.argmin`` (then the score depends on the order of the dims).

    Returns:
        ``(votes, tied)``: int `(f, d)`, entry ``[k, i]`` counting the groups with factor k fixed whose lowest
        normalised variance (local variance / global variance, over active dims) is in dim i; and how many of
        the g groups had that lowest value in several dims (exact ties: discrete codes, such as one-hot dims
        that stay constant within a group).
    """
    group_codes = np.asarray(group_codes, dtype=np.float64)
    fixed_factors = np.asarray(fixed_factors)
    if group_codes.ndim != 3 or group_codes.shape[1] < 2:
        raise ValueError(f"group_codes must be (g, b >= 2, d), got {group_codes.shape}")
    if not active.any():
        raise ValueError("no active dims: every dim is below the pruning threshold")
    local = group_codes.var(axis=1, ddof=1)  # (g, d)
    cols = np.flatnonzero(active)  # (d',)
    lowest, tied = _argbest(local[:, cols] / global_variances[cols], rng, lowest=True)  # (g,), (g,)
    votes = np.zeros((num_factors, group_codes.shape[2]), dtype=np.int64)  # (f, d)
    np.add.at(votes, (fixed_factors, cols[lowest]), 1)
    return votes, int(tied.sum())


def factor_vae_core(
    train_votes: np.ndarray,
    eval_votes: np.ndarray,
    num_active_dims: int,
    rng: np.random.Generator | None = None,
) -> FactorVAEResult:
    """Majority-vote classifier: each code dim predicts the factor that most often had its lowest variance in
    ``train_votes (f, d)``; accuracies on ``train_votes`` and ``eval_votes (f, d)``. No votes score 0.

    A dim whose training votes tie between factors (a dim no training group chose ties between all f) predicts
    one of them drawn with ``rng``, or the first with ``rng=None`` (disentanglement_lib's ``np.argmax``).
    """
    classifier, _ = _argbest(train_votes.T, rng, lowest=False)  # (d,) the factor each dim votes for
    dims = np.arange(train_votes.shape[1])

    def accuracy(votes: np.ndarray) -> float:
        total = votes.sum()
        return float(votes[classifier, dims].sum() / total) if total > 0 else 0.0

    return FactorVAEResult(accuracy(train_votes), accuracy(eval_votes), int(num_active_dims))


def factor_vae(
    sample_fn: SampleFn,
    factor_sizes: Sequence[int],
    represent_fn: RepresentFn,
    rng: np.random.Generator,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    num_variance: int = 10_000,
    prune_threshold: float = 0.05,
    points_per_call: int = 4096,
) -> FactorVAEResult:
    """FactorVAE score (Kim & Mnih 2018), sampling as disentanglement_lib does (its sizes are the defaults).

    Global variances come from ``num_variance`` sampled points; dims with a global std below
    ``prune_threshold`` are dropped. Each vote draws a factor k, samples ``batch_size`` points, sets factor k
    of all of them to the first point's value, and records (k, argmin over active dims of local / global
    variance). ``num_train`` votes fit the majority-vote classifier, ``num_eval`` fresh votes score it.

    Ties are broken at random, with a generator spawned from ``rng`` (so the draws of points do not depend on
    them): the dim of a vote whose lowest normalised variance several dims share, and the factor of a dim whose
    training votes tie. disentanglement_lib takes the first dim instead, which makes the score of discrete codes
    depend on the order of the dims (on one-hot codes, where most groups tie, a permutation of the dims moved it
    between 0.19 and 0.33). The share of tied votes is reported as ``tied_votes``: where it is large, the score
    says little about the representation.

    Args:
        sample_fn: ``(n, rng) -> int (n, f)`` factor values.
        factor_sizes: values per factor `(f,)`. Factors with a single value are never held fixed (fixing them
            is no event); disentanglement_lib draws k among all factors.
        represent_fn: ``int (n, f) -> float (n, d)``, the representation of the points with these factors.
        rng: source of all randomness.
        batch_size: points per group (b); disentanglement_lib: 64.
        num_train, num_eval: votes (groups) for fitting and for scoring; disentanglement_lib: 10,000 and 5,000.
        num_variance: points for the global variance estimate; disentanglement_lib: 10,000.
        prune_threshold: see :func:`prune_dims`.
        points_per_call: groups are represented in chunks of about this many points per ``represent_fn`` call.

    ``represent_fn`` sees (num_train + num_eval) x batch_size + num_variance points: 970,000 at the defaults.
    """
    if batch_size < 2 or num_train < 1 or num_eval < 1 or num_variance < 2:
        raise ValueError("need batch_size >= 2, num_train >= 1, num_eval >= 1 and num_variance >= 2")
    sizes = np.asarray(factor_sizes)
    movable = np.flatnonzero(sizes > 1)
    if movable.size == 0:
        raise ValueError(f"every factor has a single value: {tuple(factor_sizes)}")
    num_factors = sizes.size
    (ties,) = rng.spawn(1)

    global_variances = represent(represent_fn, sample_factors(sample_fn, num_variance, rng, factor_sizes)).var(
        axis=0, ddof=1
    )  # (d,)
    active = prune_dims(global_variances, prune_threshold)
    if not active.any():
        return FactorVAEResult(0.0, 0.0, 0)

    groups_per_call = max(1, points_per_call // batch_size)
    tied = 0

    def votes(num_groups: int) -> np.ndarray:
        nonlocal tied
        total = np.zeros((num_factors, global_variances.size), dtype=np.int64)  # (f, d)
        for start in range(0, num_groups, groups_per_call):
            g = min(groups_per_call, num_groups - start)
            fixed = rng.choice(movable, size=g)  # (g,)
            drawn = sample_factors(sample_fn, g * batch_size, rng, factor_sizes)  # (g·b, f)
            factors = rearrange(drawn, "(g b) f -> g b f", g=g).copy()
            factors[np.arange(g), :, fixed] = factors[np.arange(g), 0, fixed][:, None]  # hold k fixed per group
            codes = represent(represent_fn, rearrange(factors, "g b f -> (g b) f"))  # (g·b, d)
            group_codes = rearrange(codes, "(g b) d -> g b d", g=g)
            chunk, chunk_tied = factor_vae_votes(group_codes, fixed, num_factors, global_variances, active, ties)
            total += chunk
            tied += chunk_tied
        return total

    train_votes = votes(num_train)
    eval_votes = votes(num_eval)
    result = factor_vae_core(train_votes, eval_votes, int(active.sum()), ties)
    return dataclasses.replace(result, tied_votes=tied / (num_train + num_eval))
