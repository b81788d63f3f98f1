"""The optimisation loop shared by both stages: Adam, step-wise LR decay, logging, checkpoints, resume.

A stage is described by a ``StageSpec``: its number, its ``[stageN]`` settings, the parameters to train, a
``draw`` function that builds one batch on the CPU and a ``step`` function that computes its losses. The loop
owns everything else:

- **Determinism.** Step ``t`` draws its batch from two generators, ``shared`` (the same on every process: e.g.
  the stage-2 batch's use) and ``local`` (one per rank: the samples), both seeded by ``(seed, stage, t)``, and
  reseeds torch's global generator from ``(seed, stage, t, rank)`` (Gumbel noise, dropout). Training is thus a
  pure function of (recipe, seed, step) on one machine, thread count and device: resuming from a checkpoint
  continues bit for bit, and two runs of one recipe train the same model. (CPU kernels sum in an order that
  depends on the thread count; ops whose backward accumulates in a racy order, such as advanced-indexing
  ``index_put_``, are kept out of the model: ``MultiCodebookQuantizer.lookup``.)
- **Prefetch.** Because a batch depends only on its step, ``data.prefetch`` threads can draw (render) the next
  batches while the model trains; the result does not depend on their number.
- **Checkpoints** every ``checkpoint_every`` steps and at the last step (``train.checkpoint``), by rank 0.
- **Divergence.** A NaN or infinite loss (on any rank) stops the run before the optimiser step, naming the step;
  the last checkpoint on disk is the last good state.
- **torchrun.** With several processes the objective is wrapped in ``DistributedDataParallel`` (gradients are
  averaged, so every rank keeps the same weights; this is checked at the end of the stage).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from causalvq.model import CausalVQ
from train import distributed
from train.checkpoint import TrainState, load_state, save_state
from train.distributed import Context
from train.monitor import MetricsLog, WindowMeans
from train.recipes import Recipe, StageRecipe, check_resumable, recipe_from_dict

STREAM_SHARED, STREAM_LOCAL, STREAM_TORCH = 1, 2, 3  # a step's generators: all ranks / per rank / torch seed


class TrainingError(RuntimeError):
    """Training cannot go on (diverged loss, a resume state of another stage, ranks out of sync)."""


@dataclass(frozen=True)
class StepResult:
    """One step's outcome, as the step function reports it."""

    loss: torch.Tensor  # scalar to minimise
    parts: dict[str, torch.Tensor]  # named scalars for the log (detached by the loop)
    items: int  # samples in the batch (for the throughput)


class Objective(nn.Module):
    """Adapter so DistributedDataParallel sees every loss: ``forward(fn)`` returns ``fn(model)``.

    DDP only synchronises gradients of computations that go through its ``forward``; the model's objectives
    are separate methods (``image_losses``, ``base_losses``, ...), so the step passes the one it needs.
    """

    def __init__(self, model: CausalVQ) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[CausalVQ], Any]) -> Any:
        return fn(self.model)


@dataclass(frozen=True)
class StageSpec:
    """What differs between the stages."""

    stage: int  # 1 or 2
    settings: StageRecipe  # the [stageN] section
    parameters: list[nn.Parameter]  # what the optimiser updates
    draw: Callable[[np.random.Generator, np.random.Generator], Any]  # (shared, local) -> a CPU batch
    step: Callable[[Objective, Any, int], StepResult]  # (objective, batch, step index) -> losses
    digest: Callable[[Any], str]  # short hash of a batch (to check that ranks draw different data)
    find_unused_parameters: bool = False  # DDP: some steps leave some parameters unused (stage 2's uses)


def step_generators(seed: int, stage: int, step: int, rank: int) -> tuple[np.random.Generator, np.random.Generator]:
    """``(shared, local)`` generators of one step's data; ``shared`` ignores the rank."""
    return (np.random.default_rng([seed, stage, step, STREAM_SHARED]),
            np.random.default_rng([seed, stage, step, STREAM_LOCAL, rank]))


def step_torch_seed(seed: int, stage: int, step: int, rank: int) -> int:
    """Seed of torch's global generator during one step (Gumbel noise, dropout)."""
    return int(np.random.default_rng([seed, stage, step, STREAM_TORCH, rank]).integers(0, 2**63 - 1))


