"""Model evaluation (paper §10): reconstruction, action retrieval, codes, structure, k-step intervention and
disentanglement.

``evaluate_model(model, dataset)`` measures a ``CausalVQ`` on one split of a ``FactorDataset`` and returns an
``EvalReport`` (a frozen dataclass of named results, ``causalvq.metrics.report``, whose ``write_report`` writes
``eval.json``, ``eval.md`` and ``confusion.png``). Everything is deterministic: the model runs in eval mode under
``torch.no_grad`` with ``sample=False`` (thresholds instead of Gumbel noise), and every draw comes from a numpy
generator seeded by ``seed`` (one independent stream per section, so switching a section off leaves the others
unchanged).

Images are rendered from known factors by ``dataset.render``, converted with ``causalvq.imaging.to_tensor`` and
resized to ``model.config.image_size`` with ``causalvq.imaging.resize_images``, the same way for inputs, targets
and intervention candidates. Points and pairs come from a ``TransitionSampler`` of the split: both images of a
pair lie in the split.

Protocol (what each number means):

- **Reconstruction**: mean over pixels and images of (x̂ − x)² on [0, 1]; PSNR = 10·log10(1 / mean MSE).
- **Action retrieval** (§10.1-2): on one-step transition pairs (x, y). Directed accuracy: argmax over the A
  actions of p(a | x, y) equals the true action (chance 1/A). Factor (undirected) accuracy: fold the two
  directions, p_f + p_{F+f}, and compare argmaxes over the F factors (chance 1/F). Both also per factor (pairs
  grouped by the factor that moved), and the A×A confusion matrix (row = true action, column = predicted).
  Argmax factor accuracy: the factor of the argmax action is the true one (the official code's
  ``causal_nodir_acc``, which folds the one-hot prediction, not p; with directed accuracy, the retrieval metrics
  of the official notebook apply_action.ipynb, here a clean mean over the pairs).
- **Retrieval with a reject option** (a causalvq addition, ``causalvq.metrics.reject``): the closest single-factor
  move of 1..K steps, or a refusal, with thresholds and margin calibrated on the validation split; rates on pairs
  of the evaluated split (true one-step and k-step moves answered right, two-factor and unrelated pairs refused).
- **Intervention accuracy** (a causalvq addition; the paper shows k repeated applications qualitatively, §10.5):
  for x of the split and an action a that can be applied k times without leaving the factor range (y_k in the
  split too), decode ``model.intervene(x, a, steps=k)`` and count it correct when its pixel MSE to the true y_k
  is strictly smaller than to x itself and to every other k-step neighbour of x (every other action applied k
  times where it stays in range). A candidate rendering to exactly the image of y_k is no rival. Chance is the
  hit rate of a uniformly drawn candidate (1 / number of candidates when all renderings differ). Also the mean
  pixel MSE between the decoded image and y_k (the action-mode MSE of §10.3).
- **Disentanglement** (§10.4): ``causalvq.metrics.disentanglement.evaluate_representation`` (DCI, MIG, SAP,
  FactorVAE) on points of the split, for the faithful representation ``"encoder"`` (continuous pre-quantization
  encoder output, flattened: D·h·w dims) and ``"codes_onehot"`` (one-hot code indices, flattened: L·N dims; a
  causalvq addition), each beside the same scores of a random representation of its width at the same sizes
  (``noise_baseline``, in the chance column). Sizes: ``DisentanglementSizes`` (default ``"library"``,
  disentanglement_lib's; the ``"cpu"`` preset is the named faster setting).
  FactorVAE's groups hold one factor at a sampled value, which can move a point out of the split (the official
  protocol samples the whole dataset).

Axis legend: ``b`` images or pairs, ``c`` channels, ``S`` image side, ``a`` actions (A = 2F), ``f`` factors (F),
``m`` intervention candidates (1 + A: x itself, then every action applied k times).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from causalvq.config import ModelConfig
from causalvq.data import render_images
from causalvq.data.base import FactorDataset
from causalvq.data.pairs import SPLITS, TransitionSampler
from causalvq.metrics.disentanglement import (
    BASELINES,
    SIZE_PRESETS,
    DisentanglementSizes,
    evaluate_representation,
    noise_baseline,
    unrelated_baseline,
)
from causalvq.metrics.reject import evaluate_reject
from causalvq.metrics.report import (
    CodeResult,
    DisentanglementResult,
    EvalReport,
    InterventionResult,
    ReconstructionResult,
    RetrievalResult,
)
from causalvq.metrics.scores import (
    group_count,
    group_mean,
    move_factors,
    nearest_candidate,
    psnr_from_mse,
    retrieval_result,
)
from causalvq.metrics.structure import evaluate_structure
from causalvq.model import CausalVQ

# One independent random stream per section: np.random.default_rng([seed, stream]).
_STREAMS = {"reconstruction": 0, "retrieval": 1, "intervention": 2, "disentanglement": 3, "structure": 4}
REPRESENTATIONS: dict[str, str] = {
    "encoder": "continuous pre-quantization encoder output, flattened (paper §10.4, faithful)",
    "codes_onehot": "one-hot code indices, flattened (causalvq addition)",
}


# --- rendering, batching, sampling --------------------------------------------------------------------------------
@contextmanager
def inference_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no gradients inside the block; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _batched(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, batch_size: int,
             device: torch.device) -> torch.Tensor:
    """``fn`` on slices of ``batch_size`` rows of every input, moved to ``device``; outputs joined on the CPU."""
    n = len(inputs[0])
    return torch.cat([fn(*(x[i:i + batch_size].to(device) for x in inputs)).cpu()
                      for i in range(0, n, batch_size)])  # fmt: skip


def sample_step_pairs(sampler: TransitionSampler, n: int, steps: int, rng: np.random.Generator,
                      max_rounds: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs (x, a) of the sampler's split where ``a`` applied ``steps`` times stays in range.

    x comes from ``sampler.sample_images``; the action is uniform among those that keep the factor in range for
    ``steps`` steps and land in the same split (``sampler.in_split``: a pair never crosses splits); an x with no
    such action is redrawn. Returns factors int64 `(b, f)` and actions int64 `(b,)` with b = n, or fewer
    (possibly 0) when no factor has more than ``steps`` values or ``max_rounds`` draws find too few pairs.
    """
    sizes = tuple(sampler.ds.factor_sizes)
    num_actions = 2 * len(sizes)
    xs, acts, have = [np.zeros((0, len(sizes)), np.int64)], [np.zeros(0, np.int64)], 0
    for _ in range(max_rounds if max(sizes) > steps else 0):
        if have >= n:
            break
        x = np.asarray(sampler.sample_images(2 * (n - have), rng), dtype=np.int64)  # (r, f)
        ok = np.zeros((len(x), num_actions), dtype=bool)  # (r, a)
        for a in range(num_actions):
            moved, valid = move_factors(x, np.full(len(x), a), steps, sizes)
            ok[:, a] = valid & sampler.in_split(moved)
        x, ok = x[ok.any(1)], ok[ok.any(1)]
        xs.append(x)
        acts.append(np.where(ok, rng.random(ok.shape), -1.0).argmax(1))  # a uniform valid action per row
        have += len(x)
    return np.concatenate(xs)[:n], np.concatenate(acts)[:n].astype(np.int64)


