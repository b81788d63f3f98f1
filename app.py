"""CT-VAE explorer: a Gradio app over a CausalVQ checkpoint (the repo root is a Hugging Face Space).

This file only wires widgets to ``causalvq.explore``: the ``Explorer`` computes, ``drawing`` draws. The model loads
once, at import: ``$CAUSALVQ_CHECKPOINT`` (a folder or a Hub repo id), else the shipped
``assets/causalvq-shapes3d``; without either the page opens with a notice. See docs/app.md.

Run: ``python app.py`` (offline: ``GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1``).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import base64  # noqa: E402
import hashlib  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from functools import wraps  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
from gradio import processing_utils, route_utils  # noqa: E402
from gradio import utils as gradio_utils  # noqa: E402
from gradio.data_classes import ImageData  # noqa: E402

from causalvq.explore import drawing, edges  # noqa: E402
from causalvq.explore.checkpoints import (  # noqa: E402
    checkpoint_choices,
    display_name,
    example_factors,
    example_images,
    load_checkpoint_probe,
    load_model,
)
from causalvq.explore.explorer import Explorer  # noqa: E402
from causalvq.explore.images import InputError, display_image, read_image_file  # noqa: E402
from causalvq.explore.lru import LRU  # noqa: E402
from causalvq.explore.views import CodeChoices, DoView, LoadedInput  # noqa: E402

TITLE = "CT-VAE explorer: causal interventions on VQ codes"
MIN_SLOTS = 8  # factor sliders / menus laid out (extra ones hidden), so a checkpoint switch can relabel them
NO_ACTION = -1
GRAPH_OVER = ("all codes (average)", "this input")  # the graph panel opens on the second: the input's own graph
GRAPH_VIEWS = ("whole graph", "one node: parents and children")
DEFAULT_TOP_K = 3  # parents drawn per node when the page opens (the caption says how many edges exist)
# Page CSS: image labels sit above the picture (the picture shrinks to fit) instead of floating over its top-left
# corner, where they hid a code-grid cell and the traversal grid's column headers; the example gallery's thumbnails
# share the column's width (gradio's are 100 px each, which cut the 4th column) and its height follows them (it
# cut the 2nd row). Model-sized images (class ``pixels``: input, reconstruction, results, ground truth, the retrieval
# pair) come at their own 64 px and the browser enlarges them to the panel without blurring.
CSS = """
.pixels img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
.captioned [data-testid='block-label'].float { position: relative; top: 0; left: 0; margin-bottom: 4px; }
.captioned .image-container { height: calc(100% - 30px); }
#examples-gallery .grid-container.pt-6 { padding-top: 34px; }
#examples-gallery .grid-wrap { min-height: 0 !important; max-height: none !important; overflow-y: hidden; }
#examples-gallery .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: auto !important; }
#examples-gallery .gallery-item, #examples-gallery .thumbnail-item { width: 100%; height: auto; aspect-ratio: 1; }
"""
LAUNCH_OPTIONS: dict[str, Any] = {"max_file_size": "20mb", "show_error": True, "css": CSS}
# Slider moves answered at once on the queue (env CAUSALVQ_SLIDE_CONCURRENCY; off it, by gradio's worker threads):
# their transitions run as one batched call
# (Explorer's batcher), drawing and PNG encoding overlap; events that draw with matplotlib, which is not thread-safe,
# run one at a time. docs/speed.md has the measurements behind the default.
SLIDE_CONCURRENCY = max(1, int(os.environ.get("CAUSALVQ_SLIDE_CONCURRENCY", "8")))
# Slider moves skip gradio's queue (env CAUSALVQ_SLIDE_QUEUE=1 puts them back on it): one HTTP request an answer
# instead of a queued event, its stream and its status messages; SLIDE_CONCURRENCY then applies only on the queue.
SLIDE_QUEUE = os.environ.get("CAUSALVQ_SLIDE_QUEUE", "0") == "1"
REFUSED = "Not moved:"  # how a refused slider move's caption starts (Handlers.move)
FIGURES: dict[str, Any] = {"concurrency_id": "figures", "concurrency_limit": 1}  # matplotlib: one at a time
MAX_BATCH = max(1, int(os.environ.get("CAUSALVQ_MAX_BATCH", "16")))  # transitions in one batched call (1: none)
ENCODED_KEPT = 4096  # output images whose PNG file is remembered by their pixels (_save_pil_to_cache)
LOG = logging.getLogger("causalvq.app")
LEGEND = ("Cells: code index, coloured by code. **Thick outline**: the code changed. **Black corner**: the node was "
          "intervened on.")


_ENCODED: LRU[tuple, str] = LRU(ENCODED_KEPT)  # (pixels digest, mode, size, format, name, folder) → file


def _pixels_key(img: Any, *extra: Any) -> tuple | None:
    """A key for an image's encoding: a digest of its raw pixels, its mode and size, and ``extra``; ``None`` for an
    image with metadata or a palette, which the raw pixels do not describe (always encoded)."""
    if img.mode not in ("RGB", "RGBA", "L") or img.info:
        return None
    return (hashlib.blake2b(img.tobytes(), digest_size=20).digest(), img.mode, img.size, *extra)


def _save_pil_to_cache(img: Any, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """gradio's ``processing_utils.save_pil_to_cache`` with an atomic write (same path, same bytes), that
    encodes an image only once while its file is there.

    gradio names a cached output image by the hash of its bytes and rewrites that file in place, so when two
    requests produce the same image at once (every page load shows the same example; two visitors move the same
    slider) one client can download the file while the other request has just truncated it: the download ends
    with 0 bytes (``RemoteProtocolError`` in gradio_client, a broken image in the browser; 2-4 of 20 concurrent
    uploads of one example in bench/bench_load.py's setup). Written to a temporary file and renamed instead, a
    reader always gets a whole file.

    An image is encoded once: the file written for the same pixels (a digest of the raw pixels, mode and size) is
    answered again while it exists, so the ground truth of a slider position, a code grid or a result seen before
    costs a hash instead of a PNG encoding (images with metadata or a palette are always encoded).
    """
    key = _pixels_key(img, format, name, str(cache_dir))
    if key is not None:
        known = _ENCODED.get(key)
        if known is not None and os.path.exists(known):
            return known
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    path = (folder / f"{name}.{format}").resolve()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    for attempt in range(2):  # the cache sweep may remove the folder, emptied an hour after its last image
        folder.mkdir(exist_ok=True, parents=True)
        try:
            tmp.write_bytes(data)
            break
        except FileNotFoundError:
            if attempt:
                raise
    os.replace(tmp, path)
    if key is not None:
        _ENCODED.put(key, str(path))
    return str(path)


if hasattr(processing_utils, "save_pil_to_cache"):  # gradio 6.31; an upgrade that drops it keeps its own
    processing_utils.save_pil_to_cache = _save_pil_to_cache

INLINE_IMAGES = os.environ.get("CAUSALVQ_INLINE_IMAGES", "1") != "0"  # the slider event's images in its answer
# (pixels digest, mode, size, format) → data URL; the slider's PNGs average 8 KB (bench_load.py's cache: 23.8 MB in
# 2,966 files), so the 4,096 kept hold about 45 MB of base64 text at most
_INLINED: LRU[tuple, str] = LRU(ENCODED_KEPT)


class InlineImage(gr.Image):
    """An output ``gr.Image`` whose picture travels inside the event's answer, as a PNG data URL, instead of as a file
    in gradio's cache that the page then fetches.

    For the slider event's small images (the model's 64 px, a code grid) that saves, per image, the cache file's
    write, gradio's path checks and a second HTTP request with its middleware: about a third of the app's running
    time under load in docs/speed.md's profile. The page shows the same pixels and the download button
    saves the same PNG; an API client gets ``url`` as ``data:image/png;base64,...`` and ``path`` ``None``.
    Pixels seen before reuse their encoding. ``CAUSALVQ_INLINE_IMAGES=0`` sends files, as ``gr.Image`` does.
    """

    def get_block_name(self) -> str:
        return "image"  # the page draws it with gradio's own image component

    def postprocess(self, value: Any) -> Any:
        if value is None or not INLINE_IMAGES or isinstance(value, (str, Path)):
            return super().postprocess(value)
        img = value if isinstance(value, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(value))
        key = _pixels_key(img, self.format)
        url = None if key is None else _INLINED.get(key)
        if url is None:
            data = processing_utils.encode_pil_to_bytes(img, self.format)
            url = f"data:image/{self.format};base64,{base64.b64encode(data).decode('ascii')}"
            if key is not None:
                _INLINED.put(key, url)
        return ImageData(url=url, orig_name=f"image.{self.format}", mime_type=f"image/{self.format}")


_gradio_delete_files = getattr(route_utils, "delete_files_created_by_app", None)


def _delete_files_created_by_app(blocks: gr.Blocks, age: int | None) -> None:
    """gradio's ``delete_cache`` pass, then the folders it emptied.

    gradio writes each cached file into a folder of its own (named by the file's hash; a traversal's by a uuid) and
    deletes only the file, so every output an hour old left an empty folder behind for good: thousands an hour
    under load (bench/bench_load.py counts them). Only folders that held a deleted file and are now empty go.
    """
    def folders() -> set[str]:
        return {os.path.dirname(f) for files in blocks.temp_file_sets for f in files}

    before = folders()
    _gradio_delete_files(blocks, age)
    root = os.path.realpath(gradio_utils.get_upload_folder())
    for folder in before - folders():
        if os.path.realpath(folder) != root:
            try:
                os.rmdir(folder)  # fails, and is skipped, when the folder is not empty
            except OSError:
                pass


if _gradio_delete_files is not None:  # gradio 6.31 calls it by this name on the delete_cache schedule
    route_utils.delete_files_created_by_app = _delete_files_created_by_app


def _cache_folder() -> Path:
    """A new folder in gradio's cache (``GRADIO_TEMP_DIR``) for the files an event returns: gradio serves them from
    there and ``delete_cache`` deletes them with its own (written anywhere else, they would stay for good)."""
    return Path(gradio_utils.get_upload_folder()) / uuid.uuid4().hex


@dataclass(frozen=True)
class Session:
    """Per-browser-session state (``gr.State``): which checkpoint, and the encoded current input."""

    checkpoint: str  # Explorer.source
    input: LoadedInput | None = None


def _friendly(fn: Callable) -> Callable:
    """Show bad input as a ``gr.Error`` with the library's sentence instead of a stack trace."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputError as err:
            raise gr.Error(str(err)) from err

    return run


