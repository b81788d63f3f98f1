"""Bad uploads through the running app: every image input, driven with gradio_client, must answer a clear sentence
(``AppError`` carrying the ``gr.Error`` text) or convert the file correctly, and keep serving afterwards.

Image inputs of the app (see ``build_demo``): the upload endpoints ``/load_image``, ``/upload_x``, ``/upload_y``
(``gr.File`` → ``read_image_file``), and ``/retrieve``, whose x and y are images the API lets a caller upload
(``Handlers.retrieve_files``, ``preprocess=False`` → ``read_image_file``). Each case below is sent to each of
them; after every case a normal request to the same endpoint must still work. docs/reliability_app_train.md §1
lists the cases and the results.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from causalvq.config import SHAPES3D_FACTORS, SHAPES3D_SIZES, ModelConfig
from causalvq.explore.explorer import Explorer
from causalvq.explore.images import display_image
from causalvq.model import CausalVQ

REPO = Path(__file__).resolve().parents[1]
ENDPOINTS = ("/load_image", "/upload_x", "/upload_y", "/retrieve")
UNREADABLE = "is not an image this explorer can read"
TOO_LARGE = "too large for this explorer"


# --- files ---
def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width``×``height`` RGB pixels, followed by a few bytes of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _gradient(h: int, w: int) -> np.ndarray:
    """uint8 (h, w, 3): a smooth colour gradient (compresses well, so large ones stay small files)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // max(h + w - 2, 1)],
                    -1).astype(np.uint8)


def _not_an_image(path: Path) -> None:
    path.write_bytes(b"%PDF-1.4 not an image at all\n" * 20)


def _truncated_png(path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _rgba(path: Path) -> np.ndarray:
    rgb = _gradient(24, 30)
    alpha = np.tile(np.array([0, 51, 102, 204, 255], np.uint8), 6)[None, :].repeat(24, 0)  # (24, 30)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    a = alpha[..., None].astype(np.float32) / 255.0
    return np.round(rgb.astype(np.float32) * a + 255.0 * (1.0 - a)).astype(np.uint8)  # composited onto white


def _grey(path: Path) -> np.ndarray:
    grey = _gradient(20, 20)[..., 0]
    Image.fromarray(grey).save(path)
    return np.repeat(grey[..., None], 3, -1)


def _png16(path: Path) -> np.ndarray:
    values = (np.arange(24 * 24, dtype=np.uint32).reshape(24, 24) * 113 % 65536).astype(np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    return np.repeat(np.round(values * (255.0 / 65535.0)).astype(np.uint8)[..., None], 3, -1)


def _animated_gif(path: Path) -> np.ndarray:
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    frames = [Image.new("RGB", (20, 20), c) for c in colours]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    return np.full((20, 20, 3), colours[0], np.uint8)  # the first frame


def _one_pixel(path: Path) -> np.ndarray:
    Image.new("RGB", (1, 1), (200, 30, 90)).save(path)
    return np.full((1, 1, 3), (200, 30, 90), np.uint8)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _svg(path: Path) -> None:
    path.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" '
                    'height="10"/></svg>')


def _bomb_header(path: Path) -> None:
    _png_header_only(path, 100_000, 100_000)  # 10 gigapixels claimed in a 100-byte file


def _large_accepted(path: Path) -> np.ndarray:
    image = _gradient(2100, 2600)  # 5.5 megapixels: accepted, read box-reduced to 1300×1050
    Image.fromarray(image).save(path)
    return image


# name -> (file name, writer, expected): a regex of the message, or the writer returns the expected pixels
CASES: dict[str, tuple[str, Callable[[Path], np.ndarray | None], str | None]] = {
    "not an image": ("document.png", _not_an_image, UNREADABLE),
    "truncated PNG": ("truncated.png", _truncated_png, UNREADABLE),
    "8000x8000": ("huge.png", None, "8000×8000 pixels, " + TOO_LARGE),  # written once, by the fixture
    "RGBA": ("rgba.png", _rgba, None),
    "greyscale": ("grey.png", _grey, None),
    "16-bit PNG": ("deep.png", _png16, None),
    "animated GIF": ("animated.gif", _animated_gif, None),
    "1x1": ("dot.png", _one_pixel, None),
    "empty file": ("empty.png", _empty, UNREADABLE),
    "SVG": ("drawing.svg", _svg, UNREADABLE),
    "10-gigapixel header": ("bomb.png", _bomb_header, TOO_LARGE),
    "large, accepted": ("large.png", _large_accepted, None),
}


# --- the running app ---
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """(url, demo, explorer, folder of the case files) of the app, launched in-process; closed on teardown."""
    root = tmp_path_factory.mktemp("hardening_app")
    torch.manual_seed(0)
    config = ModelConfig.tiny(factor_names=SHAPES3D_FACTORS, factor_sizes=SHAPES3D_SIZES)
    explorer = Explorer(CausalVQ(config), source="tiny", calibration_samples=4)
    demo = app.build_demo(explorer, choices=["tiny"])
    Image.fromarray(explorer.dataset.render(np.array([[1, 2, 3, 4, 0, 5]]))[0]).save(root / "good.png")
    Image.new("RGB", (8000, 8000), (40, 90, 160)).save(root / "huge.png")  # 64 megapixels, a ~200 KB file
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None,
                            **app.LAUNCH_OPTIONS)
    try:
        yield url, demo, explorer, root
    finally:
        demo.close()


