"""The two training stages as ``StageSpec``s: what each step draws and which model objective it minimises.

- **Stage 1** (paper §8.1): encoder, quantizer and decoder learn ``model.image_losses(x)`` on single images of the
  train split; the causal-transition layer is frozen (its weights stay at their initial values).
- **Stage 2**: the image model is frozen (``requires_grad_(False)``, not only left out of the optimiser as in
  the official code) and only the causal-transition layer learns, on code grids pre-computed once with the
  frozen encoder (paper §13.3; exact, since the encoder is deterministic and no augmentation is used). Each
  batch has a single use, drawn at ``mode_ratio``: base ``base_losses(codes_x)``, action
  ``transition_losses(codes_x, codes_y, a)``, retrieval ``retrieval_losses(codes_x, codes_y, a)``.

Axis legend: ``b`` batch, ``f`` factors, ``k`` codebooks, ``h w`` latent grid, ``p`` pool pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from causalvq.config import ModelConfig
from causalvq.data import FactorDataset
from causalvq.data.pairs import TransitionSampler
from causalvq.model import CausalVQ
from train.data import CodePool, images_of
from train.distributed import tensor_digest
from train.loop import Objective, StageSpec, StepResult
from train.recipes import Stage1Recipe, Stage2Recipe

# Fields that shape the image model: a stage-1 checkpoint must agree with the recipe on all of them.
IMAGE_FIELDS: tuple[str, ...] = ("in_channels", "image_size", "hidden_dims", "num_residual", "embedding_dim",
                                 "num_codebooks", "codebook_size", "overlapping_slices")
USES: tuple[str, ...] = ("base", "action", "retrieval")


# --- stage 1 ---
def stage1_spec(model: CausalVQ, dataset: FactorDataset, sampler: TransitionSampler,
                settings: Stage1Recipe) -> StageSpec:
    """Stage 1: the image model on single train images rendered on the fly."""
    model.requires_grad_(True)
    model.transition.requires_grad_(False)
    size = model.config.image_size

    def step(objective: Objective, shared: np.random.Generator, local: np.random.Generator) -> StepResult:
        factors = sampler.sample_images(settings.batch_size, local)  # (b, f)
        x = images_of(dataset, factors, size).to(model.device)  # (b, c, S, S)
        out = objective(lambda m: m.image_losses(x))
        parts = {"recon": out.recon, "vq": out.vq, "perplexity": out.perplexity, "usage": out.usage}
        return StepResult(loss=out.loss, parts=parts, items=len(x), digest=tensor_digest(torch.from_numpy(factors)))

    return StageSpec(stage=1, settings=settings, parameters=model.image_parameters(), step=step)


# --- stage 2 ---
def check_image_model(source: ModelConfig, target: ModelConfig, where: str) -> None:
    """Raise ``ValueError`` naming every image-model field on which a stage-1 checkpoint and the recipe differ."""
    diffs = [f"{name} is {getattr(source, name)!r} there but {getattr(target, name)!r} in the recipe"
             for name in IMAGE_FIELDS if getattr(source, name) != getattr(target, name)]
    if diffs:
        raise ValueError(f"the stage-1 checkpoint {where} has another image-model configuration: "
                         + "; ".join(diffs))


def load_image_model(model: CausalVQ, source: CausalVQ) -> None:
    """Copy the encoder, quantizer and decoder of ``source`` (strict, same keys) into ``model``."""
    for name in ("encoder", "quantizer", "decoder"):
        getattr(model, name).load_state_dict(getattr(source, name).state_dict(), strict=True)


def freeze_image_model(model: CausalVQ) -> None:
    """Stage 2 trains only the causal-transition layer."""
    model.requires_grad_(False)
    model.transition.requires_grad_(True)


def stage2_spec(model: CausalVQ, pool: CodePool, settings: Stage2Recipe) -> StageSpec:
    """Stage 2: the causal-transition layer on the pre-computed code pool, one use per batch."""
    freeze_image_model(model)
    device, b = model.device, settings.batch_size
    images = torch.cat([pool.codes_x, pool.codes_y]).to(device)  # (2p, k, h, w): the base pool
    codes_x, codes_y = pool.codes_x.to(device), pool.codes_y.to(device)  # (p, k, h, w)
    actions = pool.actions.to(device)  # (p,)
    ratio = np.asarray(settings.mode_ratio, dtype=np.float64)
    ratio = ratio / ratio.sum()

    def base(objective: Objective, local: np.random.Generator) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        idx = local.integers(0, len(images), b)
        cx = images[torch.from_numpy(idx).to(device)].long()
        out = objective(lambda m: m.base_losses(cx))
        return {"base/loss": out.loss, "base/ce": out.ce, "base/regularizer": out.regularizer,
                "base/accuracy": out.accuracy}, idx

    def pairs(local: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        idx = local.integers(0, len(pool), b)
        i = torch.from_numpy(idx).to(device)
        return codes_x[i].long(), codes_y[i].long(), actions[i], idx

    def action(objective: Objective, local: np.random.Generator) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        cx, cy, a, idx = pairs(local)
        out = objective(lambda m: m.transition_losses(cx, cy, a))
        return {"action/loss": out.loss, "action/ce": out.ce, "action/regularizer": out.regularizer,
                "action/accuracy": out.accuracy}, idx

    def retrieval(objective: Objective, local: np.random.Generator) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        cx, cy, a, idx = pairs(local)
        out = objective(lambda m: m.retrieval_losses(cx, cy, a))
        return {"retrieval/loss": out.loss, "retrieval/accuracy": out.accuracy}, idx

    uses = (base, action, retrieval)  # in USES order

    def step(objective: Objective, shared: np.random.Generator, local: np.random.Generator) -> StepResult:
        use = int(shared.choice(len(uses), p=ratio))  # the same use on every rank (DDP needs one graph)
        parts, idx = uses[use](objective, local)
        loss = next(v for k, v in parts.items() if k.endswith("/loss"))
        return StepResult(loss=loss, parts=parts, items=b, digest=tensor_digest(torch.from_numpy(idx)))

    return StageSpec(stage=2, settings=settings, parameters=model.transition_parameters(), step=step,
                     find_unused_parameters=True)