_example_factors = example_factors  # the factors in an example's file name (tests and scripts call it here)


class Handlers:
    """The app's event handlers: plain methods (tests call them directly), one per event."""

    def __init__(self, explorer: Explorer | None, slots: int = MIN_SLOTS, choices: Sequence[str] = ()) -> None:
        self.sources = {display_name(c): c for c in choices}  # dropdown name → folder or repo id
        if explorer is not None:
            self.sources.setdefault(display_name(explorer.source), explorer.source)
        self.explorers: dict[str, Explorer] = {explorer.source: explorer} if explorer is not None else {}
        self.default = explorer.source if explorer is not None else ""
        self.slots = slots
        self._lock = threading.Lock()

    @property
    def examples(self) -> list[str]:
        """The gallery of the checkpoint a new session opens on."""
        ex = self.explorers.get(self.default)
        return self.examples_of(ex) if ex is not None else []

    @staticmethod
    def examples_of(ex: Explorer) -> list[str]:
        """The gallery of a checkpoint: the shipped examples of its dataset (``example_images``)."""
        return [str(p) for p in example_images(ex.dataset)]

    # --- helpers ---
    def new_session(self) -> Session:
        return Session(checkpoint=self.default)

    def explorer(self, session: Session) -> Explorer:
        ex = self.explorers.get(session.checkpoint)
        if ex is None:
            raise gr.Error("No model is loaded: set CAUSALVQ_CHECKPOINT to a checkpoint folder or Hub repo id "
                           "and restart the app.")
        return ex

    def _input(self, session: Session) -> LoadedInput:
        if session.input is None:
            raise gr.Error("Load an image first: upload one, sample one, or pick an example.")
        return session.input

    @staticmethod
    def _steps(ex: Explorer, sliders: Sequence[float | None]) -> Sequence[float | None]:
        """The sliders of the checkpoint's factors (the slots past them are hidden); the Explorer checks them."""
        return sliders[:ex.config.num_factors]

    def _grid(self, ex: Explorer, codes: Any, changed: Any = None, marked: Any = None) -> np.ndarray:
        return drawing.draw_code_grid(codes, ex.config.codebook_size, changed, marked)

    def _loaded(self, session: Session, ex: Explorer, inp: LoadedInput) -> tuple:
        """Outputs of every input-loading event (see ``build_demo``'s ``load_outputs``)."""
        session = replace(session, input=inp)
        notice = inp.notice or f"Reconstruction error {inp.error:.4f} (per-pixel MSE)."
        if inp.factors is not None:
            parts = [f"{n} = {lab}" for n, lab in zip(ex.factor_names, self._factor_labels(ex, inp.factors))]
            notice = f"Dataset sample: {', '.join(parts)}. {notice}"
        notice += " " + estimate_text(ex, inp)
        recon = display_image(inp.reconstruction)
        truth, truth_text = self._truth(ex, inp, [0] * ex.config.num_factors)
        return (session, display_image(inp.image), recon, self._grid(ex, inp.codes), notice,
                *([0] * self.slots), recon, self._grid(ex, inp.codes), truth, truth_text, "")

    @staticmethod
    def _factor_labels(ex: Explorer, factors: Sequence[int]) -> list[str]:
        return [ex.factor_value_labels(f)[v] for f, v in enumerate(factors)]

    # --- 1. input ---
    @_friendly
    def load_upload(self, file: str | None, session: Session) -> tuple:
        """Upload: any image file → model input, reconstruction, codes; sliders back to 0."""
        if not file:
            raise gr.Error("Choose an image file to upload.")
        ex = self.explorer(session)
        return self._loaded(session, ex, ex.load_image(file))

    def upload_in_page(self, file: str | None, session: Session) -> tuple:
        """The page's upload: as ``load_upload``, then the upload box cleared; a bad file changes nothing else and
        shows one message (a warning, logged in one line) instead of failing every output."""
        try:
            out = self.load_upload(file, session)
        except gr.Error as err:
            LOG.warning("upload refused: %s", err.message)
            gr.Warning(err.message)
            return (*[gr.skip()] * (5 + self.slots + 5), None)
        return (*out, None)

    @_friendly
    def sample_random(self, session: Session) -> tuple:
        """A random dataset image; the factor menus follow it."""
        ex = self.explorer(session)
        inp = ex.sample()
        return (*self._loaded(session, ex, inp), *self._menu_values(inp.factors))

    @_friendly
    def sample_factors(self, session: Session, *values: Any) -> tuple:
        """The dataset image at the factor values chosen in the menus."""
        ex = self.explorer(session)
        F = ex.config.num_factors
        if ex.dataset is None:
            ex.sample()  # raises InputError: why sampling is disabled
        if any(v is None for v in values[:F]):
            raise gr.Error("Choose a value for every factor.")
        inp = ex.sample([int(v) for v in values[:F]])
        return self._loaded(session, ex, inp)

    @_friendly
    def load_example(self, session: Session, index: int) -> tuple:
        """Example ``index`` of the session's checkpoint's gallery (factors read from its file name)."""
        ex = self.explorer(session)
        examples = self.examples_of(ex)
        if not 0 <= index < len(examples):
            raise gr.Error(f"There is no example number {index}.")
        path = examples[index]
        factors = example_factors(path)
        if factors is not None and ex.dataset is not None and len(factors) == ex.config.num_factors:
            inp = ex.load_image(path, factors=factors)
        else:
            inp = ex.load_image(path)
        return self._loaded(session, ex, inp)

    def select_example(self, session: Session, evt: gr.SelectData) -> tuple:
        """Gallery click."""
        return self.load_example(session, int(evt.index))

    def first_example(self, session: Session) -> tuple:
        """Page load and checkpoint switch: the checkpoint's first example (without examples, a dataset sample), so
        no panel starts empty; nothing happens without either."""
        ex = self.explorers.get(session.checkpoint)
        if ex is not None and self.examples_of(ex):
            return self.load_example(session, 0)
        if ex is not None and ex.dataset is not None:
            return self._loaded(session, ex, ex.sample(seed=0))
        return (session, *([gr.skip()] * (4 + self.slots + 5)))

    def _menu_values(self, factors: Sequence[int] | None) -> list:
        values = list(factors or [])
        return values + [gr.skip()] * (self.slots - len(values))

    # --- 3. atomic interventions ---
    @_friendly
    def slide(self, session: Session, *sliders: float) -> tuple:
        """A slider moved: compose all sliders (factor order) on the cached codes, decode, show changed nodes, and
        say which sliders move a factor past its end (extrapolation). Without an input yet, nothing happens."""
        if session.input is None:
            return gr.skip(), gr.skip(), gr.skip()
        ex, inp = self.explorer(session), session.input
        steps = self._steps(ex, sliders)
        r = ex.apply_sliders(inp.codes, steps, inp.start)
        return (display_image(r.image), self._grid(ex, r.codes, r.changed, r.intervened),
                extrapolation_text(ex, inp, ex.slider_steps(steps), r.extrapolated))

    def move(self, session: Session, *sliders: float) -> tuple:
        """The page's slider event (``/slide``): ``slide``'s three outputs, then ``ground_truth``'s two, in one
        event, so a move costs one answer instead of two.

        The event skips gradio's queue (``SLIDE_QUEUE``), and gradio's page shows no message for an error of such
        an event, so a refused move (a slider value typed past its reach) answers with its sentence in the result's
        caption, starting ``Not moved:``, keeps the pictures as they were, and logs one line."""
        try:
            return (*self.slide(session, *sliders), *self.ground_truth(session, *sliders))
        except gr.Error as err:
            LOG.warning("slider move refused: %s", err.message)
            return gr.skip(), gr.skip(), f"**{REFUSED}** {err.message}", gr.skip(), gr.skip()

    def _truth(self, ex: Explorer, inp: LoadedInput, steps: Sequence[float | None]) -> tuple[Any, str]:
        """The ground-truth image and its caption: true values for dataset samples, the probe's estimate for
        other inputs (labelled as estimated), else why there is none."""
        if ex.dataset is None:
            return None, ("No ground truth: no procedural dataset renders this checkpoint's factors and its data "
                          "file is not here (the notice at the top says how to give it).")
        if inp.start is None:
            return None, ("No estimate is available: this checkpoint has no factor probe, so an upload has no ground "
                          "truth (`python -m train probe --checkpoint DIR` fits one).")
        ex.slider_steps(steps)  # a bad slider value is an error (InputError), not a missing ground truth
        try:
            gt = ex.ground_truth(inp.start, steps, estimated=inp.estimated)
        except InputError as err:  # a data file without an image at the moved values
            return None, str(err)
        values = ", ".join(f"{n} = {lab}" for n, lab in zip(ex.factor_names, self._factor_labels(ex, gt.factors)))
        text = (f"**Estimated** ground truth, rendered from the probe's estimate of this input's factors: {values}"
                if gt.estimated else f"Ground truth: {values}")
        if gt.clipped:
            text += " (a slider goes past the end of its factor: the ground truth stops at the end)"
        return display_image(gt.image), text

    @_friendly
    def ground_truth(self, session: Session, *sliders: float) -> tuple:
        """The dataset image with the factors really moved: from the true values of a dataset sample, from the
        probe's estimate for an upload (labelled), else a sentence saying why there is none."""
        if session.input is None:
            return gr.skip(), gr.skip()
        ex = self.explorer(session)
        return self._truth(ex, session.input, self._steps(ex, sliders))

    @_friendly
    def reset(self, session: Session) -> tuple:
        """Sliders back to 0: the reconstruction."""
        ex, inp = self.explorer(session), self._input(session)
        truth, text = self._truth(ex, inp, [0] * ex.config.num_factors)
        return (*([0] * self.slots), display_image(inp.reconstruction), self._grid(ex, inp.codes), truth, text, "")

    # --- 4. causal graph ---
    def _graph_view(self, session: Session, action: int | None, over: str) -> tuple:
        """(explorer, action or None, the input's codes or None, ``Explorer.graph``'s view) for a graph event."""
        ex = self.explorer(session)
        act = None if action is None or int(action) == NO_ACTION else int(action)
        codes = session.input.codes if session.input is not None else None
        if over == GRAPH_OVER[1] and codes is None:
            raise gr.Error("Load an image first to see the graph of this input, or choose 'all codes'.")
        return ex, act, codes, ex.graph(act, codes if over == GRAPH_OVER[1] else None)

    @_friendly
    def graph(self, session: Session, action: int | None, threshold: float, over: str, view: str = GRAPH_VIEWS[0],
              top_k: float = DEFAULT_TOP_K, node: int | None = 0) -> tuple:
        """Heat map, node–link drawing, caption and ego table of the learned graph for no action or one action
        (at most one model call: ``Explorer.graph`` keeps the graphs it computed)."""
        ex, act, codes, g = self._graph_view(session, action, over)
        if node is None:
            raise gr.Error("Choose a node.")
        if not 0 <= int(node) < ex.config.num_nodes:
            raise gr.Error(f"Choose a node between 0 and {ex.config.num_nodes - 1}, got {node}.")
        t, k, node = float(threshold), int(round(float(top_k or 0))), int(node)
        adj, marked = g.adjacency, g.intervened
        name = "no action" if act is None else f"action “{ex.action_names[act]}”"
        ego = edges.select_edges(adj, t, k, node, g.rewired)
        shown = ego if view == GRAPH_VIEWS[1] else edges.select_edges(adj, t, k, None, g.rewired)
        heat = drawing.graph_heatmap(adj, ex.config, marked, title=f"adjacency, {name}")
        net = drawing.graph_network(shown, ex.config, marked, codes if over == GRAPH_OVER[1] else None)
        off = ~np.eye(len(adj), dtype=bool)
        where = ("edge probabilities averaged over the code grids where every node takes code j, for each j"
                 if over == GRAPH_OVER[0] else "edge probabilities of this input's codes")
        text = (f"**{name}** ({where}). {edges.describe_selection(shown)} Mean edge probability between distinct "
                f"nodes: {adj[off].mean():.3f}.")
        if view == GRAPH_VIEWS[0]:
            text += (f" Table: node {node}'s {int(ego.parents.sum())} parent(s) and {int(ego.children.sum())} "
                     "child(ren) by the same rule.")
        if marked is not None:
            text += f" Intervened nodes (red): {_node_list(marked)}."
            if ex.config.intervention_context:  # B28: what they read besides their in-edges is not drawn here
                side = 2 * ex.config.intervention_context + 1
                text += (f" Each intervened node also reads the codes of the {side}×{side} cells around it through "
                         "a small network beside the graph (B28), which this drawing does not show: its new code "
                         "can depend on nodes that send it no edge.")
        where_of = lambda i: drawing.node_label(i, ex.config).split("(", 1)[1].rstrip(")")  # noqa: E731
        table = {"headers": list(edges.EGO_COLUMNS), "data": edges.ego_rows(ego, where_of)}
        return heat, net, text, table

    @_friendly
    def graph_focus(self, session: Session, action: int | None, threshold: float, over: str,
                    view: str = GRAPH_VIEWS[0], top_k: float = DEFAULT_TOP_K, node: int | None = 0) -> tuple:
        """The graph panel opened or its action or source changed: ``graph``'s outputs on the node the ego table
        and do() should show (``edges.focus_node``: the picked node while it is intervened on and has an edge,
        else the intervened node with the most edges), the node picker moved there, and its do() codes."""
        g = self._graph_view(session, action, over)[3]  # kept by the explorer: ``graph`` below reuses it
        current = int(node) if node is not None else 0
        focus = edges.focus_node(g.adjacency, float(threshold), current, g.intervened)
        return (*self.graph(session, action, threshold, over, view, top_k, focus), gr.update(value=focus),
                self.code_choices(session, focus))

    @_friendly
    def graph_node(self, session: Session, action: int | None, threshold: float, over: str,
                   view: str = GRAPH_VIEWS[0], top_k: float = DEFAULT_TOP_K, node: int | None = 0) -> tuple:
        """A node was picked: ``graph``'s outputs on it and its do() codes, in one event."""
        return (*self.graph(session, action, threshold, over, view, top_k, node), self.code_choices(session, node))

    @_friendly
    def code_choices(self, session: Session, node: int | None) -> dict:
        """The do() codebook entries for ``node``: the codes it takes in the dataset, most frequent first."""
        if node is None:
            return gr.skip()
        c = self.explorer(session).code_choices(int(node))
        return gr.update(choices=code_labels(c), value=c.codes[0])

    @_friendly
    def do(self, session: Session, node: int | None, code: float | None) -> tuple:
        """Hard intervention do(node = code), then propagation through the learned graph: the image, the codes,
        the edges that carried the change and a sentence saying what moved, or why nothing did."""
        ex, inp = self.explorer(session), self._input(session)
        if node is None:
            raise gr.Error("Choose a node.")
        if code is None:
            raise gr.Error("Choose a codebook entry.")
        v = ex.do(inp.codes, int(node), int(round(float(code))))
        marked = np.zeros(ex.config.num_nodes, bool)
        marked[v.node] = True
        carried = edges.select_edges(v.edge_probs, 0.5, within=v.carriers)
        fig = drawing.graph_network(carried, ex.config, marked, v.codes, highlighted=v.propagated,
                                    title=f"{len(carried)} edge(s) that carried the change (probability > 0.5)")
        return (display_image(v.image), self._grid(ex, v.codes, v.propagated, marked), fig,
                do_explanation(v, ex.config))

    # --- 5. action retrieval ---
    @_friendly
    def pair_from_sliders(self, session: Session, *sliders: float) -> tuple[np.ndarray, np.ndarray]:
        """x = the current input, y = x transformed by the sliders."""
        ex, inp = self.explorer(session), self._input(session)
        r = ex.apply_sliders(inp.codes, self._steps(ex, sliders))
        return display_image(inp.image), display_image(r.image)

    @_friendly
    def upload_pair_image(self, file: str | None, session: Session) -> np.ndarray:
        """One image of the retrieval pair, uploaded: shown as the model sees it."""
        if not file:
            raise gr.Error("Choose an image file to upload.")
        return display_image(self.explorer(session).load_image(file).image)

    @_friendly
    def retrieve(self, session: Session, x: np.ndarray | None, y: np.ndarray | None) -> tuple:
        """Rank every action by p(a | x, y); show the intervened nodes of the best one."""
        if x is None or y is None:
            raise gr.Error("Both x and y are needed: upload two images, or use the input and its slider result.")
        ex = self.explorer(session)
        v = ex.retrieve(x, y)
        return drawing.retrieval_figure(v), self._grid(ex, v.codes_x, v.changed, v.intervened), retrieval_text(ex, v)

    @_friendly
    def retrieve_files(self, session: Session, x: dict | None, y: dict | None) -> tuple:
        """The retrieve event: x and y as the files gradio received (``preprocess=False``: the API lets a caller
        upload them), read by ``read_image_file`` — pixel limit checked from the header, a sentence for a file
        that is not an image — instead of gradio's decoder, which decodes any size in full."""
        def read(file: dict | None) -> np.ndarray | None:
            if file is None:
                return None
            if not file.get("path"):
                raise gr.Error("Send x and y as uploaded image files.")
            return read_image_file(file["path"])

        return self.retrieve(session, read(x), read(y))

    # --- 6. traversals ---
    @_friendly
    def traverse(self, session: Session, steps: float) -> tuple[np.ndarray, str, str]:
        """Per factor, −k..+k applications of its actions: a grid image, its PNG and an animated GIF."""
        ex, inp = self.explorer(session), self._input(session)
        t = ex.traverse(inp.codes, int(round(float(steps))), inp.start, inp.estimated)
        png, gif = drawing.save_traversal(t, _cache_folder())
        return drawing.traversal_grid(t), str(png), str(gif)

    # --- 7. factor maps ---
    @_friendly
    def factor_maps(self, session: Session, action: int | None) -> tuple:
        """Where one action acts: its factor maps over dataset pairs, and its mask and changes on this input."""
        ex, inp = self.explorer(session), self._input(session)
        if action is None:
            raise gr.Error("Choose an action.")
        v = ex.action_map(inp.codes, int(action))
        name = ex.action_names[v.action]
        overlay = drawing.overlay_nodes(inp.image, ex.config, v.mask, v.changed)
        here = (f"On this input, “{name}” intervenes on {int(v.mask.sum())} of {v.mask.size} nodes (red) and "
                f"changes {int(v.changed.sum())} code(s) (yellow outline).")
        if v.mask_share is None:
            return None, overlay, (f"No procedural dataset matches this checkpoint, so there are no dataset pairs "
                                   f"to average: the maps cannot be drawn. {here}")
        fig = drawing.factor_map_figure(v, ex.config, title=f"“{name}” over {v.pairs} test pairs")
        text = (f"Over {v.pairs} one-step test pairs of “{name}”, the top maps show how often each node is "
                f"intervened on and the bottom maps how often the step really changes it (cyan dots: this input's "
                f"intervened nodes). A factor that lives in one region lights up there. {here}")
        return fig, overlay, text

    # --- checkpoint ---
    @_friendly
    def change_checkpoint(self, choice: str | None, session: Session) -> tuple:
        """Open another checkpoint (loaded once, then cached) and relabel the factor widgets."""
        if not choice:
            raise gr.Error("Choose a checkpoint.")
        choice = self.sources.get(choice, choice)
        with self._lock:
            if choice not in self.explorers:
                loaded = load_model(choice, fallback=None)
                if loaded.model is None:
                    raise gr.Error(f"Could not load checkpoint {display_name(choice)} ({loaded.error}). Keeping "
                                   "the current checkpoint.")
                if loaded.model.config.num_factors > self.slots:
                    raise gr.Error(f"This checkpoint has {loaded.model.config.num_factors} factors; the app was "
                                   f"laid out for {self.slots}. Start it with {display_name(choice)} in "
                                   "CAUSALVQ_CHECKPOINT.")
                probe, probe_notice = load_checkpoint_probe(choice, loaded.model)
                self.explorers[choice] = Explorer(loaded.model, source=choice, probe=probe, max_batch=MAX_BATCH,
                                                  notice=" ".join(s for s in (loaded.notice, probe_notice) if s))
        ex = self.explorers[choice]
        return (Session(checkpoint=choice), describe(ex), *self.model_updates(ex))

    def model_updates(self, ex: Explorer) -> list:
        """Updates of the widgets that depend on the checkpoint (the gallery included), and every panel cleared of
        the previous checkpoint's answers (order: ``build_demo``'s ``model_outputs``)."""
        specs = widget_specs(ex, self.slots)
        inputs = [None, None, None, "Load an image.", None, None, None, "", ""]
        graph, do, retrieval = [None, None, "", None], [None, None, None, ""], [None, None, None, None, ""]
        traversal, maps = [None, None, None], [None, None, ""]
        panels = [*graph, *do, *retrieval, *traversal, *maps]
        return [*(gr.update(**kw) for kw in specs.flat()), *inputs, gallery_update(self.examples_of(ex)), *panels]


