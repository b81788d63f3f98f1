"""Evaluation for the CLI: the library's ``causalvq.metrics.evaluation`` with a recipe's settings.

``evaluate(model, dataset, recipe)`` returns the report (``causalvq.metrics.evaluation.write_report`` writes it)
and the model card takes ``markdown_table(report)``. The evaluation itself (reconstruction, retrieval, k-step
intervention, disentanglement) lives in the library.
"""

from __future__ import annotations

from causalvq.data import FactorDataset
from causalvq.metrics.evaluation import evaluate_model
from causalvq.metrics.report import EvalReport, metric_table
from causalvq.model import CausalVQ
from train.data import make_sampler
from train.recipes import Recipe


def evaluate(model: CausalVQ, dataset: FactorDataset, recipe: Recipe) -> EvalReport:
    """Evaluate ``model`` on the test split of ``dataset`` with the recipe's split and ``[eval]`` settings."""
    settings = recipe.eval
    return evaluate_model(
        model, dataset, split="test", sampler=make_sampler(dataset, recipe.data, "test"), seed=settings.seed,
        num_images=settings.num_images, num_pairs=settings.num_pairs, max_steps=settings.max_steps,
        disentanglement=settings.disentanglement,
        disentanglement_sizes=settings.sizes(), batch_size=settings.batch_size)


def markdown_table(report: EvalReport) -> str:
    """The report's scalar metrics as a Markdown table (for the model card)."""
    return "\n".join(metric_table(report.rows())) + "\n"
