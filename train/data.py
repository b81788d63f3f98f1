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

from causalvq.data import FactorDataset, load_dataset, render_images
from causalvq.data.pairs import TransitionSampler
from causalvq.model import CausalVQ
from train.checkpoint import read_tensor_file, save_tensor_file
from train.recipes import DataRecipe, RecipeError

CODE_POOL_TAG = 0x5EED  # the stage-2 pool's generator: [seed, 2, CODE_POOL_TAG]


def open_dataset(data: DataRecipe) -> FactorDataset:
    """The dataset a recipe names: the real file at ``data.path`` or the procedural renderer.

    Raises:
        FileNotFoundError: ``data.path`` does not exist.
        RecipeError: unknown dataset name or render option.
    """
    if data.path and not Path(data.path).is_file():
        raise FileNotFoundError(f"dataset file {data.path!r} does not exist (data.path / --dataset-path)")
    try:
        if data.path:
            return load_dataset(data.name, path=data.path)
        return load_dataset(data.name, **data.render_options)
    except TypeError as err:
        raise RecipeError(f"data.render_options {data.render_options} are not accepted by the {data.name!r} "
                          f"renderer: {err}") from err
    except ValueError as err:
        if "unknown dataset" in str(err):
            raise RecipeError(f"data.name: {err}") from err
        raise


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
