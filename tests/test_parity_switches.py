"""The official code's cross-entropy, sampling clamp and dropout draws, each one switch away (docs/fidelity.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from causalvq import losses
from causalvq.config import ModelConfig
from causalvq.graph_discovery import bernoulli_st
from causalvq.model import CausalVQ


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


def test_paper_preset_turns_the_official_switches_on() -> None:
    paper, default = ModelConfig.paper_shapes3d(), ModelConfig()
    assert paper.renormalised_ce and paper.separate_clamps and paper.official_dropout_draws
    assert not default.renormalised_ce and not default.separate_clamps and not default.official_dropout_draws


def test_official_dropout_draws_give_each_sample_its_own_mask_dropout() -> None:
    """Eight copies of one grid under one action: one shared draw gives them the same mask probabilities; the
    official per-sample draws give them different ones (in training only: evaluation has no dropout)."""
    for official in (False, True):
        torch.manual_seed(0)
        model = CausalVQ(ModelConfig.tiny(official_dropout_draws=official, positional_dropout=0.5)).train()
        cfg = model.config
        codes = torch.randint(0, cfg.codebook_size, (1, cfg.num_nodes)).expand(8, -1)
        X = F.one_hot(codes, cfg.codebook_size).float()
        p = model.transition.intervention_probs(X, torch.zeros(8, dtype=torch.long))
        assert (not torch.allclose(p[0], p[1:])) is official
        nodes = model.transition.node_features(codes)  # the graph's P follows the same rule
        assert (not torch.allclose(nodes.features[0], nodes.features[1:])) is official
        model.eval()
        p = model.transition.intervention_probs(X, torch.zeros(8, dtype=torch.long))
        assert torch.allclose(p[0], p[1:])


def test_official_dropout_draws_share_one_p_between_the_base_mode_passes() -> None:
    """The base-mode loss runs a main pass and an identity pass; the official code builds P once for both."""
    for official in (False, True):
        torch.manual_seed(0)
        model = CausalVQ(ModelConfig.tiny(official_dropout_draws=official, positional_dropout=0.5)).train()
        seen: list[torch.Tensor] = []
        project = model.transition.project_nodes
        model.transition.project_nodes = lambda nodes, seen=seen, project=project: (seen.append(nodes.features)
                                                                                    or project(nodes))
        g = model.config.grid_size
        codes = torch.randint(0, model.config.codebook_size, (2, model.config.num_codebooks, g, g))
        model.base_losses(codes).loss.backward()
        assert len(seen) == 2
        assert torch.equal(seen[0], seen[1]) is official