def gallery_update(examples: Sequence[str]) -> dict:
    """The gallery showing ``examples`` (hidden when there are none: no shipped examples of this dataset)."""
    return gr.update(value=list(examples) or None, visible=bool(examples))


def estimate_text(ex: Explorer, inp: LoadedInput) -> str:
    """The probe's estimate of the input's factors (with the true values beside it for a dataset sample), or why
    there is none."""
    if inp.estimate is None:
        return ("No factor estimate is available: this checkpoint has no factor probe." if inp.factors is None
                else "")
    est = inp.estimate
    parts = []
    for f, name in enumerate(ex.factor_names):
        v = int(est.values[0, f])
        part = f"{name} = {ex.factor_value_labels(f)[v]} (p {float(est.confidence[0, f]):.2f})"
        if inp.factors is not None and inp.factors[f] != v:
            part += f" ✗ true {inp.factors[f]}"
        parts.append(part)
    return f"Probe estimate: {', '.join(parts)}."


def extrapolation_text(ex: Explorer, inp: LoadedInput, steps: Sequence[int], extrapolated: np.ndarray | None) -> str:
    """Which sliders move a factor past its end (the result is then an extrapolation), or why that is unknown."""
    if extrapolated is None:
        return ("No estimate is available (this checkpoint has no factor probe): it is unknown which moves leave a "
                "factor's range." if any(steps) else "")
    where = "estimated" if inp.estimated else "true"
    start = inp.start
    bad = [f"{ex.factor_names[f]} {steps[f]:+d} from {start[f]} (range 0..{ex.config.factor_sizes[f] - 1})"
           for f in np.flatnonzero(extrapolated)]
    if not bad:
        return f"Every move stays inside its factor's range (from the input's {where} values)." if any(steps) else ""
    return (f"⚠️ **Extrapolation**: {'; '.join(bad)} goes past the factor's end from the input's {where} values. "
            "The result shows what the model does there, not a valid value of the factor.")


