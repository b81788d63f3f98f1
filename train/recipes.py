"""Training recipes: a TOML file mapped onto frozen dataclasses, with dotted ``--set key=value`` overrides.

A recipe has a top-level ``seed`` and five sections::

    seed = 0
    [model]   # causalvq.config.ModelConfig fields (unknown keys fail); in_channels / factor_* come from the data
    [data]    # dataset (name, path, reader or renderer options), split and imbalance options of the sampler
    [stage1]  # image model: steps, batch size, learning rate and its decay
    [stage2]  # causal-transition layer on pre-computed codes: the same, plus pool size and mode ratio
    [eval]    # evaluation sample sizes

Built-in recipes live next to this file (``train/recipes/<name>.toml``): ``tiny`` (seconds, for tests), ``cpu``
(the small CPU model of paper §13.4), ``cpu_dsprites`` (64-px dSprites on the CPU) and ``paper`` (the official
Shapes3D settings). Unknown sections or keys and ill-typed values raise ``RecipeError`` naming the key and the
file. Step counts are per process: under torchrun each of the ``world_size`` processes draws its own
``batch_size`` samples per step.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from causalvq.config import ModelConfig, check_type
from causalvq.data import DATASETS
from causalvq.metrics.disentanglement import BASELINES, SIZE_PRESETS, DisentanglementSizes
from causalvq.metrics.targets import parse_targets

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

RECIPE_DIR = Path(__file__).with_name("recipes")
SECTIONS: tuple[str, ...] = ("model", "data", "stage1", "stage2", "eval")
# ModelConfig fields that the dataset decides; a recipe may state them only if they agree with the data.
DATASET_FIELDS: tuple[str, ...] = ("in_channels", "factor_names", "factor_sizes")
# Keys that may change between a run and its resumption (they do not change what a step computes).
RESUMABLE_KEYS: frozenset[str] = frozenset({
    "stage1.steps", "stage1.log_every", "stage1.checkpoint_every",
    "stage2.steps", "stage2.log_every", "stage2.checkpoint_every", "stage2.encode_batch_size",
    "eval.num_images", "eval.num_pairs", "eval.max_steps", "eval.disentanglement", "eval.importance",
    "eval.disentanglement_sizes", "eval.dci_stages", "eval.batch_size", "eval.seed", "data.path", "data.prefetch",
})


class RecipeError(ValueError):
    """A recipe that cannot be used: unknown key, ill-typed or out-of-range value, unreadable file."""


@dataclass(frozen=True)
class DataRecipe:
    """Which dataset, and how the TransitionSampler draws from it (``causalvq.data.pairs``)."""

    name: str = "shapes3d"  # causalvq.data.load_dataset name: shapes3d, dsprites, npz, smallnorb, cars3d, celeba
    path: str = ""  # a real data file or folder (3dshapes.h5, the dSprites .npz, your .npz, the SmallNORB folder or
    # a -dat.mat, the Cars3D folder, the CelebA folder); "" renders the procedural set (shapes3d, dsprites only)
    render_options: dict[str, Any] = field(default_factory=dict)  # procedural renderer options, used only when
    # path = "", e.g. {image_size = 32, supersample = 1}: render at the model's size instead of 64 px
    reader_options: dict[str, Any] = field(default_factory=dict)  # options of the reader of `path`, e.g.
    # {in_memory = true} (3dshapes.h5), {image_size = 64} (cars3d), {attributes = [...], crop = 148} (celeba)
    split_seed: int = 0  # which grid points are train / val / test
    fractions: tuple[float, ...] = (0.7, 0.15, 0.15)  # train / val / test shares of the factor grid
    value_weights: Any = "uniform"  # skew of x's factor values: "uniform", "zipf", a Zipf exponent or a table
    action_weights: Any = "uniform"  # skew of the actions: "uniform", "cardinality", a list or a table
    prefetch: int = 0  # threads drawing (rendering) the next batches during a step; 0 = draw in the loop

    def __post_init__(self) -> None:
        if self.prefetch < 0:
            raise ValueError(f"data.prefetch must be >= 0, got {self.prefetch}")
        if self.name not in DATASETS:
            raise ValueError(f"data.name must be one of {', '.join(DATASETS)}, got {self.name!r}")
        if self.reader_options and not self.path:
            raise ValueError(f"data.reader_options {self.reader_options} are options of the reader of data.path, "
                             "which is not set (procedural renders take data.render_options)")
        fr = self.fractions  # "not <=" also catches NaN, which passes every comparison
        if len(fr) != 3 or any(not 0 <= f <= 1 for f in fr) or not abs(sum(fr) - 1) <= 1e-6:
            raise ValueError(f"data.fractions must be three non-negative shares summing to 1, got {self.fractions}")

    def sampler_options(self) -> dict[str, Any]:
        """Keyword arguments of ``TransitionSampler`` (``"uniform"`` becomes ``None``)."""
        return dict(seed=self.split_seed, fractions=self.fractions,
                    value_weights=None if self.value_weights == "uniform" else self.value_weights,
                    action_weights=None if self.action_weights == "uniform" else self.action_weights)


@dataclass(frozen=True)
class StageRecipe:
    """Optimisation settings shared by both stages (Adam, learning rate decayed by ``lr_decay`` every
    ``lr_decay_every`` steps, like ExponentialLR stepped once per epoch)."""

    steps: int = 1000  # optimiser steps
    batch_size: int = 64  # samples per step and per process
    lr: float = 5e-4  # Adam learning rate
    lr_decay: float = 1.0  # multiply the learning rate by this ...
    lr_decay_every: int = 1000  # ... every this many steps (one "epoch")
    grad_clip: float = 0.0  # clip the gradient norm to this value; 0 = off (the paper does not clip)
    # B32: an exponential moving average of the trained weights, updated after every step with this decay, is what
    # the stage releases instead of the last step's weights; 0 (the default, the paper's): the last weights.
    average_decay: float = 0.0
    log_every: int = 50  # steps between metrics.jsonl records
    checkpoint_every: int = 500  # steps between resume checkpoints (the last step is always saved)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "lr_decay_every", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{self._section}.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"{self._section}.lr must be a positive number, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"{self._section}.lr_decay must be in (0, 1], got {self.lr_decay}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"{self._section}.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if not 0 <= self.average_decay < 1:
            raise ValueError(f"{self._section}.average_decay must be in [0, 1) (0 = off), got {self.average_decay}")

    _section = "stage1"


@dataclass(frozen=True)
class Stage1Recipe(StageRecipe):
    """Stage 1: the image model (encoder, quantizer, decoder) on single images of the train split."""

    # B27, two data-dependent starts for images that are mostly background (docs/fidelity.md). output_bias: before
    # the first step the decoder's output bias is set so that it draws the mean pixel of the first batch (tanh⁻¹ of
    # its value on the [−1, 1] scale); false (the default): PyTorch's initialisation.
    output_bias: bool = False
    # restart_every: every this many steps (before step restart_until; 0 = the whole stage) the codes that no
    # position of the step's batch chose (on any process) move onto encoder outputs of the batch
    # (quantizer.restart_codes; step 0 thus also initialises the codebook from the data). 0 (the default): never.
    restart_every: int = 0
    restart_until: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.restart_every < 0 or self.restart_until < 0:
            raise ValueError(f"stage1.restart_every and stage1.restart_until must be >= 0, got "
                             f"{self.restart_every}, {self.restart_until}")

    def restarts_at(self, step: int) -> bool:
        """Whether step ``step`` (0-based) restarts the dead codes before its forward pass (B27)."""
        return (self.restart_every > 0 and step % self.restart_every == 0
                and (self.restart_until == 0 or step < self.restart_until))


@dataclass(frozen=True)
class Stage2Recipe(StageRecipe):
    """Stage 2: the causal-transition layer on code grids pre-computed with the frozen stage-1 model."""

    batch_size: int = 16
    num_pairs: int = 10000  # train pairs encoded once; base batches draw from their 2·num_pairs images
    mode_ratio: tuple[float, ...] = (1.0, 1.0, 1.0)  # base : action : retrieval batches (official ≈ 7:1:1)
    encode_batch_size: int = 256  # images per forward pass when pre-computing the codes
    retrieval_batch_size: int = 0  # pairs per retrieval batch (each scored against all A actions); 0: batch_size
    # B25: the prices of edges (δ, κ) are off before step structure_start, then rise linearly to their full value
    # over structure_ramp steps: the graph network first learns which neighbours help, then pays for its edges.
    # 0 and 0 (the default): full prices from the first step, as the paper's loss.
    structure_start: int = 0
    structure_ramp: int = 0

    _section = "stage2"

    def structure_scale(self, step: int) -> float:
        """The factor on δ and κ at ``step`` (B25): 0 before ``structure_start``, 1 after the ramp."""
        if step < self.structure_start:
            return 0.0
        if self.structure_ramp == 0:
            return 1.0
        return min(1.0, (step - self.structure_start + 1) / self.structure_ramp)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retrieval_batch_size < 0:
            raise ValueError(f"stage2.retrieval_batch_size must be >= 0, got {self.retrieval_batch_size}")
        if self.structure_start < 0 or self.structure_ramp < 0:
            raise ValueError(f"stage2.structure_start and stage2.structure_ramp must be >= 0, got "
                             f"{self.structure_start}, {self.structure_ramp}")
        if self.num_pairs < 1 or self.encode_batch_size < 1:
            raise ValueError(f"stage2.num_pairs and stage2.encode_batch_size must be >= 1, got "
                             f"{self.num_pairs}, {self.encode_batch_size}")
        r = self.mode_ratio
        if len(r) != 3 or any(not math.isfinite(x) or x < 0 for x in r) or sum(r) <= 0:
            raise ValueError(f"stage2.mode_ratio must be three non-negative weights (base, action, retrieval), "
                             f"got {list(r)}")


@dataclass(frozen=True)
class EvalRecipe:
    """Evaluation on the test split (``causalvq.metrics.evaluation.evaluate_model``)."""

    num_images: int = 512  # test images for the reconstruction error
    num_pairs: int = 512  # test pairs for action retrieval, and per k for intervention accuracy
    max_steps: int = 5  # intervention accuracy for k = 1 .. max_steps applications of an action
    disentanglement: bool = True  # DCI / MIG / SAP / FactorVAE (the slowest part)
    importance: str = "gbt"  # DCI classifier: "gbt" (disentanglement_lib) or "extra_trees" (faster)
    disentanglement_sizes: str = "cpu"  # named sizes (causalvq.metrics.SIZE_PRESETS): "library"
    # (disentanglement_lib's; hours for a model on 2 cores) or "cpu" (minutes; the noise baseline shows the effect)
    dci_stages: int = 0  # DCI boosting stages per factor; 0: those of the named sizes (library 100, cpu 20)
    baseline: str = "unrelated"  # the disentanglement rows' chance column: "unrelated" (the representation of
    # images unrelated to the factors asked) or "noise" (standard normal codes as wide; GBT on continuous dims is
    # several times slower than on one-hot codes)
    batch_size: int = 64  # images per model call
    seed: int = 0  # seed of the evaluation draws
    targets: dict[str, str] = field(default_factory=dict)  # figures the recipe aims for, checked in eval.md and
    # the model card: {"intervention.k1.accuracy" = ">= 0.85", ...} (``causalvq.metrics.targets``); no training
    # step reads them

    def __post_init__(self) -> None:
        try:
            parse_targets(self.targets)
        except ValueError as err:
            raise ValueError(f"eval.targets: {err}") from None
        for name in ("num_images", "num_pairs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "seed"):  # a negative seed would only fail at evaluation, after training
            if getattr(self, name) < 0:
                raise ValueError(f"eval.{name} must be >= 0, got {getattr(self, name)}")
        if self.importance not in ("gbt", "extra_trees"):
            raise ValueError(f"eval.importance must be 'gbt' or 'extra_trees', got {self.importance!r}")
        if self.disentanglement_sizes not in SIZE_PRESETS:
            raise ValueError(f"eval.disentanglement_sizes must be one of {', '.join(SIZE_PRESETS)}, got "
                             f"{self.disentanglement_sizes!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"eval.baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if self.dci_stages < 0:
            raise ValueError(f"eval.dci_stages must be >= 0 (0: the named sizes' own), got {self.dci_stages}")

    def sizes(self) -> DisentanglementSizes:
        """The ``DisentanglementSizes`` of these settings: the named sizes, this DCI classifier and stage count."""
        stages = {"dci_stages": self.dci_stages} if self.dci_stages else {}
        return DisentanglementSizes.named(self.disentanglement_sizes, importance=self.importance, **stages)


@dataclass(frozen=True)
class Recipe:
    """A whole training recipe. ``model`` holds the ``[model]`` table as written (validated on load)."""

    name: str = "custom"  # the built-in name or the file stem
    source: str = "<defaults>"  # the file it came from (for error messages)
    seed: int = 0  # seeds model initialisation and every step's data
    model: dict[str, Any] = field(default_factory=dict)
    data: DataRecipe = field(default_factory=DataRecipe)
    stage1: Stage1Recipe = field(default_factory=Stage1Recipe)
    stage2: Stage2Recipe = field(default_factory=Stage2Recipe)
    eval: EvalRecipe = field(default_factory=EvalRecipe)

    def model_config(self, image_shape: tuple[int, int, int], factor_names: tuple[str, ...],
                     factor_sizes: tuple[int, ...]) -> ModelConfig:
        """The ModelConfig for a dataset: ``[model]`` plus the channels and factors the dataset gives.

        Raises:
            RecipeError: ``[model]`` states a dataset-given field that disagrees with the dataset.
        """
        given = {"in_channels": image_shape[2], "factor_names": tuple(factor_names),
                 "factor_sizes": tuple(int(s) for s in factor_sizes)}
        for key in DATASET_FIELDS:
            if key in self.model and _as_tuple(self.model[key]) != given[key]:
                raise RecipeError(f"{self.source}: model.{key} = {self.model[key]!r} disagrees with the dataset "
                                  f"{self.data.name!r}, which has {given[key]!r}; remove the key to take it from "
                                  "the data")
        return _model_config({**self.model, **given}, self.source)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as TOML-ready nested dicts (tuples as lists)."""
        out: dict[str, Any] = {"seed": self.seed, "model": dict(self.model)}
        for section in SECTIONS[1:]:
            out[section] = {k: _plain(v) for k, v in dataclasses.asdict(getattr(self, section)).items()}
        return out

    def to_toml(self) -> str:
        """The recipe as TOML text (loads back to an equal recipe)."""
        return dump_toml(self.to_dict())

    def differences(self, other: Recipe) -> list[str]:
        """Dotted keys whose values differ between two recipes (``name`` and ``source`` ignored; a ``[model]``
        key left out equals one set to its default)."""
        def resolved(recipe: Recipe) -> dict[str, Any]:
            return {**recipe.to_dict(), "model": _model_config(recipe.model, recipe.source).to_dict()}

        return _diff(resolved(self), resolved(other))



