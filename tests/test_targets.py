"""Targets a recipe states for its evaluation (``[eval.targets]``, ``causalvq.metrics.targets``) and the training
time a release records (``training.json``): parsing, verdicts, the recipe round trip and refusals, resumption, the
loop's clock across a resume. The CLI's use of both is in tests/test_train_cli.py."""

from __future__ import annotations

import json

import pytest

from causalvq.metrics.targets import Target, parse_target, parse_targets, target_table, unmeasured
from train.monitor import MetricsLog
from train.recipes import RecipeError, check_resumable, load_recipe, recipe_from_toml
from train.release import read_training, training_sentence, write_training


@pytest.mark.parametrize(("text", "expected"), [
    (">= 0.85", Target("intervention.k1.accuracy", ">=", 0.85)),
    ("<=1.2", Target("intervention.k1.accuracy", "<=", 1.2)),
    ("< 1e-3", Target("intervention.k1.accuracy", "<", 0.001)),
    (">= 0.93 ± 0.03", Target("intervention.k1.accuracy", ">=", 0.93, 0.03)),
    (">= 0.93 +- 0.03", Target("intervention.k1.accuracy", ">=", 0.93, 0.03)),
])
def test_target_forms(text, expected):
    assert parse_target("intervention.k1.accuracy", text) == expected


@pytest.mark.parametrize("text", ["0.85", "=> 0.85", "== 1", ">= x", ">= nan", ">= inf", ">= 0.9 ± -0.1", ">=", 0.85])
def test_malformed_targets_are_refused_with_the_form(text):
    with pytest.raises(ValueError, match=r"must read like '>= 0.85'"):
        parse_target("intervention.k1.accuracy", text)


@pytest.mark.parametrize("name", ["interventon.k1.accuracy", "psnr", "reconstruction"])
def test_a_target_must_name_a_report_section(name):
    with pytest.raises(ValueError, match="names no evaluation row"):
        parse_target(name, ">= 1")


def test_verdicts_strict_within_tolerance_missed_and_unmeasured():
    at_least = Target("intervention.k1.accuracy", ">=", 0.93, 0.03)
    assert [at_least.verdict(v) for v in (0.95, 0.93, 0.916, 0.899, None, float("nan"))] == [
        "✓", "✓", "✓ within ± 0.03", "✗ missed", "not measured (no samples)", "not measured (no samples)"]
    at_most = Target("structure.mask.size_ratio", "<=", 1.2, 0.1)
    assert [at_most.verdict(v) for v in (1.0, 1.25, 1.31)] == ["✓", "✓ within ± 0.1", "✗ missed"]
    strict = Target("retrieval.action_accuracy", ">", 0.5)
    assert strict.met(0.5) is False and strict.met(0.51) is True


def test_target_table_rows_and_names_the_report_lacks():
    targets = parse_targets({"reconstruction.psnr_db": ">= 30", "codes.changed_accuracy": ">= 0.75",
                             "codes.nope": "<= 1", "probe.accuracy.mean": ">= 0.5"})
    metrics = {"reconstruction.psnr_db": 30.62, "codes.changed_accuracy": 0.638, "probe.accuracy.mean": None}
    lines = target_table(targets, metrics)
    assert lines[:2] == ["| metric | value | target | met |", "|---|---|---|---|"]
    assert lines[2:] == ["| reconstruction.psnr_db | 30.62 | >= 30 | ✓ |",
                         "| codes.changed_accuracy | 0.638 | >= 0.75 | ✗ missed |",
                         "| codes.nope | — | <= 1 | not in this report (check the name) |",
                         "| probe.accuracy.mean | n/a | >= 0.5 | not measured (no samples) |"]
    assert unmeasured(targets, metrics) == ["codes.nope"]