def retrieval_text(ex: Explorer, view: Any) -> str:
    """The retrieval answer: (action, k), "no move", or why no single-factor move explains the pair, with the rule
    and where its calibration comes from."""
    name, k, d = ex.action_names[view.action], view.steps, float(view.distances[view.action, view.steps - 1])
    K = view.distances.shape[1]
    move = f"**{name}** × {k}"
    changed = f"{int(view.changed.sum())} code(s) differ between x and y."
    if view.verdict == "no move":
        return ("Answer: **no move**: x and y have the same codes, so no action changed anything between them "
                f"(the closest move would be {move}, distance {d:.3f}).")
    cal = ex.retrieval_calibration()
    if view.verdict == "unjudged" or cal is None:
        return (f"Closest single-factor move (1..{K} steps): {move}, distance {d:.3f}. No dataset matches this "
                f"checkpoint and it has no retrieval.json, so there is no calibrated threshold: this cannot say no. "
                f"{changed}")
    rule = (f"Each check passes {cal.quantile:.1%} of true moves on {cal.rates.num_images} images of the "
            f"{cal.split} split" + (f". {ex.retrieval_notice}" if ex.retrieval_notice else " (retrieval.json)."))
    rival = "" if view.rival is None else ex.action_names[view.rival]
    if view.verdict == "move":
        return (f"Answer: {move} (distance {d:.3f} ≤ {view.threshold:.3f}, the threshold of {k}-step moves; one more "
                f"step of {rival} does not bring y closer: {view.rival_distance:.3f}); it intervenes on "
                f"{int(view.intervened.sum())} node(s). {changed} {rule}")
    if view.verdict == "two factors":
        return (f"Answer: **no single-factor move explains this pair: two factors seem to have changed.** The "
                f"closest, {name} × {k} (distance {d:.3f} ≤ {view.threshold:.3f}), followed by one step of **{rival}** "
                f"brings y closer ({view.rival_distance:.3f}, better by {d - view.rival_distance:.3f} > the margin "
                f"{view.margin:.3f}). {changed} {rule}")
    return (f"Answer: **no single-factor move of 1..{K} steps explains this pair.** The closest, {name} × {k}, has "
            f"distance {d:.3f}, above {view.threshold:.3f}, the threshold of {k}-step moves. {changed} {rule}")


