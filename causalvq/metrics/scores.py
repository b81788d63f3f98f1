"""Pure metric cores of the evaluation, over tensors and factor arrays: PSNR, the retrieval accuracies and
confusion matrix, k-step factor moves and the nearest-candidate test of intervention accuracy.

``causalvq.metrics.evaluation`` feeds them the model's outputs; each is tested on hand-built inputs.

Axis legend: ``b`` images or pairs, ``c`` channels, ``S`` image side, ``a`` actions (A = 2F), ``f`` factors (F),
``m`` intervention candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange

from causalvq.metrics.report import RetrievalResult


def psnr_from_mse(mse: float, max_value: float = 1.0) -> float:
    """PSNR in dB of a mean squared error on a ``[0, max_value]`` scale: 10·log10(max² / mse); inf at 0."""
    if not math.isfinite(mse) or mse < 0:
        raise ValueError(f"mse must be finite and non-negative, got {mse}")
    return math.inf if mse == 0 else 10.0 * math.log10(max_value**2 / mse)


def fold_directions(probs: torch.Tensor) -> torch.Tensor:
    """Factor probabilities of action probabilities: `(b, 2F)` → `(b, F)`, p_f + p_{F+f}."""
    if probs.ndim != 2 or probs.shape[1] % 2:
        raise ValueError(f"probs must be (b, 2F), got {tuple(probs.shape)}")
    up, down = rearrange(probs, "b (d f) -> d b f", d=2)
    return up + down


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts `(num_classes, num_classes)`, row = true class, column = predicted, of labels `(b,)`."""
    flat = true.long() * num_classes + pred.long()  # (b,)
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def group_mean(values: torch.Tensor, groups: torch.Tensor, names: tuple[str, ...]) -> dict[str, float | None]:
    """Mean of `values (b,)` per group id `(b,)` in 0..len(names)−1; None for an empty group."""
    return {name: float(values[groups == g].float().mean()) if bool((groups == g).any()) else None
            for g, name in enumerate(names)}  # fmt: skip


def group_count(groups: torch.Tensor, names: tuple[str, ...]) -> dict[str, int]:
    return dict(zip(names, torch.bincount(groups, minlength=len(names)).tolist()))


def retrieval_result(probs: torch.Tensor, action: torch.Tensor, factor_names: tuple[str, ...]) -> RetrievalResult:
    """Directed and undirected retrieval accuracies of action probabilities.

    Args:
        probs: `(b, a)` p(a | x, y), a = 2F, index a = f + F·dir.
        action: `(b,)` true actions, b >= 1.
        factor_names: the F factor names, keys of the per-factor entries.
    """
    num_factors = len(factor_names)
    if probs.ndim != 2 or probs.shape[1] != 2 * num_factors or action.shape != probs.shape[:1] or not len(action):
        raise ValueError(f"probs must be (b, {2 * num_factors}) and action (b,) with b >= 1; got "
                         f"{tuple(probs.shape)} and {tuple(action.shape)}")
    probs, action = probs.detach().cpu().float(), action.detach().cpu().long()
    pred = probs.argmax(-1)  # (b,)
    true_factor = action % num_factors  # (b,)
    hit, hit_factor = pred == action, fold_directions(probs).argmax(-1) == true_factor
    return RetrievalResult(
        action_accuracy=float(hit.float().mean()),
        factor_accuracy=float(hit_factor.float().mean()),
        action_chance=1.0 / (2 * num_factors),
        factor_chance=1.0 / num_factors,
        per_factor_action_accuracy=group_mean(hit, true_factor, factor_names),
        per_factor_factor_accuracy=group_mean(hit_factor, true_factor, factor_names),
        per_factor_pairs=group_count(true_factor, factor_names),
        confusion=tuple(map(tuple, confusion_matrix(action, pred, 2 * num_factors).tolist())),
        num_pairs=len(action),
        argmax_factor_accuracy=float((pred % num_factors == true_factor).float().mean()),
    )


def move_factors(factors: np.ndarray, action: np.ndarray, steps: int,
                 factor_sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Apply each action ``steps`` times to factor vectors.

    Args:
        factors: int `(b, f)`; action: int `(b,)`, a = f + F·dir (dir 1 = down).
    Returns:
        moved factors int64 `(b, f)` (invalid rows clipped into range) and ``valid`` bool `(b,)`: the moved
        value stays in 0..size−1.
    """
    sizes = np.asarray(factor_sizes)
    factors, action = np.asarray(factors, dtype=np.int64), np.asarray(action, dtype=np.int64)
    rows, f = np.arange(len(factors)), action % len(sizes)  # (b,), (b,)
    target = factors[rows, f] + steps * np.where(action < len(sizes), 1, -1)  # (b,)
    moved = factors.copy()
    moved[rows, f] = np.clip(target, 0, sizes[f] - 1)
    return moved, (target >= 0) & (target < sizes[f])


@dataclass(frozen=True)
class CandidateScore:
    hit: torch.Tensor  # (b,) bool, the prediction is strictly nearest to the target candidate
    chance: torch.Tensor  # (b,) float64, hit rate of a uniformly drawn valid candidate


def nearest_candidate(pred: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor,
                      target: torch.Tensor) -> CandidateScore:
    """Whether each prediction is strictly nearer (pixel MSE) to its target candidate than to every rival.

    Rivals are the valid candidates whose image differs from the target's (an identical rendering cannot be
    told apart: it is no rival, and drawing it counts as a hit for the chance level).

    Args:
        pred: `(b, c, S, S)` predicted images.
        candidates: `(b, m, c, S, S)` candidate images.
        valid: `(b, m)` bool, which candidates exist; every target is valid.
        target: `(b,)` index of the true candidate.
    """
    rows = torch.arange(pred.shape[0])
    dist = ((candidates - pred[:, None]) ** 2).flatten(2).mean(-1)  # (b, m)
    same = valid & (candidates == candidates[rows, target][:, None]).flatten(2).all(-1)  # (b, m)
    rival = dist.masked_fill(~valid | same, math.inf).amin(-1)  # (b,)
    return CandidateScore(hit=dist[rows, target] < rival, chance=same.sum(1).double() / valid.sum(1).double())
