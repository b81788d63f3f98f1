"""Screenshots of the explorer's panels, taken in a real browser: the pictures of docs/app.md's tour and the README.

    python scripts/screenshots.py                    # docs/figures/app_<panel>_<width>.png, assets/screenshot.png
    python scripts/screenshots.py --out /tmp/shots   # the panels somewhere else (the README picture is left alone)
    CAUSALVQ_CHECKPOINT=assets/causalvq-dsprites python scripts/screenshots.py --out docs/figures/dsprites

Launches ``app.demo`` in-process on 127.0.0.1 (the shipped checkpoint, or ``$CAUSALVQ_CHECKPOINT``), then ``tour``
drives every panel in Debian chromium through playwright: a gallery example, a bad upload, sliders with one step
past a factor's end, the graph under an action, retrieval of the slider move, traversals at k = 8, factor maps of two
actions. It photographs each panel at every width (1,024 and 1,400 px: the same page, the viewport resized).
``tests/test_browser.py`` runs the same tour over a tiny checkpoint and checks what it saw.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
WIDTHS = (1400, 1024)  # the page must work at both
HEIGHT = 900
# panel name → (tab to open, or None for the always-visible input panel; element photographed)
PANELS = {
    "input": (None, "#panel-input"),
    "interventions": ("3. Atomic interventions", "#panel-interventions"),
    "graph": ("4. Causal graph", "#panel-graph"),
    "retrieval": ("5. Action retrieval", "#panel-retrieval"),
    "traversals": ("6. Traversals", "#panel-traversals"),
    "maps": ("7. Factor maps", "#panel-maps"),
}


@dataclass(frozen=True)
class Plan:
    """What the tour asks of a checkpoint's factors: the slider pushed past its factor's end, the graph's action and
    the factor maps' two actions (the last is the panel's picture: a factor with a region)."""

    shape_slider: int
    shape_steps: int  # its slider's reach: the factor's number of values − 1
    graph_action: str
    map_actions: tuple[str, str]


PLANS = {"shapes3d": Plan(4, 3, "object_hue +", ("wall_hue -", "object_hue +")),
         "dsprites": Plan(0, 2, "pos_x +", ("scale +", "pos_x +"))}


@dataclass
class Seen:
    """What the tour observed: the assertions of tests/test_browser.py are made on these."""

    shots: dict[str, Path] = field(default_factory=dict)  # "<panel>_<width>" → PNG
    texts: list[str] = field(default_factory=list)  # the page's visible text and input values, after each panel
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    bad_upload_kept: bool = False  # the input image is the same after a bad upload
    bad_upload_warned: str = ""  # the warning shown for it
    slider_changed: bool = False  # the intervened image changed when a slider moved
    extrapolation: str = ""  # the result text after a step past a factor's end
    graph_text: str = ""
    do_text: str = ""  # what do() moved
    retrieval_text: str = ""
    traversal_shown: bool = False
    maps_changed: bool = False  # the factor-map plot differs between two actions
    maps_text: str = ""
    layout: list[str] = field(default_factory=list)  # "<panel> at <width> px: <what is cut or covered>"


def missing() -> str:
    """Why the browser cannot run here ("" when it can)."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    return ""


# Every wait below ends at once, raising with the message, when the app answers with an error (gradio's error
# toast, or a refused slider move's caption, which starts "Not moved:") instead of waiting out ``--timeout`` for an
# output that will not come.
FAIL_ON_ERROR = ("const bad = document.querySelector('.toast-body.error');"
                 " if (bad) throw new Error('the app answered with an error: '"
                 " + (bad.querySelector('.toast-text') || bad).innerText.replace(/\\s+/g, ' ').trim());"
                 " const moved = document.querySelector('#result-text')?.innerText.trim() || '';"
                 " if (moved.startsWith('Not moved:')) throw new Error('the app answered with an error: ' + moved);")


def _text(page: Any, selector: str) -> str:
    return page.locator(selector).first.inner_text()


def _src(page: Any, selector: str) -> str:
    img = page.locator(f"{selector} img")
    return (img.first.get_attribute("src") or "") if img.count() else ""


