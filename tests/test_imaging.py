"""Image conversions: uint8 <-> float round trips, resizing, grids and PNGs, and clear errors on bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from causalvq.imaging import center_crop_resize, image_grid, resize_images, save_png, to_tensor, to_uint8


def test_uint8_float_round_trip():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 7, 9, 3), dtype=np.uint8)
    x = to_tensor(images)
    assert x.shape == (5, 3, 7, 9) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert float(x[2, 1, 3, 4]) == pytest.approx(images[2, 3, 4, 1] / 255)
    np.testing.assert_array_equal(to_uint8(x), images)
    single = to_tensor(images[0])
    assert single.shape == (1, 3, 7, 9)
    np.testing.assert_array_equal(to_uint8(single[0]), images[:1])
    np.testing.assert_array_equal(to_uint8(x.numpy()), images)  # float numpy accepted too


def test_to_uint8_clips_and_rounds():
    x = torch.tensor([-0.5, 0.0, 0.5 / 255, 1.49 / 255, 1.0, 2.0]).reshape(1, 1, 1, 6)
    np.testing.assert_array_equal(to_uint8(x)[0, 0, :, 0], [0, 0, 0, 1, 255, 255])  # round half to even


def test_resize_area_and_bilinear():
    x = torch.rand(2, 3, 64, 64)
    small = resize_images(x, 32)
    assert small.shape == (2, 3, 32, 32)
    torch.testing.assert_close(small[:, :, 0, 0], x[:, :, :2, :2].mean(dim=(2, 3)))  # area average
    assert resize_images(x, 64) is x
    odd = resize_images(x, (48, 40))
    assert odd.shape == (2, 3, 48, 40)
    flat = torch.full((1, 1, 64, 64), 0.3)
    torch.testing.assert_close(resize_images(flat, 48), torch.full((1, 1, 48, 48), 0.3))


def test_official_crop_shrinks_a_64px_scene_into_a_black_frame():
    scene = center_crop_resize(torch.ones(1, 3, 64, 64))  # CenterCrop(148) zero-pads, Resize(64)
    assert scene.shape == (1, 3, 64, 64)
    width = int((scene[0, 0] > 0.5).sum(dim=1).max())
    assert 26 <= width <= 30 and float(scene[0, :, 0, 0].max()) == 0.0  # ~28 px wide (paper §9.1)
    face = center_crop_resize(torch.rand(2, 3, 218, 178))  # larger images are really cropped
    assert face.shape == (2, 3, 64, 64) and float(face.min()) >= 0


def test_grid_and_png(tmp_path):
    images = np.stack([np.full((4, 5, 3), i * 20, dtype=np.uint8) for i in range(5)])
    grid = image_grid(images, nrow=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 3) and grid.dtype == np.uint8
    assert (grid[1:5, 1:6] == 0).all() and (grid[1:5, 7:12] == 20).all() and (grid[6:10, 7:12] == 80).all()
    path = save_png(grid, tmp_path / "sub" / "grid.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)
    grey = save_png(np.zeros((4, 4, 1), np.uint8), tmp_path / "grey.png")
    assert np.asarray(Image.open(grey)).shape == (4, 4)


def test_errors_name_what_was_expected():
    with pytest.raises(TypeError, match="uint8"):
        to_tensor(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(n, H, W, C\)"):
        to_tensor(np.zeros((4, 4), np.uint8))
    with pytest.raises(TypeError, match="float"):
        to_uint8(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        to_uint8(torch.zeros(4, 4))
    with pytest.raises(TypeError, match=r"\(b, c, H, W\)"):
        resize_images(torch.zeros(3, 8, 8), 4)
    with pytest.raises(TypeError, match="uint8"):
        image_grid(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        save_png(np.zeros((4, 4, 2), np.uint8), "x.png")
