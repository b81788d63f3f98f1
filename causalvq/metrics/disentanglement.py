"""Disentanglement metrics (paper §10.4): MIG and SAP here, DCI (``causalvq.metrics.dci``) and the FactorVAE
score (``causalvq.metrics.factor_vae``) in their own modules, and the whole suite at named sizes with its noise
baseline (``evaluate_representation``, ``noise_baseline``).

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
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from causalvq.metrics.dci import dci
from causalvq.metrics.factor_vae import factor_vae
from causalvq.metrics.inputs import (
    CONSTANT_VAR,
    Importance,
    RepresentFn,
    SampleFn,
    check_inputs,
    represent,
    sample_factors,
    split_indices,
    top_two_gap,
)

# --------------------------------------------------------------------------------------------------------------
# input checks and shared helpers

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
    codes, labels = check_inputs(codes, factors)
    mi = discrete_mutual_info(histogram_discretize(codes, num_bins), labels)  # (d, f)
    entropy = _label_entropy(labels)  # (f,)
    keep = entropy > 0
    if not keep.any():
        return 0.0
    gaps = top_two_gap(mi)[keep] / entropy[keep]  # (f',)
    return float(np.clip(gaps.mean(), 0.0, 1.0))


# --------------------------------------------------------------------------------------------------------------
# SAP (Kumar et al. 2018)
# --------------------------------------------------------------------------------------------------------------


SAP_MIN_FITS_PER_WORKER = 500  # fewer LinearSVC fits than this per worker process run in this process


def _svc_accuracies(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                    y_test: np.ndarray) -> np.ndarray:
    """Test accuracy `(c, f)` of a ``LinearSVC(C=0.01, class_weight="balanced")`` per column of ``x`` `(n, c)` and
    factor of ``y`` `(n, f)` (each factor takes at least two values in training)."""
    from sklearn.svm import LinearSVC

    scores = np.zeros((x_train.shape[1], y_train.shape[1]))
    for i in range(x_train.shape[1]):
        for j in range(y_train.shape[1]):
            clf = LinearSVC(C=0.01, class_weight="balanced", random_state=0)
            clf.fit(x_train[:, i, None], y_train[:, j])
            scores[i, j] = np.mean(clf.predict(x_test[:, i, None]) == y_test[:, j])
    return scores


def sap_score_matrix(
    codes: np.ndarray,
    factors: np.ndarray,
    continuous: bool = False,
    *,
    train_fraction: float = 2 / 3,
    seed: int = 0,
    n_jobs: int | None = None,
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
    0.005). The solver's coordinate order is seeded (``random_state=0``; disentanglement_lib draws it from
    numpy's global generator), so the matrix is the same from run to run and process to process.

    The d·f fits (tens of thousands for a model's representation, a few ms each, most of it sklearn's Python)
    run in ``n_jobs`` worker processes (None: one per core; 1: this process), each on a block of dims; a
    matrix of fewer than ``SAP_MIN_FITS_PER_WORKER`` fits per worker is scored in this process.

    ``continuous=True``: squared correlation of the code dim with the factor value over all points; a constant
    dim scores 0, as in disentanglement_lib. Labels are the factor values' ranks.
    """
    if n_jobs is not None and n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1 or None, got {n_jobs}")
    codes, labels = check_inputs(codes, factors)
    d, f = codes.shape[1], labels.shape[1]
    constant = codes.var(axis=0) <= CONSTANT_VAR  # (d,)
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

    train, test = split_indices(codes.shape[0], train_fraction, seed)
    y_train, y_test = labels[train], labels[test]  # (n_train, f), (n_test, f)
    # a factor constant in training: nothing to classify, no dim is informative about it (scores stay 0)
    varied = np.flatnonzero([np.unique(y_train[:, j]).size >= 2 for j in range(f)])  # (f',)
    for j in varied:
        scores[constant, j] = np.mean(y_test[:, j] == np.bincount(y_train[:, j]).argmax())  # a constant prediction
    dims = np.flatnonzero(~constant)  # (d',)
    if varied.size == 0 or dims.size == 0:
        return scores
    x_train, x_test = codes[np.ix_(train, dims)], codes[np.ix_(test, dims)]  # (n_train, d'), (n_test, d')
    y_train, y_test = y_train[:, varied], y_test[:, varied]
    workers = min(n_jobs or os.cpu_count() or 1, max(1, dims.size * varied.size // SAP_MIN_FITS_PER_WORKER))
    if workers == 1:
        fitted = _svc_accuracies(x_train, y_train, x_test, y_test)  # (d', f')
    else:
        from joblib import Parallel, delayed

        blocks = np.array_split(np.arange(dims.size), workers * 4)  # a few blocks per worker evens their load
        parts = Parallel(n_jobs=workers, backend="loky")(
            delayed(_svc_accuracies)(x_train[:, blk], y_train, x_test[:, blk], y_test) for blk in blocks
        )
        fitted = np.concatenate(parts, axis=0)  # (d', f')
    scores[np.ix_(dims, varied)] = fitted
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
    return float(np.clip(top_two_gap(scores).mean(), 0.0, 1.0))


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
    factors = sample_factors(sample_fn, n, rng, factor_sizes)
    codes = represent(represent_fn, factors)
    seed = int(rng.integers(2**31))
    fraction = sizes.num_train / n
    train, test = split_indices(n, fraction, seed)
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


BASELINES = ("unrelated", "noise")  # the chance column of the disentanglement rows: unrelated_baseline, noise_baseline


def unrelated_representation(represent_fn: RepresentFn, sample_fn: SampleFn, factor_sizes: Sequence[int],
                             rng: np.random.Generator) -> RepresentFn:
    """``represent_fn`` of images unrelated to the factors asked: row i is the representation of an image whose
    factors are drawn afresh from ``sample_fn`` with ``rng``. Its values are the representation's own (their
    distribution, their width, their type: one-hot codes stay one-hot) and carry nothing about the factors asked,
    as a permutation test's null."""
    return lambda factors: represent_fn(sample_factors(sample_fn, len(factors), rng, factor_sizes))


def unrelated_baseline(
    represent_fn: RepresentFn,
    sample_fn: SampleFn,
    factor_sizes: Sequence[int],
    rng: np.random.Generator,
    sizes: DisentanglementSizes = DisentanglementSizes(),
) -> dict[str, float]:
    """:func:`evaluate_representation` of :func:`unrelated_representation` at the same sizes: the scores the
    representation reaches when each point is paired with another image's values. Costs as much as the
    representation itself (GBT on one-hot codes is several times cheaper than on as many continuous dims, which
    is what :func:`noise_baseline` would fit for them)."""
    (draw_rng,) = rng.spawn(1)
    unrelated = unrelated_representation(represent_fn, sample_fn, factor_sizes, draw_rng)
    return evaluate_representation(unrelated, sample_fn, factor_sizes, rng, sizes)


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
