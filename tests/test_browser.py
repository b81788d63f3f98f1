"""The explorer in a real browser: Debian chromium driven by playwright (marked ``browser``).

One tour of the page over a tiny checkpoint (``scripts/screenshots.py``'s ``tour``, which also writes the committed
screenshots): a gallery example, a file that is not an image, two sliders (one step past a factor's end), the graph
under an action, retrieval, traversals at k = 8, factor maps of two actions, each panel photographed at 1,024 and
1,400 px into a temporary folder. It checks what a visitor sees: the bad upload keeps the previous image, the
extrapolated step is marked, the factor map follows the action, no machine path shows in the page, and the page
asked nothing outside loopback. A second visit switches the checkpoint from a shapes3d one to a dSprites one and
checks that the sliders, the factor menus and the gallery follow, and that the traversal grid's labels are
readable at both widths. Skipped, with the reason, where ``/usr/bin/chromium`` or playwright is missing.
"""

from __future__ import annotations

import dataclasses
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
    assert "this input's codes" in seen.graph_text  # the panel opens on the input's own graph
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


@pytest.mark.browser
def test_browser_tour_stops_at_the_apps_error(app_url: str, tmp_path: Path) -> None:
    """A tour whose plan the checkpoint refuses (the shape slider pushed 9 steps, past its reach of 3) ends on the
    app's own error message, not after waiting out its timeout for an answer that will not come."""
    examples = sorted((ROOT / "assets" / "examples").glob("*.png"))
    bad = tmp_path / "holiday.png"
    bad.write_text("not an image\n")
    plan = dataclasses.replace(screenshots.PLANS["shapes3d"], shape_steps=9)
    with pytest.raises(Exception, match="the app answered with an error: .*slider for shape goes from -3 to 3"):
        screenshots.tour(app_url, tmp_path / "shots", examples[1], bad, widths=(1024,), timeout_s=600, plan=plan)
    assert (tmp_path / "shots" / "failure.png").is_file()  # what the page showed


@pytest.fixture()
def two_checkpoints(tmp_path: Path):
    """(url, shapes3d factor names, dSprites factor names, dSprites gallery size): the explorer over a tiny
    shapes3d-factor checkpoint, with a tiny dSprites-factor (greyscale) one in its Checkpoint menu."""
    reason = screenshots.missing()
    if reason:
        pytest.skip(reason)
    import torch

    import app
    from causalvq.config import SHAPES3D_FACTORS, SHAPES3D_SIZES, ModelConfig
    from causalvq.data import DSprites
    from causalvq.explore.checkpoints import example_images
    from causalvq.explore.explorer import Explorer
    from causalvq.model import CausalVQ

    torch.manual_seed(0)
    sprites = tmp_path / "tiny-dsprites"
    CausalVQ(ModelConfig.tiny(factor_names=DSprites.factor_names, factor_sizes=DSprites.factor_sizes,
                              in_channels=1)).save_pretrained(sprites)
    model = CausalVQ(ModelConfig.tiny(factor_names=SHAPES3D_FACTORS, factor_sizes=SHAPES3D_SIZES))
    explorer = Explorer(model, source="tiny", calibration_samples=4, retrieval_steps=2, retrieval_pairs=2)
    demo = app.build_demo(explorer, choices=["tiny", str(sprites)])
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None,
                            **app.LAUNCH_OPTIONS)
    try:
        yield url, SHAPES3D_FACTORS, DSprites.factor_names, len(example_images(DSprites()))
    finally:
        demo.close()


def _factor_widgets(page, slots: int = 8) -> tuple[list[str], list[str], list[str]]:
    """The visible sliders' and factor menus' labels, and the gallery's picture addresses."""
    page.get_by_text("Sample by factor values").first.click()  # open the menus' accordion
    page.wait_for_timeout(300)
    sliders = [page.locator(f"#slider-{f}").inner_text().split("\n")[0] for f in range(slots)
               if page.locator(f"#slider-{f}").is_visible()]
    menus = [page.locator(f"#menu-{f} [data-testid=block-info]").first.inner_text() for f in range(slots)
             if page.locator(f"#menu-{f}").is_visible()]
    page.get_by_text("Sample by factor values").first.click()  # closed again
    gallery = [i.get_attribute("src") for i in page.locator("#examples-gallery img").all()]
    return sliders, menus, gallery