# --- the sections (each runs the model in eval mode, without gradients) ------------------------------------------
def evaluate_reconstruction(model: CausalVQ, dataset: FactorDataset, factors: np.ndarray,
                            batch_size: int = 64) -> ReconstructionResult:
    """Reconstruction MSE and PSNR on the images of ``factors (b, f)``, b >= 1."""
    x = render_images(dataset, factors, model.config.image_size)
    with inference_mode(model):
        per_image = _batched(lambda xb: ((model.reconstruct(xb).image - xb) ** 2).flatten(1).mean(1), x,
                             batch_size=batch_size, device=model.device)  # (b,)
    mse = float(per_image.double().mean())
    return ReconstructionResult(mse=mse, psnr=psnr_from_mse(mse), num_images=len(per_image))


def evaluate_retrieval(model: CausalVQ, dataset: FactorDataset, x_factors: np.ndarray, y_factors: np.ndarray,
                       actions: np.ndarray, batch_size: int = 64) -> RetrievalResult:
    """Action retrieval on transition pairs given by factors `(b, f)` of x and y and true actions `(b,)`."""
    s = model.config.image_size
    x, y = render_images(dataset, x_factors, s), render_images(dataset, y_factors, s)
    with inference_mode(model):
        probs = _batched(lambda xb, yb: model.retrieve_action(xb, yb, sample=False).probs, x, y,
                         batch_size=batch_size, device=model.device)  # (b, a)
    return retrieval_result(probs, torch.as_tensor(actions, dtype=torch.long), tuple(dataset.factor_names))


