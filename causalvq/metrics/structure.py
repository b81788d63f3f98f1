"""Structure metrics: does an action intervene on the few nodes it changes, and is the learned graph sparse?

Pure cores over arrays, each with its meaning stated; ``causalvq.metrics.evaluation`` feeds them the
deterministic model's masks, graphs and do() results on one-step test pairs.

A node is *changed* by a pair (x, a, y) when its code differs between the codes of x and of y. Then:

- **mask precision**: of the nodes the action intervenes on (the deterministic mask, p > 0.5), the share that
  change; **mask recall**: of the changed nodes, the share intervened on. Both pooled over the pairs (ratios of
  sums), so a pair with a large mask weighs more.
- **mask size ratio**: mean mask size over mean number of changed nodes (1 when the mask is as large as the
  change; the mask may also be a smaller root set whose change the graph propagates).
- **empty share**: the share of pairs whose mask is empty (the action does nothing to them).
- **in-degree**: mean number of in-edges per node of a deterministic graph (edge probability > 0.5), self-loops
  excluded (the graph network always attends to itself).
- **do() propagation**: hard interventions do(node = code) followed by one no-action pass of the learned graph;
  the share that change at least one *other* node, the mean number of other nodes they change, and the share
  of those changes that agree with the reference codes (the protocol sets a changed node of a one-step pair to
  its code in y, so the reference is y: does the graph carry the change the way the data does?).

Axis legend: ``b`` pairs (or interventions), ``n`` nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MaskScores:
    precision: float | None  # Σ |mask ∩ changed| / Σ |mask| (None: no node was intervened on)
    recall: float | None  # Σ |mask ∩ changed| / Σ |changed| (None: no node changed)
    size_ratio: float | None  # mean |mask| / mean |changed| (None: no node changed)
    empty_share: float  # share of pairs with an empty mask
    mask_nodes: float  # mean |mask| per pair
    changed_nodes: float  # mean |changed| per pair
    num_pairs: int


@dataclass(frozen=True)
class PropagationScores:
    propagating_share: float | None  # share of interventions that change at least one other node
    changed_nodes: float | None  # mean number of other nodes changed per intervention
    agreement: float | None  # share of those changes whose new code is the reference code (None: no change)
    num_interventions: int


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float | None:
    den_sum = float(den.sum())
    return float(num.sum()) / den_sum if den_sum > 0 else None


def mask_scores(mask: torch.Tensor, changed: torch.Tensor) -> MaskScores:
    """Precision, recall, size ratio and empty share of intervention masks against the changed nodes.

    Args:
        mask: bool `(b, n)`, nodes the action intervenes on.
        changed: bool `(b, n)`, nodes whose code the step changes.
    """
    if mask.shape != changed.shape or mask.ndim != 2:
        raise ValueError(f"mask and changed must both be (b, n); got {tuple(mask.shape)} and {tuple(changed.shape)}")
    mask, changed = mask.bool(), changed.bool()
    size, moved, hit = mask.sum(1).double(), changed.sum(1).double(), (mask & changed).sum(1).double()  # (b,)
    b = mask.shape[0]
    return MaskScores(precision=_ratio(hit, size), recall=_ratio(hit, moved), size_ratio=_ratio(size, moved),
                      empty_share=float((size == 0).double().mean()) if b else 0.0,
                      mask_nodes=float(size.mean()) if b else 0.0, changed_nodes=float(moved.mean()) if b else 0.0,
                      num_pairs=b)


def in_degree(graph: torch.Tensor) -> torch.Tensor:
    """Mean in-degree per node of each graph, self-loops excluded: bool or 0/1 `(b, n, n)` (row = source) →
    `(b,)`. Threshold edge probabilities first (``probs > 0.5``) for the deterministic graph."""
    if graph.ndim != 3 or graph.shape[1] != graph.shape[2]:
        raise ValueError(f"graph must be (b, n, n), got {tuple(graph.shape)}")
    g = graph.bool()
    off = g.sum((1, 2)) - g.diagonal(dim1=1, dim2=2).sum(1)  # (b,) edges without self-loops
    return off.double() / graph.shape[1]


def propagation_scores(before: torch.Tensor, after: torch.Tensor, node: torch.Tensor,
                       reference: torch.Tensor) -> PropagationScores:
    """How far hard interventions propagate through the graph.

    Args:
        before: long `(b, n)` codes before the intervention.
        after: long `(b, n)` codes after do(node = code) and the propagation pass.
        node: long `(b,)` the node each intervention set (its own change does not count).
        reference: long `(b, n)` the codes a propagated change is checked against (y of the pair).
    """
    if before.shape != after.shape or before.shape != reference.shape or node.shape != before.shape[:1]:
        raise ValueError("before, after and reference must be (b, n) and node (b,); got "
                         f"{tuple(before.shape)}, {tuple(after.shape)}, {tuple(reference.shape)}, {tuple(node.shape)}")
    b = before.shape[0]
    if b == 0:
        return PropagationScores(None, None, None, 0)
    others = torch.ones_like(before, dtype=torch.bool)
    others[torch.arange(b), node] = False
    moved = (after != before) & others  # (b, n)
    agree = moved & (after == reference)
    return PropagationScores(propagating_share=float(moved.any(1).double().mean()),
                             changed_nodes=float(moved.sum(1).double().mean()),
                             agreement=_ratio(agree.sum(1).double(), moved.sum(1).double()), num_interventions=b)
