"""Retrieval that can say no (causalvq.metrics.reject): the rule on hand-built distances, the pairs it is calibrated
and measured on, the calibration file (round trip, malformed files), the explorer reading it instead of measuring,
and the evaluation rows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from causalvq.config import ModelConfig
from causalvq.data import Shapes3D
from causalvq.data.pairs import TransitionSampler
from causalvq.explore.explorer import Explorer
from causalvq.metrics import reject
from causalvq.metrics.reject import CALIBRATION_FILE, Decision, RejectCalibration, Verdict, decide
from causalvq.metrics.report import EvalReport
from causalvq.model import CausalVQ

F, K = 6, 3  # factors (12 actions) and steps of the hand-built distances


def calibration(thresholds=(1.0, 1.5, 2.0), margin: float = 0.0, limits=(3.0, 4.0, 5.0)) -> RejectCalibration:
    rates = reject.empty_rates(len(thresholds), tuple(f"f{i}" for i in range(F)))
    return RejectCalibration(steps=len(thresholds), quantile=0.975, thresholds=tuple(thresholds),
                             limits=tuple(limits), margin=margin,
                             score="mean", split="val", split_seed=0, fractions=(0.7, 0.15, 0.15), seed=0, rates=rates)


def distances(best: tuple[int, int], value: float, rest: float = 5.0) -> np.ndarray:
    d = np.full((2 * F, K), rest)  # (a, K)
    d[best[0], best[1] - 1] = value
    return d


def counts(value: int = 0) -> np.ndarray:
    return np.full((2 * F, K), value)  # (a, K): unexplained codes of y after each move


def no_call(a: int, k: int) -> np.ndarray:
    raise AssertionError("the extension is only needed for a move within its threshold")


# --- the rule on hand-built distances ---
def test_the_closest_move_is_the_answer_when_within_its_threshold_and_no_other_factor_explains_y_better() -> None:
    d = distances((4, 2), 1.2)  # "shape +" twice; 1.2 is within k = 2's threshold 1.5 (not within k = 1's)
    calls = []

    def extend(a: int, k: int) -> np.ndarray:
        calls.append((a, k))
        ext = np.full(2 * F, 3.0)
        ext[(a + F) % (2 * F)] = 0.0  # stepping back along the same factor never counts as a second factor
        return ext

    out = decide(d, counts(), False, calibration(), extend)
    assert (out.action, out.steps, out.verdict, out.accepted) == (4, 2, Verdict.MOVE, True)
    assert calls == [(4, 2)] and out.threshold == 1.5 and out.rival % F != 4 and out.rival_distance == 3.0


def test_the_same_codes_are_no_move_whatever_the_distances() -> None:
    out = decide(distances((0, 1), 0.0), counts(), True, calibration(), no_call)
    assert out.verdict is Verdict.SAME and out.accepted is False
    assert decide(distances((0, 1), 0.0), counts(), True, None).verdict is Verdict.SAME


def test_a_move_above_the_threshold_of_its_k_is_refused() -> None:
    out = decide(distances((7, 3), 2.5), counts(), False, calibration(), no_call)  # 2.5 > threshold 2.0 of k = 3
    assert (out.action, out.steps, out.verdict, out.accepted, out.threshold) == (7, 3, Verdict.FAR, False, 2.0)
    # the threshold belongs to the move's own k: 1.2 passes at k = 2 (1.5) and fails at k = 1 (1.0)
    assert decide(distances((7, 1), 1.2), counts(), False, calibration(), no_call).verdict is Verdict.FAR


def test_a_close_move_that_leaves_more_codes_unexplained_than_its_limit_is_refused() -> None:
    d = distances((3, 1), 0.5)  # well within k = 1's threshold 1.0
    many = counts(0)
    many[3, 0] = 4  # but 4 of y's codes get a probability below 1 % after it, above k = 1's limit 3
    out = decide(d, many, False, calibration(), no_call)
    assert (out.verdict, out.unexplained, out.limit) == (Verdict.FAR, 4, 3.0)
    many[3, 0] = 3  # at the limit it passes on to the two-factor check
    assert decide(d, many, False, calibration(), lambda a, k: np.full(2 * F, 9.0)).verdict is Verdict.MOVE


def test_one_more_step_of_another_factor_that_explains_y_better_refuses_the_move() -> None:
    d = distances((2, 1), 0.8)
    ext = np.full(2 * F, 0.9)
    ext[9] = 0.3  # "scale -" (factor 3) after the move brings y much closer: two factors changed
    out = decide(d, counts(), False, calibration(margin=0.1), lambda a, k: ext)
    assert (out.verdict, out.rival, out.rival_distance, out.accepted) == (Verdict.TWO_FACTORS, 9, 0.3, False)
    # within the margin it is still the answer
    assert decide(d, counts(), False, calibration(margin=0.6), lambda a, k: ext).verdict is Verdict.MOVE


def test_without_a_calibration_the_closest_move_is_given_unjudged() -> None:
    out = decide(distances((11, 2), 4.0), counts(), False, None, no_call)
    assert (out.action, out.steps, out.verdict, out.accepted) == (11, 2, Verdict.UNJUDGED, None)
    with pytest.raises(ValueError, match="1..3 steps"):
        decide(np.zeros((2 * F, 2)), np.zeros((2 * F, 2)), False, calibration(), no_call)


# --- pairs ---
def test_pairs_lie_in_the_split_and_are_what_their_kind_says() -> None:
    ds = Shapes3D()
    sampler = TransitionSampler(ds, split="val")
    pairs = reject.draw_pairs(sampler, 6, 3, np.random.default_rng(0), two_factor=2, unrelated=2)
    x = pairs.x[pairs.source]  # (p, f)
    assert sampler.in_split(pairs.x).all() and sampler.in_split(pairs.y).all()
    diff = x != pairs.y
    single = pairs.kind == reject.SINGLE
    assert (diff[single].sum(1) == 1).all() and (diff[pairs.kind == reject.TWO_FACTOR].sum(1) == 2).all()
    f = pairs.action[single] % F
    step = (pairs.y - x)[single, f]  # the moved factor's change: k steps, up for "+" and down for "-"
    assert (step == np.where(pairs.action[single] < F, 1, -1) * pairs.steps[single]).all()
    assert set(pairs.steps[single]) == {1, 2, 3} and (np.abs((pairs.y - x)[pairs.kind == reject.TWO_FACTOR]) <= 1).all()


# --- a tiny model: calibration, file, explorer, evaluation rows ---
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[CausalVQ, Path]:
    ds = Shapes3D()
    torch.manual_seed(0)
    model = CausalVQ(ModelConfig.tiny(factor_names=tuple(ds.factor_names), factor_sizes=tuple(ds.factor_sizes)))
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(folder)
    return model.eval(), folder


@pytest.fixture(scope="module")
def calibrated(tiny) -> RejectCalibration:
    ds = Shapes3D()
    return reject.calibrate(tiny[0], ds, TransitionSampler(ds, split="val"), num_images=2, steps=2)


def test_calibration_rates_account_for_every_true_pair(tiny, calibrated: RejectCalibration) -> None:
    cal, r = calibrated, calibrated.rates
    assert cal.split == "val" and cal.steps == 2 and len(cal.thresholds) == 2 and cal.model_digest
    assert r.num_images >= 2 and all(c > 0 for c in r.pairs_per_step)
    for v in (r.one_step_right, r.k_steps_right, r.two_factor_rejected, r.unrelated_rejected):
        assert v is None or 0 <= v <= 1
    right = sum(v * c for v, c in zip(r.right_per_step, r.pairs_per_step)) / sum(r.pairs_per_step)
    assert right + sum(r.misses.values()) == pytest.approx(1.0)  # each true pair is right or missed one way
    assert r.num_pairs["single"] == sum(r.pairs_per_step) == sum(r.per_factor_one_step_pairs.values()) + sum(
        c for k, c in enumerate(r.pairs_per_step, 1) if k != 1)


def test_scoring_runs_in_eval_mode_and_restores_the_mode(tiny) -> None:
    model, _ = tiny
    ds = Shapes3D()
    pairs = reject.draw_pairs(TransitionSampler(ds, split="val"), 1, 2, np.random.default_rng(1), 1, 1)
    want = reject.score_pairs(model, ds, pairs, 2)
    model.train()  # a model fresh from training: dropout must not reach the scores
    try:
        got = reject.score_pairs(model, ds, pairs, 2)
        rows = np.flatnonzero(~got.same)
        got = reject.extend_pairs(model, got, rows)
        assert model.training
    finally:
        model.eval()
    assert np.array_equal(got.distances, want.distances) and np.array_equal(got.unexplained, want.unexplained)
    assert np.allclose(got.extension[rows], reject.extend_pairs(model, want, rows).extension[rows])


def test_calibration_file_round_trip_and_malformed_files(tiny, calibrated: RejectCalibration, tmp_path: Path) -> None:
    model, _ = tiny
    assert reject.load_calibration(tmp_path, model) is None  # no file: nothing to read
    calibrated.save(tmp_path)
    assert reject.load_calibration(tmp_path, model) == calibrated
    path = tmp_path / CALIBRATION_FILE
    good = json.loads(path.read_text())
    broken = {"not json": "{", "another format": json.dumps({**good, "format": "x"}),
              "a missing field": json.dumps({k: v for k, v in good.items() if k != "thresholds"}),
              "one threshold short": json.dumps({**good, "thresholds": good["thresholds"][:1]}),
              "an infinite threshold": json.dumps({**good, "thresholds": [1e400, 1.0]}),
              "a text margin": json.dumps({**good, "margin": "wide"}),
              "another model": json.dumps({**good, "model_digest": "0" * 64})}
    for text in broken.values():
        path.write_text(text)
        with pytest.raises(ValueError, match=CALIBRATION_FILE):
            reject.load_calibration(tmp_path, model)
    path.write_text(json.dumps({**good, "model_digest": "0" * 64}))
    assert reject.load_calibration(tmp_path) is not None  # without a model nothing is checked against it


def test_explorer_uses_the_stored_calibration_without_measuring(tiny, calibrated: RejectCalibration, monkeypatch
                                                                ) -> None:
    model, folder = tiny
    calibrated.save(folder)
    try:
        monkeypatch.setattr(reject, "calibrate", lambda *a, **k: pytest.fail("the stored calibration was not used"))
        ex = Explorer(model, source=str(folder), calibration_samples=4, retrieval_steps=2, retrieval_pairs=2)
        assert ex.retrieval_calibration() == calibrated and ex.retrieval_notice == ""
        x = ex.sample([3, 4, 5, 2, 1, 7])
        view = ex.retrieve(x.codes, ex.sample([3, 4, 6, 2, 1, 7]).codes)
        assert np.allclose(view.thresholds, calibrated.thresholds) and view.verdict in {v.value for v in Verdict}
        # a malformed file: the explorer says so and measures the rule itself
        (folder / CALIBRATION_FILE).write_text("{")
        monkeypatch.undo()
        ex = Explorer(model, source=str(folder), calibration_samples=4, retrieval_steps=2, retrieval_pairs=2)
        cal = ex.retrieval_calibration()
        assert cal is not None and cal.split == "val" and "cannot be used" in ex.retrieval_notice
        assert CALIBRATION_FILE in ex.retrieval_notice
    finally:
        (folder / CALIBRATION_FILE).unlink(missing_ok=True)


def test_evaluation_rows_and_their_round_trip(tiny, calibrated: RejectCalibration) -> None:
    from causalvq.metrics.evaluation import evaluate_model

    model, _ = tiny
    report = evaluate_model(model, Shapes3D(), num_images=4, num_pairs=8, max_steps=1, disentanglement=False)
    assert report.reject is not None and report.reject.calibration.split == "val"
    names = {r.name for r in report.rows()}
    for row in ("one_step_right", "k_steps_right", "two_factor_rejected", "unrelated_rejected", "right.k1"):
        assert f"retrieval.reject.{row}" in names
    assert report.reject.rates.num_images == 2 and "reject" in report.seconds
    again = EvalReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.reject == report.reject and again.rows() == report.rows()
    from causalvq.metrics.report import format_markdown

    assert "reject option" in format_markdown(report)
    assert dataclasses.replace(report, reject=None).rows() == [r for r in report.rows()
                                                               if not r.name.startswith("retrieval.reject.")]


def test_decision_accepted_follows_the_verdict() -> None:
    for verdict, accepted in ((Verdict.MOVE, True), (Verdict.SAME, False), (Verdict.FAR, False),
                              (Verdict.TWO_FACTORS, False), (Verdict.UNJUDGED, None)):
        assert Decision(0, 1, 0.0, verdict).accepted is accepted


def test_evaluating_into_a_release_writes_the_calibration_it_measured(tiny, tmp_path: Path) -> None:
    from train.data import open_dataset
    from train.recipes import load_recipe
    from train.run import _evaluate_into

    model, _ = tiny
    recipe = load_recipe("tiny", ["eval.num_images=4", "eval.num_pairs=8", "eval.max_steps=1",
                                  "eval.disentanglement=false"])
    card = tmp_path / "release"
    _evaluate_into(model, open_dataset(recipe.data), recipe, tmp_path, card=card)
    report = EvalReport.from_dict(json.loads((tmp_path / "eval" / "eval.json").read_text()))
    stored = reject.load_calibration(card, model)
    assert stored is not None and stored == report.reject.calibration and stored.split == "val"
    _evaluate_into(model, open_dataset(recipe.data), recipe, tmp_path / "elsewhere", card=None)
    assert not (tmp_path / "elsewhere" / CALIBRATION_FILE).exists()  # only a release folder gets one
