"""Readers of SmallNORB, Cars3D and CelebA, on tiny files written in each release's exact format."""

import numpy as np
import pytest
from PIL import Image

from causalvq.data import load_dataset, render_images
from causalvq.data import smallnorb as norb
from causalvq.data.celeba import OFFICIAL_ATTRIBUTES, CelebAPairSampler
from causalvq.data.pairs import TransitionSampler
from causalvq.imaging import resize_images, to_tensor, to_uint8


# --- SmallNORB ---
def _norb_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """``array`` in the NORB binary matrix format (header padded to three dimensions, as in the release)."""
    magic = magic if magic is not None else {np.uint8: 0x1E3D4C55, np.int32: 0x1E3D4C54}[array.dtype.type]
    dims = list(array.shape) + [1] * max(0, 3 - array.ndim)
    return np.array([magic, array.ndim, *dims], dtype="<i4").tobytes() + array.tobytes()


def _write_norb_set(folder, prefix: str, factors: np.ndarray, seed: int = 0, instance_ids=(4, 6, 7, 8, 9)):
    """Write a set's -dat / -cat / -info files for factor rows ``(n, 5)``; returns the stereo images."""
    rng = np.random.default_rng(seed)
    dat = rng.integers(0, 256, size=(len(factors), 2, 96, 96), dtype=np.uint8)
    info = np.stack([np.asarray(instance_ids)[factors[:, 1]], factors[:, 2], 2 * factors[:, 3], factors[:, 4]], 1)
    for kind, array in (("dat", dat), ("cat", factors[:, 0].astype(np.int32)), ("info", info.astype(np.int32))):
        (folder / f"{prefix}-{kind}.mat").write_bytes(_norb_bytes(array))
    return dat


NORB_ROWS = np.array([[0, 0, 0, 0, 0], [0, 0, 0, 1, 0], [4, 4, 8, 17, 5], [2, 3, 4, 9, 1], [2, 3, 5, 9, 1],
                      [1, 2, 3, 4, 5]])


def test_smallnorb_round_trip(tmp_path):
    order = np.random.default_rng(1).permutation(len(NORB_ROWS))
    dat = _write_norb_set(tmp_path, norb.TRAINING_PREFIX, NORB_ROWS[order])
    for path in (tmp_path, tmp_path / f"{norb.TRAINING_PREFIX}-dat.mat", tmp_path / f"{norb.TRAINING_PREFIX}-info.mat"):
        ds = load_dataset("smallnorb", path=path)
        assert ds.factor_names == ("category", "instance", "elevation", "azimuth", "lighting")
        assert ds.factor_sizes == (5, 5, 9, 18, 6) and ds.image_shape == (96, 96, 1) and ds.num_images == 6
        np.testing.assert_array_equal(ds.render(NORB_ROWS[order]), dat[:, 0, :, :, None])  # the first camera
    np.testing.assert_array_equal(ds.render(NORB_ROWS[[2]])[0, ..., 0], dat[np.argmax(order == 2), 0])
    # Pairs of an incomplete grid use only stored neighbours: azimuth 0 -> 1 and elevation 4 -> 5.
    x, y, a = TransitionSampler(ds, fractions=(1.0, 0.0, 0.0)).sample_pairs(20, np.random.default_rng(0))
    assert ds.contains(x).all() and ds.contains(y).all() and set(a.tolist()) <= {3, 2, 8, 7}
    assert render_images(ds, y, 64).shape == (20, 1, 64, 64)  # resized to the model's side


def test_smallnorb_testing_set(tmp_path):
    dat = _write_norb_set(tmp_path, norb.TESTING_PREFIX, NORB_ROWS, instance_ids=(0, 1, 2, 3, 5))
    ds = load_dataset("smallnorb", path=tmp_path / f"{norb.TESTING_PREFIX}-cat.mat")
    np.testing.assert_array_equal(ds.render(NORB_ROWS), dat[:, 0, :, :, None])
    with pytest.raises(FileNotFoundError, match="testing set"):  # a folder means the training set
        load_dataset("smallnorb", path=tmp_path)


