"""File-backed factor datasets: DeepMind's 3dshapes.h5, the dSprites npz, and a user's own npz.

All three hold stored images plus one factor vector per image. The row of each grid point is found from the
labels (``flat grid index -> row`` by a sorted search), never assumed from the storage order; ``render(factors)``
returns the stored images of those factors.

Axis legend: ``n`` images, ``f`` factors (F), ``H W C`` image height, width, channels.

Formats:
- ``3dshapes.h5``: datasets ``images`` uint8 ``(480000, 64, 64, 3)`` and ``labels`` float ``(480000, 6)`` with the
  physical values (hues in [0, 1), scale 0.75..1.25, shape 0..3, orientation -30..30 degrees).
- ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``: ``imgs`` uint8 ``(737280, 64, 64)`` in {0, 1} (scaled to
  0/255 here) and ``latents_classes`` int ``(737280, 6)`` whose constant first column (colour) is dropped.
- your own ``.npz``: ``images`` uint8 ``(n, H, W)`` or ``(n, H, W, C)``, integer ``factors`` ``(n, F)``,
  ``factor_names`` strings ``(F,)`` and optionally ``factor_sizes`` ``(F,)``; the grid may be incomplete.
"""

from __future__ import annotations

import math
import os
import tokenize
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from causalvq.data import dsprites as _dsprites
from causalvq.data import shapes3d as _shapes3d
from causalvq.data.base import FactorDataset

# What a damaged .npz raises when opened or read (found by flipping bytes): bad CRC, bad deflate stream, short
# data, a flipped version / method / "encrypted" flag (zipfile's RuntimeError and NotImplementedError), a garbled
# .npy header (numpy's tokenizer), a header declaring a shape far larger than the data (numpy allocates first).
_ZIP_ERRORS = (ValueError, OSError, EOFError, RuntimeError, MemoryError, zipfile.BadZipFile, zlib.error,
               tokenize.TokenError)


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset file not found: {p}")
    if not p.is_file():
        raise ValueError(f"{p}: not a file")
    return p


class ArrayRows:
    """Rows of an in-memory image array ``uint8 (n, H, W, C)`` (picklable, for DataLoader workers)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return self.images[rows]


class PackedBitRows:
    """Rows of bit-packed 0/1 images ``uint8 (n, H, W/8)``, returned as 0/255 ``uint8 (k, H, W, 1)``."""

    def __init__(self, packed: np.ndarray) -> None:
        self.packed = packed

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return (np.unpackbits(self.packed[rows], axis=-1) * np.uint8(255))[..., None]


class H5Rows:
    """Rows of the ``images`` dataset of an HDF5 file, opened lazily once per process (h5py handles must not
    cross a fork, and a pickled reader reopens the file in the DataLoader worker)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = None
        self._pid = -1

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if self._handle is None or self._pid != os.getpid():
            import h5py

            self._handle, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._handle["images"][rows]

    def __getstate__(self) -> dict:
        return {"path": self.path, "_handle": None, "_pid": -1}


