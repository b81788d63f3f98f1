"""Graph discovery (shared/paper.md §5): the positional encoding of the nodes, straight-through Bernoulli samples
(the intervention mask and the sampled graph) and the graph discoverers, MLPs that score every ordered node pair.

Axes: ``b`` batch, ``n`` nodes (L = K·h·w), ``v`` codebook size N (the node-feature width), ``t`` discoverers
(A + 1), ``M`` discoverer width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from causalvq.kernels.grouped import grouped_linear
from causalvq.kernels.pairwise import pairwise_score

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


def bernoulli_st(p: torch.Tensor, sample: bool, tau: float = 1.0, separate_clamps: bool = False) -> torch.Tensor:
    """Hard 0/1 draw with P(1) = p and a straight-through gradient (Gumbel-softmax over {0, 1}, τ = tau).

    A two-class Gumbel-softmax over the logits (log(1 − p), log p) is a sigmoid of the logit difference plus
    logistic noise; the forward value is the hard sample, exactly 0 or 1, and the gradient is the soft one.
    With ``sample=False`` the noise is left out: the value is 1 where p > 0.5 (deterministic evaluation).
    """
    if separate_clamps:  # official: log clamp(p) − log clamp(1 − p); a saturated p keeps the gradient of one side
        logit = p.clamp_min(_P_MIN).log() - (1 - p).clamp_min(_P_MIN).log()
    else:
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

    def forward(self, P: torch.Tensor, which: torch.Tensor | int, pairs: torch.Tensor | None = None) -> torch.Tensor:
        """Edge probabilities `(b, n, n)` (row i = source, column j = target) from node features `P (b, n, v)`.

        ``which`` picks the discoverer: an int for the whole batch, or a long tensor `(b,)` per sample. ``pairs``
        (bool, broadcastable to `(b, n, n)`) marks the only entries needed: the others are 0 and the fused kernel
        skips them.
        """
        if isinstance(which, int):
            which = torch.full((P.shape[0],), which, dtype=torch.long, device=P.device)
        # (b, n, M) each: W1a·P_i + b1 and W1b·P_j
        U, V = grouped_linear(P, [(self.w1[..., : self.width], self.b1), (self.w1[..., self.width:], None)], which)
        w2, b2 = self.w2.index_select(0, which), self.b2.index_select(0, which)  # (b, M), (b,)
        if pairs is not None:
            pairs = pairs.expand(P.shape[0], P.shape[1], P.shape[1])
        score = pairwise_score(U[:, :, None], V[:, :, None], w2[:, None], slope=0.01, mask=pairs)  # (b, n, n, 1)
        return torch.sigmoid(score[..., 0] + b2[:, None, None])
