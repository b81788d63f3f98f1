"""Checkpoint loading under bad input: every broken folder raises ValueError / FileNotFoundError naming the file,
field or tensor; shapes are checked before any real allocation; only JSON and safetensors are read (no pickle).

docs/reliability.md §1 lists the cases and the command.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch

from causalvq.config import ModelConfig
from causalvq.model import CausalVQ

OK_ERRORS = (ValueError, FileNotFoundError)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict, bytes]:
    """A tiny checkpoint: its folder, its config dict and its weights bytes."""
    folder = tmp_path_factory.mktemp("ckpt") / "ok"
    torch.manual_seed(0)
    CausalVQ(ModelConfig.tiny()).save_pretrained(folder)
    return folder, json.loads((folder / "config.json").read_text()), (folder / "model.safetensors").read_bytes()


def _folder(root: Path, config: str | bytes | None, weights: bytes | None) -> Path:
    folder = root / "case"
    folder.mkdir(parents=True)
    if config is not None:
        path = folder / "config.json"
        path.write_bytes(config) if isinstance(config, bytes) else path.write_text(config)
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


def _header(weights: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", weights[:8])[0]
    return json.loads(weights[8:8 + n]), weights[8 + n:]


def _with_header(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def _load_error(folder: Path) -> Exception:
    with pytest.raises(OK_ERRORS) as info:
        CausalVQ.from_pretrained(folder)
    assert type(info.value) in OK_ERRORS, f"{type(info.value).__name__}: {info.value}"
    return info.value


# --- files missing or not files ---
def test_missing_files_name_the_file(saved, tmp_path):
    _, cfg, weights = saved
    err = _load_error(_folder(tmp_path / "a", None, weights))
    assert isinstance(err, FileNotFoundError) and "config.json" in str(err)
    err = _load_error(_folder(tmp_path / "b", json.dumps(cfg), None))
    assert isinstance(err, FileNotFoundError) and "model.safetensors" in str(err)
    folder = _folder(tmp_path / "c", None, weights)
    (folder / "config.json").mkdir()
    assert "config.json" in str(_load_error(folder))
    folder = _folder(tmp_path / "d", json.dumps(cfg), None)
    (folder / "model.safetensors").mkdir()
    assert "model.safetensors" in str(_load_error(folder))


# --- broken weights ---
@pytest.mark.parametrize("cut", [0, 1, 7, 8, 9, 64, 0.25, 0.5, 0.9, -1])
def test_truncated_weights(saved, tmp_path, cut):
    _, cfg, weights = saved
    end = cut if isinstance(cut, int) and cut >= 0 else len(weights) - 1 if cut == -1 else int(cut * len(weights))
    err = _load_error(_folder(tmp_path, json.dumps(cfg), weights[:end]))
    assert "cannot read weights" in str(err) and "model.safetensors" in str(err)


def test_random_bytes_as_weights(saved, tmp_path):
    _, cfg, _ = saved
    rng = torch.Generator().manual_seed(0)
    for i, n in enumerate((16, 4096, 100_000)):
        noise = torch.randint(0, 256, (n,), generator=rng, dtype=torch.uint8).numpy().tobytes()
        err = _load_error(_folder(tmp_path / str(i), json.dumps(cfg), noise))
        assert "cannot read weights" in str(err)


@pytest.mark.parametrize("edit", ["huge_shape", "huge_offsets", "huge_header_length", "header_beyond_file",
                                  "unknown_dtype", "header_not_json", "tensor_not_object"])
def test_header_claiming_huge_or_bad_sizes(saved, tmp_path, edit):
    """A header claiming terabytes fails in the header check, before anything is allocated."""
    _, cfg, weights = saved
    header, body = _header(weights)
    name = _first_tensor(header)
    if edit == "huge_shape":
        header[name] = {**header[name], "shape": [2**40, 2**40]}
    elif edit == "huge_offsets":
        header[name] = {**header[name], "data_offsets": [0, 2**62]}
    elif edit == "unknown_dtype":
        header[name] = {**header[name], "dtype": "F128"}
    elif edit == "tensor_not_object":
        header[name] = [1, 2, 3]
    if edit == "huge_header_length":
        data = struct.pack("<Q", 2**63) + weights[8:]
    elif edit == "header_beyond_file":
        data = struct.pack("<Q", len(weights)) + weights[8:]
    elif edit == "header_not_json":
        data = struct.pack("<Q", 8) + b"{not js}" + body
    else:
        data = _with_header(header, body)
    start = time.perf_counter()
    err = _load_error(_folder(tmp_path, json.dumps(cfg), data))
    assert "cannot read weights" in str(err) and time.perf_counter() - start < 2.0


def test_renamed_and_reshaped_tensors_are_named(saved, tmp_path):
    _, cfg, weights = saved
    header, body = _header(weights)
    name = _first_tensor(header)
    renamed = {("renamed.weight" if k == name else k): v for k, v in header.items()}
    err = _load_error(_folder(tmp_path / "a", json.dumps(cfg), _with_header(renamed, body)))
    assert name in str(err) and "renamed.weight" in str(err)
    # Same bytes, shape claimed transposed: a shape mismatch naming the tensor.
    two_d = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2
                 and v["shape"][0] != v["shape"][1])
    header[two_d] = {**header[two_d], "shape": header[two_d]["shape"][::-1]}
    err = _load_error(_folder(tmp_path / "b", json.dumps(cfg), _with_header(header, body)))
    assert two_d in str(err) and "shape" in str(err)


# --- broken config.json ---
@pytest.mark.parametrize("text, words", [
    ("{not json", ["config.json", "not valid JSON"]),
    ("", ["config.json", "not valid JSON"]),
    (b"\xff\xfe\x00\x01", ["config.json", "not valid JSON"]),
    ("[1, 2, 3]", ["JSON object", "list"]),
    ("null", ["JSON object"]),
    ('"a string"', ["JSON object", "str"]),
    ("42", ["JSON object", "int"]),
])
def test_config_not_a_json_object(saved, tmp_path, text, words):
    _, _, weights = saved
    err = _load_error(_folder(tmp_path, text, weights))
    assert isinstance(err, ValueError) and all(w in str(err) for w in words), str(err)


@pytest.mark.parametrize("field, value, words", [
    ("codebok_size", 8, ["unknown", "codebok_size"]),
    ("codebook_size", "8", ["codebook_size", "ill-typed"]),
    ("codebook_size", True, ["codebook_size", "ill-typed"]),
    ("codebook_size", 8.0, ["codebook_size", "ill-typed"]),
    ("codebook_size", -8, ["codebook_size"]),
    ("codebook_size", 0, ["codebook_size"]),
    ("codebook_size", 7, ["codebook_size", "even"]),
    ("image_size", -16, ["image_size"]),
    ("num_codebooks", 3, ["num_codebooks", "divisible"]),
    ("hidden_dims", [-8, 16], ["hidden_dims"]),
    ("hidden_dims", [], ["hidden_dims"]),
    ("hidden_dims", "8,16", ["hidden_dims", "ill-typed"]),
    ("hidden_dims", [8, 16.5], ["hidden_dims", "ill-typed"]),
    ("factor_names", ["a", "b"], ["factor_sizes"]),
    ("factor_names", "abc", ["factor_names", "ill-typed"]),
    ("factor_names", [["a"], ["b"], ["c"]], ["factor_names", "ill-typed"]),
    ("factor_names", ["a", "a", "b"], ["factor_names", "duplicates"]),
    ("factor_sizes", [3, 4, True], ["factor_sizes", "ill-typed"]),
    ("factor_sizes", [3, 4, 1], ["factor_sizes"]),
    ("intervention_edges", ["incoming"], ["intervention_edges"]),
    ("retrieval_score", None, ["retrieval_score"]),
    ("overlapping_slices", 1, ["overlapping_slices", "ill-typed"]),
    ("beta", "0.1", ["beta", "ill-typed"]),
    ("beta", -0.1, ["beta"]),
    ("beta", 10**400, ["beta", "ill-typed"]),
    ("positional_dropout", 1.0, ["positional_dropout"]),
    ("num_residual", 10**30, ["num_residual"]),
    ("embedding_dim", 2**62, ["embedding_dim"]),
    ("image_size", 2**16, ["nodes"]),
])
def test_config_bad_field_is_named(saved, tmp_path, field, value, words):
    _, cfg, weights = saved
    start = time.perf_counter()
    err = _load_error(_folder(tmp_path, json.dumps({**cfg, field: value}), weights))
    assert isinstance(err, ValueError) and all(w in str(err) for w in words), str(err)
    assert time.perf_counter() - start < 2.0


def test_nan_and_infinity_in_json(saved, tmp_path):
    """Python's json accepts the non-standard NaN / Infinity literals: they must still be refused."""
    _, cfg, weights = saved
    for i, literal in enumerate(("NaN", "Infinity", "-Infinity")):
        text = json.dumps({**cfg, "beta": 0.5}).replace("0.5", literal)
        err = _load_error(_folder(tmp_path / str(i), text, weights))
        assert "beta" in str(err)