def _wait_text(page: Any, selector: str, contains: str = "", differs: str | None = None) -> str:
    """Wait until the element's text is non-empty (and holds ``contains``, and differs from ``differs``) and its event
    is done (the progress text of a pending output is text too)."""
    page.wait_for_function(
        "([s, c, d]) => { " + FAIL_ON_ERROR + " const e = document.querySelector(s), t = e?.innerText.trim() || '';"
        " return t && t.includes(c) && (d === null || t !== d)"
        " && !e.querySelector('[data-testid=status-tracker]:not(.hide)'); }", arg=[selector, contains, differs])
    return _text(page, selector)


def _wait_src(page: Any, selector: str, differs: str = "") -> str:
    page.wait_for_function(
        "([s, d]) => { " + FAIL_ON_ERROR + " const i = document.querySelector(s + ' img');"
        " return i && i.src && i.src !== d"
        " && i.complete && i.naturalWidth > 0; }", arg=[selector, differs])
    return _src(page, selector)


def _idle(page: Any) -> None:
    """Wait until no visible output shows gradio's progress (its status tracker loses the class ``hide``)."""
    page.wait_for_function("() => { " + FAIL_ON_ERROR + " return [...document.querySelectorAll("
                           "'[data-testid=status-tracker]:not(.hide)')].every(e => e.offsetParent === null); }")
    page.wait_for_timeout(300)


