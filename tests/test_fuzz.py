"""Property-based fuzzing (hypothesis, bounded examples): the image conversions, ModelConfig.from_dict, checkpoint
loading of arbitrary bytes / text and the npz dataset reader either give a correct result or raise the documented
error types with a message; never another exception type.

docs/reliability.md §2 lists the example counts and the command.
"""

from __future__ import annotations

import json
import math
import os
import string
import struct
from pathlib import Path

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from causalvq.config import ModelConfig
from causalvq.data import load_dataset
from causalvq.imaging import image_grid, resize_images, to_tensor, to_uint8
from causalvq.model import CausalVQ

# Examples per test: 60 in the suite (seconds); CAUSALVQ_FUZZ_EXAMPLES=5000 for a soak run (docs/reliability.md).
N = int(os.environ.get("CAUSALVQ_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=max(N // 2, 1), deadline=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = st.sampled_from([np.uint8, np.int8, np.int64, np.float16, np.float32, np.float64, np.bool_,
                          np.complex64])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4)


def arrays(dtype=DTYPES, shape=SHAPES):
    """Any small array; floats include NaN and ±inf."""
    return dtype.flatmap(lambda dt: hnp.arrays(dt, shape)) if isinstance(dtype, st.SearchStrategy) \
        else hnp.arrays(dtype, shape)


def _message(err: Exception) -> None:
    assert str(err).strip(), f"{type(err).__name__} without a message"
    event(f"refused: {type(err).__name__}")  # outcome counts: pytest --hypothesis-show-statistics


# --- imaging ---
IMAGES_U8 = hnp.arrays(np.uint8, hnp.array_shapes(min_dims=3, max_dims=4, min_side=0, max_side=4))


@FUZZ
@given(x=st.one_of(arrays(), IMAGES_U8), as_tensor=st.booleans())
def test_to_tensor(x, as_tensor):
    if as_tensor:
        x_in = torch.from_numpy(x.copy())
        if x_in.is_floating_point():
            x_in.requires_grad_(True)
    else:
        x_in = x
    try:
        out = to_tensor(x_in)
    except (TypeError, ValueError) as err:
        _message(err)
        assert x.dtype != np.uint8 or x.ndim not in (3, 4)
        return
    event("accepted")
    assert x.dtype == np.uint8 and x.ndim in (3, 4)
    nhwc = x[None] if x.ndim == 3 else x
    assert out.dtype == torch.float32 and tuple(out.shape) == (nhwc.shape[0], nhwc.shape[3], *nhwc.shape[1:3])
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy(), nhwc / 255.0, rtol=0, atol=1e-7)


@FUZZ
@given(x=st.one_of(arrays(), arrays(st.sampled_from([np.float16, np.float32, np.float64]),
                                    hnp.array_shapes(min_dims=3, max_dims=4, min_side=0, max_side=4))),
       as_tensor=st.booleans())
@example(x=np.full((1, 3, 2, 2), np.nan, np.float32), as_tensor=True)
@example(x=np.array([[[np.inf, -np.inf, 0.5, 2.0]]], np.float64), as_tensor=False)
def test_to_uint8(x, as_tensor):
    x_in = torch.from_numpy(x.copy()) if as_tensor else x
    try:
        out = to_uint8(x_in)
    except (TypeError, ValueError) as err:
        _message(err)
        assert x.dtype.kind != "f" or x.ndim not in (3, 4) or np.isnan(x).any()
        return
    event("accepted")
    assert x.dtype.kind == "f" and x.ndim in (3, 4) and not np.isnan(x).any()
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes ±inf, as in to_uint8
        nchw = (x[None] if x.ndim == 3 else x).astype(np.float32)
    expected = np.round(np.clip(nchw, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


SIZES = st.one_of(st.integers(-2, 9), st.tuples(st.integers(-1, 9), st.integers(-1, 9)),
                  st.lists(st.integers(1, 5), max_size=3), st.floats(allow_nan=True), st.none(), st.text(max_size=2),
                  st.booleans(), st.just(np.int64(3)))


@FUZZ
@given(shape=st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 9), st.integers(0, 9)),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8]),
       size=SIZES, special=st.sampled_from([None, math.nan, math.inf]))
def test_resize_images(shape, dtype, size, special):
    x = torch.rand(shape).to(dtype)
    if special is not None and x.numel() and x.is_floating_point():
        x.view(-1)[0] = special
    try:
        out = resize_images(x, size)
    except (TypeError, ValueError) as err:
        _message(err)
        return
    event("accepted")
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    assert tuple(out.shape) == (*shape[:2], h, w) and out.dtype == dtype
    if special is None and out.numel():
        assert float(out.min()) >= -1e-2 and float(out.max()) <= 1 + 1e-2  # an average of values in [0, 1]


