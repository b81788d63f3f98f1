"""k-step intervention accuracy on an incomplete factor grid (a partial file, Cars3D without every car, CelebA's
attribute vectors): only the images that exist take part, and the result counts the pairs it scored.

The dataset is test_evaluation's ``Levels`` (channel f holds factor f's level) with holes cut into its grid.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_evaluation import NAMES, SIZES, Levels, make_oracle

from causalvq.config import ModelConfig
from causalvq.data.pairs import TransitionSampler
from causalvq.metrics.evaluation import evaluate_intervention, evaluate_model
from causalvq.model import CausalVQ

HAND_HOLES = {(2, 4, 4), (1, 3, 4), (1, 0, 0)}


class HoledLevels(Levels):
    """``Levels`` without the images of ``holes`` (a set of factor tuples) or, with ``every``, of each factor
    vector whose weighted sum a + 2b + 3c is a multiple of ``every``; rendering a hole raises ``ValueError``."""

    name = "holed"

    def __init__(self, holes: set[tuple[int, ...]] = frozenset(), every: int = 0) -> None:
        self.holes, self.every = set(holes), every

    @property
    def complete(self) -> bool:
        return False

    def contains(self, factors: np.ndarray) -> np.ndarray:
        arr = self.check_factors(factors)
        listed = np.array([tuple(row) in self.holes for row in arr.tolist()], dtype=bool).reshape(len(arr))
        patterned = (arr @ np.array([1, 2, 3]) % self.every == 0) if self.every else np.zeros(len(arr), bool)
        return ~(listed | patterned)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out = super().sample_factors(4 * n + 16, rng)
        out = out[self.contains(out)]
        return out[:n] if len(out) >= n else np.concatenate([out, self.sample_factors(n - len(out), rng)])

    def _render(self, factors: np.ndarray) -> np.ndarray:
        if not self.contains(factors).all():
            raise ValueError(f"holed: no image at {factors[~self.contains(factors)][0].tolist()}")
        return super()._render(factors)


@pytest.fixture()
def model() -> CausalVQ:
    torch.manual_seed(0)
    return CausalVQ(ModelConfig.tiny(factor_names=NAMES, factor_sizes=SIZES))


def test_missing_pairs_are_skipped_and_missing_rivals_left_out(model, monkeypatch):
    ds = HoledLevels(HAND_HOLES)
    oracle = make_oracle(model, ds, monkeypatch)
    x = np.array([[2, 3, 4], [0, 0, 0], [0, 0, 0], [1, 3, 4]])
    actions = np.array([0, 1, 0, 0])  # a +, b +, a + (y = (1, 0, 0) has no image), a + from an x with no image
    r = evaluate_intervention(oracle, ds, x, actions, steps=1)
    assert r.num_pairs == 2 and r.per_factor_pairs == {"a": 1, "b": 1, "c": 0}
    assert r.accuracy == 1.0 and r.mse == 0.0
    # (2, 3, 4): x and 4 of its 6 neighbours exist (b + and a - do not); (0, 0, 0) under b +: x, b +, c +
    assert r.chance == pytest.approx((1 / 5 + 1 / 3) / 2)
    nothing = evaluate_intervention(oracle, ds, x[2:], actions[2:], steps=1)
    assert nothing.num_pairs == 0 and nothing.accuracy is None and nothing.chance is None
    with pytest.raises(ValueError, match="cannot be applied 2 times"):
        evaluate_intervention(oracle, ds, np.array([[5, 0, 0]]), np.array([0]), steps=2)


def test_evaluate_model_on_an_incomplete_grid(model, monkeypatch):
    """Every section runs where a fifth of the grid has no image; the oracle still scores 1 at every k, against a
    chance level above the complete grid's (fewer rivals exist)."""
    holed, full = HoledLevels(every=5), Levels()
    assert 0.15 < 1 - holed.contains(full.sample_factors(2000, np.random.default_rng(0))).mean() < 0.25
    kwargs = dict(num_images=16, num_pairs=48, max_steps=3, disentanglement=False, batch_size=16)
    report = evaluate_model(make_oracle(model, holed, monkeypatch), holed,
                            sampler=TransitionSampler(holed, split="test"), **kwargs)
    baseline = evaluate_model(make_oracle(model, full, monkeypatch), full, **kwargs)
    for r, b in zip(report.intervention, baseline.intervention):
        assert r.num_pairs == 48 and r.accuracy == 1.0
        assert r.chance > b.chance
    assert report.retrieval.action_accuracy == 1.0
