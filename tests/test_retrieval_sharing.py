"""Retrieval's A passes share what they have in common (``CausalTransition._shared_passes``): the same answers as
one pass per action, on tiny models whose masks and graphs are sparse (so that passes really skip rows)."""

import pytest
import torch

from causalvq.config import ModelConfig
from causalvq.model import CausalVQ

SWITCHES = [{}, {"action_node": False}, {"mask_hidden": 8}, {"intervention_edges": "outgoing"},
            {"graph_residual": False}, {"mask_context": 1, "mask_hidden": 8}, {"intervention_context": 1}]


def _sparse_model(mask_shift: float = 0.3, edge_shift: float = 1.5, **switches) -> CausalVQ:
    """A tiny double-precision model in eval mode whose action masks cover a few nodes and whose graph has a
    few in-edges per node (the discoverers' output layer and the mask's bias shifted down)."""
    torch.manual_seed(0)
    cfg = ModelConfig(codebook_size=16, graph_width=8, discoverer_width=16, **switches)
    model = CausalVQ(cfg).double().eval()
    tr = model.transition
    with torch.no_grad():
        tr.discoverers.w2.mul_(8)
        tr.discoverers.b2.sub_(edge_shift)
        (tr.mask_out or tr.mask_net).bias.sub_(mask_shift)
    return model


def _per_action(model: CausalVQ, codes: torch.Tensor):
    """One pass per (grid, action): the dense reference."""
    A = model.config.num_actions
    actions = torch.arange(A).repeat(codes.shape[0])
    return model.transition(codes.repeat_interleave(A, 0), actions, sample=False)


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(s) or "defaults")
def test_shared_passes_equal_one_pass_per_action(switches: dict) -> None:
    model = _sparse_model(**switches)
    A, n = model.config.num_actions, model.config.num_nodes
    codes = torch.randint(0, model.config.codebook_size, (3, n), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        shared = model.transition(codes, torch.arange(A).repeat(3), sample=False, copies=A)
        dense = _per_action(model, codes)
    sizes = shared.mask.sum(1)
    assert 0 < sizes.float().mean() < n / 4, "the test needs sparse, non-empty masks"
    assert (shared.graph.sum((1, 2)) < n * n / 4).all(), "the test needs a sparse graph"
    torch.testing.assert_close(shared.probs, dense.probs, rtol=0, atol=1e-12)
    for name in ("mask", "mask_probs", "edge_probs", "graph"):
        torch.testing.assert_close(getattr(shared, name), getattr(dense, name), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mask_shift", [-5.0, 5.0], ids=["every node intervened", "no node intervened"])
def test_shared_passes_with_full_and_empty_masks(mask_shift: float) -> None:
    model = _sparse_model(mask_shift=mask_shift, edge_shift=0.0)
    A, n = model.config.num_actions, model.config.num_nodes
    codes = torch.randint(0, model.config.codebook_size, (2, n), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        shared = model.transition(codes, torch.arange(A).repeat(2), sample=False, copies=A)
        dense = _per_action(model, codes)
    assert shared.mask.mean().item() == (1.0 if mask_shift < 0 else 0.0)
    torch.testing.assert_close(shared.probs, dense.probs, rtol=0, atol=1e-12)


def test_retrieval_scores_equal_the_per_action_loop_with_and_without_gradients() -> None:
    """``retrieve_action_codes`` (shared passes without gradients) and the scores with gradients (one batched
    dense pass) both equal A separate passes; with gradients the parameter gradients agree too."""
    model = _sparse_model()
    cfg = model.config
    gen = torch.Generator().manual_seed(3)
    g = cfg.grid_size
    cx = torch.randint(0, cfg.codebook_size, (2, cfg.num_codebooks, g, g), generator=gen)
    cy = torch.randint(0, cfg.codebook_size, (2, cfg.num_codebooks, g, g), generator=gen)
    nx, ny = model.flatten_codes(cx), model.flatten_codes(cy)

    def loop() -> torch.Tensor:
        from causalvq.losses import retrieval_distance

        cols = [retrieval_distance(model.transition(nx, torch.full((2,), a), sample=False).probs[:, None], ny,
                                   cfg.retrieval_score, cfg.renormalised_ce)[:, 0] for a in range(cfg.num_actions)]
        return torch.stack(cols, 1)  # (b, a)

    with torch.no_grad():
        torch.testing.assert_close(model.retrieve_action_codes(cx, cy).scores, loop(), rtol=0, atol=1e-10)
    params = model.transition_parameters()
    batched = model._action_scores(nx, ny, sample=False)
    reference = loop()
    torch.testing.assert_close(batched, reference, rtol=0, atol=1e-10)
    grads = torch.autograd.grad(batched.sum(), params, allow_unused=True)
    ref_grads = torch.autograd.grad(reference.sum(), params, allow_unused=True)
    for got, want in zip(grads, ref_grads):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
