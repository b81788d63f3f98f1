"""Config and data input: recipe typos, wrong sections, negative sizes, wrong types and NaN; dataset paths that do
not exist; damaged or degenerate .npz files. Each raises RecipeError / ValueError / FileNotFoundError naming the
key or the file. (test_train_recipes.py and test_data_files.py hold the basic cases; these are the rest.)

docs/reliability.md §3 lists the cases and the command.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from causalvq.data import load_dataset
from train.recipes import RecipeError, load_recipe


def _recipe_error(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path), list(overrides))
    message = str(info.value)
    assert "mine.toml" in message or overrides, message
    return message


# --- recipes ---
@pytest.mark.parametrize("text, words", [
    # typos and misplaced keys
    ("[stage3]\nsteps = 1\n", ["stage3", "sections"]),
    ("[evaluation]\nseed = 1\n", ["evaluation"]),
    ("steps = 10\n", ["steps", "sections"]),
    ("[stage1]\nnum_pairs = 10\n", ["stage1.num_pairs", "[stage1] accepts"]),
    ("[data]\nsteps = 10\n", ["data.steps"]),
    ("[data]\ncodebook_size = 16\n", ["data.codebook_size"]),
    ("[model]\nsteps = 10\n", ["[model]", "steps"]),
    ("[eval]\nlr = 0.1\n", ["eval.lr"]),
    ("[stage1.schedule]\nwarmup = 3\n", ["stage1.schedule"]),
    ("[model.encoder]\nwidth = 3\n", ["[model]", "encoder"]),
    ("stage1 = 3\n", ["stage1", "table"]),
    ("model = [1, 2]\n", ["model", "table"]),
    # negative and out-of-range sizes
    ("[stage1]\nsteps = -5\n", ["stage1.steps", ">= 1"]),
    ("[stage2]\nbatch_size = -1\n", ["stage2.batch_size"]),
    ("[stage2]\nnum_pairs = 0\n", ["stage2.num_pairs"]),
    ("[stage1]\nlog_every = 0\n", ["stage1.log_every"]),
    ("[stage1]\nlr = -0.1\n", ["stage1.lr"]),
    ("[stage1]\nlr_decay = 1.5\n", ["stage1.lr_decay"]),
    ("[stage1]\ngrad_clip = -1.0\n", ["stage1.grad_clip"]),
    ("[model]\ncodebook_size = -8\n", ["[model]", "codebook_size"]),
    ("[model]\nhidden_dims = [-8, 16]\n", ["[model]", "hidden_dims"]),
    ("[model]\nnum_residual = 100000000\n", ["[model]", "num_residual"]),
    ("[data]\nprefetch = -1\n", ["data.prefetch"]),
    ("[data]\nfractions = [0.9, 0.2, -0.1]\n", ["data.fractions"]),
    ("[eval]\nmax_steps = -1\n", ["eval.max_steps"]),
    ("[eval]\nseed = -1\n", ["eval.seed"]),
    ("[eval]\nnum_images = 0\n", ["eval.num_images"]),
    ("seed = -1\n", ["seed", "non-negative"]),
    # wrong types
    ("[stage1]\nsteps = 1.5\n", ["stage1.steps", "int"]),
    ("[stage1]\nsteps = true\n", ["stage1.steps", "int"]),
    ("[stage1]\nlr = 'fast'\n", ["stage1.lr", "float"]),
    ("[data]\nname = ['shapes3d']\n", ["data.name", "str"]),
    ("[data]\npath = 3\n", ["data.path", "str"]),
    ("[data]\nfractions = 'abc'\n", ["data.fractions"]),
    ("[data]\nfractions = [0.5, 'a', 0.5]\n", ["data.fractions"]),
    ("[data]\nrender_options = [1]\n", ["data.render_options", "dict"]),
    ("[eval]\ndisentanglement = 1\n", ["eval.disentanglement", "bool"]),
    ("[eval]\nimportance = 'xgboost'\n", ["eval.importance"]),
    ("[eval]\nbaseline = 'nosie'\n", ["eval.baseline"]),
    ("[model]\nhidden_dims = 'abc'\n", ["[model]", "hidden_dims"]),
    ("[model]\nfactor_names = [1, 2]\n", ["[model]", "factor_names"]),
    ("[model]\noverlapping_slices = 'yes'\n", ["[model]", "overlapping_slices"]),
    ("[model]\nretrieval_score = 'max'\n", ["[model]", "retrieval_score"]),
    ("seed = 'zero'\n", ["seed"]),
    ("seed = 1.0\n", ["seed"]),
    # NaN and infinity (TOML has both literals)
    ("[stage1]\nlr = nan\n", ["stage1.lr"]),
    ("[stage1]\nlr = inf\n", ["stage1.lr"]),
    ("[stage1]\nlr_decay = nan\n", ["stage1.lr_decay"]),
    ("[stage1]\ngrad_clip = nan\n", ["stage1.grad_clip"]),
    ("[stage2]\naverage_decay = 1.0\n", ["stage2.average_decay"]),
    ("[data]\nfractions = [nan, 0.5, 0.5]\n", ["data.fractions"]),
    ("[data]\nfractions = [inf, 0.0, 0.0]\n", ["data.fractions"]),
    ("[stage2]\nmode_ratio = [nan, 1, 1]\n", ["stage2.mode_ratio"]),
    ("[model]\nbeta = nan\n", ["[model]", "beta"]),
    ("[model]\ngamma = -inf\n", ["[model]", "gamma"]),
    # values no dataset has
    ("[data]\nname = 'mnist'\n", ["data.name", "mnist", "shapes3d"]),
    # not TOML
    ("[stage1\nsteps = 1\n", ["not valid TOML"]),
    ("[stage1]\nsteps = 1\nsteps = 2\n", ["not valid TOML"]),
])
def test_bad_recipe_names_the_key_and_file(tmp_path, text, words):
    message = _recipe_error(tmp_path, text)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("override, words", [
    ("stage1", ["key=value"]),
    ("=3", ["key=value"]),
    ("stage1=3", ["stage1", "table"]),
    ("stage1.steps.x=3", ["stage1.steps"]),
    ("data.fractions=[nan, 0.5, 0.5]", ["data.fractions"]),
    ("eval.seed=-3", ["eval.seed"]),
    ("stage3.steps=1", ["stage3"]),
])
def test_bad_override_names_the_key(override, words):
    with pytest.raises(RecipeError) as info:
        load_recipe("tiny", [override])
    for word in words:
        assert word in str(info.value), str(info.value)


def test_recipe_file_not_utf8_or_missing(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00steps")
    with pytest.raises(RecipeError, match=r"binary\.toml.*not valid TOML"):
        load_recipe(str(path))
    with pytest.raises(RecipeError, match="missing.toml"):
        load_recipe(str(tmp_path / "missing.toml"))
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path))  # a directory


# --- dataset paths ---
@pytest.mark.parametrize("name", ["npz", "shapes3d", "dsprites"])
def test_recipe_dataset_path_that_does_not_exist(tmp_path, name):
    missing = tmp_path / "nowhere" / "data.file"
    recipe = load_recipe("tiny", [f"data.name={name}", f"data.path={missing}"])
    with pytest.raises(FileNotFoundError, match="data.file"):
        load_dataset(recipe.data.name, path=recipe.data.path)


@pytest.mark.parametrize("name", ["npz", "shapes3d", "dsprites"])
def test_dataset_path_of_the_wrong_kind(tmp_path, name):
    with pytest.raises(ValueError, match="not a file"):
        load_dataset(name, path=tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("not a dataset")
    with pytest.raises(ValueError, match="notes.txt"):
        load_dataset(name, path=text)


def test_unknown_dataset_and_options():
    with pytest.raises(ValueError, match="mnist.*shapes3d"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="needs path="):
        load_dataset("npz")
    with pytest.raises(TypeError, match="bogus"):
        load_dataset("shapes3d", bogus=1)


# --- degenerate .npz content ---
def _good() -> dict[str, np.ndarray]:
    factors = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]])
    return dict(images=np.arange(6 * 4 * 4 * 3, dtype=np.uint8).reshape(6, 4, 4, 3), factors=factors,
                factor_names=np.array(["colour", "size"]))


@pytest.mark.parametrize("change, words", [
    (dict(factors=np.zeros((4, 2), np.int64)), ["'factors' has 4 rows", "'images' has 6"]),
    (dict(images=np.zeros((3, 4, 4, 3), np.uint8)), ["'factors' has 6 rows", "'images' has 3"]),
    (dict(images=np.zeros((0, 4, 4, 3), np.uint8), factors=np.zeros((0, 2), np.int64)), ["'images' is empty"]),
    (dict(images=np.zeros((6, 4, 4, 0), np.uint8)), ["'images' is empty"]),
    (dict(images=np.zeros((6, 0, 4), np.uint8)), ["'images' is empty"]),
    (dict(factors=np.zeros((6, 0), np.int64), factor_names=np.array([], dtype=str)), ["no columns"]),
    (dict(factor_names=np.array(["colour", "colour"])), ["duplicates"]),
    (dict(factor_names=np.array([b"\xff\xfe", b"ok"])), ["UTF-8"]),
    (dict(factors=np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2**40, 2**40]])), ["too large"]),
    (dict(factor_sizes=np.array([2**62, 2**62])), ["too large"]),
    (dict(factor_sizes=np.array([3, 0])), ["exceed 'factor_sizes'"]),
    (dict(factor_sizes=np.array([[3, 2]])), ["'factor_sizes' must be 2 integers"]),
    (dict(factors=np.array([[0, 0]] * 6, dtype=object)), ["cannot read array 'factors'", "allow_pickle"]),
    (dict(images=np.zeros((6, 4, 4, 3), np.float32)), ["'images' must be uint8"]),
    (dict(images=np.zeros((6, 48), np.uint8)), ["'images' must be uint8"]),
])
def test_degenerate_npz_names_file_and_array(tmp_path, change, words):
    arrays = {**_good(), **change}
    np.savez(tmp_path / "mine.npz", **arrays)
    with pytest.raises(ValueError) as info:
        load_dataset("npz", path=tmp_path / "mine.npz")
    assert "mine.npz" in str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_bytes_factor_names_are_decoded(tmp_path):
    np.savez(tmp_path / "mine.npz", **{**_good(), "factor_names": np.array([b"colour", b"size"])})
    assert load_dataset("npz", path=tmp_path / "mine.npz").factor_names == ("colour", "size")


# --- damaged .npz files ---
def _npy(shape: tuple[int, ...], dtype: str, body: bytes) -> bytes:
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + body


@pytest.mark.parametrize("kind", ["npz", "dsprites"])
@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_header_declaring_a_huge_shape(tmp_path, kind, method):
    """numpy allocates what the header declares before reading: 44 TiB must be a ValueError, not MemoryError."""
    if kind == "npz":
        members = {"images": _npy((10**12, 4, 4, 3), "u1", bytes(100)), "factors": _npy((6, 2), "<i8", bytes(96)),
                   "factor_names": _npy((2,), "<U1", b"a\0\0\0b\0\0\0")}
    else:
        members = {"imgs": _npy((10**12, 64, 64), "u1", bytes(100)), "latents_classes": _npy((3, 6), "<i8", bytes(144))}
    with zipfile.ZipFile(tmp_path / "huge.npz", "w", method) as archive:
        for key, data in members.items():
            archive.writestr(f"{key}.npy", data)
    with pytest.raises(ValueError, match=r"huge\.npz.*cannot read array"):
        load_dataset(kind, path=tmp_path / "huge.npz")


@pytest.mark.parametrize("kind", ["npz", "dsprites"])
def test_byte_flips_and_truncations(tmp_path, kind):
    """Every single-byte flip of the zip structure, and every truncation: ValueError naming the file."""
    if kind == "npz":
        np.savez_compressed(tmp_path / "ok.npz", **_good())
    else:
        classes = np.zeros((3, 6), np.int64)
        classes[:, 5] = [0, 1, 2]
        np.savez_compressed(tmp_path / "ok.npz", imgs=np.zeros((3, 64, 64), np.uint8), latents_classes=classes)
    valid = (tmp_path / "ok.npz").read_bytes()
    bad = tmp_path / "bad.npz"
    outcomes: list[str] = []
    for i in range(len(valid) + len(valid) // 7):
        if i < len(valid):
            data = bytearray(valid)
            data[i] ^= 0xFF
        else:
            data = valid[:(i - len(valid)) * 7]
        bad.write_bytes(bytes(data))
        try:
            load_dataset(kind, path=bad)
            outcomes.append("loaded")
        except ValueError as err:
            assert "bad.npz" in str(err), str(err)
            outcomes.append("refused")
    assert "refused" in outcomes  # other exception types fail the test above
