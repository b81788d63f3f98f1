"""Tests of causalvq.metrics.evaluation: metric meaning (oracle = 1, random = chance), the pure cores, the report.

The dataset is a fake ``FactorDataset`` whose images make the task checkable by hand: channel f of every pixel
holds factor f's value, scaled to [0, 255], so an oracle reads the factors straight off the pixels.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from causalvq.config import ModelConfig
from causalvq.data import render_images
from causalvq.data.base import FactorDataset
from causalvq.data.pairs import TransitionSampler
from causalvq.metrics.disentanglement import DisentanglementSizes
from causalvq.metrics.evaluation import evaluate_codes, evaluate_intervention, evaluate_model, sample_step_pairs
from causalvq.metrics.report import EvalReport, format_markdown, write_report
from causalvq.metrics.scores import fold_directions, move_factors, nearest_candidate, psnr_from_mse, retrieval_result
from causalvq.model import CausalVQ

SIZES = (6, 8, 10)
NAMES = ("a", "b", "c")
S = 16  # ModelConfig.tiny image size


class Levels(FactorDataset):
    """Channel f is a constant image at level value_f / (size_f − 1) (3 factors, 3 channels)."""

    name = "levels"
    factor_names = NAMES
    factor_sizes = SIZES
    image_shape = (32, 32, 3)  # twice the model's side: resizing by area averaging keeps the levels

    def _render(self, factors: np.ndarray) -> np.ndarray:
        levels = np.round(255.0 * factors / (np.asarray(SIZES) - 1)).astype(np.uint8)  # (n, f)
        return np.broadcast_to(levels[:, None, None, :], (len(factors), *self.image_shape)).copy()


def read_factors(x: torch.Tensor) -> np.ndarray:
    """The oracle's encoder: factors `(b, f)` of Levels images `(b, 3, S, S)`."""
    return np.round(x.mean((2, 3)).cpu().numpy() * (np.asarray(SIZES) - 1)).astype(np.int64)


@pytest.fixture(scope="module")
def dataset() -> Levels:
    return Levels()


@pytest.fixture()
def model() -> CausalVQ:
    torch.manual_seed(0)
    return CausalVQ(ModelConfig.tiny(factor_names=NAMES, factor_sizes=SIZES))


def make_oracle(model: CausalVQ, dataset: Levels, monkeypatch: pytest.MonkeyPatch) -> CausalVQ:
    """Replace the transition uses by the ground truth."""

    def intervene(x, action, steps=1, sample=False):
        moved, valid = move_factors(read_factors(x), action.cpu().numpy(), steps, SIZES)
        assert valid.all()
        return SimpleNamespace(image=render_images(dataset, moved, S))

    def retrieve_action(x, y, sample=False):
        diff = read_factors(y) - read_factors(x)  # (b, f): one entry is ±1
        f = np.abs(diff).argmax(1)
        action = torch.as_tensor(f + len(SIZES) * (diff[np.arange(len(f)), f] < 0))
        return SimpleNamespace(probs=torch.nn.functional.one_hot(action, 2 * len(SIZES)).float(), action=action)

    monkeypatch.setattr(model, "intervene", intervene)
    monkeypatch.setattr(model, "retrieve_action", retrieve_action)
    return model


def make_random(model: CausalVQ, dataset: Levels, monkeypatch: pytest.MonkeyPatch) -> CausalVQ:
    """Random action probabilities; an intervention that decodes a uniformly drawn candidate."""
    gen = np.random.default_rng(1)

    def intervene(x, action, steps=1, sample=False):
        f = read_factors(x)
        choices = [f] + [move_factors(f, np.full(len(f), a), steps, SIZES) for a in range(2 * len(SIZES))]
        out = []
        for i in range(len(f)):
            options = [f[i]] + [m[i] for m, ok in choices[1:] if ok[i]]
            out.append(options[gen.integers(len(options))])
        return SimpleNamespace(image=render_images(dataset, np.stack(out), S))

    def retrieve_action(x, y, sample=False):
        probs = torch.from_numpy(gen.random((len(x), 2 * len(SIZES)))).float().softmax(-1)
        return SimpleNamespace(probs=probs, action=probs.argmax(-1))

    monkeypatch.setattr(model, "intervene", intervene)
    monkeypatch.setattr(model, "retrieve_action", retrieve_action)
    return model


