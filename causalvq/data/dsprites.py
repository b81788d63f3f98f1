"""Procedural dSprites: white sprites on black on the exact factor grid of DeepMind's dSprites, 64×64 greyscale.

Factors: shape 3 (square, ellipse, heart), scale 6 (0.5..1), orientation 40 (0..2π, endpoint excluded),
pos_x 32 and pos_y 32 (0..1, left/top to right/bottom). Sprite centres lie on a lattice of 1.5-pixel steps
from 8.75 to 55.25 px, so a position is an integer pixel shift plus one of two sub-pixel phases.

Rendering: each (shape, scale, orientation, x phase, y phase) sprite is rasterised once, lazily, into an antialiased
``patch × patch`` coverage patch (``supersample``² samples per pixel, float64 implicit functions, rounded to
uint8); an image is that patch pasted at an integer offset. Nothing is random: same factors, same bytes.

Axis legend: ``n`` images, ``H W`` 64 × 64, ``C = 1`` channel; patches are ``(P, P)``.
"""

from __future__ import annotations

import numpy as np

from causalvq.data.base import FactorDataset

FACTOR_NAMES: tuple[str, ...] = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES: tuple[int, ...] = (3, 6, 40, 32, 32)
SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "heart")
FACTOR_VALUES: tuple[np.ndarray, ...] = (
    np.arange(1, 4, dtype=np.float64),  # dSprites' latents_values use 1, 2, 3 for the shapes
    np.linspace(0.5, 1.0, 6),
    np.linspace(0.0, 2 * np.pi, 40, endpoint=False),
    np.linspace(0.0, 1.0, 32),
    np.linspace(0.0, 1.0, 32),
)

_SIZE = 64
_FIRST, _STEP = 8.75, 1.5  # sprite centre (pixels) at position index 0, and the step between indices
_RADIUS = 8.5  # pixels: half-extent of a scale-1 sprite (a rotated sprite stays inside the frame)
_PATCH = 22  # patch side, > 2·1.03·_RADIUS + 2


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether sprite-local points (u right, v down, unit = _RADIUS·scale) lie inside ``shape``."""
    if shape == 0:  # square
        return (np.abs(u) <= 0.72) & (np.abs(v) <= 0.72)
    if shape == 1:  # ellipse, long axis along u
        return (u / 1.0) ** 2 + (v / 0.5) ** 2 <= 1.0
    # heart: (x² + y² − 1)³ − x² y³ ≤ 0 with y up, fitted into [-1, 1]², point down
    x, y = u * 1.12, -v * 1.12 + 0.1
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0


def sprite_patch(shape: int, scale_idx: int, orientation_idx: int, phase_x: float, phase_y: float,
                 supersample: int = 4) -> np.ndarray:
    """Antialiased coverage of one sprite centred at ``(P/2 + phase_x, P/2 + phase_y)``: ``uint8 (P, P)``."""
    m = _PATCH * supersample
    grid = (np.arange(m) + 0.5) / supersample  # sample positions in patch pixels
    px, py = np.meshgrid(grid - (_PATCH / 2 + phase_x), grid - (_PATCH / 2 + phase_y))  # (m, m)
    theta = FACTOR_VALUES[2][orientation_idx]
    radius = _RADIUS * FACTOR_VALUES[1][scale_idx]
    c, s = np.cos(theta), np.sin(theta)
    u = (c * px + s * py) / radius  # rotate the sample grid by -theta: the sprite turns by +theta
    v = (-s * px + c * py) / radius
    cover = _inside(shape, u, v).reshape(_PATCH, supersample, _PATCH, supersample).mean(axis=(1, 3))
    return np.round(cover * 255.0).astype(np.uint8)


class DSprites(FactorDataset):
    """Procedural dSprites: shape 3, scale 6, orientation 40, pos_x 32, pos_y 32; 64×64×1 uint8 (0 or 255 inside).

    Args:
        supersample: samples per pixel side for antialiasing (1 gives hard 0/255 edges like the real file).
    """

    name = "dsprites"
    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES
    factor_values = FACTOR_VALUES
    shape_names = SHAPE_NAMES
    image_shape = (_SIZE, _SIZE, 1)

    def __init__(self, supersample: int = 4) -> None:
        if supersample < 1:
            raise ValueError(f"dsprites: supersample must be >= 1, got {supersample}")
        self.supersample = supersample
        n_sprites = FACTOR_SIZES[0] * FACTOR_SIZES[1] * FACTOR_SIZES[2] * 4
        self._patches = np.zeros((n_sprites, _PATCH, _PATCH), dtype=np.uint8)  # (sprite·phase, P, P)
        self._ready = np.zeros(n_sprites, dtype=bool)

    @staticmethod
    def centre_pixels(pos_idx: np.ndarray) -> np.ndarray:
        """Sprite centre in pixels (0 = left/top image edge) of position indices."""
        return _FIRST + _STEP * np.asarray(pos_idx, dtype=np.float64)

    def _render(self, factors: np.ndarray) -> np.ndarray:
        n = len(factors)
        cx, cy = self.centre_pixels(factors[:, 3]), self.centre_pixels(factors[:, 4])
        ix, iy = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
        phx, phy = factors[:, 3] % 2, factors[:, 4] % 2  # fractional part alternates 0.75, 0.25
        sprite = (factors[:, 0] * FACTOR_SIZES[1] + factors[:, 1]) * FACTOR_SIZES[2] + factors[:, 2]
        key = sprite * 4 + phx * 2 + phy  # (n,)
        for k in np.unique(key[~self._ready[key]]):
            spr, ph = divmod(int(k), 4)
            rest, ori = divmod(spr, FACTOR_SIZES[2])
            shp, sc = divmod(rest, FACTOR_SIZES[1])
            frac = (_FIRST % 1.0, (_FIRST + _STEP) % 1.0)
            self._patches[k] = sprite_patch(shp, sc, ori, frac[ph // 2], frac[ph % 2], self.supersample)
            self._ready[k] = True
        pad = _PATCH
        canvas = np.zeros((n, _SIZE + 2 * pad, _SIZE + 2 * pad), dtype=np.uint8)  # (n, H + 2P, W + 2P)
        off = np.arange(_PATCH)
        rows = (iy - _PATCH // 2 + pad)[:, None, None] + off[None, :, None]  # (n, P, 1)
        cols = (ix - _PATCH // 2 + pad)[:, None, None] + off[None, None, :]  # (n, 1, P)
        canvas[np.arange(n)[:, None, None], rows, cols] = self._patches[key]
        return canvas[:, pad:pad + _SIZE, pad:pad + _SIZE, None].copy()  # (n, H, W, 1)
