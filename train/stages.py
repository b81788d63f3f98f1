"""The two training stages as ``StageSpec``s: what each step draws and which model objective it minimises.

- **Stage 1** (paper §8.1): encoder, quantizer and decoder learn ``model.image_losses(x)`` on single images of the
  train split; the causal-transition layer is frozen (its weights stay at their initial values). B27 (recipe
  switches, off by default): ``stage1.output_bias`` starts the decoder at the first batch's mean pixel, and with
  ``stage1.restart_every`` some steps first move the codes their batch left unused onto its encoder outputs.
- **Stage 2**: the image model is frozen (``requires_grad_(False)``, not only left out of the optimiser as in
  the official code) and only the causal-transition layer learns, on code grids pre-computed once with the
  frozen encoder (paper §13.3; exact, since the encoder is deterministic and no augmentation is used). Each
  batch has a single use, drawn at ``mode_ratio``: base ``base_losses(codes_x)``, action
  ``transition_losses(codes_x, codes_y, a)``, retrieval ``retrieval_losses(codes_x, codes_y, a)``.

Axis legend: ``b`` batch, ``f`` factors, ``k`` codebooks, ``h w`` latent grid, ``p`` pool pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.distributed as dist

from causalvq.config import ModelConfig
from causalvq.data import FactorDataset, render_images
from causalvq.data.pairs import TransitionSampler
from causalvq.model import CausalVQ
from train.data import CodePool
from train.distributed import tensor_digest
from train.loop import Objective, StageSpec, StepResult
from train.recipes import Stage1Recipe, Stage2Recipe

# Fields that shape the image model: a stage-1 checkpoint must agree with the recipe on all of them.
IMAGE_FIELDS: tuple[str, ...] = ("in_channels", "image_size", "hidden_dims", "num_residual", "embedding_dim",
                                 "num_codebooks", "codebook_size", "overlapping_slices")
USES: tuple[str, ...] = ("base", "action", "retrieval")


# --- stage 1 ---
@dataclass(frozen=True)
class ImageBatch:
    factors: np.ndarray  # (b, f) int64
    images: torch.Tensor  # (b, c, S, S) on the CPU
    restart_uniform: np.ndarray | None = None  # (k, v) in [0, 1): B27's draw, the same on every rank; None: off


def init_output_bias(model: CausalVQ, x: torch.Tensor) -> None:
    """B27: set the decoder's output bias so that it draws the mean pixel of ``x`` `(b, c, S, S)`, per channel.

    The decoder ends in Tanh, mapped to [0, 1]; on mostly black images (dSprites) the mean-pixel start removes the
    first steps' burst of "darken everything", which otherwise saturates the Tanh at the sprites' pixels too (their
    gradient is then exactly 0 and the image model never recovers). The mean is taken over every process's batch.
    """
    layer = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        mean = x.mean((0, 2, 3))  # (c,)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(mean)
            mean = mean / dist.get_world_size()
        layer.bias.copy_(torch.atanh((2 * mean - 1).clamp(-0.999, 0.999)))


def restart_dead_codes(model: CausalVQ, x: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """B27: move the codes that no position of ``x`` `(b, c, S, S)` chooses onto encoder outputs of ``x``.

    Under torchrun the code counts are summed over the processes (a code is dead only if no rank's batch uses it)
    and rank 0's new codebook is broadcast, so every process keeps the same weights. ``uniform`` `(k, v)` is the
    step's shared draw (``quantizer.restart_codes``). Returns the number of codes moved, summed over codebooks.
    """
    quantizer = model.quantizer
    with torch.no_grad():
        z = model.encoder(x)  # (b, D, h, w)
        counts = quantizer.code_counts(quantizer.indices(z))  # (k, v)
        world = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if world:
            dist.all_reduce(counts)
        moved = quantizer.restart_codes(z, counts == 0, uniform.to(z.device))
        if world:
            dist.broadcast(quantizer.codebooks.data, src=0)
    return moved.sum()


def stage1_spec(model: CausalVQ, dataset: FactorDataset, sampler: TransitionSampler,
                settings: Stage1Recipe) -> StageSpec:
    """Stage 1: the image model on single train images rendered on the fly."""
    model.requires_grad_(True)
    model.transition.requires_grad_(False)
    size = model.config.image_size
    codes = (model.config.num_codebooks, model.config.codebook_size)

    def draw(shared: np.random.Generator, local: np.random.Generator) -> ImageBatch:
        factors = sampler.sample_images(settings.batch_size, local)  # (b, f)
        uniform = shared.random(codes) if settings.restart_every else None  # (k, v)
        return ImageBatch(factors=factors, images=render_images(dataset, factors, size), restart_uniform=uniform)

    def step(objective: Objective, batch: ImageBatch, index: int) -> StepResult:
        x = batch.images.to(model.device, non_blocking=True)  # (b, c, S, S)
        restarted = None
        if settings.output_bias and index == 0:
            init_output_bias(model, x)
        if settings.restart_every:
            restarted = torch.zeros(())
            if settings.restarts_at(index):
                restarted = restart_dead_codes(model, x, torch.from_numpy(batch.restart_uniform)).float()
        out = objective(lambda m: m.image_losses(x))
        parts = {"recon": out.recon, "vq": out.vq, "perplexity": out.perplexity, "usage": out.usage}
        if restarted is not None:
            parts["restarted"] = restarted  # codes moved at this step (B27); the log shows the window's mean
        return StepResult(loss=out.loss, parts=parts, items=len(x))

    return StageSpec(stage=1, settings=settings, parameters=model.image_parameters(), draw=draw, step=step,
                     digest=lambda batch: tensor_digest(torch.from_numpy(batch.factors)))


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


@dataclass(frozen=True)
class CodeBatch:
    use: str  # one of USES
    index: np.ndarray  # (b,) rows of the base pool (2p images) or of the pair pool (p pairs)


def stage2_spec(model: CausalVQ, pool: CodePool, settings: Stage2Recipe) -> StageSpec:
    """Stage 2: the causal-transition layer on the pre-computed code pool, one use per batch."""
    freeze_image_model(model)
    device, b = model.device, settings.batch_size
    images = torch.cat([pool.codes_x, pool.codes_y]).to(device)  # (2p, k, h, w): the base pool
    codes_x, codes_y = pool.codes_x.to(device), pool.codes_y.to(device)  # (p, k, h, w)
    actions = pool.actions.to(device)  # (p,)
    ratio = np.asarray(settings.mode_ratio, dtype=np.float64)
    ratio = ratio / ratio.sum()

    def draw(shared: np.random.Generator, local: np.random.Generator) -> CodeBatch:
        use = USES[int(shared.choice(len(USES), p=ratio))]  # the same use on every rank (DDP needs one graph)
        size = (settings.retrieval_batch_size or b) if use == "retrieval" else b
        return CodeBatch(use=use, index=local.integers(0, len(images) if use == "base" else len(pool), size))

    def step(objective: Objective, batch: CodeBatch, index: int) -> StepResult:
        i = torch.from_numpy(batch.index).to(device)
        if batch.use == "base":
            cx = images[i].long()
            out = objective(lambda m: m.base_losses(cx))
        else:
            cx, cy, a = codes_x[i].long(), codes_y[i].long(), actions[i]
            if batch.use == "action":
                out = objective(lambda m: m.transition_losses(cx, cy, a, settings.structure_scale(index)))
            else:
                out = objective(lambda m: m.retrieval_losses(cx, cy, a))
        parts = {f"{batch.use}/{f.name}": getattr(out, f.name) for f in fields(out)}
        return StepResult(loss=out.loss, parts=parts, items=len(batch.index))

    return StageSpec(stage=2, settings=settings, parameters=model.transition_parameters(), draw=draw, step=step,
                     digest=lambda batch: tensor_digest(torch.from_numpy(batch.index)),
                     find_unused_parameters=True)
