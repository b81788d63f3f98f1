"""Which edges of the learned graph a panel shows, and how many there are: pure numpy over an adjacency.

The node–link drawing, its caption and the ego table all read one ``EdgeSelection``, so the number of arrows drawn
is the number the caption states and the table lists exactly the drawn edges of one node. Nothing is capped: a
selection narrows the graph only by the rules it names (threshold, the top-k parents of each node, one node's
neighbourhood), and keeps the counts before narrowing beside it.

Axis legend: ``n`` nodes (row = source, column = target), ``e`` selected edges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

EGO_COLUMNS = ("edge", "node", "where", "probability", "rewired by the action")


@dataclass(frozen=True)
class EdgeSelection:
    """Edges between distinct nodes with probability above ``threshold``, narrowed as stated, strongest first."""

    source: np.ndarray  # long (e,)
    target: np.ndarray  # long (e,)
    prob: np.ndarray  # float (e,), the adjacency's own values
    rewired: np.ndarray  # bool (e,): an entry the action's discoverer decides (an intervened node's in-edge)
    above: int  # edges between distinct nodes with probability > threshold in the whole graph
    rewired_above: int  # of those, how many are rewired by the action
    threshold: float
    top_k: int  # parents kept per node (0: all)
    node: int | None  # the ego view's node, None for the whole graph
    parents_above: int  # ego: the node's parents above threshold (0 without a node)
    children_above: int  # ego: the node's children above threshold (0 without a node)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def parents(self) -> np.ndarray:
        """Ego: the selected edges into the node, bool (e,)."""
        return self.target == self.node if self.node is not None else np.zeros(len(self), bool)

    @property
    def children(self) -> np.ndarray:
        """Ego: the selected edges out of the node, bool (e,)."""
        return self.source == self.node if self.node is not None else np.zeros(len(self), bool)


def select_edges(adjacency: np.ndarray, threshold: float, top_k: int = 0, node: int | None = None,
                 rewired: np.ndarray | None = None, within: np.ndarray | None = None) -> EdgeSelection:
    """The edges a panel shows.

    Args:
        adjacency: float `(n, n)` edge probabilities, row = source, column = target. The diagonal is left out:
            the graph network gives every node its self-loop whatever the adjacency says.
        threshold: keep edges with probability strictly above it.
        top_k: keep each node's ``top_k`` most probable parents above the threshold (ties: lower source index
            first); 0 keeps them all.
        node: keep only the edges into and out of this node (within the top-k rule), for the ego view.
        rewired: optional bool `(n, n)` entries rewired by an action.
        within: optional bool `(n, n)`: keep only these entries (do(): the edges that carried a change); the
            counts ``above`` are still the whole graph's.
    """
    adj = np.asarray(adjacency, dtype=np.float64)
    n = adj.shape[0]
    if adj.shape != (n, n):
        raise ValueError(f"adjacency must be square, got {adj.shape}")
    if top_k < 0:
        raise ValueError(f"top_k must be 0 (all) or positive, got {top_k}")
    if node is not None and not 0 <= node < n:
        raise ValueError(f"node must lie in [0, {n}), got {node}")
    off = ~np.eye(n, dtype=bool)
    above = (adj > threshold) & off  # (n, n)
    rew = np.zeros((n, n), bool) if rewired is None else np.broadcast_to(np.asarray(rewired, bool), (n, n))
    keep = above.copy() if within is None else above & np.asarray(within, bool)
    if top_k:
        # rank of each source among a target's parents: stable sort of −p down each column
        order = np.argsort(-np.where(above, adj, -np.inf), axis=0, kind="stable")  # (n, n)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(n)[:, None].repeat(n, 1), axis=0)
        keep &= rank < top_k
    if node is not None:
        ego = np.zeros((n, n), bool)
        ego[node, :] = ego[:, node] = True
        keep &= ego
    src, dst = np.nonzero(keep)
    p = adj[src, dst]
    order = np.lexsort((dst, src, -p))  # strongest first, then by source and target
    src, dst, p = src[order], dst[order], p[order]
    return EdgeSelection(
        source=src, target=dst, prob=p, rewired=rew[src, dst], above=int(above.sum()),
        rewired_above=int((above & rew).sum()), threshold=float(threshold), top_k=int(top_k), node=node,
        parents_above=int(above[:, node].sum()) if node is not None else 0,
        children_above=int(above[node].sum()) if node is not None else 0)


def focus_node(adjacency: np.ndarray, threshold: float, current: int, intervened: np.ndarray | None = None) -> int:
    """The node the ego view and do() should open on: ``current`` when it is a candidate with an edge above
    ``threshold``, else the candidate with the most parents and children above it (ties: the lower index).

    Candidates are the ``intervened`` nodes (bool `(n,)`) when there are any, else every node. A node with no
    edge shows an empty table and a do() that cannot propagate, so a panel moves off it; when no candidate has an
    edge, ``current`` stays if it is a candidate, else the first candidate.
    """
    adj = np.asarray(adjacency, dtype=np.float64)
    n = adj.shape[0]
    above = (adj > threshold) & ~np.eye(n, dtype=bool)  # (n, n)
    degree = above.sum(0) + above.sum(1)  # (n,) parents + children
    candidate = np.ones(n, bool) if intervened is None or not np.any(intervened) else np.asarray(intervened, bool)
    if 0 <= current < n and candidate[current] and degree[current] > 0:
        return int(current)
    if not (degree * candidate).any():
        return int(current) if 0 <= current < n and candidate[current] else int(np.flatnonzero(candidate)[0])
    return int(np.argmax(np.where(candidate, degree, -1)))  # argmax: the first of the ties


def ego_rows(selection: EdgeSelection, where: Callable[[int], str]) -> list[list]:
    """The ego table: one row per selected edge of the node (parents first, then children, strongest first),
    columns ``EGO_COLUMNS``; ``where(i)`` names node i's place (codebook, row, column)."""
    rows = []
    for role, pick in (("parent", selection.parents), ("child", selection.children)):
        for s, t, p, r in zip(selection.source[pick], selection.target[pick], selection.prob[pick],
                              selection.rewired[pick]):
            other = int(s) if role == "parent" else int(t)
            edge = f"{other} → {selection.node}" if role == "parent" else f"{selection.node} → {other}"
            rows.append([f"{role}: {edge}", other, where(other), round(float(p), 3), "yes" if r else ""])
    return rows


def describe_selection(selection: EdgeSelection) -> str:
    """The caption's sentences about a selection: how many edges exist above the threshold, how many are drawn
    and by which rule, and (ego) the node's parents and children."""
    t, k = selection.threshold, selection.top_k
    text = f"{selection.above} edges between distinct nodes have probability > {t:.2f}."
    rule = f"each node's {k} most probable parent{'s' if k > 1 else ''} above {t:.2f}" if k else f"all above {t:.2f}"
    if selection.node is None:
        text += f" **Drawn: {len(selection)}** ({rule})."
    else:
        i, parents, children = selection.node, int(selection.parents.sum()), int(selection.children.sum())
        text += (f" Node {i} has {selection.parents_above} parent(s) and {selection.children_above} child(ren) "
                 f"above {t:.2f}. **Drawn: {len(selection)}**: {parents} parent(s) ("
                 + (f"its {k} most probable" if k else "all") + f") and {children} child(ren) ("
                 + (f"the nodes that count node {i} among their {k} most probable parents" if k else "all") + ").")
    if selection.rewired_above:
        text += (f" Red: {int(selection.rewired.sum())} drawn edge(s) rewired by the action, of "
                 f"{selection.rewired_above} above {t:.2f}.")
    return text