def _choose(page: Any, selector: str, option: str) -> None:
    """Pick ``option`` in the gradio dropdown ``selector``."""
    page.locator(f"{selector} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def _set_slider(page: Any, selector: str, value: int) -> None:
    box = page.locator(f"{selector} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _page_text(page: Any) -> str:
    values = page.eval_on_selector_all("input, textarea", "els => els.map(e => e.value).join('\\n')")
    return page.inner_text("body") + "\n" + values


def _open(page: Any, tab: str | None) -> None:
    if tab is not None:
        page.get_by_role("tab", name=tab, exact=True).click()
        page.wait_for_timeout(300)


# What is cut or covered on the visible part of the page, in blocks that show a picture or take a file: text or a
# picture reaching outside its block (gradio clips it there), an image label over its picture. Text that a scrolling
# box inside the block (a table's body) holds out of view is scrolled, not cut: it counts only if it reaches outside
# that box's scroll area.
LAYOUT_JS = """() => {
  const out = [], r = (e) => e.getBoundingClientRect(), shown = (e) => e.offsetParent !== null && r(e).height > 0;
  const name = (b) => b.id || b.querySelector('[data-testid=block-label]')?.innerText || b.className;
  const outside = (e, b) => e.width > 0 && (e.left < b.left - 1 || e.right > b.right + 1 || e.top < b.top - 1
                                            || e.bottom > b.bottom + 1);
  for (const b of document.querySelectorAll('.block')) {
    if (!shown(b) || !b.querySelector('img, input[type=file]')) continue;
    const box = r(b), texts = document.createTreeWalker(b, NodeFilter.SHOW_TEXT);
    let cut = [...b.querySelectorAll('img')].filter((i) => shown(i) && outside(r(i), box)).length;
    const scroller = (e) => {
      for (let a = e; a && a !== b; a = a.parentElement) {
        const y = getComputedStyle(a).overflowY;
        if ((y === 'auto' || y === 'scroll') && a.scrollHeight > a.clientHeight) return a;
      }
      return null;
    };
    for (let t = texts.nextNode(); t; t = texts.nextNode()) {
      if (!t.textContent.trim() || !shown(t.parentElement)) continue;
      const range = document.createRange();
      range.selectNodeContents(t);
      const s = scroller(t.parentElement), e = range.getBoundingClientRect();
      if (s) {
        const v = r(s), left = v.left - s.scrollLeft, top = v.top - s.scrollTop;
        const area = {left, top, right: left + s.scrollWidth, bottom: top + s.scrollHeight};
        if (outside(e, area) || outside(v, box)) cut += 1;
      } else if (outside(e, box)) cut += 1;
    }
    if (cut) out.push('cut: ' + name(b) + ' (' + cut + ' pictures or texts)');
    const label = b.querySelector('[data-testid=block-label]'), img = b.querySelector('img');
    if (label && img && shown(img) && !b.querySelector('.thumbnail-item')) {
      const l = r(label), i = r(img);
      if (l.bottom > i.top + 1 && l.right > i.left + 1 && l.left < i.right - 1) {
        out.push('label over its image: ' + name(b));
      }
    }
  }
  return out;
}"""


def _shoot(page: Any, seen: Seen, out: Path, panel: str, width: int) -> None:
    tab, selector = PANELS[panel]
    _open(page, tab)
    _idle(page)
    path = out / f"app_{panel}_{width}.png"
    page.locator(selector).first.screenshot(path=str(path), animations="disabled")
    seen.shots[f"{panel}_{width}"] = path
    seen.texts.append(_page_text(page))
    seen.layout += [f"{panel} at {width} px: {problem}" for problem in page.evaluate(LAYOUT_JS)]


def tour(url: str, out: Path, example: Path, bad_file: Path, widths: tuple[int, ...] = WIDTHS,
         full_page: Path | None = None, timeout_s: float = 60, plan: Plan = PLANS["shapes3d"]) -> Seen:
    """Drive every panel of the app at ``url`` once (at ``widths[0]``), photograph each panel at every width into
    ``out`` (``app_<panel>_<width>.png``); ``full_page``: also the whole page at ``widths[0]`` after the sliders
    moved. ``example`` is one of the gallery's images (its factors are in its name), ``bad_file`` is not an image;
    ``timeout_s`` bounds each wait for an answer of the app; ``plan`` names the sliders and actions (``PLANS``)."""
    from playwright.sync_api import sync_playwright

    from causalvq.explore.checkpoints import example_factors

    out.mkdir(parents=True, exist_ok=True)
    seen = Seen()
    examples = sorted(example.parent.glob("*.png"))
    factors = example_factors(example)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": widths[0], "height": HEIGHT})
            page.set_default_timeout(timeout_s * 1000)
            page.on("request", lambda r: seen.requests.append(r.url))
            page.goto(url, wait_until="load")
            page.wait_for_selector("#input-upload input[type=file]", state="attached")
            _wait_text(page, "#domain-notice", "Dataset sample")  # the page opens on the first example
            # 1. input: the chosen gallery example, then a file that is not an image
            first = _wait_src(page, "#input-image")
            page.locator("#examples-gallery button.thumbnail-item").nth(examples.index(example)).click()
            shown = _wait_src(page, "#input-image", differs=first) if examples.index(example) else first
            _wait_text(page, "#domain-notice", "Dataset sample")
            page.locator("#input-upload input[type=file]").set_input_files(str(bad_file))
            toast = page.locator(".toast-body").first
            toast.wait_for()
            seen.bad_upload_warned = toast.inner_text()
            page.wait_for_timeout(500)
            seen.bad_upload_kept = _src(page, "#input-image") == shown and "Dataset sample" in _text(
                page, "#domain-notice")
            for close in page.locator(".toast-close").all():
                close.click()
            # 3. sliders: one factor inside its range, the shape factor one step past its end
            _open(page, PANELS["interventions"][0])
            before = _wait_src(page, "#result-image")
            _set_slider(page, "#slider-0", 1 if factors[0] == 0 else -1)
            _wait_src(page, "#result-image", differs=before)
            seen.slider_changed = True
            shape, reach = plan.shape_slider, plan.shape_steps  # from a value ≥ 1, +reach (from 0, −reach) leaves
            _set_slider(page, f"#slider-{shape}", reach if factors[shape] else -reach)  # the factor's range
            seen.extrapolation = _wait_text(page, "#result-text", "Extrapolation")
            # 4. graph under an action
            _open(page, PANELS["graph"][0])
            _wait_text(page, "#graph-text")
            _choose(page, "#graph-action", plan.graph_action)
            seen.graph_text = _wait_text(page, "#graph-text", plan.graph_action.split()[0])
            _idle(page)  # the do() menu is filled when the tab opens
            page.locator("#do-button").click()
            seen.do_text = _wait_text(page, "#do-text", "do(")
            # 6. traversals at k = 8
            _open(page, PANELS["traversals"][0])
            _set_slider(page, "#traverse-steps", 8)
            page.locator("#traverse-button").click()
            _wait_src(page, "#traversal-image")
            seen.traversal_shown = True
            # 7. factor maps of two actions
            _open(page, PANELS["maps"][0])
            first_map = _wait_src(page, "#maps-plot")
            first_action, picture_action = plan.map_actions
            _choose(page, "#map-action", first_action)
            _wait_text(page, "#maps-text", first_action.split()[0])
            seen.maps_changed = _wait_src(page, "#maps-plot", differs=first_map) != first_map
            seen.maps_text = _text(page, "#maps-text")
            _choose(page, "#map-action", picture_action)  # the panel's picture: a factor with a region
            _wait_text(page, "#maps-text", picture_action.split()[0])
            _wait_src(page, "#maps-plot")
            # 5. retrieval of the slider move, last: without the checkpoint's retrieval.json its first answer waits
            # for the reject rule's calibration
            _open(page, PANELS["retrieval"][0])
            page.locator("#pair-button").click()
            _wait_src(page, "#retrieve-y")
            page.locator("#retrieve-button").click()
            seen.retrieval_text = _wait_text(page, "#retrieve-text")
            for width in widths:
                page.set_viewport_size({"width": width, "height": HEIGHT})
                page.wait_for_timeout(500)
                for panel in PANELS:
                    _shoot(page, seen, out, panel, width)
            if full_page is not None:
                page.set_viewport_size({"width": widths[0], "height": HEIGHT})
                _open(page, PANELS["interventions"][0])
                page.screenshot(path=str(full_page), full_page=True, animations="disabled")
        except Exception:
            page.screenshot(path=str(out / "failure.png"), full_page=True)  # what the page showed when it failed
            raise
        finally:
            browser.close()
    return seen


def shrink(path: Path, colors: int = 256) -> None:
    """Rewrite a screenshot as a palette PNG (a quarter of the bytes; the UI has few colours)."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=True)
    path.write_bytes(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures", help="where the panel PNGs go")
    parser.add_argument("--example", type=int, default=1, help="gallery example the tour loads")
    parser.add_argument("--readme", type=Path, default=ROOT / "assets" / "screenshot.png",
                        help="the README's full-page screenshot (written only with the default --out)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for one answer (default 600)")
    args = parser.parse_args()
    reason = missing()
    if reason:
        sys.exit(reason)
    for key, value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"),
                       ("HF_HUB_DISABLE_TELEMETRY", "1")):
        os.environ.setdefault(key, value)
    sys.path.insert(0, str(ROOT))
    import tempfile
    import threading

    import app
    from causalvq.explore.checkpoints import example_images

    handlers = app.demo.handlers
    dataset = handlers.explorers[handlers.default].dataset  # the checkpoint's: its gallery and the tour's plan
    if dataset is None or dataset.name not in PLANS:
        sys.exit(f"the tour knows the shipped datasets ({', '.join(PLANS)}); this checkpoint's is "
                 f"{getattr(dataset, 'name', None)!r}")
    examples = example_images(dataset)
    readme = args.readme if args.out == ROOT / "docs" / "figures" else None
    for ex in app.demo.handlers.explorers.values():  # the reject rule (retrieval.json, else measured) meanwhile
        threading.Thread(target=ex.retrieval_calibration, daemon=True).start()
    _, url, _ = app.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None,
                                **app.LAUNCH_OPTIONS)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bad = Path(tmp) / "not-an-image.png"
            bad.write_text("this is text, not an image\n")
            seen = tour(url, args.out, examples[args.example], bad, full_page=readme, timeout_s=args.timeout,
                        plan=PLANS[dataset.name])
    finally:
        app.demo.close()
    for path in [*seen.shots.values(), *([readme] if readme else [])]:
        shrink(path)
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
              f"({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
