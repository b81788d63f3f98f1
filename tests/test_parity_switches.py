"""The official code's cross-entropy and sampling clamp, each one switch away (docs/fidelity.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from causalvq import losses
from causalvq.config import ModelConfig
from causalvq.graph_discovery import bernoulli_st


def test_renormalised_cross_entropy_is_the_official_one() -> None:
    torch.manual_seed(0)
    probs = torch.randn(3, 5, 64).mul(4).softmax(-1)  # some entries below the 1e-4 clamp
    target = torch.randint(0, 64, (3, 5))
    official = F.cross_entropy(torch.log(torch.clamp(probs, 1e-4)).flatten(0, 1), target.flatten(), reduction="none")
    ours = losses.node_nll(probs, target, renormalise=True).flatten()
    assert torch.allclose(ours, official, atol=1e-6)
    plain = losses.node_nll(probs, target).flatten()
    gap = ours - plain  # log Σ clamp(ŷ_k): the mass the clamp adds, at most 64 · 1e-4
    assert bool((gap >= 0).all()) and bool((gap <= 6.4e-3).all()) and bool((gap > 0).any())
    assert torch.allclose(losses.code_cross_entropy(probs, target, True), official.mean(), atol=1e-6)


def test_separate_clamps_keep_a_gradient_for_saturated_probabilities() -> None:
    for separate, expect_grad in ((False, False), (True, True)):
        p = torch.tensor([1 - 1e-6, 0.3], requires_grad=True)
        bernoulli_st(p, sample=False, separate_clamps=separate).sum().backward()
        assert (p.grad[0] != 0).item() is expect_grad
        assert p.grad[1] != 0  # an unsaturated probability has a gradient either way
    p = torch.tensor([0.2, 0.7, 1.0, 0.0])
    assert torch.equal(bernoulli_st(p, False, separate_clamps=True), bernoulli_st(p, False))  # same values


def test_paper_preset_turns_both_official_switches_on() -> None:
    paper, default = ModelConfig.paper_shapes3d(), ModelConfig()
    assert paper.renormalised_ce and paper.separate_clamps
    assert not default.renormalised_ce and not default.separate_clamps
