"""Action retrieval that can say no: the closest single-factor move of k = 1..K steps between two code grids, or a
reasoned refusal, and the calibration of the rule on dataset pairs.

The search (``search_moves``) scores every single-factor move, action a applied k = 1..K times, by the model's
retrieval score of y after it: y's node NLL under the k-th transition's code distribution, after k − 1 argmax
steps of a (averaged or summed over nodes as the checkpoint's ``retrieval_score``; k = 1 is
``model.retrieve_action``'s score), and counts y's *unexplained* codes, those the move gives a probability below
``P_UNEXPLAINED``. The answer (``decide``) is the closest move (a*, k*), accepted only when

1. x and y have different codes (else **no move**: nothing changed);
2. its distance is at most the threshold of k* steps, and its unexplained codes at most the limit of k* steps
   (else **too far**: no single-factor move explains y);
3. one more step of an action of another factor, after the move, does not bring y closer by more than the margin
   (else **two factors**: y looks like the move plus a change of that other factor).

The distance ranks the moves and bounds how far y may be; the count catches what an average over every node
hides, a few codes the move cannot produce at all (a small second change, such as one step of scale). Check 3
tests the single-factor answer against the nearest bigger explanation, the move followed by one step of another
factor: on a true single-factor move that extra step moves codes that should stay, so it scores worse; on a pair
where two factors changed, it explains the second change. It costs one transition of the A actions on the move's
grid (``extension_distances``).

``calibrate`` sets the thresholds, limits and margin on pairs of one split (the validation split at release time,
``python -m train calibrate``): threshold_k and limit_k = the ``quantile`` of the distance and of the unexplained
codes of true k-step moves at their own (action, k); margin = the ``quantile`` of what the extra step gains on true
moves whose closest move is their own. ``measure`` answers every pair of a split with a calibration and returns
the rates (``RejectRates``): true one-step and k-step moves answered with their own (action, k), two-factor and
unrelated pairs refused.
``RejectCalibration.save`` / ``load_calibration`` write and read it as ``retrieval.json`` in a release folder.

Pairs (``draw_pairs``), all inside the sampler's split: for each image x, every single-factor move of 1..K steps
whose y lies in the split, ``two_factor`` pairs (two different factors moved one step each) and ``unrelated``
pairs (y drawn independently). The moves of one x share its K·A transitions, so many pairs cost few model calls.

Axis legend: ``b`` images x, ``p`` pairs, ``a`` actions (A = 2F), ``K`` steps, ``n`` nodes, ``v`` codebook size,
``f`` factors (F).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange, repeat

from causalvq.data import render_images
from causalvq.data.base import FactorDataset
from causalvq.data.pairs import SPLITS, TransitionSampler
from causalvq.losses import retrieval_distance
from causalvq.model import CausalVQ

CALIBRATION_FILE = "retrieval.json"  # the calibration in a release folder, beside config.json
FORMAT, VERSION = "causalvq-retrieval-reject", 1
STEPS = 4  # K: the longest move searched
QUANTILE = 0.99  # share of true moves each check passes on the calibration pairs (bench/retrieval_reject.py --select)
P_UNEXPLAINED = 0.01  # a code of y is unexplained by a move that gives it a lower probability
K_STEPS = (2, 3)  # the k-step moves of the headline k-step rate
SINGLE, TWO_FACTOR, UNRELATED = 1, 2, 0  # kinds of pairs
_STREAM = 0x5E7  # draws: np.random.default_rng([seed, _STREAM])


class Verdict(enum.Enum):
    """What ``decide`` answers."""

    MOVE = "move"  # the closest single-factor move explains the pair
    SAME = "no move"  # x and y have the same codes
    FAR = "too far"  # the closest move is above the threshold or the unexplained-code limit of its k
    TWO_FACTORS = "two factors"  # one more step of another factor brings y closer by more than the margin
    UNJUDGED = "unjudged"  # no calibration: the closest move, unjudged


# --- the search ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MoveSearch:
    distances: torch.Tensor  # float (p, a, K): y's distance after k steps of a, pair by pair
    unexplained: torch.Tensor  # long (p, a, K): y's codes given a probability below P_UNEXPLAINED there
    grids: torch.Tensor  # long (b, a, K, n): the argmax codes of x after k steps of a


@torch.inference_mode()
def search_moves(model: CausalVQ, nodes_x: torch.Tensor, nodes_y: torch.Tensor, steps: int,
                 source: torch.Tensor | None = None) -> MoveSearch:
    """Score every single-factor move of 1..``steps`` steps from each x against its targets y.

    Args:
        nodes_x: long `(b, n)` flat codes of the images x.
        nodes_y: long `(p, n)` flat codes of the targets y.
        source: long `(p,)` the row of x of each target; default ``arange(b)`` (one target per x).

    All b·A chains advance together (one transition call per step); targets sharing an x share its chains.
    """
    A, cfg = model.num_actions, model.config
    b = nodes_x.shape[0]
    source = torch.arange(b) if source is None else source
    actions = torch.arange(A, device=nodes_x.device).repeat(b)  # (b·a,)
    cur, dist, count, grids = nodes_x, [], [], []
    for step in range(steps):
        if step == 0 and not model.transition.training:  # the A copies of a grid share its node features
            probs = model.transition(cur, actions, sample=False, copies=A).probs  # (b·a, n, v)
        else:
            cur = repeat(cur, "b n -> (b a) n", a=A) if step == 0 else cur  # (b·a, n)
            probs = model.transition(cur, actions, sample=False).probs
        grouped = rearrange(probs, "(b a) n v -> b a n v", a=A)[source.to(probs.device)]  # (p, a, n, v)
        dist.append(retrieval_distance(grouped, nodes_y, cfg.retrieval_score, cfg.renormalised_ce))  # (p, a)
        p_y = grouped.gather(-1, repeat(nodes_y, "p n -> p a n 1", a=A))[..., 0]  # (p, a, n)
        count.append((p_y < P_UNEXPLAINED).sum(-1))  # (p, a)
        cur = probs.argmax(-1)  # (b·a, n)
        grids.append(rearrange(cur, "(b a) n -> b a n", a=A))
    return MoveSearch(distances=torch.stack(dist, -1), unexplained=torch.stack(count, -1),
                      grids=torch.stack(grids, 2))  # (p, a, K), (p, a, K), (b, a, K, n)


@torch.inference_mode()
def extension_distances(model: CausalVQ, grids: torch.Tensor, nodes_y: torch.Tensor) -> torch.Tensor:
    """y's distance after one more step of each action from each moved grid: long `(p, n)` twice → `(p, a)`."""
    A, cfg = model.num_actions, model.config
    actions = torch.arange(A, device=grids.device).repeat(grids.shape[0])  # (p·a,)
    if model.transition.training:
        probs = model.transition(repeat(grids, "p n -> (p a) n", a=A), actions, sample=False).probs
    else:
        probs = model.transition(grids, actions, sample=False, copies=A).probs  # (p·a, n, v)
    grouped = rearrange(probs, "(p a) n v -> p a n v", a=A)
    return retrieval_distance(grouped, nodes_y, cfg.retrieval_score, cfg.renormalised_ce)  # (p, a)


