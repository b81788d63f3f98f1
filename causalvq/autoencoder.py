"""Convolutional encoder and decoder of the MCQ-VAE (shared/paper.md §4.1).

Axes: ``b`` batch, ``c`` image channels, ``S`` image side, ``D`` embedding channels, ``h w`` latent grid.

Encoder: per width, Conv 4×4 stride 2 + LeakyReLU; Conv 3×3 + LeakyReLU; residual layers; LeakyReLU;
Conv 1×1 to D + LeakyReLU (the quantized features are leaky-rectified, as in the official model). With
``patch`` (B30 in docs/fidelity.md) the strided convolutions are 2×2 (non-overlapping) and the grid-level ones
1×1, so each grid cell's features read its own 2^E × 2^E patch of pixels and nothing else.
Decoder: Conv 3×3 + LeakyReLU; residual layers; LeakyReLU; transposed convs back up; Tanh.
Images enter in [0, 1] and are mapped to [−1, 1] to match the Tanh output (B9 in docs/fidelity.md).
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualLayer(nn.Module):
    """x + Conv1×1(ReLU(Conv k×k(x))), without biases; k = 3, or 1 for a layer that reads each cell alone."""

    def __init__(self, channels: int, kernel: int = 3) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class Encoder(nn.Module):
    """`(b, c, S, S)` images in [0, 1] → `(b, D, S/2^E, S/2^E)` features; with ``patch`` each cell's features are
    a function of its own patch only (a code changes only where its pixels change)."""

    def __init__(self, in_channels: int, hidden_dims: tuple[int, ...], num_residual: int, embedding_dim: int,
                 patch: bool = False) -> None:
        super().__init__()
        stride_k, pad, grid_k = (2, 0, 1) if patch else (4, 1, 3)
        layers: list[nn.Module] = []
        width = in_channels
        for h in hidden_dims:
            layers += [nn.Conv2d(width, h, stride_k, stride=2, padding=pad), nn.LeakyReLU()]
            width = h
        layers += [nn.Conv2d(width, width, grid_k, padding=grid_k // 2), nn.LeakyReLU()]
        layers += [ResidualLayer(width, grid_k) for _ in range(num_residual)]
        layers += [nn.LeakyReLU(), nn.Conv2d(width, embedding_dim, 1), nn.LeakyReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


class Decoder(nn.Module):
    """`(b, D, h, w)` quantized features → `(b, c, S, S)` images in [0, 1]."""

    def __init__(self, out_channels: int, hidden_dims: tuple[int, ...], num_residual: int, embedding_dim: int) -> None:
        super().__init__()
        widths = list(reversed(hidden_dims))  # a copy: the caller's tuple is never reversed in place
        layers: list[nn.Module] = [nn.Conv2d(embedding_dim, widths[0], 3, padding=1), nn.LeakyReLU()]
        layers += [ResidualLayer(widths[0]) for _ in range(num_residual)]
        layers.append(nn.LeakyReLU())
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, stride=2, padding=1), nn.LeakyReLU()]
        layers += [nn.ConvTranspose2d(widths[-1], out_channels, 4, stride=2, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return (self.net(q) + 1) / 2