def _node_list(nodes: np.ndarray) -> str:
    """``"3 of 64: 4, 9, 12"``; every node of the graph as ``"all 64"``."""
    idx = np.flatnonzero(nodes)
    if len(idx) == len(nodes):
        return f"all {len(nodes)}"
    return f"{len(idx)} of {len(nodes)}" + (f": {', '.join(map(str, idx))}" if len(idx) else "")


def code_labels(choices: CodeChoices) -> list[tuple[str, int]]:
    """The do() dropdown's entries: each code with how often the node takes it in the dataset."""
    if not choices.images:
        return [(f"{c}", c) for c in choices.codes]
    return [(f"{c}: in {n} of {choices.images} dataset images" if n else
             f"{c}: never here in {choices.images} dataset images", c) for c, n in zip(choices.codes, choices.counts)]


def do_explanation(view: DoView, config: Any) -> str:
    """What do() moved, and the edges that carried it; when nothing moved, why, in one sentence."""
    i = view.node
    head = f"do({drawing.node_label(i, config)} = {view.code}), its code was {view.before}: "
    moved = np.flatnonzero(view.propagated)
    if view.code == view.before:
        text = head + f"node {i} already has code {view.code}, so the grid is unchanged and nothing can propagate."
    elif len(moved):
        text = head + (f"{len(moved)} other node(s) changed through propagation: {', '.join(map(str, moved))} (thick "
                       f"outline). The arrows are the {int(view.carriers.sum())} edge(s) of the pass (probability > "
                       f"0.5 on the edited grid) that carried the change: from node {i} directly, or through one "
                       "of its children where there is no direct edge (the graph network has two layers).")
        lost = [int(j) for j in moved if not view.carriers[:, j].any()]
        if lost:
            text += (f" Node(s) {', '.join(map(str, lost))} changed without such a path: an edge of their path "
                     "was there before the edit.")
    else:
        children = np.flatnonzero(view.graph[i])
        if not len(children):
            text = head + (f"no other node changed, because no node has node {i} as a parent above 0.5 (the "
                           "threshold the pass uses, on the edited grid): the new code reaches no other node. do() "
                           "uses the graph without an action, not the chosen action's graph drawn above.")
        else:
            j = int(children[np.argmax(view.edge_probs[i, children])])
            text = head + (f"no other node changed: node {i} is a parent of {len(children)} node(s) above 0.5 "
                           f"(strongest: node {j}, p = {view.edge_probs[i, j]:.3f}), but none of their most probable "
                           f"codes moved; the largest change of a node's code distribution is {view.shift:.3f} in "
                           f"total variation (node {view.shift_node}).")
    if view.drift.any():
        text += (f" {int(view.drift.sum())} node(s) also differ from the input without the intervention: the pass "
                 "changes them on the unedited grid as well (not outlined).")
    return text