@pytest.mark.parametrize("change, tensor", [
    (dict(codebook_size=16), "quantizer.codebooks"),
    (dict(num_codebooks=4), "quantizer.codebooks"),
    (dict(num_codebooks=1), "quantizer.codebooks"),
    (dict(embedding_dim=16), "coder.net"),
    (dict(hidden_dims=[8, 32]), "coder"),
    (dict(graph_width=8), "gat"),
    (dict(factor_names=["a", "b"], factor_sizes=[3, 4]), "transition"),
    (dict(action_node=False), "action_embedding"),
])
def test_weights_of_another_configuration(saved, tmp_path, change, tensor):
    _, cfg, weights = saved
    err = _load_error(_folder(tmp_path, json.dumps({**cfg, **change}), weights))
    assert "do not match this config" in str(err) and tensor in str(err), str(err)


def test_absurd_config_is_refused_before_any_real_allocation(saved, tmp_path, monkeypatch):
    """Big (allowed) sizes with small weights: the shapes are compared on the meta device only."""
    _, cfg, weights = saved
    devices: list[str] = []
    original = CausalVQ.__init__

    def spy(self, config):
        devices.append(torch.empty(0).device.type)
        original(self, config)

    monkeypatch.setattr(CausalVQ, "__init__", spy)
    big = {**cfg, "hidden_dims": [4096, 4096], "discoverer_width": 65536, "codebook_size": 4096}
    start = time.perf_counter()
    err = _load_error(_folder(tmp_path, json.dumps(big), weights))
    assert "do not match this config" in str(err) and time.perf_counter() - start < 2.0
    assert devices == ["meta"]


