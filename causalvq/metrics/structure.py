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
- **do() propagation**: hard interventions do(node = code) followed by one no-action pass of the learned graph,
  compared with the same pass on the unedited grid (so only what the intervention causes counts, not the
  pass's own copy errors): the share that change at least one *other* node, the mean number of other nodes they
  change, and the share of those changes that agree with the reference codes (the protocol sets a changed node
  of a one-step pair to its code in y, so the reference is y: does the graph carry the change the way the data
  does?).

Axis legend: ``b`` pairs (or interventions), ``n`` nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from causalvq.model import CausalVQ


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


def in_degree_by_mask(graph: torch.Tensor, mask: torch.Tensor) -> tuple[float | None, float | None]:
    """Mean in-degree of the intervened nodes and of the kept ones, pooled over graphs, self-loops excluded:
    bool or 0/1 graphs `(b, n, n)` (row = source) and masks `(b, n)` → (intervened, kept); ``None`` where no node
    is in that group. Under an action the rewired in-edges sit on the intervened nodes, so the two say where the
    graph's edges are, which the mean over every node (``in_degree``) hides."""
    if graph.ndim != 3 or graph.shape[1] != graph.shape[2] or mask.shape != graph.shape[:2]:
        raise ValueError(f"graph must be (b, n, n) and mask (b, n), got {tuple(graph.shape)}, {tuple(mask.shape)}")
    g, m = graph.bool(), mask.bool()
    per_node = (g.sum(1) - g.diagonal(dim1=1, dim2=2).long()).double()  # (b, n) in-edges of each target node
    return _ratio(per_node[m], m.double()), _ratio(per_node[~m], (~m).double())


def propagation_scores(before: torch.Tensor, after: torch.Tensor, node: torch.Tensor,
                       reference: torch.Tensor) -> PropagationScores:
    """How far hard interventions propagate through the graph.

    Args:
        before: long `(b, n)` codes of the no-action pass on the unedited grid.
        after: long `(b, n)` codes after do(node = code) and the same pass on the edited grid.
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


# --- the section of the evaluation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class StructureResult:
    """The structure of a model's interventions on one-step pairs, overall and per moved factor (deterministic)."""

    mask: MaskScores
    per_factor_mask: dict[str, MaskScores]
    action_in_degree: float  # mean in-degree of the graph under the pair's action
    no_action_in_degree: float  # the same with no action
    per_factor_action_in_degree: dict[str, float | None]
    propagation: PropagationScores
    per_factor_propagation: dict[str, PropagationScores]
    action_in_degree_intervened: float | None = None  # in-edges per intervened node under the pair's action
    action_in_degree_kept: float | None = None  # in-edges per node the action does not intervene on

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StructureResult:
        """Rebuild from ``dataclasses.asdict``'s output (e.g. a loaded ``eval.json``)."""
        return cls(mask=MaskScores(**data["mask"]),
                   per_factor_mask={k: MaskScores(**v) for k, v in data["per_factor_mask"].items()},
                   action_in_degree=data["action_in_degree"], no_action_in_degree=data["no_action_in_degree"],
                   per_factor_action_in_degree=dict(data["per_factor_action_in_degree"]),
                   propagation=PropagationScores(**data["propagation"]),
                   per_factor_propagation={k: PropagationScores(**v)
                                           for k, v in data["per_factor_propagation"].items()},
                   action_in_degree_intervened=data.get("action_in_degree_intervened"),  # absent before 2026-12-07
                   action_in_degree_kept=data.get("action_in_degree_kept"))


def evaluate_structure(model: CausalVQ, codes_x: torch.Tensor, codes_y: torch.Tensor, actions: torch.Tensor,
                       factor_names: tuple[str, ...], rng: np.random.Generator,
                       batch_size: int = 64) -> StructureResult:
    """Masks, graphs and do() propagation of the deterministic model on one-step pairs (x, a, y).

    Args:
        model: the model, run in eval mode without gradients (its mode is restored).
        codes_x, codes_y: long `(b, k, h, w)` codes of x and y; actions: long `(b,)`, a = f + F·dir.
        factor_names: the F factor names (keys of the per-factor entries).
        rng: draws the node of each pair's hard intervention.

    do() protocol: for each pair whose step changes at least one node, one changed node i (uniform) is set to
    its code in y, do(i = c^y_i), on x's codes, and the no-action pass predicts every other node; a node counts
    as changed when its prediction differs from that of the same pass on x unedited. So the intervention is one
    the data contains (node i takes that code in a one-step neighbour of x), and y says where its change should
    spread.
    """
    was_training = model.training
    model.eval()
    masks, graphs, action_deg, base_deg, base_codes = [], [], [], [], []
    try:
        with torch.no_grad():
            for s in range(0, len(actions), batch_size):
                cx, a = codes_x[s:s + batch_size].to(model.device), actions[s:s + batch_size].to(model.device)
                t = model.transition_codes(cx, a, sample=False)
                masks.append(t.mask.cpu())
                action_deg.append(in_degree(t.graph).cpu())
                graphs.append(t.graph.bool().cpu())
                base = model.transition_codes(cx, None, sample=False)
                base_deg.append(in_degree(base.graph).cpu())
                base_codes.append(model.flatten_codes(base.codes).cpu())
            nx, ny = model.flatten_codes(codes_x).cpu(), model.flatten_codes(codes_y).cpu()  # (b, n)
            changed = nx != ny
            rows = [i for i in range(len(actions)) if bool(changed[i].any())]
            nodes = torch.tensor([int(rng.choice(np.flatnonzero(changed[i].numpy()))) for i in rows], dtype=torch.long)
            after = [model.flatten_codes(model.do(codes_x[i:i + 1].to(model.device), int(node),
                                                  int(ny[i, node])).codes).cpu()
                     for i, node in zip(rows, nodes.tolist())]
    finally:
        model.train(was_training)
    mask, action_deg, base_deg = torch.cat(masks), torch.cat(action_deg), torch.cat(base_deg)
    split_deg = in_degree_by_mask(torch.cat(graphs), mask > 0.5)  # (intervened, kept)
    predicted = torch.cat(base_codes)[torch.tensor(rows, dtype=torch.long)]  # (r, n) no-action pass on x
    after = torch.cat(after) if after else torch.zeros(0, nx.shape[1], dtype=torch.long)
    rows_t = torch.tensor(rows, dtype=torch.long)
    factor = actions.cpu() % len(factor_names)
    by = {name: factor == f for f, name in enumerate(factor_names)}
    by_do = {name: factor[rows_t] == f for f, name in enumerate(factor_names)}
    return StructureResult(
        mask=mask_scores(mask, changed),
        per_factor_mask={name: mask_scores(mask[sel], changed[sel]) for name, sel in by.items()},
        action_in_degree=float(action_deg.mean()),
        no_action_in_degree=float(base_deg.mean()),
        per_factor_action_in_degree={name: float(action_deg[sel].mean()) if bool(sel.any()) else None
                                     for name, sel in by.items()},
        action_in_degree_intervened=split_deg[0],
        action_in_degree_kept=split_deg[1],
        propagation=propagation_scores(predicted, after, nodes, ny[rows_t]),
        per_factor_propagation={name: propagation_scores(predicted[sel], after[sel], nodes[sel], ny[rows_t][sel])
                                for name, sel in by_do.items()},
    )  # fmt: skip


@dataclass(frozen=True)
class FactorMaps:
    """Where each action acts on the code grid: per action, how often each node is intervened on and how often the
    step really changes it, over a set of one-step pairs (deterministic masks)."""

    mask: torch.Tensor  # (a, k, h, w) share of the action's pairs whose mask holds the node
    changed: torch.Tensor  # (a, k, h, w) share of the action's pairs whose step changes the node's code
    pairs: torch.Tensor  # (a,) pairs per action (0: the maps of that action are 0)


def factor_maps(model: CausalVQ, codes_x: torch.Tensor, codes_y: torch.Tensor, actions: torch.Tensor,
                batch_size: int = 64) -> FactorMaps:
    """Mean intervention mask and mean changed nodes per action over pairs (x, a, y): codes long `(b, k, h, w)`,
    actions long `(b,)`. The model runs in eval mode without gradients (its mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            masks = torch.cat([model.transition_codes(codes_x[s:s + batch_size].to(model.device),
                                                      actions[s:s + batch_size].to(model.device)).mask.cpu()
                               for s in range(0, len(actions), batch_size)])  # (b, n)
    finally:
        model.train(was_training)
    changed = model.flatten_codes(codes_x).cpu() != model.flatten_codes(codes_y).cpu()  # (b, n)
    a = model.config.num_actions
    onehot = torch.nn.functional.one_hot(actions.cpu(), a).double()  # (b, a)
    pairs = onehot.sum(0)  # (a,)
    mean = lambda v: (onehot.t() @ v.double()) / pairs.clamp_min(1)[:, None]  # noqa: E731  (a, n)
    return FactorMaps(mask=model.unflatten_codes(mean(masks).float()),
                      changed=model.unflatten_codes(mean(changed).float()), pairs=pairs.long())