class StoredFactorDataset(FactorDataset):
    """Images stored in a file (or array), located by their factor labels.

    Args:
        name, factor_names, factor_sizes: the grid.
        factors: ``int64 (n, F)`` factor indices of each stored row.
        read_rows: reads stored rows (sorted, unique ``int64``) -> ``uint8 (k, H, W, C)``.
        image_shape: ``(H, W, C)``.
        source: file name used in error messages.
    """

    def __init__(self, name: str, factor_names: tuple[str, ...], factor_sizes: tuple[int, ...],
                 factors: np.ndarray, read_rows: Callable[[np.ndarray], np.ndarray],
                 image_shape: tuple[int, int, int], source: str) -> None:
        self.name = name
        self.factor_names = tuple(factor_names)
        self.factor_sizes = tuple(int(s) for s in factor_sizes)
        self.image_shape = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
        self.source = source
        self._read_rows = read_rows
        factors = np.asarray(factors, dtype=np.int64)
        flat = np.ravel_multi_index(tuple(factors.T), self.factor_sizes).astype(np.int64)  # (n,)
        order = np.argsort(flat, kind="stable")
        self._flat_sorted = flat[order]
        self._row_sorted = order.astype(np.int64)
        dup = np.flatnonzero(np.diff(self._flat_sorted) == 0)
        if len(dup):
            bad = tuple(int(v) for v in factors[order[dup[0]]])
            raise ValueError(f"{source}: two images have the same factors {dict(zip(self.factor_names, bad))}")

    @property
    def num_images(self) -> int:
        """Number of stored images."""
        return len(self._flat_sorted)

    @property
    def complete(self) -> bool:
        return self.num_images == len(self)

    def rows_of(self, factors: np.ndarray) -> np.ndarray:
        """Stored row of each factor vector ``(n, F)``: ``int64 (n,)``, -1 where the file has no such image."""
        flat = np.ravel_multi_index(tuple(self.check_factors(factors).T), self.factor_sizes)
        pos = np.clip(np.searchsorted(self._flat_sorted, flat), 0, max(len(self._flat_sorted) - 1, 0))
        found = (len(self._flat_sorted) > 0) & (self._flat_sorted[pos] == flat)
        return np.where(found, self._row_sorted[pos], -1)

    def contains(self, factors: np.ndarray) -> np.ndarray:
        return self.rows_of(factors) >= 0

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.complete:
            return super().sample_factors(n, rng)
        flat = self._flat_sorted[rng.integers(0, self.num_images, size=n)]
        return self.index_to_factors(flat).reshape(n, self.num_factors)

    def _render(self, factors: np.ndarray) -> np.ndarray:
        rows = self.rows_of(factors)
        if np.any(rows < 0):
            missing = tuple(int(v) for v in factors[np.argmax(rows < 0)])
            raise ValueError(f"{self.source}: no image with factors {dict(zip(self.factor_names, missing))}")
        uniq, inverse = np.unique(rows, return_inverse=True)  # h5py wants increasing indices
        return self._read_rows(uniq)[inverse.reshape(-1)]


def _values_to_indices(values: np.ndarray, grids: tuple[np.ndarray, ...], names: tuple[str, ...],
                       source: str) -> np.ndarray:
    """Map physical label values ``(n, F)`` to grid indices by the nearest known value (tolerance 1e-3)."""
    out = np.empty(values.shape, dtype=np.int64)
    for f, grid in enumerate(grids):
        idx = np.abs(values[:, f, None] - grid[None, :]).argmin(axis=1)  # (n,)
        err = np.abs(values[:, f] - grid[idx])
        if np.any(err > 1e-3):
            bad = values[np.argmax(err > 1e-3), f]
            raise ValueError(f"{source}: label {names[f]}={bad!r} is not one of the known values {np.round(grid, 4)}")
        out[:, f] = idx
    return out


def load_shapes3d_h5(path: str | os.PathLike, in_memory: bool = False) -> StoredFactorDataset:
    """DeepMind's ``3dshapes.h5`` with the shapes3d interface (``in_memory`` reads all 1.4 GB of images once)."""
    p = _check_path(path)
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading 3dshapes.h5 needs h5py: pip install 'causalvq[h5]' (or pip install h5py)") from err
    try:
        handle = h5py.File(p, "r")
    except OSError as err:
        raise ValueError(f"{p}: not a readable HDF5 file ({err})") from err
    with handle:
        for key in ("images", "labels"):
            if key not in handle:
                raise ValueError(f"{p}: missing dataset {key!r} (expected 'images' and 'labels')")
        images, labels = handle["images"], handle["labels"]
        if images.ndim != 4 or images.shape[1:] != (64, 64, 3) or images.dtype != np.uint8:
            raise ValueError(f"{p}: 'images' must be uint8 (n, 64, 64, 3), got {images.dtype} {images.shape}")
        if labels.ndim != 2 or labels.shape != (images.shape[0], 6):
            raise ValueError(f"{p}: 'labels' must be ({images.shape[0]}, 6), got {labels.shape}")
        factors = _values_to_indices(np.asarray(labels[:], dtype=np.float64), _shapes3d.FACTOR_VALUES,
                                     _shapes3d.FACTOR_NAMES, str(p))
        read = ArrayRows(images[:]) if in_memory else H5Rows(p)
    return StoredFactorDataset("shapes3d", _shapes3d.FACTOR_NAMES, _shapes3d.FACTOR_SIZES, factors, read,
                               (64, 64, 3), str(p))


