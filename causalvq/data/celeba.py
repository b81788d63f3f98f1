"""CelebA with binary attribute factors, and the official code's attribute pairs (paper §9.4).

Files (the aligned-and-cropped release; the user gives the folder, nothing is downloaded):
``img_align_celeba/`` (202,599 JPEGs, 178 wide × 218 high), ``list_attr_celeba.txt`` (a count line, a line of 40
attribute names, then one line per image: file name and 40 values in {-1, 1}) and ``list_eval_partition.txt``
(file name and 0 train, 1 val, 2 test: the official split).

Factors: the chosen attributes (default ``OFFICIAL_ATTRIBUTES``, the official code's first ten), each 0 or 1.
CelebA is not a factor grid: many images (people) share one attribute vector and some vectors have none, so an
image is named by its **image id** (its row in ``list_attr_celeba.txt``), not by its factors. ``CelebA.images(ids)``
reads images, ``CelebA.factors_of(ids)`` gives their attributes; ``render(factors)`` raises ``ValueError``.
``CelebAPairSampler`` draws image ids, with the methods of ``TransitionSampler`` (``sample_images``,
``sample_pairs``, ``in_split``), in the official partition. The factor-grid tools (``TransitionSampler``, the torch
streams, ``render_images``, the evaluation, the training CLI) take ``CelebA.attribute_grid()``: the incomplete grid
of attribute vectors, whose ``render`` draws one of the people who have each vector (``CelebAAttributeGrid``).

Images: ``uint8 (n, 148, 148, 3)``, the official CenterCrop(148) of the 218 × 178 image (``crop=None`` keeps it
whole); resize to the model's side with ``causalvq.imaging.resize_images``.

Axis legend: ``n`` images, ``f`` factors (F attributes), ``H W C`` image height, width, channels.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from causalvq.config import action_names
from causalvq.data.base import FactorDataset
from causalvq.data.pairs import SPLITS, hash_unit, split_index

OFFICIAL_ATTRIBUTES: tuple[str, ...] = ("5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes",
                                        "Bald", "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair")
IMAGE_FOLDER = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_HW: tuple[int, int] = (218, 178)  # (H, W) of the aligned images
OFFICIAL_CROP = 148
DIFFERENT_PEOPLE = ("CelebA attribute pairs show two different people who agree on the other chosen attributes "
                    "(paper §9.4): a flipped attribute comes with a change of identity, pose and background")


class CelebA(FactorDataset):
    """CelebA images named by image id, with binary attribute factors (build it with ``load_celeba``).

    Args:
        image_dir: the ``img_align_celeba`` folder.
        filenames: image file names ``(n,)``, row i = image id i.
        factors: ``int64 (n, F)`` attribute values, 0 or 1.
        partition: ``int64 (n,)`` official split, 0 train, 1 val, 2 test.
        factor_names: the F attribute names.
        crop: side of the centre crop, or ``None`` for the whole 218 × 178 image.
    """

    name = "celeba"

    def __init__(self, image_dir: Path, filenames: Sequence[str], factors: np.ndarray, partition: np.ndarray,
                 factor_names: tuple[str, ...], crop: int | None = OFFICIAL_CROP) -> None:
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or not 1 <= crop <= IMAGE_HW[1]):
            raise ValueError(f"celeba: crop must be an int in 1..{IMAGE_HW[1]} or None, got {crop!r}")
        self.image_dir = Path(image_dir)
        self.filenames = tuple(filenames)
        self.factor_names = tuple(factor_names)
        self.factor_sizes = (2,) * len(self.factor_names)
        self.crop = crop
        self.image_shape = (IMAGE_HW if crop is None else (crop, crop)) + (3,)  # type: ignore[assignment]
        self._factors = np.asarray(factors, dtype=np.int64)  # (n, F)
        self.partition = np.asarray(partition, dtype=np.int64)  # (n,)
        self.codes = self._factors @ (1 << np.arange(self.num_factors, dtype=np.int64))  # (n,) attributes as bits
        self._present = np.unique(self.codes)

    @property
    def num_images(self) -> int:
        """Number of images."""
        return len(self.filenames)

    @property
    def complete(self) -> bool:
        return len(self._present) == len(self)

    def check_ids(self, ids: np.ndarray) -> np.ndarray:
        """Return image ids as ``int64 (n,)``; raise ``ValueError`` if one is not an image of the dataset."""
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"celeba: image ids must be a 1-d integer array, got {arr.dtype} {arr.shape}")
        arr = arr.astype(np.int64, copy=False)
        if np.any((arr < 0) | (arr >= self.num_images)):
            raise ValueError(f"celeba: image ids must be in 0..{self.num_images - 1}")
        return arr

    def factors_of(self, ids: np.ndarray) -> np.ndarray:
        """Attributes of images ``(n,)``: ``int64 (n, F)``, 0 or 1."""
        return self._factors[self.check_ids(ids)]

    def images(self, ids: np.ndarray) -> np.ndarray:
        """Images of image ids ``(n,)``: ``uint8 (n, H, W, 3)`` (centre-cropped unless ``crop=None``)."""
        ids = self.check_ids(ids)
        out = np.empty((len(ids), *self.image_shape), dtype=np.uint8)
        H, W = IMAGE_HW
        # torchvision's CenterCrop rounding
        top, left = (0, 0) if self.crop is None else (round((H - self.crop) / 2), round((W - self.crop) / 2))
        h, w = self.image_shape[:2]
        for i, image_id in enumerate(ids.tolist()):
            path = self.image_dir / self.filenames[image_id]
            try:
                with Image.open(path) as img:
                    pixels = np.asarray(img.convert("RGB"))  # (H, W, 3)
            except (OSError, UnidentifiedImageError) as err:
                raise ValueError(f"{path}: cannot read the image ({err})") from err
            if pixels.shape[:2] != IMAGE_HW:
                raise ValueError(f"{path}: expected an aligned CelebA image of {W}×{H} px, got "
                                 f"{pixels.shape[1]}×{pixels.shape[0]}")
            out[i] = pixels[top:top + h, left:left + w]
        return out

    def contains(self, factors: np.ndarray) -> np.ndarray:
        """Whether some image has each attribute vector ``(n, F)``: ``bool (n,)``."""
        codes = self.check_factors(factors) @ (1 << np.arange(self.num_factors, dtype=np.int64))
        return np.isin(codes, self._present)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Attributes of ``n`` images drawn uniformly: ``int64 (n, F)``."""
        return self._factors[rng.integers(0, self.num_images, size=n)].reshape(n, self.num_factors)

    def attribute_grid(self) -> CelebAAttributeGrid:
        """This dataset as an incomplete grid of attribute vectors, for the factor-grid tools (see the class)."""
        return CelebAAttributeGrid(self)

    def _render(self, factors: np.ndarray) -> np.ndarray:
        raise ValueError("celeba: attributes do not name one image (many different people share an attribute "
                         "vector); draw image ids with CelebAPairSampler and read them with CelebA.images(ids), "
                         "or use CelebA.attribute_grid(), whose render draws one of the people of each vector")