def batches(spec: StageSpec, seed: int, rank: int, start: int, prefetch: int) -> Iterator[Any]:
    """The batches of steps ``start ..`` in order; ``prefetch`` threads draw up to 2·prefetch steps ahead."""
    def draw(step: int) -> Any:
        return spec.draw(*step_generators(seed, spec.stage, step, rank))

    steps = spec.settings.steps
    if prefetch == 0:
        yield from (draw(t) for t in range(start, steps))
        return
    pool = ThreadPoolExecutor(prefetch, thread_name_prefix=f"stage{spec.stage}-data")
    try:
        pending = deque(pool.submit(draw, t) for t in range(start, min(start + 2 * prefetch, steps)))
        upcoming = start + len(pending)
        while pending:
            batch = pending.popleft().result()
            if upcoming < steps:
                pending.append(pool.submit(draw, upcoming))
                upcoming += 1
            yield batch
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def run_stage(ctx: Context, spec: StageSpec, model: CausalVQ, recipe: Recipe, state_path: Path, log: MetricsLog,
              resume: bool, progress: bool = True) -> int:
    """Train one stage to ``spec.settings.steps`` completed steps; returns that number.

    With ``resume`` and a state at ``state_path``, continue from it (a finished stage returns at once).
    """
    settings, stage = spec.settings, spec.stage
    optimizer = torch.optim.Adam(spec.parameters, lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_decay_every, gamma=settings.lr_decay)
    average = None if settings.average_decay == 0 else AveragedModel(
        model, multi_avg_fn=get_ema_multi_avg_fn(settings.average_decay))  # B32: the weights' moving average
    start = 0
    if resume and state_path.is_file():
        state = load_state(state_path)
        if state.stage != stage:
            raise TrainingError(f"{state_path} holds a stage-{state.stage} state, not stage {stage}")
        check_resumable(recipe_from_dict(state.recipe, source=str(state_path)), recipe, state_path)
        model.load_state_dict(state.model, strict=True)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        if state.torch_rng is not None:
            torch.set_rng_state(state.torch_rng)
        if state.numpy_rng is not None:
            np.random.set_state(state.numpy_rng)
        if average is not None:  # check_resumable above: the state was written with the same average_decay
            average.load_state_dict(state.average, strict=True)
        start = state.step
    if ctx.is_main:
        log.rewind(stage, start)
        for stale in state_path.parent.glob(f".{state_path.name}.*.tmp"):  # left by a kill mid-write
            stale.unlink(missing_ok=True)
    if start >= settings.steps:
        _release_average(model, average)
        return start

    objective: nn.Module = Objective(model)
    if ctx.distributed:
        objective = DistributedDataParallel(
            objective, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=spec.find_unused_parameters)
    model.train()
    window, shown = WindowMeans(), {}
    bar = tqdm(total=settings.steps, initial=start, desc=f"stage {stage}", dynamic_ncols=True, mininterval=0.5,
               disable=not (progress and ctx.is_main))
    t_start = t_window = time.perf_counter()
    items = 0
    data = batches(spec, recipe.seed, ctx.rank, start, recipe.data.prefetch)
    try:
        for step, batch in enumerate(data, start):
            torch.manual_seed(step_torch_seed(recipe.seed, stage, step, ctx.rank))
            optimizer.zero_grad(set_to_none=True)
            result = spec.step(objective, batch, step)
            loss = distributed.all_mean(ctx, result.loss.detach()).item()
            if not np.isfinite(loss):
                raise TrainingError(
                    f"stage {stage}: the loss became {loss} at step {step + 1}; training stopped. The last good "
                    f"checkpoint is kept: {state_path if state_path.is_file() else 'none was written yet'}")
            result.loss.backward()
            if settings.grad_clip > 0:
                nn.utils.clip_grad_norm_(spec.parameters, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            if average is not None:
                average.update_parameters(model)
            done, items = step + 1, items + result.items
            window.add({"loss": loss, **{k: float(v.detach()) for k, v in result.parts.items()}})
            bar.update(1)
            if done % settings.log_every == 0 or done == settings.steps:
                now = time.perf_counter()
                means = window.pop()
                record = {"stage": stage, "step": done, "lr": optimizer.param_groups[0]["lr"],
                          "images_per_s": items * ctx.world_size / max(now - t_window, 1e-9),
                          "time_s": now - t_start, **means}
                if ctx.distributed:
                    record["data_digests"] = distributed.gather_objects(ctx, spec.digest(batch))
                if ctx.is_main:
                    log.write(record)
                shown = {k: f"{means[k]:.4g}" for k in list(means)[:4]}
                bar.set_postfix(shown, refresh=False)
                t_window, items = now, 0
            if done % settings.checkpoint_every == 0 or done == settings.steps:
                if ctx.is_main:
                    save_state(state_path, _state(stage, done, recipe, model, optimizer, scheduler, average))
    finally:
        data.close()
        bar.close()
    _release_average(model, average)
    if ctx.distributed:
        _check_in_sync(ctx, model, stage, settings.steps, log)
    return settings.steps


def _release_average(model: CausalVQ, average: AveragedModel | None) -> None:
    """B32: the stage ends with the moving average of the trained weights in ``model`` (its buffers and its frozen
    weights stay as they are); the resume state keeps the last step's weights beside the average."""
    if average is None:
        return
    trained = dict(average.module.named_parameters())
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.requires_grad:
                weight.copy_(trained[name])


def _state(stage: int, step: int, recipe: Recipe, model: CausalVQ, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler, average: AveragedModel | None = None) -> TrainState:
    return TrainState(stage=stage, step=step, recipe=recipe.to_dict(), model=model.state_dict(),
                      optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                      torch_rng=torch.get_rng_state(), numpy_rng=np.random.get_state(legacy=False),
                      average=None if average is None else average.state_dict())


def _check_in_sync(ctx: Context, model: CausalVQ, stage: int, step: int, log: MetricsLog) -> None:
    """Every rank must end the stage with the same weights (DDP averages the gradients)."""
    digests = distributed.gather_objects(ctx, distributed.tensor_digest(model.state_dict()))
    if ctx.is_main:
        log.write({"stage": stage, "step": step, "event": "weights", "weight_digests": digests})
    if len(set(digests)) != 1:
        raise TrainingError(f"stage {stage}: the processes ended with different weights ({digests})")