# --- the rule ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    action: int  # the closest move's action
    steps: int  # its k
    distance: float  # its distance
    verdict: Verdict
    unexplained: int = 0  # y's codes the move gives a probability below P_UNEXPLAINED
    threshold: float | None = None  # the threshold of k steps (None: no calibration)
    limit: float | None = None  # the unexplained-code limit of k steps (None: no calibration)
    rival: int | None = None  # the action of another factor whose extra step brings y closest (None: not checked)
    rival_distance: float | None = None  # y's distance after the move and that step

    @property
    def accepted(self) -> bool | None:
        """Whether the closest move is the answer; ``None`` when nothing could judge it."""
        return None if self.verdict is Verdict.UNJUDGED else self.verdict is Verdict.MOVE


def closest_move(distances: np.ndarray) -> tuple[int, int]:
    """(action, k) of the smallest entry of ``distances`` `(a, K)` (the first on ties)."""
    a, k = np.unravel_index(int(np.argmin(distances)), distances.shape)
    return int(a), int(k) + 1


def decide(distances: np.ndarray, unexplained: np.ndarray, same_codes: bool, calibration: RejectCalibration | None,
           extend: Callable[[int, int], np.ndarray] | None = None) -> Decision:
    """The answer for one pair (see the module docstring).

    Args:
        distances: float `(a, K)`, every move's distance (``search_moves``).
        unexplained: int `(a, K)`, every move's unexplained codes of y.
        same_codes: x and y have the same codes.
        calibration: thresholds `(K,)` and margin; ``None`` gives the closest move unjudged.
        extend: ``extend(action, k)`` → float `(a,)`, y's distance after the move and one more step of each
            action (``extension_distances``); called only for a move within its threshold.
    """
    a, k = closest_move(distances)
    d, u = float(distances[a, k - 1]), int(unexplained[a, k - 1])
    if same_codes:
        return Decision(a, k, d, Verdict.SAME, u)
    if calibration is None:
        return Decision(a, k, d, Verdict.UNJUDGED, u)
    if calibration.steps != distances.shape[1]:
        raise ValueError(f"the calibration covers moves of 1..{calibration.steps} steps, the distances "
                         f"1..{distances.shape[1]}")
    t, lim = calibration.thresholds[k - 1], calibration.limits[k - 1]
    if not (d <= t and u <= lim):
        return Decision(a, k, d, Verdict.FAR, u, threshold=t, limit=lim)
    if extend is None:
        raise ValueError("a move within its threshold needs `extend` to check one more step of another factor")
    ext = np.asarray(extend(a, k), dtype=np.float64)  # (a,)
    F = distances.shape[0] // 2
    other = np.flatnonzero(np.arange(len(ext)) % F != a % F)  # the actions of the other factors
    rival = int(other[np.argmin(ext[other])])
    verdict = Verdict.TWO_FACTORS if d - ext[rival] > calibration.margin else Verdict.MOVE
    return Decision(a, k, d, verdict, u, threshold=t, limit=lim, rival=rival, rival_distance=float(ext[rival]))


