"""SmallNORB from its original binary files, with the FactorDataset interface.

The release (https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/) holds two sets of three files; the user gives the
path, nothing is downloaded:

- ``smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat`` (instances 4, 6, 7, 8, 9: the set the paper uses);
- ``smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat`` (instances 0, 1, 2, 3, 5).

Each is a NORB binary matrix: a little-endian int32 magic number naming the element type, an int32 ``ndim``, then
``max(3, ndim)`` int32 dimensions (unused ones are 1), then the elements in C order. ``-dat`` is uint8
``(24300, 2, 96, 96)``: stereo pairs, of which the first camera is used; ``-cat`` is int32 ``(24300,)``, the category;
``-info`` is int32 ``(24300, 4)``: instance, elevation 0..8, azimuth 0, 2, ..., 34, lighting 0..5.

Factors: category 5, instance 5 (the set's five instance ids mapped to 0..4 in increasing order), elevation 9,
azimuth 18 (the stored value / 2), lighting 6; one set is the complete grid of 24,300 images.
Images: ``uint8 (n, 96, 96, 1)``, resized to the model's side by the streams and ``render_images``.

Axis legend: ``n`` images, ``H W`` 96 × 96, ``C = 1`` channel.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from causalvq.data.files import ArrayRows, StoredFactorDataset

FACTOR_NAMES: tuple[str, ...] = ("category", "instance", "elevation", "azimuth", "lighting")
FACTOR_SIZES: tuple[int, ...] = (5, 5, 9, 18, 6)
CATEGORY_NAMES: tuple[str, ...] = ("animal", "human", "airplane", "truck", "car")
TRAINING_PREFIX = "smallnorb-5x46789x9x18x6x2x96x96-training"
TESTING_PREFIX = "smallnorb-5x01235x9x18x6x2x96x96-testing"
INSTANCE_IDS: dict[str, tuple[int, ...]] = {"training": (4, 6, 7, 8, 9), "testing": (0, 1, 2, 3, 5)}
IMAGE_SIDE = 96

# Element types of the NORB binary matrix format, by magic number (0x1E3D4C52, the packed matrix, is not used by
# SmallNORB and not read).
MAGIC_DTYPES: dict[int, np.dtype] = {
    0x1E3D4C51: np.dtype("<f4"),
    0x1E3D4C53: np.dtype("<f8"),
    0x1E3D4C54: np.dtype("<i4"),
    0x1E3D4C55: np.dtype("u1"),
    0x1E3D4C56: np.dtype("<i2"),
}
_FILE_NAME = re.compile(r"^(?P<prefix>.+)-(?:dat|cat|info)\.mat$")


def read_norb_matrix(path: str | os.PathLike) -> np.ndarray:
    """Read one NORB binary matrix file as a read-only memory map (copy what you keep).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown magic number, bad header, or a data size that does not match the header's dimensions.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"SmallNORB file not found: {p}")
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{p}: truncated NORB header ({len(head)} bytes)")
        magic, ndim = (int(v) for v in np.frombuffer(head, dtype="<i4"))
        if magic not in MAGIC_DTYPES:
            known = ", ".join(f"0x{m:08X}" for m in MAGIC_DTYPES)
            raise ValueError(f"{p}: not a NORB binary matrix: magic number 0x{magic & 0xFFFFFFFF:08X} (expected one "
                             f"of {known})")
        if not 1 <= ndim <= 16:
            raise ValueError(f"{p}: NORB header gives {ndim} dimensions (expected 1..16)")
        stored = max(3, ndim)
        raw = fh.read(4 * stored)
        if len(raw) < 4 * stored:
            raise ValueError(f"{p}: truncated NORB header (the dimensions are cut off)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype="<i4")[:ndim])
    if any(d < 0 for d in dims):
        raise ValueError(f"{p}: NORB header has a negative dimension {dims}")
    dtype, offset = MAGIC_DTYPES[magic], 8 + 4 * stored
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if size - offset != expected:
        state = "truncated" if size - offset < expected else "longer than its header says"
        raise ValueError(f"{p}: {state}: the header declares {dtype} {dims} ({expected} bytes of data), the file holds "
                         f"{size - offset}")
    if expected == 0:
        return np.zeros(dims, dtype=dtype)
    return np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=dims)


