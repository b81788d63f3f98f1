"""The opt-in fused C++ kernel computes exactly what the torch path computes (values and gradients)."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from causalvq import kernels
from causalvq.config import ModelConfig
from causalvq.kernels.pairwise import fused_attention_available, pairwise_score, pairwise_score_reference
from causalvq.model import CausalVQ

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                 reason="no C++ compiler: the fused kernel is optional")]


@pytest.fixture(scope="module")
def fused():
    mp = pytest.MonkeyPatch()
    mp.setenv("CAUSALVQ_FUSED_KERNEL", "")
    assert kernels.enable(), "the kernel failed to build"
    yield
    kernels.disable()
    mp.undo()


@contextmanager
def plain_torch():
    """Inside: the plain-torch path; after: the kernel again."""
    kernels.disable()
    try:
        yield
    finally:
        assert kernels.enable()


@pytest.mark.parametrize("shape", [(2, 5, 6, 3, 4, True, 2), (2, 5, 6, 3, 4, True, 1), (3, 7, 7, 1, 9, False, 1)])
def test_fused_kernel_gradcheck(fused, shape) -> None:
    b, n, m, h, g, with_edges, ab = shape
    torch.manual_seed(0)
    args = [torch.randn(b, n, h, g, dtype=torch.double, requires_grad=True),
            torch.randn(b, m, h, g, dtype=torch.double, requires_grad=True),
            torch.randn(ab, h, g, dtype=torch.double, requires_grad=True),
            torch.randn(b, n, m, dtype=torch.double, requires_grad=True) if with_edges else None,
            torch.randn(h, g, dtype=torch.double, requires_grad=True) if with_edges else None]
    assert torch.autograd.gradcheck(lambda *a: pairwise_score(*a, slope=0.2), args)
    expected = pairwise_score_reference(*args, slope=0.2)
    assert torch.allclose(pairwise_score(*args, slope=0.2), expected)


def test_fused_kernel_masked_pairs(fused, pairwise_args) -> None:
    """Pairs off the mask are filled (not computed); the rest and every gradient equal the unmasked score's."""
    torch.manual_seed(0)
    args = pairwise_args
    mask = torch.rand(2, 5, 6) > 0.4
    full = pairwise_score_reference(*args, slope=0.2)
    out = pairwise_score(*args, slope=0.2, mask=mask, fill=-7.0)
    assert torch.allclose(out, torch.where(mask[..., None], full, torch.full_like(full, -7.0)))
    assert torch.autograd.gradcheck(lambda *a: pairwise_score(*a, slope=0.2, mask=mask, fill=-7.0), args)
    weight = torch.randn_like(full)
    grads = torch.autograd.grad((out * weight).sum(), args)
    ref = torch.autograd.grad((full * weight * mask[..., None]).sum(), args)
    assert all(torch.allclose(g, r) for g, r in zip(grads, ref))


def test_fused_kernel_eval_passes_match_torch_path(fused) -> None:
    """Retrieval and intervention without gradients (masked pairs skipped) give the torch path's numbers."""
    torch.manual_seed(0)
    for cfg in (ModelConfig.tiny(), ModelConfig.tiny(intervention_edges="outgoing", action_node=False)):
        model = CausalVQ(cfg).eval()
        codes_x, codes_y = torch.randint(0, 8, (3, 2, 4, 4)), torch.randint(0, 8, (3, 2, 4, 4))
        with torch.no_grad():
            fused_scores = model.retrieve_action_codes(codes_x, codes_y).scores
            fused_probs = model.transition_codes(codes_x, torch.tensor([0, 3, 5])).probs
        with plain_torch(), torch.no_grad():
            plain_scores = model.retrieve_action_codes(codes_x, codes_y).scores
            plain_probs = model.transition_codes(codes_x, torch.tensor([0, 3, 5])).probs
        assert torch.allclose(fused_scores, plain_scores, atol=1e-5)
        assert torch.allclose(fused_probs, plain_probs, atol=1e-6)


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
    with plain_torch():
        plain = grads()
    assert len(with_kernel) == len(plain)
    for a, b in zip(with_kernel, plain):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("with_heads", [False, True])
