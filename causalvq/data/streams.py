"""torch ``IterableDataset`` streams of images and transition pairs, rendered on the fly in chunks.

Each DataLoader worker and each DDP rank draws different data: the numpy generator of a stream is seeded from
``(seed, epoch, rank, worker id)``; ``set_epoch`` gives a new epoch new data. ``size`` items per epoch are shared
out between all ranks and workers (``None`` streams forever).

Items are dicts of tensors; images are float ``(c, h, w)`` in [0, 1] (``image_size`` area-downsamples, e.g. 64 -> 32
for the small model). ``collate`` stacks items into ``(b, c, h, w)`` batches; with ``batch_size=`` a stream yields
ready batches instead (use ``DataLoader(stream, batch_size=None)``).

Axis legend: ``b`` batch, ``c`` channels, ``h w`` image side, ``f`` factors (F).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from causalvq.data.base import FactorDataset
from causalvq.data.pairs import TransitionSampler
from causalvq.imaging import resize_images, to_tensor

Item = dict[str, torch.Tensor]


def collate(items: list[Item]) -> Item:
    """Stack a list of stream items into one batch dict (images ``(b, c, h, w)``, factors ``(b, F)``, ...)."""
    if not items:
        raise ValueError("collate: empty list of items")
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


class _Stream(IterableDataset):
    """Shared sharding, seeding and chunking of the image and pair streams."""

    def __init__(self, ds: FactorDataset, sampler: TransitionSampler, size: int | None = None,
                 image_size: int | None = None, batch_size: int | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, chunk: int = 256) -> None:
        super().__init__()
        if sampler.ds is not ds:
            raise ValueError("the sampler was built on a different dataset than the stream")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if size is not None and size < 0:
            raise ValueError(f"size must be >= 0 or None, got {size}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        self.ds, self.sampler = ds, sampler
        self.size, self.image_size, self.batch_size = size, image_size, batch_size
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.chunk = int(batch_size or chunk)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw different data in each epoch (call before iterating, like DistributedSampler.set_epoch)."""
        self.epoch = int(epoch)

    def _shard(self) -> tuple[np.random.Generator, int | None]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shard, shards = self.rank * workers + worker, self.world_size * workers
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, self.rank, worker]))
        if self.size is None:
            return rng, None
        return rng, self.size // shards + int(shard < self.size % shards)

    def _images(self, factors: np.ndarray) -> torch.Tensor:
        images = self.ds.render(factors)  # (m, H, W, c) uint8
        m, H, W, c = images.shape
        s = self.image_size
        if s is None or (s, s) == (H, W):
            return to_tensor(images)
        if H % s or W % s:
            return resize_images(to_tensor(images), s)
        # Area downsampling on the bytes (exact sums in uint16) before the float conversion: 4x less to convert.
        kh, kw = H // s, W // s
        rows = images[:, 0::kh].astype(np.uint16)  # (m, s, W, c); strided adds beat .sum(axis=(2, 4)) 10x
        for i in range(1, kh):
            rows += images[:, i::kh]
        sums = rows[:, :, 0::kw].copy()  # (m, s, s, c)
        for j in range(1, kw):
            sums += rows[:, :, j::kw]
        x = torch.from_numpy(np.ascontiguousarray(sums.transpose(0, 3, 1, 2)))  # (m, c, s, s)
        return x.to(torch.float32).div_(255.0 * kh * kw)

    def _chunk(self, m: int, rng: np.random.Generator) -> Item:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Item]:
        rng, count = self._shard()
        done = 0
        while count is None or done < count:
            m = self.chunk if count is None else min(self.chunk, count - done)
            batch = self._chunk(m, rng)
            done += m
            if self.batch_size is not None:
                yield batch
            else:
                for i in range(m):
                    yield {key: value[i] for key, value in batch.items()}

    def __len__(self) -> int:
        if self.size is None:
            raise TypeError("an endless stream (size=None) has no length")
        n = self.size // self.world_size + int(self.rank < self.size % self.world_size)
        return -(-n // self.batch_size) if self.batch_size else n


class ImageStream(_Stream):
    """Images of one split: items ``{"x": (c, h, w) float, "factors": (F,) long}``.

    Args:
        ds, sampler: the dataset and a ``TransitionSampler`` on it (its split and value weights are used).
        size: items per epoch over all ranks and workers (``None``: endless).
        image_size: output side (area downsampling for integer factors, e.g. 64 -> 32); ``None`` keeps it.
        batch_size: yield batches of this size instead of single items.
        seed, rank, world_size: the stream's seed and the DDP rank / world size.
        chunk: images rendered per call when yielding single items.
    """

    def _chunk(self, m: int, rng: np.random.Generator) -> Item:
        f = self.sampler.sample_images(m, rng)
        return {"x": self._images(f), "factors": torch.from_numpy(f)}


class PairStream(_Stream):
    """Transition pairs of one split: items ``{"x", "y": (c, h, w) float, "action": () long,
    "x_factors", "y_factors": (F,) long}``. Arguments as for ``ImageStream``."""

    def _chunk(self, m: int, rng: np.random.Generator) -> Item:
        xf, yf, a = self.sampler.sample_pairs(m, rng)
        images = self._images(np.concatenate([xf, yf]))  # (2m, c, h, w)
        return {"x": images[:m], "y": images[m:], "action": torch.from_numpy(a),
                "x_factors": torch.from_numpy(xf), "y_factors": torch.from_numpy(yf)}
