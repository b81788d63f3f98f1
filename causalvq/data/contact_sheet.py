"""Contact sheet of factor sweeps: one row per factor, that factor swept over its values, the others fixed.

``python -m causalvq.data.contact_sheet [--dataset shapes3d] [--out assets/shapes3d_sweeps.png] [--zoom 2]``

Axis legend: ``n`` images, ``H W C`` image height, width, channels.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from causalvq.data import load_dataset
from causalvq.data.base import FactorDataset
from causalvq.imaging import save_png

# Default fixed factors: a red floor, a green wall, a blue object, mid scale, a cube, orientation 0.
_BASE = {"shapes3d": (0, 3, 6, 4, 0, 7), "dsprites": (2, 5, 0, 16, 16)}


def factor_sweeps(ds: FactorDataset, base: Sequence[int] | None = None, max_columns: int = 15,
                  pad: int = 2) -> np.ndarray:
    """Sheet ``uint8 (F·(H+pad)+pad, columns·(W+pad)+pad, C)``: row ``f`` sweeps factor ``f`` (evenly spaced
    values when it has more than ``max_columns``) with the others at ``base``."""
    base_arr = np.asarray(base if base is not None else _BASE.get(ds.name, [s // 2 for s in ds.factor_sizes]))
    H, W, C = ds.image_shape
    cols = min(max_columns, max(ds.factor_sizes))
    sheet = np.full((ds.num_factors * (H + pad) + pad, cols * (W + pad) + pad, C), 255, dtype=np.uint8)
    for f, size in enumerate(ds.factor_sizes):
        values = np.unique(np.round(np.linspace(0, size - 1, min(size, cols))).astype(np.int64))
        factors = np.repeat(base_arr[None], len(values), axis=0)  # (n, F)
        factors[:, f] = values
        for i, image in enumerate(ds.render(factors)):
            y, x = pad + f * (H + pad), pad + i * (W + pad)
            sheet[y:y + H, x:x + W] = image
    return sheet


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="shapes3d", help="dataset name (shapes3d, dsprites)")
    parser.add_argument("--path", default=None, help="real data file (default: procedural)")
    parser.add_argument("--out", default=None, help="output PNG (default: assets/<dataset>_sweeps.png)")
    parser.add_argument("--zoom", type=int, default=2, help="nearest-neighbour magnification")
    args = parser.parse_args(argv)
    ds = load_dataset(args.dataset, path=args.path)
    sheet = factor_sweeps(ds)
    sheet = sheet.repeat(args.zoom, axis=0).repeat(args.zoom, axis=1)  # (zoom·H', zoom·W', C)
    out = save_png(sheet, args.out or f"assets/{args.dataset}_sweeps.png")
    print(f"wrote {out} ({sheet.shape[1]}x{sheet.shape[0]})")
    return out


if __name__ == "__main__":
    main()
