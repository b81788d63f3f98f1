"""The commands behind the CLI (``stage1``, ``stage2``, ``all``, ``evaluate``, ``probe``) and the checks run before
them.

Layout of an output folder (``--out``)::

    recipe.toml                 the recipe of the run (after --set overrides)
    metrics.jsonl               one JSON object per log step (train.monitor)
    stage1_losses.png, stage2_losses.png
    resume/stage1.safetensors   resume states (train.checkpoint), rewritten every checkpoint_every steps
    resume/stage2.safetensors
    stage2_codes.safetensors    cache of the stage-2 code pool, keyed by the data recipe and stage-1 weights
    stage1/                     stage-1 release (image model), the input of stage 2
    model/                      final release: config.json, model.safetensors, recipe.toml, README.md,
                                probe.safetensors + probe.json (the factor probe), retrieval.json (the reject
                                rule of action retrieval, calibrated on the validation split), eval/

Everything that can be checked is checked before the first byte is written: the recipe, the dataset file, the
stage-1 checkpoint's configuration, earlier results in the folder (continuing them needs ``--resume``; nothing
is overwritten otherwise) and whether the folder is writable.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from causalvq.config import ModelConfig
from causalvq.data import FactorDataset
from causalvq.data.pairs import TransitionSampler
from causalvq.metrics.report import write_report
from causalvq.metrics.targets import parse_targets, unmeasured
from causalvq.model import CausalVQ
from causalvq.probe import FactorProbe, load_probe
from train import distributed
from train import evaluate as evaluation
from train.checkpoint import atomic_write_text, load_state
from train.data import code_pool_key, encode_pool, load_or_encode_pool, make_sampler, open_dataset
from train.distributed import Context
from train.loop import run_stage
from train.monitor import MetricsLog, plot_stage
from train.recipes import Recipe, RecipeError, check_resumable, load_recipe
from train.release import (
    add_probe,
    fit_calibration,
    push_to_hub,
    read_training,
    set_card_evaluation,
    training_sentence,
    write_calibration,
    write_probe,
    write_release,
    write_training,
)
from train.stages import check_image_model, load_image_model, stage1_spec, stage2_spec


class RunError(RuntimeError):
    """A problem found before training: output folder, stage-1 checkpoint, dataset."""


@dataclass(frozen=True)
class Options:
    """What a command was asked to do (the parsed command line)."""

    recipe: Recipe
    out: Path
    resume: bool = False
    device: str = "auto"
    checkpoint: Path | None = None  # stage2: the stage-1 release to start from; evaluate: the model to score
    push_to_hub: str | None = None  # Hub repo id to upload the release to
    progress: bool = True  # tqdm bars


@dataclass(frozen=True)
class RunDir:
    """Paths of an output folder."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.toml"

    @property
    def log(self) -> MetricsLog:
        return MetricsLog(self.root / "metrics.jsonl")

    @property
    def stage1(self) -> Path:
        return self.root / "stage1"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def codes(self) -> Path:
        return self.root / "stage2_codes.safetensors"

    def state(self, stage: int) -> Path:
        return self.root / "resume" / f"stage{stage}.safetensors"

    def plot(self, stage: int) -> Path:
        return self.root / f"stage{stage}_losses.png"

    def release(self, stage: int) -> Path:
        return self.stage1 if stage == 1 else self.model

    def artifacts(self, stage: int) -> list[str]:
        """What the folder already holds of ``stage`` (relative names)."""
        found = [p for p in (self.state(stage), self.release(stage), self.plot(stage)) if p.exists()]
        names = [str(p.relative_to(self.root)) for p in found]
        if self.log.has_stage(stage):
            names.append(f"stage-{stage} records in metrics.jsonl")
        return names


# --- checks before anything is written ---
def check_out_dir(run: RunDir, recipe: Recipe, stages: tuple[int, ...], resume: bool) -> None:
    """Refuse to touch earlier results without ``--resume``, and to mix recipes in one folder."""
    if run.root.exists() and not run.root.is_dir():
        raise RunError(f"--out {run.root} exists and is not a folder")
    if run.recipe.is_file():
        try:
            check_resumable(load_recipe(str(run.recipe)), recipe, run.recipe)
        except RecipeError as err:
            raise RunError(f"{run.root} holds a run of another recipe ({err}); choose another --out") from None
    if not resume:
        found = [name for stage in stages for name in run.artifacts(stage)]
        if found:
            raise RunError(f"{run.root} already holds results ({', '.join(found)}); pass --resume to continue "
                           "that run, or choose another --out")


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write a probe file into it, or raise ``RunError`` saying why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise RunError(f"cannot write to the output folder {folder}: {err.strerror or err}") from None