def test_smallnorb_matrix_reader(tmp_path):
    for array in (np.arange(7, dtype=np.int32), np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
                  np.ones((2, 1, 2, 3, 2), dtype=np.int16), np.linspace(0, 1, 6).reshape(3, 2).astype("<f4")):
        magic = {np.int16: 0x1E3D4C56, np.float32: 0x1E3D4C51}.get(array.dtype.type)
        (tmp_path / "m.mat").write_bytes(_norb_bytes(array, magic))
        np.testing.assert_array_equal(norb.read_norb_matrix(tmp_path / "m.mat"), array)


def test_smallnorb_malformed(tmp_path):
    dat_name = f"{norb.TRAINING_PREFIX}-dat.mat"

    def fresh(rows=NORB_ROWS):
        for f in tmp_path.iterdir():
            f.unlink()
        _write_norb_set(tmp_path, norb.TRAINING_PREFIX, rows)

    def rewrite(kind, data: bytes):
        (tmp_path / f"{norb.TRAINING_PREFIX}-{kind}.mat").write_bytes(data)

    fresh()
    raw = (tmp_path / dat_name).read_bytes()
    rewrite("dat", b"\x00\x00\x00\x00" + raw[4:])
    with pytest.raises(ValueError, match="dat.mat.*magic number 0x00000000"):
        load_dataset("smallnorb", path=tmp_path)
    rewrite("dat", raw[:-100])
    with pytest.raises(ValueError, match="dat.mat: truncated"):
        load_dataset("smallnorb", path=tmp_path)
    rewrite("dat", raw[:10])
    with pytest.raises(ValueError, match="dat.mat: truncated NORB header"):
        load_dataset("smallnorb", path=tmp_path)
    rewrite("dat", _norb_bytes(np.zeros((6, 96, 96), np.uint8)))  # no camera axis
    with pytest.raises(ValueError, match=r"dat.mat: expected uint8 \(n, 2, 96, 96\)"):
        load_dataset("smallnorb", path=tmp_path)
    fresh()
    rewrite("cat", _norb_bytes(np.zeros(5, np.int32)))
    with pytest.raises(ValueError, match=r"cat.mat: expected integer \(6,\)"):
        load_dataset("smallnorb", path=tmp_path)
    fresh()
    (tmp_path / f"{norb.TRAINING_PREFIX}-info.mat").rename(tmp_path / f"{norb.TRAINING_PREFIX}-info.mat.gz")
    with pytest.raises(FileNotFoundError, match="info.mat .*gunzip"):
        load_dataset("smallnorb", path=tmp_path / dat_name)
    fresh()
    info = np.array([[4, 0, 3, 0]], np.int32)  # odd azimuth
    _write_norb_set(tmp_path, norb.TRAINING_PREFIX, NORB_ROWS[:1])
    rewrite("info", _norb_bytes(info))
    with pytest.raises(ValueError, match="azimuth values must be even"):
        load_dataset("smallnorb", path=tmp_path)
    _write_norb_set(tmp_path, norb.TRAINING_PREFIX, NORB_ROWS[:2])
    rewrite("info", _norb_bytes(np.array([[0, 0, 0, 0], [4, 0, 0, 0]], np.int32)))  # testing and training ids
    with pytest.raises(ValueError, match=r"instance ids \[0, 4\] are not those of one SmallNORB set"):
        load_dataset("smallnorb", path=tmp_path)
    rewrite("info", _norb_bytes(np.array([[4, 9, 0, 0], [4, 0, 0, 0]], np.int32)))
    with pytest.raises(ValueError, match="info.mat: elevation out of range at row 0"):
        load_dataset("smallnorb", path=tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("smallnorb", path=tmp_path / "nowhere")
    (tmp_path / "other.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="other.bin: expected the folder"):
        load_dataset("smallnorb", path=tmp_path / "other.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"empty: no {norb.TRAINING_PREFIX}-dat.mat"):
        load_dataset("smallnorb", path=tmp_path / "empty")
    with pytest.raises(ValueError, match="needs path="):
        load_dataset("smallnorb")


# --- Cars3D ---
def _write_car(path, seed: int, side: int = 128, key: str = "im", dtype=np.uint8) -> np.ndarray:
    from scipy.io import savemat

    im = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3, 24, 4), dtype=np.uint8).astype(dtype)
    savemat(path, {key: im})
    return im


def test_cars3d_round_trip(tmp_path):
    names = ["car_010_mesh.mat", "car_002_mesh.mat"]
    ims = {name: _write_car(tmp_path / name, seed) for seed, name in enumerate(names)}
    ds = load_dataset("cars3d", path=tmp_path)
    assert ds.factor_names == ("elevation", "azimuth", "object") and ds.factor_sizes == (4, 24, 183)
    assert ds.image_shape == (128, 128, 3) and ds.num_images == 2 * 96 and not ds.complete
    by_object = [ims["car_002_mesh.mat"], ims["car_010_mesh.mat"]]  # object id = sorted file order
    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(0, 4, 30), rng.integers(0, 24, 30), rng.integers(0, 2, 30)], axis=1)
    expected = np.stack([by_object[o][:, :, :, az, el] for el, az, o in factors])
    np.testing.assert_array_equal(ds.render(factors), expected)
    x, y, a = TransitionSampler(ds, fractions=(1.0, 0.0, 0.0)).sample_pairs(50, rng)
    assert ds.contains(x).all() and ds.contains(y).all() and (np.abs(x - y).sum(1) == 1).all()
    small = load_dataset("cars3d", path=tmp_path, image_size=64)
    assert small.image_shape == (64, 64, 3)
    np.testing.assert_array_equal(small.render(factors[:3]), to_uint8(resize_images(to_tensor(expected[:3]), 64)))