def evaluate_codes(model: CausalVQ, dataset: FactorDataset, x_factors: np.ndarray, y_factors: np.ndarray,
                   actions: np.ndarray, batch_size: int = 64) -> CodeResult:
    """Code-level accuracy of one-step transitions (x, a, y) given by factors `(b, f)` and actions `(b,)`."""
    s, names = model.config.image_size, tuple(dataset.factor_names)
    act = torch.as_tensor(actions, dtype=torch.long)
    with inference_mode(model):
        encode = lambda f: _batched(model.encode_codes, render_images(dataset, f, s), batch_size=batch_size,  # noqa: E731
                                    device=model.device)
        codes_x, codes_y = encode(x_factors), encode(y_factors)  # (b, k, h, w)
        pred = _batched(lambda cx, a: model.transition_codes(cx, a).codes, codes_x, act, batch_size=batch_size,
                        device=model.device)  # (b, k, h, w)
    nx, ny, npred = (model.flatten_codes(c) for c in (codes_x, codes_y, pred))  # (b, n)
    hit, changed = npred == ny, nx != ny  # (b, n)
    hit_changed, hit_kept = (hit & changed).sum(1).double(), (hit & ~changed).sum(1).double()  # (b,)
    moved, kept = changed.sum(1).double(), (~changed).sum(1).double()
    ratio = lambda num, den: float(num.sum() / den.sum()) if den.sum() > 0 else None  # noqa: E731
    factor = act % len(names)
    return CodeResult(
        changed_accuracy=ratio(hit_changed, moved),
        unchanged_accuracy=ratio(hit_kept, kept),
        per_factor_changed_accuracy={n: ratio(hit_changed[factor == f], moved[factor == f])
                                     for f, n in enumerate(names)},
        per_factor_changed_nodes=group_mean(moved, factor, names),
        num_pairs=len(act),
    )  # fmt: skip


