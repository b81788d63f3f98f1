"""Serving many visitors at once (issue 18): the concurrent path gives the serial path's answers, pixel for pixel.

The code grid is assembled from cached tiles (checked against the drawing it replaces); slider moves answered by
8 threads at once, directly and through the running app, equal the answers of one thread at a time on a fresh
``Explorer``.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import api_pixels
from gradio_client import Client, handle_file
from PIL import Image, ImageDraw

import app
from causalvq.config import SHAPES3D_FACTORS, SHAPES3D_SIZES, ModelConfig
from causalvq.explore import drawing, explorer
from causalvq.explore.batching import Batcher
from causalvq.explore.explorer import Explorer
from causalvq.model import CausalVQ

THREADS = 8
F = len(SHAPES3D_FACTORS)


def reference_code_grid(codes: torch.Tensor | np.ndarray, codebook_size: int, changed: np.ndarray | None = None,
                   marked: np.ndarray | None = None, cell: int | None = None) -> np.ndarray:
    """``draw_code_grid`` as it was before tiles (commit 10c7a33): every cell drawn in place with PIL."""
    c = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes).astype(np.int64)
    c = c.reshape(c.shape[-3:])  # (k, h, w)
    k, h, w = c.shape
    cell = cell or int(np.clip(min(320 // w, 720 // (k * w)), 16, 48))  # about 320 px a panel, 720 in all
    gap, title = cell // 2, (max(14, cell // 2) if k > 1 else 0)
    colors = drawing.code_colors(codebook_size)
    width = k * w * cell + (k - 1) * gap
    img = Image.new("RGB", (width, title + h * cell), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font, small = drawing._font(max(9, int(cell * 0.42))), drawing._font(max(9, title - 4))
    changed = np.zeros(k * h * w, bool) if changed is None else np.asarray(changed, bool).reshape(-1)
    marked = np.zeros(k * h * w, bool) if marked is None else np.asarray(marked, bool).reshape(-1)
    for q in range(k):
        x0 = q * (w * cell + gap)
        if k > 1:
            draw.text((x0, 1), f"codebook {q}", fill=(60, 60, 60), font=small)
        for y in range(h):
            for x in range(w):
                node = q * h * w + y * w + x
                code = int(c[q, y, x])
                box = (x0 + x * cell, title + y * cell, x0 + (x + 1) * cell - 1, title + (y + 1) * cell - 1)
                rgb = tuple(int(v) for v in colors[code % codebook_size])
                draw.rectangle(box, fill=rgb, outline=(255, 255, 255))
                luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
                ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
                draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), str(code), fill=ink, font=font,
                          anchor="mm")
                if changed[node]:
                    t = max(2, cell // 12)
                    draw.rectangle(box, outline=(0, 0, 0), width=t)
                    inner = (box[0] + t, box[1] + t, box[2] - t, box[3] - t)
                    draw.rectangle(inner, outline=(255, 255, 255), width=max(1, t // 2))
                if marked[node]:
                    s = max(5, cell // 3)
                    draw.polygon([(box[0], box[1]), (box[0] + s, box[1]), (box[0], box[1] + s)], fill=(0, 0, 0),
                                 outline=(255, 255, 255))
    return np.asarray(img)



@pytest.mark.parametrize(("k", "g", "v", "cell"), [(1, 8, 64, None), (2, 4, 8, 20), (3, 4, 512, None), (1, 5, 16, 33)])
def test_code_grid_tiles_equal_the_drawing_they_replace(k: int, g: int, v: int, cell: int | None) -> None:
    rng = np.random.default_rng(k * 100 + g)
    n = k * g * g
    for _ in range(3):
        codes = torch.as_tensor(rng.integers(0, v, (1, k, g, g)))
        changed, marked = rng.random(n) < 0.3, rng.random(n) < 0.3
        want = reference_code_grid(codes, v, changed, marked, cell)
        assert np.array_equal(drawing.draw_code_grid(codes, v, changed, marked, cell), want)
    assert np.array_equal(drawing.draw_code_grid(codes, v, cell=cell), reference_code_grid(codes, v, cell=cell))


# --- slider moves from 8 threads at once ---
@pytest.fixture(autouse=True)
def as_served(monkeypatch: pytest.MonkeyPatch):
    """One torch thread, as ``app.configure_threads`` serves (8 threads × 2 torch threads thrash 2 cores), and
    batched transitions on the plain-torch path too (the app batches them on the fused kernel only)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(explorer, "batching_pays", lambda: True)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> CausalVQ:
    torch.manual_seed(0)
    return CausalVQ(ModelConfig.tiny(factor_names=SHAPES3D_FACTORS, factor_sizes=SHAPES3D_SIZES)).eval()


