"""The explorer in a real browser: Debian chromium driven by playwright (marked ``browser``).

Loads the page, uploads an image, moves a slider with the keyboard, checks that the intervened image changed,
that the page made no request outside loopback, and saves a screenshot. Skipped, with the reason, where
``/usr/bin/chromium`` or playwright is missing.

``python tests/test_browser.py --screenshot assets/screenshot.png`` writes the README screenshot from the real app
(the shipped checkpoint, or ``$CAUSALVQ_CHECKPOINT``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
ROOT = Path(__file__).resolve().parent.parent


def _missing() -> str:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    return ""


def _result_src(page) -> str:
    return page.locator("#result-image img").first.get_attribute("src") or ""


def drive(url: str, upload: Path, screenshot: Path, first_example: bool = True,
          showcase: int | None = None) -> dict:
    """Open ``url`` (which shows its first example when ``first_example``), upload ``upload``, move the first
    slider to 2, optionally open gallery example ``showcase`` and move two sliders, take a full-page screenshot;
    returns what was observed."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")
            page.wait_for_selector("#input-upload input[type=file]", state="attached", timeout=30_000)
            # the page opens on the first example: let that finish, so it cannot land after the upload
            page.wait_for_function(f"() => document.querySelector('#domain-notice')?.innerText.includes("
                                   f"{'Dataset sample' if first_example else 'Load an image'!r})", timeout=30_000)
            page.locator("#input-upload input[type=file]").set_input_files(str(upload))
            page.wait_for_function(  # an upload has no factors: its notice has no "Dataset sample"
                "() => { const t = document.querySelector('#domain-notice')?.innerText || '';"
                " return !t.includes('Dataset sample') && (t.includes('Reconstruction error') || t.includes('far'));"
                " }", timeout=60_000)
            page.wait_for_selector("#result-image img", timeout=30_000)
            before = _result_src(page)
            box = page.locator("#slider-0 input[type=number]")  # typing in the slider's box moves it
            box.fill("2")
            box.press("Enter")
            page.wait_for_function(
                "(b) => { const i = document.querySelector('#result-image img'); return i && i.src !== b; }",
                arg=before, timeout=30_000)
            after = _result_src(page)
            value = page.locator("#slider-0 input[type=number]").input_value()
            if showcase is not None:  # for the README: a gallery example (ground truth shown), two sliders moved
                page.locator("#examples-gallery button.thumbnail-item").nth(showcase).click()
                page.wait_for_function("() => document.querySelector('#domain-notice')?.innerText"
                                       ".includes('Dataset sample')", timeout=30_000)
                for slot, moved in ((2, "3"), (5, "-4")):
                    box = page.locator(f"#slider-{slot} input[type=number]")
                    box.fill(moved)
                    box.press("Enter")
                    page.wait_for_timeout(1500)
            page.wait_for_timeout(500)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"before": before, "after": after, "slider": value, "requests": requests}


@pytest.mark.browser
def test_browser_upload_slide_screenshot(app_url: str, tmp_path: Path) -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    examples = sorted((ROOT / "assets" / "examples").glob("*.png"))
    assert examples, "assets/examples/*.png are missing"
    shot = tmp_path / "explorer.png"
    seen = drive(app_url, examples[0], shot)
    assert seen["slider"] == "2"
    assert seen["after"] and seen["after"] != seen["before"]
    assert shot.stat().st_size > 10_000
    hosts = {urlparse(u).hostname for u in seen["requests"] if urlparse(u).scheme in ("http", "https", "ws", "wss")}
    assert hosts <= {"127.0.0.1", "localhost"}, f"the page reached outside loopback: {hosts}"


@pytest.fixture()
def app_url(tmp_path: Path):
    """The explorer over a tiny checkpoint, launched in-process on 127.0.0.1."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    import torch

    import app
    from causalvq.config import SHAPES3D_FACTORS, SHAPES3D_SIZES, ModelConfig
    from causalvq.explore.explorer import Explorer
    from causalvq.model import CausalVQ

    torch.manual_seed(0)
    model = CausalVQ(ModelConfig.tiny(factor_names=SHAPES3D_FACTORS, factor_sizes=SHAPES3D_SIZES))
    demo = app.build_demo(Explorer(model, source="tiny", calibration_samples=4), choices=["tiny"])
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None,
                            **app.LAUNCH_OPTIONS)
    try:
        yield url
    finally:
        demo.close()


def main() -> None:
    """Write a screenshot of the real app (shipped or ``$CAUSALVQ_CHECKPOINT`` checkpoint)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshot", type=Path, default=ROOT / "assets" / "screenshot.png")
    parser.add_argument("--example", type=int, default=1, help="gallery example shown in the screenshot")
    args = parser.parse_args()
    reason = _missing()
    if reason:
        sys.exit(reason)
    for key, value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"),
                       ("HF_HUB_DISABLE_TELEMETRY", "1")):
        os.environ.setdefault(key, value)
    sys.path.insert(0, str(ROOT))
    import app

    _, url, _ = app.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None,
                                **app.LAUNCH_OPTIONS)
    try:
        tmp = args.screenshot.with_suffix(".tmp.png")
        examples = sorted((ROOT / "assets" / "examples").glob("*.png"))
        seen = drive(url, examples[0], tmp, showcase=args.example)
        shutil.move(tmp, args.screenshot)
        print(f"wrote {args.screenshot} (slider at {seen['slider']}, {len(seen['requests'])} requests)")
    finally:
        app.demo.close()


if __name__ == "__main__":
    main()
