"""The exploration API behind the Gradio explorer (``app.py``): every number and picture the app shows.

An ``Explorer`` wraps one loaded ``CausalVQ`` and, when one matches the checkpoint's factors, the procedural
dataset it was trained on. Its methods are plain functions of images and code grids that return numpy images,
matplotlib figures or frozen dataclasses; ``app.py`` only wires them to widgets. Nothing here imports gradio.

Panels and the methods behind them:

1. input: ``load_image`` (any array / PIL image / file, converted to the model input), ``sample`` (from the
   dataset, random or by factor values), ``domain_check`` (reconstruction error against in-domain samples);
2. codes: ``draw_code_grid`` (one panel per codebook, cells coloured by code, index written in the cell);
3. atomic interventions: ``apply_sliders`` — slider ``s_f`` applies action ``"<factor f> +"`` (``s_f > 0``) or
   ``"<factor f> -"`` (``s_f < 0``) ``|s_f|`` times, factors composed in factor order (f = 0 first);
4. causal graph: ``graph``, ``intervened_nodes``, ``graph_heatmap``, ``graph_network``; hard intervention
   ``do`` (``model.do``: do(node = code), then one no-action pass of the learned graph);
5. action retrieval: ``retrieve`` and ``retrieval_figure``;
6. traversals: ``traverse``, ``traversal_grid``, ``save_traversal`` (PNG and animated GIF).

Axis legend: ``S`` model image side, ``C`` image channels, ``k`` codebooks, ``h w`` latent grid, ``n`` nodes
(L = K·h·w, node i = k·h·w + y·w + x), ``v`` codebook size, ``f`` factors (F), ``a`` actions (A = 2F).
Images are ``uint8 (S, S, C)`` numpy arrays unless stated; code grids are long tensors ``(1, k, h, w)``.
"""

from __future__ import annotations

import colorsys
import concurrent.futures
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont, ImageOps

from causalvq.config import ModelConfig
from causalvq.data import DSprites, FactorDataset, Shapes3D
from causalvq.imaging import image_grid, resize_images, to_tensor, to_uint8
from causalvq.model import CONFIG_NAME, CausalVQ

ENV_CHECKPOINT = "CAUSALVQ_CHECKPOINT"  # checkpoint folder or Hub repo id the app opens with
ENV_CHOICES = "CAUSALVQ_CHECKPOINTS"  # extra entries of the checkpoint dropdown, comma-separated
ENV_HUB_TIMEOUT = "CAUSALVQ_HUB_TIMEOUT"  # seconds to wait for a Hub download before falling back (default 10)
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "causalvq-shapes3d"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
PROCEDURAL_DATASETS: tuple[type[FactorDataset], ...] = (Shapes3D, DSprites)
MAX_PIXELS = 40_000_000  # larger uploads are refused (a 40-megapixel image is far beyond any use here)
READ_SIDE = 2048  # a larger upload is box-averaged to at most this side while read (memory: MB, not GB)
DOMAIN_FACTOR = 3.0  # an input is "far from the training domain" above DOMAIN_FACTOR × the in-domain 95th pct


class InputError(ValueError):
    """Bad user input; the message is a sentence a person understands (the app shows it as ``gr.Error``)."""


# --- checkpoints -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadResult:
    model: CausalVQ | None  # None when nothing could be loaded
    source: str  # what was loaded: a folder or a repo id ("" when nothing)
    notice: str  # "" when the requested checkpoint loaded, else what happened, for the person reading
    error: str = ""  # why the requested checkpoint failed to load ("" when it loaded or none was requested)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _load_one(choice: str, timeout: float) -> CausalVQ:
    """Load a folder, or a repo id through the Hub cache, giving up after ``timeout`` seconds of network."""
    if Path(choice).is_dir() or _hub_offline():
        return CausalVQ.from_pretrained(choice)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(CausalVQ.from_pretrained, choice)
    pool.shutdown(wait=False)  # a download that outlives the timeout finishes (or fails) in the background
    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"no answer from the Hub within {timeout:g} s") from None


