"""Building blocks of the causal graph: positional encoding, straight-through Bernoulli samples, the
intervention mask, the graph discoverers and a dense GATv2 (shared/paper.md §5).

Axes: ``b`` batch, ``n`` nodes (L = K·h·w, plus one action node where enabled), ``v`` codebook size N (the
node-feature width), ``a`` actions, ``t`` discoverers (A + 1), ``M`` discoverer width, ``h`` heads,
``c`` channels per head.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from causalvq.pairwise import pairwise_score

_P_MIN = 1e-4  # probabilities are clamped to [1e-4, 1 - 1e-4] before sampling, as in the official code


def sinusoidal_encoding(num_positions: int, width: int) -> torch.Tensor:
    """Transformer positional encoding `(num_positions, width)`: sin on even, cos on odd channels.

    Computed on the CPU, then moved to the default device: under ``torch.device("meta")`` (the shape check of
    ``CausalVQ.from_pretrained``) a meta ``arange`` would import sympy, a quarter of a second per process.
    """
    pos = torch.arange(num_positions, dtype=torch.float32, device="cpu")[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32, device="cpu") * (-math.log(10000.0) / width))
    pe = torch.zeros(num_positions, width, device="cpu")
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe.to(torch.empty(0).device)  # the default device (meta inside a ``torch.device`` context)


def bernoulli_st(p: torch.Tensor, sample: bool, tau: float = 1.0) -> torch.Tensor:
    """Hard 0/1 draw with P(1) = p and a straight-through gradient (Gumbel-softmax over {0, 1}, τ = tau).

    A two-class Gumbel-softmax over the logits (log(1 − p), log p) is a sigmoid of the logit difference plus
    logistic noise; the forward value is the hard sample, exactly 0 or 1, and the gradient is the soft one.
    With ``sample=False`` the noise is left out: the value is 1 where p > 0.5 (deterministic evaluation).
    """
    p = p.clamp(_P_MIN, 1 - _P_MIN)
    logit = p.log() - torch.log1p(-p)
    if sample:
        u = torch.rand_like(p).clamp(1e-9, 1 - 1e-9)
        logit = logit + u.log() - torch.log1p(-u)  # logistic noise = difference of two Gumbels
    soft = torch.sigmoid(logit / tau)
    hard = (logit > 0).to(p.dtype)
    return _StraightThrough.apply(hard, soft)


class _StraightThrough(torch.autograd.Function):
    """Forward: the hard value, exactly (``hard + soft - soft.detach()`` can round to 0.99999994).
    Backward: the gradient goes to the soft value."""

    @staticmethod
    def forward(ctx, hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return hard

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # noqa: D102
        return None, grad


class GraphDiscoverers(nn.Module):
    """A + 1 MLPs f_t(P_i, P_j) = σ(w2·LeakyReLU(W1·[P_i ; P_j] + b1) + b2): t = 0 "no action", t = a + 1 action a.

    The first layer is applied per node and added by broadcasting (W1·[P_i ; P_j] = W1a·P_i + W1b·P_j), and the
    pairwise hidden layer never materialises (``pairwise_score``): exactly the official all-pairs MLP.
    """

    def __init__(self, num_discoverers: int, width: int, hidden: int) -> None:
        super().__init__()
        bound1, bound2 = 1 / math.sqrt(2 * width), 1 / math.sqrt(hidden)  # nn.Linear's default init
        self.w1 = nn.Parameter(torch.empty(num_discoverers, hidden, 2 * width).uniform_(-bound1, bound1))
        self.b1 = nn.Parameter(torch.empty(num_discoverers, hidden).uniform_(-bound1, bound1))
        self.w2 = nn.Parameter(torch.empty(num_discoverers, hidden).uniform_(-bound2, bound2))
        self.b2 = nn.Parameter(torch.empty(num_discoverers).uniform_(-bound2, bound2))
        self.width = width

    def forward(self, P: torch.Tensor, which: torch.Tensor | int) -> torch.Tensor:
        """Edge probabilities `(b, n, n)` (row i = source, column j = target) from node features `P (b, n, v)`.

        ``which`` picks the discoverer: an int for the whole batch, or a long tensor `(b,)` per sample.
        """
        if isinstance(which, int):
            w1, b1, w2, b2 = (t[which][None] for t in (self.w1, self.b1, self.w2, self.b2))
        else:
            w1, b1, w2, b2 = self.w1[which], self.b1[which], self.w2[which], self.b2[which]
        wa, wb = w1[..., : self.width], w1[..., self.width:]  # (b|1, M, v) each
        U = torch.einsum("bnv,bmv->bnm", P, wa.expand(P.shape[0], -1, -1)) + b1[:, None]  # (b, n, M)
        V = torch.einsum("bnv,bmv->bnm", P, wb.expand(P.shape[0], -1, -1))  # (b, n, M)
        score = pairwise_score(U[:, :, None], V[:, :, None], w2[:, None], slope=0.01)  # (b, n, n, 1)
        return torch.sigmoid(score[..., 0] + b2[:, None, None])


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

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None, edges: torch.Tensor | None,
                heads: torch.Tensor | None = None) -> torch.Tensor:
        """Propagate node features over a weighted graph.

        Args:
            x: `(b, n, in)` node features.
            weights: `(b, n, n)` edge weights, row = source, column = target.
            edges: `(b, n, n)` bool, which entries are edges (the diagonal is ignored); None for the identity graph,
                where each node's only in-edge is its self-loop (attention 1: no pairwise scores needed).
            heads: optional long `(b, k)`: compute only these heads per sample (exact: heads are independent).

        Returns:
            `(b, n, k·out)` (all heads when ``heads`` is None), heads concatenated.
        """
        b, n, _ = x.shape
        split = lambda t: rearrange(t, "b n (h c) -> b n h c", h=self.heads)  # noqa: E731
        if heads is None:
            xs, xt = split(self.lin_src(x)), split(self.lin_tgt(x))  # (b, n, h, c)
            root = split(self.lin_root(x)) if self.lin_root is not None else None
            e, att = self.lin_edge, self.att[None]
            bias = rearrange(self.bias, "(h c) -> 1 h c", h=self.heads)
        else:  # gather the chosen heads' parameters per sample
            def project(lin: nn.Linear) -> torch.Tensor:
                W = rearrange(lin.weight, "(h c) i -> h c i", h=self.heads)[heads]  # (b, k, c, in)
                out = torch.einsum("bni,bhci->bnhc", x, W)  # (b, n, k, c)
                if lin.bias is not None:
                    out = out + rearrange(lin.bias, "(h c) -> h c", h=self.heads)[heads][:, None]
                return out

            xs, xt = project(self.lin_src), project(self.lin_tgt)
            root = project(self.lin_root) if self.lin_root is not None else None
            e, att = self.lin_edge[heads], self.att[heads]  # (b, k, c)
            bias = rearrange(self.bias, "(h c) -> h c", h=self.heads)[heads]

        if edges is None:  # identity graph: every node attends to itself only, with weight 1
            out = xs + bias[:, None]
            return rearrange(out if root is None else out + root, "b n h c -> b n (h c)")
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        edges = edges & ~eye  # (b, n, n) without self-loops
        w = weights * edges
        loop_w = w.sum(1) / edges.sum(1).clamp_min(1)  # (b, n): mean incoming weight
        w = torch.where(eye, torch.diag_embed(loop_w), w)
        edges = edges | eye
        # attention of target i over source j: logits use the weight of edge j → i
        logits = pairwise_score(xt, xs, att, w.transpose(1, 2), e, slope=0.2)  # (b, n_tgt, n_src, h)
        logits = logits.masked_fill(~edges.transpose(1, 2)[..., None], float("-inf"))
        alpha = logits.softmax(dim=2)  # (b, n_tgt, n_src, h)
        out = torch.einsum("bijh,bjhc->bihc", alpha, xs) + bias[:, None]  # (b, n, h, c)
        if root is not None:
            out = out + root
        return rearrange(out, "b n h c -> b n (h c)")
