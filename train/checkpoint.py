"""Resume checkpoints: the whole training state in one safetensors file, written atomically.

A resume file ``<out>/resume/stage<N>.safetensors`` holds

- tensors: ``model/<name>`` (the bare module's state dict), ``optim/<param index>/<name>`` (Adam's per-parameter
  state), ``rng/torch`` and ``rng/numpy`` (the global generators' states);
- metadata ``"train_state"``: JSON with the stage, the number of completed steps, the recipe, the optimiser's
  param groups, the scheduler's state dict and any non-tensor optimiser entries.

It is a safetensors file, so reading it never unpickles anything. Writes go to a temporary file in the same
folder, are flushed and fsynced, then ``os.replace``-d over the old file and the folder is fsynced: a crash at
any moment leaves either the old or the new checkpoint, never a torn one. The release checkpoint
(``save_pretrained``: ``config.json`` + ``model.safetensors``) is separate; see ``train.release``.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors

FORMAT = "causalvq-train-state/1"


def _file_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@dataclass
class TrainState:
    """Everything needed to continue a stage exactly where it stopped."""

    stage: int  # 1 or 2
    step: int  # completed optimiser steps
    recipe: dict[str, Any]  # Recipe.to_dict() of the run
    model: dict[str, torch.Tensor]  # bare module state dict
    optimizer: dict[str, Any]  # torch.optim.Adam.state_dict()
    scheduler: dict[str, Any]  # torch.optim.lr_scheduler.StepLR.state_dict()
    torch_rng: torch.Tensor | None = None  # torch.get_rng_state()
    numpy_rng: dict[str, Any] | None = None  # np.random.get_state(legacy=False)
    average: dict[str, torch.Tensor] | None = None  # B32: the weights' moving average (AveragedModel.state_dict())


# --- atomic files ---
def write_error(path: str | os.PathLike, err: Exception) -> OSError:
    """The error of a failed write, naming the file: "[Errno 28] No space left on device" alone does not."""
    errno = getattr(err, "errno", None)
    message = f"cannot write {path}: {getattr(err, 'strerror', None) or err}"
    return OSError(errno, message) if errno is not None else OSError(message)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a mix.

    Raises:
        OSError: the write failed (a full disk, a read-only folder); the message names ``path``, and the old
            file is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a kill mid-write (one writer
            stale.unlink(missing_ok=True)  # per file: rank 0); in a release folder it would be uploaded
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err) from err
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(path, err) from err
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensor_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Atomically write a safetensors file."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write_bytes(path, save_tensors(tensors, metadata=metadata))


def read_tensor_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file: ``(tensors, metadata)``; a torn or foreign file raises ``ValueError``."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read {str(path)!r}: {err}") from err


# --- train state ---
def save_state(path: str | os.PathLike, state: TrainState) -> Path:
    """Write a ``TrainState`` atomically (see the module docstring for the layout)."""
    tensors = {f"model/{k}": v for k, v in state.model.items()}
    optim_scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state.optimizer["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{name}"] = value
            else:
                optim_scalars.setdefault(str(index), {})[name] = value
    if state.torch_rng is not None:
        tensors["rng/torch"] = state.torch_rng
    if state.average is not None:
        tensors.update({f"average/{k}": v for k, v in state.average.items()})
    meta: dict[str, Any] = {
        "format": FORMAT, "stage": state.stage, "step": state.step, "recipe": state.recipe,
        "param_groups": state.optimizer["param_groups"], "optim_scalars": optim_scalars,
        "scheduler": state.scheduler,
    }
    if state.numpy_rng is not None:
        rng = dict(state.numpy_rng)
        tensors["rng/numpy"] = torch.from_numpy(np.asarray(rng.pop("state")["key"], dtype=np.int64))
        meta["numpy_rng"] = {**rng, "pos": int(state.numpy_rng["state"]["pos"])}
    return save_tensor_file(path, tensors, {"train_state": json.dumps(meta)})


def load_state(path: str | os.PathLike) -> TrainState:
    """Read a ``TrainState`` written by ``save_state``."""
    tensors, metadata = read_tensor_file(path)
    if "train_state" not in metadata:
        raise ValueError(f"{str(path)!r} is not a causalvq training state (no 'train_state' metadata)")
    meta = json.loads(metadata["train_state"])
    if meta.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} has format {meta.get('format')!r}, expected {FORMAT!r}")
    model = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    optim_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            optim_state.setdefault(int(index), {})[name] = value
    for index, entries in meta["optim_scalars"].items():
        optim_state.setdefault(int(index), {}).update(entries)
    numpy_rng = None
    if "numpy_rng" in meta:
        rng = dict(meta["numpy_rng"])
        pos = rng.pop("pos")
        numpy_rng = {**rng, "state": {"key": tensors["rng/numpy"].numpy().astype(np.uint32), "pos": pos}}
    average = {k.removeprefix("average/"): v for k, v in tensors.items() if k.startswith("average/")} or None
    return TrainState(stage=meta["stage"], step=meta["step"], recipe=meta["recipe"], model=model,
                      optimizer={"state": optim_state, "param_groups": meta["param_groups"]},
                      scheduler=meta["scheduler"], torch_rng=tensors.get("rng/torch"), numpy_rng=numpy_rng,
                      average=average)