def test_recipe_targets_round_trip_and_refusals(tmp_path):
    recipe = load_recipe("tiny", ['eval.targets={"intervention.k1.accuracy" = ">= 0.93 ± 0.03"}'])
    assert recipe.eval.targets == {"intervention.k1.accuracy": ">= 0.93 ± 0.03"}
    text = recipe.to_toml()
    assert '[eval.targets]\n"intervention.k1.accuracy" = ">= 0.93 ± 0.03"' in text  # one key a line
    assert recipe_from_toml(text).differences(recipe) == []
    assert "[eval.targets]" not in load_recipe("tiny").to_toml()  # no empty table

    bad = tmp_path / "bad.toml"
    bad.write_text(load_recipe("tiny").to_toml() + '\n[eval.targets]\n"intervention.k1.accuracy" = "at least 0.9"\n')
    with pytest.raises(RecipeError, match=r"bad\.toml: eval\.targets: target for 'intervention\.k1\.accuracy'"):
        load_recipe(str(bad))
    with pytest.raises(RecipeError, match=r"eval\.targets: target 'psnr' names no evaluation row"):
        load_recipe("tiny", ['eval.targets={"psnr" = ">= 30"}'])


def test_a_dotted_override_is_refused_with_how_to_quote_it():
    with pytest.raises(RecipeError, match=r"target 'intervention' is a table: a row name holds dots, so quote it"):
        load_recipe("tiny", ["eval.targets.intervention.k1.accuracy=>= 0.9"])


def test_changed_targets_do_not_block_a_resume():
    saved = load_recipe("tiny")
    check_resumable(saved, load_recipe("tiny", ['eval.targets={"reconstruction.psnr_db" = ">= 30"}']), "run")
    with pytest.raises(RecipeError, match="stage1.lr"):
        check_resumable(saved, load_recipe("tiny", ["stage1.lr=0.5"]), "run")


def test_shipped_recipes_state_their_issues_targets():
    dsprites = parse_targets(load_recipe("cpu_dsprites").eval.targets)
    assert {t.metric: str(t) for t in dsprites} == {
        "reconstruction.psnr_db": ">= 30", "retrieval.action_accuracy": ">= 0.95",
        "intervention.k1.accuracy": ">= 0.85", "intervention.k3.accuracy": ">= 0.85",
        "structure.mask.precision": ">= 0.8"}
    shapes = {t.metric: t for t in parse_targets(load_recipe("cpu").eval.targets)}
    assert str(shapes["intervention.k1.accuracy"]) == ">= 0.93 ± 0.03"
    assert str(shapes["codes.unchanged_accuracy"]) == ">= 0.98"


def test_stage_time_sums_the_clock_over_resumed_runs(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for stage, step, t in [(1, 50, 8.0), (1, 100, 16.0), (2, 50, 5.0), (2, 100, 10.0),
                           (2, 150, 4.0), (2, 200, 9.0)]:  # stage 2 resumed from its step-100 checkpoint
        log.write({"stage": stage, "step": step, "time_s": t, "loss": 1.0})
    log.write({"stage": 2, "event": "weights"})  # records without a clock are not steps
    assert log.stage_time(1) == {"steps": 100, "seconds": 16.0, "runs": 1}
    assert log.stage_time(2) == {"steps": 200, "seconds": 19.0, "runs": 2}
    assert log.stage_time(3) is None


def test_training_file_round_trip_sentence_and_unreadable_files(tmp_path):
    where = {"device": "cpu", "threads": 2, "processes": 1}
    stages = {1: {"steps": 3000, "seconds": 435.5, "runs": 1, **where},
              2: {"steps": 14000, "seconds": 2193.8, "runs": 2, **where}}
    write_training(tmp_path, stages)
    assert read_training(tmp_path) == stages
    assert json.loads((tmp_path / "training.json").read_text())["stages"]["2"]["steps"] == 14000
    assert training_sentence(stages) == (
        "**Training** (`training.json`, the training loop's clock): stage 1 436 s (3,000 steps; cpu, 2 threads, "
        "1 process); stage 2 2,194 s (14,000 steps; cpu, 2 threads, 1 process, 2 runs (resumed)); 2,629 s = 43.8 min "
        "in all, without the evaluation.")
    assert training_sentence({}) is None
    assert read_training(tmp_path / "missing") == {}
    (tmp_path / "training.json").write_text("{not json")
    assert read_training(tmp_path) == {}
    (tmp_path / "training.json").write_text('{"stages": [1, 2]}')
    assert read_training(tmp_path) == {}