# --- pure cores -----------------------------------------------------------------------------------------------
def test_psnr_from_mse():
    assert psnr_from_mse(0.01) == pytest.approx(20.0)
    assert psnr_from_mse(1e-4) == pytest.approx(40.0)
    assert psnr_from_mse(1.0) == pytest.approx(0.0)
    assert psnr_from_mse(65.025, max_value=255.0) == pytest.approx(30.0)
    assert psnr_from_mse(0.0) == math.inf
    with pytest.raises(ValueError):
        psnr_from_mse(-1.0)


def test_fold_directions_adds_both_directions_of_each_factor():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.05, 0.15, 0.2]])  # F = 3: "+" a, b, c then "-" a, b, c
    assert torch.allclose(fold_directions(probs), torch.tensor([[0.15, 0.35, 0.5]]))


def test_retrieval_result_directed_and_folded_can_disagree():
    names = ("u", "v")  # actions: u+, v+, u-, v-
    probs = torch.tensor([[0.40, 0.35, 0.00, 0.25],  # directed: u+ ; folded: u 0.40 < v 0.60 -> v
                          [0.10, 0.20, 0.30, 0.40],  # directed: v- ; folded: v
                          [0.05, 0.05, 0.80, 0.10]])  # directed: u- ; folded: u
    action = torch.tensor([0, 1, 2])  # u+, v+, u-
    r = retrieval_result(probs, action, names)
    assert r.action_accuracy == pytest.approx(2 / 3)  # rows 0 and 2
    assert r.factor_accuracy == pytest.approx(2 / 3)  # rows 1 and 2
    assert r.per_factor_action_accuracy == {"u": 1.0, "v": 0.0}
    assert r.per_factor_factor_accuracy == {"u": 0.5, "v": 1.0}
    assert r.per_factor_pairs == {"u": 2, "v": 1}
    assert (r.action_chance, r.factor_chance) == (0.25, 0.5)
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0] = expected[1, 3] = expected[2, 2] = 1
    assert np.array_equal(np.asarray(r.confusion), expected)
    assert r.num_pairs == 3


def test_move_factors_steps_and_range():
    x = np.array([[0, 3, 9], [5, 0, 2]])
    moved, valid = move_factors(x, np.array([2, 4]), 2, SIZES)  # c+ twice, b- twice
    assert moved.tolist() == [[0, 3, 9], [5, 0, 2]] and valid.tolist() == [False, False]
    moved, valid = move_factors(x, np.array([0, 5]), 3, SIZES)  # a+ three times, c- three times
    assert moved.tolist() == [[3, 3, 9], [5, 0, 0]] and valid.tolist() == [True, False]


def test_nearest_candidate_strict_and_identical_renderings():
    c = torch.tensor([0.0, 0.5, 1.0, 0.5]).view(1, 4, 1, 1, 1)  # candidates 1 and 3 render the same
    valid = torch.tensor([[True, True, True, True]])
    near = nearest_candidate(torch.full((1, 1, 1, 1), 0.45), c, valid, torch.tensor([1]))
    assert near.hit.item() and near.chance.item() == pytest.approx(0.5)  # the identical twin is no rival
    tie = nearest_candidate(torch.full((1, 1, 1, 1), 0.25), c, valid, torch.tensor([1]))
    assert not tie.hit.item()  # equidistant to candidate 0: not strictly nearest
    masked = nearest_candidate(torch.full((1, 1, 1, 1), 0.9), c, torch.tensor([[False, True, False, True]]),
                               torch.tensor([1]))
    assert masked.hit.item() and masked.chance.item() == 1.0  # invalid candidates never compete