def load_model(choice: str | None, fallback: Path | None = SHIPPED_CHECKPOINT,
               timeout: float | None = None) -> LoadResult:
    """Load ``choice`` (folder or Hub repo id), else the shipped checkpoint, with a notice saying what happened.

    Never waits on network retries: with ``HF_HUB_OFFLINE=1`` a repo id resolves from the local cache only, and
    otherwise a download that takes longer than ``timeout`` (env ``CAUSALVQ_HUB_TIMEOUT``, default 10 s) is
    abandoned for the fallback.
    """
    if timeout is None:
        timeout = float(os.environ.get(ENV_HUB_TIMEOUT, "10"))
    notice = error = ""
    if choice:
        try:
            return LoadResult(_load_one(str(choice), timeout), str(choice), "")
        except Exception as err:  # any failure falls back; the notice says why
            error = (str(err).splitlines()[0] if str(err) else type(err).__name__)[:200]
            notice = f"Could not load checkpoint `{choice}` ({error})."
    if fallback is not None and (Path(fallback) / CONFIG_NAME).is_file():
        if choice and Path(choice).resolve() == Path(fallback).resolve():
            return LoadResult(None, "", notice, error)
        try:
            model = CausalVQ.from_pretrained(fallback)
        except Exception as err:
            return LoadResult(None, "", f"{notice} The shipped checkpoint `{fallback}` is unreadable: {err}".strip(),
                              error)
        return LoadResult(model, str(fallback), f"{notice} Showing the shipped checkpoint instead.".strip()
                          if notice else "", error)
    missing = f"the shipped one (`{fallback}`) is missing" if fallback is not None else "there is no fallback"
    return LoadResult(None, "", (f"{notice} " if notice else "") + (
        f"No checkpoint found: {missing}. Set {ENV_CHECKPOINT} to a checkpoint folder (config.json + "
        "model.safetensors) or a Hub repo id and restart the app."), error)


def checkpoint_choices() -> list[str]:
    """Entries of the checkpoint dropdown: ``$CAUSALVQ_CHECKPOINT``, the shipped folder, ``$CAUSALVQ_CHECKPOINTS``."""
    out = [os.environ.get(ENV_CHECKPOINT, "")]
    if (SHIPPED_CHECKPOINT / CONFIG_NAME).is_file():
        out.append(str(SHIPPED_CHECKPOINT))
    out += os.environ.get(ENV_CHOICES, "").split(",")
    return list(dict.fromkeys(c.strip() for c in out if c.strip()))


def find_dataset(config: ModelConfig) -> FactorDataset | None:
    """The procedural dataset whose factor names and sizes are the checkpoint's, or ``None``."""
    for cls in PROCEDURAL_DATASETS:
        if tuple(cls.factor_names) == config.factor_names and tuple(cls.factor_sizes) == config.factor_sizes:
            return cls()
    return None


# --- images ----------------------------------------------------------------------------------------------------
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


def display_image(image: np.ndarray, size: int = 256) -> np.ndarray:
    """Nearest-neighbour upscale of a small uint8 image to at least ``size`` pixels; greyscale as ``(H, W)``."""
    factor = max(1, -(-size // max(image.shape[:2])))
    out = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    return out[..., 0] if out.ndim == 3 and out.shape[-1] == 1 else out


# --- code grids ------------------------------------------------------------------------------------------------
def code_colors(codebook_size: int) -> np.ndarray:
    """A fixed colour per code, neighbouring indices far apart on the hue circle: ``uint8 (v, 3)``."""
    rgb = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.45 + 0.3 * (i % 3) / 2, 0.95 - 0.2 * (i % 2))
           for i in range(codebook_size)]
    return np.round(np.asarray(rgb) * 255).astype(np.uint8).reshape(codebook_size, 3)


_FONTS: dict[int, ImageFont.ImageFont] = {}


