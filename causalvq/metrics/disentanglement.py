"""Disentanglement metrics (paper §10.4): DCI, MIG, SAP and the FactorVAE score.

Each metric is a pure numpy core over a representation and its ground-truth factors, plus (for FactorVAE and
the whole suite) a thin wrapper that samples points. The cores follow google-research/disentanglement_lib, the
code behind the official implementation's metrics (through nmichlo/disent); every departure is named in the
docstring of the function that makes it.

Axis legend (this module): `n` points, `d` representation dimensions (any float features: the flattened
continuous encoder output, one-hot codes, ...), `f` factors (F), `g` FactorVAE groups, `b` points per group.

- ``codes`` are float `(n, d)` arrays, ``factors`` integer `(n, f)` arrays of factor values (any labels).
- A constant representation dimension is uninformative: it gets zero importance, zero mutual information, the
  SAP score of a constant prediction (as a classifier fitted on it would reach), and is pruned from the FactorVAE
  argmin; no metric returns NaN on it.
- Sampling wrappers take ``sample_fn(n, rng) -> factors (n, f)`` and ``represent_fn(factors) -> codes (n, d)``
  (the representation of the images rendered from those factors) and a ``numpy.random.Generator``.

Scores are in [0, 1], higher is better. DCI's informativeness is the mean classification *accuracy* over
factors, as in disentanglement_lib (Eastwood & Williams report a prediction error instead).

Small samples inflate several scores of wide representations (a tree ensemble fitted on a few hundred points of
thousands of noise dims still concentrates its importance on a few of them), so :func:`noise_baseline` scores a
random representation of the same width at the same sizes: a score means something only well above it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from einops import rearrange

SampleFn = Callable[[int, np.random.Generator], np.ndarray]  # (n, rng) -> int factors (n, f)
RepresentFn = Callable[[np.ndarray], np.ndarray]  # int factors (n, f) -> float codes (n, d)
Importance = Literal["gbt", "extra_trees"]

_CONSTANT_VAR = 1e-12  # a dimension whose variance is at most this is treated as constant
_ENTROPY_EPS = 1e-11  # added to importances before the DCI entropies, as in disentanglement_lib


# --------------------------------------------------------------------------------------------------------------
# input checks and shared helpers
# --------------------------------------------------------------------------------------------------------------


def _check(codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _split(n: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random train/test split of ``n`` points (a fixed split, not the given order: an enumerated
    factor grid in C order would otherwise put whole factor values on one side)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    num_train = int(round(n * train_fraction))
    if not 1 <= num_train <= n - 1:
        raise ValueError(f"{n} points cannot be split into non-empty train and test sets at {train_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[:num_train], perm[num_train:]


def _top_two_gap(matrix: np.ndarray) -> np.ndarray:
    """Per column of a `(d, f)` score matrix: best minus second-best row (second-best 0 when d = 1) `(f,)`."""
    ordered = np.sort(matrix, axis=0)[::-1]  # (d, f), descending
    second = ordered[1] if matrix.shape[0] > 1 else np.zeros(matrix.shape[1])
    return ordered[0] - second


# --------------------------------------------------------------------------------------------------------------
# DCI (Eastwood & Williams 2018)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DCIResult:
    """DCI scores, each in [0, 1]."""

    disentanglement: float  # importance-weighted mean over code dims of 1 - H_f(importance row)
    completeness: float  # importance-weighted mean over factors of 1 - H_d(importance column)
    informativeness_train: float  # mean over factors of the classifier's train accuracy
    informativeness_test: float  # mean over factors of the classifier's test accuracy


def _entropy(p: np.ndarray, base: int, axis: int) -> np.ndarray:
    """Entropy (in the given base) of the non-negative weights along ``axis``, normalised to sum 1."""
    p = p / p.sum(axis=axis, keepdims=True)
    return -(p * np.log(p)).sum(axis=axis) / np.log(base)


def disentanglement_score(importance: np.ndarray) -> float:
    """DCI disentanglement of an importance matrix `(d, f)` (row = code dim, column = factor).

    Each code dim scores 1 minus the entropy (base f) of its importance over factors; the scores are averaged
    with weights proportional to each dim's total importance. A zero matrix scores 0; with one factor every
    dim trivially scores 1.
    """
    return _weighted_specificity(importance, axis=1)


def completeness_score(importance: np.ndarray) -> float:
    """DCI completeness of an importance matrix `(d, f)`: 1 minus the entropy (base d) of each factor's
    importance over code dims, averaged with weights proportional to each factor's total importance.
    A zero matrix scores 0; with one code dim every factor trivially scores 1."""
    return _weighted_specificity(importance, axis=0)


def _weighted_specificity(importance: np.ndarray, axis: int) -> float:
    """Σ (1 − entropy of each row (axis=1) or column (axis=0), base = its length) × its share of the total.

    DCI disentanglement is the row version (code dims over factors), completeness the column version.
    """
    importance = np.abs(np.asarray(importance, dtype=np.float64))
    total = importance.sum()
    if total == 0.0:
        return 0.0
    base = importance.shape[axis]  # number of entries each row/column spreads over
    n = importance.shape[1 - axis]
    scores = np.ones(n) if base == 1 else 1.0 - _entropy(importance + _ENTROPY_EPS, base, axis=axis)
    weights = importance.sum(axis=axis) / total
    return float(np.clip(np.sum(scores * weights), 0.0, 1.0))


def _classifier(importance: Importance, n_estimators: int, seed: int):
    if importance == "gbt":
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(n_estimators=n_estimators, random_state=seed)
    if importance == "extra_trees":
        from sklearn.ensemble import ExtraTreesClassifier

        # every dim is a split candidate (sklearn's sqrt(d) default almost never offers the informative
        # dims of a wide representation); leaves of >= 5 points keep noise dims from collecting importance
        return ExtraTreesClassifier(
            n_estimators=n_estimators, max_features=None, min_samples_leaf=5, random_state=seed, n_jobs=1
        )
    raise ValueError(f"importance must be 'gbt' or 'extra_trees', got {importance!r}")


def dci_importance(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    *,
    importance: Importance = "gbt",
    n_estimators: int = 100,
    seed: int = 0,
) -> tuple[np.ndarray, float, float]:
    """Fit one tree-ensemble classifier per factor and read its feature importances.

    Args:
        codes_train: float `(n_train, d)`; factors_train: int `(n_train, f)` labels 0..K-1.
        codes_test: float `(n_test, d)`; factors_test: int `(n_test, f)` labels 0..K-1.
        importance: ``"gbt"`` (sklearn GradientBoostingClassifier, disentanglement_lib's choice: its defaults
            but ``n_estimators``) or ``"extra_trees"`` (ExtraTreesClassifier over all dims, leaves of >= 5 points:
            random split thresholds, about 10x faster on wide representations; not comparable with published
            DCI). GBT fits one tree per stage and class (one per stage for a two-valued factor), each costing
            about n x d, and more for continuous dims: on one core at n = 500, d = 4096, 27 ms a tree on binary
            dims and 320 ms on standard normal ones, so 100 stages over the 57 classes of Shapes3D take 2.6 or
            31 minutes.
        n_estimators: boosting stages (trees per class) per factor; 100 as disentanglement_lib and disent. Fewer
            stages are a faster setting, not the libraries' DCI: name it where it is reported.
        seed: random state of the classifiers.

    Returns:
        ``(importance (d, f), mean train accuracy, mean test accuracy)``. A factor with a single value in the
        training set has zero importance everywhere and counts as perfectly predicted.
    """
    if importance not in ("gbt", "extra_trees"):
        raise ValueError(f"importance must be 'gbt' or 'extra_trees', got {importance!r}")
    if n_estimators < 1:
        raise ValueError(f"n_estimators must be >= 1, got {n_estimators}")
    d, f = codes_train.shape[1], factors_train.shape[1]
    matrix = np.zeros((d, f))  # (d, f)
    train_acc, test_acc = [], []
    for j in range(f):
        y_train, y_test = factors_train[:, j], factors_test[:, j]
        if np.unique(y_train).size < 2:
            train_acc.append(1.0)
            test_acc.append(float(np.mean(y_test == y_train[0])))
            continue
        model = _classifier(importance, n_estimators, seed)
        model.fit(codes_train, y_train)
        matrix[:, j] = np.abs(model.feature_importances_)
        train_acc.append(float(np.mean(model.predict(codes_train) == y_train)))
        test_acc.append(float(np.mean(model.predict(codes_test) == y_test)))
    return matrix, float(np.mean(train_acc)), float(np.mean(test_acc))


def dci(
    codes: np.ndarray,
    factors: np.ndarray,
    *,
    train_fraction: float = 2 / 3,
    importance: Importance = "gbt",
    n_estimators: int = 100,
    seed: int = 0,
) -> DCIResult:
    """DCI disentanglement, completeness and informativeness (Eastwood & Williams 2018, disentanglement_lib).

    Args:
        codes: float `(n, d)` representation of n points.
        factors: int `(n, f)` ground-truth factor values of the same points.
        train_fraction: share of the points (a seeded random split) used to fit the classifiers; the rest
            measures test accuracy. 2/3 matches the paper's 20·B train / 10·B test points.
        importance: ``"gbt"`` or ``"extra_trees"``, see :func:`dci_importance`.
        n_estimators: boosting stages per factor (100, as disentanglement_lib), see :func:`dci_importance`.
        seed: seed of the split and of the classifiers.
    """
    codes, labels = _check(codes, factors)
    train, test = _split(codes.shape[0], train_fraction, seed)
    matrix, train_acc, test_acc = dci_importance(
        codes[train], labels[train], codes[test], labels[test],
        importance=importance, n_estimators=n_estimators, seed=seed,
    )  # fmt: skip
    return DCIResult(
        disentanglement=disentanglement_score(matrix),
        completeness=completeness_score(matrix),
        informativeness_train=train_acc,
        informativeness_test=test_acc,
    )


# --------------------------------------------------------------------------------------------------------------
# MIG (Chen et al. 2018)
# --------------------------------------------------------------------------------------------------------------


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Bin each code dim into ``num_bins`` equal-width bins over its own range: float `(n, d)` -> int `(n, d)`.

    Same bins as disentanglement_lib's ``np.digitize(x, np.histogram(x, num_bins)[1][:-1])`` (labels 0..B-1
    here instead of 1..B), computed for all dims at once. A constant dim falls entirely in bin 0.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    codes = np.asarray(codes, dtype=np.float64)
    lo, hi = codes.min(axis=0), codes.max(axis=0)  # (d,)
    width = np.where(hi > lo, hi - lo, 1.0)
    bins = np.floor((codes - lo) / width * num_bins).astype(np.int64)  # (n, d)
    return np.clip(bins, 0, num_bins - 1)


def discrete_mutual_info(codes_discrete: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mutual information (nats) between every discrete code dim and every factor.

    Args:
        codes_discrete: int `(n, d)` with values 0..B-1.
        labels: int `(n, f)` with values 0..K-1.

    Returns:
        float `(d, f)`; equals ``sklearn.metrics.mutual_info_score`` per pair, vectorised over dims.
    """
    n, d = codes_discrete.shape
    num_bins = int(codes_discrete.max()) + 1
    flat_codes = (np.arange(d) * num_bins + codes_discrete).reshape(-1)  # (n·d,)
    code_counts = np.bincount(flat_codes, minlength=d * num_bins).reshape(d, num_bins)  # (d, B)
    out = np.zeros((d, labels.shape[1]))  # (d, f)
    for j in range(labels.shape[1]):
        k = int(labels[:, j].max()) + 1
        flat = (np.arange(d) * num_bins * k + codes_discrete * k + labels[:, j, None]).reshape(-1)  # (n·d,)
        joint = np.bincount(flat, minlength=d * num_bins * k).reshape(d, num_bins, k)  # (d, B, K) counts
        factor_counts = np.bincount(labels[:, j], minlength=k)  # (K,)
        outer = code_counts[:, :, None] * factor_counts[None, None, :]  # (d, B, K)
        nz = joint > 0
        terms = np.zeros(joint.shape)
        # ratios of integer counts, so an independent pair (a constant dim) gives log(1) = 0 exactly
        terms[nz] = joint[nz] / n * np.log(joint[nz] * n / outer[nz])
        out[:, j] = np.maximum(terms.sum(axis=(1, 2)), 0.0)
    return out


