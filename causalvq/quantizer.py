"""Multi-codebook vector quantizer (MCQ): K codebooks, each quantizing its own block of d = D / K channels.

Axes: ``b`` batch, ``k`` codebooks, ``v`` codes per codebook (N), ``d`` channels per codebook, ``h w`` grid.

Index search (``indices``) and codebook lookup (``lookup``) are separate steps, so the causal transition can
edit the indices in between. The channel split is disjoint: codebook k reads channels k·d .. (k+1)·d − 1. The
official implementation starts block k at channel k (overlapping windows, B1 in docs/fidelity.md); set
``overlapping=True`` for that behaviour.

``restart_codes`` moves dead codes onto encoder outputs (B27 in docs/fidelity.md, a training-time option that the
stage-1 trainer calls; the paper's quantizer has no restarts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass(frozen=True)
class Quantized:
    """Result of quantizing encoder features."""

    quantized: torch.Tensor  # (b, D, h, w) straight-through codes: value of the codebook, gradient to z
    indices: torch.Tensor  # (b, k, h, w) long code indices
    loss: torch.Tensor  # scalar VQ loss Σ_k β·MSE(sg(q), z) + MSE(q, sg(z))
    perplexity: torch.Tensor  # (k,) exp(entropy) of each codebook's code usage in the batch
    usage: torch.Tensor  # (k,) fraction of each codebook's codes used in the batch


class MultiCodebookQuantizer(nn.Module):
    """K independent codebooks of N codes of dimension d, initialised uniformly in ±1/N (no EMA)."""

    def __init__(self, num_codebooks: int, codebook_size: int, code_dim: int, beta: float,
                 overlapping: bool = False) -> None:
        super().__init__()
        self.num_codebooks, self.codebook_size, self.code_dim = num_codebooks, codebook_size, code_dim
        self.beta = beta
        self.overlapping = overlapping
        self.codebooks = nn.Parameter(
            torch.empty(num_codebooks, codebook_size, code_dim).uniform_(-1 / codebook_size, 1 / codebook_size))

    def _blocks(self, z: torch.Tensor) -> torch.Tensor:
        """(b, D, h, w) → (b, k, h, w, d): the channel block each codebook quantizes."""
        if self.overlapping:  # official: block k = channels k .. k + d - 1
            return torch.stack([z[:, k:k + self.code_dim] for k in range(self.num_codebooks)], 1).movedim(2, -1)
        return rearrange(z, "b (k d) h w -> b k h w d", k=self.num_codebooks)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code of each block: `(b, D, h, w)` → long `(b, k, h, w)`."""
        zb = self._blocks(z)  # (b, k, h, w, d)
        # ‖z − e‖² = ‖z‖² − 2 z·e + ‖e‖²; ‖z‖² is constant per position and dropped from the argmin
        dots = torch.einsum("bkhwd,kvd->bkhwv", zb, self.codebooks)
        dist = self.codebooks.pow(2).sum(-1)[None, :, None, None] - 2 * dots  # (b, k, h, w, v)
        return dist.argmin(-1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of the indices: long `(b, k, h, w)` → `(b, D, h, w)` (D = K·d)."""
        if indices.dtype != torch.long:
            raise TypeError(f"code indices must be a long tensor, got {indices.dtype}")
        if indices.ndim != 4 or indices.shape[1] != self.num_codebooks:
            raise ValueError(f"code indices must have shape (b, {self.num_codebooks}, h, w), "
                             f"got {tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(f"code indices must lie in [0, {self.codebook_size}), "
                             f"got [{int(indices.min())}, {int(indices.max())}]")
        # one table of K·N rows: codebook k's code i is row k·N + i. F.embedding's backward sums the gradient in a
        # fixed order; advanced indexing's (index_put_ with accumulate) does not on several CPU threads, which made
        # two runs of one recipe drift apart from the first steps
        offsets = torch.arange(self.num_codebooks, device=indices.device)[None, :, None, None] * self.codebook_size
        q = F.embedding(indices + offsets, self.codebooks.flatten(0, 1))  # (b, k, h, w, d)
        return rearrange(q, "b k h w d -> b (k d) h w")

    def forward(self, z: torch.Tensor, indices: torch.Tensor | None = None) -> Quantized:
        """Quantize ``z`` `(b, D, h, w)`, optionally with given indices (the transition's chosen codes)."""
        if indices is None:
            indices = self.indices(z.detach())
        q = self.lookup(indices)
        zc = self._embedded_channels(z)
        qc = q
        loss = self.beta * F.mse_loss(zc, qc.detach()) + F.mse_loss(qc, zc.detach())
        st = zc + (qc - zc).detach()  # straight-through: forward value q, gradient identity to z
        counts = F.one_hot(rearrange(indices, "b k h w -> k (b h w)"), self.codebook_size).float().mean(1)  # (k, v)
        entropy = -(counts * counts.clamp_min(1e-10).log()).sum(-1)
        return Quantized(quantized=st, indices=indices, loss=loss, perplexity=entropy.exp(),
                         usage=(counts > 0).float().mean(-1))

    def code_counts(self, indices: torch.Tensor) -> torch.Tensor:
        """How often each code is chosen: long `(b, k, h, w)` → float `(k, v)`."""
        flat = rearrange(indices, "b k h w -> k (b h w)")
        counts = torch.zeros(self.num_codebooks, self.codebook_size, device=indices.device)
        return counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))

    @torch.no_grad()
    def restart_codes(self, z: torch.Tensor, dead: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """Move each dead code onto an encoder output of ``z`` (B27: dead-code restart, k-means++ style).

        A dead code gets no gradient from the VQ loss and stays dead; the stage-1 trainer calls this with the codes
        a batch did not use. Code (k, j) is replaced by the block of the position whose inverse-CDF value under the
        squared distance to its nearest code is ``uniform[k, j]``: positions far from every code, the ones the
        codebook represents worst, are the likeliest (D² sampling, as k-means++ seeding). All randomness comes in
        through ``uniform``, so the same arguments give the same codebook on every process.

        Args:
            z: `(b, D, h, w)` encoder features.
            dead: bool `(k, v)`: the codes to move.
            uniform: `(k, v)` numbers in [0, 1), one per code.

        Returns:
            long `(k,)`: how many codes each codebook moved.
        """
        zb = rearrange(self._blocks(z), "b k h w d -> k (b h w) d")
        dist = torch.cdist(zb, self.codebooks).pow(2).amin(-1)  # (k, n): squared distance to the nearest code
        dist = torch.where(dist.sum(-1, keepdim=True) > 0, dist, torch.ones_like(dist))  # all on codes: uniform
        cdf = dist.double().cumsum(-1)  # (k, n)
        target = uniform.to(cdf) * cdf[:, -1:]  # (k, v)
        pos = torch.searchsorted(cdf, target, right=True).clamp_max(zb.shape[1] - 1)  # (k, v)
        new = torch.gather(zb, 1, pos[..., None].expand(-1, -1, self.code_dim))  # (k, v, d)
        self.codebooks.copy_(torch.where(dead[..., None], new.to(self.codebooks), self.codebooks))
        return dead.sum(-1)

    def _embedded_channels(self, z: torch.Tensor) -> torch.Tensor:
        """The channels the codebooks see, laid out as ``lookup`` returns them: `(b, K·d, h, w)`."""
        return rearrange(self._blocks(z), "b k h w d -> b (k d) h w")
