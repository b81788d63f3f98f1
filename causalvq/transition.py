"""The causal-transition (CT) layer: from the codes of x and an action to a distribution over the codes of y.

Axes: ``b`` batch, ``n`` nodes (L = K·h·w), ``v`` codebook size N, ``a`` actions (A = 2F), ``k`` heads used.

The whole layer (shared/paper.md §5.7), with m the intervention mask and C the edge probabilities:

    X  = onehot(codes)                                  (b, n, v)
    P  = X + drop(PE)            [official: drop(X + PE), switch dropout_on_codes]; PE rows of norm 1
                                 [official: √(N/2), switch unit_positional]
    m  = BernoulliST(p(a, drop(PE), X))                 (b, n)      0 without an action
    C  = (1 − m)·f_0(P_i, P_j) + m·f_{a+1}(P_i, P_j)    (b, n, n)   blended over the intervened node's
                                                                    incoming edges [official: outgoing]
    Gr = BernoulliST(C);  W = C ⊙ Gr
    H  = GATv2_2(LeakyReLU(GATv2_1(P, W)), W)           (b, n, (A + 1)·v)   attention over the edges of Gr
                                 with gated_attention, α ∝ Gr·exp(s) over all pairs: the same values, and the
                                 straight-through gradient also reaches the edges that were not drawn [official:
                                 Gr is an edge list; an edge not drawn gets no gradient]
    ŷ  = softmax((1 − m)·H[head 0] + m·H[head a + 1])   (b, n, v)

With ``intervention_context`` (B28) head a + 1 adds the logits of a small network of the codes around node i,
the action and i's position (``InterventionContext``) [official: the head reads the node's features and its
in-edges only].

With ``action_node`` an extra node carrying Linear(a) sends an edge to every intervened node [official: the
action node receives every edge and sends none, so it never influences a latent node]. Only the output heads a
sample uses are computed (exact: heads are independent), and without an action the action discoverers are
skipped (exact: m ≡ 0).

``forward`` reads as the lines above, one method each: ``node_features`` (X, P), ``edges`` (m, C),
``sample_graph`` (Gr), ``graph_network`` (H) and ``blend_heads`` (ŷ). The exact rewrites that make it fast live
behind those names: ``project_nodes`` (a linear map of a one-hot code is a column gather), ``intervention_probs``
(the one-hot action selects a weight column), ``edges`` (without gradients only the rewired pairs are scored)
and ``copies`` (one set of node terms for the A graphs of a retrieval; without gradients, ``_shared_passes``
recomputes per action only the rows its intervention changes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from causalvq.config import ModelConfig
from causalvq.gatv2 import DenseGATv2, NodeTerms
from causalvq.graph_discovery import GraphDiscoverers, bernoulli_st, sinusoidal_encoding


@dataclass(frozen=True)
class TransitionOutput:
    """Everything one pass of the CT layer computes; tensors keep their gradients."""

    probs: torch.Tensor  # (b, n, v) ŷ, distribution over each node's codes
    mask: torch.Tensor  # (b, n) intervention mask, exactly 0/1 (straight-through gradient)
    mask_probs: torch.Tensor  # (b, n) probability p that each node is intervened on
    edge_probs: torch.Tensor  # (b, n, n) C, row = source, column = target
    graph: torch.Tensor  # (b, n, n) sampled graph Gr, exactly 0/1 (straight-through gradient)
    head_logits: torch.Tensor  # (b, n, k, v) logits of the heads used: [unchanged] or [unchanged, action a]


class NodeFeatures(NamedTuple):
    """The node features of a batch of code grids, and how they were made."""

    onehot: torch.Tensor  # X (b, n, v)
    features: torch.Tensor  # P (b, n, v)
    codes: torch.Tensor  # (b, n) long
    positional: torch.Tensor | None  # drop(PE) (n, v), one draw for the batch: P = X + positional; None with
    #                                  dropout_on_codes, where P = drop(X + PE) has no such split


class Edges(NamedTuple):
    """The intervention mask and the edge probabilities of a batch of grids under their actions."""

    probs: torch.Tensor  # C (b, n, n), row = source, column = target
    mask: torch.Tensor  # m (b, n), exactly 0/1 (straight-through gradient); 0 without an action
    mask_probs: torch.Tensor  # p (b, n), probability that each node is intervened on


class CausalTransition(nn.Module):
    """The CT layer over the L = K·h·w code nodes of an MCQ-VAE."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        n, v, a = config.num_nodes, config.codebook_size, config.num_actions
        pe = sinusoidal_encoding(n, v)  # (n, v), rows of norm √(v/2)
        if config.unit_positional:  # B18: as large as the one-hot code it is added to, so it does not drown it
            pe = pe / pe.norm(dim=-1, keepdim=True)
        self.register_buffer("pe", pe, persistent=False)
        self.dropout = nn.Dropout(config.positional_dropout)
        self.mask_net = nn.Linear(a + v, config.mask_hidden or v)
        # B22: a hidden layer lets the action and the position interact (official: one linear layer)
        self.mask_out = nn.Linear(config.mask_hidden, v) if config.mask_hidden else None
        # B24: the hidden layer also reads the codes around the node, a convolution over the one-hot code grid
        r = config.mask_context
        self.mask_context = (nn.Conv2d(config.num_codebooks * v, config.mask_hidden, 2 * r + 1, padding=r, bias=False)
                             if r else None)
        self.discoverers = GraphDiscoverers(a + 1, v, config.discoverer_width)
        self.gat1 = DenseGATv2(v, config.graph_width, a + 1, residual=config.graph_residual)
        self.gat2 = DenseGATv2(config.graph_width * (a + 1), v, a + 1, residual=config.graph_residual)
        self.action_embedding = nn.Linear(a, v) if config.action_node else None
        self.context = InterventionContext(config) if config.intervention_context else None

    def node_features(self, codes: torch.Tensor) -> NodeFeatures:
        """Codes `(b, n)` → one-hot X `(b, n, v)` and P = X + drop(PE) [official: drop(X + PE)]."""
        X = F.one_hot(codes, self.config.codebook_size).to(self.pe.dtype)  # (b, n, v)
        if self.config.dropout_on_codes:
            return NodeFeatures(X, self.dropout(X + self.pe), codes, None)
        pe = self.dropped_positional(X.shape[0])
        return NodeFeatures(X, X + pe, codes, pe)

    def dropped_positional(self, batch: int) -> torch.Tensor:
        """drop(PE): one draw `(n, v)` for the batch, or one per sample `(b, n, v)` with ``official_dropout_draws``."""
        if self.config.official_dropout_draws and self.training and self.dropout.p > 0:
            return self.dropout(self.pe.expand(batch, *self.pe.shape))
        return self.dropout(self.pe)

    def project_nodes(self, nodes: NodeFeatures) -> NodeTerms:
        """The first graph layer's node terms of P. With P = X + drop(PE) a linear map of P is exactly its
        weight's column at each node's code plus the map of drop(PE), computed once for the batch: a gather
        instead of a `(b·n, v) @ (v, 3·(A + 1)·G)` product."""
        if nodes.positional is None:
            return self.gat1.project(nodes.features)
        return self.gat1.project_onehot(nodes.codes, nodes.positional)

    def intervention_probs(self, X: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """p_i = σ(Linear([a ; drop(PE_i)]))[c_i]: probability that ``action`` intervenes on node i, `(b, n)`.

        The one-hot action selects a column of the weight: W·[a ; PE_i] + b = W_a[:, a] + (W_pe·PE_i + b),
        computed as that sum (exact) without a `(b, n, A + v)` input. With ``mask_hidden`` (B22) that sum is a
        hidden layer: p_i = σ(Linear(LeakyReLU(W·[a ; drop(PE_i)] + b)))[c_i]. With ``mask_context`` (B24) the
        hidden layer adds a convolution of the one-hot code grid around node i.
        """
        a = self.config.num_actions
        W = self.mask_net.weight  # (v or H, A + v)
        pe = self.dropped_positional(action.shape[0])  # (n, v) or (b, n, v)
        pre = W[:, :a].t().index_select(0, action)[:, None] + F.linear(pe, W[:, a:], self.mask_net.bias)  # (b, n, ·)
        if self.mask_context is not None:
            pre = pre + self.code_context(X)
        logits = pre if self.mask_out is None else self.mask_out(F.leaky_relu(pre))  # (b, n, v)
        return (torch.sigmoid(logits) * X).sum(-1)  # (b, n)

    def code_context(self, X: torch.Tensor) -> torch.Tensor:
        """B24: the mask's hidden-layer term of the codes around each node, `(b, n, H)` from one-hot X `(b, n, v)`:
        a (2r + 1)² convolution over the K one-hot code grids (zero past the border), shared by the K nodes of a
        grid cell."""
        k, g = self.config.num_codebooks, self.config.grid_size
        grid = rearrange(X, "b (k h w) v -> b (k v) h w", k=k, h=g, w=g)
        return repeat(self.mask_context(grid), "b c h w -> b (k h w) c", k=k)

    def rewired(self, m: torch.Tensor) -> torch.Tensor:
        """Which entries of the `(b, n, n)` adjacency the action discoverer decides under mask `m (b, n)`, as a
        broadcastable weight: the incoming edges of intervened nodes (columns), or their outgoing edges (rows)
        with ``intervention_edges="outgoing"``."""
        return m[:, None, :] if self.config.intervention_edges == "incoming" else m[:, :, None]

    def blend_edges(self, C: torch.Tensor, C_action: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Edge probabilities `(b, n, n)` under mask `m (b, n)`: the action discoverer's where ``rewired``."""
        return C + self.rewired(m) * (C_action - C)

    def edges(self, nodes: NodeFeatures, action: torch.Tensor | None, sample: bool, copies: int = 1,
              graph: bool = True) -> Edges:
        """The intervention mask m of ``action`` and the edge probabilities C under it (``Edges``), `(b, n)` and
        `(b, n, n)`; ``copies`` as in ``forward``. The one edge function of the layer: the forward pass and
        ``CausalVQ.causal_graph`` both call it. ``graph=False`` skips the discoverers (C = 0) for a pass over the
        identity graph, which reads no edge probability; the discoverers draw no noise, so m is the same draw."""
        X, P = nodes.onehot, nodes.features
        C = self.discoverers(P, 0) if graph else P.new_zeros(P.shape[0], P.shape[1], P.shape[1])  # (b, n, n)
        if copies > 1:
            if self.training and self.dropout.p > 0:
                raise ValueError("copies > 1 shares one dropout draw between copies: use it in eval mode")
            X, P, C = (t.repeat_interleave(copies, 0) for t in (X, P, C))  # (b·copies, ...)
        if action is None:
            p = m = torch.zeros(X.shape[:2], device=X.device)
            return Edges(C, m, p)
        p = self.intervention_probs(X, action)
        m = bernoulli_st(p, sample, separate_clamps=self.config.separate_clamps)  # (b, n)
        # Without gradients only the rewired entries of the action discoverer are scored (exact: the blend
        # ignores the rest); training needs them all, for the straight-through gradient of m.
        if not graph:
            return Edges(C, m, p)
        pairs = None if torch.is_grad_enabled() else self.rewired(m) > 0
        return Edges(self.blend_edges(C, self.discoverers(P, action + 1, pairs=pairs), m), m, p)

    def forward(self, codes: torch.Tensor, action: torch.Tensor | None = None, *, sample: bool = True,
                identity_graph: bool = False, copies: int = 1, nodes: NodeFeatures | None = None) -> TransitionOutput:
        """One CT pass.

        Args:
            codes: long `(b, n)` flat node codes of x.
            action: long `(b,)` action indices, or None for the no-action (reconstruction) pass.
            sample: draw the mask and the graph with Gumbel noise (training); False thresholds at 0.5.
            identity_graph: replace the sampled graph by the identity (each node sees only itself). Without an
                action this skips the discoverers and the attention (exact: the only in-edge is the self-loop);
                with one it skips the discoverers (their probabilities are unused; ``edge_probs`` comes back 0)
                and each node attends over its two possible sources only, itself and the action node.
            copies: each grid of ``codes`` stands for ``copies`` consecutive rows of ``action`` (retrieval: all A
                actions of one pair). Node features, the no-action graph and the first graph layer's node
                projections are computed once per grid; exact in eval mode only, where dropout does not differ
                between copies.
            nodes: the ``node_features`` of ``codes`` already drawn, to share one dropout draw between passes
                (``official_dropout_draws``); None draws them here.
        """
        nodes = self.node_features(codes) if nodes is None else nodes  # X, P
        terms = self.project_nodes(nodes)  # first-layer node terms: the same for every graph over these nodes
        if identity_graph and action is None:
            return self._identity_pass(terms)
        if identity_graph:
            return self._identity_action_pass(nodes, terms, action, sample, copies)
        if copies > 1 and not sample and not identity_graph and action is not None and not torch.is_grad_enabled():
            return self._shared_passes(nodes, terms, action, copies)
        C, m, p = self.edges(nodes, action, sample, copies, graph=not identity_graph)  # (b, n, n), (b, n), (b, n)
        graph = self.sample_graph(C, sample, identity_graph)  # Gr (b, n, n)
        H = self.graph_network(terms, C, graph, m, action, copies)  # (b, n, k, v), the heads used
        H = self.with_context(H, nodes.codes, action, copies)
        return TransitionOutput(probs=self.blend_heads(H, m).softmax(-1), mask=m, mask_probs=p, edge_probs=C,
                                graph=graph, head_logits=H)

    def sample_graph(self, C: torch.Tensor, sample: bool, identity: bool = False) -> torch.Tensor:
        """Gr = BernoulliST(C) `(b, n, n)`, exactly 0/1; the identity (self-loops only) with ``identity``."""
        if identity:
            b, n = C.shape[:2]
            return torch.eye(n, device=C.device).expand(b, n, n)
        return bernoulli_st(C, sample, separate_clamps=self.config.separate_clamps)

    def graph_network(self, terms: NodeTerms, C: torch.Tensor, graph: torch.Tensor, m: torch.Tensor,
                      action: torch.Tensor | None, copies: int = 1) -> torch.Tensor:
        """H = GATv2_2(LeakyReLU(GATv2_1(P, W)), W) over W = C ⊙ Gr, for the output heads a sample uses only:
        `(b, n, k, v)` with k = 1 ("unchanged") without an action, else 2 ("unchanged", "intervened by a").

        ``terms`` are the first layer's node terms of P (``project_nodes``), one grid per ``copies`` graphs.
        """
        b, n = m.shape
        W, edges, gate = C * graph, graph.detach() > 0, graph  # weighted graph; edges where graph = 1
        if self.action_embedding is not None and action is not None:
            terms, W, gate = self._with_action_node(terms, W, graph, m, action, copies)  # n + 1 nodes
            edges = W.detach() > 0
        # B19: with gradients, the sampled graph gates the attention, so edges that were not drawn learn too
        gate = gate if self.config.gated_attention and torch.is_grad_enabled() else None
        # in place: the backward keeps the activation only, which the second layer saves anyway
        hidden = F.leaky_relu(self.gat1(terms, W, edges, gate=gate), inplace=True)  # (b, n(+1), (A + 1)·G)
        heads = torch.zeros(b, 1, dtype=torch.long, device=m.device)
        if action is not None:
            heads = torch.cat([heads, action[:, None] + 1], 1)  # (b, 2): "unchanged" and "intervened by a"
        out = self.gat2(hidden, W, edges, heads=heads, gate=gate)[:, :n]  # (b, n, k·v)
        return out.unflatten(-1, (heads.shape[1], self.config.codebook_size))  # (b, n, k, v)

    def _with_action_node(self, terms: NodeTerms, W: torch.Tensor, graph: torch.Tensor, m: torch.Tensor,
                          action: torch.Tensor, copies: int) -> tuple[NodeTerms, torch.Tensor, torch.Tensor]:
        """Append the action node (index n): it sends an edge of weight m_i to every intervened node i. Returns
        the node terms, the weighted graph and the sampled graph over the n + 1 nodes."""
        n = m.shape[1]
        a_node = self.action_embedding(F.one_hot(action, self.config.num_actions).to(m.dtype))  # (b, v)
        terms = terms.repeat_interleave(copies).cat(self.gat1.project(a_node[:, None]))  # (b, n + 1, ...)
        append = lambda t: torch.cat([F.pad(t, (0, 1, 0, 1))[:, :n], F.pad(m, (0, 1))[:, None]], 1)  # noqa: E731
        return terms, append(W), append(graph)  # (b, n + 1, n + 1) each

    def _shared_passes(self, nodes: NodeFeatures, terms: NodeTerms, action: torch.Tensor, copies: int
                       ) -> TransitionOutput:
        """``forward`` with ``copies`` deterministic action passes per grid and no gradient, computing once per grid
        what the passes share (exact up to float rounding).

        A pass differs from the grid's no-action pass only at the targets whose in-edges it rewires (the intervened
        nodes, with ``intervention_edges="incoming"``) and the action node: only those rows of the first graph
        layer are recomputed. The second layer's output changes there and at their children; every other node's
        logits are the no-action pass's head 0, which is all the blend reads where m = 0. With a sparse mask and a
        sparse graph a pass costs a few rows instead of every node. When a pass intervenes on more than half the
        nodes, the passes run dense (the row bookkeeping would cost more than it saves).
        """
        n = nodes.codes.shape[1]
        C, m, p = self.edges(nodes, action, False, copies)  # (b·r, n, n), (b·r, n), (b·r, n)
        graph = self.sample_graph(C, False)  # (b·r, n, n)
        if m.sum(1).max() > n // 2:  # a pass rewires most rows: the dense passes cost less than the bookkeeping
            H = self.with_context(self.graph_network(terms, C, graph, m, action, copies), nodes.codes, action, copies)
            return TransitionOutput(probs=self.blend_heads(H, m).softmax(-1), mask=m, mask_probs=p, edge_probs=C,
                                    graph=graph, head_logits=H)
        C0 = self.discoverers(nodes.features, 0)  # (b, n, n): the no-action graph, once per grid
        G0 = self.sample_graph(C0, False)
        w0, e0 = self.gat1.with_self_loops(C0 * G0, G0 > 0)  # (b, n, n) target-major
        hidden0 = F.leaky_relu(self.gat1.attend_rows(terms.tgt, terms.src, terms.root, w0, e0))  # (b, n, (A + 1)·G)
        terms_r, W, _ = (terms.repeat_interleave(copies), C * graph, graph) if self.action_embedding is None else \
            self._with_action_node(terms, C * graph, graph, m, action, copies)
        w, e = self.gat1.with_self_loops(W, W > 0)  # (b·r, N, N) target-major, N = n (+ 1 action node)
        N = w.shape[1]
        pad = lambda t: F.pad(t, (0, N - n)).repeat_interleave(copies, 0)  # noqa: E731  (b·r, n, N)
        # first layer: the targets whose in-edges differ from the no-action pass, and the action node
        rewired = (w[:, :n] != pad(w0)).any(-1) | (e[:, :n] != pad(e0)).any(-1)  # (b·r, n)
        rows1 = F.pad(rewired, (0, N - n), value=True)  # (b·r, N)
        idx1 = _row_index(rows1)  # (b·r, R1)
        gather = lambda t, idx: t.gather(1, idx.view(*idx.shape, *[1] * (t.dim() - 2)).expand(  # noqa: E731
            *idx.shape, *t.shape[2:]))
        h_rows = F.leaky_relu(self.gat1.attend_rows(gather(terms_r.tgt, idx1), terms_r.src,
                                                    None if terms_r.root is None else gather(terms_r.root, idx1),
                                                    gather(w, idx1), gather(e, idx1)))  # (b·r, R1, (A + 1)·G)
        hidden = F.pad(hidden0, (0, 0, 0, N - n)).repeat_interleave(copies, 0)
        hidden.scatter_(1, idx1[..., None].expand_as(h_rows), h_rows)
        # second layer: the heads "unchanged" and "intervened by a"; sources' terms from the shared rows
        heads = torch.stack([torch.zeros_like(action), action + 1], 1)  # (b·r, 2)
        v = self.config.codebook_size
        src_all = rearrange(F.linear(hidden0, self.gat2.lin_src.weight, self.gat2.lin_src.bias),
                            "b n (h c) -> b n h c", h=self.gat2.heads)  # (b, n, A + 1, v), every head once
        src = src_all.repeat_interleave(copies, 0).gather(2, heads[:, None, :, None].expand(-1, n, -1, v))
        src = F.pad(src, (0, 0, 0, 0, 0, N - n))  # (b·r, N, 2, v)
        src_rows = self.gat2.project(gather(hidden, idx1), heads).src  # (b·r, R1, 2, v)
        src.scatter_(1, idx1[..., None, None].expand_as(src_rows), src_rows)
        # rows whose output changes (rewired, or fed by a changed row) and the intervened ones (head a + 1)
        changed = rows1[:, :n] | (e[:, :n] & rows1[:, None, :]).any(-1) | (m > 0)  # (b·r, n)
        idx2 = _row_index(changed)  # (b·r, R2)
        t_rows = self.gat2.project(gather(hidden, idx2), heads)
        out_rows = self.gat2.attend_rows(t_rows.tgt, src, t_rows.root, gather(w, idx2), gather(e, idx2), heads)
        zero = torch.zeros(hidden0.shape[0], 1, dtype=torch.long, device=hidden0.device)
        t0 = self.gat2.project(hidden0, zero)
        out0 = self.gat2.attend_rows(t0.tgt, t0.src, t0.root, w0, e0, zero)  # (b, n, v): the no-action pass
        H = repeat(out0, "b n v -> (b r) n k v", r=copies, k=2).contiguous()  # head a + 1 unused where m = 0
        H.scatter_(1, idx2[..., None, None].expand(-1, -1, 2, v), out_rows.unflatten(-1, (2, v)))
        H = self.with_context(H, nodes.codes, action, copies)
        return TransitionOutput(probs=self.blend_heads(H, m).softmax(-1), mask=m, mask_probs=p, edge_probs=C,
                                graph=graph, head_logits=H)

    def with_context(self, H: torch.Tensor, codes: torch.Tensor, action: torch.Tensor | None, copies: int = 1
                     ) -> torch.Tensor:
        """B28: the heads ``H (b·copies, n, k, v)`` with the context logits of ``codes (b, n)`` added to head
        "intervened by a"; ``H`` itself without ``intervention_context`` or without an action."""
        if self.context is None or action is None:
            return H
        extra = self.context(codes, action, copies)  # (b·copies, n, v)
        return torch.stack([H[:, :, 0], H[:, :, 1] + extra], 2)

    def blend_heads(self, H: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Logits of ŷ `(b, n, v)`: (1 − m)·H[head 0] + m·H[head a + 1] from the heads used ``H (b, n, k, v)``."""
        if H.shape[2] == 1:  # no action
            return H[:, :, 0]
        return H[:, :, 0] + m[..., None] * (H[:, :, 1] - H[:, :, 0])

    def _identity_action_pass(self, nodes: NodeFeatures, terms: NodeTerms, action: torch.Tensor, sample: bool,
                              copies: int = 1) -> TransitionOutput:
        """An action pass over the identity graph: ``forward`` with ``identity_graph`` and an action."""
        C, m, p = self.edges(nodes, action, sample, copies, graph=False)  # C = 0: the discoverers are skipped
        H = self.identity_heads(terms.repeat_interleave(copies), m, action)
        H = self.with_context(H, nodes.codes, action, copies)
        b, n = m.shape
        eye = torch.eye(n, device=m.device).expand(b, n, n)
        return TransitionOutput(probs=self.blend_heads(H, m).softmax(-1), mask=m, mask_probs=p, edge_probs=C,
                                graph=eye, head_logits=H)

    def identity_heads(self, terms: NodeTerms, m: torch.Tensor, action: torch.Tensor,
                       heads: torch.Tensor | None = None) -> torch.Tensor:
        """``graph_network`` over the identity graph under mask ``m (b, n)``, `(b, n, k, v)`, at the cost of two
        sources per node instead of n + 1: with the action node (B2) each node's in-edges are its self-loop and,
        where m_i = 1, the action node's edge; without it, the self-loop alone. ``heads`` `(b, k)` are the output
        heads computed, by default "unchanged" and "intervened by a" (k = 2)."""
        if heads is None:
            heads = torch.stack([torch.zeros_like(action), action + 1], 1)  # (b, 2)
        shape = (heads.shape[1], self.config.codebook_size)
        if self.action_embedding is None:
            hidden = F.leaky_relu(self.gat1(terms, None, None))
            return self.gat2(hidden, None, None, heads=heads).unflatten(-1, shape)
        a_node = self.action_embedding(F.one_hot(action, self.config.num_actions).to(m.dtype))  # (b, v)
        a_terms = self.gat1.project(a_node[:, None])  # (b, 1, A + 1, G)
        # B19: with gradients the drawn mask gates the attention, as in graph_network; else the masked softmax
        gate = m if self.config.gated_attention and torch.is_grad_enabled() else (m.detach() > 0).to(m.dtype)
        hidden = F.leaky_relu(self.gat1.attend_self_and_one(terms, a_terms, m, gate))  # (b, n, (A + 1)·G)
        hidden_a = F.leaky_relu(self.gat1(a_terms, None, None))  # the action node has no in-edge but its self-loop
        out = self.gat2.attend_self_and_one(self.gat2.project(hidden, heads), self.gat2.project(hidden_a, heads),
                                            m, gate, heads)  # (b, n, k·v)
        return out.unflatten(-1, shape)

    def intervened_alone(self, codes: torch.Tensor, action: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """B29b: logits `(b, n, v)` of the head "intervened by a" on every node, over the identity graph: what each
        node would become were the action to intervene on it with no edge to read (its own code, the action node
        where the drawn mask picks it, and its B28 context). Equal to ``forward(codes, action, sample=sample,
        identity_graph=True).head_logits[:, :, 1]`` (the same draws), without the head "unchanged"."""
        nodes = self.node_features(codes)
        m = self.edges(nodes, action, sample, graph=False).mask
        logits = self.identity_heads(self.project_nodes(nodes), m, action, heads=(action + 1)[:, None])[:, :, 0]
        return logits if self.context is None else logits + self.context(codes, action)

    def _identity_pass(self, terms: NodeTerms) -> TransitionOutput:
        """The no-action pass on the identity graph: each node's output depends on its own features only."""
        b, n = terms.src.shape[:2]
        device = terms.src.device
        eye = torch.eye(n, device=device).expand(b, n, n)
        zero = torch.zeros(b, n, device=device)
        heads = torch.zeros(b, 1, dtype=torch.long, device=device)
        hidden = F.leaky_relu(self.gat1(terms, None, None))  # (b, n, (A + 1)·G)
        out = self.gat2(hidden, None, None, heads=heads).unflatten(-1, (1, self.config.codebook_size))  # (b, n, 1, v)
        return TransitionOutput(probs=out[:, :, 0].softmax(-1), mask=zero, mask_probs=zero, edge_probs=eye,
                                graph=eye, head_logits=out)


class InterventionContext(nn.Module):
    """B28: what the codes around a node add to its "intervened by a" logits, `(b, n, v)`.

    Each node's code is embedded (E, `code_width` per codebook), a (2r + 1)² convolution over the K embedded grids
    (zero past the border) reads the cells around the node, and the action and the node's position are added
    before one hidden layer: logits_i = W_o·σ(W_h·σ(conv(E[c])_i + A_a + Q_i)), σ = LeakyReLU. The convolution
    runs once per grid; a grid's ``copies`` (the actions of a retrieval) add their own action terms.
    """

    code_width = 32

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        k, r, h = config.num_codebooks, config.intervention_context, config.intervention_hidden
        self.embed = nn.Embedding(config.codebook_size, self.code_width)
        self.conv = nn.Conv2d(k * self.code_width, h, 2 * r + 1, padding=r)
        self.action = nn.Embedding(config.num_actions, h)
        self.position = nn.Parameter(torch.zeros(config.num_nodes, h))
        self.hidden = nn.Linear(h, h)
        self.out = nn.Linear(h, config.codebook_size)

    def neighbourhood(self, codes: torch.Tensor) -> torch.Tensor:
        """conv(E[c])_i + Q_i `(b, n, h)` of flat node codes `(b, n)`; the K nodes of a cell share the convolution."""
        k, g = self.config.num_codebooks, self.config.grid_size
        grid = rearrange(self.embed(codes), "b (k h w) c -> b (k c) h w", k=k, h=g, w=g)
        return repeat(self.conv(grid), "b c h w -> b (k h w) c", k=k) + self.position

    def forward(self, codes: torch.Tensor, action: torch.Tensor, copies: int = 1) -> torch.Tensor:
        """Logits `(b·copies, n, v)` for grids ``codes (b, n)``, each standing for ``copies`` rows of ``action``."""
        terms = self.neighbourhood(codes)
        if copies > 1:
            terms = terms.repeat_interleave(copies, 0)
        hidden = F.leaky_relu(terms + self.action(action)[:, None])
        return self.out(F.leaky_relu(self.hidden(hidden)))


def _row_index(rows: torch.Tensor) -> torch.Tensor:
    """Indices `(b, R)` of the True entries of ``rows (b, n)``, R the largest count in the batch; shorter rows
    are padded with their last True index (or 0), so computing and scattering a padded row repeats a true one."""
    count = int(rows.sum(1).max().clamp_min(1))
    order = torch.argsort((~rows).to(torch.int8), dim=1, stable=True)[:, :count]  # True entries first
    first = order[:, :1]
    valid = torch.arange(count, device=rows.device) < rows.sum(1, keepdim=True)
    return torch.where(valid, order, first)