@dataclass(frozen=True)
class WidgetSpecs:
    """Keyword arguments of the checkpoint-dependent widgets: used to build them and to update them."""

    sliders: list[dict]  # one per slot: label, range ±k_f, value 0, visible
    menus: list[dict]  # one per slot: factor-value choices
    node: dict  # the node picker (the graph's ego view and do())
    code: dict  # the do() codebook-entry menu
    top_k: dict  # the graph's parents-per-node slider
    action: dict  # the graph's action picker
    steps: dict  # the traversal steps slider
    random: dict  # the random-sample button (off without a dataset)
    map_action: dict  # the factor maps' action picker

    def flat(self) -> list[dict]:
        return [*self.sliders, *self.menus, self.node, self.code, self.action, self.steps, self.random,
                self.map_action, self.top_k]


def widget_specs(ex: Explorer | None, slots: int) -> WidgetSpecs:
    """The checkpoint-dependent widget settings for ``ex`` (all hidden or empty without a model)."""
    if ex is None:
        hidden = [dict(label=f"factor {f}", visible=False) for f in range(slots)]
        return WidgetSpecs(sliders=[dict(d, minimum=-1, maximum=1, value=0) for d in hidden],
                           menus=[dict(d, choices=[], value=None) for d in hidden], node=dict(choices=[], value=None),
                           code=dict(choices=[], value=None), top_k=dict(maximum=1, value=0),
                           action=dict(choices=[("no action", NO_ACTION)], value=NO_ACTION),
                           steps=dict(maximum=8, value=3), random=dict(interactive=False),
                           map_action=dict(choices=[], value=None))
    cfg, F = ex.config, ex.config.num_factors
    sliders = [dict(label=ex.factor_names[f], minimum=-ex.max_steps[f], maximum=ex.max_steps[f], value=0,
                    visible=True) if f < F else dict(label=f"factor {f}", minimum=-1, maximum=1, value=0,
                                                     visible=False) for f in range(slots)]
    menus = [dict(label=ex.factor_names[f], choices=list(zip(ex.factor_value_labels(f), range(cfg.factor_sizes[f]))),
                  value=0, visible=ex.dataset is not None) if f < F else dict(label=f"factor {f}", choices=[],
                                                                              value=None, visible=False)
             for f in range(slots)]
    return WidgetSpecs(
        sliders=sliders, menus=menus,
        node=dict(choices=[(drawing.node_label(i, cfg), i) for i in range(cfg.num_nodes)], value=0),
        code=dict(choices=[(str(c), c) for c in range(cfg.codebook_size)], value=0),  # ordered on the graph tab
        top_k=dict(maximum=cfg.num_nodes - 1, value=min(DEFAULT_TOP_K, cfg.num_nodes - 1)),
        action=dict(choices=[("no action", NO_ACTION), *[(n, i) for i, n in enumerate(ex.action_names)]],
                    value=0),  # an action: its intervened nodes and rewired in-edges are what the panel is for
        steps=dict(maximum=max(1, min(8, max(ex.max_steps))), value=min(3, max(ex.max_steps))),
        random=dict(interactive=ex.dataset is not None),
        map_action=dict(choices=[(n, i) for i, n in enumerate(ex.action_names)], value=0))


def describe(ex: Explorer | None, notice: str = "") -> str:
    """The model line under the title (plus any loading notice)."""
    if ex is None:
        return f"⚠️ {notice}" if notice else "⚠️ No model loaded."
    cfg = ex.config
    line = (f"Checkpoint `{display_name(ex.source)}`: {cfg.num_codebooks} codebook(s) of {cfg.codebook_size} "
            f"codes on a {cfg.grid_size}×{cfg.grid_size} grid ({cfg.num_nodes} causal nodes), {cfg.image_size}-px "
            f"{'RGB' if cfg.in_channels == 3 else 'greyscale'} images, factors: {', '.join(cfg.factor_names)}.")
    note = " ".join(s for s in (notice, ex.notice) if s)
    return f"⚠️ {note}\n\n{line}" if note else line