def _label_entropy(labels: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each factor column of int `(n, f)` labels -> `(f,)`."""
    out = []
    for col in labels.T:
        p = np.bincount(col) / col.size
        p = p[p > 0]
        out.append(float(-(p * np.log(p)).sum()))
    return np.array(out)


def mig(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> float:
    """Mutual information gap (Chen et al. 2018, as in disentanglement_lib's ``discrete_mig``).

    Each code dim is binned into ``num_bins`` histogram bins; per factor, the gap between the two largest
    mutual informations with a code dim is divided by the factor's entropy; the gaps are averaged over
    factors.

    Args:
        codes: float `(n, d)`; factors: int `(n, f)`.
        num_bins: histogram bins per code dim (disentanglement_lib: 20).

    Factors that are constant over the given points (entropy 0, where disentanglement_lib divides by zero)
    are left out of the average; with one code dim the second-largest MI is 0.
    """
    codes, labels = _check(codes, factors)
    mi = discrete_mutual_info(histogram_discretize(codes, num_bins), labels)  # (d, f)
    entropy = _label_entropy(labels)  # (f,)
    keep = entropy > 0
    if not keep.any():
        return 0.0
    gaps = _top_two_gap(mi)[keep] / entropy[keep]  # (f',)
    return float(np.clip(gaps.mean(), 0.0, 1.0))


# --------------------------------------------------------------------------------------------------------------
# SAP (Kumar et al. 2018)
# --------------------------------------------------------------------------------------------------------------


def sap_score_matrix(
    codes: np.ndarray,
    factors: np.ndarray,
    continuous: bool = False,
    *,
    train_fraction: float = 2 / 3,
    seed: int = 0,
) -> np.ndarray:
    """SAP score matrix `(d, f)`: how well each single code dim predicts each factor.

    ``continuous=False`` (disentanglement_lib's default): test accuracy of a ``LinearSVC(C=0.01,
    class_weight="balanced")`` fitted on the one code dim (unscaled, as in disentanglement_lib) over a seeded
    train/test split of the points. A constant code dim is not fitted: it scores the test accuracy of the
    constant prediction of the training majority (ties: the smallest label). disentanglement_lib fits it, and
    the fit predicts one class for every point; with balanced class weights the one-vs-rest problems of a
    constant input differ only by solver tolerance, and the class it settles on is usually the training
    majority (another one where class counts nearly tie). Scoring it 0 instead put every factor's runner-up
    below chance, so that a single noise dim next to five constant ones scored 0.123 (disentanglement_lib:
    0.005).

    ``continuous=True``: squared correlation of the code dim with the factor value over all points; a constant
    dim scores 0, as in disentanglement_lib. Labels are the factor values' ranks.
    """
    codes, labels = _check(codes, factors)
    d, f = codes.shape[1], labels.shape[1]
    constant = codes.var(axis=0) <= _CONSTANT_VAR  # (d,)
    scores = np.zeros((d, f))  # (d, f)
    if continuous:
        zc = codes - codes.mean(axis=0)  # (n, d)
        yc = labels - labels.mean(axis=0)  # (n, f)
        cov = zc.T @ yc / (codes.shape[0] - 1)  # (d, f)
        var_z = zc.var(axis=0, ddof=0) * codes.shape[0] / (codes.shape[0] - 1)  # (d,)
        var_y = yc.var(axis=0, ddof=0) * codes.shape[0] / (codes.shape[0] - 1)  # (f,)
        denom = var_z[:, None] * var_y[None, :]
        ok = (~constant)[:, None] & (denom > 0)
        scores[ok] = (cov**2)[ok] / denom[ok]
        return np.clip(scores, 0.0, 1.0)

    from sklearn.svm import LinearSVC

    train, test = _split(codes.shape[0], train_fraction, seed)
    for j in range(f):
        y_train, y_test = labels[train, j], labels[test, j]
        if np.unique(y_train).size < 2:
            continue  # nothing to classify: no dim is informative about a factor constant in training
        scores[constant, j] = np.mean(y_test == np.bincount(y_train).argmax())  # a constant prediction
        for i in np.flatnonzero(~constant):
            clf = LinearSVC(C=0.01, class_weight="balanced")
            clf.fit(codes[train, i, None], y_train)
            scores[i, j] = np.mean(clf.predict(codes[test, i, None]) == y_test)
    return scores


def sap(
    codes: np.ndarray,
    factors: np.ndarray,
    continuous: bool = False,
    *,
    train_fraction: float = 2 / 3,
    seed: int = 0,
) -> float:
    """SAP score (Kumar et al. 2018): mean over factors of the gap between the two best single-dim scores.

    Args:
        codes: float `(n, d)`; factors: int `(n, f)`.
        continuous: score with squared correlation (True) or with a per-dim LinearSVC's accuracy (False).
        train_fraction, seed: the train/test split of the discrete score, see :func:`sap_score_matrix`.

    The discrete score fits d·f classifiers: the cost grows with the representation size.
    """
    scores = sap_score_matrix(codes, factors, continuous, train_fraction=train_fraction, seed=seed)
    return float(np.clip(_top_two_gap(scores).mean(), 0.0, 1.0))


# --------------------------------------------------------------------------------------------------------------
# FactorVAE score (Kim & Mnih 2018)
# --------------------------------------------------------------------------------------------------------------


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
    return (np.sqrt(global_variances) >= threshold) & (global_variances > _CONSTANT_VAR)


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


def _sample(sample_fn: SampleFn, n: int, rng: np.random.Generator, factor_sizes: Sequence[int]) -> np.ndarray:
    factors = np.asarray(sample_fn(n, rng))
    if factors.shape != (n, len(factor_sizes)):
        raise ValueError(f"sample_fn({n}, rng) must return ({n}, {len(factor_sizes)}), got {factors.shape}")
    return factors


def _represent(represent_fn: RepresentFn, factors: np.ndarray) -> np.ndarray:
    codes = np.asarray(represent_fn(factors), dtype=np.float64)
    if codes.ndim != 2 or codes.shape[0] != factors.shape[0]:
        raise ValueError(f"represent_fn must return ({factors.shape[0]}, d) codes, got {codes.shape}")
    return codes


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

    global_variances = _represent(represent_fn, _sample(sample_fn, num_variance, rng, factor_sizes)).var(
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
            factors = rearrange(_sample(sample_fn, g * batch_size, rng, factor_sizes), "(g b) f -> g b f", g=g).copy()
            factors[np.arange(g), :, fixed] = factors[np.arange(g), 0, fixed][:, None]  # hold k fixed per group
            codes = _represent(represent_fn, rearrange(factors, "g b f -> (g b) f"))  # (g·b, d)
            group_codes = rearrange(codes, "(g b) d -> g b d", g=g)
            chunk, chunk_tied = factor_vae_votes(group_codes, fixed, num_factors, global_variances, active, ties)
            total += chunk
            tied += chunk_tied
        return total

    train_votes = votes(num_train)
    eval_votes = votes(num_eval)
    result = factor_vae_core(train_votes, eval_votes, int(active.sum()), ties)
    return dataclasses.replace(result, tied_votes=tied / (num_train + num_eval))


# --------------------------------------------------------------------------------------------------------------
# the whole suite
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DisentanglementSizes:
    """Sample sizes and classifier settings of :func:`evaluate_representation`.

    The defaults (``"library"``) are disentanglement_lib's sizes for MIG, SAP and FactorVAE, and 100 boosting
    stages for DCI, as disentanglement_lib and disent; DCI runs on fewer points than the libraries' 10,000 +
    5,000: 500 + 250, about the most that fits a few minutes on a 2-core machine for a 4096-dim representation.
    Measured in CPU seconds of one core (2-core machine, Shapes3D's 6 factors and 57 classes, the shipped model's
    4096 one-hot code dims): DCI 154 s at 500 + 250 (1,000 + 500 would take twice as long), SAP 171 s, MIG 3 s,
    FactorVAE about 130 s besides representing its 970,000 images (at 180 images per CPU second, 90 minutes for
    the shipped model). Continuous dims cost DCI about 12 times as much per tree (every value is a split
    candidate): the noise baseline of 4096 dims takes 31 minutes for DCI alone at these sizes.
    ``SIZE_PRESETS`` holds the named settings; :attr:`name` says which one a value is (``"custom"``: none).
    """

    num_train: int = 10_000  # MIG and SAP points (MIG uses only these)
    num_test: int = 5_000  # SAP test points
    dci_num_train: int = 500  # DCI training points: the first of the num_train (at most num_train)
    dci_num_test: int = 250  # DCI test points: the first of the num_test (at most num_test)
    dci_stages: int = 100  # DCI boosting stages per factor (libraries: 100); fewer is a faster setting
    importance: Importance = "gbt"  # DCI classifier: "gbt" as disentanglement_lib, "extra_trees" faster
    factor_vae_train: int = 10_000  # FactorVAE votes fitting its majority-vote classifier
    factor_vae_eval: int = 5_000  # FactorVAE votes scoring it
    group_size: int = 64  # FactorVAE points per vote
    num_variance: int = 10_000  # FactorVAE points for the global variances
    num_bins: int = 20  # MIG histogram bins per code dim

    def __post_init__(self) -> None:
        positive = ("num_train", "num_test", "dci_num_test", "dci_stages", "factor_vae_train", "factor_vae_eval",
                    "num_bins")  # fmt: skip
        if (
            any(getattr(self, k) < 1 for k in positive)
            or min(self.dci_num_train, self.group_size, self.num_variance) < 2
        ):
            raise ValueError(
                f"DisentanglementSizes needs dci_num_train, group_size and num_variance >= 2 and "
                f"every other size >= 1, got {self}"
            )
        if self.dci_num_train > self.num_train or self.dci_num_test > self.num_test:
            raise ValueError(
                f"DCI runs on a subset of the MIG / SAP points: dci_num_train <= num_train and "
                f"dci_num_test <= num_test, got {self}"
            )
        if self.importance not in ("gbt", "extra_trees"):
            raise ValueError(f"DisentanglementSizes.importance must be 'gbt' or 'extra_trees', got {self.importance!r}")

    @property
    def name(self) -> str:
        """The ``SIZE_PRESETS`` name of these settings, or ``"custom"``."""
        return next((name for name, preset in SIZE_PRESETS.items() if preset == self), "custom")

    @classmethod
    def named(cls, name: str, **changes: object) -> DisentanglementSizes:
        """A ``SIZE_PRESETS`` entry with some fields replaced (``changes``: field values)."""
        if name not in SIZE_PRESETS:
            raise ValueError(f"unknown disentanglement sizes {name!r}; named settings: {', '.join(SIZE_PRESETS)}")
        return dataclasses.replace(SIZE_PRESETS[name], **changes)


SIZE_PRESETS: dict[str, DisentanglementSizes] = {
    # disentanglement_lib's sizes (DCI: see DisentanglementSizes); hours for a model on 2 CPU cores
    "library": DisentanglementSizes(),
    # minutes for the CPU model: MIG and SAP on a tenth of the library's points, DCI with 20 stages on 160 + 80 of
    # them, FactorVAE with 160 + 80 votes of 16 points (its cost is rendering: 1,000 images per 256-point votes)
    "cpu": DisentanglementSizes(
        num_train=1000,
        num_test=500,
        dci_num_train=160,
        dci_num_test=80,
        dci_stages=20,
        factor_vae_train=160,
        factor_vae_eval=80,
        group_size=16,
        num_variance=1000,
    ),
}


def evaluate_representation(
    represent_fn: RepresentFn,
    sample_fn: SampleFn,
    factor_sizes: Sequence[int],
    rng: np.random.Generator,
    sizes: DisentanglementSizes = DisentanglementSizes(),
) -> dict[str, float]:
    """DCI, MIG, SAP and FactorVAE of one representation on freshly sampled points (paper §10.4).

    One sample of ``num_train + num_test`` points, split at random in that ratio, serves MIG (on the train
    points), the discrete SAP and DCI (on the first ``dci_num_train`` / ``dci_num_test`` of each side);
    FactorVAE draws its own groups. ``sizes`` defaults to disentanglement_lib's (``SIZE_PRESETS["library"]``).

    Returns:
        ``{"dci.disentanglement", "dci.completeness", "dci.informativeness_train", "dci.informativeness_test",
        "mig", "sap", "factor_vae.train_accuracy", "factor_vae.eval_accuracy", "factor_vae.num_active_dims",
        "factor_vae.tied_votes"}`` as floats.
    """
    n = sizes.num_train + sizes.num_test
    factors = _sample(sample_fn, n, rng, factor_sizes)
    codes = _represent(represent_fn, factors)
    seed = int(rng.integers(2**31))
    fraction = sizes.num_train / n
    train, test = _split(n, fraction, seed)
    dci_points = np.concatenate([train[: sizes.dci_num_train], test[: sizes.dci_num_test]])
    scores = dci(codes[dci_points], factors[dci_points], seed=seed, importance=sizes.importance,
                 train_fraction=sizes.dci_num_train / dci_points.size, n_estimators=sizes.dci_stages)  # fmt: skip
    out = {f"dci.{k}": v for k, v in dataclasses.asdict(scores).items()}
    out["mig"] = mig(codes[train], factors[train], sizes.num_bins)
    out["sap"] = sap(codes, factors, train_fraction=fraction, seed=seed)
    fv = factor_vae(
        sample_fn, factor_sizes, represent_fn, rng, batch_size=sizes.group_size, num_train=sizes.factor_vae_train,
        num_eval=sizes.factor_vae_eval, num_variance=sizes.num_variance,
    )  # fmt: skip
    out.update({f"factor_vae.{k}": float(v) for k, v in dataclasses.asdict(fv).items()})
    return out


def noise_representation(dims: int, rng: np.random.Generator) -> RepresentFn:
    """A random representation: independent standard normal codes `(n, dims)`, fresh from ``rng`` at each call
    and unrelated to the factors."""
    if dims < 1:
        raise ValueError(f"dims must be >= 1, got {dims}")
    return lambda factors: rng.standard_normal((len(factors), dims))


def noise_baseline(
    dims: int,
    sample_fn: SampleFn,
    factor_sizes: Sequence[int],
    rng: np.random.Generator,
    sizes: DisentanglementSizes = DisentanglementSizes(),
) -> dict[str, float]:
    """:func:`evaluate_representation` of :func:`noise_representation` (``dims`` wide) at the same sizes: the
    scores a representation reaches without any information about the factors. A representation's score means
    something only well above its baseline (at a few hundred points, pure noise in thousands of dims scores
    DCI disentanglement above 0.8)."""
    (noise_rng,) = rng.spawn(1)
    return evaluate_representation(noise_representation(dims, noise_rng), sample_fn, factor_sizes, rng, sizes)
