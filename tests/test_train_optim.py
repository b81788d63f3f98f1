"""train.optim: Adam and StepDecay give torch.optim.Adam and StepLR's weights bit for bit, and share their states."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from train.optim import Adam, StepDecay


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def _train(model: nn.Module, optimizer, scheduler, steps: range) -> None:
    for t in steps:
        gen = torch.Generator().manual_seed(t)
        x, y = torch.randn(8, 5, generator=gen), torch.randn(8, 3, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()


def _torch_pair(model: nn.Module, lr: float = 0.05):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)


def _ours(model: nn.Module, lr: float = 0.05):
    opt = Adam(model.parameters(), lr=lr)
    return opt, StepDecay(opt, step_size=4, gamma=0.5)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_adam_and_step_decay_equal_torch_bit_for_bit() -> None:
    reference, ours = _model(), _model()
    ref_opt, ref_sched = _torch_pair(reference)
    opt, sched = _ours(ours)
    _train(reference, ref_opt, ref_sched, range(13))
    _train(ours, opt, sched, range(13))
    assert _same_weights(reference, ours)
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"] == 0.05 * 0.5**3
    assert not _same_weights(ours, _model())  # it trained


@pytest.mark.parametrize("direction", ["torch to ours", "ours to torch"])
def test_states_load_across_implementations(direction: str) -> None:
    """A resume file written with torch's classes continues on these, and the other way round, bit for bit."""
    straight = _model()
    s_opt, s_sched = _torch_pair(straight)
    _train(straight, s_opt, s_sched, range(11))

    first = _model()
    make_first, make_second = (_torch_pair, _ours) if direction == "torch to ours" else (_ours, _torch_pair)
    f_opt, f_sched = make_first(first)
    _train(first, f_opt, f_sched, range(6))
    second = _model(seed=1)
    second.load_state_dict(first.state_dict())
    o, s = make_second(second, lr=0.3)  # the saved learning rate wins, as with torch
    o.load_state_dict(f_opt.state_dict())
    s.load_state_dict(f_sched.state_dict())
    _train(second, o, s, range(6, 11))
    assert _same_weights(straight, second)


def test_mismatched_state_is_refused() -> None:
    opt = Adam(_model().parameters(), lr=0.1)
    other = Adam(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="parameters"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="invalid Adam"):
        Adam(_model().parameters(), lr=-1.0)


def test_training_imports_no_compiler() -> None:
    """What this module is for: building and stepping the trainer's optimiser keeps torch._dynamo out."""
    code = ("import sys, torch; from train.optim import Adam, StepDecay; p = torch.nn.Parameter(torch.ones(3)); "
            "o = Adam([p], lr=0.1); s = StepDecay(o, 2, 0.5); (p * p).sum().backward(); o.step(); s.step(); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
