"""Cars3D from the original release's per-car ``.mat`` renders, with the FactorDataset interface.

The release of "Deep Visual Analogy-Making" (Reed et al., 2015; the ``cars`` folder of its data archive) holds one
MATLAB file per car model, ``car_###_mesh.mat``, whose array ``im`` is uint8 ``(128, 128, 3, 24, 4)``:
``(H, W, C, azimuth, elevation)``. The user gives the folder; nothing is downloaded. Reading needs scipy
(``pip install 'causalvq[cars3d]'``).

Factors: elevation 4, azimuth 24, object 183 (the object id is the file's position in sorted file-name order; the
ids carry no order, so an object "step" is a move to the neighbouring id, paper §9.2). The release is the complete
grid of 17,568 images; a folder with fewer files is an incomplete grid (``contains`` says which objects exist).
Images: ``uint8 (n, 128, 128, 3)`` (863 MB for all), or ``(n, S, S, 3)`` with ``image_size=S``, resized once while
loading (216 MB at 64 px).

Axis legend: ``n`` images, ``H W`` image side, ``C = 3`` channels, ``az`` azimuth, ``el`` elevation.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from einops import rearrange

from causalvq.data.files import ArrayRows, StoredFactorDataset
from causalvq.imaging import resize_images, to_tensor, to_uint8

FACTOR_NAMES: tuple[str, ...] = ("elevation", "azimuth", "object")
FACTOR_SIZES: tuple[int, ...] = (4, 24, 183)
_VIEWS = FACTOR_SIZES[0] * FACTOR_SIZES[1]  # 96 renders per car


def _loadmat():
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError as err:
        raise ImportError("reading Cars3D .mat files needs scipy: pip install 'causalvq[cars3d]' "
                          "(or pip install scipy)") from err
    return loadmat, MatReadError


def read_car(path: Path) -> np.ndarray:
    """The renders of one car file: ``uint8 (96, H, W, 3)``, row ``elevation * 24 + azimuth``.

    Raises:
        ValueError: not a readable MATLAB (v5) file, no ``im`` array, or not uint8 ``(H, W, 3, 24, 4)``.
    """
    loadmat, mat_read_error = _loadmat()
    try:
        content = loadmat(path, variable_names=["im"])
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5) files
        raise ValueError(f"{path}: not a MATLAB v5 .mat file ({err})") from err
    except (ValueError, TypeError, OSError, EOFError, IndexError, zlib.error, mat_read_error) as err:
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({err})") from err
    if "im" not in content:
        raise ValueError(f"{path}: no array 'im' (a Cars3D render file holds 'im', uint8 (128, 128, 3, 24, 4))")
    im = content["im"]
    if im.dtype != np.uint8 or im.ndim != 5 or im.shape[2:] != (3, FACTOR_SIZES[1], FACTOR_SIZES[0]) or 0 in im.shape:
        raise ValueError(f"{path}: 'im' must be uint8 (H, W, 3, 24, 4) (azimuth 24, elevation 4), got {im.dtype} "
                         f"{im.shape}")
    return rearrange(im, "h w c az el -> (el az) h w c")


def load_cars3d(path: str | os.PathLike, image_size: int | None = None) -> StoredFactorDataset:
    """Cars3D with the FactorDataset interface (see the module docstring).

    Args:
        path: the folder of ``car_###_mesh.mat`` files (every ``*.mat`` in it is read, in sorted name order).
        image_size: resize every render to ``image_size`` × ``image_size`` while loading
            (``causalvq.imaging.resize_images``); ``None`` keeps the native side.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImportError: scipy is missing.
        ValueError: not a folder, no ``.mat`` file, more than 183, or a malformed file (named in the message).
    """
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"Cars3D folder not found: {folder}")
    if not folder.is_dir():
        raise ValueError(f"{folder}: expected the folder of Cars3D car_###_mesh.mat files, not a file")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"cars3d: image_size must be a positive int or None, got {image_size!r}")
    files = sorted(f for f in folder.iterdir() if f.suffix == ".mat" and f.is_file())
    if not files:
        raise ValueError(f"{folder}: no .mat files (expected the Cars3D car_###_mesh.mat renders)")
    if len(files) > FACTOR_SIZES[2]:
        raise ValueError(f"{folder}: {len(files)} .mat files, more than the {FACTOR_SIZES[2]} Cars3D objects")
    images: np.ndarray | None = None
    for obj, f in enumerate(files):
        block = read_car(f)  # (96, H, W, 3)
        if image_size is not None:
            block = to_uint8(resize_images(to_tensor(block), image_size))  # (96, S, S, 3)
        if images is None:
            images = np.empty((len(files) * _VIEWS, *block.shape[1:]), dtype=np.uint8)  # (n, H, W, 3)
        elif block.shape[1:] != images.shape[1:]:
            raise ValueError(f"{f}: renders of {block.shape[1:3]} px, but {files[0].name} has {images.shape[1:3]}")
        images[obj * _VIEWS:(obj + 1) * _VIEWS] = block
    assert images is not None
    el, az, obj = np.meshgrid(np.arange(FACTOR_SIZES[0]), np.arange(FACTOR_SIZES[1]), np.arange(len(files)),
                              indexing="ij")  # (4, 24, o) each
    factors = rearrange(np.stack([el, az, obj], axis=-1), "el az o f -> (o el az) f")  # rows as stored
    return StoredFactorDataset("cars3d", FACTOR_NAMES, FACTOR_SIZES, factors, ArrayRows(images),
                               images.shape[1:], str(folder))
