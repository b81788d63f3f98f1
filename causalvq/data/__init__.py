"""Factor-labelled image datasets behind one interface, and a registry to load them by name.

``load_dataset("shapes3d")`` and ``load_dataset("dsprites")`` render procedurally (no download); with ``path=``
they read DeepMind's real files; ``load_dataset("npz", path=...)`` reads your own images and factors;
``smallnorb``, ``cars3d`` and ``celeba`` read their original releases from ``path=`` (CelebA is named by image id,
not by factors; ``CelebA.attribute_grid()`` is its factor-grid view: see ``causalvq.data.celeba``).
``render_images(dataset, factors, size)`` gives the model's input tensor of factor vectors. Transition pairs, splits
and torch streams live in ``causalvq.data.pairs`` and ``causalvq.data.streams``.

Axis legend: ``n`` images, ``f`` factors (F), ``H W C`` image height, width, channels, ``S`` the model's image side.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from causalvq.data.base import FactorDataset
from causalvq.data.cars3d import load_cars3d
from causalvq.data.celeba import CelebA, CelebAAttributeGrid, CelebAPairSampler, load_celeba
from causalvq.data.dsprites import DSprites
from causalvq.data.files import StoredFactorDataset, load_dsprites_npz, load_npz, load_shapes3d_h5, save_npz
from causalvq.data.shapes3d import Shapes3D
from causalvq.data.smallnorb import load_smallnorb
from causalvq.imaging import resize_images, to_tensor

DATASETS: tuple[str, ...] = ("shapes3d", "dsprites", "npz", "smallnorb", "cars3d", "celeba")
PROCEDURAL: tuple[str, ...] = ("shapes3d", "dsprites")  # rendered without a file; the others need path=
_FILE_READERS = {"npz": load_npz, "smallnorb": load_smallnorb, "cars3d": load_cars3d, "celeba": load_celeba}
EXPECTED_PATH: dict[str, str] = {  # what path= names, for the datasets that need one
    "npz": "an .npz with 'images', 'factors', 'factor_names'",
    "smallnorb": "the SmallNORB folder or a '...-dat.mat' file",
    "cars3d": "the folder of Cars3D car_###_mesh.mat files",
    "celeba": "the CelebA folder (img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt)",
}

__all__ = ["DATASETS", "EXPECTED_PATH", "PROCEDURAL", "CelebA", "CelebAAttributeGrid", "CelebAPairSampler", "DSprites",
           "FactorDataset", "Shapes3D", "StoredFactorDataset", "load_dataset", "render_images", "save_npz"]


def load_dataset(name: str, path: str | os.PathLike | None = None, **options: Any) -> FactorDataset:
    """Load a factor dataset by name.

    Args:
        name: ``"shapes3d"``, ``"dsprites"``, ``"npz"``, ``"smallnorb"``, ``"cars3d"`` or ``"celeba"``.
        path: a real data file or folder (``3dshapes.h5``, the dSprites ``.npz``, your own ``.npz``, the SmallNORB
            folder or ``-dat.mat``, the Cars3D folder, the CelebA folder); ``None`` renders ``shapes3d`` /
            ``dsprites`` procedurally. Required for the others.
        options: passed to the loader (e.g. ``supersample=`` for the procedural datasets, ``in_memory=`` for
            3dshapes.h5, ``image_size=`` for Cars3D, ``attributes=`` / ``crop=`` for CelebA); an unknown option
            raises ``TypeError``.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones) or a malformed file.
        FileNotFoundError: ``path`` does not exist.
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if key in _FILE_READERS:
        if path is None:
            raise ValueError(f"load_dataset({key!r}) needs path= to {EXPECTED_PATH[key]}; nothing is downloaded")
        return _FILE_READERS[key](path, **options)
    if path is None:
        return Shapes3D(**options) if key == "shapes3d" else DSprites(**options)
    if key == "shapes3d":
        return load_shapes3d_h5(path, **options)
    return load_dsprites_npz(path, **options)


def render_images(dataset: FactorDataset, factors: np.ndarray, image_size: int) -> torch.Tensor:
    """Images of factor vectors ``(n, f)`` at the model's side ``image_size``: float ``(n, C, S, S)`` in [0, 1], on
    the CPU (``dataset.render``, then ``causalvq.imaging.to_tensor`` and ``resize_images``)."""
    return resize_images(to_tensor(dataset.render(factors)), image_size)