def check_resumable(saved: Recipe, recipe: Recipe, where: str | Path) -> None:
    """Refuse to continue, under ``recipe``, a run that ``saved`` wrote (at ``where``) if they compute different
    steps; only ``RESUMABLE_KEYS`` and the evaluation's targets may differ.

    Raises:
        RecipeError: other keys differ (the message lists them).
    """
    differences = [k for k in recipe.differences(saved)
                   if k not in RESUMABLE_KEYS and not k.startswith("eval.targets")]
    if differences:
        raise RecipeError(f"cannot resume {where}: it was written with a different recipe "
                          f"({', '.join(differences)} differ); use the same recipe or another --out")

# --- loading ---
def builtin_recipes() -> tuple[str, ...]:
    """Names of the recipes shipped in ``train/recipes/``."""
    return tuple(sorted(p.stem for p in RECIPE_DIR.glob("*.toml")))


def resolve_recipe_path(name_or_path: str) -> Path:
    """A built-in name (``tiny``, ``cpu``, ``paper``) or a path to a ``.toml`` file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists() or "/" in name_or_path:
        if not path.is_file():
            raise RecipeError(f"recipe file {name_or_path!r} does not exist")
        return path
    builtin = RECIPE_DIR / f"{name_or_path}.toml"
    if not builtin.is_file():
        raise RecipeError(f"unknown recipe {name_or_path!r}; built-in recipes: {', '.join(builtin_recipes())} "
                          "(or give a path to a .toml file)")
    return builtin


def load_recipe(name_or_path: str, overrides: Sequence[str | tuple[str, Any]] = ()) -> Recipe:
    """Read a recipe file (or built-in name) and apply overrides: ``"key=value"`` strings (dotted keys, TOML
    values) or ``(key, value)`` pairs with the value already typed.

    Raises:
        RecipeError: unreadable TOML, unknown section or key, ill-typed or out-of-range value.
    """
    path = resolve_recipe_path(name_or_path)
    try:
        table = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: not valid TOML: {err}") from err
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        _set_dotted(table, key, value, f"--set {item}" if isinstance(item, str) else key)
    return recipe_from_dict(table, source=str(path), name=path.stem)


def recipe_from_toml(text: str, source: str = "<text>", name: str = "custom") -> Recipe:
    """Parse recipe TOML text (e.g. ``Recipe.to_toml()``'s output)."""
    try:
        return recipe_from_dict(tomllib.loads(text), source=source, name=name)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{source}: not valid TOML: {err}") from err


def parse_override(item: str) -> tuple[str, Any]:
    """``"stage1.steps=100"`` → ``("stage1.steps", 100)``; the value is read as TOML, else as a bare string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"--set expects key=value (e.g. stage1.steps=100), got {item!r}")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return key, value


def recipe_from_dict(table: dict[str, Any], source: str = "<dict>", name: str = "custom") -> Recipe:
    """Validate a parsed recipe table and build the ``Recipe`` (errors name the key and ``source``)."""
    table = dict(table)
    unknown = sorted(set(table) - set(SECTIONS) - {"seed"})
    if unknown:
        raise RecipeError(f"{source}: unknown recipe key(s) {', '.join(unknown)}; a recipe has 'seed' and the "
                          f"sections {', '.join(f'[{s}]' for s in SECTIONS)}")
    for section in SECTIONS:
        if not isinstance(table.get(section, {}), dict):
            raise RecipeError(f"{source}: '{section}' must be a [{section}] table")
    seed = table.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise RecipeError(f"{source}: seed must be a non-negative integer, got {seed!r}")
    model = dict(table.get("model", {}))
    _model_config(model, source)  # validate now: unknown keys and bad values fail before any work
    return Recipe(name=name, source=source, seed=seed, model=model,
                  data=_build(DataRecipe, table.get("data", {}), "data", source),
                  stage1=_build(Stage1Recipe, table.get("stage1", {}), "stage1", source),
                  stage2=_build(Stage2Recipe, table.get("stage2", {}), "stage2", source),
                  eval=_build(EvalRecipe, table.get("eval", {}), "eval", source))


def _model_config(model: dict[str, Any], source: str) -> ModelConfig:
    try:
        return ModelConfig.from_dict(model)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{source}: [model]: {err}") from err


def _build(cls: type, values: dict[str, Any], section: str, source: str) -> Any:
    """Build a section dataclass, checking keys and types against its annotations."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise RecipeError(f"{source}: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                          f"[{section}] accepts {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = check_type(value, hints[key])
        except TypeError as err:
            raise RecipeError(f"{source}: {section}.{key} {err}") from None
    try:
        return cls(**checked)
    except ValueError as err:
        raise RecipeError(f"{source}: {err}") from err


def _set_dotted(table: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    node = table
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"{where}: {part!r} is not a table")
    node[parts[-1]] = value


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(key, _MISSING), b.get(key, _MISSING), f"{prefix}{key}" if not prefix else
                         f"{prefix}.{key}")
        return out
    return [] if _plain(a) == _plain(b) else [prefix]


_MISSING = object()


# --- writing ---
def dump_toml(table: dict[str, Any]) -> str:
    """Minimal TOML writer for recipe tables: scalars, lists and (nested) tables of them."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key, sub in table.items():
        if isinstance(sub, dict):
            lines += ["", f"[{key}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in sub.items() if not isinstance(v, dict)]
            for name, inner in sub.items():  # a table inside a section, e.g. [eval.targets]: one key a line
                if isinstance(inner, dict) and inner:
                    lines += ["", f"[{key}.{_toml_key(name)}]"]
                    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in inner.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)
