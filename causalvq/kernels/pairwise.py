"""Pairwise additive scores, the hot loop of the transition layer, computed without the (b, n, m, h, g) tensor.

Both the graph discoverers (an MLP on every concatenated node pair) and GATv2 attention compute

    out[b, i, j, h] = Σ_g a[b, h, g] · leaky_relu(X[b, i, h, g] + Y[b, j, h, g] + w[b, i, j] · e[h, g])

for every ordered pair (i, j): the discoverer because its first layer splits exactly into per-node halves,
W·[P_i ; P_j] + b = (W_a·P_i + b) + W_b·P_j (shared/paper.md §13.3), GATv2 by definition. Materialising the
pairwise hidden tensor costs b·n·m·h·g floats (210 MB for one discoverer at the paper's size) and the time goes
into memory traffic. ``pairwise_score`` walks over row blocks of i small enough to stay in cache, and its
backward recomputes each block instead of storing it: same numbers, a few MB of working memory. Once
``causalvq.kernels.enable()`` has loaded the fused C++ kernel (``pairwise.cpp``), CPU tensors go through it instead.

Axes: ``b`` batch, ``n`` rows (targets), ``m`` columns (sources), ``h`` heads, ``g`` hidden width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from causalvq import kernels

# Elements of one (b, rows, m, h, g) block: ~1 MB of float32 keeps a block in a core's L2 cache (one transition
# pass of the shipped checkpoint, one thread: 7.1 ms with 4 MB blocks, 3.3 ms with 1 MB ones).
_BLOCK_ELEMENTS = 1 << 18


def _rows_per_block(shape: tuple[int, ...]) -> int:
    b, _, m, h, g = shape
    return max(1, _BLOCK_ELEMENTS // max(1, b * m * h * g))


def _pre_activation(X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor | None, e: torch.Tensor | None,
                    s: int, t: int) -> torch.Tensor:
    pre = X[:, s:t, None] + Y[:, None]  # (b, r, m, h, g)
    if w is not None:
        pre = pre.addcmul_(w[:, s:t, :, None, None], e[:, None, None])  # + w[b,i,j] · e[b,h,g]
    return pre


def fused_attention_available(x: torch.Tensor) -> bool:
    """Whether ``attend`` can run: the kernel is in use, ``x`` is on the CPU and no gradient is recorded."""
    return kernels.loaded() is not None and x.device.type == "cpu" and not torch.is_grad_enabled()


def attend(xt: torch.Tensor, xs: torch.Tensor, att: torch.Tensor, w: torch.Tensor, e: torch.Tensor,
           edges: torch.Tensor, bias: torch.Tensor, slope: float = 0.2) -> torch.Tensor:
    """GATv2 attention over dense graphs in one fused pass, without gradients (``fused_attention_available``).

    out[b, i, h] = bias[b, h] + Σ_{j: edges[b, i, j]} softmax_j(s[b, i, j, h]) · xs[b / r, j, h], with the
    scores s of ``pairwise_score(xt, xs, att, w, e, slope)``: the masked softmax and the weighted sum of
    ``DenseGATv2``'s torch path, without its `(b, h, n, m)` logits and attention tensors.

    Args:
        xt, xs: `(b / r, n, h, g)` target and source terms; each grid serves r consecutive graphs.
        att, e, bias: `(b, h, g)` or broadcastable to it.
        w: `(b, n, m)` edge weights, target-major (w[b, i, j] is the weight of edge j → i).
        edges: bool `(b, n, m)`, target-major; every row needs at least one edge (the self-loop).
    Returns:
        `(b, n, h, g)`.
    """
    b, h, g = w.shape[0], xt.shape[2], xt.shape[3]
    full = lambda t: t.expand(b, h, g).contiguous()  # noqa: E731
    return kernels.loaded().attend(xt.contiguous(), xs.contiguous(), full(att), w.contiguous(), full(e),
                                   edges.contiguous(), full(bias), float(slope))


def _kernel_args(X, Y, a, w, e):
    b, _, h, g = X.shape
    empty = X.new_empty(0)
    return (X.contiguous(), Y.contiguous(), a.expand(b, h, g).contiguous(),
            empty if w is None else w.contiguous(), empty if e is None else e.expand(b, h, g).contiguous())


class _PairwiseScore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, X, Y, a, w, e, slope: float, mask=None):  # noqa: D102 (see pairwise_score)
        ctx.save_for_backward(X, Y, a, w, e)
        ctx.slope = slope
        # The kernel lays scores out (b, h, n, m), returned as a (b, n, m, h) view: a softmax over m reads
        # contiguous rows.
        kernel = kernels.loaded()
        if kernel is not None and X.device.type == "cpu":  # skips the pairs off the mask (the caller fills them)
            skip = X.new_empty(0, dtype=torch.bool) if mask is None else mask.expand(X.shape[0], -1, -1).contiguous()
            return kernel.forward(*_kernel_args(X, Y, a, w, e), skip, slope).permute(0, 2, 3, 1)
        b, n, h, g = X.shape
        m = Y.shape[1]
        out = X.new_empty(b, n, m, h)
        step = _rows_per_block((b, n, m, h, g))
        for s in range(0, n, step):
            t = min(n, s + step)
            act = F.leaky_relu_(_pre_activation(X, Y, w, e, s, t), slope)
            out[:, s:t] = torch.einsum("brmhg,bhg->brmh", act, a.expand(b, h, g))
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        X, Y, a, w, e = ctx.saved_tensors
        slope = ctx.slope
        kernel = kernels.loaded()
        if kernel is not None and X.device.type == "cpu":
            grad = grad.permute(0, 3, 1, 2).contiguous()  # (b, h, n, m), the kernel's layout
            dX, dY, da, dw, de = kernel.backward(grad, *_kernel_args(X, Y, a, w, e), slope)
            da = da.sum(0, keepdim=True) if a.shape[0] == 1 else da
            if w is None:
                dw = de = None
            elif e.shape[0] == 1:
                de = de.sum(0, keepdim=True)
            return dX, dY, da, dw, de, None, None
        grad = grad.contiguous()  # (b, n, m, h): the blocks below slice rows of it
        b, n, h, g = X.shape
        m = Y.shape[1]
        ab = a.expand(b, h, g)
        dX = torch.empty_like(X) if ctx.needs_input_grad[0] else None
        dY = torch.zeros_like(Y) if ctx.needs_input_grad[1] else None
        da = torch.zeros(b, h, g, dtype=X.dtype, device=X.device) if ctx.needs_input_grad[2] else None
        dw = torch.empty(b, n, m, dtype=X.dtype, device=X.device) if w is not None and ctx.needs_input_grad[3] \
            else None
        de = torch.zeros(b, h, g, dtype=X.dtype, device=X.device) \
            if e is not None and ctx.needs_input_grad[4] else None
        step = _rows_per_block((b, n, m, h, g))
        for s in range(0, n, step):
            t = min(n, s + step)
            pre = _pre_activation(X, Y, w, e, s, t)  # (b, r, m, h, g)
            gb = grad[:, s:t]  # (b, r, m, h)
            if da is not None:
                da += torch.einsum("brmhg,brmh->bhg", F.leaky_relu(pre, slope), gb)
            # d out / d pre = a · leaky'(pre): slope where pre <= 0, else 1
            gpre = (pre > 0).to(pre.dtype).mul_(1.0 - slope).add_(slope)
            gpre.mul_(gb[..., None]).mul_(ab[:, None, None])
            if dX is not None:
                dX[:, s:t] = gpre.sum(2)
            if dY is not None:
                dY += gpre.sum(1)
            if dw is not None:
                dw[:, s:t] = torch.einsum("brmhg,bhg->brm", gpre, e.expand(b, h, g))
            if de is not None:
                de += torch.einsum("brmhg,brm->bhg", gpre, w[:, s:t])
        if da is not None and a.shape[0] == 1:
            da = da.sum(0, keepdim=True)
        if de is not None and e.shape[0] == 1:
            de = de.sum(0, keepdim=True)
        return dX, dY, da, dw, de, None, None


def pairwise_score(X: torch.Tensor, Y: torch.Tensor, a: torch.Tensor, w: torch.Tensor | None = None,
                   e: torch.Tensor | None = None, slope: float = 0.01, mask: torch.Tensor | None = None,
                   fill: float = float("-inf")) -> torch.Tensor:
    """Σ_g a·leaky_relu(X_i + Y_j + w_ij·e) for every pair (i, j), in cache-sized blocks.

    Args:
        X: `(b, n, h, g)` row (target) terms, biases folded in.
        Y: `(b, m, h, g)` column (source) terms.
        a: `(b, h, g)` or `(1, h, g)` output weights per head.
        w: optional `(b, n, m)` scalar pair feature (an edge weight), scaled by ``e``.
        e: `(b, h, g)`, `(1, h, g)` or `(h, g)` projection of the pair feature; required with ``w``.
        slope: negative slope of the leaky ReLU.
        mask: optional bool `(b, n, m)`: pairs marked False are set to ``fill`` (attention logits off the graph
            get -inf) and the fused kernel does not compute them; their gradient is zero.

    Returns:
        `(b, n, m, h)` scores. Exactly ``pairwise_score_reference`` (then filled) up to float rounding.
    """
    if (w is None) != (e is None):
        raise ValueError("pairwise_score needs both w and e, or neither")
    if e is not None and e.ndim == 2:
        e = e[None]
    out = _PairwiseScore.apply(X, Y, a, w, e, float(slope), mask)
    return out if mask is None else out.masked_fill(~mask[..., None], fill)


def pairwise_score_reference(X: torch.Tensor, Y: torch.Tensor, a: torch.Tensor, w: torch.Tensor | None = None,
                             e: torch.Tensor | None = None, slope: float = 0.01) -> torch.Tensor:
    """The naive materialised computation of ``pairwise_score``; for tests."""
    pre = X[:, :, None] + Y[:, None]  # (b, n, m, h, g)
    if w is not None:
        pre = pre + w[..., None, None] * (e if e.ndim == 3 else e[None])[:, None, None]
    return torch.einsum("bnmhg,bhg->bnmh", F.leaky_relu(pre, slope), a.expand(X.shape[0], *a.shape[1:]))