@FUZZ
@given(x=st.one_of(arrays(shape=hnp.array_shapes(min_dims=3, max_dims=5, min_side=0, max_side=4)),
                   hnp.arrays(np.uint8, hnp.array_shapes(min_dims=4, max_dims=4, min_side=0, max_side=4))),
       nrow=st.one_of(st.integers(1, 5), st.integers(-1, 5), st.floats(0, 5), st.none()),
       pad=st.one_of(st.integers(0, 3), st.integers(-1, 3), st.just(1.5)),
       pad_value=st.one_of(st.integers(0, 255), st.integers(-2, 300), st.just(2.5)))
def test_image_grid(x, nrow, pad, pad_value):
    try:
        grid = image_grid(x, nrow=nrow, pad=pad, pad_value=pad_value)
    except (TypeError, ValueError) as err:
        _message(err)
        return
    event("accepted")
    n, H, W, C = x.shape
    cols = min(nrow, max(n, 1))
    rows = -(-n // cols)
    assert grid.dtype == np.uint8 and grid.shape == (rows * (H + pad) + pad, cols * (W + pad) + pad, C)
    for i in range(n):
        r, c = divmod(i, cols)
        y, xx = pad + r * (H + pad), pad + c * (W + pad)
        np.testing.assert_array_equal(grid[y:y + H, xx:xx + W], x[i])


# --- ModelConfig.from_dict ---
FIELDS = tuple(ModelConfig().to_dict())
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 100) | st.integers(-(2**70), 2**70) | st.floats()
    | st.text(string.ascii_letters, max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)
KEYS = st.one_of(st.sampled_from(FIELDS), st.text(max_size=8))
TINY = ModelConfig.tiny().to_dict()
# Values that are right for some field, so that the near-valid dicts are often accepted too.
PLAUSIBLE = st.sampled_from([2, 4, 8, 16, 32, 0.0, 0.5, 1.5, True, False, "sum", "mean", "incoming", "outgoing",
                             [8, 16], [4], ["a", "b", "c"], ["x", "y", "z"], [3, 4, 5], [2, 2, 2]])


@FUZZ
@given(data=st.dictionaries(KEYS, JSON, max_size=6))
def test_config_from_arbitrary_dict(data):
    try:
        cfg = ModelConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        _message(err)
        return
    event("accepted")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(FIELDS), st.one_of(PLAUSIBLE, JSON), min_size=1, max_size=3),
       extra=st.dictionaries(st.integers(), st.integers(), max_size=1))
def test_config_from_near_valid_dict(changes, extra):
    """Start from a valid dict and break 1-3 fields, so the checks deep in __post_init__ are reached."""
    data = {**TINY, **changes, **extra}
    try:
        cfg = ModelConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        _message(err)
        bad = [k for k in changes if k in str(err)] + [str(k) for k in extra if str(k) in str(err)]
        assert bad or "nodes" in str(err), f"{err} names none of {sorted(changes)}"
        return
    event("accepted")
    assert not extra and ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# --- checkpoint loading ---
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, str, bytes]:
    """A tiny checkpoint: a scratch folder, the config text and the weights bytes."""
    root = tmp_path_factory.mktemp("fuzz-ckpt")
    torch.manual_seed(0)
    CausalVQ(ModelConfig.tiny()).save_pretrained(root / "ok")
    (root / "case").mkdir()
    return root / "case", (root / "ok" / "config.json").read_text(), (root / "ok" / "model.safetensors").read_bytes()


def _load(folder: Path) -> CausalVQ | None:
    try:
        return CausalVQ.from_pretrained(folder)
    except (ValueError, FileNotFoundError) as err:
        _message(err)
        return None


@st.composite
def weight_bytes(draw, valid: bytes) -> bytes:
    kind = draw(st.sampled_from(["random", "truncate", "flip", "length"]))
    if kind == "random":
        return draw(st.binary(max_size=256))
    if kind == "truncate":
        return valid[:draw(st.integers(0, len(valid)))]
    if kind == "length":  # a header length anywhere in uint64
        return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + valid[8:]
    data = bytearray(valid)
    n = struct.unpack("<Q", valid[:8])[0]
    for _ in range(draw(st.integers(1, 4))):  # mostly inside the header, where the structure is
        i = draw(st.integers(0, n + 7)) if draw(st.booleans()) else draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


@FEW
@given(data=st.data())
def test_arbitrary_bytes_as_weights(checkpoint, data):
    folder, config, valid = checkpoint
    blob = data.draw(weight_bytes(valid))
    (folder / "config.json").write_text(config)
    (folder / "model.safetensors").write_bytes(blob)
    model = _load(folder)
    if model is not None:  # a flip inside tensor data, or a no-op: it must load with the header's shapes
        event("accepted")
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in CausalVQ(ModelConfig.tiny()).state_dict().items()}


