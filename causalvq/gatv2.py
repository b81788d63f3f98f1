"""GATv2 over a dense weighted graph (shared/paper.md §5.7): the attention of each node over its in-edges, and
the gated softmax that lets the sampled graph's straight-through gradient reach the edges that were not drawn.

Axes: ``b`` batch, ``n`` nodes (sources ``s`` and targets ``t`` in attention), ``h`` heads (``k`` chosen per
sample), ``c`` channels per head.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from causalvq.kernels.grouped import grouped_linear
from causalvq.kernels.pairwise import attend, fused_attention_available, pairwise_score


def gated_softmax(logits: torch.Tensor, edges: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Attention over the drawn edges, differentiable in the graph: α_ij = g_ij·exp(s_ij) / Σ_k g_ik·exp(s_ik).

    Args:
        logits: `(b, h, t, s)` attention logits of every (target, source) pair.
        edges: bool `(b, t, s)`, the drawn edges plus the self-loops (which are always present).
        gate: `(b, t, s)` the sampled graph, hard 0/1 with a straight-through gradient.

    The value is the softmax of ``logits`` over ``edges`` (the masked softmax) up to float rounding. Its gradient
    with respect to ``gate`` is that of the relaxed attention at g, for absent edges too: "would drawing edge
    j → i move i's output towards what the loss wants". The masked softmax gives no gradient to an absent edge,
    so the discoverers would learn only from the edges they happened to draw.
    """
    return _GatedSoftmax.apply(logits, edges, gate)


class _GatedSoftmax(torch.autograd.Function):
    """``gated_softmax`` with its gradient written out (two saved tensors instead of autograd's chain of ops).

    With g = 1 on the edges and 0 elsewhere, Z_i = Σ_k g_ik·exp(s_ik) and q_ij = exp(s_ij) / Z_i over every pair
    (q = α on the edges), the value is α = g·q and, with t = dα − Σ_k α_ik·dα_ik:
    dL/ds = α·t (the masked softmax's gradient) and dL/dg = q·t summed over heads, 0 on the diagonal (self-loops
    are always drawn). Logits are shifted by their maximum over the edges; an absent edge's exp is bounded by
    e^30 so that its (gradient-only) term stays finite.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, edges: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # noqa: D102
        on = edges[:, None]  # (b, 1, t, s)
        shift = logits.masked_fill(~on, float("-inf")).amax(-1, keepdim=True)
        q = (logits - shift).clamp_(max=30.0).exp_()
        alpha = q * on
        scale = alpha.sum(-1, keepdim=True).reciprocal_()
        q, alpha = q.mul_(scale), alpha.mul_(scale)
        ctx.save_for_backward(alpha, q)
        return alpha

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:  # noqa: D102
        alpha, q = ctx.saved_tensors
        t = grad - (alpha * grad).sum(-1, keepdim=True)
        grad_logits = alpha * t if ctx.needs_input_grad[0] else None
        grad_gate = None
        if ctx.needs_input_grad[2]:
            grad_gate = (q * t).sum(1)
            grad_gate.diagonal(dim1=-2, dim2=-1).zero_()
        return grad_logits, None, grad_gate


class NodeTerms(NamedTuple):
    """Per-node projections of one GATv2 layer, `(b, n, heads, c)` each."""

    src: torch.Tensor
    tgt: torch.Tensor
    root: torch.Tensor | None

    def repeat_interleave(self, copies: int) -> NodeTerms:
        """Each node set ``copies`` times in a row (several graphs over the same nodes)."""
        if copies == 1:
            return self
        return NodeTerms(*(None if t is None else t.repeat_interleave(copies, 0) for t in self))

    def cat(self, other: NodeTerms) -> NodeTerms:
        """More nodes: ``other``'s appended after these."""
        return NodeTerms(*(None if t is None else torch.cat([t, o], 1) for t, o in zip(self, other)))


