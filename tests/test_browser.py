"""The explorer in a real browser: Debian chromium driven by playwright (marked ``browser``).

One tour of the page over a tiny checkpoint (``scripts/screenshots.py``'s ``tour``, which also writes the committed
screenshots): a gallery example, a file that is not an image, two sliders (one step past a factor's end), the graph
under an action, retrieval, traversals at k = 8, factor maps of two actions, each panel photographed at 1,024 and
1,400 px into a temporary folder. It checks what a visitor sees: the bad upload keeps the previous image, the
extrapolated step is marked, the factor map follows the action, no machine path shows in the page, and the page
asked nothing outside loopback. Skipped, with the reason, where ``/usr/bin/chromium`` or playwright is missing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("screenshots", ROOT / "scripts" / "screenshots.py")
screenshots = sys.modules.setdefault("screenshots", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(screenshots)


@pytest.fixture()
def app_url(tmp_path: Path):
    """The explorer over a tiny checkpoint, launched in-process on 127.0.0.1."""
    reason = screenshots.missing()
    if reason:
        pytest.skip(reason)
    import torch

    import app
    from causalvq.config import SHAPES3D_FACTORS, SHAPES3D_SIZES, ModelConfig
    from causalvq.explore.explorer import Explorer
    from causalvq.model import CausalVQ

    torch.manual_seed(0)
    model = CausalVQ(ModelConfig.tiny(factor_names=SHAPES3D_FACTORS, factor_sizes=SHAPES3D_SIZES))
    explorer = Explorer(model, source="tiny", calibration_samples=4, retrieval_steps=2, retrieval_pairs=2, map_pairs=96,
                        code_images=32)  # the panels' one-off measurements kept small
    demo = app.build_demo(explorer, choices=["tiny"])
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None,
                            **app.LAUNCH_OPTIONS)
    try:
        yield url
    finally:
        demo.close()


@pytest.mark.browser
def test_browser_tour_of_every_panel(app_url: str, tmp_path: Path) -> None:
    examples = sorted((ROOT / "assets" / "examples").glob("*.png"))
    assert examples, "assets/examples/*.png are missing"
    bad = tmp_path / "holiday.png"
    bad.write_text("not an image\n")
    seen = screenshots.tour(app_url, tmp_path / "shots", examples[1], bad, timeout_s=180)  # a busy CI machine

    # 1. a bad upload changes nothing and says why
    assert seen.bad_upload_kept, "a bad upload replaced the current input"
    assert "not an image" in seen.bad_upload_warned
    # 3. sliders move the image; the step past the shape factor's end is marked
    assert seen.slider_changed
    assert "Extrapolation" in seen.extrapolation and "shape" in seen.extrapolation
    # 4-7. every panel answered
    assert "object_hue +" in seen.graph_text
    assert seen.retrieval_text
    assert seen.traversal_shown
    assert seen.maps_changed, "the factor map did not change with the action"
    assert "wall_hue -" in seen.maps_text

    # no machine path anywhere in what the page shows
    machine = {str(ROOT), "/work/", str(Path.home()), str(tmp_path), "/tmp/"}
    for text in seen.texts:
        found = [p for p in machine if p in text]
        assert not found, f"the page shows a machine path: {found}"
    # nothing cut or covered at either width, every panel photographed at both
    assert not seen.layout, "\n".join(seen.layout)
    assert set(seen.shots) == {f"{panel}_{w}" for panel in screenshots.PANELS for w in screenshots.WIDTHS}
    assert all(p.stat().st_size > 5_000 for p in seen.shots.values())
    hosts = {urlparse(u).hostname for u in seen.requests if urlparse(u).scheme in ("http", "https", "ws", "wss")}
    assert hosts <= {"127.0.0.1", "localhost"}, f"the page reached outside loopback: {hosts}"
    if os.environ.get("CAUSALVQ_KEEP_SHOTS"):  # look at the tiny checkpoint's pages: CAUSALVQ_KEEP_SHOTS=DIR
        for p in seen.shots.values():
            Path(os.environ["CAUSALVQ_KEEP_SHOTS"]).mkdir(parents=True, exist_ok=True)
            p.replace(Path(os.environ["CAUSALVQ_KEEP_SHOTS"]) / p.name)