@pytest.fixture(scope="module")
def expected(server) -> dict[str, np.ndarray | None]:
    """Every case's file written once into the server's folder; case name -> expected pixels (None: refused)."""
    root = server[3]
    return {case: writer(root / name) if writer is not None else None for case, (name, writer, _) in CASES.items()}


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server[0], verbose=False, download_files=str(server[3] / "downloads"))


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _call(client: Client, endpoint: str, file: Path, good: Path) -> tuple:
    """Send ``file`` to ``endpoint`` (as x for /retrieve, with a good y); returns the outputs as a tuple."""
    if endpoint == "/retrieve":
        return tuple(client.predict(handle_file(str(file)), handle_file(str(good)), api_name=endpoint))
    out = client.predict(handle_file(str(file)), api_name=endpoint)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("case", list(CASES))
def test_bad_upload_is_refused_or_converted_and_the_app_keeps_serving(client: Client, server, expected,
                                                                      endpoint: str, case: str) -> None:
    _, demo, explorer, root = server
    name, _, message = CASES[case]
    path, pixels, good = root / name, expected[case], root / "good.png"

    if message is not None:
        with pytest.raises(AppError) as info:
            _call(client, endpoint, path, good)
        text = str(info.value)
        assert re.search(message, text), text
        assert "Traceback" not in text and "/tmp/" not in text and "Error:" not in text, text  # a sentence only
    else:
        out = _call(client, endpoint, path, good)
        ref = explorer.load_image(pixels)  # the model-side result for the correctly converted pixels
        if endpoint == "/retrieve":
            _, grid, text = demo.handlers.retrieve(demo.handlers.new_session(), pixels,
                                                   np.asarray(Image.open(good)))
            assert out[2] == text
            assert np.array_equal(_pixels(out[1]), grid)
        else:
            shown = _pixels(out[0])
            want = display_image(ref.image)
            tolerance = 1 if case == "large, accepted" else 0  # box-reduced while read: within a grey level
            assert shown.shape == want.shape
            assert np.abs(shown.astype(int) - want.astype(int)).max() <= tolerance
            if endpoint == "/load_image":
                assert "Reconstruction error" in out[3] or "far from" in out[3]

    # the app keeps serving: a normal request to the same endpoint works
    out = _call(client, endpoint, good, good)
    if endpoint == "/retrieve":  # the same image twice: the same codes, so no move
        assert out[2].startswith("Answer: **no move**")
    else:
        assert _pixels(out[0]).shape[:2] == (16, 16)  # the tiny model's own pixels