# --- pairs ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RejectPairs:
    """Pairs (x, y) of one split, grouped by x (``draw_pairs``)."""

    x: np.ndarray  # int64 (b, f): the images x
    y: np.ndarray  # int64 (p, f): the targets
    source: np.ndarray  # int64 (p,): the row of x of each pair
    kind: np.ndarray  # int64 (p,): SINGLE, TWO_FACTOR or UNRELATED
    action: np.ndarray  # int64 (p,): a single-factor pair's action (−1 for the others)
    steps: np.ndarray  # int64 (p,): its k (0 for the others)


def draw_pairs(sampler: TransitionSampler, num_images: int, steps: int, rng: np.random.Generator,
               two_factor: int = 4, unrelated: int = 4) -> RejectPairs:
    """``num_images`` images x of the sampler's split with every single-factor move of 1..``steps`` steps whose y is
    in the split, up to ``two_factor`` pairs moving two factors one step each (y in the split) and ``unrelated``
    pairs with y drawn from the split. More x are drawn (at most 20·``num_images``) until every k has a true pair.

    Raises:
        ValueError: no factor has more than ``steps`` values, or the split yields no true move of some k.
    """
    from causalvq.metrics.scores import move_factors  # here: scores imports the report, which imports this module

    ds = sampler.ds
    sizes = tuple(int(s) for s in ds.factor_sizes)
    F, A = len(sizes), 2 * len(sizes)
    if num_images < 1 or steps < 1 or max(sizes) <= steps:
        raise ValueError(f"need num_images >= 1 and 1 <= steps < the largest factor size {max(sizes)}, got "
                         f"{num_images}, {steps}")
    xs: list[np.ndarray] = []
    rows: list[tuple[int, int, int, int, np.ndarray]] = []  # (source, kind, action, k, y)
    have = np.zeros(steps, dtype=np.int64)
    while len(xs) < num_images or (have == 0).any():
        if len(xs) >= 20 * num_images:
            raise ValueError(f"the {SPLITS[sampler.split]} split of {ds.name} gave no true move of "
                             f"{', '.join(str(k + 1) for k in np.flatnonzero(have == 0))} step(s) in {len(xs)} images")
        x = sampler.sample_images(1, rng)  # (1, f)
        i = len(xs)
        xs.append(x[0])
        for a in range(A):
            for k in range(1, steps + 1):
                y, ok = move_factors(x, np.array([a]), k, sizes)
                if ok[0] and sampler.in_split(y)[0]:
                    rows.append((i, SINGLE, a, k, y[0]))
                    have[k - 1] += 1
        got = 0
        for _ in range(8 * two_factor):
            if got == two_factor:
                break
            a1, a2 = rng.choice(A, 2, replace=False)
            if a1 % F == a2 % F:
                continue
            y, ok1 = move_factors(x, np.array([a1]), 1, sizes)
            y, ok2 = move_factors(y, np.array([a2]), 1, sizes)
            if ok1[0] and ok2[0] and sampler.in_split(y)[0]:
                rows.append((i, TWO_FACTOR, -1, 0, y[0]))
                got += 1
        rows += [(i, UNRELATED, -1, 0, y) for y in sampler.sample_images(unrelated, rng)] if unrelated else []
    col = lambda j: np.asarray([r[j] for r in rows], dtype=np.int64)  # noqa: E731
    return RejectPairs(x=np.stack(xs).astype(np.int64), y=np.stack([r[4] for r in rows]).astype(np.int64),
                       source=col(0), kind=col(1), action=col(2), steps=col(3))