def build_demo(explorer: Explorer | None, notice: str = "", choices: Sequence[str] | None = None) -> gr.Blocks:
    """The Blocks UI over ``explorer`` (``None``: a page that only says why no model is loaded)."""
    slots = max(MIN_SLOTS, explorer.config.num_factors if explorer is not None else 0)
    choices = list(choices if choices is not None else checkpoint_choices())
    if explorer is not None and explorer.source not in choices:
        choices.insert(0, explorer.source)
    h = Handlers(explorer, slots, choices)
    specs = widget_specs(explorer, slots)
    names = list(h.sources)  # the dropdown shows names, never a machine path
    img = dict(format="png", interactive=False, height=256, buttons=["download"], elem_classes=["captioned"])
    pix = {**img, "elem_classes": ["captioned", "pixels"]}  # the model's own pixels, enlarged by the browser

    # delete_cache: output images older than an hour are removed every hour (gradio keeps them all otherwise).
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}\nA multi-codebook VQ-VAE whose code indices are the nodes of a learned causal "
                    "graph (CT-VAE, IJCAI 2023). Actions move one factor one step: the model chooses the nodes each "
                    "action intervenes on and the graph propagates the change. See docs/app.md.")
        session = gr.State(h.new_session())
        with gr.Row(equal_height=True):
            info = gr.Markdown(describe(explorer, notice))
            checkpoint = gr.Dropdown(choices=names, value=display_name(explorer.source) if explorer else None,
                                     label="Checkpoint", interactive=len(names) > 1, scale=0, min_width=280,
                                     elem_id="checkpoint")

        # --- 1 + 2: input, reconstruction, codes ---
        with gr.Row(elem_id="panel-input"):
            with gr.Column(scale=1):
                gr.Markdown("### 1. Input\nUpload an image, draw a dataset sample or click an example: every panel "
                            "below works on this input.")
                upload = gr.File(label="Upload an image", file_types=["image"], type="filepath", height=130,
                                 elem_id="input-upload")
                random_btn = gr.Button("Random dataset sample", **specs.random)
                with gr.Accordion("Sample by factor values", open=False, elem_id="factor-menus"):
                    menus = [gr.Dropdown(interactive=True, elem_id=f"menu-{f}", **kw)
                             for f, kw in enumerate(specs.menus)]
                    render_btn = gr.Button("Render these factors")
                gallery = gr.Gallery(value=h.examples or None, label="Examples (click one)", columns=4,
                                     allow_preview=False, buttons=[], elem_id="examples-gallery",
                                     visible=bool(h.examples))
            with gr.Column(scale=2):
                gr.Markdown("### 2. Reconstruction and codes\nEach cell of the code grid is one causal node, "
                            "numbered by its code. A reconstruction close to the input means the codes hold the "
                            "picture; the line below says how far the input is from the training images.")
                domain = gr.Markdown("Load an image.", elem_id="domain-notice")
                with gr.Row():
                    input_img = gr.Image(label="Input (as the model sees it)", elem_id="input-image", **pix)
                    recon_img = gr.Image(label="Reconstruction", **pix)
                codes_img = gr.Image(label="Code indices (one panel per codebook)", **img)

        with gr.Tabs():
            # --- 3: atomic interventions ---
            with gr.Tab("3. Atomic interventions", elem_id="panel-interventions"):
                gr.Markdown("Move a slider and compare the result with the ground truth beside it: a good model "
                            "changes that factor only. Slider *f* at *s* applies “*f* +” (s > 0) or “*f* −” "
                            "(s < 0) |s| times; factors are composed in factor order, top to bottom. " + LEGEND)
                with gr.Row():
                    with gr.Column(scale=1):
                        sliders = [gr.Slider(step=1, elem_id=f"slider-{f}", **kw) for f, kw in enumerate(specs.sliders)]
                        reset_btn = gr.Button("Reset")
                    with gr.Column(scale=2):
                        with gr.Row():
                            result_img = InlineImage(label="After the interventions", elem_id="result-image", **pix)
                            truth_img = InlineImage(label="Ground truth (uploads: from the estimated factors)", **pix)
                        result_md = gr.Markdown("", elem_id="result-text")
                        truth_md = gr.Markdown("", elem_id="truth-text")
                        result_grid = InlineImage(label="Codes after the interventions", **img)

            # --- 4: causal graph and hard interventions ---
            with gr.Tab("4. Causal graph", elem_id="panel-graph") as graph_tab:
                gr.Markdown("Which nodes feed which. Pick an action to see the nodes it intervenes on (red) and the "
                            "in-edges it rewires; raise the threshold or lower top-k to keep the strongest edges. "
                            "The node menu moves to the intervened node with the most edges: the table lists its "
                            "parents and children. Below, set one node's code yourself and see what the graph "
                            "passes on.")
                with gr.Row():
                    action_dd = gr.Dropdown(label="Action", elem_id="graph-action", **specs.action)
                    threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Edge threshold")
                    over = gr.Radio(list(GRAPH_OVER), value=GRAPH_OVER[1], label="Edge probabilities over")
                with gr.Row():
                    view = gr.Radio(list(GRAPH_VIEWS), value=GRAPH_VIEWS[0], label="Draw")
                    top_k = gr.Slider(minimum=0, step=1, label="Parents per node (top-k; 0 = all)", **specs.top_k)
                    node_dd = gr.Dropdown(label="Node (parents and children; do())", **specs.node)
                graph_md = gr.Markdown("", elem_id="graph-text")
                with gr.Row():
                    heat_plot = gr.Plot(label="Adjacency (row = source, column = target)", show_label=False,
                                        elem_id="graph-plot")
                    net_plot = gr.Plot(label="Edges on the code grid (red: intervened nodes)", show_label=False)
                ego_table = gr.Dataframe(headers=list(edges.EGO_COLUMNS), label="The node's parents and children",
                                         interactive=False, max_height=260, elem_id="ego-table")
                gr.Markdown("#### Hard intervention: do(node = code), then one pass of the learned graph\n"
                            "Black corner: the node set; thick outline: the nodes that changed through propagation. "
                            "The codes are offered most frequent first: the ones this node takes in the dataset.")
                with gr.Row():
                    code_dd = gr.Dropdown(label="Codebook entry", scale=3, **specs.code)
                    do_btn = gr.Button("Apply do()", scale=1, elem_id="do-button")
                do_md = gr.Markdown("", elem_id="do-text")
                with gr.Row():
                    do_img = gr.Image(label="After do() and propagation", **pix)
                    do_grid = gr.Image(label="Codes after do()", **img)
                do_plot = gr.Plot(label="The edges that carried the change", show_label=False)

            # --- 5: action retrieval ---
            with gr.Tab("5. Action retrieval", elem_id="panel-retrieval"):
                gr.Markdown("Which action turns x into y? Upload two images, or take the input and its slider "
                            "result. On the codes of x, black corners mark the nodes the most probable action "
                            "intervenes on, thick outlines the codes that differ in y.")
                with gr.Row():
                    pair_btn = gr.Button("x = input, y = slider result", elem_id="pair-button")
                    retrieve_btn = gr.Button("Retrieve the action", variant="primary", elem_id="retrieve-button")
                with gr.Row():
                    with gr.Column():
                        x_img = gr.Image(label="x", type="numpy", elem_id="retrieve-x", **pix)
                        x_up = gr.File(label="Upload x", file_types=["image"], type="filepath", height=130)
                    with gr.Column():
                        y_img = gr.Image(label="y", type="numpy", elem_id="retrieve-y", **pix)
                        y_up = gr.File(label="Upload y", file_types=["image"], type="filepath", height=130)
                retrieve_md = gr.Markdown("", elem_id="retrieve-text")
                with gr.Row():
                    retrieve_plot = gr.Plot(label="p(action | x, y)", show_label=False)
                    retrieve_grid = gr.Image(label="Codes of x", **img)

            # --- 6: traversals ---
            with gr.Tab("6. Traversals", elem_id="panel-traversals"):
                gr.Markdown("Each row moves one factor from −k to +k steps, the reconstruction in the middle "
                            "column: a well-learned factor changes only itself along its row. Striped cells go "
                            "past the factor's end from this input.")
                with gr.Row():
                    trav_steps = gr.Slider(minimum=1, step=1, label="Steps k (−k..+k)", elem_id="traverse-steps",
                                           **specs.steps)
                    trav_btn = gr.Button("Traverse every factor", variant="primary", elem_id="traverse-button")
                trav_img = gr.Image(label="Traversals (rows: factors; columns: −k..+k)", format="png",
                                    interactive=False, buttons=[], elem_id="traversal-image",
                                    elem_classes=["captioned"])
                with gr.Row():
                    trav_png = gr.File(label="PNG")
                    trav_gif = gr.File(label="Animated GIF")

            # --- 7: factor maps ---
            with gr.Tab("7. Factor maps", elem_id="panel-maps") as maps_tab:
                gr.Markdown("Pick an action and see where it lives on the code grid: the top maps show how often "
                            "each node is intervened on over dataset pairs, the bottom maps how often the step "
                            "really changes it. On the right, the same action on the current input.")
                map_action = gr.Dropdown(label="Action", elem_id="map-action", **specs.map_action)
                maps_md = gr.Markdown("", elem_id="maps-text")
                with gr.Row():
                    maps_plot = gr.Plot(label="Factor maps", show_label=False, elem_id="maps-plot")
                    maps_img = gr.Image(label="This input: red = intervened, yellow outline = changed",
                                        elem_id="maps-overlay", **img)

        # --- wiring ---
        load_outputs = [session, input_img, recon_img, codes_img, domain, *sliders, result_img, result_grid,
                        truth_img, truth_md, result_md]
        model_outputs = [*sliders, *menus, node_dd, code_dd, action_dd, trav_steps, random_btn, map_action, top_k,
                         input_img, recon_img, codes_img, domain, result_img, result_grid, truth_img, truth_md,
                         result_md, gallery, heat_plot, net_plot, graph_md, ego_table, do_img, do_grid, do_plot, do_md,
                         x_img, y_img, retrieve_plot, retrieve_grid, retrieve_md, trav_img, trav_png, trav_gif,
                         maps_plot, maps_img, maps_md]
        upload.upload(h.upload_in_page, [upload, session], [*load_outputs, upload], api_visibility="private")
        # the API's /load_image answers a bad file with an error (the page's upload only warns): a hidden trigger
        api_file = gr.File(file_types=["image"], type="filepath", visible=False)
        gr.Button(visible=False).click(h.load_upload, [api_file, session], load_outputs, api_name="load_image")
        random_btn.click(h.sample_random, [session], [*load_outputs, *menus], api_name="sample_random")
        render_btn.click(h.sample_factors, [session, *menus], load_outputs, api_name="sample_factors")
        gallery.select(h.select_example, [session], load_outputs, api_visibility="private")
        demo.load(h.first_example, [session], load_outputs, api_visibility="private")

        # a move: one event for the result and the ground truth, SLIDE_CONCURRENCY at once; the handler checks the
        # slider values itself (preprocess=False skips gradio's per-slider pass, a thread hop each)
        gr.on([s.input for s in sliders], h.move, [session, *sliders],
              [result_img, result_grid, result_md, truth_img, truth_md], api_name="slide",
              trigger_mode="always_last", show_progress="hidden", preprocess=False,
              concurrency_limit=SLIDE_CONCURRENCY, concurrency_id="slide", queue=SLIDE_QUEUE)
        gr.Button(visible=False).click(h.ground_truth, [session, *sliders], [truth_img, truth_md],
                                       api_name="ground_truth")  # the ground truth alone, for API callers
        reset_btn.click(h.reset, [session], [*sliders, result_img, result_grid, truth_img, truth_md, result_md],
                        api_name="reset")

        # one event each: the drawing's settings redraw; opening the panel or changing its action or source also
        # moves the node picker onto a node the action intervenes on; picking a node also offers its do() codes
        graph_inputs, graph_outputs = [session, action_dd, threshold, over, view, top_k, node_dd], [
            heat_plot, net_plot, graph_md, ego_table]
        gr.on([threshold.release, view.input, top_k.release], h.graph, graph_inputs, graph_outputs,
              api_name="graph", trigger_mode="always_last", **FIGURES)
        gr.on([graph_tab.select, action_dd.input, over.input], h.graph_focus, graph_inputs,
              [*graph_outputs, node_dd, code_dd], api_name="graph_focus", trigger_mode="always_last", **FIGURES)
        node_dd.input(h.graph_node, graph_inputs, [*graph_outputs, code_dd], api_name="graph_node",
                      trigger_mode="always_last", **FIGURES)
        gr.Button(visible=False).click(h.code_choices, [session, node_dd], [code_dd],
                                       api_name="code_choices")  # the do() codes alone, for API callers
        do_btn.click(h.do, [session, node_dd, code_dd], [do_img, do_grid, do_plot, do_md], api_name="do", **FIGURES)

        pair_btn.click(h.pair_from_sliders, [session, *sliders], [x_img, y_img], api_name="pair_from_sliders")
        x_up.upload(h.upload_pair_image, [x_up, session], [x_img], api_name="upload_x")
        y_up.upload(h.upload_pair_image, [y_up, session], [y_img], api_name="upload_y")
        retrieve_btn.click(h.retrieve_files, [session, x_img, y_img], [retrieve_plot, retrieve_grid, retrieve_md],
                           api_name="retrieve", preprocess=False, **FIGURES)

        trav_btn.click(h.traverse, [session, trav_steps], [trav_img, trav_png, trav_gif], api_name="traverse")
        gr.on([maps_tab.select, map_action.input], h.factor_maps, [session, map_action],
              [maps_plot, maps_img, maps_md], api_name="factor_maps", trigger_mode="always_last", **FIGURES)
        checkpoint.input(h.change_checkpoint, [checkpoint, session], [session, info, *model_outputs],
                         api_name="checkpoint").success(h.first_example, [session], load_outputs,
                                                        api_visibility="private")  # not after a refused switch

    demo.queue(default_concurrency_limit=1)  # every other event: one at a time per event
    demo.handlers = h  # the handlers behind the events, for tests and benchmarks
    return demo


