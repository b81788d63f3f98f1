"""Adam and step-wise learning-rate decay, without ``torch.optim``.

Every ``torch.optim`` optimiser imports ``torch._dynamo`` when it is built (``Optimizer.add_param_group`` is
wrapped by ``torch._disable_dynamo``): about 800 modules and 72 MiB of resident memory in each training process,
for a compiler this project never calls. These two classes do what the trainer needs of ``torch.optim.Adam`` and
``torch.optim.lr_scheduler.StepLR``:

- ``Adam`` performs torch's single-tensor Adam update op for op (the default on CPU), so the weights are
  bit-identical to torch's after any number of steps (tests/test_train_optim.py);
- ``StepDecay`` multiplies the learning rate by ``gamma`` every ``step_size`` steps, as ``StepLR`` does;
- their state dicts have torch's layout, so resume files written by either load into the other.

Only what the recipes use is there: one parameter group, no weight decay, no AMSGrad.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class Adam:
    """Adam (Kingma & Ba) over one group of parameters, with torch's update and state layout."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("Adam got no parameters")
        if not (lr > 0 and eps >= 0 and 0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid Adam settings: lr={lr}, betas={betas}, eps={eps}")
        self.param_groups = [{"lr": float(lr), "betas": (float(betas[0]), float(betas[1])), "eps": float(eps),
                              "weight_decay": 0.0, "amsgrad": False, "maximize": False,
                              "params": list(range(len(self.params)))}]
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            state = self.state.get(i)
            if state is None:  # as torch: a float32 step counter on the CPU, zero moments
                state = self.state[i] = {"step": torch.tensor(0.0),
                                         "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                         "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
            state["step"] += 1
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = state["step"].item()
            step_size = lr / (1 - beta1**step)
            denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]}``, as torch's."""
        return {"state": {i: dict(s) for i, s in self.state.items()},
                "param_groups": [{**g, "params": list(g["params"])} for g in self.param_groups]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class or of ``torch.optim.Adam`` (one group, no weight decay or AMSGrad)."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"optimizer state has {[len(g['params']) for g in groups]} parameters in "
                             f"{len(groups)} group(s); this optimizer has one group of {len(self.params)}")
        saved = groups[0]
        if saved.get("weight_decay", 0) or saved.get("amsgrad", False) or saved.get("maximize", False):
            raise ValueError("optimizer state uses weight decay, AMSGrad or maximize, which this Adam does not do")
        group = self.param_groups[0]
        group.update(lr=float(saved["lr"]), betas=tuple(float(b) for b in saved["betas"]), eps=float(saved["eps"]))
        index = {saved_id: i for i, saved_id in enumerate(saved["params"])}
        self.state = {}
        for key, entries in state_dict["state"].items():
            if int(key) not in index:
                raise ValueError(f"optimizer state names parameter {key}, which its group does not list")
            i = index[int(key)]
            p = self.params[i]
            moments = {name: torch.as_tensor(entries[name]) for name in ("exp_avg", "exp_avg_sq")}
            for name, value in moments.items():
                if value.shape != p.shape:
                    raise ValueError(f"optimizer state {name} of parameter {i} has shape {tuple(value.shape)}, "
                                     f"the parameter {tuple(p.shape)}")
            self.state[i] = {"step": torch.as_tensor(entries["step"], dtype=torch.float32).detach().clone().cpu(),
                             **{n: v.detach().to(device=p.device, dtype=p.dtype).clone() for n, v in moments.items()}}


class StepDecay:
    """The learning rate times ``gamma`` every ``step_size`` calls of ``step`` (``StepLR``'s schedule)."""

    def __init__(self, optimizer: Adam, step_size: int, gamma: float) -> None:
        if step_size < 1:
            raise ValueError(f"step_size must be at least 1, got {step_size}")
        self.optimizer, self.step_size, self.gamma = optimizer, int(step_size), float(gamma)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_epoch = 0

    def step(self) -> None:
        self.last_epoch += 1
        if self.last_epoch % self.step_size == 0:
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * self.gamma

    def state_dict(self) -> dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma, "base_lrs": list(self.base_lrs),
                "last_epoch": self.last_epoch, "_last_lr": [g["lr"] for g in self.optimizer.param_groups]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class or of ``StepLR``; the learning rate itself comes back with the
        optimizer's state, as with torch's classes."""
        self.step_size, self.gamma = int(state_dict["step_size"]), float(state_dict["gamma"])
        self.base_lrs = [float(lr) for lr in state_dict["base_lrs"]]
        self.last_epoch = int(state_dict["last_epoch"])