# --- rates ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RejectRates:
    """How the rule answers pairs of one split."""

    one_step_right: float | None  # true one-step moves answered with their own (action, 1)
    k_steps_right: float | None  # true moves of K_STEPS steps answered with their own (action, k)
    two_factor_rejected: float | None  # two-factor pairs refused (too far or two factors)
    unrelated_rejected: float | None  # unrelated pairs refused
    right_per_step: tuple[float | None, ...]  # (K,): true k-step moves answered with their own (action, k)
    pairs_per_step: tuple[int, ...]  # (K,): true k-step pairs
    per_factor_one_step_right: dict[str, float | None]  # by the factor that moved
    per_factor_k_steps_right: dict[str, float | None]
    per_factor_one_step_pairs: dict[str, int]
    per_factor_k_steps_pairs: dict[str, int]
    misses: dict[str, float]  # share of the true pairs per way of missing: "wrong action", "wrong k", "too far",
    #                           "two factors", "no move"
    num_pairs: dict[str, int]  # "single", "two_factor", "unrelated"
    num_images: int  # images x behind them

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RejectRates:
        """Rebuild from ``dataclasses.asdict``'s output (lists back to tuples)."""
        return cls(**{**data, "right_per_step": tuple(data["right_per_step"]),
                      "pairs_per_step": tuple(int(v) for v in data["pairs_per_step"])})


@dataclass(frozen=True)
class PairScores:
    """The model's side of the rule for every pair (``score_pairs``, ``extend_pairs``)."""

    distances: np.ndarray  # float (p, a, K): every move's distance
    unexplained: np.ndarray  # int (p, a, K): every move's unexplained codes of y
    same: np.ndarray  # bool (p,): x and y have the same codes
    grids: torch.Tensor  # long (p, n): the codes after each pair's closest move
    targets: torch.Tensor  # long (p, n): y's codes
    extension: np.ndarray  # float (p, a): y's distance after the closest move and one more step of each action
    #                        (NaN until ``extend_pairs`` fills the row)


def score_pairs(model: CausalVQ, dataset: FactorDataset, pairs: RejectPairs, steps: int,
                batch_size: int = 64) -> PairScores:
    """Encode the pairs' images and score every single-factor move of 1..``steps`` steps (``search_moves``), the
    targets of one x sharing its chains (in eval mode; the model's mode is restored)."""
    with _eval_mode(model):
        return _score_pairs(model, dataset, pairs, steps, batch_size)


