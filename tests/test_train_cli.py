"""The real training CLI (``train.cli.main``) end to end with the tiny recipe, and its refusals.

Every refusal must say what is wrong in one line and leave whatever the output folder already held untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from causalvq.model import CausalVQ
from train.checkpoint import load_state
from train.cli import main
from train.release import read_training, training_sentence

FAST_EVAL = ["--set", "eval.num_images=8", "--set", "eval.num_pairs=8", "--set", "eval.max_steps=1"]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def cli(*args: str | Path) -> int:
    return main([str(a) for a in args] + ["--no-progress", "--threads", "1"])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One ``python -m train all --recipe tiny`` run, shared by the tests below (read-only)."""
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert cli("all", "--recipe", "tiny", "--out", out, *FAST_EVAL) == 0
    torch.set_num_threads(threads)
    return out


def test_all_writes_a_loadable_release(tiny_run):
    for name in ("recipe.toml", "metrics.jsonl", "stage1_losses.png", "stage2_losses.png",
                 "stage2_codes.safetensors", "resume/stage1.safetensors", "resume/stage2.safetensors",
                 "stage1/config.json", "stage1/model.safetensors", "model/config.json", "model/model.safetensors",
                 "model/README.md", "model/recipe.toml", "model/eval/eval.json"):
        assert (tiny_run / name).is_file(), name
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in records] == [(1, 2), (1, 4), (1, 6), (2, 2), (2, 4), (2, 6)]
    assert all({"loss", "lr", "images_per_s"} <= set(r) for r in records)
    assert {"recon", "vq"} <= set(records[0])

    model = CausalVQ.from_pretrained(tiny_run / "model")
    assert model.config.image_size == 16 and model.config.factor_names[0] == "floor_hue"
    x = torch.rand(2, 3, 16, 16)
    assert model.reconstruct(x).image.shape == (2, 3, 16, 16)
    # stage 2 changed the causal-transition layer and nothing else
    before = CausalVQ.from_pretrained(tiny_run / "stage1").state_dict()
    changed = {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}
    assert changed and all(name.startswith("transition.") for name in changed)

    card = (tiny_run / "model" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: causalvq" in card and "license: mit" in card
    assert "[stage2]" in card and "| retrieval.action_accuracy |" in card

    # training.json: each release records the stages behind it, from the loop's clock
    assert set(read_training(tiny_run / "stage1")) == {1}
    stages = read_training(tiny_run / "model")
    assert set(stages) == {1, 2} and stages[1] == read_training(tiny_run / "stage1")[1]
    for stage in (1, 2):
        assert stages[stage]["steps"] == 6 and stages[stage]["seconds"] > 0 and stages[stage]["runs"] == 1
        assert stages[stage]["device"] == "cpu" and stages[stage]["processes"] == 1
    assert training_sentence(stages) in (tiny_run / "model" / "eval" / "eval.md").read_text()
    assert training_sentence(stages) in card


def test_evaluate_checks_the_recipe_targets(tiny_run, tmp_path, capsys):
    """``[eval.targets]`` become eval.md's first table: met, missed, and a name the report lacks (with a warning)."""
    out = tmp_path / "report"
    targets = '{"reconstruction.psnr_db" = ">= 0", "retrieval.action_accuracy" = "> 2", "codes.nope" = "<= 1"}'
    assert cli("evaluate", "--checkpoint", tiny_run / "model", "--out", out, *FAST_EVAL,
               "--set", f"eval.targets={targets}") == 0
    assert "eval.targets names 'codes.nope', which this report does not have" in capsys.readouterr().err
    text = (out / "eval" / "eval.md").read_text()
    assert text.index("**Targets**") < text.index("**Training**") < text.index("| metric | value | chance |")
    psnr = json.loads((out / "eval" / "eval.json").read_text())["reconstruction"]["psnr"]
    assert f"| reconstruction.psnr_db | {psnr:.4g} | >= 0 | ✓ |" in text
    assert "| > 2 | ✗ missed |" in text
    assert "| codes.nope | — | <= 1 | not in this report (check the name) |" in text


def test_evaluate_command_and_push_to_hub(tiny_run, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("huggingface_hub.HfApi.create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw.get("exist_ok"))))
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder",
                        lambda self, **kw: calls.append(("upload", kw["repo_id"], sorted(
                            p.name for p in Path(kw["folder_path"]).iterdir()))) or "https://hf.co/commit/1")
    out = tmp_path / "report"
    assert cli("evaluate", "--checkpoint", tiny_run / "model", "--out", out, "--push-to-hub", "me/tiny",
               *FAST_EVAL) == 0
    assert json.loads((out / "eval" / "eval.json").read_text())["split"] == "test"
    assert calls[0] == ("create", "me/tiny", True)
    assert calls[1][:2] == ("upload", "me/tiny")
    assert {"config.json", "model.safetensors", "README.md"} <= set(calls[1][2])


def test_earlier_results_need_resume(tiny_run, capsys):
    before = snapshot(tiny_run)
    assert cli("stage1", "--recipe", "tiny", "--out", tiny_run) == 2
    assert "already holds results" in capsys.readouterr().err
    assert cli("all", "--recipe", "tiny", "--out", tiny_run, "--set", "model.codebook_size=16") == 2
    err = capsys.readouterr().err
    assert "another recipe" in err and "model.codebook_size" in err
    assert snapshot(tiny_run) == before


def test_stage2_refuses_a_stage1_checkpoint_of_another_configuration(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = cli("stage2", "--recipe", "tiny", "--checkpoint", tiny_run / "stage1", "--out", out,
               "--set", "model.codebook_size=16")
    err = capsys.readouterr().err
    assert code == 2 and "codebook_size is 8 there but 16 in the recipe" in err
    assert snapshot(out) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}
    assert cli("stage2", "--recipe", "tiny", "--checkpoint", tmp_path / "missing", "--out", out) == 2
    assert "no stage-1 checkpoint" in capsys.readouterr().err


def test_stage2_releases_the_moving_average_of_its_weights(tiny_run, tmp_path):
    """B32: with ``stage2.average_decay`` d the release holds d·w₁ + (1 − d)·w₂ after two steps (w₁, w₂ the
    weights after each step: the first from a one-step run, the second from the resume state, which keeps the
    last step's weights), the image model untouched; a resume of the finished stage releases the same."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--recipe", "tiny", "--checkpoint", tiny_run / "stage1", "--set", "stage2.checkpoint_every=1"]
    assert cli("stage2", *args, "--out", one, "--set", "stage2.steps=1") == 0
    assert cli("stage2", *args, "--out", two, "--set", "stage2.steps=2", "--set", "stage2.average_decay=0.25") == 0
    w1 = CausalVQ.from_pretrained(one / "model").state_dict()
    w2 = load_state(two / "resume" / "stage2.safetensors").model
    released = CausalVQ.from_pretrained(two / "model").state_dict()
    stage1 = CausalVQ.from_pretrained(tiny_run / "stage1").state_dict()
    moved = [k for k in released if k.startswith("transition.") and not torch.equal(w1[k], w2[k])]
    assert moved  # the second step changed the transition
    for k in moved:
        assert torch.allclose(released[k], 0.25 * w1[k] + 0.75 * w2[k], atol=1e-6), k
    assert all(torch.equal(released[k], stage1[k]) for k in stage1 if not k.startswith("transition."))
    assert cli("stage2", *args, "--out", two, "--set", "stage2.steps=2", "--set", "stage2.average_decay=0.25",
               "--resume") == 0  # the stage is done: the release is written again from the state
    again = CausalVQ.from_pretrained(two / "model").state_dict()
    assert all(torch.equal(again[k], released[k]) for k in released)


def test_clear_errors_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    cases = [
        (["--set", "stage1.stepz=3"], "stage1.stepz"),
        (["--set", 'stage1.batch_size="big"'], "stage1.batch_size must be int"),
        (["--dataset-path", tmp_path / "3dshapes.h5"], "3dshapes.h5"),
        (["--recipe", tmp_path / "none.toml"], "none.toml"),
    ]
    for extra, words in cases:
        args = ["stage1", "--out", out, *extra]
        if "--recipe" not in extra:
            args += ["--recipe", "tiny"]
        assert cli(*args) == 2, extra
        assert words in capsys.readouterr().err, extra
    assert snapshot(out) == before

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli("stage1", "--recipe", "tiny", "--out", blocker / "run") == 2
    assert "cannot write to the output folder" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    original = CausalVQ.image_losses

    def poisoned(self, x):
        out = original(self, x)
        calls["n"] += 1
        return dataclasses.replace(out, loss=out.loss * float("nan")) if calls["n"] == 4 else out

    monkeypatch.setattr(CausalVQ, "image_losses", poisoned)
    out = tmp_path / "run"
    assert cli("stage1", "--recipe", "tiny", "--out", out, "--set", "stage1.checkpoint_every=3") == 2
    err = capsys.readouterr().err
    assert "at step 4" in err and "last good checkpoint" in err
    state = load_state(out / "resume" / "stage1.safetensors")
    assert state.step == 3
    assert all(torch.isfinite(t).all() for t in state.model.values() if t.is_floating_point())
    assert not (out / "stage1").exists()


def test_device_auto_picks_cuda_when_available(monkeypatch):
    from train.distributed import DeviceError, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda", 1)


def test_steps_are_pure_functions_of_the_step(tmp_path):
    """Prefetch threads and stopping/resuming between steps leave the weights unchanged, to the byte."""
    assert cli("stage1", "--recipe", "tiny", "--out", tmp_path / "a") == 0
    assert cli("stage1", "--recipe", "tiny", "--out", tmp_path / "b", "--set", "data.prefetch=2") == 0
    assert cli("stage1", "--recipe", "tiny", "--out", tmp_path / "c", "--set", "stage1.steps=3") == 0
    assert cli("stage1", "--recipe", "tiny", "--out", tmp_path / "c", "--resume") == 0
    weights = {run: (tmp_path / run / "stage1" / "model.safetensors").read_bytes() for run in "abc"}
    assert weights["a"] == weights["b"] == weights["c"]


# --- every registered dataset through the CLI, on tiny files in each release's exact format ---
CELEBA_ATTRIBUTES = ("Bald", "Bangs", "Big_Lips", "Big_Nose", "Black_Hair")


@pytest.fixture(scope="module")
def real_files(tmp_path_factory) -> dict[str, Path]:
    """A SmallNORB folder (a 72-image corner of the grid), a Cars3D folder (two cars of 32 px) and a CelebA
    folder (64 people covering the 32 vectors of five attributes), written by tests/test_data_readers.py's writers."""
    from test_data_readers import ALL_ATTRIBUTES, _write_car, _write_celeba, _write_norb_set

    from causalvq.data.smallnorb import TRAINING_PREFIX

    root = tmp_path_factory.mktemp("real")
    norb = root / "smallnorb"
    norb.mkdir()
    grid = np.stack(np.meshgrid([0, 1], [0], [0, 1, 2], np.arange(6), [0, 1], indexing="ij"), -1).reshape(-1, 5)
    _write_norb_set(norb, TRAINING_PREFIX, grid)
    cars = root / "cars"
    cars.mkdir()
    for seed, name in enumerate(["car_001_mesh.mat", "car_002_mesh.mat"]):
        _write_car(cars / name, seed, side=32)
    celeba = root / "celeba"
    bits = (np.arange(64)[:, None] >> np.arange(5)) & 1  # (64, 5): every vector twice
    values = -np.ones((64, len(ALL_ATTRIBUTES)), dtype=np.int64)
    values[:, [ALL_ATTRIBUTES.index(a) for a in CELEBA_ATTRIBUTES]] = 2 * bits - 1
    _write_celeba(celeba, values, np.arange(64) % 3)
    return {"smallnorb": norb, "cars3d": cars, "celeba": celeba}


DATASET_SETTINGS = {  # extra --set per dataset: reader options, and wider val / test shares on these tiny grids
    "smallnorb": ["data.fractions=[0.5, 0.2, 0.3]"],
    "cars3d": ["data.reader_options={image_size = 16}"],
    "celeba": [f"data.reader_options={{attributes = {list(CELEBA_ATTRIBUTES)}}}".replace("'", '"'),
               "data.fractions=[0.4, 0.2, 0.4]"],
}


@pytest.mark.parametrize("name, channels, factors", [
    ("smallnorb", 1, ("category", "instance", "elevation", "azimuth", "lighting")),
    ("cars3d", 3, ("elevation", "azimuth", "object")),
    ("celeba", 3, CELEBA_ATTRIBUTES),
])
def test_stage1_stage2_evaluate_on_every_file_dataset(real_files, tmp_path, name, channels, factors):
    out = tmp_path / "run"
    data = ["--set", f"data.name={name}", "--dataset-path", real_files[name]]
    for setting in DATASET_SETTINGS[name]:
        data += ["--set", setting]
    assert cli("stage1", "--recipe", "tiny", "--out", out, *data) == 0
    assert cli("stage2", "--recipe", "tiny", "--out", out, *data) == 0
    assert cli("evaluate", "--checkpoint", out / "model", *FAST_EVAL) == 0  # reads the release's recipe.toml
    config = CausalVQ.from_pretrained(out / "model").config
    assert (config.in_channels, config.factor_names, config.num_actions) == (channels, factors, 2 * len(factors))
    report = json.loads((out / "model" / "eval" / "eval.json").read_text())
    assert report["dataset"] == name and report["factor_names"] == list(factors)
    assert report["retrieval"]["num_pairs"] == 8 and report["intervention"][0]["num_pairs"] > 0
    assert (out / "model" / "probe.json").is_file()


def test_dataset_errors_are_one_line_and_write_nothing(real_files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    (tmp_path / "empty").mkdir()
    celeba = ["--set", "data.name=celeba", "--dataset-path", real_files["celeba"]]
    cases = [
        (["--set", "data.name=cars3d"], "data.name = 'cars3d' needs data.path (or --dataset-path) to the folder"),
        (["--set", "data.name=cars3d", "--dataset-path", tmp_path / "nowhere"], "nowhere' does not exist"),
        (["--set", "data.name=cars3d", "--dataset-path", real_files["cars3d"] / "car_001_mesh.mat"],
         "cannot open 'cars3d' from"),
        (["--set", "data.name=smallnorb", "--dataset-path", tmp_path / "empty"], "-training-dat.mat"),
        (["--set", "data.name=npz", "--dataset-path", real_files["cars3d"]], "not a file"),
        ([*celeba, "--set", 'data.reader_options.attributes=["Smile"]'], "not found: ['Smile']"),
        ([*celeba, "--set", "data.reader_options.colour=1"], "data.reader_options {'colour': 1} are not accepted"),
        (["--set", "data.reader_options.crop=100"], "data.path, which is not set"),
        (["--set", "data.name=mnist"], "data.name must be one of"),
    ]
    for extra, words in cases:
        assert cli("stage1", "--recipe", "tiny", "--out", out, *extra) == 2, extra
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, (extra, err)
    assert snapshot(out) == before