def _font(size: int) -> ImageFont.ImageFont:
    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.load_default(size=size)
        except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def draw_code_grid(codes: torch.Tensor | np.ndarray, codebook_size: int, changed: np.ndarray | None = None,
                   marked: np.ndarray | None = None, cell: int | None = None) -> np.ndarray:
    """Picture of code indices: one panel per codebook, each cell coloured by its code with the index in it.

    Args:
        codes: `(k, h, w)` or `(1, k, h, w)` code indices.
        codebook_size: v, for the colours.
        changed: optional bool `(n,)`: nodes drawn with a thick black-and-white outline.
        marked: optional bool `(n,)`: nodes with a black triangle in the top-left corner (intervened on).
        cell: cell side in pixels (default: panels about 320 px wide).

    Returns:
        ``uint8 (H, W, 3)``.
    """
    c = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes).astype(np.int64)
    c = c.reshape(c.shape[-3:])  # (k, h, w)
    k, h, w = c.shape
    cell = cell or int(np.clip(min(320 // w, 720 // (k * w)), 16, 48))  # about 320 px a panel, 720 in all
    gap, title = cell // 2, (max(14, cell // 2) if k > 1 else 0)
    colors = code_colors(codebook_size)
    width = k * w * cell + (k - 1) * gap
    img = Image.new("RGB", (width, title + h * cell), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font, small = _font(max(9, int(cell * 0.42))), _font(max(9, title - 4))
    changed = np.zeros(k * h * w, bool) if changed is None else np.asarray(changed, bool).reshape(-1)
    marked = np.zeros(k * h * w, bool) if marked is None else np.asarray(marked, bool).reshape(-1)
    for q in range(k):
        x0 = q * (w * cell + gap)
        if k > 1:
            draw.text((x0, 1), f"codebook {q}", fill=(60, 60, 60), font=small)
        for y in range(h):
            for x in range(w):
                node = q * h * w + y * w + x
                code = int(c[q, y, x])
                box = (x0 + x * cell, title + y * cell, x0 + (x + 1) * cell - 1, title + (y + 1) * cell - 1)
                rgb = tuple(int(v) for v in colors[code % codebook_size])
                draw.rectangle(box, fill=rgb, outline=(255, 255, 255))
                luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
                ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
                draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), str(code), fill=ink, font=font,
                          anchor="mm")
                if changed[node]:
                    t = max(2, cell // 12)
                    draw.rectangle(box, outline=(0, 0, 0), width=t)
                    inner = (box[0] + t, box[1] + t, box[2] - t, box[3] - t)
                    draw.rectangle(inner, outline=(255, 255, 255), width=max(1, t // 2))
                if marked[node]:
                    s = max(5, cell // 3)
                    draw.polygon([(box[0], box[1]), (box[0] + s, box[1]), (box[0], box[1] + s)], fill=(0, 0, 0),
                                 outline=(255, 255, 255))
    return np.asarray(img)


def node_label(node: int, config: ModelConfig) -> str:
    """``"node 12 (codebook 0, row 1, col 4)"``."""
    g = config.grid_size
    q, rest = divmod(node, g * g)
    y, x = divmod(rest, g)
    return f"node {node} (codebook {q}, row {y}, col {x})"


# --- results ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DomainCheck:
    typical: float  # median per-pixel MSE of the reconstruction on in-domain samples
    threshold: float  # above this an input is flagged as far from the training domain


@dataclass(frozen=True)
class LoadedInput:
    """An input as the model sees it, with everything the panels reuse (kept in the app's ``gr.State``)."""

    image: np.ndarray  # uint8 (S, S, C), the model input
    codes: torch.Tensor  # long (1, k, h, w)
    reconstruction: np.ndarray  # uint8 (S, S, C)
    error: float  # per-pixel MSE between input and reconstruction, in [0, 1] units
    factors: tuple[int, ...] | None  # dataset factors when sampled, else None
    notice: str  # "" or a warning (far from the training domain, unknown domain)


@dataclass(frozen=True)
class SliderResult:
    image: np.ndarray  # uint8 (S, S, C), decoded codes after all slider actions
    codes: torch.Tensor  # long (1, k, h, w)
    changed: np.ndarray  # bool (n,), codes that differ from the input's
    intervened: np.ndarray  # bool (n,), nodes any applied action intervened on
    actions: tuple[int, ...]  # the applied action sequence, in order


@dataclass(frozen=True)
class GroundTruth:
    image: np.ndarray  # uint8 (S, S, C): the dataset image at the moved factors
    factors: tuple[int, ...]  # the factors rendered (clipped into range)
    clipped: bool  # whether a slider went past the end of its factor


@dataclass(frozen=True)
class DoView:
    image: np.ndarray  # uint8 (S, S, C) after do(node = code) and propagation
    codes: torch.Tensor  # long (1, k, h, w)
    changed: np.ndarray  # bool (n,), nodes other than ``node`` whose code changed
    node: int
    code: int


@dataclass(frozen=True)
class RetrievalView:
    ranking: tuple[tuple[str, float], ...]  # (action name, p(a | x, y)), most probable first
    action: int  # the most probable action
    intervened: np.ndarray  # bool (n,), nodes the most probable action intervenes on, on x's codes
    changed: np.ndarray  # bool (n,), nodes whose code differs between x and y
    codes_x: torch.Tensor  # long (1, k, h, w)
    codes_y: torch.Tensor  # long (1, k, h, w)


@dataclass(frozen=True)
class Traversal:
    images: np.ndarray  # uint8 (F, 2·steps + 1, S, S, C), column ``steps`` is the reconstruction
    steps: int
    factor_names: tuple[str, ...]


# --- the explorer ----------------------------------------------------------------------------------------------
class Explorer:
    """A loaded CausalVQ, its matching procedural dataset, and the computations behind each panel.

    Args:
        model: the loaded model (put in eval mode here).
        dataset: the procedural dataset to sample from; ``None`` looks for one matching the checkpoint's factor
            names (``find_dataset``); pass ``False`` to disable sampling.
        source: where the model came from (shown in the app).
        notice: a message about loading to show in the app ("" for none).
        calibration_samples: in-domain samples measured for the out-of-domain notice.
        cache_size: code grids kept by the slider cache (one per applied action prefix).
    """

    def __init__(self, model: CausalVQ, dataset: FactorDataset | None | bool = None, source: str = "",
                 notice: str = "", calibration_samples: int = 32, cache_size: int = 4096) -> None:
        self.model = model.eval()
        cfg = model.config
        if dataset is None:
            dataset = find_dataset(cfg)
        self.dataset: FactorDataset | None = dataset or None
        self.source, self.notice = source, notice
        self.calibration_samples = calibration_samples
        self._domain: DomainCheck | None = None
        self._cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._domain_lock = threading.Lock()
        if self.dataset is None and dataset is not False:
            self.notice = (f"{notice} " if notice else "") + (
                "No procedural dataset has this checkpoint's factors "
                f"({', '.join(cfg.factor_names)}): sampling is disabled, upload an image instead.")

    @classmethod
    def from_checkpoint(cls, choice: str | None = None, fallback: Path | None = SHIPPED_CHECKPOINT,
                        calibration_samples: int = 32) -> Explorer | None:
        """Load ``choice`` (default ``$CAUSALVQ_CHECKPOINT``) or the shipped checkpoint; ``None`` if neither."""
        loaded = load_model(choice if choice is not None else os.environ.get(ENV_CHECKPOINT), fallback)
        if loaded.model is None:
            return None
        return cls(loaded.model, source=loaded.source, notice=loaded.notice, calibration_samples=calibration_samples)

    # --- names and sizes ---
    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def factor_names(self) -> tuple[str, ...]:
        return self.config.factor_names

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.config.action_names

    @property
    def max_steps(self) -> tuple[int, ...]:
        """Slider range k_f per factor: enough steps to cross the whole factor (size − 1)."""
        return tuple(s - 1 for s in self.config.factor_sizes)

    def factor_value_labels(self, f: int) -> list[str]:
        """Readable labels of factor ``f``'s values (``"2: sphere"``, ``"3: 0.30"``) for the sampling menus."""
        size = self.config.factor_sizes[f]
        name = self.factor_names[f]
        ds = self.dataset
        if ds is not None and name == "shape" and hasattr(ds, "shape_names"):
            names = ds.shape_names
            return [f"{i}: {names[i]}" if i < len(names) else str(i) for i in range(size)]
        values = getattr(ds, "factor_values", None)
        if values is not None:
            return [f"{i}: {float(values[f][i]):.3g}" for i in range(size)]
        return [str(i) for i in range(size)]

    # --- input ---
    def domain_check(self) -> DomainCheck | None:
        """Reconstruction error on in-domain samples (computed once, lazily); ``None`` without a dataset."""
        if self.dataset is None:
            return None
        with self._domain_lock:
            if self._domain is None:
                rng = np.random.default_rng(0)
                factors = self.dataset.sample_factors(self.calibration_samples, rng)
                x = self._prepare(self.dataset.render(factors))
                with torch.inference_mode():
                    err = ((self.model.reconstruct(x).image - x) ** 2).mean((1, 2, 3)).numpy()
                q95 = float(np.quantile(err, 0.95))
                self._domain = DomainCheck(typical=float(np.median(err)), threshold=max(DOMAIN_FACTOR * q95, 1e-4))
        return self._domain

    def _prepare(self, images: np.ndarray) -> torch.Tensor:
        """uint8 dataset images `(n, H, W, C)` → model input `(n, c, S, S)`."""
        cfg = self.config
        return torch.cat([to_model_input(im, cfg.image_size, cfg.in_channels) for im in images])

    def load_image(self, image: np.ndarray | Image.Image | str | os.PathLike,
                   factors: Sequence[int] | None = None) -> LoadedInput:
        """Convert any image (array, PIL image, or file path) to the model input, encode and reconstruct it.

        Raises:
            InputError: unreadable file, or an array that is not an image.
        """
        if isinstance(image, (str, os.PathLike)):
            image = read_image_file(image)
        cfg = self.config
        x = to_model_input(image, cfg.image_size, cfg.in_channels)  # (1, c, S, S)
        with torch.inference_mode():
            rec = self.model.reconstruct(x)
            error = float(((rec.image - x) ** 2).mean())
        notice = ""
        check = self.domain_check() if factors is None else None
        if check is not None and error > check.threshold:
            notice = (f"This image looks far from the training domain: its reconstruction error is {error:.4f}, "
                      f"against {check.typical:.4f} on typical {self.dataset.name} samples (threshold "
                      f"{check.threshold:.4f}). Interventions on it may not mean much.")
        elif self.dataset is None and factors is None:
            notice = "No in-domain dataset for this checkpoint: cannot say whether this image is in its domain."
        return LoadedInput(image=to_uint8(x)[0], codes=rec.codes, reconstruction=to_uint8(rec.image)[0],
                           error=error, factors=None if factors is None else tuple(int(v) for v in factors),
                           notice=notice)

    def sample(self, factors: Sequence[int] | None = None, seed: int | None = None) -> LoadedInput:
        """Render one dataset image, at ``factors`` or at random (``seed``), and load it."""
        if self.dataset is None:
            raise InputError("Sampling is disabled: no procedural dataset matches this checkpoint's factors.")
        if factors is None:
            factors = self.dataset.sample_factors(1, np.random.default_rng(seed))[0]
        try:
            f = self.dataset.check_factors(np.asarray([factors]))
        except ValueError as err:
            raise InputError(f"Invalid factor values: {err}") from None
        return self.load_image(self.dataset.render(f)[0], factors=f[0].tolist())

    # --- atomic interventions ---
    def slider_actions(self, steps: Sequence[int]) -> tuple[int, ...]:
        """The action sequence of slider values: factor order, ``|s_f|`` times ``f + F·(s_f < 0)`` each.

        Raises:
            InputError: wrong number of sliders, non-integer, or out of the range ±k_f.
        """
        F = self.config.num_factors
        if len(steps) != F:
            raise InputError(f"Expected {F} slider values ({', '.join(self.factor_names)}), got {len(steps)}.")
        out: list[int] = []
        for f, s in enumerate(steps):
            if s is None or float(s) != int(float(s)):
                raise InputError(f"The slider for {self.factor_names[f]} must be a whole number, got {s}.")
            s = int(float(s))
            if abs(s) > self.max_steps[f]:
                raise InputError(f"The slider for {self.factor_names[f]} goes from {-self.max_steps[f]} to "
                                 f"{self.max_steps[f]}, got {s}.")
            out += [f + F * int(s < 0)] * abs(s)
        return tuple(out)

    @torch.inference_mode()
    def apply_actions(self, codes: torch.Tensor, actions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply an action sequence to code grids `(1, k, h, w)`: the codes and the bool `(1, n)` intervened mask.

        Every prefix of the sequence is cached (keyed on the input codes), so moving one slider by one step
        costs one transition.
        """
        base = codes.cpu().numpy().tobytes()
        actions = tuple(int(a) for a in actions)
        start, cur = 0, (codes, torch.zeros(codes.shape[0], self.config.num_nodes, dtype=torch.bool))
        with self._lock:
            for t in range(len(actions), 0, -1):
                hit = self._cache.get((base, actions[:t]))
                if hit is not None:
                    self._cache.move_to_end((base, actions[:t]))
                    start, cur = t, hit
                    break
        c, mask = cur
        for t in range(start, len(actions)):
            tr = self.model.transition_codes(c, torch.tensor([actions[t]]))
            c, mask = tr.codes, mask | tr.mask
            with self._lock:
                self._cache[(base, actions[:t + 1])] = (c, mask)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return c, mask

    @torch.inference_mode()
    def apply_sliders(self, codes: torch.Tensor, steps: Sequence[int]) -> SliderResult:
        """The slider panel: compose all sliders (factor order) on ``codes`` and decode."""
        actions = self.slider_actions(steps)
        out, mask = self.apply_actions(codes, actions)
        image = to_uint8(self.model.decode_codes(out))[0]
        changed = (self.model.flatten_codes(out) != self.model.flatten_codes(codes))[0].numpy()
        return SliderResult(image=image, codes=out, changed=changed, intervened=mask[0].numpy(), actions=actions)

    def ground_truth(self, factors: Sequence[int], steps: Sequence[int]) -> GroundTruth | None:
        """The dataset image with each factor moved by its slider (clipped into range); ``None`` without one."""
        if self.dataset is None:
            return None
        self.slider_actions(steps)  # validates
        f = np.asarray(factors, dtype=np.int64) + np.asarray([int(float(s)) for s in steps])
        clipped = np.clip(f, 0, np.asarray(self.config.factor_sizes) - 1)
        image = to_uint8(self._prepare(self.dataset.render(clipped[None])))[0]
        return GroundTruth(image=image, factors=tuple(int(v) for v in clipped), clipped=bool((f != clipped).any()))

    # --- causal graph ---
    def graph(self, action: int | None = None, codes: torch.Tensor | None = None) -> np.ndarray:
        """Learned adjacency ``float (n, n)`` (row = source) for no action or ``action``; averaged over all
        constant code grids, or for ``codes`` `(1, k, h, w)` when given."""
        self._check_action(action)
        with torch.inference_mode():
            return self.model.causal_graph(action, codes).adjacency.numpy()

    def intervened_nodes(self, action: int, codes: torch.Tensor | None = None) -> np.ndarray:
        """bool `(n,)`: nodes ``action`` intervenes on for ``codes`` (or, without codes, on average over the
        constant code grids, probability > 0.5)."""
        self._check_action(action)
        v = self.config.codebook_size
        if codes is None:
            codes = self.model.unflatten_codes(torch.arange(v)[:, None].expand(v, self.config.num_nodes))
        with torch.inference_mode():
            p = self.model.intervention_probs(codes, torch.full((codes.shape[0],), action))
        return (p.mean(0) > 0.5).numpy()

    def _check_action(self, action: int | None) -> None:
        if action is not None and not 0 <= action < self.config.num_actions:
            raise InputError(f"Unknown action {action}: choose one of {', '.join(self.action_names)}.")

    def graph_heatmap(self, adjacency: np.ndarray, marked: np.ndarray | None = None, title: str = "") -> Figure:
        """Heat map of the adjacency (row = source, column = target); marked nodes get red ticks on both axes."""
        n = adjacency.shape[0]
        fig = Figure(figsize=(5.2, 4.4), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        im = ax.imshow(adjacency, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, label="edge probability")
        ax.set_xlabel("target node")
        ax.set_ylabel("source node")
        hw = self.config.grid_size ** 2
        for b in range(hw, n, hw):  # codebook boundaries
            ax.axhline(b - 0.5, color="white", lw=0.8)
            ax.axvline(b - 0.5, color="white", lw=0.8)
        if marked is not None and marked.any():
            idx = np.flatnonzero(marked)
            ax.plot(idx, np.full(len(idx), n - 0.5), "r^", ms=5, clip_on=False)
            ax.plot(np.full(len(idx), -0.5), idx, "r>", ms=5, clip_on=False)
        ax.set_title(title or "learned adjacency", fontsize=10)
        return fig

    def graph_network(self, adjacency: np.ndarray, threshold: float = 0.5, marked: np.ndarray | None = None,
                      codes: torch.Tensor | None = None, max_edges: int = 600, title: str = "") -> Figure:
        """Node–link drawing on the code grid: an arrow source → target for each edge above ``threshold``
        (the ``max_edges`` strongest), opacity = probability; marked nodes circled in red."""
        cfg = self.config
        g, k, n = cfg.grid_size, cfg.num_codebooks, cfg.num_nodes
        node = np.arange(n)
        q, rest = np.divmod(node, g * g)
        ys, xs = np.divmod(rest, g)
        px, py = xs + q * (g + 1.5), ys.astype(float)  # codebooks side by side
        adj = np.array(adjacency, dtype=np.float64)
        np.fill_diagonal(adj, 0.0)
        src, dst = np.nonzero(adj > threshold)
        w = adj[src, dst]
        order = np.argsort(-w)[:max_edges]
        src, dst, w = src[order], dst[order], w[order]
        fig = Figure(figsize=(min(9.0, max(4.5, 2.6 * k + 2.0)), 4.4), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        if len(src):
            colors = np.zeros((len(w), 4))
            colors[:, 2], colors[:, 3] = 0.55, 0.15 + 0.75 * w
            ax.quiver(px[src], py[src], px[dst] - px[src], py[dst] - py[src], angles="xy", scale_units="xy",
                      scale=1.0, color=colors, width=0.004, headwidth=4, headlength=5, zorder=1)
        if codes is not None:
            face = code_colors(cfg.codebook_size)[codes.reshape(-1).cpu().numpy()] / 255.0
        else:
            face = np.full((n, 3), 0.85)
        ax.scatter(px, py, s=120, c=face, edgecolors="0.3", linewidths=0.6, zorder=2)
        if marked is not None and marked.any():
            ax.scatter(px[marked], py[marked], s=260, facecolors="none", edgecolors="red", linewidths=2, zorder=3)
        ax.set_xlim(px.min() - 0.8, px.max() + 0.8)
        ax.set_ylim(py.max() + 0.8, py.min() - 0.8)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title or f"{len(src)} edges with probability > {threshold:.2f}", fontsize=10)
        return fig

    @torch.inference_mode()
    def do(self, codes: torch.Tensor, node: int, code: int) -> DoView:
        """Hard intervention: do(node = code) via ``model.do``, decoded; which other nodes changed."""
        n, v = self.config.num_nodes, self.config.codebook_size
        if not 0 <= int(node) < n:
            raise InputError(f"Choose a node between 0 and {n - 1}, got {node}.")
        if not 0 <= int(code) < v:
            raise InputError(f"Choose a codebook entry between 0 and {v - 1}, got {code}.")
        res = self.model.do(codes, int(node), int(code))
        changed = res.changed[0].numpy().copy()
        changed[int(node)] = False
        return DoView(image=to_uint8(self.model.decode_codes(res.codes))[0], codes=res.codes, changed=changed,
                      node=int(node), code=int(code))

    # --- action retrieval ---
    @torch.inference_mode()
    def retrieve(self, x: np.ndarray | Image.Image | torch.Tensor, y: np.ndarray | Image.Image | torch.Tensor
                 ) -> RetrievalView:
        """Which action turns image x into image y: all actions ranked by p(a | x, y).

        ``x`` and ``y`` are images (any size or mode) or code grids `(1, k, h, w)`.
        """
        cx, cy = self._codes_of(x), self._codes_of(y)
        r = self.model.retrieve_action_codes(cx, cy)
        probs = r.probs[0].numpy()
        order = np.argsort(-probs, kind="stable")
        top = int(order[0])
        return RetrievalView(
            ranking=tuple((self.action_names[i], float(probs[i])) for i in order), action=top,
            intervened=(self.model.intervention_probs(cx, torch.tensor([top]))[0] > 0.5).numpy(),
            changed=(self.model.flatten_codes(cx) != self.model.flatten_codes(cy))[0].numpy(),
            codes_x=cx, codes_y=cy)

    def _codes_of(self, image: np.ndarray | Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, torch.Tensor) and not image.is_floating_point():
            return image
        cfg = self.config
        return self.model.encode_codes(to_model_input(image, cfg.image_size, cfg.in_channels))

    @staticmethod
    def retrieval_figure(view: RetrievalView, top: int = 12) -> Figure:
        """Horizontal bar chart of the ``top`` most probable actions, the first in orange."""
        names = [n for n, _ in view.ranking[:top]][::-1]
        probs = [p for _, p in view.ranking[:top]][::-1]
        fig = Figure(figsize=(5.0, 0.3 * len(names) + 1.0), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        colors = ["#4c72b0"] * (len(names) - 1) + ["#dd8452"]
        ax.barh(names, probs, color=colors)
        for i, p in enumerate(probs):
            ax.text(min(p + 0.01, 0.9), i, f"{p:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("p(action | x, y)")
        return fig

    # --- traversals ---
    @torch.inference_mode()
    def traverse(self, codes: torch.Tensor, steps: int = 3) -> Traversal:
        """For each factor, −steps..+steps applications of its actions to ``codes`` `(1, k, h, w)`, decoded.

        All 2F action chains advance together in one batched transition per step.
        """
        if not 1 <= int(steps) <= 32:
            raise InputError(f"Choose between 1 and 32 traversal steps, got {steps}.")
        steps, F = int(steps), self.config.num_factors
        actions = torch.arange(2 * F)  # (2F,): "f +" for f < F, then "f -"
        cur = codes.expand(2 * F, -1, -1, -1)  # (2F, k, h, w)
        chain = []
        for _ in range(steps):
            cur = self.model.transition_codes(cur, actions).codes
            chain.append(cur)
        stacked = torch.cat([codes, *chain])  # (1 + steps·2F, k, h, w)
        images = to_uint8(self.model.decode_codes(stacked))  # (1 + steps·2F, S, S, C)
        centre, moved = images[0], rearrange(images[1:], "(t d f) H W C -> f d t H W C", t=steps, d=2)
        rows = [np.concatenate([moved[f, 1, ::-1], centre[None], moved[f, 0]]) for f in range(F)]
        return Traversal(images=np.stack(rows), steps=steps, factor_names=self.factor_names)

    @staticmethod
    def traversal_grid(traversal: Traversal, scale: int | None = None) -> np.ndarray:
        """One labelled grid image: a row per factor (name on the left), columns −steps..+steps (header)."""
        F, T, S = traversal.images.shape[:3]
        scale = scale or max(1, 96 // S)
        tiles = traversal.images.reshape(F * T, S, S, -1)
        tiles = np.repeat(np.repeat(tiles, scale, axis=1), scale, axis=2)
        if tiles.shape[-1] == 1:
            tiles = np.repeat(tiles, 3, axis=-1)
        grid = image_grid(tiles, nrow=T, pad=2, pad_value=255)
        font = _font(13)
        label_w = 8 + max(int(font.getlength(n)) for n in traversal.factor_names)
        head = 20
        canvas = Image.new("RGB", (label_w + grid.shape[1], head + grid.shape[0]), (255, 255, 255))
        canvas.paste(Image.fromarray(grid), (label_w, head))
        draw = ImageDraw.Draw(canvas)
        cell = S * scale + 2
        for t in range(T):
            s = t - traversal.steps
            draw.text((label_w + 2 + t * cell + cell / 2, head / 2), f"{s:+d}" if s else "0", fill=(0, 0, 0),
                      font=font, anchor="mm")
        for f, name in enumerate(traversal.factor_names):
            draw.text((4, head + 2 + f * cell + cell / 2), name, fill=(0, 0, 0), font=font, anchor="lm")
        return np.asarray(canvas)

    @classmethod
    def save_traversal(cls, traversal: Traversal, folder: str | os.PathLike | None = None,
                       frame_ms: int = 250) -> tuple[Path, Path]:
        """Write ``traversal.png`` (the grid) and ``traversal.gif`` (all factors move together, −k → +k → −k)
        into ``folder`` (a fresh temporary folder by default); returns both paths."""
        out = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="causalvq-traversal-"))
        out.mkdir(parents=True, exist_ok=True)
        png, gif = out / "traversal.png", out / "traversal.gif"
        Image.fromarray(cls.traversal_grid(traversal)).save(png)
        T = traversal.images.shape[1]
        frames = [_gif_frame(traversal, t) for t in [*range(T), *range(T - 2, 0, -1)]]  # ping-pong
        frames[0].save(gif, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
        return png, gif


def _gif_frame(traversal: Traversal, t: int, scale: int | None = None) -> Image.Image:
    """One GIF frame: every factor's image at column ``t``, side by side, names above, the step on the left."""
    F, _, S = traversal.images.shape[:3]
    scale = scale or max(1, 96 // S)
    tiles = traversal.images[:, t]  # (F, S, S, C)
    tiles = np.repeat(np.repeat(tiles, scale, axis=1), scale, axis=2)
    if tiles.shape[-1] == 1:
        tiles = np.repeat(tiles, 3, axis=-1)
    cell = S * scale + 4
    font = _font(11)
    canvas = Image.new("RGB", (F * cell + 4, cell + 36), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for f in range(F):
        canvas.paste(Image.fromarray(tiles[f]), (4 + f * cell, 18))
        draw.text((4 + f * cell + cell / 2 - 2, 9), traversal.factor_names[f][:14], fill=(0, 0, 0), font=font,
                  anchor="mm")
    s = t - traversal.steps
    draw.text((4, cell + 20), f"step {s:+d}" if s else "step 0 (reconstruction)", fill=(0, 0, 0), font=font)
    return canvas.convert("P", palette=Image.Palette.ADAPTIVE)


def render_examples(dataset: FactorDataset, folder: str | os.PathLike = EXAMPLES_DIR, count: int = 8,
                    seed: int = 0) -> list[Path]:
    """Write ``count`` random dataset images (native resolution) as ``example_<f0>-<f1>-....png`` into ``folder``;
    the app reads the factors back from the name (ground truth for its sliders)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    factors = dataset.sample_factors(count, np.random.default_rng(seed))
    paths = []
    for f, im in zip(factors, dataset.render(factors)):
        p = out / f"example_{'-'.join(str(int(v)) for v in f)}.png"
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(p)
        paths.append(p)
    return paths
