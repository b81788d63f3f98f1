"""Evaluation for the CLI: ``causalvq.metrics.evaluation`` when it is installed, else a minimal report.

``evaluate(model, dataset, recipe)`` returns a report object and ``write(report, folder)`` writes it; the model
card takes ``markdown_table(report)``. The full evaluation (reconstruction, retrieval, k-step intervention,
disentanglement) lives in the library; ``basic_report`` is a small fallback computing only the reconstruction
MSE / PSNR and the action-retrieval accuracy on the test split, used when that module is absent.

Axis legend: ``b`` batch, ``f`` factors, ``a`` actions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causalvq import losses
from causalvq.data import FactorDataset
from causalvq.metrics.evaluation import format_value, metric_table
from causalvq.model import CausalVQ
from train.checkpoint import atomic_write_text
from train.data import images_of, make_sampler
from train.recipes import Recipe


@dataclass(frozen=True)
class BasicReport:
    """The fallback report: reconstruction and action retrieval on the test split."""

    dataset: str
    split: str
    seed: int
    reconstruction_mse: float
    reconstruction_psnr: float
    retrieval_accuracy: float
    retrieval_chance: float
    num_images: int
    num_pairs: int

    def metrics(self) -> dict[str, float]:
        return {"reconstruction.mse": self.reconstruction_mse, "reconstruction.psnr_db": self.reconstruction_psnr,
                "retrieval.action_accuracy": self.retrieval_accuracy}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _library():
    """The library's evaluation module, or ``None`` when it is not installed."""
    try:
        from causalvq.metrics import evaluation
    except ModuleNotFoundError as err:
        if err.name != "causalvq.metrics.evaluation":
            raise
        return None
    return evaluation


def evaluate(model: CausalVQ, dataset: FactorDataset, recipe: Recipe) -> Any:
    """Evaluate ``model`` on the test split of ``dataset`` with the recipe's split and ``[eval]`` settings."""
    lib = _library()
    if lib is None:
        return basic_report(model, dataset, recipe)
    settings = recipe.eval
    sampler = make_sampler(dataset, recipe.data, "test")
    return lib.evaluate_model(
        model, dataset, split="test", sampler=sampler, seed=settings.seed, num_images=settings.num_images,
        num_pairs=settings.num_pairs, max_steps=settings.max_steps, disentanglement=settings.disentanglement,
        disentanglement_sizes=lib.DisentanglementSizes(importance=settings.importance),
        batch_size=settings.batch_size)


@torch.no_grad()
def basic_report(model: CausalVQ, dataset: FactorDataset, recipe: Recipe) -> BasicReport:
    """Reconstruction MSE / PSNR and directed retrieval accuracy on the test split (deterministic)."""
    settings, size = recipe.eval, model.config.image_size
    sampler = make_sampler(dataset, recipe.data, "test")
    model.eval()
    bs = settings.batch_size
    factors = sampler.sample_images(settings.num_images, np.random.default_rng([settings.seed, 0]))
    sq_err = 0.0
    for i in range(0, len(factors), bs):
        x = images_of(dataset, factors[i:i + bs], size).to(model.device)
        sq_err += float((model.reconstruct(x).image - x).pow(2).mean()) * len(x)
    mse = sq_err / len(factors)
    xf, yf, actions = sampler.sample_pairs(settings.num_pairs, np.random.default_rng([settings.seed, 1]))
    hits = 0
    for i in range(0, len(actions), bs):
        x = images_of(dataset, xf[i:i + bs], size).to(model.device)
        y = images_of(dataset, yf[i:i + bs], size).to(model.device)
        pred = model.retrieve_action(x, y).action.cpu().numpy()  # (b,)
        hits += int((pred == actions[i:i + bs]).sum())
    return BasicReport(dataset=dataset.name, split="test", seed=settings.seed, reconstruction_mse=mse,
                       reconstruction_psnr=losses.psnr(mse), retrieval_accuracy=hits / len(actions),
                       retrieval_chance=1 / model.num_actions, num_images=len(factors), num_pairs=len(actions))


def write(report: Any, folder: str | Path) -> Path:
    """Write the report into ``folder`` (the library's ``write_report`` or ``eval.json`` + ``eval.md``)."""
    folder = Path(folder)
    lib = _library()
    if lib is not None and not isinstance(report, BasicReport):
        lib.write_report(report, folder)
    else:
        atomic_write_text(folder / "eval.json", json.dumps(report.to_dict(), indent=2) + "\n")
        atomic_write_text(folder / "eval.md", f"# Evaluation: {report.dataset}, split `{report.split}`\n\n"
                          + markdown_table(report))
    return folder


def markdown_table(report: Any) -> str:
    """The report's scalar metrics as a Markdown table (for the model card)."""
    rows = report.rows() if hasattr(report, "rows") else None
    if rows is not None:
        lines = metric_table(rows)
    else:
        lines = ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {format_value(v)} |" for k, v in report.metrics().items()]
    return "\n".join(lines) + "\n"
