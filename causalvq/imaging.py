"""Image conversions between the datasets' uint8 arrays and the model's float tensors, plus grids and PNGs.

Axis legend: ``n``/``b`` images, ``C``/``c`` channels, ``H W`` height and width.
Datasets give ``uint8 (n, H, W, C)`` numpy arrays; models take float tensors ``(b, c, H, W)`` in [0, 1].
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(n, H, W, C)`` or ``(H, W, C)`` -> float32 tensor ``(n, C, H, W)`` in [0, 1]."""
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        images = images.cpu().numpy()
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        kind = images.dtype if isinstance(images, (np.ndarray, torch.Tensor)) else type(images).__name__
        raise TypeError(f"to_tensor expects a uint8 array (n, H, W, C) or (H, W, C), got {kind}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"to_tensor expects (n, H, W, C) or (H, W, C), got shape {images.shape}")
    # Transposing the bytes first is ~2x faster than permuting the float tensor.
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # (n, C, H, W) uint8
    return x.to(torch.float32).div_(255.0)


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float ``(n, C, H, W)`` or ``(C, H, W)`` in [0, 1] (clipped) -> uint8 ``(n, H, W, C)``, rounded.

    NaN has no pixel value (its cast to uint8 is undefined): it raises ``ValueError``.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        kind = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"to_uint8 expects a float tensor (n, C, H, W) or (C, H, W) in [0, 1], got {kind}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"to_uint8 expects (n, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
    x = images.detach().to("cpu", torch.float32)
    if x.isnan().any():
        raise ValueError("to_uint8: the images contain NaN")
    x = x.clamp(0.0, 1.0).mul(255.0).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # (n, H, W, C)


def resize_images(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize float ``(b, c, H, W)`` to ``(b, c, h, w)``: area averaging for integer down-factors, else
    antialiased bilinear. ``size`` is ``h = w`` or ``(h, w)``; the same size returns the input."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4:
        desc = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"resize_images expects a float tensor (b, c, H, W), got {desc}")
    pair = (size, size) if isinstance(size, numbers.Integral) else tuple(size) if isinstance(size, tuple | list) else ()
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"resize_images: size must be an int or a pair of ints (h, w), got {size!r}")
    h, w = int(pair[0]), int(pair[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"resize_images: size must be positive, got {size}")
    b, c, H, W = images.shape
    if (h, w) == (H, W):
        return images
    if H == 0 or W == 0:
        raise ValueError(f"resize_images: cannot resize empty images of size {H}x{W}")
    if b == 0 or c == 0:
        return images.new_zeros(b, c, h, w)
    if H % h == 0 and W % w == 0:
        return F.avg_pool2d(images, kernel_size=(H // h, W // w))
    # The CPU antialiased kernel has no half-precision version: compute in float32, return the input dtype.
    x = images if images.dtype in (torch.float32, torch.float64) else images.float()
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).to(images.dtype)


def center_crop_resize(images: torch.Tensor, crop: int = 148, size: int = 64) -> torch.Tensor:
    """The official transform, CenterCrop(crop) then Resize(size), on float ``(b, c, H, W)``.

    Faithful-behaviour switch for paper B9: cropping 148 px out of a smaller image zero-pads it (as torchvision's
    CenterCrop does), so a 64-px scene ends up ~28 px wide in a black frame. causalvq does not apply it by default.
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4:
        desc = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"center_crop_resize expects a float tensor (b, c, H, W), got {desc}")
    H, W = images.shape[-2:]
    top, left = int(round((H - crop) / 2.0)), int(round((W - crop) / 2.0))  # torchvision's rounding
    # Negative padding crops: F.pad handles both the crop and the zero-padding case.
    x = F.pad(images, (-left, -(W - crop - left), -top, -(H - crop - top)))  # (b, c, crop, crop)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def image_grid(images: np.ndarray, nrow: int = 8, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile uint8 ``(n, H, W, C)`` into one ``uint8 (rows·(H+pad)+pad, nrow·(W+pad)+pad, C)`` image,
    ``nrow`` images per row (a name kept from torchvision's ``make_grid``)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise TypeError(f"image_grid expects a uint8 array (n, H, W, C), got {desc}")
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (nrow, pad, pad_value)):
        raise TypeError(f"image_grid: nrow, pad and pad_value must be ints, got {nrow!r}, {pad!r}, {pad_value!r}")
    if nrow < 1 or pad < 0 or not 0 <= pad_value <= 255:
        raise ValueError(f"image_grid: nrow must be >= 1, pad >= 0 and pad_value in 0..255, got nrow={nrow}, "
                         f"pad={pad}, pad_value={pad_value}")
    n, H, W, C = images.shape
    cols = min(nrow, max(n, 1))
    rows = -(-n // cols)
    grid = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, C), pad_value, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        grid[y:y + H, x:x + W] = images[i]
    return grid


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write uint8 ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` as a PNG; returns the path."""
    from PIL import Image

    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"save_png expects a uint8 array (H, W[, C]), got {kind}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"save_png expects (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(p, format="PNG")
    return p