@st.composite
def config_text(draw, valid: str) -> str:
    kind = draw(st.sampled_from(["text", "json", "edit", "near"]))
    if kind == "text":
        return draw(st.text(max_size=64))
    if kind == "json":
        return json.dumps(draw(JSON))
    if kind == "near":
        return json.dumps({**json.loads(valid), **draw(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=2))})
    i = draw(st.integers(0, len(valid)))
    return valid[:i] + draw(st.text(max_size=4)) + valid[i + draw(st.integers(0, 4)):]


@FEW
@given(data=st.data())
def test_arbitrary_text_as_config(checkpoint, data):
    folder, valid, weights = checkpoint
    text = data.draw(config_text(valid))
    (folder / "config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    (folder / "model.safetensors").write_bytes(weights)
    model = _load(folder)
    if model is not None:
        event("accepted")
        assert model.config.to_dict() == json.loads(text)


# --- npz dataset reader ---
KEY_ARRAYS = {
    "images": st.one_of(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=5, max_side=4)), arrays()),
    "factors": st.one_of(hnp.arrays(st.sampled_from([np.int64, np.int32, np.uint8]),
                                    hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=5),
                                    elements=st.integers(0, 4)), arrays()),
    "factor_names": st.one_of(hnp.arrays(np.dtype("<U3"), st.tuples(st.integers(0, 4))), arrays(),
                              hnp.arrays(np.dtype("S2"), st.tuples(st.integers(0, 4)))),
    "factor_sizes": st.one_of(hnp.arrays(np.int64, st.tuples(st.integers(0, 4)), elements=st.integers(-1, 6)),
                              arrays()),
}


@st.composite
def valid_npz(draw) -> dict[str, np.ndarray]:
    """A well-formed dataset: n unique factor rows over F factors, aligned images, names, maybe sizes."""
    f = draw(st.integers(1, 3))
    rows = draw(st.lists(st.tuples(*[st.integers(0, 3)] * f), min_size=1, max_size=6, unique=True))
    factors = np.array(rows, dtype=draw(st.sampled_from([np.int64, np.int32, np.uint8])))
    shape = (len(rows), draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if draw(st.booleans()):
        shape += (draw(st.integers(1, 4)),)
    members = {"images": draw(hnp.arrays(np.uint8, shape)), "factors": factors,
               "factor_names": np.array([f"f{i}" for i in range(f)])}
    if draw(st.booleans()):
        members["factor_sizes"] = factors.max(0).astype(np.int64) + draw(st.integers(1, 3))
    return members


@st.composite
def npz_members(draw) -> dict[str, np.ndarray]:
    """A well-formed dataset with 0-2 members replaced by arbitrary arrays or removed, or arbitrary members."""
    if draw(st.integers(0, 3)) == 0:
        keys = draw(st.sets(st.sampled_from(sorted(KEY_ARRAYS)), min_size=1))
        return {k: draw(KEY_ARRAYS[k]) for k in keys}
    members = draw(valid_npz())
    for key in draw(st.sets(st.sampled_from(sorted(KEY_ARRAYS)), max_size=2)):
        if draw(st.booleans()):
            members.pop(key, None)
        else:
            members[key] = draw(KEY_ARRAYS[key])
    return members


@pytest.fixture(scope="module")
def npz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-npz")


@FUZZ
@given(members=npz_members())
@example(members={"images": np.zeros((3, 2, 2), np.uint8), "factors": np.array([[0], [1]]),
                  "factor_names": np.array(["a"])})
@example(members={"images": np.zeros((2, 2, 2), np.uint8), "factors": np.array([[0], [1]]),
                  "factor_names": np.array(["a"]), "factor_sizes": np.array([2**62])})
def test_npz_reader(npz_dir, members):
    path = npz_dir / "mine.npz"
    np.savez(path, **members)
    try:
        ds = load_dataset("npz", path=path)
    except ValueError as err:
        _message(err)
        assert str(path) in str(err), f"message does not name the file: {err}"
        missing = {"images", "factors", "factor_names"} - set(members)
        if missing:
            assert any(repr(k) in str(err) for k in missing), str(err)
        return
    event("accepted")
    images, factors = members["images"], members["factors"]
    assume(len(factors) > 0)
    hwc = images.shape[1:] if images.ndim == 4 else (*images.shape[1:], 1)
    assert ds.image_shape == hwc and ds.num_images == len(factors)
    stored = images if images.ndim == 4 else images[..., None]
    np.testing.assert_array_equal(ds.render(factors), stored)