def _read_header(fh, source: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Shape, dtype and Fortran order from an open ``.npy`` stream (format versions 1 and 2)."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"{source}: unsupported .npy format version {version}")
    return tuple(shape), dtype, fortran


def _packed_npz_images(p: Path, key: str, chunk: int = 16384) -> tuple[tuple[int, ...], np.ndarray]:
    """Read 0/1 images ``(n, H, W)`` of one .npz member in chunks, bit-packed: ``uint8 (n, H, ceil(W/8))``.

    Streaming keeps memory at the packed size (92 MB for dSprites) instead of the 3 GB uint8 array.
    """
    with zipfile.ZipFile(p) as archive, archive.open(f"{key}.npy") as fh:
        shape, dtype, fortran = _read_header(fh, str(p))
        if len(shape) != 3 or fortran or dtype.hasobject:
            raise ValueError(f"{p}: {key!r} must be a C-ordered numeric (n, H, W) array, got {dtype} {shape}")
        n, h, w = shape
        out = np.empty((n, h, (w + 7) // 8), dtype=np.uint8)
        row_bytes = h * w * dtype.itemsize
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            buf = fh.read(k * row_bytes)
            if len(buf) != k * row_bytes:
                raise ValueError(f"{p}: {key!r} is truncated")
            rows = np.frombuffer(buf, dtype=dtype).reshape(k, h, w)
            out[start:start + k] = np.packbits(rows != 0, axis=-1)
    return shape, out


def _open_npz(p: Path, keys: tuple[str, ...]) -> np.lib.npyio.NpzFile:
    try:
        data = np.load(p, allow_pickle=False)
    except _ZIP_ERRORS as err:
        raise ValueError(f"{p}: not a readable .npz file ({err})") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{p}: not an .npz archive (a single array was found)")
    for key in keys:
        if key not in data.files:
            raise ValueError(f"{p}: missing array {key!r} (found {', '.join(data.files) or 'none'})")
    return data




def _member(data: np.lib.npyio.NpzFile, key: str, p: Path) -> np.ndarray:
    """Read one array of an open .npz, naming the file and the key if it is damaged (or holds pickled objects)."""
    try:
        return data[key]
    except _ZIP_ERRORS as err:
        raise ValueError(f"{p}: cannot read array {key!r} ({err})") from err


def load_dsprites_npz(path: str | os.PathLike) -> StoredFactorDataset:
    """DeepMind's dSprites npz with the dsprites interface; images are kept bit-packed (92 MB for all 737,280)."""
    p = _check_path(path)
    data = _open_npz(p, ("imgs", "latents_classes"))
    classes = _member(data, "latents_classes", p)
    if classes.ndim != 2 or classes.shape[1] != 6 or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"{p}: 'latents_classes' must be integer (n, 6), got {classes.dtype} {classes.shape}")
    try:
        shape, packed = _packed_npz_images(p, "imgs")  # (n, 64, 8): 8x smaller than uint8
    except _ZIP_ERRORS as err:
        raise ValueError(f"{p}: cannot read array 'imgs' ({err})") from err
    if shape[1:] != (64, 64) or shape[0] != len(classes):
        raise ValueError(f"{p}: 'imgs' must be ({len(classes)}, 64, 64), got {shape}")
    read = PackedBitRows(packed)
    factors = classes[:, 1:].astype(np.int64)
    sizes = np.asarray(_dsprites.FACTOR_SIZES)
    if np.any(factors < 0) or np.any(factors >= sizes):
        raise ValueError(f"{p}: 'latents_classes' outside the dSprites grid {tuple(sizes)}")
    return StoredFactorDataset("dsprites", _dsprites.FACTOR_NAMES, _dsprites.FACTOR_SIZES, factors, read,
                               (64, 64, 1), str(p))


def load_npz(path: str | os.PathLike, name: str | None = None) -> StoredFactorDataset:
    """A user's own factor-labelled images (see the module docstring for the format)."""
    p = _check_path(path)
    data = _open_npz(p, ("images", "factors", "factor_names"))
    images, factors, names = (_member(data, key, p) for key in ("images", "factors", "factor_names"))
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"{p}: 'images' must be uint8 (n, H, W) or (n, H, W, C), got {images.dtype} "
                         f"{images.shape}")
    if 0 in images.shape:
        raise ValueError(f"{p}: 'images' is empty, shape {images.shape}")
    if images.ndim == 3:
        images = images[..., None]  # (n, H, W, 1)
    if factors.ndim != 2 or not np.issubdtype(factors.dtype, np.integer):
        raise ValueError(f"{p}: 'factors' must be an integer array (n, F), got {factors.dtype} {factors.shape}")
    if len(factors) != len(images):
        raise ValueError(f"{p}: 'factors' has {len(factors)} rows but 'images' has {len(images)}")
    if factors.shape[1] == 0:
        raise ValueError(f"{p}: 'factors' has no columns; at least one factor is needed")
    if names.ndim != 1 or len(names) != factors.shape[1] or names.dtype.kind not in "US":
        raise ValueError(f"{p}: 'factor_names' must be {factors.shape[1]} strings, got {names.dtype} {names.shape}")
    try:
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
    except UnicodeDecodeError as err:
        raise ValueError(f"{p}: 'factor_names' are not UTF-8 ({err})") from err
    if len(set(names)) != len(names):
        raise ValueError(f"{p}: 'factor_names' has duplicates: {names}")
    if np.any(factors < 0):
        raise ValueError(f"{p}: 'factors' must be non-negative indices")
    if "factor_sizes" in data.files:
        sizes = data["factor_sizes"]
        if sizes.shape != (factors.shape[1],) or not np.issubdtype(sizes.dtype, np.integer):
            raise ValueError(f"{p}: 'factor_sizes' must be {factors.shape[1]} integers, got {sizes.dtype} "
                             f"{sizes.shape}")
        if len(factors) and np.any(factors.max(axis=0) >= sizes):
            raise ValueError(f"{p}: 'factors' exceed 'factor_sizes' {tuple(int(s) for s in sizes)}")
    else:
        sizes = factors.max(axis=0) + 1
    if math.prod(int(s) for s in sizes) >= 2**62:  # flat grid indices are int64
        raise ValueError(f"{p}: the factor grid {tuple(int(s) for s in sizes)} is too large (>= 2**62 points)")
    ds = StoredFactorDataset(name or p.stem, names, tuple(int(s) for s in sizes),
                             factors, ArrayRows(images), images.shape[1:], str(p))
    return ds


def save_npz(ds: FactorDataset, factors: np.ndarray, path: str | os.PathLike, compressed: bool = True) -> Path:
    """Render ``factors (n, F)`` of ``ds`` and write them in the ``load_dataset("npz")`` format (an on-disk cache
    of, e.g., a rendered split; flat-coloured renders compress ~30x). Returns the path."""
    factors = ds.check_factors(factors)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save = np.savez_compressed if compressed else np.savez
    save(p, images=ds.render(factors), factors=factors, factor_names=np.array(ds.factor_names),
         factor_sizes=np.asarray(ds.factor_sizes, dtype=np.int64))
    return p if p.suffix == ".npz" else p.with_name(p.name + ".npz")
