"""The explorer launched in-process on 127.0.0.1, every named endpoint driven through gradio_client.

One server for the module (a tiny checkpoint with shapes3d's factors, plus a second one for the checkpoint
dropdown); one client, so the session state (the encoded input) carries from call to call as in a browser tab.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import api_pixels
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from causalvq.config import SHAPES3D_FACTORS, SHAPES3D_SIZES, ModelConfig
from causalvq.explore.explorer import Explorer
from causalvq.explore.images import display_image
from causalvq.model import CausalVQ

ENDPOINTS = {"/load_image", "/sample_random", "/sample_factors", "/slide", "/ground_truth", "/reset", "/graph",
             "/do", "/pair_from_sliders", "/upload_x", "/upload_y", "/retrieve", "/traverse", "/checkpoint",
             "/factor_maps", "/code_choices", "/graph_focus", "/graph_node"}
F = len(SHAPES3D_FACTORS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """(url, slots, other checkpoint, example image, explorer) of the running app; closed on teardown."""
    root = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    config = ModelConfig.tiny(factor_names=SHAPES3D_FACTORS, factor_sizes=SHAPES3D_SIZES)
    CausalVQ(config).save_pretrained(root / "other")
    explorer = Explorer(CausalVQ(config), source="tiny", calibration_samples=4, retrieval_steps=2, retrieval_pairs=2)
    demo = app.build_demo(explorer, choices=["tiny", str(root / "other")])
    example = root / "example.png"
    Image.fromarray(explorer.dataset.render(np.array([[1, 2, 3, 4, 0, 5]]))[0]).save(example)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None,
                            **app.LAUNCH_OPTIONS)
    try:
        yield url, demo.handlers.slots, root / "other", example, explorer
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server[0], verbose=False, download_files=str(Path(server[2]).parent / "downloads"))


def _pixels(value: str | dict) -> np.ndarray:
    return api_pixels(value)


def test_the_api_lists_every_endpoint(client: Client) -> None:
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert named == ENDPOINTS


def test_input_and_slider_endpoints(client: Client, server) -> None:
    _, slots, _, example, _ = server
    out = client.predict(handle_file(str(example)), api_name="/load_image")
    shown, recon, codes, notice = out[:4]
    assert _pixels(shown).shape[:2] == _pixels(recon).shape[:2] and _pixels(codes).ndim == 3
    assert "Reconstruction error" in notice or "far from" in notice
    assert list(out[4:4 + slots]) == [0] * slots
    zero = [0] * slots
    moved = [3] + [0] * (slots - 1)
    still, grid0, *_ = client.predict(*zero, api_name="/slide")
    after, grid, text, truth, truth_text = client.predict(*moved, api_name="/slide")  # the ground truth too
    assert "No estimate is available" in text and truth is None and truth_text.startswith("No estimate is available")
    assert np.array_equal(_pixels(still), _pixels(recon))
    assert not np.array_equal(_pixels(grid), _pixels(grid0))  # changed nodes are outlined
    truth, text = client.predict(*moved, api_name="/ground_truth")
    assert truth is None and text.startswith("No estimate is available")  # an upload, no probe
    out = client.predict(api_name="/reset")
    assert list(out[:slots]) == [0] * slots and np.array_equal(_pixels(out[slots]), _pixels(recon))

    out = client.predict(api_name="/sample_random")
    factors = out[-slots:][:F]
    assert all(isinstance(v, (int, float)) for v in factors) and "Dataset sample" in out[3]
    out = client.predict(1, 2, 3, 4, 0, 5, *([None] * (slots - F)), api_name="/sample_factors")
    assert "floor_hue = 1" in out[3]
    truth, text = client.predict(1, 0, 0, 0, 0, 0, 0, 0, api_name="/ground_truth")
    assert truth is not None and "floor_hue = 2" in text
    _, _, text, truth, truth_text = client.predict(0, 0, 0, 0, -1, 0, 0, 0, api_name="/slide")  # shape 0 − 1: not 0..3
    assert "Extrapolation" in text and "shape -1 from 0" in text
    assert truth is not None and "past the end of its factor" in truth_text
    _, _, text, *_ = client.predict(0, 0, 0, 0, 1, 0, 0, 0, api_name="/slide")
    assert "Extrapolation" not in text and "inside" in text


def _cache_files() -> set[str]:
    root = Path(app.gradio_utils.get_upload_folder())
    return {str(p) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_slider_images_come_inline_and_write_no_cache_file(client: Client, server) -> None:
    """The /slide answer carries its images as PNG data URLs (``app.InlineImage``): the same pixels as the handler,
    no file in gradio's cache, no second request for the page."""
    _, slots, _, example, explorer = server
    client.predict(handle_file(str(example)), api_name="/load_image")
    codes = explorer.load_image(example).codes
    before = _cache_files()
    outs = [client.predict(*([k] + [0] * (slots - 1)), api_name="/slide") for k in (1, 2, -1)]
    assert _cache_files() - before == set()  # nothing written for three moves
    for k, (image, grid, _, truth, _) in zip((1, 2, -1), outs):
        for value in (image, grid):
            assert value["path"] is None and value["url"].startswith("data:image/png;base64,")
        want = display_image(explorer.apply_sliders(codes, [k] + [0] * (F - 1)).image)
        assert np.array_equal(_pixels(image), want), f"floor_hue {k:+d}: not the model's image"
        assert truth is None  # an upload, and the tiny model has no probe