@pytest.mark.browser
def test_browser_checkpoint_switch_follows_the_dataset(two_checkpoints, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from causalvq.explore.drawing import LABEL_PX, traversal_label_px

    url, shapes_names, sprite_names, sprite_examples = two_checkpoints
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=screenshots.CHROMIUM, args=screenshots.ARGS)
        try:
            page = browser.new_page(viewport={"width": screenshots.WIDTHS[1], "height": screenshots.HEIGHT})
            page.set_default_timeout(180_000)
            page.goto(url, wait_until="load")
            _ = screenshots._wait_text(page, "#domain-notice", "Dataset sample: " + shapes_names[0])
            screenshots._open(page, "3. Atomic interventions")
            before = _factor_widgets(page)
            first_input = screenshots._src(page, "#input-image")
            assert before[0] == before[1] == list(shapes_names)

            screenshots._choose(page, "#checkpoint", "tiny-dsprites")
            screenshots._wait_text(page, "#domain-notice", "Dataset sample: " + sprite_names[0])  # its 1st example
            screenshots._idle(page)
            sliders, menus, gallery = _factor_widgets(page)
            assert sliders == list(sprite_names), "the sliders did not follow the checkpoint"
            assert menus == list(sprite_names), "the factor menus did not follow the checkpoint"
            assert len(gallery) == sprite_examples and not set(gallery) & set(before[2]), "the gallery stayed"
            assert screenshots._src(page, "#input-image") != first_input
            assert "tiny-dsprites" in page.inner_text("body") and str(tmp_path) not in page.inner_text("body")

            # the traversal grid at k = 8: its labels, shrunk with the picture, stay readable at both widths
            screenshots._open(page, "6. Traversals")
            screenshots._set_slider(page, "#traverse-steps", 8)
            page.locator("#traverse-button").click()
            screenshots._wait_src(page, "#traversal-image")
            for width in screenshots.WIDTHS:
                page.set_viewport_size({"width": width, "height": screenshots.HEIGHT})
                page.wait_for_timeout(500)
                shown, natural = page.eval_on_selector(
                    "#traversal-image img", "i => [i.getBoundingClientRect().width, i.naturalWidth]")
                on_screen = traversal_label_px(natural) * min(1.0, shown / natural)  # the labels' font, as shown
                assert on_screen >= LABEL_PX - 1, f"traversal labels {on_screen:.1f} px tall at {width} px"
                problems = page.evaluate(screenshots.LAYOUT_JS)
                assert not problems, f"at {width} px: {problems}"
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()


@pytest.mark.browser
def test_layout_rule_flags_clipped_text_and_spares_a_scrolled_table() -> None:
    """``LAYOUT_JS`` on a hand-built page: text that overflows its block is cut; rows a scrolling table body holds
    out of view are not, and neither is a block whose text fits."""
    reason = screenshots.missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    rows = "".join(f"<tr><td>row {i}</td></tr>" for i in range(40))
    html = f"""<html><body>
      <div class="block" id="clipped" style="width:200px;height:60px;overflow:hidden">
        <img src="data:," style="width:10px;height:10px"><p style="margin-top:80px">below the block</p></div>
      <div class="block" id="scrolled" style="width:200px;height:200px">
        <img src="data:," style="width:10px;height:10px">
        <div style="max-height:120px;overflow-y:auto"><table>{rows}</table></div></div>
      <div class="block" id="fits" style="width:200px;height:80px"><img src="data:," style="width:10px;height:10px">
        <p>inside</p></div>
    </body></html>"""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=screenshots.CHROMIUM, args=screenshots.ARGS)
        try:
            page = browser.new_page()
            page.set_content(html)
            problems = page.evaluate(screenshots.LAYOUT_JS)
        finally:
            browser.close()
    assert problems == ["cut: clipped (1 pictures or texts)"]
