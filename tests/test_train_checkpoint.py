"""Resume states and the stage-2 code cache: exact round trips, atomic writes, foreign files refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from causalvq.config import ModelConfig
from causalvq.data import load_dataset
from causalvq.model import CausalVQ
from train.checkpoint import TrainState, atomic_write_text, load_state, save_state
from train.data import CodePool, code_pool_key, encode_pool, load_or_encode_pool, make_sampler
from train.recipes import load_recipe


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler) -> None:
    opt.zero_grad()
    sum(p.square().sum() for p in model.parameters()).backward()
    opt.step()
    sched.step()


# The keys of the states written before the trainer used torch.optim (same layout, fewer entries).
EARLIER_GROUP_KEYS = {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "params"}
EARLIER_SCHEDULER_KEYS = {"step_size", "gamma", "base_lrs", "last_epoch", "_last_lr"}


@pytest.mark.parametrize("writer", ["torch.optim", "earlier trainer"])
def test_state_round_trip_continues_exactly(tmp_path, writer):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):
        _step(model, opt, sched)
    optimizer, scheduler = opt.state_dict(), sched.state_dict()
    if writer == "earlier trainer":
        optimizer["param_groups"] = [{k: v for k, v in g.items() if k in EARLIER_GROUP_KEYS}
                                     for g in optimizer["param_groups"]]
        scheduler = {k: v for k, v in scheduler.items() if k in EARLIER_SCHEDULER_KEYS}
    state = TrainState(stage=1, step=2, recipe={"seed": 0}, model=model.state_dict(), optimizer=optimizer,
                       scheduler=scheduler, torch_rng=torch.get_rng_state(),
                       numpy_rng=np.random.get_state(legacy=False))
    path = save_state(tmp_path / "resume" / "stage1.safetensors", state)
    assert [p.name for p in path.parent.iterdir()] == ["stage1.safetensors"]  # no temporary file left
    back = load_state(path)
    assert (back.stage, back.step, back.recipe) == (1, 2, {"seed": 0})
    assert torch.equal(back.torch_rng, state.torch_rng)
    assert np.array_equal(back.numpy_rng["state"]["key"], state.numpy_rng["state"]["key"])

    clone = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    clone.load_state_dict(back.model, strict=True)
    opt2 = torch.optim.Adam(clone.parameters(), lr=1e-2)
    opt2.load_state_dict(back.optimizer)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    sched2.load_state_dict(back.scheduler)
    _step(model, opt, sched)
    _step(clone, opt2, sched2)
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_foreign_files_are_refused(tmp_path):
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a causalvq training state"):
        load_state(tmp_path / "other.safetensors")
    (tmp_path / "torn.safetensors").write_bytes(b"\x10\x00garbage")
    with pytest.raises(ValueError, match="cannot read"):
        load_state(tmp_path / "torn.safetensors")


def test_atomic_write_replaces_whole_files(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_code_pool_is_cached_by_key(tmp_path):
    recipe = load_recipe("tiny")
    dataset = load_dataset("shapes3d", image_size=16, supersample=1)
    sampler = make_sampler(dataset, recipe.data, "train")
    torch.manual_seed(0)
    model = CausalVQ(ModelConfig.tiny(factor_names=dataset.factor_names, factor_sizes=dataset.factor_sizes))
    key = code_pool_key(recipe.data, 8, 0, model)
    calls = []

    def encode() -> CodePool:
        calls.append(1)
        return encode_pool(model, dataset, sampler, 8, 0, batch_size=3)

    path = tmp_path / "codes.safetensors"
    pool, cached = load_or_encode_pool(path, key, encode, write=True)
    assert not cached and pool.codes_x.shape == (8, 2, 4, 4) and pool.codes_x.dtype == torch.int16
    again, cached = load_or_encode_pool(path, key, encode, write=True)
    assert cached and len(calls) == 1
    assert torch.equal(again.codes_y, pool.codes_y) and torch.equal(again.actions, pool.actions)
    with torch.no_grad():
        model.quantizer.codebooks.add_(1.0)  # other stage-1 weights: another key, so the pool is recomputed
    _, cached = load_or_encode_pool(path, code_pool_key(recipe.data, 8, 0, model), encode, write=True)
    assert not cached and len(calls) == 2