class DenseGATv2(nn.Module):
    """GATv2 over a dense weighted graph, with the defaults of the usual implementation (PyG's GATv2Conv).

    Separate source and target projections (with bias), attention slope 0.2, a scalar edge feature projected
    without bias into the attention logits, concatenated heads, an output bias. Existing self-loops are
    replaced by one self-loop per node weighted by the mean weight of its incoming edges (0 if none), so every
    node attends to itself and the diagonal of the adjacency never matters. With ``residual`` a bias-free root
    projection of the node's own features is added to its output (the ``residual`` option of PyG's GATv2Conv),
    so a node keeps its own code however its attention is spread (B17 in docs/fidelity.md).
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int, residual: bool = False) -> None:
        super().__init__()
        self.heads, self.out_dim = heads, out_dim
        self.lin_src = nn.Linear(in_dim, heads * out_dim)
        self.lin_tgt = nn.Linear(in_dim, heads * out_dim)
        self.lin_edge = nn.Parameter(torch.empty(heads, out_dim))
        self.att = nn.Parameter(torch.empty(heads, out_dim))
        self.bias = nn.Parameter(torch.zeros(heads * out_dim))
        self.lin_root = nn.Linear(in_dim, heads * out_dim, bias=False) if residual else None
        if self.lin_root is not None:
            nn.init.xavier_uniform_(self.lin_root.weight)
        for lin in (self.lin_src, self.lin_tgt):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.xavier_uniform_(self.lin_edge.view(1, -1))
        nn.init.xavier_uniform_(self.att.view(1, -1))

    def project(self, x: torch.Tensor, heads: torch.Tensor | None = None) -> NodeTerms:
        """The per-node terms of the layer: source, target and root projections of ``x (b, n, in)``,
        `(b, n, h, c)` each (`(b, n, k, c)` for the chosen ``heads (b, k)``; root None without ``residual``)."""
        if heads is None:
            split = lambda t: rearrange(t, "b n (h c) -> b n h c", h=self.heads)  # noqa: E731
            return NodeTerms(split(self.lin_src(x)), split(self.lin_tgt(x)),
                             split(self.lin_root(x)) if self.lin_root is not None else None)

        # one matmul per head used and map, no per-sample weight copies
        lins = [lin for lin in (self.lin_src, self.lin_tgt, self.lin_root) if lin is not None]
        maps = [(rearrange(lin.weight, "(h c) i -> h c i", h=self.heads),  # (H, c, in)
                 None if lin.bias is None else rearrange(lin.bias, "(h c) -> h c", h=self.heads)) for lin in lins]
        slots = [grouped_linear(x, maps, heads[:, s]) for s in range(heads.shape[1])]  # [slot][map] (b, n, c)
        terms = [torch.stack([slot[i] for slot in slots], 2) for i in range(len(maps))]  # (b, n, k, c) per map
        return NodeTerms(*terms, None) if self.lin_root is None else NodeTerms(*terms)

    def project_onehot(self, codes: torch.Tensor, extra: torch.Tensor) -> NodeTerms:
        """``project(one_hot(codes) + extra)`` for codes `(b, n)` and ``extra`` `(n, in)` shared by the batch (or one
        per sample, `(b, n, in)`), exactly: a linear map of a one-hot vector is its weight's column at the code, so
        each map is a gather plus its map of ``extra``."""
        def linear(lin: nn.Linear | None) -> torch.Tensor | None:
            if lin is None:
                return None
            out = F.embedding(codes, lin.weight.t()) + F.linear(extra, lin.weight, lin.bias)  # (b, n, h·c)
            return rearrange(out, "b n (h c) -> b n h c", h=self.heads)

        return NodeTerms(linear(self.lin_src), linear(self.lin_tgt), linear(self.lin_root))

    def forward(self, x: torch.Tensor | NodeTerms, weights: torch.Tensor | None, edges: torch.Tensor | None,
                heads: torch.Tensor | None = None, gate: torch.Tensor | None = None) -> torch.Tensor:
        """Propagate node features over a weighted graph.

        Args:
            x: `(b, n, in)` node features, or their ``project``ion: `(b / r, n, h, c)` each, one grid of node terms
                for r consecutive graphs (computed once for several graphs over the same nodes).
            weights: `(b, n, n)` edge weights, row = source, column = target.
            edges: `(b, n, n)` bool, which entries are edges (the diagonal is ignored); None for the identity graph,
                where each node's only in-edge is its self-loop (attention 1: no pairwise scores needed).
            heads: optional long `(b, k)`: compute only these heads per sample (exact: heads are independent).
            gate: optional `(b, n, n)` sampled graph with a straight-through gradient (hard 0/1 values). The
                attention becomes α_ij ∝ gate_ji·exp(s_ij) over every pair: the same values as the masked
                softmax, but the gradient reaches the edges that were not drawn (B19 in docs/fidelity.md).

        Returns:
            `(b, n, k·out)` (all heads when ``heads`` is None), heads concatenated.
        """
        xs, xt, root = x if isinstance(x, NodeTerms) else self.project(x, heads)  # (b / r, n, h, c) each
        if edges is None:  # identity graph: every node attends to itself only, with weight 1
            out = xs + self._picked(heads)[2][:, None]
            return rearrange(out if root is None else out + root, "b n h c -> b n (h c)")
        w, edges = self.with_self_loops(weights, edges)
        return self.attend_rows(xt, xs, root, w, edges, heads, gate)

    def _picked(self, heads: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The edge projection, attention vector and bias of the heads used: `(1, h, c)` each for all heads,
        `(b, k, c)` for ``heads (b, k)``."""
        if heads is None:
            return self.lin_edge[None], self.att[None], rearrange(self.bias, "(h c) -> 1 h c", h=self.heads)
        pick = lambda t: t.index_select(0, heads.flatten()).unflatten(0, heads.shape)  # noqa: E731
        return pick(self.lin_edge), pick(self.att), pick(rearrange(self.bias, "(h c) -> h c", h=self.heads))

    def attend_self_and_one(self, terms: NodeTerms, extra: NodeTerms, w: torch.Tensor, gate: torch.Tensor,
                            heads: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` over a graph where each node's only in-edge is from one extra node (the action node), at
        the nodes where ``gate`` is 1: every node attends to itself and, there, to the extra node. No n × n scores.

        Args:
            terms: `(b, n, h, c)` projections of the nodes (``project``).
            extra: `(b, 1, h, c)` projections of the extra node, one per sample; its own output is not computed.
            w: `(b, n)` weight of the edge from the extra node into each node (the self-loop gets the same weight,
                the mean of the node's in-edges, as in ``with_self_loops``).
            gate: `(b, n)` hard 0/1: where the edge is drawn. A gate that carries a gradient gets that of
                ``gated_softmax`` (absent edges too); pass a detached one for the masked softmax's.
            heads: as in ``forward``.

        Returns:
            `(b, n, k·out)`: the same as ``forward`` at the first n nodes of the (n + 1)-node graph, up to float
            rounding, with the same gradients.
        """
        xs, xt, root = terms
        e, att, bias = self._picked(heads)  # (1 or b, h, c)
        on = gate.detach() > 0
        w = (w * on)[..., None, None]  # (b, n, 1, 1); an absent edge carries no weight, nor its gradient
        score = lambda src: (att[:, None] * F.leaky_relu(xt + src + w * e[:, None], 0.2)).sum(-1)  # noqa: E731
        s_self, s_extra = score(xs), score(extra.src)  # (b, n, h)
        shift = torch.where(on[..., None], torch.maximum(s_self, s_extra), s_self).detach()
        q_self, q_extra = ((s - shift).clamp(max=30.0).exp() for s in (s_self, s_extra))
        q_extra = gate[..., None] * q_extra
        out = (q_self[..., None] * xs + q_extra[..., None] * extra.src) / (q_self + q_extra)[..., None] + bias[:, None]
        return rearrange(out if root is None else out + root, "b n h c -> b n (h c)")

    @staticmethod
    def with_self_loops(weights: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target-major edge weights and edges `(b, n, n)` (entry [i, j] is the edge j → i) of a graph given
        source-major, its self-loops replaced by one per node weighted by the mean weight of its incoming edges."""
        n = weights.shape[-1]
        eye = torch.eye(n, dtype=torch.bool, device=weights.device)
        edges = edges & ~eye  # (b, n, n) without self-loops
        w = weights * edges
        loop_w = w.sum(1) / edges.sum(1).clamp_min(1)  # (b, n): mean incoming weight
        w = torch.where(eye, torch.diag_embed(loop_w), w)
        return w.transpose(1, 2), (edges | eye).transpose(1, 2)

    def attend_rows(self, xt: torch.Tensor, xs: torch.Tensor, root: torch.Tensor | None, w: torch.Tensor,
                    edges: torch.Tensor, heads: torch.Tensor | None = None, gate: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """The attention of ``t`` targets over ``s`` sources: the layer's output at the targets.

        Args:
            xt, root: `(b / r, t, h, c)` target and root terms of the targets (root may be None).
            xs: `(b / r, s, h, c)` source terms; each grid of terms serves r consecutive graphs.
            w, edges: `(b, t, s)` target-major edge weights and edges, self-loops included (``with_self_loops``,
                or rows of its output: a subset of the targets gives their rows of the whole layer's output).
            heads, gate: as in ``forward`` (a gate needs t = s).

        Returns:
            `(b, t, k·out)`.
        """
        e, att, bias = self._picked(heads)
        copies = w.shape[0] // xs.shape[0]  # graphs per grid of node terms
        if gate is None and fused_attention_available(xs):  # evaluation: logits, softmax and sum in one pass
            out = attend(xt, xs, att, w, e, edges, bias, slope=0.2)  # (b, t, h, c)
            if root is not None:
                out = (out.unflatten(0, (-1, copies)) + root[:, None]).flatten(0, 1)
            return out.flatten(2)
        xs, xt, root = NodeTerms(xs, xt, root).repeat_interleave(copies)
        # attention of target i over source j: logits use the weight of edge j → i
        # (b, t, s, h): -inf off the graph, or every pair scored when the graph gates the attention
        logits = pairwise_score(xt, xs, att, w, e, slope=0.2, mask=edges if gate is None else None)
        logits = logits.permute(0, 3, 1, 2)  # (b, h, t, s); contiguous from the kernel
        alpha = logits.softmax(-1) if gate is None else gated_softmax(logits, edges, gate.transpose(1, 2))
        out = (alpha @ xs.transpose(1, 2)).add_(bias[:, :, None])  # (b, h, t, c)
        out = out.transpose(1, 2) if root is None else root + out.transpose(1, 2)  # (b, t, h, c)
        return rearrange(out, "b n h c -> b n (h c)")
