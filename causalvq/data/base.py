"""FactorDataset: the one interface every factor-labelled image dataset implements.

A dataset is a grid of generative factors (F factors, factor ``f`` taking ``factor_sizes[f]`` integer values) and a
way to turn factor vectors into images. Procedural datasets render any point of the grid; file-backed ones look the
point up in the stored images (and may hold an incomplete grid).

Axis legend: ``n`` images, ``f`` factors (F), ``H W C`` image height, width, channels.
Images are always ``uint8 (n, H, W, C)`` (greyscale has ``C = 1``); factors are ``int64 (n, F)`` indices.
The flat index of a factor vector is its position in the full grid in C order (last factor fastest).
"""

from __future__ import annotations

import math

import numpy as np


class FactorDataset:
    """Common interface: factor grid, rendering, sampling and flat indexing.

    Subclasses set ``name``, ``factor_names``, ``factor_sizes``, ``image_shape`` and implement ``_render``; a
    dataset holding an incomplete grid also overrides ``contains`` and ``sample_factors``.
    """

    name: str
    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]
    image_shape: tuple[int, int, int]  # (H, W, C)

    # --- sizes ---
    @property
    def num_factors(self) -> int:
        """F, number of factors."""
        return len(self.factor_sizes)

    @property
    def complete(self) -> bool:
        """Whether every point of the factor grid has an image (True for procedural datasets)."""
        return True

    def __len__(self) -> int:
        """Number of points in the full factor grid."""
        return math.prod(self.factor_sizes)

    def __repr__(self) -> str:
        factors = ", ".join(f"{n}={s}" for n, s in zip(self.factor_names, self.factor_sizes))
        return f"{type(self).__name__}(name={self.name!r}, {factors}, image_shape={self.image_shape})"

    # --- checks and indexing ---
    def check_factors(self, factors: np.ndarray) -> np.ndarray:
        """Return ``factors`` as ``int64 (n, F)``; raise ``ValueError`` naming the problem otherwise."""
        arr = np.asarray(factors)
        if arr.ndim != 2 or arr.shape[1] != self.num_factors:
            raise ValueError(f"{self.name}: factors must be an int array of shape (n, {self.num_factors}) "
                             f"({', '.join(self.factor_names)}), got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
                raise ValueError(f"{self.name}: factors must be integer indices, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        sizes = np.asarray(self.factor_sizes)
        bad = (arr < 0) | (arr >= sizes)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"{self.name}: factor {self.factor_names[col]!r} has value {arr[row, col]} at row "
                             f"{row}, outside 0..{sizes[col] - 1}")
        return arr

    def index_to_factors(self, index: np.ndarray | int) -> np.ndarray:
        """Flat grid indices ``(n,)`` (or one int) -> factor indices ``int64 (n, F)`` (or ``(F,)``)."""
        idx = np.asarray(index, dtype=np.int64)
        if np.any(idx < 0) or np.any(idx >= len(self)):
            raise IndexError(f"{self.name}: flat index out of range 0..{len(self) - 1}")
        out = np.stack(np.unravel_index(idx, self.factor_sizes), axis=-1)  # (..., F)
        return out.astype(np.int64)

    def factors_to_index(self, factors: np.ndarray) -> np.ndarray:
        """Factor indices ``(n, F)`` (or ``(F,)``) -> flat grid indices ``int64 (n,)`` (or a scalar)."""
        arr = np.asarray(factors)
        single = arr.ndim == 1
        arr = self.check_factors(arr[None] if single else arr)
        flat = np.ravel_multi_index(tuple(arr.T), self.factor_sizes).astype(np.int64)  # (n,)
        return flat[0] if single else flat

    def contains(self, factors: np.ndarray) -> np.ndarray:
        """Whether each factor vector ``(n, F)`` has an image: ``bool (n,)`` (all True on a complete grid)."""
        arr = self.check_factors(factors)
        return np.ones(len(arr), dtype=bool)

    # --- sampling and rendering ---
    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` factor vectors drawn uniformly from the points that have an image: ``int64 (n, F)``."""
        cols = [rng.integers(0, s, size=n) for s in self.factor_sizes]
        return np.stack(cols, axis=1).astype(np.int64).reshape(n, self.num_factors)

    def render(self, factors: np.ndarray) -> np.ndarray:
        """Images of the factor vectors ``int (n, F)``: ``uint8 (n, H, W, C)``."""
        arr = self.check_factors(factors)
        if len(arr) == 0:
            return np.zeros((0, *self.image_shape), dtype=np.uint8)
        return self._render(arr)

    def _render(self, factors: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int) -> np.ndarray:
        """Image at flat grid index ``index``: ``uint8 (H, W, C)``."""
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"{self.name}: index must be an int flat grid index, got {type(index).__name__}")
        i = int(index) + (len(self) if index < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for a grid of {len(self)}")
        return self.render(self.index_to_factors(np.array([i])))[0]