class CelebAAttributeGrid(FactorDataset):
    """CelebA as an incomplete factor grid of attribute vectors: what ``TransitionSampler``, the torch streams, the
    evaluation and the training CLI take (build it with ``CelebA.attribute_grid()``).

    A grid point is an attribute vector; it exists (``contains``) when some image has it, and ``sample_factors``
    draws the attributes of uniformly drawn images. ``render(factors)`` shows, for each row, **one of the people
    who have those attributes**: ``image_ids`` draws the image uniformly among them with a hash of the whole
    ``factors`` array and the row's position. The same array always gives the same images (a resumed training
    run sees what an uninterrupted one saw); two rows, or two arrays, draw independently. A transition pair
    rendered as two arrays (x, then y) is therefore two different people who agree on every other chosen
    attribute: the CelebA pair rule of the official code (paper §9.4). A pair's images are chosen uniformly on
    each side of its cell, as in ``CelebAPairSampler``; the cells are weighted by ``TransitionSampler``'s rule (x
    uniform over the images, then a uniform action whose y exists), not uniformly.

    Splits: a ``TransitionSampler`` over this grid splits *attribute vectors* by its hash, not images by the
    official partition (``render`` does not know a sampler's split). Every image of a vector lies in that vector's
    split, so train and test share no image, and no attribute vector either.

    Args:
        celeba: the dataset (``load_celeba``).
    """

    name = "celeba"

    def __init__(self, celeba: CelebA) -> None:
        self.celeba = celeba
        self.factor_names, self.factor_sizes = celeba.factor_names, celeba.factor_sizes
        self.image_shape = celeba.image_shape
        self._order = np.argsort(celeba.codes, kind="stable")  # (n,) image ids grouped by attribute vector
        self._codes, self._start, self._count = np.unique(celeba.codes[self._order], return_index=True,
                                                          return_counts=True)  # (v,) each: present vectors

    @property
    def complete(self) -> bool:
        return self.celeba.complete

    def contains(self, factors: np.ndarray) -> np.ndarray:
        """Whether some image has each attribute vector ``(n, F)``: ``bool (n,)``."""
        return self.celeba.contains(factors)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Attributes of ``n`` images drawn uniformly: ``int64 (n, F)``."""
        return self.celeba.sample_factors(n, rng)

    def image_ids(self, factors: np.ndarray) -> np.ndarray:
        """The image ids ``render(factors)`` shows: ``int64 (n,)``, each drawn uniformly among the images with its
        row's attributes (seeded by the whole array and the row's position).

        Raises:
            ValueError: no image has one of the attribute vectors (the message names it).
        """
        arr = np.ascontiguousarray(self.check_factors(factors))  # (n, F)
        codes = arr @ (1 << np.arange(self.num_factors, dtype=np.int64))  # (n,)
        group = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)  # (n,)
        missing = self._codes[group] != codes
        if missing.any():
            row = int(np.argmax(missing))
            raise ValueError(f"celeba: no image has the attributes {dict(zip(self.factor_names, arr[row].tolist()))} "
                             f"(row {row}); check contains(factors) first")
        key = int.from_bytes(hashlib.blake2b(arr.tobytes(), digest_size=8).digest(), "little")
        pick = np.floor(hash_unit(np.arange(len(arr)), key) * self._count[group]).astype(np.int64)  # (n,)
        return self._order[self._start[group] + pick]

    def _render(self, factors: np.ndarray) -> np.ndarray:
        return self.celeba.images(self.image_ids(factors))


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"CelebA file not found: {path}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text file ({err})") from err


def _parse_attributes(path: Path) -> tuple[list[str], tuple[str, ...], np.ndarray]:
    """File names, attribute names and values ``int8 (n, 40)`` in {-1, 1} of ``list_attr_celeba.txt``."""
    lines = [line for line in _read_lines(path) if line.strip()]
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise ValueError(f"{path}: expected a first line with the number of images, then the attribute names")
    count, names = int(lines[0]), tuple(lines[1].split())
    rows = [line.split() for line in lines[2:]]
    if len(rows) != count:
        raise ValueError(f"{path}: the first line says {count} images, the file lists {len(rows)}")
    for i, row in enumerate(rows):
        if len(row) != len(names) + 1:
            raise ValueError(f"{path}: line {i + 3} has {len(row) - 1} values for {len(names)} attributes")
    try:
        values = np.array([row[1:] for row in rows], dtype=np.int8).reshape(count, len(names))
    except ValueError as err:
        raise ValueError(f"{path}: attribute values must be -1 or 1 ({err})") from err
    if np.any((values != 1) & (values != -1)):
        row = int(np.argmax(np.any((values != 1) & (values != -1), axis=1)))
        raise ValueError(f"{path}: attribute values must be -1 or 1, line {row + 3} has {rows[row][1:]}")
    return [row[0] for row in rows], names, values


def _parse_partition(path: Path, filenames: list[str]) -> np.ndarray:
    """Official split ``int64 (n,)`` of each file name, from ``list_eval_partition.txt``."""
    table: dict[str, int] = {}
    for i, line in enumerate(_read_lines(path)):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}: line {i + 1} must be '<file name> <0, 1 or 2>', got {line!r}")
        table[parts[0]] = int(parts[1])
    missing = [f for f in filenames if f not in table]
    if missing:
        raise ValueError(f"{path}: no split for {len(missing)} image(s) of {ATTRIBUTE_FILE}, e.g. {missing[0]}")
    return np.array([table[f] for f in filenames], dtype=np.int64)


def load_celeba(path: str | os.PathLike, attributes: Sequence[str] | None = None,
                crop: int | None = OFFICIAL_CROP) -> CelebA:
    """CelebA from the folder holding ``img_align_celeba/``, ``list_attr_celeba.txt`` and ``list_eval_partition.txt``.

    Args:
        path: that folder.
        attributes: the attribute names used as factors, in this order; ``None`` = ``OFFICIAL_ATTRIBUTES``.
        crop: centre-crop side (the official 148), or ``None`` for the whole image.

    Raises:
        FileNotFoundError: the folder, a list file, the image folder or a listed image is missing.
        ValueError: a malformed list file or an unknown attribute name (named in the message).
    """
    folder = Path(path)
    if not folder.is_dir():
        if folder.exists():
            raise ValueError(f"{folder}: expected the CelebA folder holding {IMAGE_FOLDER}/, {ATTRIBUTE_FILE} and "
                             f"{PARTITION_FILE}, not a file")
        raise FileNotFoundError(f"CelebA folder not found: {folder}")
    filenames, all_names, values = _parse_attributes(folder / ATTRIBUTE_FILE)
    chosen = OFFICIAL_ATTRIBUTES if attributes is None else tuple(attributes)
    unknown = [a for a in chosen if a not in all_names]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"celeba: attributes must be distinct names from {ATTRIBUTE_FILE}; not found: {unknown}; "
                         f"known: {', '.join(all_names)}")
    partition = _parse_partition(folder / PARTITION_FILE, filenames)
    image_dir = folder / IMAGE_FOLDER
    if not image_dir.is_dir():
        raise FileNotFoundError(f"CelebA image folder not found: {image_dir}")
    on_disk = set(os.listdir(image_dir))
    absent = [f for f in filenames if f not in on_disk]
    if absent:
        raise FileNotFoundError(f"{image_dir}: {len(absent)} image(s) listed in {ATTRIBUTE_FILE} are missing, "
                                f"e.g. {absent[0]}")
    columns = [all_names.index(a) for a in chosen]
    factors = (values[:, columns] > 0).astype(np.int64)  # (n, F): -1 -> 0, 1 -> 1
    return CelebA(image_dir, filenames, factors, partition, chosen, crop)


class CelebAPairs(NamedTuple):
    """Attribute pairs: image ids ``x_ids``, ``y_ids`` ``int64 (n,)`` and ``actions int64 (n,)`` (``a = f + F·dir``,
    ``dir = 1`` when attribute f goes from 1 to 0). x and y are different people."""

    x_ids: np.ndarray
    y_ids: np.ndarray
    actions: np.ndarray


class CelebAPairSampler:
    """Seeded streams of CelebA image ids and attribute pairs within one official split.

    **The two images of a pair are different people**: y agrees with x on every chosen attribute except one, which
    is flipped, and nothing else is shared (``different_people`` is True; the first ``sample_pairs`` call warns).

    The pair rule follows the official code (paper §9.4): a *cell* is an attribute f together with the values of
    the other attributes; a cell is valid in a split when that split has images with f = 0 and with f = 1.
    ``sample_pairs`` draws a valid cell uniformly, a direction uniformly, then x and y uniformly among the cell's
    images on each side. (The official code draws up to 8 images per side with replacement, unseeded, and keeps
    all 8 × 8 combinations in both directions, so cells with several images per side count about equally there too,
    while a cell of one image per side gives only its single pair: small cells weigh more here.)

    Args:
        ds: the dataset (``load_celeba``).
        split: ``"train"``, ``"val"`` or ``"test"`` (or 0, 1, 2): the official partition.
    """

    different_people: bool = True

    def __init__(self, ds: CelebA, split: str | int = "train") -> None:
        self.ds, self.split = ds, split_index(split)
        self.action_names = action_names(ds.factor_names)
        self.ids = np.flatnonzero(ds.partition == self.split)  # (m,) the split's image ids
        if len(self.ids) == 0:
            raise ValueError(f"celeba: no images in split {SPLITS[self.split]!r}")
        self._warned = False
        # For each attribute f, the split's ids sorted by (other attributes, f): each cell side is a run.
        codes = ds.codes[self.ids]  # (m,)
        pools, cells = [], []
        for f in range(ds.num_factors):
            bit = (codes >> f) & 1
            key = ((codes & ~(1 << f)) << 1) | bit  # (m,) other attributes, then f
            order = np.argsort(key, kind="stable")
            values, starts, counts = np.unique(key[order], return_index=True, return_counts=True)
            pair = np.flatnonzero((values[:-1] % 2 == 0) & (values[1:] == values[:-1] + 1))  # f=0 run, then f=1
            offset = f * len(self.ids)
            cells.append(np.stack([np.full(len(pair), f), offset + starts[pair], counts[pair],
                                   offset + starts[pair + 1], counts[pair + 1]], axis=1))  # (c_f, 5)
            pools.append(self.ids[order])
        self._pool = np.concatenate(pools)  # (F·m,)
        self._cells = np.concatenate(cells).astype(np.int64)  # (c, 5): f, start0, count0, start1, count1

    @property
    def num_actions(self) -> int:
        return 2 * self.ds.num_factors

    @property
    def num_cells(self) -> int:
        """Number of valid (attribute, other attributes) cells in the split."""
        return len(self._cells)

    def in_split(self, ids: np.ndarray) -> np.ndarray:
        """Whether each image id ``(n,)`` lies in this sampler's split: ``bool (n,)``."""
        return self.ds.partition[self.ds.check_ids(ids)] == self.split

    def sample_images(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Image ids of ``n`` images of the split, uniformly: ``int64 (n,)``."""
        return self.ids[rng.integers(0, len(self.ids), size=n)]

    def sample_pairs(self, n: int, rng: np.random.Generator) -> CelebAPairs:
        """``n`` attribute pairs of the split (different people; see the class docstring)."""
        if self.num_cells == 0:
            raise ValueError(f"celeba: split {SPLITS[self.split]!r} has no two images that differ in exactly one of "
                             f"the attributes {self.ds.factor_names}")
        if not self._warned:
            warnings.warn(DIFFERENT_PEOPLE, UserWarning, stacklevel=2)
            self._warned = True
        cell = self._cells[rng.integers(0, self.num_cells, size=n)]  # (n, 5)
        down = rng.integers(0, 2, size=n)  # 1: x has f = 1, y has f = 0
        runs = np.where(down[:, None] == 1, cell[:, [3, 4, 1, 2]], cell[:, 1:5])  # (n, 4): x start, count, y ...
        x = self._pool[runs[:, 0] + rng.integers(0, runs[:, 1])]
        y = self._pool[runs[:, 2] + rng.integers(0, runs[:, 3])]
        return CelebAPairs(x, y, cell[:, 0] + self.ds.num_factors * down)
