"""Evaluation for the CLI: the library's ``causalvq.metrics.evaluation`` with a recipe's settings.

``evaluate(model, dataset, recipe, probe)`` returns the report (``causalvq.metrics.report.write_report`` writes
it) and the model card takes ``markdown_table(report)``. The evaluation itself (reconstruction, retrieval, k-step
intervention, disentanglement, the factor probe's accuracy) lives in the library.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from causalvq.data import FactorDataset
from causalvq.metrics.evaluation import evaluate_model
from causalvq.metrics.report import EvalReport, metric_table, summary_lines
from causalvq.metrics.targets import Target
from causalvq.model import CausalVQ
from causalvq.probe import FactorProbe, evaluate_probe
from train.data import make_sampler
from train.recipes import Recipe


def evaluate(model: CausalVQ, dataset: FactorDataset, recipe: Recipe, probe: FactorProbe | None = None) -> EvalReport:
    """Evaluate ``model`` on the test split of ``dataset`` with the recipe's split and ``[eval]`` settings; with
    the checkpoint's ``probe``, also its accuracy on ``eval.num_images`` test images (the ``probe.*`` rows)."""
    settings = recipe.eval
    sampler = make_sampler(dataset, recipe.data, "test")
    report = evaluate_model(
        model, dataset, split="test", sampler=sampler, seed=settings.seed,
        num_images=settings.num_images, num_pairs=settings.num_pairs, max_steps=settings.max_steps,
        disentanglement=settings.disentanglement,
        disentanglement_sizes=settings.sizes(), disentanglement_baseline=settings.baseline,
        batch_size=settings.batch_size)
    if probe is None:
        return report
    start = time.perf_counter()
    result = evaluate_probe(probe, model, dataset, sampler, num_images=settings.num_images, seed=settings.seed,
                            batch_size=settings.batch_size)
    return dataclasses.replace(report, probe=result,
                               seconds={**report.seconds, "probe": time.perf_counter() - start})


def markdown_table(report: EvalReport, targets: Sequence[Target] = (), notes: Sequence[str] = ()) -> str:
    """The report's scalar metrics as a Markdown table (for the model card), after the targets, the notes and the
    structure in plain words (``summary_lines``)."""
    return "\n".join(summary_lines(report, targets, notes) + metric_table(report.rows())) + "\n"