def _score_pairs(model: CausalVQ, dataset: FactorDataset, pairs: RejectPairs, steps: int, batch_size: int
                 ) -> PairScores:
    nodes_x = _encode(model, dataset, pairs.x, batch_size)  # (b, n)
    nodes_y = _encode(model, dataset, pairs.y, batch_size)  # (p, n)
    group = max(1, batch_size // model.num_actions)  # images x per chain batch
    dist = torch.zeros(len(pairs.y), model.num_actions, steps)
    count = torch.zeros(len(pairs.y), model.num_actions, steps, dtype=torch.long)
    grids = torch.zeros_like(nodes_y)  # (p, n)
    for s in range(0, len(pairs.x), group):
        rows = np.flatnonzero((pairs.source >= s) & (pairs.source < s + group))
        if not len(rows):
            continue
        src = torch.from_numpy(pairs.source[rows] - s)
        out = search_moves(model, nodes_x[s:s + group].to(model.device), nodes_y[rows].to(model.device), steps, src)
        dist[rows], count[rows] = out.distances.cpu(), out.unexplained.cpu()
        best = rearrange(out.distances, "p a k -> p (a k)").argmin(-1).cpu()  # (p,)
        grids[rows] = out.grids.cpu()[src, best // steps, best % steps]
    same = (nodes_x[torch.from_numpy(pairs.source)] == nodes_y).all(-1).numpy()
    return PairScores(distances=dist.numpy(), unexplained=count.numpy(), same=same, grids=grids, targets=nodes_y,
                      extension=np.full((len(nodes_y), model.num_actions), np.nan))


def extend_pairs(model: CausalVQ, scores: PairScores, rows: np.ndarray, batch_size: int = 64) -> PairScores:
    """``scores`` with the extension distances of ``rows`` (indices into the pairs) filled in (in eval mode)."""
    ext = scores.extension.copy()
    rows = np.asarray([r for r in rows if np.isnan(ext[r]).any()], dtype=np.int64)
    step = max(1, batch_size // 4)
    with _eval_mode(model):
        for s in range(0, len(rows), step):
            r = torch.from_numpy(rows[s:s + step])
            ext[r.numpy()] = extension_distances(model, scores.grids[r].to(model.device),
                                                 scores.targets[r].to(model.device)).cpu().numpy()
    return dataclasses.replace(scores, extension=ext)


def judge(scores: PairScores, calibration: RejectCalibration | None) -> list[Decision]:
    """``decide`` for every pair; a move within its threshold needs its extension row (``extend_pairs``)."""
    def extend(i: int) -> Callable[[int, int], np.ndarray]:
        def row(a: int, k: int) -> np.ndarray:
            if np.isnan(scores.extension[i]).any():
                raise ValueError(f"pair {i}: its move is within its threshold but has no extension distances")
            return scores.extension[i]
        return row
    return [decide(d, u, bool(sm), calibration, extend(i))
            for i, (d, u, sm) in enumerate(zip(scores.distances, scores.unexplained, scores.same))]


def within_threshold(scores: PairScores, calibration: RejectCalibration) -> np.ndarray:
    """Indices of the pairs whose closest move is within its threshold and limit (and whose codes differ)."""
    out = []
    for i, (d, u, sm) in enumerate(zip(scores.distances, scores.unexplained, scores.same)):
        a, k = closest_move(d)
        if not sm and d[a, k - 1] <= calibration.thresholds[k - 1] and u[a, k - 1] <= calibration.limits[k - 1]:
            out.append(i)
    return np.asarray(out, dtype=np.int64)


def rates_of(decisions: list[Decision], pairs: RejectPairs, factor_names: tuple[str, ...], steps: int
             ) -> RejectRates:
    """The rates of the decisions (``judge``) on ``pairs``."""
    F, K = len(factor_names), steps
    verdict = np.asarray([c.verdict.value for c in decisions])
    action = np.asarray([c.action for c in decisions], dtype=np.int64)
    moved = np.asarray([c.steps for c in decisions], dtype=np.int64)
    accepted = verdict == Verdict.MOVE.value
    single = pairs.kind == SINGLE
    right = accepted & (action == pairs.action) & (moved == pairs.steps)  # (p,)
    share = lambda m: float(np.mean(m)) if len(m) else None  # noqa: E731
    in_k = np.isin(pairs.steps, K_STEPS)
    factor = pairs.action % F
    wrong_action = accepted & (action != pairs.action)
    wrong_k = accepted & (action == pairs.action) & (moved != pairs.steps)
    misses = {"wrong action": wrong_action, "wrong k": wrong_k, "too far": verdict == Verdict.FAR.value,
              "two factors": verdict == Verdict.TWO_FACTORS.value, "no move": verdict == Verdict.SAME.value}
    return RejectRates(
        one_step_right=share(right[single & (pairs.steps == 1)]),
        k_steps_right=share(right[single & in_k]),
        two_factor_rejected=share(~accepted[pairs.kind == TWO_FACTOR]),
        unrelated_rejected=share(~accepted[pairs.kind == UNRELATED]),
        right_per_step=tuple(share(right[single & (pairs.steps == k)]) for k in range(1, K + 1)),
        pairs_per_step=tuple(int((single & (pairs.steps == k)).sum()) for k in range(1, K + 1)),
        per_factor_one_step_right={n: share(right[single & (pairs.steps == 1) & (factor == f)])
                                   for f, n in enumerate(factor_names)},
        per_factor_k_steps_right={n: share(right[single & in_k & (factor == f)]) for f, n in enumerate(factor_names)},
        per_factor_one_step_pairs={n: int((single & (pairs.steps == 1) & (factor == f)).sum())
                                   for f, n in enumerate(factor_names)},
        per_factor_k_steps_pairs={n: int((single & in_k & (factor == f)).sum()) for f, n in enumerate(factor_names)},
        misses={k: float(np.mean(m[single])) if single.any() else 0.0 for k, m in misses.items()},
        num_pairs={"single": int(single.sum()), "two_factor": int((pairs.kind == TWO_FACTOR).sum()),
                   "unrelated": int((pairs.kind == UNRELATED).sum())},
        num_images=len(pairs.x),
    )  # fmt: skip


# --- calibration ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RejectCalibration:
    """The reject rule of one model: thresholds per k and the margin of the two-factor check, with where they were
    measured (the contents of ``retrieval.json``)."""

    steps: int  # K: moves of 1..K steps are searched
    quantile: float  # share of the calibration's true moves each check passes
    thresholds: tuple[float, ...]  # (K,): the quantile of true k-step moves' distance at their own (action, k)
    limits: tuple[float, ...]  # (K,): the quantile of their unexplained codes there
    margin: float  # the quantile of what one more step of another factor gains on true moves
    score: str  # the distance: the model's retrieval_score ("mean" or "sum" of y's node NLL)
    split: str  # the split of the calibration pairs
    split_seed: int
    fractions: tuple[float, float, float]
    seed: int  # draw seed
    rates: RejectRates  # the rule's rates on the calibration pairs themselves
    model_digest: str = ""  # SHA-256 of the model's weights ("" unknown); no wall time: a calibration is
    #                         reproducible to the bit, and so are the eval.json and retrieval.json holding it

    def __post_init__(self) -> None:
        if self.steps < 1 or len(self.thresholds) != self.steps or len(self.limits) != self.steps:
            raise ValueError(f"need one threshold and one limit per k = 1..{self.steps}, got {len(self.thresholds)} "
                             f"and {len(self.limits)}")
        if not all(math.isfinite(t) for t in (*self.thresholds, *self.limits, self.margin)):
            raise ValueError(f"thresholds {self.thresholds}, limits {self.limits} and margin {self.margin} must be "
                             "finite")
        if not 0 < self.quantile <= 1:
            raise ValueError(f"quantile must lie in (0, 1], got {self.quantile}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **to_jsonable(dataclasses.asdict(self))}

    @classmethod
    def from_dict(cls, data: Any) -> RejectCalibration:
        """The inverse of ``to_dict``; ``ValueError`` naming what is wrong with a malformed one."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a causalvq retrieval calibration (format must be {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"calibration version {data.get('version')!r}; this causalvq reads {VERSION}")
        return cls.from_fields(data)

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> RejectCalibration:
        """Rebuild from ``dataclasses.asdict``'s output (no format check: inside an ``eval.json``)."""
        try:
            return cls(steps=int(data["steps"]), quantile=float(data["quantile"]),
                       thresholds=tuple(float(t) for t in data["thresholds"]),
                       limits=tuple(float(t) for t in data["limits"]), margin=float(data["margin"]),
                       score=str(data["score"]), split=str(data["split"]), split_seed=int(data["split_seed"]),
                       fractions=tuple(float(f) for f in data["fractions"]), seed=int(data["seed"]),
                       rates=RejectRates.from_dict(dict(data["rates"])), model_digest=str(data.get("model_digest", "")))
        except KeyError as err:
            raise ValueError(f"the field {err.args[0]!r} is missing") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"an ill-typed field: {err}") from None

    def check_model(self, model: CausalVQ) -> None:
        """Raise ``ValueError`` unless the calibration was measured on this model's weights and score."""
        if self.score != model.config.retrieval_score:
            raise ValueError(f"it was measured with retrieval_score {self.score!r}, the model uses "
                             f"{model.config.retrieval_score!r}")
        if self.model_digest and self.model_digest != model_digest(model):
            raise ValueError("it was measured on other weights; recalibrate (python -m train calibrate "
                             "--checkpoint DIR)")

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``retrieval.json`` into ``folder`` atomically; returns its path."""
        path = Path(folder) / CALIBRATION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.to_dict(), indent=2) + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def load_calibration(folder: str | os.PathLike, model: CausalVQ | None = None) -> RejectCalibration | None:
    """The ``retrieval.json`` of a release folder (``None`` when it has none), checked against ``model``.

    Raises:
        ValueError: the file is unreadable, malformed, or was measured on another model (the message says which).
    """
    path = Path(folder) / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        cal = RejectCalibration.from_dict(json.loads(path.read_text()))
        if model is not None:
            cal.check_model(model)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"{path.name} cannot be used: {err}") from None
    return cal


def calibrate(model: CausalVQ, dataset: FactorDataset, sampler: TransitionSampler, num_images: int = 128,
              steps: int = STEPS, quantile: float = QUANTILE, seed: int = 0, batch_size: int = 64
              ) -> RejectCalibration:
    """Measure the reject rule of ``model`` on pairs of the sampler's split (``draw_pairs``, ``num_images`` images
    x): thresholds and margin from its true moves, then the rates of the rule on all its pairs."""
    _check_factors(model, dataset)
    names = tuple(dataset.factor_names)
    pairs = draw_pairs(sampler, num_images, steps, np.random.default_rng([seed, _STREAM]))
    scores = score_pairs(model, dataset, pairs, steps, batch_size)
    scores = extend_pairs(model, scores, own_moves_found(pairs, scores), batch_size)
    thresholds, limits, margin = fit_rule(pairs, scores, quantile, model.config.num_factors)
    cal = RejectCalibration(steps=steps, quantile=quantile, thresholds=thresholds, limits=limits, margin=margin,
                            score=model.config.retrieval_score, split=SPLITS[sampler.split], split_seed=sampler.seed,
                            fractions=tuple(sampler.fractions), seed=seed, rates=empty_rates(steps, names),
                            model_digest=model_digest(model))
    scores = extend_pairs(model, scores, within_threshold(scores, cal), batch_size)
    rates = rates_of(judge(scores, cal), pairs, names, steps)
    return dataclasses.replace(cal, rates=rates)


def own_moves_found(pairs: RejectPairs, scores: PairScores) -> np.ndarray:
    """Indices of the true moves whose closest move is their own (action, k) and whose codes differ: the pairs
    behind the margin (their extension rows must be filled before ``fit_rule``)."""
    single = np.flatnonzero((pairs.kind == SINGLE) & ~scores.same)
    closest = np.asarray([closest_move(d) for d in scores.distances[single]]).reshape(-1, 2)  # (s, 2)
    return single[(closest[:, 0] == pairs.action[single]) & (closest[:, 1] == pairs.steps[single])]


def fit_rule(pairs: RejectPairs, scores: PairScores, quantile: float, num_factors: int
             ) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """Thresholds `(K,)`, unexplained-code limits `(K,)` and margin: the ``quantile`` of the true k-step moves'
    distance and unexplained codes at their own (action, k), and of the extension gain of ``own_moves_found``.

    Raises:
        ValueError: some k has no true pair.
    """
    steps = scores.distances.shape[2]
    single = np.flatnonzero(pairs.kind == SINGLE)
    at = (single, pairs.action[single], pairs.steps[single] - 1)  # each true move's own (action, k)
    of_k = [pairs.steps[single] == k for k in range(1, steps + 1)]
    if not all(m.any() for m in of_k):
        missing = [k + 1 for k, m in enumerate(of_k) if not m.any()]
        raise ValueError(f"no true move of {missing} step(s) to calibrate on")
    thresholds = tuple(float(np.quantile(scores.distances[at][m], quantile)) for m in of_k)
    limits = tuple(float(np.quantile(scores.unexplained[at][m], quantile)) for m in of_k)
    gains = [extension_gain(scores, i, num_factors) for i in own_moves_found(pairs, scores)]
    return thresholds, limits, float(np.quantile(gains, quantile)) if gains else 0.0


def measure(model: CausalVQ, dataset: FactorDataset, sampler: TransitionSampler, calibration: RejectCalibration,
            num_images: int = 128, seed: int = 0, batch_size: int = 64) -> RejectRates:
    """The rates of the rule with ``calibration`` on fresh pairs of the sampler's split (``num_images`` images x)."""
    _check_factors(model, dataset)
    steps = calibration.steps
    pairs = draw_pairs(sampler, num_images, steps, np.random.default_rng([seed, _STREAM, 1]))
    scores = score_pairs(model, dataset, pairs, steps, batch_size)
    scores = extend_pairs(model, scores, within_threshold(scores, calibration), batch_size)
    return rates_of(judge(scores, calibration), pairs, tuple(dataset.factor_names), steps)


@dataclass(frozen=True)
class RejectResult:
    """The evaluation's section (``evaluate_reject``): the rule calibrated on the validation split, and its rates on
    fresh pairs of the evaluated split."""

    calibration: RejectCalibration  # thresholds, margin, and the rates on the validation pairs themselves
    rates: RejectRates  # on pairs of the evaluated split

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RejectResult:
        return cls(calibration=RejectCalibration.from_fields(dict(data["calibration"])),
                   rates=RejectRates.from_dict(dict(data["rates"])))


def evaluate_reject(model: CausalVQ, dataset: FactorDataset, sampler: TransitionSampler, num_images: int = 128,
                    seed: int = 0, batch_size: int = 64) -> RejectResult | str:
    """``calibrate_for`` the sampler's grid, then ``measure`` on the sampler's split (``num_images`` images x); a
    sentence saying why instead when the grid cannot give the pairs."""
    cal = calibrate_for(model, dataset, sampler, num_images, seed, batch_size)
    if isinstance(cal, str):
        return cal
    try:
        return RejectResult(calibration=cal, rates=measure(model, dataset, sampler, cal, num_images, seed, batch_size))
    except ValueError as err:
        return f"not measured: {err}"


def calibrate_for(model: CausalVQ, dataset: FactorDataset, sampler: TransitionSampler, num_images: int = 128,
                  seed: int = 0, batch_size: int = 64) -> RejectCalibration | str:
    """``calibrate`` on the validation split of the sampler's grid (its split seed and fractions, uniform draws),
    moves of 1..K steps with K = min(STEPS, largest factor size − 1): what the evaluation and a release store. A
    sentence saying why instead when the grid cannot give the pairs (no validation split, no factor longer than
    one step, no true move of some k)."""
    try:
        steps = min(STEPS, max(dataset.factor_sizes) - 1)
        return calibrate(model, dataset, sibling_sampler(sampler, "val"), num_images, steps, seed=seed,
                         batch_size=batch_size)
    except ValueError as err:
        return f"not measured: {err}"


def sibling_sampler(sampler: TransitionSampler, split: str) -> TransitionSampler:
    """A sampler of another split of the same grid (split seed and fractions), drawing uniformly."""
    return TransitionSampler(sampler.ds, split=split, seed=sampler.seed, fractions=sampler.fractions)


def model_digest(model: CausalVQ) -> str:
    """SHA-256 of every weight of the model: a calibration measured on one model means nothing on another."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --- helpers -------------------------------------------------------------------------------------------------------
def extension_gain(scores: PairScores, i: int, num_factors: int) -> float:
    """What one more step of another factor gains on pair ``i``'s closest move (its extension row is filled)."""
    a, k = closest_move(scores.distances[i])
    other = np.arange(scores.extension.shape[1]) % num_factors != a % num_factors
    return float(scores.distances[i, a, k - 1] - scores.extension[i, other].min())


def empty_rates(steps: int, names: tuple[str, ...]) -> RejectRates:
    """Rates of nothing measured yet (a calibration built by hand)."""
    return RejectRates(None, None, None, None, (None,) * steps, (0,) * steps, dict.fromkeys(names),
                       dict.fromkeys(names), dict.fromkeys(names, 0), dict.fromkeys(names, 0), {}, {}, 0)


@contextmanager
def _eval_mode(model: CausalVQ) -> Iterator[None]:
    """Eval mode (no dropout, thresholds) inside the block; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _encode(model: CausalVQ, dataset: FactorDataset, factors: np.ndarray, batch_size: int) -> torch.Tensor:
    """Flat codes `(m, n)` on the CPU of the images of ``factors`` `(m, f)` (eval mode, no gradients)."""
    with torch.inference_mode():
        return torch.cat([model.flatten_codes(model.encode_codes(
            render_images(dataset, factors[s:s + batch_size], model.config.image_size).to(model.device))).cpu()
            for s in range(0, len(factors), batch_size)])  # fmt: skip


def _check_factors(model: CausalVQ, dataset: FactorDataset) -> None:
    mine = dict(zip(model.config.factor_names, model.config.factor_sizes))
    theirs = dict(zip(dataset.factor_names, dataset.factor_sizes))
    if mine != theirs:
        raise ValueError(f"the model's factors {mine} are not {dataset.name}'s {theirs}")


def to_jsonable(value: Any) -> Any:
    """Dicts, lists and numpy scalars → what ``json`` writes (keys as strings); the reports and retrieval.json."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