def test_fused_attention_matches_torch_path(fused, residual, with_heads) -> None:
    """Without gradients the GATv2 layer runs logits, masked softmax and weighted sum in one kernel pass; its
    output equals the torch path's, with node terms shared by several graphs and with per-sample heads."""
    from causalvq.gatv2 import DenseGATv2

    torch.manual_seed(0)
    grids, copies, n, heads = 2, 3, 7, 4
    layer = DenseGATv2(5, 6, heads, residual=residual).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(grids, n, 5, dtype=torch.double)
    weights = torch.rand(grids * copies, n, n, dtype=torch.double)
    edges = torch.rand(grids * copies, n, n) > 0.5
    edges[0] = False  # a graph without edges: every node attends to its self-loop only
    if with_heads:  # per-sample heads take per-sample node terms (no sharing between graphs)
        chosen = torch.randint(0, heads, (grids * copies, 2))
        args = (x.repeat_interleave(copies, 0), weights, edges)
        kwargs = {"heads": chosen}
    else:
        args = (layer.project(x), weights, edges)
        kwargs = {}
    with torch.no_grad():
        assert fused_attention_available(x)
        fused_out = layer(*args, **kwargs)
    with plain_torch(), torch.no_grad():
        plain_out = layer(*args, **kwargs)
    assert fused_out.shape == plain_out.shape == (grids * copies, n, (2 if with_heads else heads) * 6)
    assert torch.allclose(fused_out, plain_out, atol=1e-12)
    with torch.enable_grad():  # with gradients the torch path runs (the kernel has no backward)
        assert layer(*args, **kwargs).requires_grad


def test_app_composes_sliders_the_same_on_the_kernel(fused) -> None:
    """The app moves to the kernel once ``start_fused_kernel`` has loaded it: slider moves on the shipped
    checkpoint give the same codes and images as on the plain-torch path."""
    from pathlib import Path

    from causalvq.explore.explorer import Explorer

    shipped = Path(__file__).resolve().parent.parent / "assets" / "causalvq-shapes3d"
    explorer = Explorer.from_checkpoint(str(shipped), fallback=None)
    example = sorted((shipped.parent / "examples").glob("*.png"))[0]
    codes = explorer.load_image(str(example)).codes
    moves = [[0] * len(explorer.max_steps)] + [[(i + k) % (m + 1) - (m // 2) for k, m in enumerate(explorer.max_steps)]
                                                for i in range(4)]

    def compose() -> list:
        explorer.transitions.clear()  # every step and decode computed again on this path
        explorer._decoded.clear()
        return [explorer.apply_sliders(codes, steps) for steps in moves]

    assert kernels.loaded() is not None
    on_kernel = compose()
    computed = explorer.transitions.computed
    with plain_torch():
        plain = compose()
    assert explorer.transitions.computed >= 2 * computed > 0  # the plain path ran its own transitions
    for a, b in zip(on_kernel, plain):
        assert torch.equal(a.codes, b.codes)
        assert np.array_equal(a.image, b.image)


def test_app_loads_the_kernel_in_the_background_unless_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    import app

    monkeypatch.setenv("CAUSALVQ_FUSED_KERNEL", "0")
    assert app.start_fused_kernel() is None
    monkeypatch.setenv("CAUSALVQ_FUSED_KERNEL", "")
    kernels.disable()
    try:
        thread = app.start_fused_kernel()
        thread.join(timeout=600)
        assert not thread.is_alive() and kernels.loaded() is not None
    finally:
        kernels.disable()


def test_fused_kernel_releases_the_gil_while_it_computes(fused) -> None:
    """Another Python thread runs while one long kernel call computes (the app serves other visitors meanwhile):
    with the GIL held it could not execute a single bytecode between the call's start and end."""
    import sys
    import threading
    import time

    torch.manual_seed(0)
    X, Y = torch.randn(16, 512, 4, 32), torch.randn(16, 512, 4, 32)  # a call of a few hundred ms on one thread
    a = torch.randn(1, 4, 32)
    seen: list[float] = []
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            seen.append(time.perf_counter())

    old, threads = sys.getswitchinterval(), torch.get_num_threads()
    sys.setswitchinterval(0.001)
    torch.set_num_threads(1)  # the kernel takes one core, the counting thread can have the other
    worker = threading.Thread(target=count, daemon=True)
    worker.start()
    try:
        for _ in range(5):  # a few tries: a loaded machine may not schedule the counting thread in a short call
            start = time.perf_counter()
            with torch.no_grad():
                pairwise_score(X, Y, a, slope=0.2)
            end = time.perf_counter()
            margin = 0.2 * (end - start)
            if any(start + margin < t < end - margin for t in list(seen)):
                break
        else:
            pytest.fail(f"no other Python thread ran during a {1e3 * (end - start):.0f} ms kernel call")
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(old)
        torch.set_num_threads(threads)
