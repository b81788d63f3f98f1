"""Losses of CT-VAE as pure functions (shared/paper.md §7).

Axes: ``b`` batch, ``n`` nodes, ``v`` codebook size, ``a`` actions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_P_MIN = 1e-4  # the official clamp of predicted probabilities


def node_nll(probs: torch.Tensor, target: torch.Tensor, renormalise: bool = False) -> torch.Tensor:
    """−log clamp(ŷ_i[c_i], 1e-4) per node: probs `(b, n, v)`, target long `(b, n)` → `(b, n)`.

    ``renormalise`` gives the official ``F.cross_entropy(log(clamp(ŷ, 1e-4)), c)``, whose log-softmax renormalises
    after the clamp: −log clamp(ŷ_c) + log Σ_k clamp(ŷ_k), up to 6.3e-3 nats per node above the default at N = 64.
    """
    nll = -probs.gather(-1, target[..., None])[..., 0].clamp_min(_P_MIN).log()
    if renormalise:
        nll = nll + probs.clamp_min(_P_MIN).sum(-1).log()
    return nll


def code_cross_entropy(probs: torch.Tensor, target: torch.Tensor, renormalise: bool = False) -> torch.Tensor:
    """CE(ŷ, c): mean over the b·n nodes of ``node_nll``."""
    return node_nll(probs, target, renormalise).mean()


def change_weighted_cross_entropy(probs: torch.Tensor, target: torch.Tensor, source: torch.Tensor,
                                  weight: float, renormalise: bool = False) -> torch.Tensor:
    """CE(ŷ, c^y) with the nodes whose code changes (c^y_i ≠ c^x_i) weighted 1 + ``weight``, the others 1:
    Σ_i w_i·NLL_i / Σ_i w_i over the batch (B20). ``source`` is c^x, long `(b, n)`; ``weight = 0`` is
    ``code_cross_entropy``."""
    w = 1.0 + weight * (target != source).to(probs.dtype)  # (b, n)
    return (w * node_nll(probs, target, renormalise)).sum() / w.sum()


def mask_supervision(mask_probs: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE(p_i, [c^x_i ≠ c^y_i]) averaged over the b·n nodes (B21): the intervention probability of each node
    against whether the step changes its code. ``mask_probs`` `(b, n)`; ``source`` c^x and ``target`` c^y, long
    `(b, n)`. The mask is still predicted from x and the action alone; y only supervises it in training."""
    changed = (source != target).to(mask_probs.dtype)  # (b, n)
    return F.binary_cross_entropy(mask_probs.clamp(_P_MIN, 1 - _P_MIN), changed)


def expected_in_degree(edge_probs: torch.Tensor) -> torch.Tensor:
    """Expected in-edges per node of the graph drawn from C `(b, n, n)`, self-loops excluded, averaged over the
    batch (B23): every edge costs the same, so an edge stays only where it helps the prediction more than it costs
    (the Frobenius norm ‖Gr‖_F instead prices an edge by 1 / ‖Gr‖_F, little in a dense graph, much in a sparse one)."""
    off = edge_probs.sum((1, 2)) - edge_probs.diagonal(dim1=1, dim2=2).sum(-1)  # (b,)
    return (off / edge_probs.shape[-1]).mean()


def in_degree_above(edge_probs: torch.Tensor, budget: float) -> torch.Tensor:
    """Expected in-edges per node above a free ``budget``, mean_i max(0, Σ_{j≠i} C_ji − budget), averaged over the
    batch (B26). Below the budget an edge costs nothing, so a node keeps the few neighbours it reads even when each
    one alone helps the prediction little; above it every edge costs the same, as in B23."""
    n = edge_probs.shape[-1]
    incoming = edge_probs.sum(1) - edge_probs.diagonal(dim1=1, dim2=2)  # (b, n): column sums, self-loops excluded
    return (incoming - budget).clamp_min(0).sum(-1).div(n).mean()


def kl_to_noise(edge_probs: torch.Tensor) -> torch.Tensor:
    """KL(softmax(ξ) ‖ softmax(vec C)), ξ ~ U(0, 1) drawn afresh, averaged over the batch (the official β_ct term)."""
    logq = edge_probs.flatten(1).log_softmax(-1)  # (b, n·n)
    target = torch.rand_like(logq).softmax(-1)
    return F.kl_div(logq, target, reduction="batchmean")


def graph_size(graph: torch.Tensor) -> torch.Tensor:
    """‖Gr‖_F per sample, averaged over the batch."""
    return graph.flatten(1).norm(dim=-1).mean()


def empty_row_penalty(edge_probs: torch.Tensor) -> torch.Tensor:
    """‖v‖₂ with v_i = Π_j (1 − C_ij), the probability that row i has no edge; averaged over the batch."""
    v = torch.prod(1 - edge_probs, dim=-1)  # (b, n)
    return v.norm(dim=-1).mean()


def identity_graph_mse(graph: torch.Tensor) -> torch.Tensor:
    """MSE(Gr, I): pushes the no-action graph towards the identity."""
    eye = torch.eye(graph.shape[-1], device=graph.device)
    return F.mse_loss(graph, eye.expand_as(graph))


def retrieval_distance(probs: torch.Tensor, target: torch.Tensor, reduce: str,
                       renormalise: bool = False) -> torch.Tensor:
    """Distance of each candidate action: probs `(b, a, n, v)`, target `(b, n)` → `(b, a)`.

    ``reduce="sum"`` adds the node NLLs (a log-likelihood of the whole code grid); ``"mean"`` is the official
    mean over nodes, which divides every gap between actions by L (B6b in docs/fidelity.md).
    """
    nll = node_nll(probs, target[:, None].expand(-1, probs.shape[1], -1), renormalise)  # (b, a, n)
    return nll.sum(-1) if reduce == "sum" else nll.mean(-1)


def retrieval_nll(distance: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """−log p(a* | x, y) with p = softmax(−distance), averaged over the batch."""
    return F.cross_entropy(-distance, action)


def reconstruction_mse(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel MSE on the [0, 1] scale."""
    return F.mse_loss(image, target)