def _walks(explorer: Explorer, inputs: int, moves: int, seed: int) -> list[list[tuple[int, list[int]]]]:
    """Per thread, ``moves`` (input index, slider values) pairs: one slider one step at a time, from 0."""
    out = []
    for t in range(THREADS):
        rng, cur, walk = random.Random(seed + t), [0] * F, []
        for _ in range(moves):
            f, step = rng.randrange(F), rng.choice((-1, 1))
            cur[f] += step if abs(cur[f] + step) <= explorer.max_steps[f] else -step
            walk.append((t % inputs, list(cur)))
        out.append(walk)
    return out


def _serial(model: CausalVQ, images: list[np.ndarray], walks) -> list[list[tuple]]:
    """The same moves one at a time on a fresh explorer that never batches (the serial path)."""
    ex = Explorer(model, calibration_samples=4, max_batch=1)
    h = app.Handlers(ex)
    sessions = [app.Session(checkpoint=ex.source, input=ex.load_image(im)) for im in images]
    pad = [0] * (h.slots - F)
    return [[h.move(sessions[i], *v, *pad) for i, v in walk] for walk in walks]


def _same(got: tuple, want: tuple) -> bool:
    return len(got) == len(want) and all(
        np.array_equal(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else a == b
        for a, b in zip(got, want))


def test_batched_transitions_are_each_grids_own(model: CausalVQ) -> None:
    ex = Explorer(model, calibration_samples=4)
    grids = torch.cat([ex.sample(seed=s).codes for s in range(12)])  # (12, k, h, w)
    actions = torch.arange(12) % model.config.num_actions
    codes, mask = ex._transition_rows(grids, actions)
    for i in range(12):
        one = model.transition_codes(grids[i:i + 1], actions[i:i + 1])
        assert torch.equal(codes[i:i + 1], one.codes) and torch.equal(mask[i:i + 1], one.mask)


def test_batcher_answers_each_caller_and_passes_errors_on() -> None:
    entered, gate = threading.Event(), threading.Event()

    def double(x: torch.Tensor) -> tuple[torch.Tensor]:
        entered.set()
        gate.wait(5)  # the first call holds its batch until the other threads have queued their items
        if (x < 0).any():
            raise ValueError("negative")
        return (x * 2,)

    batcher = Batcher(double, max_batch=4)
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(batcher, torch.tensor([[0.0]]))]
        assert entered.wait(5)
        futures += [pool.submit(batcher, torch.tensor([[float(i)]])) for i in range(1, THREADS)]
        while len(batcher._pending) < THREADS - 1:
            threading.Event().wait(0.001)
        gate.set()
        assert [float(f.result()[0]) for f in futures] == [2.0 * i for i in range(THREADS)]
    assert batcher.items == THREADS and batcher.calls == 3  # the first alone, then the 7 that queued: 4 + 3
    with pytest.raises(ValueError, match="negative"):
        batcher(torch.tensor([[-1.0]]))


