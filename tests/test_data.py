"""Procedural datasets: exact factor grids, C-order indexing, determinism, and what each factor changes."""

import colorsys
import hashlib

import numpy as np
import pytest
import torch

from causalvq.data import DATASETS, FactorDataset, load_dataset, render_images
from causalvq.data.shapes3d import FACTOR_VALUES

# sha256 of the bytes of a few rendered images; re-pin only on a deliberate change of the renderers.
GOLDEN_SHAPES3D = "8f6ce9e2271f4b92b62b2573d2829807e03357943bf41d3c40cc39296667204b"
GOLDEN_DSPRITES = "c2ba16ffeb1c20f231ced69766a34f151e648b89eb76ccee80ac5e58004b2ab7"
SHAPES3D_GOLDEN_FACTORS = np.array([[0, 0, 0, 0, 0, 0], [1, 3, 5, 7, 1, 14], [9, 8, 7, 2, 2, 3], [4, 5, 6, 5, 3, 10]])
DSPRITES_GOLDEN_FACTORS = np.array([[0, 0, 0, 0, 0], [1, 3, 17, 31, 5], [2, 5, 39, 12, 30]])


@pytest.fixture(scope="module")
def shapes3d() -> FactorDataset:
    return load_dataset("shapes3d")


@pytest.fixture(scope="module")
def dsprites() -> FactorDataset:
    return load_dataset("dsprites")


def test_factor_grids_are_the_real_ones(shapes3d, dsprites):
    assert shapes3d.factor_names == ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
    assert shapes3d.factor_sizes == (10, 10, 10, 8, 4, 15)
    assert shapes3d.image_shape == (64, 64, 3) and shapes3d.num_factors == 6 and len(shapes3d) == 480_000
    assert dsprites.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert dsprites.factor_sizes == (3, 6, 40, 32, 32)
    assert dsprites.image_shape == (64, 64, 1) and dsprites.num_factors == 5 and len(dsprites) == 737_280
    np.testing.assert_allclose(FACTOR_VALUES[0], np.arange(10) / 10)
    np.testing.assert_allclose(FACTOR_VALUES[3][[0, -1]], [0.75, 1.25])
    np.testing.assert_allclose(FACTOR_VALUES[5][[0, 7, -1]], [-30.0, 0.0, 30.0])


@pytest.mark.parametrize("name", ["shapes3d", "dsprites"])
def test_flat_index_is_c_order_and_round_trips(name, request):
    ds = request.getfixturevalue(name)
    rng = np.random.default_rng(0)
    f = ds.sample_factors(500, rng)
    assert f.dtype == np.int64 and f.shape == (500, ds.num_factors)
    idx = ds.factors_to_index(f)
    np.testing.assert_array_equal(ds.index_to_factors(idx), f)
    np.testing.assert_array_equal(ds.index_to_factors(1), [0] * (ds.num_factors - 1) + [1])  # last factor fastest
    np.testing.assert_array_equal(ds.index_to_factors(len(ds) - 1), np.asarray(ds.factor_sizes) - 1)
    i = int(idx[3])
    np.testing.assert_array_equal(ds[i], ds.render(f[3:4])[0])
    assert ds[-1].shape == ds.image_shape
    with pytest.raises(IndexError):
        ds[len(ds)]


@pytest.mark.parametrize("name", ["shapes3d", "dsprites"])
def test_render_is_deterministic_and_batch_independent(name, request):
    ds = request.getfixturevalue(name)
    f = ds.sample_factors(64, np.random.default_rng(1))
    batch = ds.render(f)
    assert batch.dtype == np.uint8 and batch.shape == (64, *ds.image_shape)
    fresh = load_dataset(name)  # a new instance: nothing cached
    np.testing.assert_array_equal(fresh.render(f[::-1])[::-1], batch)
    np.testing.assert_array_equal(ds.render(f[5:6])[0], batch[5])
    assert ds.render(np.zeros((0, ds.num_factors), dtype=np.int64)).shape == (0, *ds.image_shape)



