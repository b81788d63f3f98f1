"""The factor probe (``causalvq.probe``): what it learns, its files, and the CLI that fits and evaluates it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from causalvq.config import ModelConfig
from causalvq.data import load_dataset
from causalvq.model import CausalVQ
from causalvq.probe import (
    PROBE_CONFIG,
    PROBE_WEIGHTS,
    FactorProbe,
    ProbeSettings,
    codes_digest,
    has_probe,
    load_probe,
)
from train.cli import main

FAST_EVAL = ["--set", "eval.num_images=16", "--set", "eval.num_pairs=8", "--set", "eval.max_steps=1"]
SMALL = ProbeSettings(num_images=96, steps=20, batch_size=48)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(*args: str | Path) -> int:
    return main([str(a) for a in args] + ["--no-progress", "--threads", "1", "--kernel", "torch"])


@pytest.fixture(scope="module")
def tiny() -> tuple[CausalVQ, object]:
    """A seeded tiny model on 16-px shapes3d renders (its factors, ModelConfig.tiny's sizes otherwise)."""
    dataset = load_dataset("shapes3d", image_size=16, supersample=1)
    config = ModelConfig.tiny(factor_names=tuple(dataset.factor_names), factor_sizes=tuple(dataset.factor_sizes))
    torch.manual_seed(0)
    return CausalVQ(config).eval(), dataset


@pytest.fixture(scope="module")
def fitted(tiny) -> FactorProbe:
    model, dataset = tiny
    return FactorProbe.fit(model, dataset, settings=SMALL)


def planted_codes(factors: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Tiny-config grids `(b, 2, 4, 4)` of random codes, except three nodes that hold factors a, b and c."""
    codes = torch.from_numpy(rng.integers(0, 8, size=(len(factors), 2, 4, 4)))
    codes[:, 0, 0, 0] = torch.from_numpy(factors[:, 0])
    codes[:, 0, 1, 1] = torch.from_numpy(factors[:, 1])
    codes[:, 1, 2, 3] = torch.from_numpy(factors[:, 2])
    return codes


# --- what it learns ---
def test_codes_that_determine_the_factors_are_read_and_shuffled_labels_are_not():
    config = ModelConfig.tiny()  # factors a, b, c of sizes 3, 4, 5; 2 codebooks of 8 codes on a 4×4 grid
    rng = np.random.default_rng(0)
    sizes = np.asarray(config.factor_sizes)
    factors = (rng.random((600, 3)) * sizes).astype(np.int64)  # (b, f)
    codes = planted_codes(factors, rng)
    train, test = slice(0, 400), slice(400, 600)
    fit = lambda f: FactorProbe.fit_codes(codes[train], f, config.factor_names, config.factor_sizes,  # noqa: E731
                                          config.codebook_size, ProbeSettings())
    good = fit(factors[train]).accuracy(codes[test], factors[test])
    assert min(good.values()) > 0.95, good

    shuffled = fit(factors[train][rng.permutation(400)]).accuracy(codes[test], factors[test])
    chance = {n: 1 / s for n, s in zip(config.factor_names, config.factor_sizes)}
    assert all(shuffled[n] < chance[n] + 0.15 for n in chance), (shuffled, chance)


def test_fit_on_a_model_is_deterministic_and_reads_its_codes(tiny, fitted):
    model, dataset = tiny
    again = FactorProbe.fit(model, dataset, settings=SMALL)
    assert torch.equal(again.weight, fitted.weight) and torch.equal(again.bias, fitted.bias)
    assert fitted.info.codes_digest == codes_digest(model)
    assert fitted.info.fit["num_images"] == SMALL.num_images and fitted.info.fit["steps"] == SMALL.steps
    assert fitted.weight.shape == (32, 8, sum(dataset.factor_sizes))
    assert model.training is False and not any(p.grad is not None for p in model.parameters())


def test_predict_gives_the_argmax_of_distributions_per_factor(tiny, fitted):
    model, dataset = tiny
    codes = model.encode_codes(torch.rand(5, 3, 16, 16))
    est = fitted.predict(codes)
    assert est.values.shape == est.confidence.shape == (5, len(dataset.factor_sizes))
    assert est.factor_names == tuple(dataset.factor_names)
    for f, (p, size) in enumerate(zip(est.probs, dataset.factor_sizes)):
        assert p.shape == (5, size)
        assert torch.allclose(p.sum(-1), torch.ones(5))
        assert torch.equal(est.values[:, f], p.argmax(-1)) and torch.equal(est.confidence[:, f], p.max(-1).values)
    with pytest.raises(ValueError, match=r"code grids \(b, 2, 4, 4\)"):
        fitted.predict(codes[:, :1])
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        fitted.predict(codes + 8)


# --- files ---
def test_save_load_round_trip_keeps_the_predictions(tiny, fitted, tmp_path):
    model, _ = tiny
    fitted.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [PROBE_CONFIG, PROBE_WEIGHTS]  # no temporary files left
    loaded = FactorProbe.load(tmp_path, model)
    assert loaded.info == fitted.info
    codes = model.encode_codes(torch.rand(6, 3, 16, 16))
    a, b = fitted.predict(codes), loaded.predict(codes)
    assert torch.equal(a.values, b.values) and all(torch.equal(p, q) for p, q in zip(a.probs, b.probs))
    fitted.save(tmp_path)  # saving again replaces both files
    assert sorted(p.name for p in tmp_path.iterdir()) == [PROBE_CONFIG, PROBE_WEIGHTS]


def test_a_folder_without_a_probe(tmp_path):
    assert not has_probe(tmp_path) and load_probe(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="probe.json does not exist"):
        FactorProbe.load(tmp_path)


def test_broken_probe_files_are_clear_errors_and_nothing_is_lost(tiny, fitted, tmp_path):
    model, dataset = tiny
    model.save_pretrained(tmp_path / "good")
    fitted.save(tmp_path / "good")

    def broken(name: str, edit) -> Path:
        folder = tmp_path / name
        shutil.copytree(tmp_path / "good", folder)
        edit(folder)
        return folder

    other = ModelConfig.tiny(factor_names=tuple(dataset.factor_names), factor_sizes=tuple(dataset.factor_sizes))
    torch.manual_seed(1)
    other_model = CausalVQ(other)
    wrong = FactorProbe.fit_codes(torch.zeros(4, 2, 4, 4, dtype=torch.long), np.zeros((4, 2), np.int64),
                                  ("x", "y"), (2, 3), 8, ProbeSettings(steps=1))
    cases = {
        "truncated": (lambda f: (f / PROBE_WEIGHTS).write_bytes((f / PROBE_WEIGHTS).read_bytes()[:100]),
                      ValueError, "probe.safetensors"),
        "bad_json": (lambda f: (f / PROBE_CONFIG).write_text("{not json"), ValueError, "probe.json is not a valid"),
        "no_weights": (lambda f: (f / PROBE_WEIGHTS).unlink(), FileNotFoundError, "no probe.safetensors"),
        "no_config": (lambda f: (f / PROBE_CONFIG).unlink(), FileNotFoundError, "probe.json does not exist"),
        "wrong_shape": (lambda f: shutil.copy(_saved(wrong, tmp_path / "wrong") / PROBE_WEIGHTS, f / PROBE_WEIGHTS),
                        ValueError, r"probe.safetensors holds tensors .*\(32, 8, 5\).* gives .*\(32, 8, 57\)"),
        "bad_field": (lambda f: _edit_json(f, codebook_size=-3), ValueError, "probe.json has an ill-typed field"),
        "not_a_probe": (lambda f: _edit_json(f, format="other"), ValueError, "not a causalvq factor probe"),
    }
    for name, (edit, error, words) in cases.items():
        folder = broken(name, edit)
        before = snapshot(folder)
        with pytest.raises(error, match=words):
            load_probe(folder, model)
        assert snapshot(folder) == before, name  # nothing rewritten or deleted
        CausalVQ.from_pretrained(folder)  # the model itself still loads
    with pytest.raises(ValueError, match="other encoder/quantizer weights"):
        FactorProbe.load(tmp_path / "good", other_model)
    with pytest.raises(ValueError, match="the probe estimates"):
        wrong.check_model(model)


def _saved(probe: FactorProbe, folder: Path) -> Path:
    return probe.save(folder)


def _edit_json(folder: Path, **changes) -> None:
    data = json.loads((folder / PROBE_CONFIG).read_text())
    (folder / PROBE_CONFIG).write_text(json.dumps({**data, **changes}))


# --- the CLI ---
def test_release_probe_command_and_evaluation_rows(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("stage1", "--recipe", "tiny", "--out", run) == 0
    release = run / "stage1"
    assert has_probe(release)  # the release fits one
    model = CausalVQ.from_pretrained(release)
    shipped = FactorProbe.load(release, model)

    bare = tmp_path / "bare"
    shutil.copytree(release, bare)
    for name in (PROBE_CONFIG, PROBE_WEIGHTS):
        (bare / name).unlink()
    capsys.readouterr()
    assert cli("evaluate", "--checkpoint", bare, *FAST_EVAL) == 0
    assert "has no factor probe" in capsys.readouterr().out
    report = json.loads((bare / "eval" / "eval.json").read_text())
    assert report["probe"] is None
    assert "factor probe: none evaluated" in (bare / "eval" / "eval.md").read_text()

    assert cli("probe", "--checkpoint", bare) == 0  # adds the probe to an existing release
    added = FactorProbe.load(bare, model)
    assert torch.equal(added.weight, shipped.weight)  # the same probe the release fitted, from the same recipe
    assert cli("evaluate", "--checkpoint", bare, *FAST_EVAL) == 0
    report = json.loads((bare / "eval" / "eval.json").read_text())
    sizes = dict(zip(model.config.factor_names, model.config.factor_sizes))
    assert report["probe"]["num_images"] == 16
    assert report["probe"]["per_factor_chance"] == {n: 1 / s for n, s in sizes.items()}
    acc = report["probe"]["per_factor_accuracy"]
    assert set(acc) == set(sizes) and all(0 <= v <= 1 for v in acc.values())
    assert report["probe"]["accuracy"] == pytest.approx(np.mean(list(acc.values())))
    table = (bare / "eval" / "eval.md").read_text()
    assert "| probe.accuracy.mean |" in table
    for name, size in sizes.items():
        assert f"| probe.accuracy.{name} | " in table and f" | {1 / size:.4f} | 16 |" in table
    assert "| probe.accuracy.mean |" in (bare / "README.md").read_text()  # and the model card

    (bare / PROBE_CONFIG).write_text("{")
    before = snapshot(bare)
    assert cli("evaluate", "--checkpoint", bare, *FAST_EVAL) == 2
    assert "probe.json is not a valid probe file" in capsys.readouterr().err
    assert snapshot(bare) == before


def test_the_stage2_release_reuses_the_stage1_probe(tmp_path, monkeypatch):
    """Stage 2 leaves the encoder and the codebook as they were, so its release carries the stage-1 probe
    instead of fitting the same probe again; a stage 1 that changed the codes would not match (its digest)."""
    run = tmp_path / "run"
    assert cli("stage1", "--recipe", "tiny", "--out", run) == 0
    fits = []
    real = FactorProbe.fit
    monkeypatch.setattr(FactorProbe, "fit", classmethod(lambda cls, *a, **k: fits.append(1) or real(*a, **k)))
    assert cli("stage2", "--recipe", "tiny", "--out", run) == 0
    assert fits == []
    model = CausalVQ.from_pretrained(run / "model")
    assert torch.equal(FactorProbe.load(run / "model", model).weight, FactorProbe.load(run / "stage1", model).weight)
