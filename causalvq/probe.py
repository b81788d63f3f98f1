"""The factor probe: which value of each generative factor an image's frozen code grid shows.

``FactorProbe.fit(model, dataset)`` encodes images of the train split with the frozen model
(``model.encode_codes``) and fits one softmax classifier per factor on the one-hot codes of the grid;
``probe.predict(codes)`` gives every factor's most probable value and the probabilities of all its values;
``probe.save(folder)`` writes ``probe.safetensors`` + ``probe.json`` beside a release's ``config.json`` and
``FactorProbe.load(folder)`` reads them back (never pickle). ``evaluate_probe`` measures its accuracy on a split.

Why linear: a softmax classifier over one-hot codes is a table of one score per (node, code, factor value), i.e.
each factor value adds up the votes of the codes it sees. On the shipped 32-px shapes3d model (4,096 train
images) it reaches a mean test accuracy of 0.94 (hues 1.0, orientation 1.0, shape 0.97, scale 0.65), while an MLP
with 64 hidden units reached 0.90: the test split holds factor combinations never seen in training, and the
additive table generalises to them where the MLP fits the combinations. It is also small (n·v·Σ sizes floats:
233,000 for the shipped model) and fits in seconds on 2 CPU cores. The loss (summed per-factor cross-entropies plus
an L2 penalty) is convex, so the probe is its minimiser, found by full-batch L-BFGS from zeros: the same (model,
images, settings) give the same probe bit for bit. (Adam from zeros moves every weight at the same rate and, with
few images, memorises the codes of uninformative nodes; the minimiser does not.)

Missing probe: ``FactorProbe.load`` raises ``FileNotFoundError`` naming the missing file; ``load_probe(folder)``
returns ``None`` when the folder holds neither file (a checkpoint released without a probe) and otherwise loads
strictly, so a half-written or corrupt probe is an error, never silently ignored.

Axis legend: ``b`` images, ``k`` codebooks, ``h w`` latent grid, ``n`` nodes (k·h·w), ``v`` codebook size,
``f`` factors (F), ``s`` the values of all factors side by side (Σ sizes).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from causalvq.data import FactorDataset, render_images
from causalvq.data.pairs import TransitionSampler
from causalvq.metrics.report import ProbeResult
from causalvq.model import CausalVQ

PROBE_WEIGHTS, PROBE_CONFIG = "probe.safetensors", "probe.json"
FORMAT = "causalvq-factor-probe"
VERSION = 1
FIT_STREAM = 0x9B0E  # images of the fit: np.random.default_rng([seed, FIT_STREAM])
EVAL_STREAM = 5  # images of evaluate_probe: the evaluation's next stream after its five sections


@dataclass(frozen=True)
class ProbeSettings:
    """How a probe is fitted (recorded in ``probe.json``)."""

    num_images: int = 4096  # train-split images encoded for the fit
    steps: int = 100  # L-BFGS iterations at most (it stops earlier once converged)
    lr: float = 1.0  # L-BFGS step length (its strong-Wolfe line search scales it)
    weight_decay: float = 1e-4  # L2 penalty on the weight table, added to the summed cross-entropies
    seed: int = 0  # which train images are drawn
    batch_size: int = 256  # images per model call while encoding

    def __post_init__(self) -> None:
        if self.num_images < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"ProbeSettings needs num_images, steps, batch_size >= 1; got {self.num_images}, "
                             f"{self.steps}, {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not (self.weight_decay >= 0):
            raise ValueError(f"ProbeSettings needs lr > 0 and weight_decay >= 0; got {self.lr}, {self.weight_decay}")


@dataclass(frozen=True)
class FactorEstimate:
    """What a probe reads from a batch of code grids."""

    values: torch.Tensor  # long (b, f): the most probable value index of each factor
    confidence: torch.Tensor  # float (b, f): its probability
    probs: tuple[torch.Tensor, ...]  # one float (b, size_f) per factor; each row sums to 1
    factor_names: tuple[str, ...]


@dataclass(frozen=True)
class ProbeInfo:
    """The contents of ``probe.json`` besides the tensors."""

    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]
    codes_shape: tuple[int, int, int]  # (k, h, w) of the grids it reads
    codebook_size: int  # v
    codes_digest: str = ""  # SHA-256 of the encoder + quantizer weights whose codes it was fitted on ("" unknown)
    fit: dict[str, Any] = field(default_factory=dict)  # ProbeSettings, train accuracy, seconds


def codes_digest(model: CausalVQ) -> str:
    """SHA-256 of the weights ``encode_codes`` depends on (encoder and quantizer): a probe fitted on one model's
    codes means nothing on another's."""
    h = hashlib.sha256()
    for prefix in ("encoder", "quantizer"):
        for name, tensor in sorted(getattr(model, prefix).state_dict().items()):
            h.update(f"{prefix}.{name}".encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class FactorProbe(nn.Module):
    """One softmax classifier per factor over the one-hot code grid, stored as one table.

    ``weight`` `(n, v, s)` holds the score each (node, code) adds to each factor value and ``bias`` `(s,)`
    a constant per value; the logits of factor f are the slice ``s = offsets[f] : offsets[f] + size_f``.
    """

    def __init__(self, info: ProbeInfo) -> None:
        super().__init__()
        self.info = info
        k, h, w = info.codes_shape
        s = sum(info.factor_sizes)
        self.weight = nn.Parameter(torch.zeros(k * h * w, info.codebook_size, s))  # (n, v, s)
        self.bias = nn.Parameter(torch.zeros(s))  # (s,)

    @property
    def factor_names(self) -> tuple[str, ...]:
        return self.info.factor_names

    @property
    def factor_sizes(self) -> tuple[int, ...]:
        return self.info.factor_sizes

    def _check_codes(self, codes: torch.Tensor) -> None:
        want = tuple(self.info.codes_shape)
        if codes.dim() != 4 or tuple(codes.shape[1:]) != want:
            raise ValueError(f"the probe reads code grids (b, {', '.join(map(str, want))}), got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integer code indices, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.info.codebook_size):
            raise ValueError(f"code indices must lie in [0, {self.info.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Logits of all factor values: long `(b, k, h, w)` → `(b, s)`."""
        return self.logits(self.rows(codes))

    def rows(self, codes: torch.Tensor) -> torch.Tensor:
        """The row of the flattened `(n·v, s)` table each node's code selects: `(b, k, h, w)` → long `(b, n)`."""
        self._check_codes(codes)
        n, v, _ = self.weight.shape
        nodes = rearrange(codes.long(), "b k h w -> b (k h w)").to(self.bias.device)  # (b, n), the model's order
        return nodes + torch.arange(n, device=nodes.device) * v  # (b, n)

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        """The one-hot codes times the table, as a sum of the selected rows: `(b, n)` → `(b, s)`."""
        n, v, s = self.weight.shape
        return F.embedding_bag(rows, self.weight.reshape(n * v, s), mode="sum") + self.bias  # (b, s)

    def predict(self, codes: torch.Tensor) -> FactorEstimate:
        """The estimate of every factor from code grids `(b, k, h, w)` (e.g. ``model.encode_codes(x)``)."""
        with torch.no_grad():
            logits = self(codes.to(self.bias.device))
        probs = tuple(p.softmax(-1) for p in logits.split(list(self.factor_sizes), -1))  # (b, size_f) each
        stacked = [p.max(-1) for p in probs]
        return FactorEstimate(values=torch.stack([m.indices for m in stacked], 1),  # (b, f)
                              confidence=torch.stack([m.values for m in stacked], 1),  # (b, f)
                              probs=probs, factor_names=self.factor_names)

    def accuracy(self, codes: torch.Tensor, factors: torch.Tensor | np.ndarray) -> dict[str, float]:
        """Share of the grids whose estimate of each factor is its true value: codes `(b, k, h, w)`, factors
        `(b, f)` → {factor name: accuracy}."""
        truth = torch.as_tensor(np.asarray(factors), dtype=torch.long)
        if truth.shape != (len(codes), len(self.factor_names)):
            raise ValueError(f"factors must be ({len(codes)}, {len(self.factor_names)}), got {tuple(truth.shape)}")
        hit = self.predict(codes).values.cpu() == truth  # (b, f)
        return {name: float(hit[:, f].double().mean()) for f, name in enumerate(self.factor_names)}

    # --- fitting ---
    @classmethod
    def fit_codes(cls, codes: torch.Tensor, factors: torch.Tensor | np.ndarray, factor_names: tuple[str, ...],
                  factor_sizes: tuple[int, ...], codebook_size: int, settings: ProbeSettings = ProbeSettings(),
                  codes_digest: str = "") -> FactorProbe:
        """Fit a probe on code grids `(b, k, h, w)` and their true factor values `(b, f)` (the pure core of
        ``fit``): full-batch L-BFGS on the summed per-factor cross-entropies plus ``weight_decay``·‖weight‖², from
        zeros. ``fit["train_accuracy"]`` of the result's ``info`` holds the accuracy on these grids."""
        truth = torch.as_tensor(np.asarray(factors), dtype=torch.long)
        sizes = tuple(int(s) for s in factor_sizes)
        if truth.dim() != 2 or truth.shape != (len(codes), len(sizes)) or len(factor_names) != len(sizes):
            raise ValueError(f"need factors ({len(codes)}, {len(sizes)}) for {len(factor_names)} names, got "
                             f"{tuple(truth.shape)}")
        if truth.numel() and (bool((truth < 0).any()) or bool((truth >= torch.tensor(sizes)).any())):
            raise ValueError(f"factor values must lie in [0, size) for sizes {sizes}")
        info = ProbeInfo(factor_names=tuple(factor_names), factor_sizes=sizes,
                         codes_shape=tuple(int(d) for d in codes.shape[1:]), codebook_size=int(codebook_size),
                         codes_digest=codes_digest)
        probe = cls(info)
        probe._check_codes(codes)
        start = time.perf_counter()
        opt = torch.optim.LBFGS(probe.parameters(), lr=settings.lr, max_iter=settings.steps, history_size=20,
                                line_search_fn="strong_wolfe")
        rows = probe.rows(codes)  # (b, n), computed once

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            logits = probe.logits(rows).split(list(sizes), -1)  # (b, size_f) each
            loss = sum(F.cross_entropy(lf, truth[:, f]) for f, lf in enumerate(logits))
            loss = loss + settings.weight_decay * probe.weight.square().sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        probe.eval().requires_grad_(False)
        train = probe.accuracy(codes, truth)
        probe.info = ProbeInfo(**{**asdict(info), "fit": {
            **asdict(settings), "num_images": len(codes), "train_accuracy": train,
            "train_accuracy_mean": float(np.mean(list(train.values()))), "seconds": time.perf_counter() - start}})
        return probe

    @classmethod
    def fit(cls, model: CausalVQ, dataset: FactorDataset, sampler: TransitionSampler | None = None,
            settings: ProbeSettings = ProbeSettings()) -> FactorProbe:
        """Fit a probe on the frozen codes of ``settings.num_images`` images of the train split.

        Args:
            model: a ``CausalVQ`` whose factors are the dataset's; only ``encode_codes`` is used, in eval mode
                and without gradients (the model is left as it was).
            dataset: renders the images of the sampled factor values.
            sampler: a ``TransitionSampler`` of the ``"train"`` split (the training run's split seed and
                fractions); default ``TransitionSampler(dataset, "train")``.
            settings: sizes, optimiser and the seed of the images drawn.
        """
        _check_factors(model, dataset)
        sampler = sampler if sampler is not None else TransitionSampler(dataset, split="train")
        if sampler.split != 0:
            raise ValueError("the probe is fitted on the train split; pass a sampler of split 'train'")
        factors = sampler.sample_images(settings.num_images, np.random.default_rng([settings.seed, FIT_STREAM]))
        codes = encode_factors(model, dataset, factors, settings.batch_size)  # (b, k, h, w)
        return cls.fit_codes(codes, factors, tuple(dataset.factor_names), tuple(dataset.factor_sizes),
                             model.config.codebook_size, settings, codes_digest=codes_digest(model))

    def check_model(self, model: CausalVQ) -> None:
        """Raise ``ValueError`` unless the probe reads this model's codes (shape, factors and weights)."""
        c = model.config
        if tuple(self.info.codes_shape) != (c.num_codebooks, c.grid_size, c.grid_size) or \
                self.info.codebook_size != c.codebook_size:
            raise ValueError(f"the probe reads grids {self.info.codes_shape} of {self.info.codebook_size} codes, "
                             f"the model gives ({c.num_codebooks}, {c.grid_size}, {c.grid_size}) of {c.codebook_size}")
        if dict(zip(self.factor_names, self.factor_sizes)) != dict(zip(c.factor_names, c.factor_sizes)):
            raise ValueError(f"the probe estimates {dict(zip(self.factor_names, self.factor_sizes))}, the model's "
                             f"factors are {dict(zip(c.factor_names, c.factor_sizes))}")
        if self.info.codes_digest and self.info.codes_digest != codes_digest(model):
            raise ValueError("the probe was fitted on the codes of other encoder/quantizer weights; refit it "
                             "(python -m train probe --checkpoint DIR)")

    # --- files ---
    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``probe.safetensors`` (``weight``, ``bias``) and ``probe.json`` into ``folder``, each atomically
        (a temporary file renamed over the old one). Returns the folder."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {"format": FORMAT, "version": VERSION, **_jsonable(asdict(self.info))}
        _atomic_write(out / PROBE_WEIGHTS, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        _atomic_write(out / PROBE_CONFIG, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike, model: CausalVQ | None = None) -> FactorProbe:
        """Read ``probe.json`` and ``probe.safetensors`` from ``folder`` (strictly, shapes checked before the
        tensors are read); with ``model``, also check that the probe reads its codes (``check_model``).

        Raises:
            FileNotFoundError: a file is missing (named).
            ValueError: a file is corrupt or does not match the other (named, with the tensor and shapes).
        """
        info = _read_info(Path(folder) / PROBE_CONFIG)
        probe = cls(info)
        path = Path(folder) / PROBE_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has {PROBE_CONFIG} but no {PROBE_WEIGHTS}; refit the probe "
                                    "(python -m train probe --checkpoint DIR)")
        expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
        try:
            with safe_open(str(path), framework="pt") as f:
                found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            if found != expected:
                raise ValueError(f"{path} holds tensors {found}, {PROBE_CONFIG} gives {expected}")
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read the probe weights {path}: {err}") from err
        probe.load_state_dict(state, strict=True)
        if not all(bool(t.isfinite().all()) for t in state.values()):
            raise ValueError(f"{path} holds non-finite values")
        probe.eval().requires_grad_(False)
        if model is not None:
            probe.check_model(model)
        return probe


def has_probe(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds either probe file (then ``FactorProbe.load`` must succeed or say why not)."""
    return (Path(folder) / PROBE_CONFIG).exists() or (Path(folder) / PROBE_WEIGHTS).exists()


def load_probe(folder: str | os.PathLike, model: CausalVQ | None = None) -> FactorProbe | None:
    """``FactorProbe.load(folder, model)``, or ``None`` when the folder holds neither probe file."""
    return FactorProbe.load(folder, model) if has_probe(folder) else None


def encode_factors(model: CausalVQ, dataset: FactorDataset, factors: np.ndarray, batch_size: int = 256
                   ) -> torch.Tensor:
    """The frozen model's code grids of the images of ``factors`` `(b, f)`: long `(b, k, h, w)` on the CPU,
    rendered and encoded ``batch_size`` images at a time (eval mode, no gradients; the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model.encode_codes(render_images(dataset, factors[i:i + batch_size],
                                                               model.config.image_size).to(model.device)).cpu()
                              for i in range(0, len(factors), batch_size)])  # fmt: skip
    finally:
        model.train(was_training)


def evaluate_probe(probe: FactorProbe, model: CausalVQ, dataset: FactorDataset, sampler: TransitionSampler,
                   num_images: int = 512, seed: int = 0, batch_size: int = 256) -> ProbeResult:
    """The probe's accuracy per factor on ``num_images`` images of the sampler's split (drawn from
    ``np.random.default_rng([seed, EVAL_STREAM])``), beside chance = 1 / size_f."""
    probe.check_model(model)
    _check_factors(model, dataset)
    factors = sampler.sample_images(num_images, np.random.default_rng([seed, EVAL_STREAM]))
    acc = probe.accuracy(encode_factors(model, dataset, factors, batch_size), factors)
    chance = {n: 1.0 / s for n, s in zip(probe.factor_names, probe.factor_sizes)}
    return ProbeResult(accuracy=float(np.mean(list(acc.values()))), chance=float(np.mean(list(chance.values()))),
                       per_factor_accuracy=acc, per_factor_chance=chance, num_images=len(factors))


# --- helpers ---
def _check_factors(model: CausalVQ, dataset: FactorDataset) -> None:
    mine = dict(zip(model.config.factor_names, model.config.factor_sizes))
    theirs = dict(zip(dataset.factor_names, dataset.factor_sizes))
    if mine != theirs:
        raise ValueError(f"the model's factors {mine} are not {dataset.name}'s {theirs}")


def _read_info(path: Path) -> ProbeInfo:
    """``probe.json`` as a ``ProbeInfo``; every problem is a ``FileNotFoundError`` / ``ValueError`` naming it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no factor probe: {path} does not exist (python -m train probe --checkpoint "
                                f"{path.parent} fits one)") from None
    except (IsADirectoryError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a valid probe file: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a causalvq factor probe (format must be {FORMAT!r})")
    if data.get("version") != VERSION:
        raise ValueError(f"{path} has probe version {data.get('version')!r}; this causalvq reads {VERSION}")
    try:
        info = ProbeInfo(factor_names=tuple(str(n) for n in data["factor_names"]),
                         factor_sizes=tuple(_positive(s) for s in data["factor_sizes"]),
                         codes_shape=tuple(_positive(d) for d in data["codes_shape"]),
                         codebook_size=_positive(data["codebook_size"]), codes_digest=str(data.get("codes_digest", "")),
                         fit=dict(data.get("fit", {})))
    except KeyError as err:
        raise ValueError(f"{path} lacks the field {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} has an ill-typed field: {err}") from None
    if len(info.codes_shape) != 3 or len(info.factor_names) != len(info.factor_sizes) or not info.factor_names:
        raise ValueError(f"{path}: codes_shape must be (k, h, w) and factor_names as long as factor_sizes")
    return info


def _positive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _atomic_write(path: Path, write: Any) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
