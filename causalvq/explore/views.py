"""What the ``Explorer``'s methods return: one frozen dataclass per panel result (numpy images, code grids,
figures' inputs), so ``causalvq.explore.drawing`` and ``app.py`` read named fields.

Axis legend: ``S`` model image side, ``C`` image channels, ``k`` codebooks, ``h w`` latent grid, ``n`` nodes,
``a`` actions. Images are ``uint8 (S, S, C)`` numpy arrays; code grids are long tensors ``(1, k, h, w)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from causalvq.probe import FactorEstimate


@dataclass(frozen=True)
class DomainCheck:
    typical: float  # median per-pixel MSE of the reconstruction on in-domain samples
    threshold: float  # above this an input is flagged as far from the training domain


@dataclass(frozen=True)
class LoadedInput:
    """An input as the model sees it, with everything the panels reuse (kept in the app's ``gr.State``)."""

    image: np.ndarray  # uint8 (S, S, C), the model input
    codes: torch.Tensor  # long (1, k, h, w)
    reconstruction: np.ndarray  # uint8 (S, S, C)
    error: float  # per-pixel MSE between input and reconstruction, in [0, 1] units
    factors: tuple[int, ...] | None  # dataset factors when sampled, else None
    notice: str  # "" or a warning (far from the training domain, unknown domain)
    estimate: FactorEstimate | None = None  # the factor probe's reading of ``codes`` (None: no probe)

    @property
    def start(self) -> tuple[int, ...] | None:
        """The factor values moves start from: the true ones for dataset samples, else the probe's estimate."""
        if self.factors is not None:
            return self.factors
        return None if self.estimate is None else tuple(int(v) for v in self.estimate.values[0])

    @property
    def estimated(self) -> bool:
        """Whether ``start`` is the probe's estimate rather than the dataset's true values."""
        return self.factors is None and self.estimate is not None


@dataclass(frozen=True)
class SliderResult:
    image: np.ndarray  # uint8 (S, S, C), decoded codes after all slider actions
    codes: torch.Tensor  # long (1, k, h, w)
    changed: np.ndarray  # bool (n,), codes that differ from the input's
    intervened: np.ndarray  # bool (n,), nodes any applied action intervened on
    actions: tuple[int, ...]  # the applied action sequence, in order
    extrapolated: np.ndarray | None = None  # bool (f,): the slider moves the factor past its end from the start
    #                                          values (None: the start values are unknown)


@dataclass(frozen=True)
class GroundTruth:
    image: np.ndarray  # uint8 (S, S, C): the dataset image at the moved factors
    factors: tuple[int, ...]  # the factors rendered (clipped into range)
    clipped: bool  # whether a slider went past the end of its factor
    estimated: bool = False  # rendered from the probe's estimate of the input's factors (an upload), not true values


@dataclass(frozen=True)
class GraphView:
    adjacency: np.ndarray  # float (n, n) edge probabilities (row = source), averaged over the code grids
    intervened: np.ndarray | None  # bool (n,): nodes the action intervenes on (in most grids: the model's mask
    #                                averaged, > 0.5; for one grid exactly the mask); None without an action
    rewired: np.ndarray | None  # bool (n, n): the entries the action's discoverer decides under ``intervened``
    #                             (the intervened nodes' in-edges, or out-edges with intervention_edges="outgoing")


@dataclass(frozen=True)
class DoView:
    """do(node = code) and one no-action pass, beside the same pass on the unedited grid (one batched call)."""

    image: np.ndarray  # uint8 (S, S, C) after do(node = code) and propagation
    codes: torch.Tensor  # long (1, k, h, w), as ``model.do``
    changed: np.ndarray  # bool (n,), nodes other than ``node`` whose code differs from the input's
    node: int
    code: int
    before: int  # the node's code in the input
    propagated: np.ndarray  # bool (n,), nodes other than ``node`` whose code differs from the pass on the unedited
    #                         grid: moved by the intervention
    drift: np.ndarray  # bool (n,), nodes the pass changes on the unedited grid too (not the intervention's doing)
    edge_probs: np.ndarray  # float (n, n), edge probabilities on the edited grid (row = source)
    graph: np.ndarray  # bool (n, n), the edges the pass used on the edited grid (probability > 0.5)
    carriers: np.ndarray  # bool (n, n), edges of ``graph`` on a path of at most two edges (the graph network's
    #                       two layers) from ``node`` to a propagated node: the direct edge where there is one
    shift: float  # largest total-variation distance between a node's code distribution on the edited and the
    #               unedited grid, over the nodes other than ``node``
    shift_node: int  # where it is


@dataclass(frozen=True)
class CodeChoices:
    """The codebook entries offered for do() at one node, in a useful order."""

    node: int
    codes: tuple[int, ...]  # every entry, most frequent at this node in the dataset first (ties, unseen: index)
    counts: tuple[int, ...]  # dataset images in which the node takes each of ``codes``
    images: int  # dataset images counted (0 without a dataset: ``codes`` in index order)


@dataclass(frozen=True)
class RetrievalView:
    """The answer of ``Explorer.retrieve`` (``causalvq.metrics.reject``), with the ranking of every move."""

    ranking: tuple[tuple[str, float], ...]  # ("<action> ×k", p) over every move, p = softmax(−distance), best first
    action: int  # the action of the closest move (smallest distance)
    steps: int  # its number of steps k
    distances: np.ndarray  # float (a, K): code-grid distance of y from x moved k steps by action a (the model's
    #                        retrieval score: node NLL, averaged or summed as the checkpoint's retrieval_score)
    thresholds: np.ndarray | None  # float (K,): the calibrated threshold per k (None: no calibration)
    threshold: float | None  # the one for ``steps`` steps (None: not judged)
    accepted: bool | None  # the closest move is the answer; None without a calibration
    verdict: str  # the rule's answer (``reject.Verdict`` values): "move", "no move", "too far", "two factors",
    #               "unjudged"
    unexplained: int  # y's codes the closest move gives a probability below reject.P_UNEXPLAINED (1 %)
    limit: float | None  # the calibrated limit of unexplained codes for ``steps`` steps (None: not judged)
    rival: int | None  # the action of another factor whose extra step after the move brings y closest (None: not
    #                    checked, the move being too far, the codes the same or no calibration)
    rival_distance: float | None  # y's distance after the move and that step
    margin: float | None  # the calibrated margin: "two factors" when distance − rival_distance exceeds it
    intervened: np.ndarray  # bool (n,), nodes the closest move's action intervenes on, on x's codes
    changed: np.ndarray  # bool (n,), nodes whose code differs between x and y
    codes_x: torch.Tensor  # long (1, k, h, w)
    codes_y: torch.Tensor  # long (1, k, h, w)


@dataclass(frozen=True)
class Traversal:
    images: np.ndarray  # uint8 (F, 2·steps + 1, S, S, C), column ``steps`` is the reconstruction
    steps: int
    factor_names: tuple[str, ...]
    extrapolated: np.ndarray | None = None  # bool (F, 2·steps + 1): the cell's move leaves the factor's range
    #                                          from the start values (None: unknown start)
    estimated: bool = False  # the start values are the probe's estimate, not the dataset's true values


@dataclass(frozen=True)
class ActionMap:
    """One action on the current input, beside where it acts on dataset pairs."""

    action: int
    mask: np.ndarray  # bool (n,): nodes the action intervenes on, on this input's codes
    changed: np.ndarray  # bool (n,): nodes whose code the step changes
    image: np.ndarray  # uint8 (S, S, C): the decoded step
    mask_share: np.ndarray | None  # float (k, h, w): share of dataset pairs whose mask holds each node; None
    #                                 without a dataset
    changed_share: np.ndarray | None  # float (k, h, w): share of dataset pairs whose step changes each node
    pairs: int  # dataset pairs of this action behind the shares (0 without a dataset)


# --- the explorer ----------------------------------------------------------------------------------------------