# --- no pickle on the load path ---
def _forbid_pickle(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("pickle / torch.load must not be used to load a release checkpoint")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def test_loading_reads_no_pickle(saved, monkeypatch):
    folder, _, _ = saved
    reference = CausalVQ.from_pretrained(folder)
    _forbid_pickle(monkeypatch)
    model = CausalVQ.from_pretrained(folder)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.reconstruct(x).image, reference.reconstruct(x).image)


def test_hub_cache_load_reads_no_pickle(saved, tmp_path, monkeypatch):
    """A repo id resolved from a (hand-made) Hub cache while offline: same weights, no pickle."""
    folder, _, _ = saved
    repo = tmp_path / "cache" / "models--someorg--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folder / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    _forbid_pickle(monkeypatch)
    model = CausalVQ.from_pretrained("someorg/tiny", cache_dir=tmp_path / "cache", local_files_only=True)
    reference = CausalVQ.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


# --- Hub repo id, offline, empty cache ---
def test_offline_repo_id_with_empty_cache_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        CausalVQ.from_pretrained("someorg/causalvq-missing", cache_dir=tmp_path / "empty-cache")
    assert time.perf_counter() - start < 3.0
    assert "someorg/causalvq-missing" in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)


@pytest.mark.parametrize("name", ["not a repo id", "../../etc/passwd", "a/b/c", "/nonexistent/dir"])
def test_neither_folder_nor_repo_id(name):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        CausalVQ.from_pretrained(name)