def load_demo() -> gr.Blocks:
    """Load the checkpoint (``$CAUSALVQ_CHECKPOINT``, else the shipped one) once and build the UI."""
    loaded = load_model(os.environ.get("CAUSALVQ_CHECKPOINT"))
    explorer = None
    if loaded.model is not None:
        probe, probe_notice = load_checkpoint_probe(loaded.source, loaded.model)
        explorer = Explorer(loaded.model, source=loaded.source, probe=probe, notice=probe_notice, max_batch=MAX_BATCH)
    return build_demo(explorer, notice=loaded.notice)


def configure_threads() -> int:
    """Torch intra-op threads for serving (env ``CAUSALVQ_THREADS``, default 1): one image at a time is too
    small to split, and on a shared CPU extra threads wait on each other (2 threads: 10× slower p50 here)."""
    import torch

    threads = max(1, int(os.environ.get("CAUSALVQ_THREADS", "1")))
    torch.set_num_threads(threads)
    return threads


def start_fused_kernel() -> threading.Thread | None:
    """Load the fused C++ kernel in the background (built with the machine's compiler on a first start, about a
    minute; cached after). The app serves on the plain-torch path until it is there, then on the kernel: the same
    numbers, a transition pass about 2× faster. ``CAUSALVQ_FUSED_KERNEL=0`` keeps the torch path, and so does a
    machine without a compiler or ninja."""
    if os.environ.get("CAUSALVQ_FUSED_KERNEL") == "0":
        return None
    from causalvq import kernels

    thread = threading.Thread(target=kernels.enable, daemon=True, name="causalvq-fused-kernel")
    thread.start()
    return thread


demo = load_demo()

if __name__ == "__main__":
    configure_threads()
    start_fused_kernel()
    for ex in demo.handlers.explorers.values():  # in-domain error, render tables: in the background
        threading.Thread(target=ex.warm_up, daemon=True, name="causalvq-warm-up").start()
    demo.launch(**LAUNCH_OPTIONS)