def dataset_and_config(recipe: Recipe) -> tuple[FactorDataset, TransitionSampler, ModelConfig]:
    """Open the recipe's dataset and derive the model configuration from it."""
    dataset = open_dataset(recipe.data)
    sampler = make_sampler(dataset, recipe.data, "train")
    config = recipe.model_config(dataset.image_shape, dataset.factor_names, dataset.factor_sizes)
    return dataset, sampler, config


def read_stage1(folder: Path, config: ModelConfig) -> CausalVQ:
    """Load a stage-1 release and check that its image model fits ``config``."""
    if not (folder / "config.json").is_file():
        raise RunError(f"no stage-1 checkpoint at {folder} (config.json missing); run `python -m train stage1` "
                       "first or pass --checkpoint DIR")
    try:
        source = CausalVQ.from_pretrained(folder)
        check_image_model(source.config, config, str(folder))
    except (ValueError, FileNotFoundError) as err:
        raise RunError(str(err)) from None
    return source


def build_model(config: ModelConfig, seed: int, device: torch.device) -> CausalVQ:
    """A freshly initialised model: the same weights for the same (config, seed) on every device."""
    torch.manual_seed(seed)
    return CausalVQ(config).to(device)


# --- commands ---
def command_stage(opts: Options, stage: int) -> Path:
    """``python -m train stage1`` (the image model) or ``stage2`` (the causal-transition layer on a stage-1
    release); returns the stage's release folder (``stage1/`` or ``model/``)."""
    with _session(opts) as ctx:
        run = RunDir(opts.out)
        dataset, sampler, config = dataset_and_config(opts.recipe)
        source = None
        if stage == 2 and not (opts.resume and run.state(2).is_file()):
            source = read_stage1(opts.checkpoint or run.stage1, config)
        _prepare(ctx, run, opts, (stage,))
        if stage == 1:
            _stage1(ctx, run, opts, dataset, sampler, config)
        else:
            _stage2(ctx, run, opts, dataset, sampler, config, source)
        if ctx.is_main and opts.push_to_hub:
            _push(run.release(stage), opts.push_to_hub)
        return run.release(stage)


def command_all(opts: Options) -> Path:
    """``python -m train all``: stage 1, stage 2, then the evaluation in the model card; returns ``model/``."""
    with _session(opts) as ctx:
        run = RunDir(opts.out)
        dataset, sampler, config = dataset_and_config(opts.recipe)
        _prepare(ctx, run, opts, (1, 2))
        source = None
        if not (opts.resume and run.state(2).is_file()):
            source = _stage1(ctx, run, opts, dataset, sampler, config)
        model = _stage2(ctx, run, opts, dataset, sampler, config, source, calibrate=False)  # the evaluation does
        if ctx.is_main:
            _evaluate_into(model, dataset, opts.recipe, run.model, card=run.model, probe=_read_probe(run.model, model),
                           release=run.model)
            if opts.push_to_hub:
                _push(run.model, opts.push_to_hub)
        return run.model


def command_evaluate(opts: Options) -> Path:
    """``python -m train evaluate --checkpoint DIR``: score a release (into the release folder: also its model card
    and ``retrieval.json``, the calibration the evaluation measured); returns the report folder."""
    with _session(opts) as ctx:
        model, dataset = _release_and_dataset(ctx, opts, "evaluate")
        probe = _read_probe(opts.checkpoint, model)
        check_writable(opts.out)
        if not ctx.is_main:
            return opts.out / "eval"
        if probe is None:
            print(f"evaluate: {opts.checkpoint} has no factor probe (probe.json); no probe rows. "
                  f"`python -m train probe --checkpoint {opts.checkpoint}` fits one.", flush=True)
        card = opts.checkpoint if opts.out.resolve() == opts.checkpoint.resolve() else None
        _evaluate_into(model, dataset, opts.recipe, opts.out, card=card, probe=probe, release=opts.checkpoint)
        if opts.push_to_hub:
            _push(opts.checkpoint, opts.push_to_hub)
        return opts.out / "eval"