def test_concurrent_slider_moves_equal_the_serial_path(model: CausalVQ) -> None:
    ex = Explorer(model, calibration_samples=4)  # batches the transitions of concurrent moves
    h = app.Handlers(ex)
    images = [ex.dataset.render(np.array([[i, 9 - i, 2 * i, i % 8, i % 4, 3 * i]]))[0] for i in range(4)]
    sessions = [app.Session(checkpoint=ex.source, input=ex.load_image(im)) for im in images]
    walks = _walks(ex, len(images), moves=12, seed=0)
    pad = [0] * (h.slots - F)
    start = threading.Barrier(THREADS, timeout=120)  # a thread that dies before it breaks the wait, never hangs it

    def run(walk) -> list[tuple]:
        start.wait()
        return [h.move(sessions[i], *v, *pad) for i, v in walk]

    with ThreadPoolExecutor(THREADS) as pool:
        got = list(pool.map(run, walks))
    want = _serial(model, images, walks)
    for t in range(THREADS):
        for m, (g, w) in enumerate(zip(got[t], want[t])):
            assert _same(g, w), f"thread {t}, move {m} ({walks[t][m]}): differs from the serial answer"
    assert ex._steps.items > ex._steps.calls  # transitions of different threads did run as one call


def test_the_served_app_answers_8_clients_at_once_as_the_serial_path(model: CausalVQ, tmp_path: Path) -> None:
    ex = Explorer(model, source="tiny", calibration_samples=4)
    demo = app.build_demo(ex, choices=["tiny"])
    images = [ex.dataset.render(np.array([[i, 9 - i, 2 * i, i % 8, i % 4, 3 * i]]))[0] for i in range(4)]
    files = []
    for i, im in enumerate(images):
        files.append(tmp_path / f"in{i}.png")
        Image.fromarray(im).save(files[-1])
    walks = _walks(ex, len(images), moves=5, seed=1)
    slots = demo.handlers.slots
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None,
                            **app.LAUNCH_OPTIONS)
    start = threading.Barrier(THREADS, timeout=120)  # a thread that dies before it breaks the wait, never hangs it

    def run(t: int) -> list[tuple]:
        client = Client(url, verbose=False, download_files=str(tmp_path / f"client{t}"))
        client.predict(handle_file(str(files[t % len(files)])), api_name="/load_image")
        start.wait()
        out = [client.predict(*v, *([0] * (slots - F)), api_name="/slide") for _, v in walks[t]]
        client.close()
        return out

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            got = list(pool.map(run, range(THREADS)))
    finally:
        demo.close()
    want = _serial(model, [np.asarray(Image.open(f)) for f in files], walks)
    for t in range(THREADS):
        for m, (g, w) in enumerate(zip(got[t], want[t])):
            pixels = tuple(api_pixels(v) if i in (0, 1, 3) and v else v for i, v in enumerate(g))
            assert _same(pixels, w), f"client {t}, move {m} ({walks[t][m]}): differs from the serial answer"


def test_an_image_is_encoded_once_while_its_file_is_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded = []
    encode = app.processing_utils.encode_pil_to_bytes
    monkeypatch.setattr(app.processing_utils, "encode_pil_to_bytes",
                        lambda img, fmt: encoded.append(fmt) or encode(img, fmt))
    a = Image.fromarray(np.full((8, 8, 3), 7, np.uint8))
    b = Image.fromarray(np.full((8, 8, 3), 8, np.uint8))
    pa = app._save_pil_to_cache(a, str(tmp_path), format="png")
    assert app._save_pil_to_cache(a.copy(), str(tmp_path), format="png") == pa and len(encoded) == 1
    pb = app._save_pil_to_cache(b, str(tmp_path), format="png")
    assert pb != pa and np.array_equal(np.asarray(Image.open(pb)), np.asarray(b)) and len(encoded) == 2
    Path(pa).unlink()  # gone (the cache sweep): written again
    assert app._save_pil_to_cache(a, str(tmp_path), format="png") == pa and Path(pa).is_file() and len(encoded) == 3