def evaluate_intervention(model: CausalVQ, dataset: FactorDataset, x_factors: np.ndarray, actions: np.ndarray,
                          steps: int, batch_size: int = 64) -> InterventionResult:
    """k-step intervention accuracy on pairs (x, a): factors `(b, f)` and actions `(b,)` applicable k times.

    On an incomplete grid (a partial file, Cars3D without every car, CelebA's attribute vectors) only what has an
    image takes part (``dataset.contains``): a pair whose x or y_k has no image is skipped, and the rivals of a
    pair are the k-step neighbours that exist, so its chance level is 1 / (number of existing candidates) when
    all renderings differ. ``num_pairs`` (and ``per_factor_pairs``) count the pairs that were scored; with none
    left, the scores are ``None``.

    Raises:
        ValueError: an action cannot be applied ``steps`` times to its x without leaving the factor range.
    """
    sizes, names = tuple(dataset.factor_sizes), tuple(dataset.factor_names)
    x_factors, actions = np.asarray(x_factors, dtype=np.int64), np.asarray(actions, dtype=np.int64)
    if len(x_factors):
        y_factors, in_range = move_factors(x_factors, actions, steps, sizes)  # (b, f), (b,)
        if not in_range.all():
            raise ValueError(f"some actions cannot be applied {steps} times without leaving the factor range")
        usable = dataset.contains(x_factors) & dataset.contains(y_factors)  # (b,) both images exist
        x_factors, actions = x_factors[usable], actions[usable]
    b = len(x_factors)
    if b == 0:
        return InterventionResult(steps=steps, accuracy=None, chance=None, mse=None,
                                  per_factor_accuracy=dict.fromkeys(names), per_factor_pairs=dict.fromkeys(names, 0),
                                  num_pairs=0)  # fmt: skip
    # candidates: x itself, then every action applied k times where it stays in range and has an image; each
    # distinct factor vector rendered once
    moved, valid = zip(*(move_factors(x_factors, np.full(b, a), steps, sizes) for a in range(2 * len(sizes))))
    cand_factors = np.stack([x_factors, *moved], 1)  # (b, m, f)
    exists = dataset.contains(cand_factors.reshape(-1, len(sizes))).reshape(b, -1)  # (b, m)
    cand_valid = torch.from_numpy(np.stack([np.ones(b, dtype=bool), *valid], 1) & exists)  # (b, m)
    act = torch.as_tensor(actions, dtype=torch.long)  # (b,)
    target = act + 1  # (b,) index of y_k among the candidates
    unique, inverse = np.unique(cand_factors[cand_valid.numpy()], axis=0, return_inverse=True)
    images = render_images(dataset, unique, model.config.image_size)  # (u, c, S, S)
    index = torch.zeros(cand_valid.shape, dtype=torch.long)  # (b, m) row of each candidate in `images`
    index[cand_valid] = torch.from_numpy(inverse.reshape(-1)).long()
    with inference_mode(model):
        pred = _batched(lambda xb, ab: model.intervene(xb, ab, steps=steps, sample=False).image,
                        images[index[:, 0]], act, batch_size=batch_size, device=model.device)  # (b, c, S, S)
    scores = [nearest_candidate(pred[i:i + batch_size], images[index[i:i + batch_size]],
                                cand_valid[i:i + batch_size], target[i:i + batch_size])
              for i in range(0, b, batch_size)]  # candidate images (batch, m, c, S, S) one batch at a time
    hit = torch.cat([sc.hit for sc in scores])  # (b,)
    y = images[index[torch.arange(b), target]]  # (b, c, S, S)
    return InterventionResult(
        steps=steps,
        accuracy=float(hit.float().mean()),
        chance=float(torch.cat([sc.chance for sc in scores]).mean()),
        mse=float(((pred - y) ** 2).double().mean()),
        per_factor_accuracy=group_mean(hit, act % len(sizes), names),
        per_factor_pairs=group_count(act % len(sizes), names),
        num_pairs=b,
    )


def representation_dims(config: ModelConfig, representation: str) -> int:
    """Size of a flattened representation: ``"encoder"`` D·h·w, ``"codes_onehot"`` L·N."""
    if representation == "encoder":
        return config.embedding_dim * config.grid_size**2
    if representation == "codes_onehot":
        return config.num_nodes * config.codebook_size
    raise ValueError(f"unknown representation {representation!r}; known: {', '.join(REPRESENTATIONS)}")


def representation_fn(model: CausalVQ, dataset: FactorDataset, representation: str,
                      batch_size: int = 64) -> Callable[[np.ndarray], np.ndarray]:
    """``factors int (n, f) -> float (n, d)``: a representation of the images of the factors.

    ``"encoder"``: ``model.encoder(x).flatten(1)``, the continuous pre-quantization output, d = D·h·w (paper
    §10.4). ``"codes_onehot"``: one-hot ``model.encode_codes(x)`` flattened, d = L·N.
    """
    representation_dims(model.config, representation)  # reject an unknown name now
    v = model.config.codebook_size

    def one(x: torch.Tensor) -> torch.Tensor:
        if representation == "encoder":
            return model.encoder(x).flatten(1)  # (b, D·h·w)
        return torch.nn.functional.one_hot(model.encode_codes(x), v).flatten(1).float()  # (b, L·N)

    def represent(factors: np.ndarray) -> np.ndarray:
        x = render_images(dataset, factors, model.config.image_size)
        with inference_mode(model):
            return _batched(one, x, batch_size=batch_size, device=model.device).numpy()

    return represent