def command_probe(opts: Options) -> Path:
    """``python -m train probe --checkpoint DIR``: fit the factor probe of a release on its recipe's train split and
    write ``probe.safetensors`` + ``probe.json`` into ``--out`` (default the checkpoint folder); returns it."""
    with _session(opts) as ctx:
        model, dataset = _release_and_dataset(ctx, opts, "probe")
        check_writable(opts.out)
        if ctx.is_main:
            fit = add_probe(model, dataset, opts.recipe, opts.out).info.fit
            print(f"probe: fitted on {fit['num_images']} train images in {fit['seconds']:.1f} s, train accuracy "
                  f"{fit['train_accuracy_mean']:.3f}; `python -m train evaluate` reports its test accuracy",
                  flush=True)
            if opts.push_to_hub:
                _push(opts.out, opts.push_to_hub)
        return opts.out


# --- pieces ---
class _session:
    """Join torchrun's process group (if any) for the duration of a command."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts

    def __enter__(self) -> Context:
        self.ctx = distributed.setup(self.opts.device)
        return self.ctx

    def __exit__(self, *exc: object) -> None:
        distributed.teardown(self.ctx)


def _prepare(ctx: Context, run: RunDir, opts: Options, stages: tuple[int, ...]) -> None:
    check_out_dir(run, opts.recipe, stages, opts.resume)
    check_writable(run.root)
    distributed.barrier(ctx)  # every rank has checked the folder before rank 0 writes into it
    if ctx.is_main:
        atomic_write_text(run.recipe, opts.recipe.to_toml())


def _stage1(ctx: Context, run: RunDir, opts: Options, dataset: FactorDataset, sampler: TransitionSampler,
            config: ModelConfig) -> CausalVQ:
    model = build_model(config, opts.recipe.seed, ctx.device)
    spec = stage1_spec(model, dataset, sampler, opts.recipe.stage1)
    run_stage(ctx, spec, model, opts.recipe, run.state(1), run.log, opts.resume, opts.progress)
    if ctx.is_main:
        write_release(model, run.stage1, opts.recipe, stage=1, dataset=dataset)
        write_training(run.stage1, _stage_entry(ctx, run, 1))
        plot_stage(run.log, 1, run.plot(1))
    return model


def _stage2(ctx: Context, run: RunDir, opts: Options, dataset: FactorDataset, sampler: TransitionSampler,
            config: ModelConfig, source: CausalVQ | None, calibrate: bool = True) -> CausalVQ:
    recipe, settings = opts.recipe, opts.recipe.stage2
    model = build_model(config, recipe.seed, ctx.device)
    if source is not None:
        load_image_model(model, source)
    elif run.state(2).is_file():  # resuming: the state holds the whole model, image weights included
        model.load_state_dict(load_state(run.state(2)).model, strict=True)
    key = code_pool_key(recipe.data, settings.num_pairs, recipe.seed, model)

    def encode():
        return encode_pool(model, dataset, sampler, settings.num_pairs, recipe.seed, settings.encode_batch_size)

    if ctx.is_main:  # rank 0 fills the cache first; the others then read it (or encode, without a shared disk)
        pool, _ = load_or_encode_pool(run.codes, key, encode, write=True)
    distributed.barrier(ctx)
    if not ctx.is_main:
        pool, _ = load_or_encode_pool(run.codes, key, encode, write=False)
    spec = stage2_spec(model, pool, settings)
    run_stage(ctx, spec, model, recipe, run.state(2), run.log, opts.resume, opts.progress)
    if ctx.is_main:
        image_release = opts.checkpoint or run.stage1
        probe = _stage1_probe(image_release, model)  # stage 2 leaves the codes as they were
        write_release(model, run.model, recipe, stage=2, dataset=None if probe is not None else dataset)
        stage1 = {k: v for k, v in read_training(image_release).items() if k == 1}  # the image model's, if recorded
        write_training(run.model, {**stage1, **_stage_entry(ctx, run, 2)})
        if probe is not None:
            write_probe(probe, run.model)
        if calibrate:
            _write_calibration(model, dataset, recipe, run.model)
        plot_stage(run.log, 2, run.plot(2))
    return model


def _stage_entry(ctx: Context, run: RunDir, stage: int) -> dict[int, dict[str, Any]]:
    """``{stage: training.json entry}``: steps and time from the run's log, and where it ran; ``{}`` when the log
    has no step of it."""
    logged = run.log.stage_time(stage)
    if logged is None:
        return {}
    return {stage: {**logged, "device": ctx.device.type, "threads": torch.get_num_threads(),
                    "processes": ctx.world_size}}


def _release_and_dataset(ctx: Context, opts: Options, command: str) -> tuple[CausalVQ, FactorDataset]:
    """The release in ``--checkpoint`` on the context's device, and the dataset of its recipe, with the factors
    checked to agree; a missing or unreadable checkpoint is a ``RunError`` that names ``command``."""
    if opts.checkpoint is None:
        raise RunError(f"{command} needs --checkpoint DIR (a folder with config.json and model.safetensors)")
    try:
        model = CausalVQ.from_pretrained(opts.checkpoint).to(ctx.device)
    except (ValueError, FileNotFoundError) as err:
        raise RunError(f"cannot load --checkpoint {opts.checkpoint}: {err}") from None
    dataset = open_dataset(opts.recipe.data)
    if tuple(model.config.factor_names) != tuple(dataset.factor_names):
        raise RunError(f"the checkpoint's factors {model.config.factor_names} are not those of the dataset "
                       f"{dataset.name!r} {dataset.factor_names}; pass the recipe it was trained with")
    return model, dataset


def _read_probe(folder: Path, model: CausalVQ) -> FactorProbe | None:
    """The release's factor probe for ``model`` (``None``: the folder has none); a broken one is a ``RunError``."""
    try:
        return load_probe(folder, model)
    except (ValueError, FileNotFoundError) as err:
        raise RunError(f"the factor probe of {folder} cannot be used: {err}") from None


