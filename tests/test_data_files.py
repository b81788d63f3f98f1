"""Readers of real files (3dshapes.h5, the dSprites npz) and of a user's own npz, on tiny files in those formats."""

import h5py
import numpy as np
import pytest

from causalvq.data import load_dataset, save_npz
from causalvq.data import shapes3d as s3d
from causalvq.data.pairs import TransitionSampler


def _shapes3d_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` distinct grid points in shuffled order, their float labels and distinct random images."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(480_000, size=n, replace=False)
    factors = np.stack(np.unravel_index(flat, s3d.FACTOR_SIZES), axis=1)
    labels = np.stack([s3d.FACTOR_VALUES[f][factors[:, f]] for f in range(6)], axis=1)
    images = rng.integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)
    return factors, labels, images


def _write_h5(path, images, labels) -> None:
    with h5py.File(path, "w") as fh:
        fh.create_dataset("images", data=images)
        fh.create_dataset("labels", data=labels)


@pytest.mark.parametrize("in_memory", [False, True])
def test_shapes3d_h5_round_trip(tmp_path, in_memory):
    factors, labels, images = _shapes3d_rows(40)
    path = tmp_path / "3dshapes.h5"
    _write_h5(path, images, labels.astype(np.float64))
    ds = load_dataset("shapes3d", path=path, in_memory=in_memory)
    assert ds.factor_sizes == (10, 10, 10, 8, 4, 15) and ds.image_shape == (64, 64, 3)
    assert ds.num_images == 40 and not ds.complete
    order = np.random.default_rng(1).permutation(40)
    np.testing.assert_array_equal(ds.render(factors[order]), images[order])  # located by labels, not order
    np.testing.assert_array_equal(ds.render(factors[[3, 3, 0]]), images[[3, 3, 0]])
    np.testing.assert_array_equal(ds[int(ds.factors_to_index(factors[7]))], images[7])
    drawn = ds.sample_factors(100, np.random.default_rng(0))
    assert ds.contains(drawn).all()
    other = factors[0].copy()
    other[5] = (other[5] + 1) % 15
    if not ds.contains(other[None])[0]:
        with pytest.raises(ValueError, match="orientation"):
            ds.render(other[None])


def test_file_datasets_work_in_dataloader_workers(tmp_path):
    import pickle

    import torch

    from causalvq.data.streams import ImageStream, collate

    factors, labels, images = _shapes3d_rows(40)
    _write_h5(tmp_path / "w.h5", images, labels)
    ds = load_dataset("shapes3d", path=tmp_path / "w.h5")
    ds.render(factors[:2])  # opens the file in this process first
    clone = pickle.loads(pickle.dumps(ds))  # spawn-style workers get a pickled copy that reopens the file
    np.testing.assert_array_equal(clone.render(factors[:5]), images[:5])
    sampler = TransitionSampler(ds, fractions=(1.0, 0.0, 0.0))
    loader = torch.utils.data.DataLoader(ImageStream(ds, sampler, size=16, chunk=4), batch_size=8, num_workers=2,
                                         collate_fn=collate)
    batches = list(loader)
    assert sum(len(b["x"]) for b in batches) == 16
    for b in batches:
        rows = ds.rows_of(b["factors"].numpy())
        np.testing.assert_array_equal((b["x"] * 255).round().byte().permute(0, 2, 3, 1).numpy(), images[rows])


def test_shapes3d_h5_complete_grid_in_c_order(tmp_path):
    # A full grid stored in C order, as in the real file, on a reduced scale (only to exercise `complete`).
    factors, labels, images = _shapes3d_rows(200, seed=3)
    flat = np.ravel_multi_index(tuple(factors.T), s3d.FACTOR_SIZES)
    order = np.argsort(flat)
    _write_h5(tmp_path / "c.h5", images[order], labels[order].astype(np.float32))  # float32 labels also read
    ds = load_dataset("shapes3d", path=tmp_path / "c.h5")
    np.testing.assert_array_equal(ds.render(factors), images)


def test_shapes3d_h5_malformed(tmp_path):
    _, labels, images = _shapes3d_rows(4)
    with h5py.File(tmp_path / "nolabels.h5", "w") as fh:
        fh.create_dataset("images", data=images)
    with pytest.raises(ValueError, match="nolabels.h5.*'labels'"):
        load_dataset("shapes3d", path=tmp_path / "nolabels.h5")
    _write_h5(tmp_path / "small.h5", images[:, :32, :32], labels)
    with pytest.raises(ValueError, match="small.h5.*images"):
        load_dataset("shapes3d", path=tmp_path / "small.h5")
    bad = labels.copy()
    bad[0, 3] = 0.3
    _write_h5(tmp_path / "badlabel.h5", images, bad)
    with pytest.raises(ValueError, match="badlabel.h5.*scale"):
        load_dataset("shapes3d", path=tmp_path / "badlabel.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="text.h5.*HDF5"):
        load_dataset("shapes3d", path=tmp_path / "text.h5")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        load_dataset("shapes3d", path=tmp_path / "missing.h5")


def _write_dsprites(path, n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flat = rng.choice(737_280, size=n, replace=False)
    classes = np.stack(np.unravel_index(flat, (3, 6, 40, 32, 32)), axis=1)
    latents_classes = np.concatenate([np.zeros((n, 1), dtype=np.int64), classes], axis=1)
    imgs = rng.integers(0, 2, size=(n, 64, 64), dtype=np.uint8)
    np.savez_compressed(path, imgs=imgs, latents_classes=latents_classes,
                        latents_values=latents_classes.astype(np.float64))
    return classes, imgs


def test_dsprites_npz_round_trip(tmp_path):
    classes, imgs = _write_dsprites(tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz")
    ds = load_dataset("dsprites", path=tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz")
    assert ds.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert ds.image_shape == (64, 64, 1)
    out = ds.render(classes[::-1])
    np.testing.assert_array_equal(out, (imgs[::-1] * 255)[..., None])


def test_dsprites_npz_malformed(tmp_path):
    np.savez(tmp_path / "nolatents.npz", imgs=np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="nolatents.npz.*latents_classes"):
        load_dataset("dsprites", path=tmp_path / "nolatents.npz")
    np.savez(tmp_path / "short.npz", imgs=np.zeros((2, 64, 64), np.uint8),
             latents_classes=np.zeros((3, 6), np.int64))
    with pytest.raises(ValueError, match="short.npz.*imgs"):
        load_dataset("dsprites", path=tmp_path / "short.npz")
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="junk.npz"):
        load_dataset("dsprites", path=tmp_path / "junk.npz")


def _own(n_keep: int = 20, channels: int | None = 3):
    grid = np.stack(np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij"), -1).reshape(-1, 3)
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(len(grid), size=n_keep, replace=False))
    shape = (n_keep, 8, 8) if channels is None else (n_keep, 8, 8, channels)
    return grid[keep], rng.integers(0, 256, size=shape, dtype=np.uint8)


def test_own_npz_incomplete_grid(tmp_path):
    factors, images = _own()
    names = np.array(["colour", "size", "angle"])
    np.savez(tmp_path / "mine.npz", images=images, factors=factors, factor_names=names)
    ds = load_dataset("npz", path=tmp_path / "mine.npz")
    assert ds.name == "mine" and ds.factor_names == ("colour", "size", "angle")
    assert ds.factor_sizes == tuple(int(m) + 1 for m in factors.max(0)) and ds.image_shape == (8, 8, 3)
    np.testing.assert_array_equal(ds.render(factors[::-1]), images[::-1])
    missing = next(f for f in np.ndindex(*ds.factor_sizes) if not ds.contains(np.array([f]))[0])
    with pytest.raises(ValueError, match="no image with factors"):
        ds.render(np.array([missing]))
    # Transition pairs on an incomplete grid only use stored images.
    sampler = TransitionSampler(ds, split="train", fractions=(1.0, 0.0, 0.0))
    x, y, a = sampler.sample_pairs(50, np.random.default_rng(0))
    assert ds.contains(x).all() and ds.contains(y).all()
    np.savez(tmp_path / "sized.npz", images=images[..., 0], factors=factors, factor_names=names,
             factor_sizes=np.array([3, 4, 6]))
    ds2 = load_dataset("npz", path=tmp_path / "sized.npz")
    assert ds2.factor_sizes == (3, 4, 6) and ds2.image_shape == (8, 8, 1)


@pytest.mark.parametrize("change, match", [
    (dict(images=None), "'images'"),
    (dict(factors=np.zeros((5, 3), np.int64)), "'factors' has 5 rows"),
    (dict(factors=np.zeros((20, 3), np.float32)), "'factors' must be an integer"),
    (dict(images=np.zeros((20, 8, 8), np.float32)), "'images' must be uint8"),
    (dict(factor_names=np.array(["a", "b"])), "'factor_names'"),
    (dict(factor_sizes=np.array([1, 1, 1])), "exceed 'factor_sizes'"),
])
def test_own_npz_malformed(tmp_path, change, match):
    factors, images = _own()
    arrays = dict(images=images, factors=factors, factor_names=np.array(["a", "b", "c"]))
    arrays.update(change)
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(ValueError, match=f"bad.npz.*{match}"):
        load_dataset("npz", path=tmp_path / "bad.npz")


def test_own_npz_duplicates_and_bad_paths(tmp_path):
    factors, images = _own()
    factors[1] = factors[0]
    np.savez(tmp_path / "dup.npz", images=images, factors=factors, factor_names=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match="dup.npz.*same factors"):
        load_dataset("npz", path=tmp_path / "dup.npz")
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_dataset("npz", path=tmp_path / "absent.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(ValueError, match="single.npz"):
        load_dataset("npz", path=tmp_path / "single.npz")


def test_rendered_split_cached_to_npz_loads_back(tmp_path):
    ds = load_dataset("shapes3d")
    factors = TransitionSampler(ds, split="val").sample_images(50, np.random.default_rng(0))
    path = save_npz(ds, factors, tmp_path / "val")
    cached = load_dataset("npz", path=path)
    assert path.name == "val.npz" and cached.factor_names == ds.factor_names
    assert cached.factor_sizes == ds.factor_sizes and cached.image_shape == ds.image_shape
    np.testing.assert_array_equal(cached.render(factors[::-1]), ds.render(factors[::-1]))
