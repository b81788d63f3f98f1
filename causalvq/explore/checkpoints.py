"""What the explorer opens: a checkpoint (folder or Hub repo id), the dropdown's choices, the matching dataset.

``load_model`` never leaves the app without a model when one can be had: a checkpoint that fails to load falls
back to the shipped one, with a notice saying what happened. ``load_checkpoint_probe`` reads the checkpoint's
factor probe (``probe.json`` + ``probe.safetensors``) when it has one: a checkpoint without one still opens, and a
broken one is reported, never used.

Which dataset a checkpoint shows (``dataset_for``): the procedural renderer whose factor names and sizes are the
checkpoint's (shapes3d, dsprites), else the data file it was trained on, when it is on this machine (the
``recipe.toml`` next to the weights names it; ``$CAUSALVQ_DATA`` names files too), else none, with a sentence saying
so. The gallery's examples of a dataset (``example_images``) are shipped PNGs whose file names carry their factors
(``render_examples`` writes them): ``assets/examples/*.png`` for shapes3d, ``assets/examples/dsprites/*.png`` for
dsprites.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from causalvq.checkpoint import CONFIG_NAME
from causalvq.config import ModelConfig
from causalvq.data import DSprites, FactorDataset, Shapes3D, load_dataset
from causalvq.model import CausalVQ
from causalvq.probe import PROBE_CONFIG, PROBE_WEIGHTS, FactorProbe, load_probe

try:
    import tomllib
except ImportError:  # Python 3.10: tomli where installed (the train extra), else recipe.toml is not read
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

ENV_CHECKPOINT = "CAUSALVQ_CHECKPOINT"  # checkpoint folder or Hub repo id the app opens with
ENV_CHOICES = "CAUSALVQ_CHECKPOINTS"  # extra entries of the checkpoint dropdown, comma-separated
ENV_HUB_TIMEOUT = "CAUSALVQ_HUB_TIMEOUT"  # seconds to wait for a Hub download before falling back (default 10)
ENV_DATA = "CAUSALVQ_DATA"  # data files (comma-separated) for checkpoints without a procedural dataset
ASSETS = Path(__file__).resolve().parents[2] / "assets"
SHIPPED_CHECKPOINT = ASSETS / "causalvq-shapes3d"  # the default
SHIPPED_CHECKPOINTS = (SHIPPED_CHECKPOINT, ASSETS / "causalvq-dsprites")  # all of them are in the dropdown
EXAMPLES_DIR = ASSETS / "examples"
EXAMPLE_FOLDERS = {"shapes3d": EXAMPLES_DIR, "dsprites": EXAMPLES_DIR / "dsprites"}  # dataset name → its examples
RECIPE_FILE = "recipe.toml"  # written by train's release next to the weights: [data] name, path, reader_options
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
    """Entries of the checkpoint dropdown: ``$CAUSALVQ_CHECKPOINT``, the shipped folders, ``$CAUSALVQ_CHECKPOINTS``."""
    out = [os.environ.get(ENV_CHECKPOINT, "")]
    out += [str(p) for p in SHIPPED_CHECKPOINTS if (p / CONFIG_NAME).is_file()]
    out += os.environ.get(ENV_CHOICES, "").split(",")
    return list(dict.fromkeys(c.strip() for c in out if c.strip()))


def find_dataset(config: ModelConfig) -> FactorDataset | None:
    """The procedural dataset whose factor names and sizes are the checkpoint's, or ``None``."""
    for cls in PROCEDURAL_DATASETS:
        if tuple(cls.factor_names) == config.factor_names and tuple(cls.factor_sizes) == config.factor_sizes:
            return cls()
    return None


def _data_recipe(source: str) -> dict:
    """The ``[data]`` table of the checkpoint folder's ``recipe.toml`` (``{}`` without a readable one)."""
    if tomllib is None:
        return {}
    try:
        data = tomllib.loads((Path(source) / RECIPE_FILE).read_text()).get("data", {})
    except (OSError, ValueError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def dataset_for(config: ModelConfig, source: str = "") -> tuple[FactorDataset | None, str]:
    """The dataset the explorer samples from and renders ground truths with for a checkpoint, and a notice.

    The procedural dataset whose factor names and sizes are the checkpoint's (``find_dataset``); else the first
    data file among ``$CAUSALVQ_DATA`` (comma-separated) and the ``data.path`` of the checkpoint folder's
    ``recipe.toml`` that exists here and has the checkpoint's factors (read with the recipe's ``data.name``, else as
    an ``.npz``). Returns ``(dataset, "")``, or ``(None, notice)``: a sentence saying that sampling and ground
    truth are disabled and why, naming files by their file names only.
    """
    ds = find_dataset(config)
    if ds is not None:
        return ds, ""
    recipe = _data_recipe(source) if source and Path(source).is_dir() else {}
    name = str(recipe.get("name") or "npz")
    options = recipe.get("reader_options") if isinstance(recipe.get("reader_options"), dict) else {}
    candidates = [(p.strip(), {}) for p in os.environ.get(ENV_DATA, "").split(",") if p.strip()]
    trained_on = str(recipe.get("path") or "")
    if trained_on:
        candidates += [(trained_on, options), (str(Path(source) / trained_on), options)]
    problems = []
    for path, opts in candidates:
        if not Path(path).exists():
            continue
        try:
            ds = load_dataset(name, path, **opts)
        except Exception as err:  # noqa: BLE001 - a file that cannot be read is reported, never fatal
            reason = str(err).replace(str(path), Path(path).name)[:160]
            problems.append(f"`{Path(path).name}` cannot be read ({reason})")
            continue
        if tuple(ds.factor_names) == config.factor_names and tuple(ds.factor_sizes) == config.factor_sizes:
            return ds, ""
        problems.append(f"`{Path(path).name}` has other factors ({', '.join(ds.factor_names)})")
    factors = ", ".join(f"{n} ({s})" for n, s in zip(config.factor_names, config.factor_sizes))
    where = (f"It was trained on `{Path(trained_on).name}` ({name}), which is not on this machine. " if trained_on
             and not problems else "")
    return None, (f"No procedural dataset has this checkpoint's factors ({factors}), so there is no renderer: "
                  f"sampling and ground truth are disabled; upload an image instead. {where}"
                  + (f"{'; '.join(problems)}. " if problems else "")
                  + f"Set {ENV_DATA} to its data file (an .npz with images, factors and factor_names) to sample "
                  "from it and see ground truths.")


def example_factors(path: str | os.PathLike) -> list[int] | None:
    """Factors encoded in an example's file name (``example_4-5-7-7-0-2.png``), else ``None``."""
    m = re.fullmatch(r"example_(\d+(?:-\d+)*)", Path(path).stem)
    return [int(v) for v in m.group(1).split("-")] if m else None


def example_images(dataset: FactorDataset | None) -> list[Path]:
    """The shipped gallery images of ``dataset`` (``EXAMPLE_FOLDERS``), sorted: those whose file names carry factor
    values inside its grid. ``[]`` without a dataset or shipped examples for it."""
    folder = EXAMPLE_FOLDERS.get(dataset.name) if dataset is not None else None
    if folder is None:
        return []
    sizes = dataset.factor_sizes
    out = []
    for p in sorted(folder.glob("*.png")):
        f = example_factors(p)
        if f is not None and len(f) == len(sizes) and all(0 <= v < s for v, s in zip(f, sizes)):
            out.append(p)
    return out


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