def test_sample_step_pairs_stay_in_range_and_split(dataset):
    sampler = TransitionSampler(dataset, split="test")
    x, a = sample_step_pairs(sampler, 200, 3, np.random.default_rng(0))
    assert x.shape == (200, 3) and a.shape == (200,)
    moved, valid = move_factors(x, a, 3, SIZES)
    assert valid.all() and sampler.in_split(x).all() and sampler.in_split(moved).all()
    x, a = sample_step_pairs(sampler, 10, max(SIZES), np.random.default_rng(0))
    assert x.shape == (0, 3) and a.shape == (0,)


def test_intervention_without_pairs_is_none(model, dataset):
    r = evaluate_intervention(model, dataset, np.zeros((0, 3), np.int64), np.zeros(0, np.int64), 10)
    assert r.num_pairs == 0 and r.accuracy is None and r.per_factor_accuracy == {"a": None, "b": None, "c": None}


# --- metric meaning ---------------------------------------------------------------------------------------------
def test_oracle_scores_one(model, dataset, monkeypatch):
    oracle = make_oracle(model, dataset, monkeypatch)
    report = evaluate_model(oracle, dataset, num_images=8, num_pairs=48, max_steps=5, disentanglement=False)
    assert report.retrieval.action_accuracy == 1.0 and report.retrieval.factor_accuracy == 1.0
    assert all(v == 1.0 for v in report.retrieval.per_factor_action_accuracy.values())
    assert np.trace(np.asarray(report.retrieval.confusion)) == report.retrieval.num_pairs == 48
    assert [r.steps for r in report.intervention] == [1, 2, 3, 4, 5]
    for r in report.intervention:
        assert r.num_pairs == 48 and r.accuracy == 1.0 and r.mse == 0.0
        assert all(v == 1.0 for v in r.per_factor_accuracy.values())
        assert 0.0 < r.chance < 0.5


def test_random_scores_near_chance(model, dataset, monkeypatch):
    rand = make_random(model, dataset, monkeypatch)
    report = evaluate_model(rand, dataset, num_images=8, num_pairs=600, max_steps=2, disentanglement=False)
    r = report.retrieval
    assert r.action_chance == pytest.approx(1 / 6) and r.factor_chance == pytest.approx(1 / 3)
    assert abs(r.action_accuracy - 1 / 6) < 0.06  # 600 pairs: standard error 0.015
    assert abs(r.factor_accuracy - 1 / 3) < 0.08
    for k in report.intervention:
        assert abs(k.accuracy - k.chance) < 0.07, k  # hit rate of a uniformly drawn candidate


@pytest.mark.parametrize("kind", ["oracle", "copy"])
def test_code_accuracy_meaning(model, dataset, monkeypatch, kind):
    """A transition that outputs y's codes scores 1 on changed and kept nodes; one that copies x's codes scores 0 on
    the changed nodes and 1 on the others."""
    from causalvq.transition import TransitionOutput

    x_factors, y_factors, actions = TransitionSampler(dataset, "test").sample_pairs(64, np.random.default_rng(0))
    model.eval()
    with torch.no_grad():
        nodes_y = model.flatten_codes(model.encode_codes(render_images(dataset, y_factors, S)))
    n, v = model.config.num_nodes, model.config.codebook_size

    def transition(nodes, action=None, sample=True):
        target = nodes if action is None or kind == "copy" else nodes_y
        b = len(nodes)
        graph = torch.ones(b, n, n) if action is not None else torch.eye(n).expand(b, n, n)
        probs = torch.nn.functional.one_hot(target, v).float()
        return TransitionOutput(probs=probs, mask=torch.ones(b, n), mask_probs=torch.ones(b, n), edge_probs=graph,
                                graph=graph, head_logits=probs[:, :, None])

    monkeypatch.setattr(model.transition, "forward", transition)
    r = evaluate_codes(model, dataset, x_factors, y_factors, actions, batch_size=64)
    assert r.num_pairs == 64 and sum(r.per_factor_changed_nodes.values()) > 0  # some codes do change
    assert r.unchanged_accuracy == 1.0
    assert r.changed_accuracy == (1.0 if kind == "oracle" else 0.0)
    assert all(a in (None, r.changed_accuracy) for a in r.per_factor_changed_accuracy.values())