def test_a_file_over_the_size_limit_is_refused_by_the_server(server, client: Client) -> None:
    """gradio_client refuses > max_file_size itself; a raw upload that skips that check gets HTTP 413."""
    url, _, _, root = server
    big = root / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (21 * 1024 * 1024))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), api_name="/load_image")
    with big.open("rb") as fh:
        response = httpx.post(url.rstrip("/") + "/gradio_api/upload", files={"files": ("big.png", fh)}, timeout=60)
    assert response.status_code == 413 and "maximum allowed size" in response.text
    out = client.predict(handle_file(str(root / "good.png")), api_name="/upload_x")
    assert _pixels(out).shape[:2] == (16, 16)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_server_path_that_was_not_uploaded_is_refused(server, endpoint: str) -> None:
    """A raw API call naming a file on the server (not uploaded through the app) is refused by gradio before any
    handler runs, also for /retrieve, whose inputs skip gradio's preprocessing (``preprocess=False``)."""
    url, _, _, root = server
    file = {"path": str(root / "good.png"), "meta": {"_type": "gradio.FileData"}}
    name = endpoint.lstrip("/")
    data = [file, file] if endpoint == "/retrieve" else [file]
    event = httpx.post(f"{url}gradio_api/call/{name}", json={"data": data}, timeout=30).json()["event_id"]
    stream = httpx.get(f"{url}gradio_api/call/{name}/{event}", timeout=60).text
    assert "event: error" in stream and "was not uploaded by a user" in stream, stream


@pytest.mark.slow
def test_concurrent_identical_outputs_download_whole(server) -> None:
    """20 clients upload the same image at once, so the app writes the same output files concurrently: every
    client must download whole images (gradio rewrote them in place; app._save_pil_to_cache renames)."""
    url, _, _, root = server
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            client = Client(url, verbose=False, download_files=str(root / f"concurrent{i}"))
            out = client.predict(handle_file(str(root / "good.png")), api_name="/load_image")
            for path in out[:3]:
                _pixels(path)  # a truncated download does not decode
        except Exception as err:  # noqa: BLE001 - collected, asserted below
            errors.append(f"{type(err).__name__}: {err}")

    for _ in range(3):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


MEMORY_PROBE = """
import sys
import numpy as np, torch
from causalvq.config import ModelConfig
from causalvq.explore.explorer import Explorer
from causalvq.explore.images import InputError
from causalvq.model import CausalVQ

def kib(field):  # VmRSS / VmHWM of this process (ru_maxrss would carry the parent's peak across exec)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

torch.set_num_threads(1)
explorer = Explorer(CausalVQ(ModelConfig.tiny()), dataset=False)
explorer.load_image(np.zeros((64, 64, 3), np.uint8))  # warm up: first-call allocations are not the image's
for path in sys.argv[1:]:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak (VmHWM) to the current resident size
    before = kib("VmRSS")
    try:
        explorer.load_image(path)
        outcome = "accepted"
    except InputError:
        outcome = "refused"
    print(outcome, (kib("VmHWM") - before) // 1024, flush=True)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_pixel_limit_protects_memory(server) -> None:
    """Peak memory of reading an upload, in a fresh process: the 8000×8000 image is refused from its header
    (no decoding: < 20 MB), and the largest accepted size (~40 megapixels) stays well under the ~1.1 GB it cost
    before uploads were box-reduced while read."""
    root = server[3]
    largest = root / "largest.png"
    Image.new("RGB", (6300, 6300), (40, 90, 160)).save(largest)  # 39.7 megapixels
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(root / "huge.png"), str(largest)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (huge, huge_mb), (big, big_mb) = [line.split() for line in result.stdout.splitlines()[-2:]]
    assert (huge, big) == ("refused", "accepted")
    assert int(huge_mb) < 20, huge_mb
    assert int(big_mb) < 400, big_mb
