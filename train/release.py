"""Release checkpoints: ``save_pretrained`` + ``recipe.toml`` + a model card, and the upload to the Hub.

A release folder holds ``config.json`` and ``model.safetensors`` (what ``CausalVQ.from_pretrained`` reads),
``recipe.toml`` (the recipe that trained it; ``python -m train evaluate`` reads it), ``README.md`` (a Hub model
card with front matter, the recipe and, once evaluated, the evaluation table), ``probe.safetensors`` +
``probe.json`` (the factor probe, ``causalvq.probe``, fitted on the frozen codes of train-split images; the
evaluation reports its accuracy), ``retrieval.json`` (the reject rule of action retrieval, ``causalvq.metrics.reject``,
calibrated on validation-split pairs; the app reads it), ``training.json`` (each stage's steps and training time,
where and with how many threads and processes it ran: ``write_training``; the evaluation quotes it) and, after an
evaluation, ``eval/``.

``fit_probe`` fits that probe with a recipe's split and seed; ``add_probe`` fits and writes one into an existing
release folder (``python -m train probe --checkpoint DIR``), so a checkpoint gets one without retraining.
``fit_calibration`` calibrates the reject rule as the evaluation does (same split, sizes and seed) and
``write_calibration`` writes it; ``python -m train evaluate`` writes the one it measured into the release folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCardData
from safetensors import SafetensorError

from causalvq.data import FactorDataset
from causalvq.metrics import reject
from causalvq.model import CausalVQ
from causalvq.probe import FactorProbe, ProbeSettings
from train.checkpoint import atomic_write_text, write_error
from train.data import make_sampler
from train.recipes import Recipe

TAGS = ["causalvq", "ct-vae", "vq-vae", "causal-representation-learning", "disentanglement"]
EVAL_START, EVAL_END = "<!-- causalvq-eval:start -->", "<!-- causalvq-eval:end -->"


def model_card(model: CausalVQ, recipe: Recipe, stage: int, evaluation: str | None = None) -> str:
    """The README.md of a release: Hub front matter, what the model is, usage, evaluation and recipe."""
    c = model.config
    data = ModelCardData(library_name="causalvq", license="mit", tags=TAGS + [recipe.data.name],
                         pipeline_tag="image-to-image")
    what = ("the image model only (stage 1: encoder, quantizer, decoder); its causal-transition layer is untrained"
            if stage == 1 else "both stages: the image model and the causal-transition layer")
    actions = ", ".join(f"`{a}`" for a in c.action_names)
    return "\n".join([
        "---", data.to_yaml(), "---", "",
        f"# CausalVQ (CT-VAE) on {recipe.data.name}", "",
        "A CT-VAE (Gendron, Witbrock & Dobbie, *Disentanglement of Latent Representations via Sparse Causal "
        "Interventions*, IJCAI 2023) trained with causalvq's `train` package, recipe "
        f"`{recipe.name}`, seed {recipe.seed}. This checkpoint holds {what}.", "",
        f"- images: {c.image_size}×{c.image_size}×{c.in_channels}, floats in [0, 1]",
        f"- codes: {c.num_codebooks} codebook(s) × {c.codebook_size} codes over a {c.grid_size}×{c.grid_size} grid "
        f"= {c.num_nodes} causal nodes",
        f"- {c.num_actions} actions: {actions}", "",
        "## Usage", "",
        "```python",
        "from causalvq.model import CausalVQ",
        "",
        'model = CausalVQ.from_pretrained("<this repo id or folder>")',
        "codes = model.encode_codes(x)                 # x: (b, c, S, S) in [0, 1]",
        "moved = model.intervene(x, action=0).image    # apply one action",
        "guess = model.retrieve_action(x, y).action    # which action turns x into y",
        "",
        "from causalvq.probe import load_probe         # the factor probe, if the folder has probe.json",
        'probe = load_probe("<this folder>", model)',
        "values = probe.predict(codes).values          # (b, factors): each factor's estimated value",
        "```", "",
        "## How to read its structure", "",
        "Each of the nodes is one cell of the code grid, a causal variable whose value is a code index. An action "
        "intervenes on the nodes of its *mask* (predicted from the image's codes and the action alone) and leaves "
        "the others to the no-action graph; a learned *graph* says which nodes each node reads when its new code "
        "is predicted. In the evaluation, `structure.mask.*` compares the mask with the nodes a step really "
        "changes (precision: how many intervened nodes change; recall: how many changed nodes are intervened "
        "on), `structure.in_degree.*` counts the graph's in-edges per node, and `structure.do.*` says how far a "
        "hard intervention do(node = code) spreads through the no-action graph.", "",
        "## Evaluation", "",
        EVAL_START,
        evaluation.strip() + "\n" if evaluation else
        "Not evaluated yet: `python -m train evaluate --checkpoint <this folder>`.",
        EVAL_END, "",
        "## Training recipe", "",
        "```toml",
        recipe.to_toml().rstrip(),
        "```", "",
    ])


def write_release(model: CausalVQ, folder: str | Path, recipe: Recipe, stage: int,
                  evaluation: str | None = None, dataset: FactorDataset | None = None) -> Path:
    """``save_pretrained`` into ``folder``, then ``recipe.toml`` and the model card; with ``dataset``, also the
    factor probe fitted on the model's codes of its train split (``fit_probe``)."""
    folder = Path(folder)
    try:
        model.save_pretrained(folder)
    except SafetensorError as err:  # safetensors reports a failed write (a full disk) as its own type
        raise write_error(folder / "model.safetensors", err) from err
    atomic_write_text(folder / "recipe.toml", recipe.to_toml())
    atomic_write_text(folder / "README.md", model_card(model, recipe, stage, evaluation))
    if dataset is not None:
        write_probe(fit_probe(model, dataset, recipe), folder)
    return folder