def test_untrained_model_runs_deterministically(model, dataset):
    model.train()
    kwargs = dict(num_images=16, num_pairs=24, max_steps=2, disentanglement=False, batch_size=10)
    first = evaluate_model(model, dataset, **kwargs)
    assert model.training  # mode restored
    second = evaluate_model(model, dataset, **kwargs)
    assert first.metrics() == second.metrics()
    rec = first.reconstruction
    assert rec.num_images == 16 and 0.0 < rec.mse < 1.0 and rec.psnr == pytest.approx(psnr_from_mse(rec.mse))
    for value in (first.retrieval.action_accuracy, first.retrieval.factor_accuracy):
        assert 0.0 <= value <= 1.0
    assert sum(map(sum, first.retrieval.confusion)) == 24


def test_wrong_factors_or_split_refused(model, dataset):
    other = CausalVQ(ModelConfig.tiny())
    with pytest.raises(ValueError, match="factors"):
        evaluate_model(other, dataset)
    with pytest.raises(ValueError, match="split"):
        evaluate_model(model, dataset, split="test", sampler=TransitionSampler(dataset, split="val"))


# --- disentanglement, report and files -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_report(dataset) -> EvalReport:
    torch.manual_seed(0)
    model = CausalVQ(ModelConfig.tiny(factor_names=NAMES, factor_sizes=SIZES))
    sizes = DisentanglementSizes(num_train=24, num_test=12, dci_num_train=24, dci_num_test=12, dci_stages=5,
                                 factor_vae_train=24, factor_vae_eval=12, group_size=4, num_variance=16,
                                 importance="extra_trees")
    return evaluate_model(model, dataset, num_images=8, num_pairs=16, max_steps=2, disentanglement_sizes=sizes)


def test_disentanglement_names_both_representations(full_report, model):
    # `model` is a fresh tiny model of the same config: the sizes are the config's
    dis = {d.representation: d for d in full_report.disentanglement}
    assert set(dis) == {"encoder", "codes_onehot"}
    assert "faithful" in dis["encoder"].description
    x = torch.zeros(1, 3, S, S)
    assert dis["encoder"].dims == model.encoder(x).flatten(1).shape[1]
    assert dis["codes_onehot"].dims == model.config.num_nodes * model.config.codebook_size
    for d in dis.values():
        assert {"dci.disentanglement", "mig", "sap", "factor_vae.eval_accuracy"} <= set(d.scores)
        assert all(0.0 <= v <= 1.0 for k, v in d.scores.items() if k != "factor_vae.num_active_dims")


def test_report_names_its_baseline_and_noise_stays_available(full_report, dataset):
    assert full_report.protocol["disentanglement_baseline"] == "unrelated"
    assert "images unrelated to the factors" in format_markdown(full_report)
    with pytest.raises(ValueError, match="baseline"):
        evaluate_model(CausalVQ(ModelConfig.tiny(factor_names=NAMES, factor_sizes=SIZES)), dataset,
                       disentanglement_baseline="random")


def test_report_round_trips_through_json(full_report):
    again = EvalReport.from_dict(json.loads(json.dumps(full_report.to_dict())))
    assert again == full_report


def test_markdown_lists_every_metric(full_report):
    md = format_markdown(full_report)
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| metric")]
    assert [row.split(" | ")[0][2:] for row in rows] == list(full_report.metrics())
    assert "| retrieval.action_accuracy |" in md and "| 0.1667 |" in md  # chance 1/A listed
    assert "deterministic" in md and "split `test`" in md and "disentanglement.encoder.mig" in md


def test_write_report_files(full_report, tmp_path):
    paths = write_report(full_report, tmp_path / "eval")
    assert {p.name for p in paths.values()} == {"eval.json", "eval.md", "confusion.png"}
    assert EvalReport.from_dict(json.loads(paths["json"].read_text())) == full_report
    assert paths["confusion"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