def _set_files(path: Path) -> dict[str, Path]:
    """The ``dat``, ``cat`` and ``info`` files of the set that ``path`` (a folder or one of the files) names."""
    if path.is_dir():
        prefix = path / TRAINING_PREFIX
        if not Path(f"{prefix}-dat.mat").exists() and not Path(f"{prefix}-dat.mat.gz").exists():
            raise FileNotFoundError(f"{path}: no {TRAINING_PREFIX}-dat.mat; a folder is read as the training set "
                                    f"({TRAINING_PREFIX}-{{dat,cat,info}}.mat). To read the testing set, pass the path "
                                    f"of its {TESTING_PREFIX}-dat.mat file")
    elif (match := _FILE_NAME.match(path.name)) is not None:
        prefix = path.parent / match["prefix"]
    elif not path.exists():
        raise FileNotFoundError(f"SmallNORB path not found: {path}")
    else:
        raise ValueError(f"{path}: expected the folder of the SmallNORB files or one of its "
                         f"'<set>-dat.mat', '-cat.mat', '-info.mat' files (e.g. {TRAINING_PREFIX}-dat.mat)")
    files = {kind: Path(f"{prefix}-{kind}.mat") for kind in ("dat", "cat", "info")}
    for f in files.values():
        if not f.is_file():
            hint = f" ({f.name}.gz is there: gunzip it first)" if Path(f"{f}.gz").is_file() else ""
            raise FileNotFoundError(f"SmallNORB file not found: {f}{hint}; a set needs its -dat, -cat and -info files")
    return files


def _instance_index(instance: np.ndarray, source: str) -> np.ndarray:
    """Map the stored instance ids of one set to 0..4 (training {4, 6, 7, 8, 9}, testing {0, 1, 2, 3, 5})."""
    present = set(np.unique(instance).tolist())
    for ids in INSTANCE_IDS.values():
        if present <= set(ids):
            lookup = np.full(10, -1, dtype=np.int64)
            lookup[list(ids)] = np.arange(len(ids))
            return lookup[instance]
    raise ValueError(f"{source}: instance ids {sorted(present)} are not those of one SmallNORB set (training "
                     f"{INSTANCE_IDS['training']}, testing {INSTANCE_IDS['testing']})")


def load_smallnorb(path: str | os.PathLike) -> StoredFactorDataset:
    """SmallNORB with the FactorDataset interface, first camera only (see the module docstring).

    Args:
        path: the folder holding the training set's three files, or one file of a set (``...-dat.mat``,
            ``-cat.mat`` or ``-info.mat``; the other two are found next to it). Pass a testing file for the
            testing set.

    Raises:
        FileNotFoundError: a file of the set is missing (the message names it).
        ValueError: a malformed file (wrong magic, truncated, wrong shape or values), naming the file.
    """
    files = _set_files(Path(path))
    dat, cat, info = (read_norb_matrix(files[k]) for k in ("dat", "cat", "info"))
    if dat.dtype != np.uint8 or dat.ndim != 4 or dat.shape[1:] != (2, IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"{files['dat']}: expected uint8 (n, 2, 96, 96) stereo images, got {dat.dtype} {dat.shape}")
    n = dat.shape[0]
    if n == 0:
        raise ValueError(f"{files['dat']}: holds no images")
    if not np.issubdtype(cat.dtype, np.integer) or cat.shape != (n,):
        raise ValueError(f"{files['cat']}: expected integer ({n},) categories, got {cat.dtype} {cat.shape}")
    if not np.issubdtype(info.dtype, np.integer) or info.shape != (n, 4):
        raise ValueError(f"{files['info']}: expected integer ({n}, 4) (instance, elevation, azimuth, lighting), got "
                         f"{info.dtype} {info.shape}")
    cat, info = np.asarray(cat, dtype=np.int64), np.asarray(info, dtype=np.int64)
    if np.any(info[:, 2] % 2):
        raise ValueError(f"{files['info']}: azimuth values must be even (0, 2, ..., 34), found "
                         f"{int(info[np.argmax(info[:, 2] % 2), 2])}")
    if np.any((info[:, 0] < 0) | (info[:, 0] > 9)):
        raise ValueError(f"{files['info']}: instance ids must be in 0..9, found {int(info[:, 0].min())}.."
                         f"{int(info[:, 0].max())}")
    instance = _instance_index(info[:, 0], str(files["info"]))
    factors = np.column_stack([cat, instance, info[:, 1], info[:, 2] // 2, info[:, 3]])  # (n, 5)
    bad = (factors < 0) | (factors >= np.asarray(FACTOR_SIZES))  # (n, 5)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        source = files["cat"] if col == 0 else files["info"]
        raise ValueError(f"{source}: {FACTOR_NAMES[col]} out of range at row {row} "
                         f"(category 0..4, elevation 0..8, azimuth 0..34, lighting 0..5)")
    images = np.ascontiguousarray(dat[:, 0])[..., None]  # (n, 96, 96, 1): the first camera
    return StoredFactorDataset("smallnorb", FACTOR_NAMES, FACTOR_SIZES, factors, ArrayRows(images),
                               (IMAGE_SIDE, IMAGE_SIDE, 1), str(files["dat"]))