def evaluate_disentanglement(model: CausalVQ, dataset: FactorDataset, sampler: TransitionSampler,
                             rng: np.random.Generator, sizes: DisentanglementSizes = SIZE_PRESETS["library"],
                             batch_size: int = 64, baseline: str = "unrelated") -> tuple[DisentanglementResult, ...]:
    """DCI, MIG, SAP and FactorVAE of each representation in ``REPRESENTATIONS`` on points of the split.

    Each representation draws from its own generator spawned from ``rng``, and its baseline from a generator
    spawned from that one: with ``baseline="unrelated"`` the same representation of images unrelated to the
    factors asked (``unrelated_baseline``), with ``"noise"`` independent standard normal codes as wide
    (``noise_baseline``).
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    out = []
    for (name, description), child in zip(REPRESENTATIONS.items(), rng.spawn(len(REPRESENTATIONS))):
        (base_rng,) = child.spawn(1)
        dims, factor_sizes = representation_dims(model.config, name), tuple(dataset.factor_sizes)
        represent = representation_fn(model, dataset, name, batch_size)
        scores = evaluate_representation(represent, sampler.sample_images, factor_sizes, child, sizes)
        if baseline == "unrelated":
            base = unrelated_baseline(represent, sampler.sample_images, factor_sizes, base_rng, sizes)
        else:
            base = noise_baseline(dims, sampler.sample_images, factor_sizes, base_rng, sizes)
        out.append(DisentanglementResult(representation=name, description=description, dims=dims,
                                         scores={k: float(v) for k, v in scores.items()},
                                         baseline={k: float(v) for k, v in base.items()}))
    return tuple(out)


# --- the whole evaluation -------------------------------------------------------------------------------------------
def evaluate_model(
    model: CausalVQ,
    dataset: FactorDataset,
    *,
    split: str = "test",
    sampler: TransitionSampler | None = None,
    seed: int = 0,
    num_images: int = 512,
    num_pairs: int = 512,
    max_steps: int = 5,
    disentanglement: bool = True,
    disentanglement_sizes: DisentanglementSizes = SIZE_PRESETS["library"],
    disentanglement_baseline: str = "unrelated",
    batch_size: int = 64,
) -> EvalReport:
    """Evaluate a model on one split of a dataset, deterministically (eval mode, no grad, ``sample=False``).

    Args:
        model: a ``CausalVQ`` whose ``config.factor_names`` and ``factor_sizes`` are the dataset's.
        dataset: a ``FactorDataset``; images are rendered from sampled factors and resized to the model's size.
        split: ``"train"``, ``"val"`` or ``"test"`` part of the factor grid.
        sampler: the ``TransitionSampler`` to draw from; default ``TransitionSampler(dataset, split=split)``
            (split seed 0). Pass the training run's sampler settings (split seed, fractions) here.
        seed: seed of every draw (images, pairs, disentanglement points).
        num_images: images for reconstruction.
        num_pairs: one-step pairs for action retrieval, and (x, a) pairs for each k of intervention accuracy.
        max_steps: intervention accuracy is measured for k = 1 .. max_steps.
        disentanglement: whether to run the disentanglement metrics (the slowest section).
        disentanglement_sizes: their sample sizes; the default is disentanglement_lib's (hours for a model on 2 CPU
            cores: FactorVAE alone represents 970,000 images), ``DisentanglementSizes.named("cpu")`` minutes.
        disentanglement_baseline: their chance column, ``"unrelated"`` (the representation of unrelated images)
            or ``"noise"`` (standard normal codes as wide); see ``evaluate_disentanglement``.
        batch_size: images per model call.
    """
    model_factors = dict(zip(model.config.factor_names, model.config.factor_sizes))
    if model_factors != dict(zip(dataset.factor_names, dataset.factor_sizes)):
        raise ValueError(f"the model's factors {model_factors} are not {dataset.name}'s "
                         f"{dict(zip(dataset.factor_names, dataset.factor_sizes))}")
    if model.config.in_channels != dataset.image_shape[2]:
        raise ValueError(f"the model takes {model.config.in_channels}-channel images, {dataset.name} has "
                         f"{dataset.image_shape[2]}")
    if num_images < 1 or num_pairs < 1 or max_steps < 0 or batch_size < 1:
        raise ValueError(f"need num_images, num_pairs, batch_size >= 1 and max_steps >= 0; got {num_images}, "
                         f"{num_pairs}, {batch_size}, {max_steps}")
    if disentanglement_baseline not in BASELINES:
        raise ValueError(f"disentanglement_baseline must be one of {', '.join(BASELINES)}, "
                         f"got {disentanglement_baseline!r}")
    if sampler is None:
        sampler = TransitionSampler(dataset, split=split)
    elif SPLITS[sampler.split] != split:
        raise ValueError(f"the sampler draws from split {SPLITS[sampler.split]!r}, not {split!r}")
    rng = {name: np.random.default_rng([seed, stream]) for name, stream in _STREAMS.items()}
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(section: str) -> None:
        nonlocal clock
        seconds[section], clock = time.perf_counter() - clock, time.perf_counter()

    images = sampler.sample_images(num_images, rng["reconstruction"])
    recon = evaluate_reconstruction(model, dataset, images, batch_size)
    lap("reconstruction")
    x_factors, y_factors, actions = sampler.sample_pairs(num_pairs, rng["retrieval"])
    retrieval = evaluate_retrieval(model, dataset, x_factors, y_factors, actions, batch_size)
    lap("retrieval")
    reject = evaluate_reject(model, dataset, sampler, num_images=max(2, num_pairs // 4), seed=seed,
                             batch_size=batch_size)  # thresholds from the validation split, rates on this one
    lap("reject")
    codes = evaluate_codes(model, dataset, x_factors, y_factors, actions, batch_size)
    lap("codes")
    s = model.config.image_size
    with inference_mode(model):
        encode = lambda f: _batched(model.encode_codes, render_images(dataset, f, s), batch_size=batch_size,  # noqa: E731
                                    device=model.device)
        structure = evaluate_structure(model, encode(x_factors), encode(y_factors),
                                       torch.as_tensor(actions, dtype=torch.long), tuple(dataset.factor_names),
                                       rng["structure"], batch_size)
    lap("structure")
    intervention = []
    for k in range(1, max_steps + 1):
        x_factors, actions = sample_step_pairs(sampler, num_pairs, k, rng["intervention"])
        intervention.append(evaluate_intervention(model, dataset, x_factors, actions, k, batch_size))
    lap("intervention")
    dis: tuple[DisentanglementResult, ...] = ()
    if disentanglement:
        dis = evaluate_disentanglement(model, dataset, sampler, rng["disentanglement"], disentanglement_sizes,
                                       batch_size, disentanglement_baseline)
        lap("disentanglement")
    protocol = {
        "split": split,
        "split_seed": sampler.seed,
        "split_fractions": list(sampler.fractions),
        "deterministic": True,
        "num_nodes": model.config.num_nodes,
        "intervention_context": model.config.intervention_context,
        "num_images": recon.num_images,
        "num_pairs": retrieval.num_pairs,
        "max_steps": max_steps,
        "intervention_pairs": {f"k{r.steps}": r.num_pairs for r in intervention},
        "disentanglement": dataclasses.asdict(disentanglement_sizes) if disentanglement else None,
        "disentanglement_baseline": disentanglement_baseline if disentanglement else None,
        "batch_size": batch_size,
        **({"reject": reject} if isinstance(reject, str) else {}),
    }
    return EvalReport(
        dataset=dataset.name, split=split, seed=seed, image_size=model.config.image_size,
        factor_names=tuple(dataset.factor_names), action_names=tuple(model.action_names),
        reconstruction=recon, retrieval=retrieval, codes=codes, structure=structure, intervention=tuple(intervention),
        disentanglement=dis,
        protocol=protocol, seconds=seconds, reject=None if isinstance(reject, str) else reject,
    )  # fmt: skip

