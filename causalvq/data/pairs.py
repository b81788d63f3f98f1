"""Transition pairs: two images whose factors differ in exactly one factor by exactly one step.

Actions (paper §9.2): ``a = f + F·dir`` with ``dir = 1`` when factor ``f`` steps down ("-"), so ``A = 2F``;
names come from ``causalvq.config.action_names``. Cyclic factors (hues, orientation) do not wrap around.

Splits: each point of the factor grid belongs to train / val / test (default 70/15/15) by a splitmix64 hash of its
flat index and the seed, mapped to [0, 1) with numpy uint64 arithmetic: stable across machines and numpy versions,
and computed point by point, so the 480k grid is never materialised. A pair never crosses splits (both x and y
lie in the sampler's split; others are rejected and redrawn), which is the official rule with seeded draws.

Sampling streams: ``TransitionSampler`` draws x in its split (optionally with skewed per-factor value
distributions), then an action among those that keep the factor in range (uniform, or weighted per factor or per
action), and sets y = x with that factor moved one step. Nothing enumerates the ~1.3M pairs.

Axis legend: ``n`` samples, ``f`` factors (F), ``a`` actions (A = 2F).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from causalvq.config import action_names
from causalvq.data.base import FactorDataset

SPLITS: tuple[str, ...] = ("train", "val", "test")
MODES: tuple[str, ...] = ("image", "action", "retrieval")

ValueWeights = None | str | float | Mapping[str | int, Any]
ActionWeights = None | str | Sequence[float] | np.ndarray | Mapping[str, float]


# --- actions ---
def encode_action(factor: int | np.ndarray, direction: int | str | np.ndarray,
                  num_factors: int) -> int | np.ndarray:
    """Action index of moving ``factor`` up (``direction`` 0 or "+") or down (1 or "-"): ``factor + F·direction``."""
    if isinstance(direction, str):
        if direction not in ("+", "-"):
            raise ValueError(f"encode_action: direction must be 0, 1, '+' or '-', got {direction!r}")
        direction = int(direction == "-")
    f, d = np.asarray(factor), np.asarray(direction)
    if np.any((f < 0) | (f >= num_factors)) or np.any((d != 0) & (d != 1)):
        raise ValueError(f"encode_action: factor must be in 0..{num_factors - 1} and direction 0 or 1")
    a = f.astype(np.int64) + num_factors * d.astype(np.int64)
    return int(a) if a.ndim == 0 else a


def decode_action(action: int | np.ndarray, num_factors: int) -> tuple[Any, Any]:
    """``(factor, direction)`` of action indices (``direction`` 1 = a step down)."""
    a = np.asarray(action)
    if np.any((a < 0) | (a >= 2 * num_factors)):
        raise ValueError(f"decode_action: action must be in 0..{2 * num_factors - 1}, got {action}")
    f, d = a % num_factors, a // num_factors
    return (int(f), int(d)) if a.ndim == 0 else (f.astype(np.int64), d.astype(np.int64))


def count_by_factor(actions: np.ndarray, num_factors: int) -> np.ndarray:
    """Number of pairs moving each factor (both directions): ``int64 (F,)``."""
    return np.bincount(np.asarray(actions) % num_factors, minlength=num_factors).astype(np.int64)


def count_by_action(actions: np.ndarray, num_factors: int) -> np.ndarray:
    """Number of pairs per action: ``int64 (2F,)``."""
    return np.bincount(np.asarray(actions), minlength=2 * num_factors).astype(np.int64)


def factor_counts(ds: FactorDataset, actions: np.ndarray) -> dict[str, int]:
    """Readable per-factor pair counts, ``{factor name: count}``."""
    return dict(zip(ds.factor_names, count_by_factor(actions, ds.num_factors).tolist()))


# --- splits ---
def split_index(split: str | int) -> int:
    """0, 1 or 2 for a split given as ``"train"``, ``"val"``, ``"test"`` or its index."""
    if isinstance(split, str):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        split = SPLITS.index(split)
    if split not in (0, 1, 2):
        raise ValueError(f"split must be one of {SPLITS} or 0..2, got {split!r}")
    return int(split)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_unit(flat_index: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic uniform number in [0, 1) per flat grid index and seed: ``float64 (n,)``."""
    key = _splitmix64(np.asarray([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))  # (1,)
    z = _splitmix64(np.asarray(flat_index, dtype=np.int64).astype(np.uint64) ^ key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(not 0 <= f <= 1 for f in fr) or not abs(sum(fr) - 1.0) <= 1e-6:  # NaN fails "<="
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    return fr  # type: ignore[return-value]


def split_of(ds: FactorDataset, factors: np.ndarray, seed: int = 0,
             fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> np.ndarray:
    """Split of each factor vector ``(n, F)``: ``int64 (n,)`` with 0 train, 1 val, 2 test."""
    fr = _check_fractions(fractions)
    u = hash_unit(ds.factors_to_index(np.asarray(factors).reshape(-1, ds.num_factors)), seed)
    return (u >= fr[0]).astype(np.int64) + (u >= fr[0] + fr[1]).astype(np.int64)


# --- imbalance options ---
def _zipf(size: int, exponent: float) -> np.ndarray:
    return 1.0 / np.arange(1, size + 1, dtype=np.float64) ** float(exponent)


def value_probabilities(ds: FactorDataset, value_weights: ValueWeights) -> list[np.ndarray] | None:
    """Per-factor value distributions from ``value_weights`` (None = uniform; see ``TransitionSampler``)."""
    if value_weights is None:
        return None
    if isinstance(value_weights, (str, int, float)) and not isinstance(value_weights, bool):
        value_weights = {f: value_weights for f in range(ds.num_factors)}
    if not isinstance(value_weights, Mapping):
        raise ValueError(f"value_weights must be None, 'zipf', a Zipf exponent or a dict, got {value_weights!r}")
    probs = [np.full(s, 1.0 / s) for s in ds.factor_sizes]
    for key, spec in value_weights.items():
        f = _factor_index(ds, key)
        size = ds.factor_sizes[f]
        if isinstance(spec, str):
            if spec != "zipf":
                raise ValueError(f"value_weights[{key!r}]: unknown distribution {spec!r} (use 'zipf')")
            w = _zipf(size, 1.0)
        elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
            w = _zipf(size, spec)
        else:
            w = np.asarray(spec, dtype=np.float64)
            if w.shape != (size,):
                raise ValueError(f"value_weights[{key!r}] must have {size} entries, got shape {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"value_weights[{key!r}] must be finite, non-negative, not all zero")
        probs[f] = w / w.sum()
    return probs


def action_weight_vector(ds: FactorDataset, action_weights: ActionWeights) -> np.ndarray:
    """Per-action weights ``float64 (2F,)`` from ``action_weights`` (see ``TransitionSampler``)."""
    F = ds.num_factors
    if action_weights is None:
        w = np.ones(2 * F)
    elif isinstance(action_weights, str):
        if action_weights != "cardinality":
            raise ValueError(f"action_weights: unknown preset {action_weights!r} (use 'cardinality')")
        w = np.tile(np.asarray(ds.factor_sizes, dtype=np.float64) - 1.0, 2)
    elif isinstance(action_weights, Mapping):
        names = action_names(ds.factor_names)
        w = np.ones(2 * F)
        for key, value in action_weights.items():
            if key in names:
                w[names.index(key)] = float(value)
            else:
                f = _factor_index(ds, key)
                w[f] = w[f + F] = float(value)
    else:
        w = np.asarray(action_weights, dtype=np.float64)
        if w.shape == (F,):
            w = np.tile(w, 2)
        elif w.shape != (2 * F,):
            raise ValueError(f"action_weights must have {F} (per factor) or {2 * F} (per action) entries, "
                             f"got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"action_weights must be finite, non-negative, not all zero, got {w}")
    return w


def _factor_index(ds: FactorDataset, key: str | int) -> int:
    if isinstance(key, (int, np.integer)) and 0 <= int(key) < ds.num_factors:
        return int(key)
    if isinstance(key, str) and key in ds.factor_names:
        return ds.factor_names.index(key)
    raise ValueError(f"unknown factor {key!r}; {ds.name} has {', '.join(ds.factor_names)}")


# --- sampler ---
class TransitionSampler:
    """Seeded streams of factor vectors and transition pairs within one split of a dataset's factor grid.

    Args:
        ds: the factor dataset.
        split: ``"train"``, ``"val"`` or ``"test"`` (or 0, 1, 2).
        seed: split seed (which grid points are train / val / test); drawing uses the ``rng`` of each call.
        fractions: train / val / test shares of the grid.
        value_weights: skew the distribution of x's factor values. ``None`` uniform; ``"zipf"`` (exponent 1) or
            a number (Zipf exponent: value ``v`` has weight ``1 / (v + 1)**s``) for every factor; or a dict
            ``{factor name or index: weights (size_f,) | "zipf" | exponent}`` for some factors.
        action_weights: skew the actions. ``None`` uniform over the actions valid for x; ``"cardinality"``
            per-factor weight ``size_f - 1`` (the official per-factor shares, paper §9.3); weights ``(F,)`` per
            factor or ``(2F,)`` per action; or a dict ``{factor name or action name: weight}``.
    """

    def __init__(self, ds: FactorDataset, split: str | int = "train", seed: int = 0,
                 fractions: Sequence[float] = (0.7, 0.15, 0.15), value_weights: ValueWeights = None,
                 action_weights: ActionWeights = None) -> None:
        self.ds = ds
        self.split = split_index(split)
        self.seed = int(seed)
        self.fractions = _check_fractions(fractions)
        if self.fractions[self.split] == 0:
            raise ValueError(f"split {SPLITS[self.split]!r} has fraction 0: nothing to sample")
        self.value_probs = value_probabilities(ds, value_weights)
        self.action_weights = action_weight_vector(ds, action_weights)  # (2F,)
        self.action_names = action_names(ds.factor_names)

    @property
    def num_actions(self) -> int:
        return 2 * self.ds.num_factors

    def in_split(self, factors: np.ndarray) -> np.ndarray:
        """Whether each factor vector ``(n, F)`` lies in this sampler's split and has an image: ``bool (n,)``."""
        return (split_of(self.ds, factors, self.seed, self.fractions) == self.split) & self.ds.contains(factors)

    def _candidates(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` factor vectors from the value distribution (before the split filter): ``int64 (n, F)``."""
        if self.value_probs is None:
            return self.ds.sample_factors(n, rng)
        if self.ds.complete:
            cols = [rng.choice(len(p), size=n, p=p) for p in self.value_probs]
            return np.stack(cols, axis=1).astype(np.int64)
        # Incomplete grid: uniform over stored images, accepted with probability ∝ the value weights.
        x = self.ds.sample_factors(n, rng)
        accept = np.ones(n)
        for f, p in enumerate(self.value_probs):
            accept *= p[x[:, f]] / p.max()
        return x[rng.random(n) < accept]

    def _collect(self, n: int, rng: np.random.Generator, draw: Any) -> tuple[np.ndarray, ...]:
        """Call ``draw(m, rng)`` (returning accepted tuples of arrays) until ``n`` rows are collected."""
        parts: list[tuple[np.ndarray, ...]] = []
        have, tries = 0, 0
        while have < n:
            m = max(64, int(2 * (n - have) / self.fractions[self.split]))
            got = draw(m, rng)
            parts.append(got)
            have += len(got[0])
            tries += 1
            if tries > 200 and have == 0:
                raise RuntimeError(f"{self.ds.name}: no samples found in split {SPLITS[self.split]!r}")
        return tuple(np.concatenate([p[i] for p in parts])[:n] for i in range(len(parts[0])))

    def sample_images(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Factors of ``n`` images of the split: ``int64 (n, F)``."""
        def draw(m: int, rng: np.random.Generator) -> tuple[np.ndarray]:
            x = self._candidates(m, rng)
            return (x[self.in_split(x)],)
        return self._collect(n, rng, draw)[0].reshape(n, self.ds.num_factors)

    def sample_pairs(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` transition pairs of the split: ``x (n, F)``, ``y (n, F)``, ``actions int64 (n,)`` with
        ``y = x`` except factor ``f`` moved one step in ``direction`` where ``(f, direction) = decode(action)``."""
        F = self.ds.num_factors
        sizes = np.asarray(self.ds.factor_sizes)

        def draw(m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            x = self._candidates(m, rng)
            x = x[self.in_split(x)]
            valid = np.concatenate([x < sizes - 1, x > 0], axis=1)  # (m, 2F): up, then down
            w = valid * self.action_weights  # (m, 2F)
            total = w.sum(axis=1)
            keep = total > 0
            x, w, total = x[keep], w[keep], total[keep]
            u = rng.random(len(x)) * total
            a = np.argmax(np.cumsum(w, axis=1) > u[:, None], axis=1).astype(np.int64)  # (m,)
            f, d = a % F, a // F
            y = x.copy()
            y[np.arange(len(y)), f] += 1 - 2 * d
            ok = self.in_split(y)
            return x[ok], y[ok], a[ok]

        x, y, a = self._collect(n, rng, draw)
        return x.reshape(n, F), y.reshape(n, F), a


class MixedBatch(NamedTuple):
    """One batch of a single use: ``mode`` in ``MODES`` and its ``payload`` of factor arrays.

    ``"image"``: ``{"factors": (b, F)}``; ``"action"`` and ``"retrieval"``: ``{"x_factors": (b, F),
    "y_factors": (b, F), "actions": (b,)}``.
    """

    mode: str
    payload: dict[str, np.ndarray]


def mixed_batches(sampler: TransitionSampler, batch_size: int, ratio: Sequence[float] = (1.0, 1.0, 1.0),
                  rng: np.random.Generator | None = None, num_batches: int | None = None) -> Iterator[MixedBatch]:
    """Batches of the three training uses (image, action, retrieval), each batch a single use, drawn at ``ratio``.

    The official implementation's ratio follows its pool sizes (about 7:1:1 for Shapes3D, paper §8.2).
    ``num_batches=None`` streams forever.
    """
    r = np.asarray(ratio, dtype=np.float64)
    if r.shape != (3,) or np.any(r < 0) or r.sum() <= 0 or not np.all(np.isfinite(r)):
        raise ValueError(f"ratio must be three non-negative weights (image, action, retrieval), got {ratio}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng() if rng is None else rng
    p = r / r.sum()
    i = 0
    while num_batches is None or i < num_batches:
        mode = MODES[int(rng.choice(3, p=p))]
        if mode == "image":
            payload = {"factors": sampler.sample_images(batch_size, rng)}
        else:
            x, y, a = sampler.sample_pairs(batch_size, rng)
            payload = {"x_factors": x, "y_factors": y, "actions": a}
        yield MixedBatch(mode, payload)
        i += 1
