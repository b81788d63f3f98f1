"""Training data: the dataset of a recipe, image batches and the stage-2 code pool.

Each step's batch is drawn (``train.stages``) from the two generators that ``train.loop.step_generators`` derives
from (seed, stage, step, rank), so a resumed run draws what an uninterrupted one would have; the stage-2 code pool
is drawn once, from its own generator ``[seed, 2, CODE_POOL_TAG]``.

Axis legend: ``b`` batch, ``c`` channels, ``S`` image side, ``k`` codebooks, ``h w`` latent grid, ``p`` pairs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from causalvq.data import EXPECTED_PATH, PROCEDURAL, CelebA, FactorDataset, load_dataset, render_images
from causalvq.data.pairs import TransitionSampler
from causalvq.model import CausalVQ
from train.checkpoint import read_tensor_file, save_tensor_file
from train.recipes import DataRecipe, RecipeError

CODE_POOL_TAG = 0x5EED  # the stage-2 pool's generator: [seed, 2, CODE_POOL_TAG]


def open_dataset(data: DataRecipe) -> FactorDataset:
    """The dataset a recipe names, as a factor grid: the real file or folder at ``data.path`` read with
    ``data.reader_options``, or the procedural renderer with ``data.render_options`` (shapes3d, dsprites).

    CelebA comes as its grid of attribute vectors (``CelebA.attribute_grid()``): each rendered row is one of the
    people who have those attributes, so the two images of a pair are different people, and the splits divide
    attribute vectors, not the official partition (``causalvq.data.celeba.CelebAAttributeGrid``).

    Raises:
        FileNotFoundError: ``data.path``, or a file the reader needs inside it, does not exist.
        RecipeError: a dataset that needs ``data.path`` has none; an option its reader or renderer does not take
            or a bad option value; a path of the wrong kind (a file where a folder is read, or the reverse); a
            malformed file; a missing optional dependency. The message names the dataset, the path and the problem.
    """
    if data.path and not Path(data.path).exists():
        raise FileNotFoundError(f"dataset path {data.path!r} does not exist (data.path / --dataset-path)")
    if not data.path and data.name not in PROCEDURAL:
        raise RecipeError(f"data.name = {data.name!r} needs data.path (or --dataset-path) to "
                          f"{EXPECTED_PATH[data.name]}; nothing is downloaded")
    key, options = ("data.reader_options", data.reader_options) if data.path else \
        ("data.render_options", data.render_options)
    where = f"{data.name!r} from {data.path!r}" if data.path else f"the procedural {data.name!r}"
    try:
        dataset = load_dataset(data.name, path=data.path or None, **options)
    except TypeError as err:
        raise RecipeError(f"{key} {options} are not accepted when opening {where}: {err}") from err
    except ImportError as err:
        raise RecipeError(f"cannot open {where}: {err}") from err
    except ValueError as err:
        raise RecipeError(f"cannot open {where} ({key} = {options}): {err}") from err
    return dataset.attribute_grid() if isinstance(dataset, CelebA) else dataset


def make_sampler(dataset: FactorDataset, data: DataRecipe, split: str) -> TransitionSampler:
    """A ``TransitionSampler`` over one split, with the recipe's split seed and imbalance options."""
    try:
        return TransitionSampler(dataset, split=split, **data.sampler_options())
    except ValueError as err:
        raise RecipeError(f"[data]: {err}") from err


@dataclass(frozen=True)
class CodePool:
    """Pre-computed code grids of ``num_pairs`` train pairs (paper §13.3)."""

    codes_x: torch.Tensor  # int16 (p, k, h, w)
    codes_y: torch.Tensor  # int16 (p, k, h, w)
    actions: torch.Tensor  # int64 (p,)

    def __len__(self) -> int:
        return len(self.actions)


def image_model_digest(model: CausalVQ) -> str:
    """SHA-256 of the image model's weights (encoder, quantizer, decoder)."""
    h = hashlib.sha256()
    for prefix in ("encoder", "quantizer", "decoder"):
        for name, tensor in sorted(getattr(model, prefix).state_dict().items()):
            h.update(f"{prefix}.{name}".encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def code_pool_key(data: DataRecipe, num_pairs: int, seed: int, model: CausalVQ) -> str:
    """Cache key of a code pool: the data section, pool size, seed, image size and stage-1 weights."""
    desc = {"data": {k: v for k, v in vars(data).items() if k not in ("path", "prefetch")},
            "path": str(Path(data.path).resolve())
            if data.path else "", "num_pairs": num_pairs, "seed": seed, "image_size": model.config.image_size,
            "weights": image_model_digest(model)}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=list).encode()).hexdigest()


@torch.no_grad()
def encode_pool(model: CausalVQ, dataset: FactorDataset, sampler: TransitionSampler, num_pairs: int, seed: int,
                batch_size: int) -> CodePool:
    """Draw ``num_pairs`` train pairs, render them and encode both images with the frozen model, in batches."""
    rng = np.random.default_rng([seed, 2, CODE_POOL_TAG])
    x_factors, y_factors, actions = sampler.sample_pairs(num_pairs, rng)
    was_training = model.training
    model.eval()
    try:
        parts_x, parts_y = [], []
        for start in range(0, num_pairs, batch_size):
            sl = slice(start, start + batch_size)
            for factors, parts in ((x_factors[sl], parts_x), (y_factors[sl], parts_y)):
                x = render_images(dataset, factors, model.config.image_size).to(model.device)
                parts.append(model.encode_codes(x).to("cpu", torch.int16))  # (b, k, h, w)
    finally:
        model.train(was_training)
    return CodePool(codes_x=torch.cat(parts_x), codes_y=torch.cat(parts_y), actions=torch.from_numpy(actions))


def load_or_encode_pool(path: Path, key: str, encode: Callable[[], CodePool], write: bool) -> tuple[CodePool, bool]:
    """The cached pool at ``path`` if its key matches, else ``encode()`` (written to ``path`` when ``write``).

    Returns the pool and whether it came from the cache.
    """
    if path.is_file():
        try:
            tensors, meta = read_tensor_file(path)
            if meta.get("key") == key:
                return CodePool(tensors["codes_x"], tensors["codes_y"], tensors["actions"]), True
        except (ValueError, KeyError):
            pass  # a stale or foreign cache is recomputed and replaced
    pool = encode()
    if write:
        save_tensor_file(path, {"codes_x": pool.codes_x, "codes_y": pool.codes_y, "actions": pool.actions},
                         {"key": key})
    return pool, False
