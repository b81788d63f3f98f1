"""The opt-in fused C++ kernel computes exactly what the torch path computes (values and gradients)."""

from __future__ import annotations

import shutil

import pytest
import torch

from causalvq import pairwise
from causalvq.config import ModelConfig
from causalvq.model import CausalVQ

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                 reason="no C++ compiler: the fused kernel is optional")]


@pytest.fixture(scope="module")
def fused():
    mp = pytest.MonkeyPatch()
    mp.setenv("CAUSALVQ_FUSED_KERNEL", "")
    assert pairwise.use_fused_kernel(), "the kernel failed to build"
    yield
    pairwise.disable_fused_kernel()
    mp.undo()


@pytest.mark.parametrize("shape", [(2, 5, 6, 3, 4, True, 2), (2, 5, 6, 3, 4, True, 1), (3, 7, 7, 1, 9, False, 1)])
def test_fused_kernel_gradcheck(fused, shape) -> None:
    b, n, m, h, g, with_edges, ab = shape
    torch.manual_seed(0)
    args = [torch.randn(b, n, h, g, dtype=torch.double, requires_grad=True),
            torch.randn(b, m, h, g, dtype=torch.double, requires_grad=True),
            torch.randn(ab, h, g, dtype=torch.double, requires_grad=True),
            torch.randn(b, n, m, dtype=torch.double, requires_grad=True) if with_edges else None,
            torch.randn(h, g, dtype=torch.double, requires_grad=True) if with_edges else None]
    assert torch.autograd.gradcheck(lambda *a: pairwise.pairwise_score(*a, slope=0.2), args)
    expected = pairwise.pairwise_score_reference(*args, slope=0.2)
    assert torch.allclose(pairwise.pairwise_score(*args, slope=0.2), expected)


def test_fused_kernel_training_step_matches_torch_path(fused) -> None:
    torch.manual_seed(0)
    model = CausalVQ(ModelConfig.tiny()).train()
    codes = torch.randint(0, 8, (4, 2, 4, 4))
    actions = torch.tensor([0, 1, 2, 5])

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(1)
        model.transition_losses(codes, codes.flip(0), actions).loss.backward()
        return [p.grad.clone() for p in model.transition_parameters() if p.grad is not None]

    with_kernel = grads()
    pairwise.disable_fused_kernel()
    try:
        plain = grads()
    finally:
        assert pairwise.use_fused_kernel()
    assert len(with_kernel) == len(plain)
    for a, b in zip(with_kernel, plain):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
