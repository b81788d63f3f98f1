"""What the explorer opens: a checkpoint (folder or Hub repo id), the dropdown's choices, the matching dataset.

``load_model`` never leaves the app without a model when one can be had: a checkpoint that fails to load falls
back to the shipped one, with a notice saying what happened. ``load_checkpoint_probe`` reads the checkpoint's
factor probe (``probe.json`` + ``probe.safetensors``) when it has one: a checkpoint without one still opens, and a
broken one is reported, never used. ``render_examples`` writes the gallery's example
images, their factors in the file names.
"""

from __future__ import annotations

import concurrent.futures
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from causalvq.checkpoint import CONFIG_NAME
from causalvq.config import ModelConfig
from causalvq.data import DSprites, FactorDataset, Shapes3D
from causalvq.model import CausalVQ
from causalvq.probe import PROBE_CONFIG, PROBE_WEIGHTS, FactorProbe, load_probe

ENV_CHECKPOINT = "CAUSALVQ_CHECKPOINT"  # checkpoint folder or Hub repo id the app opens with
ENV_CHOICES = "CAUSALVQ_CHECKPOINTS"  # extra entries of the checkpoint dropdown, comma-separated
ENV_HUB_TIMEOUT = "CAUSALVQ_HUB_TIMEOUT"  # seconds to wait for a Hub download before falling back (default 10)
ASSETS = Path(__file__).resolve().parents[2] / "assets"
SHIPPED_CHECKPOINT = ASSETS / "causalvq-shapes3d"
EXAMPLES_DIR = ASSETS / "examples"
PROCEDURAL_DATASETS: tuple[type[FactorDataset], ...] = (Shapes3D, DSprites)


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
            error = (str(err).splitlines()[0] if str(err) else type(err).__name__)
            error = error.replace(str(Path(choice).resolve()), display_name(str(choice)))
            error = error.replace(str(choice), display_name(str(choice)))[:200]  # no machine path on screen
            notice = f"Could not load checkpoint `{display_name(str(choice))}` ({error})."
    shipped = display_name(str(fallback)) if fallback is not None else ""
    if fallback is not None and (Path(fallback) / CONFIG_NAME).is_file():
        if choice and Path(choice).resolve() == Path(fallback).resolve():
            return LoadResult(None, "", notice, error)
        try:
            model = CausalVQ.from_pretrained(fallback)
        except Exception as err:
            return LoadResult(None, "", f"{notice} The shipped checkpoint `{shipped}` is unreadable: {err}".strip(),
                              error)
        return LoadResult(model, str(fallback), f"{notice} Showing the shipped checkpoint instead.".strip()
                          if notice else "", error)
    missing = f"the shipped one (`{shipped}`) is missing" if fallback is not None else "there is no fallback"
    return LoadResult(None, "", (f"{notice} " if notice else "") + (
        f"No checkpoint found: {missing}. Set {ENV_CHECKPOINT} to a checkpoint folder (config.json + "
        "model.safetensors) or a Hub repo id and restart the app."), error)


def load_checkpoint_probe(source: str, model: CausalVQ, timeout: float | None = None) -> tuple[FactorProbe | None, str]:
    """The factor probe saved with a checkpoint (folder or Hub repo id), checked against ``model``'s codes.

    Returns ``(probe, "")``, ``(None, "")`` when the checkpoint has no probe, or ``(None, notice)`` when its probe
    cannot be used (corrupt, fitted on other weights, the Hub unreachable): the explorer then estimates nothing.
    """
    try:
        if Path(source).is_dir():
            return load_probe(source, model), ""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        timeout = float(os.environ.get(ENV_HUB_TIMEOUT, "10")) if timeout is None else timeout

        def fetch() -> Path | None:
            try:
                files = [hf_hub_download(source, name) for name in (PROBE_CONFIG, PROBE_WEIGHTS)]
            except EntryNotFoundError:
                return None
            return Path(files[0]).parent

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        future = pool.submit(fetch)
        pool.shutdown(wait=False)
        folder = future.result(timeout=timeout)
        return (None if folder is None else FactorProbe.load(folder, model)), ""
    except Exception as err:  # noqa: BLE001 - any failure leaves the app without estimates, and says why
        reason = str(err).replace(source, display_name(source))[:200] or type(err).__name__
        return None, f"The factor probe of `{display_name(source)}` cannot be used ({reason}): no factor estimates."


def display_name(source: str) -> str:
    """How the app names a checkpoint: a folder by its own name (never the machine's path to it), a Hub repo id as
    it is."""
    if not source:
        return ""
    path = Path(source)
    return path.name if path.is_absolute() or path.is_dir() or os.sep in source and path.exists() else source


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
