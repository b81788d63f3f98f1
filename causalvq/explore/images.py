"""Images a person brings: uploaded files decoded safely, any array or PIL image converted to the model input.

``read_image_file`` refuses what it cannot read, or what is too large, with a sentence (``InputError``) before
decoding more than the header; ``to_model_input`` takes any array (bool, int, float; ``(H, W)``, ``(H, W, C)``
or ``(C, H, W)``; 1–4 channels) to ``float (1, c, S, S)``; ``display_image`` gives an image as the page gets it.
``causalvq.imaging`` holds the dataset-side conversions these build on.

Axis legend: ``S`` model image side, ``C``/``c`` image channels, ``H W`` height and width.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from causalvq.imaging import resize_images, to_tensor

MAX_PIXELS = 40_000_000  # larger uploads are refused (a 40-megapixel image is far beyond any use here)
READ_SIDE = 2048  # a larger upload is box-averaged to at most this side while read (memory: MB, not GB)


class InputError(ValueError):
    """Bad user input (an image, a slider value, a node); the message is a sentence a person understands (the app
    shows it as ``gr.Error``). Raised here and by the ``Explorer``."""


def read_image_file(path: str | os.PathLike, max_side: int = READ_SIDE) -> np.ndarray:
    """Decode an image file (first frame, EXIF orientation applied) to a numpy array; ``InputError`` if unreadable.

    The pixel count is checked from the header before anything is decoded (at most ``MAX_PIXELS``). An image
    longer than ``max_side`` is box-averaged by the smallest integer factor that brings it to ``max_side`` right
    after decoding, so a 40-megapixel upload costs the decoded image (~160 MB), not ~1 GB of float copies in
    ``to_model_input``; the model, which sees a few hundred pixels a side at most, sees the same input to
    within a grey level.
    """
    name = Path(path).name
    try:
        with Image.open(path) as img:
            img.seek(0)
            if img.width * img.height > MAX_PIXELS:
                raise InputError(f"{name} is {img.width}×{img.height} pixels, too large for this explorer "
                                 "(at most 40 megapixels).")
            ImageOps.exif_transpose(img, in_place=True)  # in place: a copy would double the memory
            return _reduced_array(img, max_side)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"The file {name} could not be found; please upload it again.") from None
    except Image.DecompressionBombError:  # PIL's own limit (~179 megapixels), hit while the header is read
        raise InputError(f"{name} is far too large for this explorer (at most 40 megapixels).") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{name} is not an image this explorer can read (it may be corrupt or of another "
                         "type); please upload a PNG, JPEG, WebP, BMP, GIF or TIFF image.") from err


def _reduced_array(img: Image.Image, max_side: int) -> np.ndarray:
    """``pil_to_array(img)``, box-averaged first by the smallest integer factor that brings its long side to
    ``max_side`` (palette and 1-bit images are expanded first: averaging palette indices means nothing)."""
    factor = -(-max(img.size) // max_side)
    if factor <= 1:
        return pil_to_array(img)
    if img.mode.startswith("I;16"):  # 16-bit greyscale: averaged as 32-bit, kept uint16 (the dtype sets the scale)
        return np.asarray(img.convert("I").reduce(factor)).astype(np.uint16)
    if img.mode in ("1", "P", "PA") or "transparency" in img.info:
        img = img.convert("L" if img.mode == "1" else "RGBA")
    return pil_to_array(img.reduce(factor))


def pil_to_array(img: Image.Image) -> np.ndarray:
    """A PIL image in any mode as ``(H, W)`` / ``(H, W, C)`` numpy (transparency kept as an alpha channel)."""
    if img.mode in ("RGBA", "LA"):
        return np.asarray(img)
    if img.mode == "P" or "transparency" in img.info:
        return np.asarray(img.convert("RGBA"))
    if img.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F", "RGB"):
        return np.asarray(img)
    return np.asarray(img.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, PA, ...


def to_uint8_image(image: np.ndarray | Image.Image) -> np.ndarray:
    """Any image array (bool, int, float; ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``; 1–4 channels) → uint8
    ``(H, W, 1 | 3)``, alpha composited onto white. Floats up to 1 are read as [0, 1], else as [0, 255]."""
    if isinstance(image, Image.Image):
        image = pil_to_array(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise InputError(f"Expected an image, got {type(image).__name__}.")
    a = image
    if a.ndim == 3 and a.shape[-1] > 4 and a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4) or min(a.shape[:2]) < 1:
        raise InputError(f"Expected an image of shape (H, W) or (H, W, C) with 1 to 4 channels, got {a.shape}.")
    if a.dtype == np.bool_:
        a = a.astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InputError("The image contains NaN or infinite values.")
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        a = np.clip(a.astype(np.float32) * scale, 0, 255)
    elif a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"Unsupported image data type {a.dtype}.")
        top = 65535.0 if a.dtype == np.uint16 or a.max(initial=0) > 255 else 255.0  # 16-bit, else 8-bit
        a = np.clip(a.astype(np.float64) * (255.0 / top), 0, 255)
    a = a.astype(np.float32)
    if a.shape[-1] in (2, 4):  # composite onto white
        alpha = a[..., -1:] / 255.0
        a = a[..., :-1] * alpha + 255.0 * (1.0 - alpha)
    return np.round(a).astype(np.uint8)


def to_model_input(image: np.ndarray | Image.Image, image_size: int, channels: int) -> torch.Tensor:
    """Any image → the model input ``float (1, channels, image_size, image_size)`` in [0, 1].

    Centre-crops to a square, resizes (area averaging for integer factors, antialiased bilinear otherwise) and
    converts RGB ↔ greyscale (ITU-R 601 luma) to the model's channel count.
    """
    a = to_uint8_image(image)  # (H, W, 1 | 3)
    h, w = a.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = to_tensor(a[top:top + side, left:left + side])  # (1, C, side, side)
    x = resize_images(x, image_size)
    if x.shape[1] == 3 and channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x.clamp(0, 1).contiguous()


def display_image(image: np.ndarray) -> np.ndarray:
    """A uint8 image as the page gets it: its own pixels, greyscale as ``(H, W)``.

    The page enlarges it in the browser (CSS ``image-rendering: pixelated``, the app's ``pixels`` class), so the
    server neither upscales, hashes nor PNG-encodes 16 times the pixels of a 64-px image, and a download is the
    model's own image.
    """
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