def test_cars3d_malformed(tmp_path, monkeypatch):
    import sys

    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("cars3d", path=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no .mat files"):
        load_dataset("cars3d", path=tmp_path)
    _write_car(tmp_path / "car_001_mesh.mat", 0, side=8)
    with pytest.raises(ValueError, match="not a file"):
        load_dataset("cars3d", path=tmp_path / "car_001_mesh.mat")
    good = (tmp_path / "car_001_mesh.mat").read_bytes()
    (tmp_path / "car_002_mesh.mat").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="car_002_mesh.mat: not a readable MATLAB"):
        load_dataset("cars3d", path=tmp_path)
    (tmp_path / "car_002_mesh.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match="car_002_mesh.mat: not a readable MATLAB"):
        load_dataset("cars3d", path=tmp_path)
    _write_car(tmp_path / "car_002_mesh.mat", 1, side=16)
    with pytest.raises(ValueError, match="car_002_mesh.mat: renders of"):
        load_dataset("cars3d", path=tmp_path)
    from scipy.io import savemat

    savemat(tmp_path / "car_002_mesh.mat", {"im": np.zeros((8, 8, 3, 24, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"car_002_mesh.mat: 'im' must be uint8 \(H, W, 3, 24, 4\)"):
        load_dataset("cars3d", path=tmp_path)
    _write_car(tmp_path / "car_002_mesh.mat", 1, side=8, dtype=np.float64)
    with pytest.raises(ValueError, match="'im' must be uint8"):
        load_dataset("cars3d", path=tmp_path)
    _write_car(tmp_path / "car_002_mesh.mat", 1, side=8, key="images")
    with pytest.raises(ValueError, match="car_002_mesh.mat: no array 'im'"):
        load_dataset("cars3d", path=tmp_path)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ImportError, match=r"causalvq\[cars3d\]"):
        load_dataset("cars3d", path=tmp_path)


# --- CelebA ---
ALL_ATTRIBUTES = OFFICIAL_ATTRIBUTES + (
    "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling",
    "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young")


def _write_celeba(folder, values: np.ndarray, partition: np.ndarray) -> list[str]:
    """Write the aligned release's layout for ``values (n, 40)`` in {-1, 1}; returns the file names."""
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i + 1:06d}.jpg" for i in range(len(values))]
    for name in names:
        Image.fromarray(rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)).save(
            folder / "img_align_celeba" / name, quality=90)
    rows = [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, values)]
    (folder / "list_attr_celeba.txt").write_text(f"{len(values)}\n" + " ".join(ALL_ATTRIBUTES) + " \n"
                                                 + "\n".join(rows) + "\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, partition)))
    return names


def _celeba_values() -> tuple[np.ndarray, np.ndarray]:
    """Twelve images, 0-3 train, 4-7 val (a copy of 0-3), 8-11 test. Of the official ten attributes, 0/1 differ in
    Bangs only, 2/3 in Bald and Big_Lips; 9 differs from 8, 10, 11 (all equal) in Big_Nose only."""
    values = -np.ones((12, 40), dtype=np.int64)
    on = {1: [5], 2: [0, 2], 3: [0, 2, 4, 6], 8: [0, 2], 9: [0, 2, 7], 10: [0, 2], 11: [0, 2]}
    for image, columns in on.items():
        values[image, columns] = 1
    values[4:8] = values[:4]
    return values, np.repeat([0, 1, 2], 4)


@pytest.mark.filterwarnings("ignore:CelebA attribute pairs show two different people")
def test_celeba_round_trip_and_pairs(tmp_path):
    values, partition = _celeba_values()
    names = _write_celeba(tmp_path, values, partition)
    ds = load_dataset("celeba", path=tmp_path)
    assert ds.factor_names == OFFICIAL_ATTRIBUTES and ds.factor_sizes == (2,) * 10 and ds.num_images == 12
    assert ds.image_shape == (148, 148, 3) and not ds.complete
    np.testing.assert_array_equal(ds.factors_of(np.arange(12)), (values[:, :10] > 0).astype(np.int64))
    decoded = np.asarray(Image.open(tmp_path / "img_align_celeba" / names[5]).convert("RGB"))
    np.testing.assert_array_equal(ds.images(np.array([5]))[0], decoded[35:183, 15:163])  # CenterCrop(148)
    whole = load_dataset("celeba", path=tmp_path, crop=None, attributes=["Bald", "Bangs"])
    assert whole.image_shape == (218, 178, 3) and whole.factor_names == ("Bald", "Bangs")
    np.testing.assert_array_equal(whole.images(np.array([5]))[0], decoded)
    with pytest.raises(ValueError, match="different people"):
        ds.render(ds.factors_of(np.array([0])))
    assert ds.contains(ds.factors_of(np.arange(12))).all() and not ds.contains(np.ones((1, 10), np.int64))[0]

    rng = np.random.default_rng(0)
    sampler = CelebAPairSampler(ds, split="train")
    assert sampler.different_people and sampler.num_actions == 20 and sampler.num_cells == 1
    assert set(sampler.sample_images(50, rng).tolist()) == {0, 1, 2, 3}
    with pytest.warns(UserWarning, match="different people"):
        x, y, a = sampler.sample_pairs(40, rng)
    assert set(zip(x.tolist(), y.tolist(), a.tolist())) == {(0, 1, 5), (1, 0, 15)}  # Bangs +, Bangs -
    fx, fy = ds.factors_of(x), ds.factors_of(y)
    assert (sampler.in_split(x) & sampler.in_split(y)).all() and (fy - fx)[np.arange(40), a % 10].tolist() == [
        1 if d == 0 else -1 for d in a // 10]
    # Bald and Bangs chosen: 0/1 differ in Bangs, 0/3 and 2/3 in Bald: two cells.
    two = CelebAPairSampler(whole, split=0)
    x, y, a = two.sample_pairs(200, rng)
    assert two.num_cells == 2 and set(a.tolist()) == {0, 1, 2, 3}
    assert np.abs(whole.factors_of(x) - whole.factors_of(y)).sum(1).tolist() == [1] * 200
    test = CelebAPairSampler(ds, split="test")
    pairs = test.sample_pairs(20, rng)
    assert ((pairs.x_ids == 9) ^ (pairs.y_ids == 9)).all() and not test.in_split(np.array([0, 4])).any()


def test_celeba_attribute_grid(tmp_path):
    """The factor-grid view the training CLI uses: render shows one of the people who have each attribute vector,
    the same people for the same array; grid pairs flip one attribute between two existing vectors."""
    values, partition = _celeba_values()
    _write_celeba(tmp_path, values, partition)
    celeba = load_dataset("celeba", path=tmp_path)
    grid = celeba.attribute_grid()
    assert (grid.name, grid.factor_names, grid.factor_sizes, grid.image_shape, grid.complete) == (
        "celeba", OFFICIAL_ATTRIBUTES, (2,) * 10, (148, 148, 3), False)
    rows = np.repeat(celeba.factors_of(np.array([2])), 200, axis=0)  # the attributes of images 2, 6, 8, 10, 11
    ids = grid.image_ids(rows)
    assert set(ids.tolist()) == {2, 6, 8, 10, 11} and np.bincount(ids)[[2, 6, 8, 10, 11]].min() >= 25
    np.testing.assert_array_equal(celeba.factors_of(ids), rows)
    np.testing.assert_array_equal(grid.image_ids(rows), ids)  # the same array: the same people
    assert (grid.image_ids(rows[:100]) != ids[:100]).mean() > 0.5  # another array draws again
    np.testing.assert_array_equal(grid.render(rows[:3]), celeba.images(grid.image_ids(rows[:3])))
    missing = np.ones((1, 10), np.int64)
    assert not grid.contains(missing)[0]
    with pytest.raises(ValueError, match="no image has the attributes .*'Blond_Hair': 1"):
        grid.render(missing)

    rng = np.random.default_rng(0)
    x, y, a = TransitionSampler(grid, fractions=(1.0, 0.0, 0.0)).sample_pairs(100, rng)
    assert grid.contains(x).all() and grid.contains(y).all() and (np.abs(x - y).sum(1) == 1).all()
    assert set(a.tolist()) == {5, 15, 7, 17}  # Bangs and Big_Nose, both ways: the only attributes that flip
    np.testing.assert_array_equal(celeba.factors_of(grid.image_ids(y)), y)
    assert render_images(grid, x[:2], 16).shape == (2, 3, 16, 16)


def test_celeba_malformed(tmp_path):
    values, partition = _celeba_values()
    _write_celeba(tmp_path, values, partition)
    attr, part = tmp_path / "list_attr_celeba.txt", tmp_path / "list_eval_partition.txt"
    good_attr, good_part = attr.read_text(), part.read_text()
    with pytest.raises(ValueError, match="not found: \\['Smile'\\]"):
        load_dataset("celeba", path=tmp_path, attributes=["Smile"])
    with pytest.raises(ValueError, match="crop"):
        load_dataset("celeba", path=tmp_path, crop=300)
    cases = [
        (attr, good_attr.replace("000002.jpg -1", "000002.jpg  0"), "attribute values must be -1 or 1, line 4"),
        (attr, good_attr.replace("000002.jpg -1", "000002.jpg"), "attr_celeba.txt: line 4 has 39 values for 40"),
        (attr, good_attr.replace("12\n", "13\n", 1), "says 13 images, the file lists 12"),
        (part, good_part.replace("000004.jpg 0\n", ""), "partition.txt: no split for 1 image.*000004.jpg"),
        (part, good_part.replace("000004.jpg 0", "000004.jpg 3"), "list_eval_partition.txt: line 4"),
    ]
    for target, text, message in cases:
        attr.write_text(good_attr)
        part.write_text(good_part)
        target.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_dataset("celeba", path=tmp_path)
    part.unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
        load_dataset("celeba", path=tmp_path)
    part.write_text(good_part)
    (tmp_path / "img_align_celeba" / "000007.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 image.*missing, e.g. 000007.jpg"):
        load_dataset("celeba", path=tmp_path)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "img_align_celeba" / "000007.jpg")
    ds = load_dataset("celeba", path=tmp_path)
    with pytest.raises(ValueError, match="000007.jpg: expected an aligned CelebA image of 178×218"):
        ds.images(np.array([6]))
    (tmp_path / "img_align_celeba" / "000007.jpg").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="000007.jpg: cannot read the image"):
        ds.images(np.array([6]))
    with pytest.raises(ValueError, match="image ids must be in 0..11"):
        ds.images(np.array([12]))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("celeba", path=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no two images that differ"):  # nobody is blond
        CelebAPairSampler(load_dataset("celeba", path=tmp_path, attributes=["Blond_Hair"]), "val").sample_pairs(
            1, np.random.default_rng(0))