def test_an_inline_image_is_encoded_once_and_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded = []
    encode = app.processing_utils.encode_pil_to_bytes
    monkeypatch.setattr(app.processing_utils, "encode_pil_to_bytes", lambda *a: encoded.append(1) or encode(*a))
    monkeypatch.setattr(app, "_INLINED", app.LRU(8))
    image = app.InlineImage(format="png")
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    first, again = image.postprocess(pixels), image.postprocess(pixels.copy())
    assert first.path is None and first.url == again.url and len(encoded) == 1  # the same pixels: one encoding
    assert np.array_equal(_pixels(first.model_dump()), pixels)
    other = pixels.copy()
    other[0, 0, 0] ^= 1
    assert image.postprocess(other).url != first.url and len(encoded) == 2  # one pixel apart: encoded anew
    assert image.get_block_name() == "image"  # the page draws it with gradio's image component
    monkeypatch.setattr(app, "INLINE_IMAGES", False)  # CAUSALVQ_INLINE_IMAGES=0: a file in the cache, as gr.Image
    as_file = image.postprocess(pixels)
    assert as_file.path is not None and np.array_equal(_pixels(as_file.path), pixels)


def test_graph_do_retrieval_traversal_endpoints(client: Client, server) -> None:
    _, slots, _, example, explorer = server
    client.predict(handle_file(str(example)), api_name="/load_image")
    heat, net, text, table = client.predict(app.NO_ACTION, 0.5, app.GRAPH_OVER[0], app.GRAPH_VIEWS[0], 0, 3,
                                            api_name="/graph")
    assert heat["type"] == net["type"] == "matplotlib" and "no action" in text
    *_, text, table = client.predict(2, 0.3, app.GRAPH_OVER[1], app.GRAPH_VIEWS[1], 0, 3, api_name="/graph")
    assert "Intervened nodes" in text and "Node 3 has" in text
    parents = int(text.split("Node 3 has ")[1].split(" parent")[0])
    assert sum(r[0].startswith("parent") for r in table["data"]) == parents  # the table lists them all
    *_, text, table, node, codes = client.predict(2, 0.3, app.GRAPH_OVER[1], app.GRAPH_VIEWS[0], 0, 3,
                                                  api_name="/graph_focus")  # the node picker follows the action
    node = node["value"]
    assert f"Table: node {node}'s" in text and codes["value"] == explorer.code_choices(node).codes[0]
    update, want = client.predict(3, api_name="/code_choices"), explorer.code_choices(3)
    assert [c for _, c in update["choices"]] == list(want.codes) and update["value"] == want.codes[0]  # most frequent
    image, grid, plot, text = client.predict(3, 1, api_name="/do")
    assert _pixels(image).ndim == 3 and plot["type"] == "matplotlib" and text.startswith("do(node 3")

    x, y = client.predict(0, 0, 2, 0, 0, 0, *([0] * (slots - F)), api_name="/pair_from_sliders")
    plot, grid, text = client.predict(handle_file(x), handle_file(y), api_name="/retrieve")
    assert plot["type"] == "matplotlib" and text.startswith("Answer:")
    ux = client.predict(handle_file(str(example)), api_name="/upload_x")
    uy = client.predict(handle_file(y), api_name="/upload_y")
    assert np.array_equal(_pixels(ux), _pixels(x)) and np.array_equal(_pixels(uy), _pixels(y))

    grid, png, gif = client.predict(2, api_name="/traverse")
    assert _pixels(grid).shape == _pixels(png).shape
    with Image.open(gif) as g:
        assert g.n_frames == 2 * 5 - 2


