"""Devices and torchrun: one process per device, NCCL on CUDA and Gloo on CPU, rank 0 writes.

``torchrun --nproc_per_node N -m train ...`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with
``WORLD_SIZE > 1`` ``setup`` initialises ``torch.distributed`` and the loop wraps the model in
``DistributedDataParallel``. Without torchrun everything runs in one process and nothing here communicates.
"""

from __future__ import annotations

import gc
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class DeviceError(RuntimeError):
    """The requested device is not available."""


@dataclass(frozen=True)
class Context:
    """Where this process runs and who it is among the others."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs and releases."""
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device: str = "auto") -> Context:
    """Read the torchrun environment, pick the device and, with several processes, join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return Context(device=dev, rank=rank, world_size=world_size, local_rank=local_rank)


def teardown(ctx: Context) -> None:
    """Leave the process group while the interpreter is fully alive.

    A ``DistributedDataParallel`` wrapper sits in reference cycles (its reducer's hooks), so it can outlive the
    stage that made it and keep the Gloo process group alive until interpreter shutdown, where destroying the
    group's worker threads aborts the process (SIGABRT, "terminate called without an active exception"), after
    every file has been written. Collecting the cycles first lets the group go here, in order.
    """
    if ctx.distributed and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def all_mean(ctx: Context, values: torch.Tensor) -> torch.Tensor:
    """Mean over processes of a tensor (identity in one process); NaN anywhere makes it NaN."""
    if not ctx.distributed:
        return values
    out = values.detach().clone()
    dist.all_reduce(out)
    return out / ctx.world_size


def gather_objects(ctx: Context, obj: object) -> list[object]:
    """Every process's ``obj``, in rank order (``[obj]`` in one process)."""
    if not ctx.distributed:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: Context, obj: object) -> object:
    """Rank 0's ``obj`` on every process."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def tensor_digest(tensors: dict[str, torch.Tensor] | list[torch.Tensor] | torch.Tensor) -> str:
    """Short SHA-256 of tensors' bytes (to compare data or weights across processes)."""
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    items = sorted(tensors.items()) if isinstance(tensors, dict) else enumerate(tensors)
    h = hashlib.sha256()
    for name, t in items:
        h.update(str(name).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
