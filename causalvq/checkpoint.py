"""Release checkpoints: a folder (or Hub repo) holding ``config.json`` + ``model.safetensors``.

``CausalVQ.from_pretrained`` / ``save_pretrained`` are the public face; this module reads and writes the two files.
Weights load strictly (``strict=True``, keys never renamed), and only after the header of the weights file has
been checked against the config's shapes, so a mismatch is an error that names the tensor, not a crash or an
allocation of an absurd model.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from causalvq.config import ModelConfig

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name"; anything else is taken for a local path

Model = TypeVar("Model", bound=nn.Module)


def read_config(folder: str | os.PathLike) -> ModelConfig:
    """Read and validate ``config.json`` from a checkpoint folder."""
    path = Path(folder) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint folder {str(folder)!r} has no {CONFIG_NAME}") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    return ModelConfig.from_dict(data)


def load_model(cls: type[Model], config: ModelConfig, weights: str | os.PathLike,
               map_location: str = "cpu") -> Model:
    """``cls(config)`` with the weights of ``weights`` (a ``model.safetensors``), in eval mode.

    The shapes are first compared on the meta device (nothing allocated), so a ``config.json`` with absurd sizes
    and a small weights file fails with the mismatching tensor instead of allocating the absurd model.
    """
    with torch.device("meta"):
        shell = cls(config)
    _check_shapes(weights, shell)
    model = cls(config)
    load_weights(model, weights, map_location)
    return model.eval()


def load_weights(model: nn.Module, path: str | os.PathLike, map_location: str = "cpu") -> None:
    """Load a ``model.safetensors`` into ``model`` strictly; a mismatch names the tensor and both shapes."""
    _check_shapes(path, model)
    try:
        state = load_file(str(path), device=map_location)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"cannot read weights {str(path)!r}: {err}") from err
    model.load_state_dict(state, strict=True)


def save_weights(model: nn.Module, folder: str | os.PathLike) -> None:
    """Write the bare module's state as ``folder/model.safetensors``."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(Path(folder) / WEIGHTS_NAME), metadata={"format": "pt"})


def _check_shapes(path: str | os.PathLike, model: nn.Module) -> None:
    """Raise ``ValueError`` naming the first missing, unexpected or mis-shaped tensor of the file at ``path``."""
    found, expected = _header_shapes(path), {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(f"weights {str(path)!r} do not match this config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for name, shape in found.items():
        if shape != expected[name]:
            raise ValueError(f"weights {str(path)!r} do not match this config: tensor {name!r} has shape "
                             f"{shape}, the config gives {expected[name]}")


def _header_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the header of a ``.safetensors`` file (validated by safetensors, data not read)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"cannot read weights {str(path)!r}: {err}") from err