@pytest.mark.parametrize("name", ["shapes3d", "dsprites"])
def test_render_images_gives_the_model_input(name, request):
    """Float (n, C, S, S) in [0, 1]: the rendering itself at its own size, its 2×2 block means at half the size."""
    ds = request.getfixturevalue(name)
    f = ds.sample_factors(3, np.random.default_rng(2))
    H, W, C = ds.image_shape
    full = render_images(ds, f, H)
    assert full.dtype == torch.float32 and full.shape == (3, C, H, W)
    torch.testing.assert_close(full, torch.from_numpy(ds.render(f)).permute(0, 3, 1, 2) / 255.0)
    half = render_images(ds, f, H // 2)
    assert half.shape == (3, C, H // 2, W // 2) and 0 <= half.min() and half.max() <= 1
    torch.testing.assert_close(half, full.unflatten(2, (H // 2, 2)).unflatten(4, (W // 2, 2)).mean((3, 5)))

def test_golden_hashes(shapes3d, dsprites):
    assert hashlib.sha256(shapes3d.render(SHAPES3D_GOLDEN_FACTORS).tobytes()).hexdigest() == GOLDEN_SHAPES3D
    assert hashlib.sha256(dsprites.render(DSPRITES_GOLDEN_FACTORS).tobytes()).hexdigest() == GOLDEN_DSPRITES


@pytest.mark.parametrize("factor, surface", [(0, 0), (1, 1), (2, 2)])
def test_a_hue_changes_only_the_pixels_of_its_surface(shapes3d, factor, surface):
    rng = np.random.default_rng(factor)
    for base in shapes3d.sample_factors(6, rng):
        f = np.repeat(base[None], 10, axis=0)
        f[:, factor] = np.arange(10)
        images = shapes3d.render(f).astype(np.int64)  # (10, H, W, 3)
        changed = (images != images[:1]).any(axis=(0, 3))  # (H, W)
        coverage = shapes3d.geometry(*base[3:]).reshape(3, 64, 64)[surface] > 0
        assert changed.sum() > 30
        assert not (changed & ~coverage).any(), "a hue changed pixels its surface does not cover"


def test_object_takes_the_hue_evenly_spaced_and_saturated(shapes3d):
    base = np.array([0, 0, 0, 7, 2, 7])  # large sphere
    maps = shapes3d.geometry(*base[3:]).reshape(3, -1)
    inside = (maps[0] == 0) & (maps[1] == 0) & (maps[2] > 0)
    for hue in range(10):
        f = base.copy()
        f[2] = hue
        pixels = shapes3d.render(f[None])[0].reshape(-1, 3)[inside].astype(np.float64) / 255
        h, s, _ = colorsys.rgb_to_hsv(*pixels.mean(axis=0))
        assert s > 0.8
        assert min(abs(h - hue / 10), 1 - abs(h - hue / 10)) < 0.03


def test_shapes_scale_and_orientation_change_the_object(shapes3d):
    masks = [shapes3d.geometry(4, shape, 7).reshape(3, -1)[2] > 2048 for shape in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert iou < 0.9, f"shapes {i} and {j} look alike (IoU {iou:.2f})"
    areas = [(shapes3d.geometry(scale, 0, 7)[2] > 2048).sum() for scale in range(8)]
    assert all(a < b for a, b in zip(areas, areas[1:]))
    assert not np.array_equal(shapes3d.geometry(4, 0, 0), shapes3d.geometry(4, 0, 14))


def test_the_object_casts_a_shadow(shapes3d):
    maps = shapes3d.geometry(4, 0, 7).reshape(3, 64, 64).astype(np.float64) / 4096
    floor = maps[0][(maps[1] == 0) & (maps[2] == 0)]  # shading of pixels fully on the floor
    assert (floor < 0.6 * np.median(floor)).sum() > 15


def test_dsprites_factors_move_scale_and_shape_the_sprite(dsprites):
    base = np.array([0, 5, 0, 16, 16])
    def render(**changes):
        f = base.copy()
        for k, v in changes.items():
            f[dsprites.factor_names.index(k)] = v
        return dsprites.render(f[None])[0, ..., 0].astype(np.float64)
    img = render()
    assert img.max() == 255 and img[0, 0] == 0
    ys, xs = np.mgrid[:64, :64]
    cx = [(render(pos_x=v) * xs).sum() / render(pos_x=v).sum() for v in (0, 10, 20, 31)]
    cy = [(render(pos_y=v) * ys).sum() / render(pos_y=v).sum() for v in (0, 10, 20, 31)]
    assert all(a < b for a, b in zip(cx, cx[1:])) and all(a < b for a, b in zip(cy, cy[1:]))
    assert cx[0] < 12 and cx[-1] > 52
    areas = [render(scale=s).sum() for s in range(6)]
    assert all(a < b for a, b in zip(areas, areas[1:]))
    shapes = [render(shape=s) > 127 for s in range(3)]
    assert all((shapes[i] != shapes[j]).sum() > 20 for i in range(3) for j in range(i + 1, 3))
    rotated = render(orientation=5)
    assert (rotated != img).any() and abs(rotated.sum() - img.sum()) < 0.05 * img.sum()


def test_registry_and_errors(shapes3d):
    with pytest.raises(ValueError, match="shapes3d, dsprites, npz"):
        load_dataset("mnist")
    assert set(DATASETS) == {"shapes3d", "dsprites", "npz", "smallnorb", "cars3d", "celeba"}
    with pytest.raises(TypeError):
        load_dataset("shapes3d", colour="red")
    with pytest.raises(ValueError, match="path"):
        load_dataset("npz")
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        load_dataset("shapes3d", path="/nowhere.h5")
    with pytest.raises(ValueError, match="orientation"):
        shapes3d.render(np.array([[0, 0, 0, 0, 0, 15]]))
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        shapes3d.render(np.zeros(6, dtype=np.int64))
    with pytest.raises(ValueError, match="integer"):
        shapes3d.render(np.full((1, 6), 0.5))