def _stage1_probe(folder: Path, model: CausalVQ) -> FactorProbe | None:
    """The stage-1 release's factor probe when it reads ``model``'s codes (same encoder and codebook weights), so
    the stage-2 release reuses it instead of fitting it again; ``None`` when there is none or it does not fit."""
    try:
        return load_probe(folder, model)
    except (ValueError, FileNotFoundError):
        return None


def _evaluate_into(model: CausalVQ, dataset: FactorDataset, recipe: Recipe, out: Path, card: Path | None,
                   probe: FactorProbe | None = None, release: Path | None = None) -> None:
    """Evaluate into ``out/eval``; into a release folder (``card``) also its model card and ``retrieval.json``.
    The report checks the recipe's ``[eval.targets]`` and quotes the ``training.json`` of ``release``."""
    report = evaluation.evaluate(model, dataset, recipe, probe)
    targets = parse_targets(recipe.eval.targets)
    for name in unmeasured(targets, report.metrics()):
        print(f"evaluate: warning: eval.targets names {name!r}, which this report does not have (eval.md says so)",
              file=sys.stderr, flush=True)
    sentence = training_sentence(read_training(release)) if release is not None else None
    notes = [sentence] if sentence else []
    write_report(report, out / "eval", targets, notes)
    if card is not None:
        set_card_evaluation(card, evaluation.markdown_table(report, targets, notes))
        if report.reject is not None:
            write_calibration(report.reject.calibration, card)


def _write_calibration(model: CausalVQ, dataset: FactorDataset, recipe: Recipe, folder: Path) -> None:
    """Calibrate the release's retrieval reject rule and write ``retrieval.json``, or say why there is none."""
    cal = fit_calibration(model, dataset, recipe)
    if isinstance(cal, str):
        print(f"release: no retrieval.json, the reject rule is {cal}", flush=True)
    else:
        write_calibration(cal, folder)


def _push(folder: Path, repo_id: str) -> None:
    url = push_to_hub(folder, repo_id)
    print(f"uploaded {folder} to https://huggingface.co/{repo_id} ({url})", flush=True)


def default_out(recipe: Recipe) -> Path:
    """``runs/<recipe name>`` under the current folder."""
    return Path(os.getcwd()) / "runs" / recipe.name
