"""Model evaluation (paper §10): reconstruction, action retrieval, k-step intervention and disentanglement.

``evaluate_model(model, dataset)`` measures a ``CausalVQ`` on one split of a ``FactorDataset`` and returns an
``EvalReport`` (a frozen dataclass of named results); ``write_report`` writes it as ``eval.json``, ``eval.md``
and ``confusion.png``. Everything is deterministic: the model runs in eval mode under ``torch.no_grad`` with
``sample=False`` (thresholds instead of Gumbel noise), and every draw comes from a numpy generator seeded by
``seed`` (one independent stream per section, so switching a section off leaves the others unchanged).

Images are rendered from known factors by ``dataset.render``, converted with ``causalvq.imaging.to_tensor`` and
resized to ``model.config.image_size`` with ``causalvq.imaging.resize_images``, the same way for inputs, targets
and intervention candidates. Points and pairs come from a ``TransitionSampler`` of the split: both images of a
pair lie in the split.

Protocol (what each number means):

- **Reconstruction**: mean over pixels and images of (x̂ − x)² on [0, 1]; PSNR = 10·log10(1 / mean MSE).
- **Action retrieval** (§10.1-2): on one-step transition pairs (x, y). Directed accuracy: argmax over the A
  actions of p(a | x, y) equals the true action (chance 1/A). Factor (undirected) accuracy: fold the two
  directions, p_f + p_{F+f}, and compare argmaxes over the F factors (chance 1/F). Both also per factor (pairs
  grouped by the factor that moved), and the A×A confusion matrix (row = true action, column = predicted).
  Argmax factor accuracy: the factor of the argmax action is the true one (the official code's
  ``causal_nodir_acc``, which folds the one-hot prediction, not p; with directed accuracy, the retrieval metrics
  of the official notebook apply_action.ipynb, here a clean mean over the pairs).
- **Intervention accuracy** (a causalvq addition; the paper shows k repeated applications qualitatively, §10.5):
  for x of the split and an action a that can be applied k times without leaving the factor range (y_k in the
  split too), decode ``model.intervene(x, a, steps=k)`` and count it correct when its pixel MSE to the true y_k
  is strictly smaller than to x itself and to every other k-step neighbour of x (every other action applied k
  times where it stays in range). A candidate rendering to exactly the image of y_k is no rival. Chance is the
  hit rate of a uniformly drawn candidate (1 / number of candidates when all renderings differ). Also the mean
  pixel MSE between the decoded image and y_k (the action-mode MSE of §10.3).
- **Disentanglement** (§10.4): ``causalvq.metrics.disentanglement.evaluate_representation`` (DCI, MIG, SAP,
  FactorVAE) on points of the split, for the faithful representation ``"encoder"`` (continuous pre-quantization
  encoder output, flattened: D·h·w dims) and ``"codes_onehot"`` (one-hot code indices, flattened: L·N dims; a
  causalvq addition), each beside the same scores of a random representation of its width at the same sizes
  (``noise_baseline``, in the chance column). Sizes: ``DisentanglementSizes`` (default ``"library"``,
  disentanglement_lib's; the ``"cpu"`` preset is the named faster setting).
  FactorVAE's groups hold one factor at a sampled value, which can move a point out of the split (the official
  protocol samples the whole dataset).

Axis legend: ``b`` images or pairs, ``c`` channels, ``S`` image side, ``a`` actions (A = 2F), ``f`` factors (F),
``m`` intervention candidates (1 + A: x itself, then every action applied k times).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from causalvq.config import ModelConfig
from causalvq.data import render_images
from causalvq.data.base import FactorDataset
from causalvq.data.pairs import SPLITS, TransitionSampler
from causalvq.metrics.disentanglement import (
    SIZE_PRESETS,
    DisentanglementSizes,
    evaluate_representation,
    noise_baseline,
)
from causalvq.metrics.structure import StructureResult, evaluate_structure
from causalvq.model import CausalVQ

# One independent random stream per section: np.random.default_rng([seed, stream]).
_STREAMS = {"reconstruction": 0, "retrieval": 1, "intervention": 2, "disentanglement": 3, "structure": 4}
REPRESENTATIONS: dict[str, str] = {
    "encoder": "continuous pre-quantization encoder output, flattened (paper §10.4, faithful)",
    "codes_onehot": "one-hot code indices, flattened (causalvq addition)",
}


# --- results -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReconstructionResult:
    mse: float  # mean squared error on [0, 1], over pixels and images
    psnr: float  # dB, 10·log10(1 / mse); inf for a perfect reconstruction
    num_images: int


@dataclass(frozen=True)
class RetrievalResult:
    action_accuracy: float  # directed: argmax over the A actions
    factor_accuracy: float  # undirected: argmax over the F factors of p_f + p_{F+f}
    action_chance: float  # 1 / A
    factor_chance: float  # 1 / F
    per_factor_action_accuracy: dict[str, float | None]  # factor name -> directed accuracy (None: no pairs)
    per_factor_factor_accuracy: dict[str, float | None]  # factor name -> undirected accuracy
    per_factor_pairs: dict[str, int]  # factor name -> pairs moving it
    confusion: tuple[tuple[int, ...], ...]  # (a, a) counts, row = true action, column = predicted
    num_pairs: int
    argmax_factor_accuracy: float | None = None  # the official causal_nodir_acc: argmax action's factor (None: older)


@dataclass(frozen=True)
class InterventionResult:
    steps: int  # k, applications of the action
    accuracy: float | None  # share of pairs decoded nearest to the true y_k (None: no pairs)
    chance: float | None  # hit rate of a uniformly drawn candidate
    mse: float | None  # mean pixel MSE between the decoded image and y_k
    per_factor_accuracy: dict[str, float | None]  # factor name -> accuracy over the pairs moving it
    per_factor_pairs: dict[str, int]
    num_pairs: int


@dataclass(frozen=True)
class CodeResult:
    """The transition at the code level, on one-step pairs: which of y's codes it predicts, and the graph it uses.

    A node is *changed* when the action changes its code (the codes of x and y differ there). Graph sizes count the
    off-diagonal edges of the deterministic graph (edge probability > 0.5) per node.
    """

    changed_accuracy: float | None  # share of changed nodes given y's code exactly (None: no node changed)
    unchanged_accuracy: float | None  # share of the other nodes given y's (= x's) code
    per_factor_changed_accuracy: dict[str, float | None]  # over the pairs moving each factor
    per_factor_changed_nodes: dict[str, float | None]  # mean changed nodes per pair
    mask_nodes: float  # mean nodes in the intervention mask per pair
    action_edges_per_node: float  # in-edges per node of the graph under the pair's action
    no_action_edges_per_node: float  # in-edges per node of the no-action graph
    action_edge_probability: float  # mean off-diagonal edge probability C under the pair's action
    no_action_edge_probability: float  # the same with no action
    num_pairs: int


@dataclass(frozen=True)
class DisentanglementResult:
    representation: str  # a key of REPRESENTATIONS
    description: str
    dims: int  # size of the flattened representation
    scores: dict[str, float]  # evaluate_representation's output (dci.*, mig, sap, factor_vae.*)
    baseline: dict[str, float] | None = None  # the same of a random representation as wide (noise_baseline)


@dataclass(frozen=True)
class MetricRow:
    name: str  # dotted metric name, e.g. "retrieval.factor_accuracy.scale"
    value: float | None  # None: no samples
    chance: float | None  # chance level where one applies
    samples: int  # points or pairs behind the value


@dataclass(frozen=True)
class EvalReport:
    """Everything ``evaluate_model`` measured, with the protocol needed to read it."""

    dataset: str
    split: str
    seed: int
    image_size: int  # model resolution S the images were resized to
    factor_names: tuple[str, ...]
    action_names: tuple[str, ...]
    reconstruction: ReconstructionResult
    retrieval: RetrievalResult
    codes: CodeResult | None  # on the retrieval pairs (None in reports written before it existed)
    structure: StructureResult | None  # masks, graphs and do() on the retrieval pairs (None: written before it)
    intervention: tuple[InterventionResult, ...]  # k = 1 .. max_steps
    disentanglement: tuple[DisentanglementResult, ...]  # empty when switched off
    protocol: dict[str, Any]  # split seed, sample sizes and switches
    seconds: dict[str, float]  # wall time per section

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists); ``EvalReport.from_dict`` inverts it."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Rebuild a report from ``to_dict``'s output (e.g. a loaded ``eval.json``)."""
        retrieval = dict(data["retrieval"])
        retrieval["confusion"] = tuple(tuple(int(v) for v in row) for row in retrieval["confusion"])
        return cls(
            dataset=data["dataset"], split=data["split"], seed=int(data["seed"]), image_size=int(data["image_size"]),
            factor_names=tuple(data["factor_names"]), action_names=tuple(data["action_names"]),
            reconstruction=ReconstructionResult(**data["reconstruction"]),
            retrieval=RetrievalResult(**retrieval),
            codes=CodeResult(**data["codes"]) if data.get("codes") else None,
            structure=StructureResult.from_dict(data["structure"]) if data.get("structure") else None,
            intervention=tuple(InterventionResult(**i) for i in data["intervention"]),
            disentanglement=tuple(DisentanglementResult(**d) for d in data["disentanglement"]),
            protocol=dict(data["protocol"]), seconds=dict(data["seconds"]),
        )  # fmt: skip

    def rows(self) -> list[MetricRow]:
        """Every scalar metric, with its chance level and sample count (the rows of ``eval.md``)."""
        rec, ret = self.reconstruction, self.retrieval
        out = [MetricRow("reconstruction.mse", rec.mse, None, rec.num_images),
               MetricRow("reconstruction.psnr_db", rec.psnr, None, rec.num_images),
               MetricRow("retrieval.action_accuracy", ret.action_accuracy, ret.action_chance, ret.num_pairs),
               MetricRow("retrieval.factor_accuracy", ret.factor_accuracy, ret.factor_chance, ret.num_pairs)]
        if ret.argmax_factor_accuracy is not None:
            out.append(MetricRow("retrieval.argmax_factor_accuracy", ret.argmax_factor_accuracy, ret.factor_chance,
                                 ret.num_pairs))
        for name in self.factor_names:
            n = ret.per_factor_pairs[name]
            out += [MetricRow(f"retrieval.action_accuracy.{name}", ret.per_factor_action_accuracy[name],
                              ret.action_chance, n),
                    MetricRow(f"retrieval.factor_accuracy.{name}", ret.per_factor_factor_accuracy[name],
                              ret.factor_chance, n)]
        if (codes := self.codes) is not None:
            n = codes.num_pairs
            out += [MetricRow("codes.changed_accuracy", codes.changed_accuracy, None, n),
                    MetricRow("codes.unchanged_accuracy", codes.unchanged_accuracy, None, n)]
            out += [MetricRow(f"codes.changed_accuracy.{name}", codes.per_factor_changed_accuracy[name], None,
                              ret.per_factor_pairs[name]) for name in self.factor_names]
            out += [MetricRow(f"codes.changed_nodes.{name}", codes.per_factor_changed_nodes[name], None,
                              ret.per_factor_pairs[name]) for name in self.factor_names]
            out += [MetricRow("codes.mask_nodes", codes.mask_nodes, None, n),
                    MetricRow("graph.edges_per_node.action", codes.action_edges_per_node, None, n),
                    MetricRow("graph.edges_per_node.no_action", codes.no_action_edges_per_node, None, n),
                    MetricRow("graph.edge_probability.action", codes.action_edge_probability, None, n),
                    MetricRow("graph.edge_probability.no_action", codes.no_action_edge_probability, None, n)]
        if (st := self.structure) is not None:
            out += _structure_rows(st, self.factor_names, ret.per_factor_pairs)
        for res in self.intervention:
            key = f"intervention.k{res.steps}"
            out += [MetricRow(f"{key}.accuracy", res.accuracy, res.chance, res.num_pairs),
                    MetricRow(f"{key}.mse", res.mse, None, res.num_pairs)]
            out += [MetricRow(f"{key}.accuracy.{name}", res.per_factor_accuracy[name], None,
                              res.per_factor_pairs[name]) for name in self.factor_names]
        sizes = self.protocol.get("disentanglement") or {}
        points = sizes.get("num_train", 0) + sizes.get("num_test", 0)
        samples = {"dci": sizes.get("dci_num_train", sizes.get("num_train", 0))
                          + sizes.get("dci_num_test", sizes.get("num_test", 0)),
                   "mig": sizes.get("num_train", 0), "sap": points,
                   "factor_vae": sizes.get("factor_vae_train", 0) + sizes.get("factor_vae_eval", 0) or points}
        for dis in self.disentanglement:
            base = dis.baseline or {}
            out += [MetricRow(f"disentanglement.{dis.representation}.{k}", v, base.get(k),
                              samples[k.split(".")[0]]) for k, v in dis.scores.items()]
        return out  # fmt: skip

    def metrics(self) -> dict[str, float | None]:
        """Every scalar metric by dotted name."""
        return {row.name: row.value for row in self.rows()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- pure metric cores -----------------------------------------------------------------------------------------
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


def _group_mean(values: torch.Tensor, groups: torch.Tensor, names: tuple[str, ...]) -> dict[str, float | None]:
    """Mean of `values (b,)` per group id `(b,)` in 0..len(names)−1; None for an empty group."""
    return {name: float(values[groups == g].float().mean()) if bool((groups == g).any()) else None
            for g, name in enumerate(names)}  # fmt: skip


def _group_count(groups: torch.Tensor, names: tuple[str, ...]) -> dict[str, int]:
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
        per_factor_action_accuracy=_group_mean(hit, true_factor, factor_names),
        per_factor_factor_accuracy=_group_mean(hit_factor, true_factor, factor_names),
        per_factor_pairs=_group_count(true_factor, factor_names),
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


# --- rendering, batching, sampling --------------------------------------------------------------------------------
@contextmanager
def inference_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no gradients inside the block; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _batched(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, batch_size: int,
             device: torch.device) -> torch.Tensor:
    """``fn`` on slices of ``batch_size`` rows of every input, moved to ``device``; outputs joined on the CPU."""
    n = len(inputs[0])
    return torch.cat([fn(*(x[i:i + batch_size].to(device) for x in inputs)).cpu()
                      for i in range(0, n, batch_size)])  # fmt: skip


def sample_step_pairs(sampler: TransitionSampler, n: int, steps: int, rng: np.random.Generator,
                      max_rounds: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs (x, a) of the sampler's split where ``a`` applied ``steps`` times stays in range.

    x comes from ``sampler.sample_images``; the action is uniform among those that keep the factor in range for
    ``steps`` steps and land in the same split (``sampler.in_split``: a pair never crosses splits); an x with no
    such action is redrawn. Returns factors int64 `(b, f)` and actions int64 `(b,)` with b = n, or fewer
    (possibly 0) when no factor has more than ``steps`` values or ``max_rounds`` draws find too few pairs.
    """
    sizes = tuple(sampler.ds.factor_sizes)
    num_actions = 2 * len(sizes)
    xs, acts, have = [np.zeros((0, len(sizes)), np.int64)], [np.zeros(0, np.int64)], 0
    for _ in range(max_rounds if max(sizes) > steps else 0):
        if have >= n:
            break
        x = np.asarray(sampler.sample_images(2 * (n - have), rng), dtype=np.int64)  # (r, f)
        ok = np.zeros((len(x), num_actions), dtype=bool)  # (r, a)
        for a in range(num_actions):
            moved, valid = move_factors(x, np.full(len(x), a), steps, sizes)
            ok[:, a] = valid & sampler.in_split(moved)
        x, ok = x[ok.any(1)], ok[ok.any(1)]
        xs.append(x)
        acts.append(np.where(ok, rng.random(ok.shape), -1.0).argmax(1))  # a uniform valid action per row
        have += len(x)
    return np.concatenate(xs)[:n], np.concatenate(acts)[:n].astype(np.int64)


# --- the sections (each runs the model in eval mode, without gradients) ------------------------------------------
def evaluate_reconstruction(model: CausalVQ, dataset: FactorDataset, factors: np.ndarray,
                            batch_size: int = 64) -> ReconstructionResult:
    """Reconstruction MSE and PSNR on the images of ``factors (b, f)``, b >= 1."""
    x = render_images(dataset, factors, model.config.image_size)
    with inference_mode(model):
        per_image = _batched(lambda xb: ((model.reconstruct(xb).image - xb) ** 2).flatten(1).mean(1), x,
                             batch_size=batch_size, device=model.device)  # (b,)
    mse = float(per_image.double().mean())
    return ReconstructionResult(mse=mse, psnr=psnr_from_mse(mse), num_images=len(per_image))


def evaluate_retrieval(model: CausalVQ, dataset: FactorDataset, x_factors: np.ndarray, y_factors: np.ndarray,
                       actions: np.ndarray, batch_size: int = 64) -> RetrievalResult:
    """Action retrieval on transition pairs given by factors `(b, f)` of x and y and true actions `(b,)`."""
    s = model.config.image_size
    x, y = render_images(dataset, x_factors, s), render_images(dataset, y_factors, s)
    with inference_mode(model):
        probs = _batched(lambda xb, yb: model.retrieve_action(xb, yb, sample=False).probs, x, y,
                         batch_size=batch_size, device=model.device)  # (b, a)
    return retrieval_result(probs, torch.as_tensor(actions, dtype=torch.long), tuple(dataset.factor_names))


def evaluate_codes(model: CausalVQ, dataset: FactorDataset, x_factors: np.ndarray, y_factors: np.ndarray,
                   actions: np.ndarray, batch_size: int = 64) -> CodeResult:
    """Code-level accuracy of one-step transitions (x, a, y) given by factors `(b, f)` and actions `(b,)`, and the
    size of the deterministic graphs the transition used."""
    s, names = model.config.image_size, tuple(dataset.factor_names)
    x, y = render_images(dataset, x_factors, s), render_images(dataset, y_factors, s)
    act = torch.as_tensor(actions, dtype=torch.long)

    def edges_per_node(graph: torch.Tensor) -> torch.Tensor:  # (b, n, n) → (b,), self-loops not counted
        return (graph > 0.5).sum((1, 2)).sub((graph.diagonal(dim1=1, dim2=2) > 0.5).sum(1)) / graph.shape[1]

    def edge_probability(C: torch.Tensor) -> torch.Tensor:  # (b, n, n) → (b,), mean off the diagonal
        n = C.shape[1]
        return (C.sum((1, 2)) - C.diagonal(dim1=1, dim2=2).sum(1)) / (n * (n - 1))

    def one(xb: torch.Tensor, yb: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        nx, ny = model.flatten_codes(model.encode_codes(xb)), model.flatten_codes(model.encode_codes(yb))
        out = model.transition(nx, ab, sample=False)
        base = model.transition(nx, None, sample=False)
        hit, changed = out.probs.argmax(-1) == ny, nx != ny  # (b, n)
        return torch.stack([(hit & changed).sum(1), (hit & ~changed).sum(1), changed.sum(1), (~changed).sum(1),
                            (out.mask > 0.5).sum(1), edges_per_node(out.graph), edges_per_node(base.graph),
                            edge_probability(out.edge_probs), edge_probability(base.edge_probs)], 1).float()  # (b, 9)

    with inference_mode(model):
        per_pair = _batched(one, x, y, act, batch_size=batch_size, device=model.device).double()  # (b, 9)
    hit_changed, hit_kept, changed, kept, mask, action_edges, base_edges, action_p, base_p = per_pair.unbind(1)
    ratio = lambda num, den: float(num.sum() / den.sum()) if den.sum() > 0 else None  # noqa: E731
    factor = act % len(names)
    return CodeResult(
        changed_accuracy=ratio(hit_changed, changed),
        unchanged_accuracy=ratio(hit_kept, kept),
        per_factor_changed_accuracy={n: ratio(hit_changed[factor == f], changed[factor == f])
                                     for f, n in enumerate(names)},
        per_factor_changed_nodes=_group_mean(changed, factor, names),
        mask_nodes=float(mask.mean()),
        action_edges_per_node=float(action_edges.mean()),
        no_action_edges_per_node=float(base_edges.mean()),
        action_edge_probability=float(action_p.mean()),
        no_action_edge_probability=float(base_p.mean()),
        num_pairs=len(act),
    )  # fmt: skip


def evaluate_intervention(model: CausalVQ, dataset: FactorDataset, x_factors: np.ndarray, actions: np.ndarray,
                          steps: int, batch_size: int = 64) -> InterventionResult:
    """k-step intervention accuracy on pairs (x, a): factors `(b, f)` and actions `(b,)` applicable k times."""
    sizes, names = tuple(dataset.factor_sizes), tuple(dataset.factor_names)
    b = len(x_factors)
    if b == 0:
        return InterventionResult(steps=steps, accuracy=None, chance=None, mse=None,
                                  per_factor_accuracy=dict.fromkeys(names), per_factor_pairs=dict.fromkeys(names, 0),
                                  num_pairs=0)  # fmt: skip
    # candidates: x itself, then every action applied k times; each distinct factor vector rendered once
    moved, valid = zip(*(move_factors(x_factors, np.full(b, a), steps, sizes) for a in range(2 * len(sizes))))
    cand_factors = np.stack([x_factors, *moved], 1)  # (b, m, f)
    cand_valid = torch.from_numpy(np.stack([np.ones(b, dtype=bool), *valid], 1))  # (b, m)
    act = torch.as_tensor(actions, dtype=torch.long)  # (b,)
    target = act + 1  # (b,) index of y_k among the candidates
    if not bool(cand_valid[torch.arange(b), target].all()):
        raise ValueError(f"some actions cannot be applied {steps} times without leaving the factor range")
    unique, inverse = np.unique(cand_factors[cand_valid.numpy()], axis=0, return_inverse=True)
    images = render_images(dataset, unique, model.config.image_size)  # (u, c, S, S)
    index = torch.zeros(cand_valid.shape, dtype=torch.long)  # (b, m) row of each candidate in `images`
    index[cand_valid] = torch.from_numpy(inverse.reshape(-1)).long()
    with inference_mode(model):
        pred = _batched(lambda xb, ab: model.intervene(xb, ab, steps=steps, sample=False).image,
                        images[index[:, 0]], act, batch_size=batch_size, device=model.device)  # (b, c, S, S)
    scores = [nearest_candidate(pred[i:i + batch_size], images[index[i:i + batch_size]],
                                cand_valid[i:i + batch_size], target[i:i + batch_size])
              for i in range(0, b, batch_size)]  # candidate images (batch, m, c, S, S) one batch at a time
    hit = torch.cat([sc.hit for sc in scores])  # (b,)
    y = images[index[torch.arange(b), target]]  # (b, c, S, S)
    return InterventionResult(
        steps=steps,
        accuracy=float(hit.float().mean()),
        chance=float(torch.cat([sc.chance for sc in scores]).mean()),
        mse=float(((pred - y) ** 2).double().mean()),
        per_factor_accuracy=_group_mean(hit, act % len(sizes), names),
        per_factor_pairs=_group_count(act % len(sizes), names),
        num_pairs=b,
    )


def representation_dims(config: ModelConfig, representation: str) -> int:
    """Size of a flattened representation: ``"encoder"`` D·h·w, ``"codes_onehot"`` L·N."""
    if representation == "encoder":
        return config.embedding_dim * config.grid_size**2
    if representation == "codes_onehot":
        return config.num_nodes * config.codebook_size
    raise ValueError(f"unknown representation {representation!r}; known: {', '.join(REPRESENTATIONS)}")


def representation_fn(model: CausalVQ, dataset: FactorDataset, representation: str,
                      batch_size: int = 64) -> Callable[[np.ndarray], np.ndarray]:
    """``factors int (n, f) -> float (n, d)``: a representation of the images of the factors.

    ``"encoder"``: ``model.encoder(x).flatten(1)``, the continuous pre-quantization output, d = D·h·w (paper
    §10.4). ``"codes_onehot"``: one-hot ``model.encode_codes(x)`` flattened, d = L·N.
    """
    representation_dims(model.config, representation)  # reject an unknown name now
    v = model.config.codebook_size

    def one(x: torch.Tensor) -> torch.Tensor:
        if representation == "encoder":
            return model.encoder(x).flatten(1)  # (b, D·h·w)
        return torch.nn.functional.one_hot(model.encode_codes(x), v).flatten(1).float()  # (b, L·N)

    def represent(factors: np.ndarray) -> np.ndarray:
        x = render_images(dataset, factors, model.config.image_size)
        with inference_mode(model):
            return _batched(one, x, batch_size=batch_size, device=model.device).numpy()

    return represent


def evaluate_disentanglement(model: CausalVQ, dataset: FactorDataset, sampler: TransitionSampler,
                             rng: np.random.Generator, sizes: DisentanglementSizes = SIZE_PRESETS["library"],
                             batch_size: int = 64) -> tuple[DisentanglementResult, ...]:
    """DCI, MIG, SAP and FactorVAE of each representation in ``REPRESENTATIONS`` on points of the split.

    Each representation draws from its own generator spawned from ``rng``, and its noise baseline (a random
    representation as wide, at the same sizes) from a generator spawned from that one.
    """
    out = []
    for (name, description), child in zip(REPRESENTATIONS.items(), rng.spawn(len(REPRESENTATIONS))):
        (noise_rng,) = child.spawn(1)
        dims, factor_sizes = representation_dims(model.config, name), tuple(dataset.factor_sizes)
        scores = evaluate_representation(representation_fn(model, dataset, name, batch_size), sampler.sample_images,
                                         factor_sizes, child, sizes)
        baseline = noise_baseline(dims, sampler.sample_images, factor_sizes, noise_rng, sizes)
        out.append(DisentanglementResult(representation=name, description=description, dims=dims,
                                         scores={k: float(v) for k, v in scores.items()},
                                         baseline={k: float(v) for k, v in baseline.items()}))
    return tuple(out)


# --- the whole evaluation -------------------------------------------------------------------------------------------
def evaluate_model(
    model: CausalVQ,
    dataset: FactorDataset,
    *,
    split: str = "test",
    sampler: TransitionSampler | None = None,
    seed: int = 0,
    num_images: int = 512,
    num_pairs: int = 512,
    max_steps: int = 5,
    disentanglement: bool = True,
    disentanglement_sizes: DisentanglementSizes = SIZE_PRESETS["library"],
    batch_size: int = 64,
) -> EvalReport:
    """Evaluate a model on one split of a dataset, deterministically (eval mode, no grad, ``sample=False``).

    Args:
        model: a ``CausalVQ`` whose ``config.factor_names`` and ``factor_sizes`` are the dataset's.
        dataset: a ``FactorDataset``; images are rendered from sampled factors and resized to the model's size.
        split: ``"train"``, ``"val"`` or ``"test"`` part of the factor grid.
        sampler: the ``TransitionSampler`` to draw from; default ``TransitionSampler(dataset, split=split)``
            (split seed 0). Pass the training run's sampler settings (split seed, fractions) here.
        seed: seed of every draw (images, pairs, disentanglement points).
        num_images: images for reconstruction.
        num_pairs: one-step pairs for action retrieval, and (x, a) pairs for each k of intervention accuracy.
        max_steps: intervention accuracy is measured for k = 1 .. max_steps.
        disentanglement: whether to run the disentanglement metrics (the slowest section).
        disentanglement_sizes: their sample sizes; the default is disentanglement_lib's (hours for a model on 2 CPU
            cores: FactorVAE alone represents 970,000 images), ``DisentanglementSizes.named("cpu")`` minutes.
        batch_size: images per model call.
    """
    model_factors = dict(zip(model.config.factor_names, model.config.factor_sizes))
    if model_factors != dict(zip(dataset.factor_names, dataset.factor_sizes)):
        raise ValueError(f"the model's factors {model_factors} are not {dataset.name}'s "
                         f"{dict(zip(dataset.factor_names, dataset.factor_sizes))}")
    if model.config.in_channels != dataset.image_shape[2]:
        raise ValueError(f"the model takes {model.config.in_channels}-channel images, {dataset.name} has "
                         f"{dataset.image_shape[2]}")
    if num_images < 1 or num_pairs < 1 or max_steps < 0 or batch_size < 1:
        raise ValueError(f"need num_images, num_pairs, batch_size >= 1 and max_steps >= 0; got {num_images}, "
                         f"{num_pairs}, {batch_size}, {max_steps}")
    if sampler is None:
        sampler = TransitionSampler(dataset, split=split)
    elif SPLITS[sampler.split] != split:
        raise ValueError(f"the sampler draws from split {SPLITS[sampler.split]!r}, not {split!r}")
    rng = {name: np.random.default_rng([seed, stream]) for name, stream in _STREAMS.items()}
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(section: str) -> None:
        nonlocal clock
        seconds[section], clock = time.perf_counter() - clock, time.perf_counter()

    images = sampler.sample_images(num_images, rng["reconstruction"])
    recon = evaluate_reconstruction(model, dataset, images, batch_size)
    lap("reconstruction")
    x_factors, y_factors, actions = sampler.sample_pairs(num_pairs, rng["retrieval"])
    retrieval = evaluate_retrieval(model, dataset, x_factors, y_factors, actions, batch_size)
    lap("retrieval")
    codes = evaluate_codes(model, dataset, x_factors, y_factors, actions, batch_size)
    lap("codes")
    s = model.config.image_size
    with inference_mode(model):
        encode = lambda f: _batched(model.encode_codes, render_images(dataset, f, s), batch_size=batch_size,  # noqa: E731
                                    device=model.device)
        structure = evaluate_structure(model, encode(x_factors), encode(y_factors),
                                       torch.as_tensor(actions, dtype=torch.long), tuple(dataset.factor_names),
                                       rng["structure"], batch_size)
    lap("structure")
    intervention = []
    for k in range(1, max_steps + 1):
        x_factors, actions = sample_step_pairs(sampler, num_pairs, k, rng["intervention"])
        intervention.append(evaluate_intervention(model, dataset, x_factors, actions, k, batch_size))
    lap("intervention")
    dis: tuple[DisentanglementResult, ...] = ()
    if disentanglement:
        dis = evaluate_disentanglement(model, dataset, sampler, rng["disentanglement"], disentanglement_sizes,
                                       batch_size)
        lap("disentanglement")
    protocol = {
        "split": split,
        "split_seed": sampler.seed,
        "split_fractions": list(sampler.fractions),
        "deterministic": True,
        "num_images": recon.num_images,
        "num_pairs": retrieval.num_pairs,
        "max_steps": max_steps,
        "intervention_pairs": {f"k{r.steps}": r.num_pairs for r in intervention},
        "disentanglement": dataclasses.asdict(disentanglement_sizes) if disentanglement else None,
        "batch_size": batch_size,
    }
    return EvalReport(
        dataset=dataset.name, split=split, seed=seed, image_size=model.config.image_size,
        factor_names=tuple(dataset.factor_names), action_names=tuple(model.action_names),
        reconstruction=recon, retrieval=retrieval, codes=codes, structure=structure, intervention=tuple(intervention),
        disentanglement=dis,
        protocol=protocol, seconds=seconds,
    )  # fmt: skip


# --- writing --------------------------------------------------------------------------------------------------------
def format_value(value: float | None) -> str:
    """A metric for a Markdown table: 4 decimals, scientific below 1e-3, 'n/a' for None."""
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3e}"


def metric_table(rows: Sequence[MetricRow]) -> list[str]:
    """Markdown table lines: metric, value, chance level (blank where none applies), sample count."""
    chance = lambda r: "" if r.chance is None else format_value(r.chance)  # noqa: E731
    return ["| metric | value | chance | samples |", "|---|---|---|---|",
            *(f"| {r.name} | {format_value(r.value)} | {chance(r)} | {r.samples} |" for r in rows)]


def format_markdown(report: EvalReport) -> str:
    """The report as Markdown: a table with one row per metric (``EvalReport.rows``: value, chance level where
    one applies, sample count), then the protocol notes."""
    p = report.protocol
    lines = [f"# Evaluation: {report.dataset}, split `{report.split}`", "", *metric_table(report.rows())]
    lines += ["", "## Protocol", "",
              f"- split `{report.split}` of the factor grid (split seed {p['split_seed']}, fractions "
              f"{p['split_fractions']}); draw seed {report.seed}; images rendered from their factors and resized to "
              f"{report.image_size} px.",
              "- deterministic evaluation: eval mode, no gradients, `sample=False` (thresholds, no Gumbel noise).",
              f"- reconstruction: {p['num_images']} images; MSE on [0, 1]; PSNR = 10·log10(1 / mean MSE).",
              f"- action retrieval: {p['num_pairs']} one-step transition pairs, both images in the split; action "
              "accuracy = argmax over the A actions (chance 1/A); factor accuracy folds p_f + p_{F+f} and takes "
              "the argmax over the F factors (chance 1/F); argmax factor accuracy = the factor of the argmax action is "
              "the true factor (the official `causal_nodir_acc`, never below action accuracy). Action accuracy and "
              "argmax factor accuracy are the paper's retrieval metrics in the official notebook's definition "
              "(apply_action.ipynb: `causal_acc`, `causal_nodir_acc`), as a clean mean over the pairs.",
              "- codes (causalvq addition), on the same one-step pairs: `changed_accuracy` = share of the nodes "
              "whose code the action changes (x's and y's codes differ) for which the deterministic transition "
              "predicts y's code; `unchanged_accuracy` the same on the other nodes; `changed_nodes` = changed nodes "
              "per pair; `mask_nodes` = intervened nodes per pair; `graph.edges_per_node` = in-edges per node "
              "(self-loops not counted) of the deterministic graph (edge probability > 0.5), under the pair's action "
              "and with no action; `graph.edge_probability` = mean edge probability off the diagonal (a sampled "
              "graph has about L − 1 times as many in-edges per node).",
              "- structure (causalvq addition), on the same one-step pairs, deterministic "
              "(`causalvq.metrics.structure`): a node is *changed* when x's and y's codes differ there. "
              "`mask.precision` = share of the intervened nodes (mask p > 0.5) that change; `mask.recall` = share "
              "of the changed nodes intervened on (both pooled over pairs); `mask.size_ratio` = mean mask size / "
              "mean changed nodes; `mask.empty_share` = share of pairs with an empty mask; `in_degree` = in-edges "
              "per node of the deterministic graph (edge probability > 0.5, self-loops excluded) under the pair's "
              "action and with no action; `do`: for each pair that changes a node, one changed node (uniform, "
              "seeded) is set to its code in y, do(i = c^y_i), and the no-action pass predicts the rest, compared "
              "with the same pass on x unedited: `propagating_share` = share of these interventions that change "
              "another node, `changed_nodes` = "
              "other nodes changed per intervention, `agreement` = share of those changes that take y's code.",
              f"- intervention accuracy (causalvq addition): for k = 1..{p['max_steps']}, pairs (x, a) of the split "
              "with a applicable k times; correct when the decoded `intervene(x, a, steps=k)` is strictly nearest "
              "(pixel MSE) to the true y_k among x and every k-step neighbour of x; chance = hit rate of a "
              f"uniformly drawn candidate; `mse` = MSE to y_k. Pairs per k: {p['intervention_pairs']}."]
    if report.disentanglement:
        lines.append(disentanglement_protocol(p["disentanglement"]))
        lines += [f"  - `{r.representation}`: {r.description}; {r.dims} dims." for r in report.disentanglement]
    else:
        lines.append("- disentanglement: not run.")
    lines.append("- wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()) + ".")
    return "\n".join(lines) + "\n"  # fmt: skip


def disentanglement_protocol(sizes: dict[str, Any]) -> str:
    """The protocol line of the disentanglement rows, from ``dataclasses.asdict(DisentanglementSizes)`` (or the
    shorter dict of a report written before DCI sizes, stages and noise baselines were recorded)."""
    d = sizes
    if "dci_stages" not in d:
        return (f"- disentanglement: DCI, MIG, SAP on {d['num_train']} + {d['num_test']} points of the split (DCI "
                f"classifier `{d['importance']}`, 20 stages); FactorVAE with {d['num_train']} + {d['num_test']} votes "
                f"of {d['group_size']} points, {d['num_variance']} points for the variances. Representations:")
    name = DisentanglementSizes(**d).name
    label = {"library": "disentanglement_lib's sizes but DCI's", "custom": "custom sizes"}.get(name, "a faster setting")
    return (f"- disentanglement, sizes `{name}` ({label}; the libraries: MIG, SAP and DCI on 10,000 + 5,000 points, "
            f"DCI with 100 stages, FactorVAE with 10,000 + 5,000 votes of 64 points, 10,000 for the variances): MIG on "
            f"{d['num_train']} points of the split, SAP on {d['num_train']} + {d['num_test']}, DCI on "
            f"{d['dci_num_train']} + {d['dci_num_test']} of them (classifier `{d['importance']}`, "
            f"{d['dci_stages']} boosting stages per factor); FactorVAE with {d['factor_vae_train']} + "
            f"{d['factor_vae_eval']} votes of {d['group_size']} points, {d['num_variance']} points for the "
            "variances, ties broken at random with the seed (`tied_votes`: share of the votes that tied). The chance "
            "column holds each score's noise baseline: the same metric on independent standard normal codes as "
            "wide as the representation, at the same sizes. Representations:")


def plot_confusion(confusion: Any, action_names: tuple[str, ...], path: str | os.PathLike,
                   title: str = "action retrieval: confusion") -> Path:
    """Write confusion counts `(a, a)` (row = true action, column = predicted) as a PNG heat map: colour = share
    of the row, counts printed in the cells, axes labelled with the action names. Returns the path.

    Uses matplotlib's object API on an Agg canvas (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=np.int64)
    a = len(action_names)
    if counts.shape != (a, a):
        raise ValueError(f"confusion must be ({a}, {a}) for {a} action names, got {counts.shape}")
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # (a, a)
    side = 2.0 + 0.45 * a
    fig = Figure(figsize=(side + 1.0, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(a), action_names, rotation=90, fontsize=8)
    ax.set_yticks(range(a), action_names, fontsize=8)
    ax.set_xlabel("predicted action")
    ax.set_ylabel("true action")
    ax.set_title(title, fontsize=10)
    for i, j in zip(*np.nonzero(counts)):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def write_report(report: EvalReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``eval.json``, ``eval.md`` and ``confusion.png`` into ``out_dir``; returns their paths by kind
    (``"json"``, ``"markdown"``, ``"confusion"``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval.json", "markdown": out / "eval.md", "confusion": out / "confusion.png"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    paths["markdown"].write_text(format_markdown(report))
    plot_confusion(report.retrieval.confusion, report.action_names, paths["confusion"])
    return paths


def _structure_rows(st: StructureResult, names: tuple[str, ...], pairs: dict[str, int]) -> list[MetricRow]:
    """The rows of ``EvalReport.rows`` for the structure section: overall, then per moved factor."""
    m, d, n = st.mask, st.propagation, st.mask.num_pairs
    out = [MetricRow("structure.mask.precision", m.precision, None, n),
           MetricRow("structure.mask.recall", m.recall, None, n),
           MetricRow("structure.mask.size_ratio", m.size_ratio, None, n),
           MetricRow("structure.mask.empty_share", m.empty_share, None, n),
           MetricRow("structure.mask.mask_nodes", m.mask_nodes, None, n),
           MetricRow("structure.mask.changed_nodes", m.changed_nodes, None, n)]
    for name in names:
        f = st.per_factor_mask[name]
        out += [MetricRow(f"structure.mask.{key}.{name}", getattr(f, key), None, f.num_pairs)
                for key in ("precision", "recall", "size_ratio", "empty_share")]
    out += [MetricRow("structure.in_degree.action", st.action_in_degree, None, n),
            MetricRow("structure.in_degree.no_action", st.no_action_in_degree, None, n)]
    out += [MetricRow(f"structure.in_degree.action.{name}", st.per_factor_action_in_degree[name], None, pairs[name])
            for name in names]
    out += [MetricRow(f"structure.do.{key}", getattr(d, key), None, d.num_interventions)
            for key in ("propagating_share", "changed_nodes", "agreement")]
    for name in names:
        f = st.per_factor_propagation[name]
        out += [MetricRow(f"structure.do.{key}.{name}", getattr(f, key), None, f.num_interventions)
                for key in ("propagating_share", "agreement")]
    return out