def test_factor_maps_endpoint(client: Client, server) -> None:
    client.predict(handle_file(str(server[3])), api_name="/load_image")
    _, overlay0, text0 = client.predict(0, api_name="/factor_maps")
    _, _, text1 = client.predict(1, api_name="/factor_maps")
    assert "floor_hue +" in text0 and "wall_hue +" in text1 and "test pairs" in text0
    assert _pixels(overlay0).ndim == 3


def test_checkpoint_switch(client: Client, server) -> None:
    _, slots, other, _, _ = server
    out = client.predict("other", api_name="/checkpoint")  # the dropdown names the folder, not its path
    assert "`other`" in out[0] and str(other) not in out[0]
    assert [u["label"] for u in out[1:1 + F]] == list(SHAPES3D_FACTORS)  # the sliders relabelled, at 0
    assert all(u["value"] == 0 for u in out[1:1 + slots])
    out = client.predict(api_name="/sample_random")  # the session now uses the other checkpoint
    assert "Dataset sample" in out[3]
    with pytest.raises(AppError):  # only listed checkpoints open, never a path sent by a visitor
        client.predict(str(Path(other).parent), api_name="/checkpoint")


def test_bad_input_is_a_readable_error(client: Client, server, tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(AppError, match="not an image this explorer can read"):
        client.predict(handle_file(str(bad)), api_name="/load_image")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(AppError, match="Invalid file type. Please upload"):  # refused by file_types=["image"]
        client.predict(handle_file(str(text)), api_name="/upload_y")


def test_space_configuration() -> None:
    """The Space front matter (the root README.md's) parses as a SpaceCard and requirements.txt is what a CPU Space
    needs."""
    from huggingface_hub import SpaceCard

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    assert readme.startswith("---\n")
    card = SpaceCard("---\n" + readme.split("---\n")[1] + "---\n")
    assert (card.data.sdk, card.data.sdk_version, card.data.python_version) == ("gradio", "6.31.0", "3.11")
    assert card.data.app_file == "app.py" and (root / card.data.app_file).is_file() and card.data.models == []
    lines = [ln.split("#")[0].strip() for ln in (root / "requirements.txt").read_text().splitlines()]
    reqs = {ln.split("==")[0].split(">=")[0].lower(): ln for ln in lines if ln and not ln.startswith("-")}
    assert reqs["torch"] == "torch==2.13.0" and "torchvision" not in reqs and "gradio" not in reqs
    assert {"numpy", "einops", "safetensors", "huggingface-hub", "pillow", "matplotlib"} <= set(reqs)


def test_launch_makes_no_outside_connection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Building, launching and using the app only ever connects to loopback (offline env, analytics off)."""
    import socket

    outside: list[object] = []
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and sock.family != socket.AF_UNIX:
            outside.append(address)
            raise OSError(f"test: no connection outside loopback ({address})")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    with socket.socket() as probe, pytest.raises(OSError):  # the guard itself works
        probe.connect(("192.0.2.1", 80))
    assert outside == [("192.0.2.1", 80)]
    outside.clear()
    CausalVQ(ModelConfig.tiny()).save_pretrained(tmp_path / "ckpt")
    monkeypatch.setenv("CAUSALVQ_CHECKPOINT", str(tmp_path / "ckpt"))
    demo = app.load_demo()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None,
                            **app.LAUNCH_OPTIONS)
    try:
        Client(url, verbose=False).view_api(print_info=False)
    finally:
        demo.close()
    assert outside == []