def fit_probe(model: CausalVQ, dataset: FactorDataset, recipe: Recipe,
              settings: ProbeSettings | None = None) -> FactorProbe:
    """The factor probe of ``model``: fitted on train-split images (the recipe's split seed and fractions), drawn
    with the recipe's seed; ``settings`` default ``ProbeSettings(seed=recipe.seed)``."""
    settings = settings if settings is not None else ProbeSettings(seed=recipe.seed)
    return FactorProbe.fit(model, dataset, make_sampler(dataset, recipe.data, "train"), settings)


def write_probe(probe: FactorProbe, folder: str | Path) -> Path:
    """``probe.save(folder)``; a failed write (a full disk) becomes the training package's ``OSError``."""
    try:
        return probe.save(folder)
    except SafetensorError as err:
        raise write_error(Path(folder) / "probe.safetensors", err) from err


def add_probe(model: CausalVQ, dataset: FactorDataset, recipe: Recipe, folder: str | Path,
              settings: ProbeSettings | None = None) -> FactorProbe:
    """Fit ``model``'s factor probe and write it into ``folder`` (the release folder, or another); returns it."""
    probe = fit_probe(model, dataset, recipe, settings)
    write_probe(probe, folder)
    return probe


def fit_calibration(model: CausalVQ, dataset: FactorDataset, recipe: Recipe) -> reject.RejectCalibration | str:
    """The reject rule of ``model``'s action retrieval, calibrated on the validation split of the recipe's grid with
    the evaluation's sizes and seed (``reject.calibrate_for``: the calibration ``python -m train evaluate``
    measures), or a sentence saying why it cannot be."""
    e = recipe.eval
    return reject.calibrate_for(model, dataset, make_sampler(dataset, recipe.data, "test"),
                                num_images=max(2, e.num_pairs // 4), seed=e.seed, batch_size=e.batch_size)


def write_calibration(calibration: reject.RejectCalibration, folder: str | Path) -> Path:
    """``calibration.save(folder)`` (``retrieval.json``); a failed write becomes the training package's ``OSError``."""
    try:
        return calibration.save(folder)
    except OSError as err:
        raise write_error(Path(folder) / reject.CALIBRATION_FILE, err) from err


TRAINING_FILE = "training.json"


def write_training(folder: str | Path, stages: dict[int, dict[str, Any]]) -> Path:
    """``training.json``: ``{"stages": {"1": {"steps", "seconds", "runs", "device", "threads", "processes"}, ...}}``
    (``MetricsLog.stage_time`` plus where the stage ran)."""
    path = Path(folder) / TRAINING_FILE
    atomic_write_text(path, json.dumps({"stages": {str(k): v for k, v in sorted(stages.items())}}, indent=2) + "\n")
    return path


def read_training(folder: str | Path) -> dict[int, dict[str, Any]]:
    """The stages of a release's ``training.json`` by number; ``{}`` when the folder has none or it is unreadable
    (a release written before the file existed, or a hand-made folder: the evaluation then says nothing of it)."""
    try:
        data = json.loads((Path(folder) / TRAINING_FILE).read_text())
        return {int(k): dict(v) for k, v in data["stages"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def training_sentence(stages: dict[int, dict[str, Any]]) -> str | None:
    """'Training (training.json): stage 1 436 s (3,000 steps; cpu, 2 threads, 1 process), ...', or ``None``."""
    if not stages:
        return None
    parts = []
    for stage, info in sorted(stages.items()):
        try:
            where = (f"{info['device']}, {info['threads']} thread{'s' * (info['threads'] != 1)}, "
                     f"{info['processes']} process{'es' * (info['processes'] != 1)}")
            runs = f", {info['runs']} runs (resumed)" if info.get("runs", 1) > 1 else ""
            parts.append(f"stage {stage} {info['seconds']:,.0f} s ({info['steps']:,} steps; {where}{runs})")
        except (KeyError, TypeError, ValueError):
            parts.append(f"stage {stage}: unreadable entry")
    total = sum(info.get("seconds", 0) for info in stages.values() if isinstance(info.get("seconds"), (int, float)))
    return (f"**Training** (`{TRAINING_FILE}`, the training loop's clock): {'; '.join(parts)}; "
            f"{total:,.0f} s = {total / 60:.1f} min in all, without the evaluation.")


def set_card_evaluation(folder: str | Path, evaluation: str) -> bool:
    """Put an evaluation table into a causalvq model card; ``False`` if ``folder`` has no such card."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return False
    text = card.read_text()
    pattern = re.compile(re.escape(EVAL_START) + r".*?" + re.escape(EVAL_END), re.S)
    if not pattern.search(text):
        return False
    block = f"{EVAL_START}\n{evaluation.strip()}\n{EVAL_END}"
    atomic_write_text(card, pattern.sub(lambda _: block, text, count=1))
    return True


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Create ``repo_id`` if needed and upload the release folder; returns the commit URL."""
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message="Upload CausalVQ (CT-VAE) checkpoint trained with causalvq's train")
    return str(getattr(info, "commit_url", info))
