"""Pictures of what the explorer computes: code grids, the learned graph, retrieval bars, traversals, GIFs.

Plain functions of numpy arrays, code grids and the ``Explorer``'s result dataclasses; they return ``uint8``
images (PIL drawing) or matplotlib ``Figure`` objects (never pyplot, so nothing global is touched). Nodes are
laid out as the model numbers them: node i = k·h·w + y·w + x, codebooks side by side.

Axis legend: ``S`` model image side, ``C`` image channels, ``k`` codebooks, ``h w`` latent grid, ``n`` nodes,
``v`` codebook size, ``F`` factors.
"""

from __future__ import annotations

import colorsys
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, ImageDraw, ImageFont

from causalvq.config import ModelConfig
from causalvq.imaging import image_grid

if TYPE_CHECKING:
    from causalvq.explore.edges import EdgeSelection
    from causalvq.explore.views import ActionMap, RetrievalView, Traversal

_EDGE_CMAPS = ("Blues", "Oranges", "Reds")  # edge / ego out-edge / rewired by the action
_NODE_RADIUS = 0.24  # arrows stop this far (grid units) from a node's centre
_LANE = 0.09  # and run this far to the right of the line between their nodes
TRAVERSAL_SHOWN_PX = 960  # the width the page gives the traversal grid in a 1,024-px window (wider grids shrink)
LABEL_PX = 13  # the traversal grid's labels are at least this tall on screen there


# --- code grids ------------------------------------------------------------------------------------------------
def code_colors(codebook_size: int) -> np.ndarray:
    """A fixed colour per code, neighbouring indices far apart on the hue circle: ``uint8 (v, 3)``."""
    rgb = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.45 + 0.3 * (i % 3) / 2, 0.95 - 0.2 * (i % 2))
           for i in range(codebook_size)]
    return np.round(np.asarray(rgb) * 255).astype(np.uint8).reshape(codebook_size, 3)


_FONTS = threading.local()  # per thread: a FreeType face must not render in two threads at once


def _font(size: int) -> ImageFont.ImageFont:
    """The default font at ``size`` px, one object per thread (the app draws in several threads at once)."""
    fonts = _FONTS.__dict__.setdefault("by_size", {})
    if size not in fonts:
        try:
            fonts[size] = ImageFont.load_default(size=size)
        except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
            fonts[size] = ImageFont.load_default()
    return fonts[size]


_TILES: dict[tuple[int, int, int, bool, bool], np.ndarray] = {}  # (v, cell, code, changed, marked) → uint8 tile
_TILES_LOCK = threading.Lock()
_TILES_KEPT = 16384  # at most ~100 MB of 48-px tiles; a code grid's cells are a few of them


def _cell_tile(codebook_size: int, cell: int, code: int, changed: bool, marked: bool) -> np.ndarray:
    """One cell of ``draw_code_grid``, drawn once and kept: ``uint8 (cell, cell, 3)``.

    A cell is drawn inside its own box and its text is centred at the same sub-pixel offset in every cell (the
    box corners are whole pixels), so the tile drawn at the origin is the cell drawn anywhere, pixel for pixel.
    """
    key = (codebook_size, cell, code, changed, marked)
    tile = _TILES.get(key)
    if tile is not None:
        return tile
    img = Image.new("RGB", (cell, cell), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    box = (0, 0, cell - 1, cell - 1)
    rgb = tuple(int(v) for v in code_colors(codebook_size)[code % codebook_size])
    draw.rectangle(box, fill=rgb, outline=(255, 255, 255))
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
    draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), str(code), fill=ink,
              font=_font(max(9, int(cell * 0.42))), anchor="mm")
    if changed:
        t = max(2, cell // 12)
        draw.rectangle(box, outline=(0, 0, 0), width=t)
        inner = (box[0] + t, box[1] + t, box[2] - t, box[3] - t)
        draw.rectangle(inner, outline=(255, 255, 255), width=max(1, t // 2))
    if marked:
        s = max(5, cell // 3)
        draw.polygon([(box[0], box[1]), (box[0] + s, box[1]), (box[0], box[1] + s)], fill=(0, 0, 0),
                     outline=(255, 255, 255))
    tile = np.asarray(img)
    with _TILES_LOCK:
        if len(_TILES) >= _TILES_KEPT:
            _TILES.clear()
        _TILES[key] = tile
    return tile


def draw_code_grid(codes: torch.Tensor | np.ndarray, codebook_size: int, changed: np.ndarray | None = None,
                   marked: np.ndarray | None = None, cell: int | None = None) -> np.ndarray:
    """Picture of code indices: one panel per codebook, each cell coloured by its code with the index in it.

    Each cell is a tile drawn once per (code, changed, marked) and copied into place (``_cell_tile``): a grid costs
    array copies, not 64 text renders (0.1 ms instead of about 2 ms for an 8×8 grid).

    Args:
        codes: `(k, h, w)` or `(1, k, h, w)` code indices.
        codebook_size: v, for the colours.
        changed: optional bool `(n,)`: nodes drawn with a thick black-and-white outline.
        marked: optional bool `(n,)`: nodes with a black triangle in the top-left corner (intervened on).
        cell: cell side in pixels (default: panels about 320 px wide).

    Returns:
        ``uint8 (H, W, 3)``.
    """
    c = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes).astype(np.int64)
    c = c.reshape(c.shape[-3:])  # (k, h, w)
    k, h, w = c.shape
    cell = cell or int(np.clip(min(320 // w, 720 // (k * w)), 16, 48))  # about 320 px a panel, 720 in all
    gap, title = cell // 2, (max(14, cell // 2) if k > 1 else 0)
    width = k * w * cell + (k - 1) * gap
    changed = np.zeros(k * h * w, bool) if changed is None else np.asarray(changed, bool).reshape(-1)
    marked = np.zeros(k * h * w, bool) if marked is None else np.asarray(marked, bool).reshape(-1)
    if k > 1:  # the codebook titles, drawn before the cells (which cover any part of a title below its row)
        head = Image.new("RGB", (width, title + h * cell), (255, 255, 255))
        draw, small = ImageDraw.Draw(head), _font(max(9, title - 4))
        for q in range(k):
            draw.text((q * (w * cell + gap), 1), f"codebook {q}", fill=(60, 60, 60), font=small)
        img = np.array(head)
    else:
        img = np.full((h * cell, width, 3), 255, np.uint8)
    for q in range(k):
        x0 = q * (w * cell + gap)
        for y in range(h):
            for x in range(w):
                node = q * h * w + y * w + x
                tile = _cell_tile(codebook_size, cell, int(c[q, y, x]), bool(changed[node]), bool(marked[node]))
                img[title + y * cell:title + (y + 1) * cell, x0 + x * cell:x0 + (x + 1) * cell] = tile
    return img


def node_label(node: int, config: ModelConfig) -> str:
    """``"node 12 (codebook 0, row 1, col 4)"``."""
    g = config.grid_size
    q, rest = divmod(node, g * g)
    y, x = divmod(rest, g)
    return f"node {node} (codebook {q}, row {y}, col {x})"


# --- causal graph ----------------------------------------------------------------------------------------------
def graph_heatmap(adjacency: np.ndarray, config: ModelConfig, marked: np.ndarray | None = None,
                  title: str = "") -> Figure:
    """Heat map of the adjacency (row = source, column = target); marked nodes get red ticks on both axes. The
    diagonal is left blank: the graph network gives every node its self-loop whatever the adjacency says."""
    n = adjacency.shape[0]
    shown = np.array(adjacency, dtype=np.float64)
    np.fill_diagonal(shown, np.nan)
    fig = Figure(figsize=(5.2, 4.4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(shown, vmin=0.0, vmax=1.0, cmap=cmap, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="edge probability")
    ax.set_xlabel("target node")
    ax.set_ylabel("source node")
    hw = config.grid_size ** 2
    for b in range(hw, n, hw):  # codebook boundaries
        ax.axhline(b - 0.5, color="white", lw=0.8)
        ax.axvline(b - 0.5, color="white", lw=0.8)
    if marked is not None and marked.any():
        idx = np.flatnonzero(marked)
        ax.plot(idx, np.full(len(idx), n - 0.5), "r^", ms=5, clip_on=False)
        ax.plot(np.full(len(idx), -0.5), idx, "r>", ms=5, clip_on=False)
    ax.set_title(title or "learned adjacency", fontsize=10)
    return fig


def graph_network(selection: EdgeSelection, config: ModelConfig, marked: np.ndarray | None = None,
                  codes: torch.Tensor | None = None, highlighted: np.ndarray | None = None,
                  title: str = "") -> Figure:
    """Node–link drawing on the code grid: one arrow source → target per selected edge (all of them: the caption
    and the title count the same arrows), darker = more probable.

    Arrows stop at the node circles and run on the right of the line between their nodes, so i → j and j → i are
    two arrows side by side. Colours: blue = edge (ego view: into the node), orange = ego view: out of the node,
    red = rewired by the action. Nodes carry their index and, with ``codes`` `(1, k, h, w)`, their code's
    colour; ``marked`` `(n,)` nodes (intervened on) are circled in red, ``highlighted`` `(n,)` ones (changed
    through propagation) in black, the ego view's node in a thick black ring.
    """
    g, k, n = config.grid_size, config.num_codebooks, config.num_nodes
    node = np.arange(n)
    q, rest = np.divmod(node, g * g)
    ys, xs = np.divmod(rest, g)
    px, py = xs + q * (g + 1.5), ys.astype(float)  # codebooks side by side
    width = min(9.0, max(4.8, 2.6 * k + 2.2))
    span_x, span_y = px.max() - px.min() + 1.6, py.max() - py.min() + 1.6
    fig = Figure(figsize=(width, float(np.clip(width * span_y / span_x + 1.3, 3.4, 6.0))), dpi=100,
                 layout="constrained")
    ax = fig.add_subplot()
    src, dst = selection.source, selection.target
    if len(src):
        t = selection.threshold
        shade = np.clip((selection.prob - t) / max(1.0 - t, 1e-6), 0.0, 1.0) * 0.65 + 0.35  # (e,), 1 = darkest
        family = np.zeros(len(src), np.int64)  # 0 blue, 1 orange, 2 red
        family[selection.children] = 1
        family[selection.rewired] = 2
        colors = np.zeros((len(src), 4))
        for f, cmap in enumerate(_EDGE_CMAPS):
            colors[family == f] = matplotlib.colormaps[cmap](shade[family == f])
        dx, dy = px[dst] - px[src], py[dst] - py[src]
        length = np.hypot(dx, dy)  # (e,), at least 1: nodes sit on a unit grid
        ux, uy = dx / length, dy / length
        gap = np.minimum(_NODE_RADIUS, 0.3 * length)
        x0, y0 = px[src] + ux * gap - uy * _LANE, py[src] + uy * gap + ux * _LANE
        order = np.argsort(shade, kind="stable")  # the strongest on top
        ax.quiver(x0[order], y0[order], (dx - 2 * ux * gap)[order], (dy - 2 * uy * gap)[order],
                  color=colors[order], angles="xy", scale_units="xy", scale=1.0,
                  width=0.0032 if len(src) <= 200 else 0.0022, headwidth=4.5,
                  headlength=5.5, headaxislength=5.0, zorder=1)
    if codes is not None:
        face = code_colors(config.codebook_size)[codes.reshape(-1).cpu().numpy()] / 255.0
    else:
        face = np.full((n, 3), 0.9)
    ax.scatter(px, py, s=150, c=face, edgecolors="0.35", linewidths=0.6, zorder=2)
    if n <= 256:
        ink = np.where(face @ np.array([0.299, 0.587, 0.114]) > 0.55, "0.1", "white")  # (n,), readable on the face
        for i in range(n):
            ax.text(px[i], py[i], str(i), ha="center", va="center", fontsize=5.5, color=ink[i], zorder=3)
    if highlighted is not None and np.asarray(highlighted).any():
        h = np.asarray(highlighted, bool)
        ax.scatter(px[h], py[h], s=230, facecolors="none", edgecolors="black", linewidths=1.6, zorder=3)
    if marked is not None and np.asarray(marked).any():
        m = np.asarray(marked, bool)
        ax.scatter(px[m], py[m], s=300, facecolors="none", edgecolors="red", linewidths=1.8, zorder=3)
    if selection.node is not None:
        ax.scatter(px[selection.node], py[selection.node], s=420, facecolors="none", edgecolors="black",
                   linewidths=3, zorder=4)
    ax.set_xlim(px.min() - 0.8, px.max() + 0.8)
    ax.set_ylim(py.max() + 0.8, py.min() - 0.8)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if k > 1:
        for c in range(k):
            ax.text(c * (g + 1.5) + (g - 1) / 2, -0.45, f"codebook {c}", ha="center", va="bottom", fontsize=8)
    legend = [("edge" if selection.node is None else "into the node", 0)]
    if selection.children.any():
        legend.append(("out of the node", 1))
    if selection.rewired.any():
        legend.append(("rewired by the action", 2))
    handles = [Line2D([], [], color=matplotlib.colormaps[_EDGE_CMAPS[f]](0.8), lw=2, label=lab) for lab, f in legend]
    ax.legend(handles=handles, loc="upper center",
              bbox_to_anchor=(0.5, 0.0), ncol=len(legend), fontsize=7, frameon=False,
              title="darker = more probable", title_fontsize=7)
    ax.set_title(title or f"{len(selection)} of {selection.above} edges with probability > "
                          f"{selection.threshold:.2f} drawn", fontsize=10)
    return fig


# --- factor maps -----------------------------------------------------------------------------------------------
def factor_map_figure(view: ActionMap, config: ModelConfig, title: str = "") -> Figure:
    """Two rows of code-grid maps for one action, one panel per codebook: the share of dataset pairs whose mask
    holds each node (top), and whose step changes it (bottom); this input's intervened nodes get a dot."""
    k, g = config.num_codebooks, config.grid_size
    fig = Figure(figsize=(min(10.0, 2.4 * k + 1.4), 4.8), dpi=100, layout="constrained")
    axes = fig.subplots(2, k, squeeze=False)
    rows = (("mask", view.mask_share), ("changed", view.changed_share))
    here = view.mask.reshape(k, g, g)
    image = None
    for r, (label, share) in enumerate(rows):
        for q in range(k):
            ax = axes[r, q]
            ax.set_xticks([])
            ax.set_yticks([])
            image = ax.imshow(share[q], cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
            ys, xs = np.nonzero(here[q])
            ax.scatter(xs, ys, s=6, c="cyan", marker="o", linewidths=0)
            if r == 0 and k > 1:
                ax.set_title(f"codebook {q}", fontsize=9)
            if q == 0:
                ax.set_ylabel(f"{label}: share of pairs", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.7, label="share of the action's pairs")
    fig.suptitle(title, fontsize=10)
    return fig


def overlay_nodes(image: np.ndarray, config: ModelConfig, mask: np.ndarray, changed: np.ndarray,
                  scale: int | None = None) -> np.ndarray:
    """The image with the nodes of an action laid over it, the latent grid stretched to the image: red tint where
    any codebook's node is intervened on, a yellow outline where any codebook's code changed. ``uint8 (H, W, 3)``."""
    k, g = config.num_codebooks, config.grid_size
    S = image.shape[0]
    scale = scale or max(1, 256 // S)
    rgb = _enlarged_rgb(image[None], scale)[0].astype(np.float64)  # (S·scale, S·scale, 3)
    side = rgb.shape[0]
    m = np.asarray(mask, bool).reshape(k, g, g).any(0)  # (g, g)
    c = np.asarray(changed, bool).reshape(k, g, g).any(0)
    up = np.repeat(np.repeat(m, -(-side // g), 0), -(-side // g), 1)[:side, :side]  # (side, side)
    rgb[up] = 0.55 * rgb[up] + 0.45 * np.array([230.0, 30.0, 30.0])
    out = Image.fromarray(np.round(rgb).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    cell = side / g
    for y, x in zip(*np.nonzero(c)):
        draw.rectangle((x * cell + 1, y * cell + 1, (x + 1) * cell - 2, (y + 1) * cell - 2), outline=(255, 220, 0),
                       width=max(2, int(cell) // 10))
    return np.asarray(out)


# --- action retrieval ------------------------------------------------------------------------------------------
def retrieval_figure(view: RetrievalView, top: int = 12) -> Figure:
    """Horizontal bars of the ``top`` closest moves (action ×k) by distance, the best first (orange when it is
    accepted, grey when it is rejected); a black tick on each bar marks the threshold of its k."""
    d = view.distances.reshape(-1)
    order = np.argsort(d, kind="stable")[:top][::-1]  # the ranking's order (p = softmax(−d)), best at the top
    names = [n for n, _ in view.ranking[:top]][::-1]
    K = view.distances.shape[1]
    fig = Figure(figsize=(5.0, 0.3 * len(names) + 1.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    best = "#dd8452" if view.accepted is not False else "#999999"
    ax.barh(names, d[order], color=["#4c72b0"] * (len(names) - 1) + [best])
    values = d[order]
    ticks = None
    if view.thresholds is not None:
        ticks = np.asarray([view.thresholds[i % K] for i in order])
        ax.scatter(ticks, names, marker="|", s=200, color="black", zorder=3)
        ax.set_title("black tick: the threshold of the move's k", fontsize=8)  # a legend would cover a bar
    # each bar's value is written after the bar, or after its threshold tick where the tick would cross it; the x
    # range is first fitted to the values all written after their ticks (the rightmost they can be)
    labels = [ax.annotate(f"{v:.3f}", (v if ticks is None else max(v, ticks[i]), i), xytext=(4, 0),
                          textcoords="offset points", va="center", fontsize=8) for i, v in enumerate(values)]
    ax.set_xlabel("distance of y from the move (node NLL)\nsmaller is closer")
    _fit_texts(fig, ax)
    if ticks is not None:
        for i, label in enumerate(labels):
            bar, tick = (ax.transData.transform((x, 0))[0] for x in (values[i], ticks[i]))
            if not bar - 2 <= tick <= bar + label.get_window_extent().width + 10:
                label.xy = (values[i], i)  # the tick is clear of the value at the bar's end
    return fig


def _fit_texts(fig: Figure, ax: matplotlib.axes.Axes, pad_px: float = 4.0) -> None:
    """Widen ``ax``'s x range until every text written in it ends inside it (measured on the drawn figure)."""
    canvas = FigureCanvasAgg(fig)
    for _ in range(4):
        canvas.draw()
        box = ax.get_window_extent()
        over = max((t.get_window_extent().x1 for t in ax.texts), default=box.x1) + pad_px - box.x1
        if over <= 0:
            return
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo, hi + (hi - lo) * over / max(box.width - over, 1.0))


# --- traversals ------------------------------------------------------------------------------------------------
def traversal_label_px(width: int) -> int:
    """Font size (px) of the labels of a traversal grid ``width`` px wide: the page shrinks a grid wider than
    ``TRAVERSAL_SHOWN_PX`` to fit, so its labels are drawn larger, to stay ``LABEL_PX`` tall on screen."""
    return max(LABEL_PX + 1, math.ceil(LABEL_PX * width / TRAVERSAL_SHOWN_PX))


def traversal_grid(traversal: Traversal, scale: int | None = None) -> np.ndarray:
    """One labelled grid image: a row per factor (name on the left), columns −steps..+steps (header). Labels are
    at least ``traversal_label_px`` of the image's width (readable once the page shrinks a wide grid)."""
    F, T, S = traversal.images.shape[:3]
    scale = scale or max(1, 96 // S)
    tiles = _enlarged_rgb(traversal.images.reshape(F * T, S, S, -1), scale)
    if traversal.extrapolated is not None:
        tiles = np.where(traversal.extrapolated.reshape(-1)[:, None, None, None], shade(tiles), tiles)
    grid = image_grid(tiles, nrow=T, pad=2, pad_value=255)
    note = (f"Striped: past the factor's end from the input's {'estimated' if traversal.estimated else 'true'} "
            "values (extrapolation)") if traversal.extrapolated is not None else ""
    size = traversal_label_px(grid.shape[1])
    for _ in range(8):  # the labels' width adds to the image's: grow the font until it fits the final width
        font = _font(size)
        label_w = 8 + max(int(font.getlength(n)) for n in traversal.factor_names)
        width = max(label_w + grid.shape[1], 8 + int(font.getlength(note)))
        if traversal_label_px(width) <= size:
            break
        size = traversal_label_px(width)
    head = size + 8
    foot = size + 8 if note else 0
    canvas = Image.new("RGB", (width, head + grid.shape[0] + foot), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (label_w, head))
    draw = ImageDraw.Draw(canvas)
    cell = S * scale + 2
    for t in range(T):
        s = t - traversal.steps
        draw.text((label_w + 2 + t * cell + cell / 2, head / 2), f"{s:+d}" if s else "0", fill=(0, 0, 0),
                  font=font, anchor="mm")
    for f, name in enumerate(traversal.factor_names):
        draw.text((4, head + 2 + f * cell + cell / 2), name, fill=(0, 0, 0), font=font, anchor="lm")
    if foot:
        draw.text((4, head + grid.shape[0] + foot / 2), note, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(canvas)


def shade(images: np.ndarray) -> np.ndarray:
    """Mark uint8 RGB images ``(..., H, W, 3)`` as extrapolated: dimmed towards grey with dark diagonal stripes."""
    h, w = images.shape[-3:-1]
    stripes = ((np.arange(h)[:, None] + np.arange(w)[None, :]) // 3) % 4 == 0  # (H, W)
    out = (0.5 * images.astype(np.float32) + 0.5 * 160).astype(np.uint8)
    out[..., stripes, :] = 60
    return out


def save_traversal(traversal: Traversal, folder: str | os.PathLike | None = None,
                   frame_ms: int = 250) -> tuple[Path, Path]:
    """Write ``traversal.png`` (the grid) and ``traversal.gif`` (all factors move together, −k → +k → −k)
    into ``folder`` (a fresh temporary folder by default); returns both paths."""
    out = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="causalvq-traversal-"))
    out.mkdir(parents=True, exist_ok=True)
    png, gif = out / "traversal.png", out / "traversal.gif"
    Image.fromarray(traversal_grid(traversal)).save(png)
    T = traversal.images.shape[1]
    frames = [_gif_frame(traversal, t) for t in [*range(T), *range(T - 2, 0, -1)]]  # ping-pong
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return png, gif


def _gif_frame(traversal: Traversal, t: int, scale: int | None = None) -> Image.Image:
    """One GIF frame: every factor's image at column ``t``, side by side, names above, the step on the left."""
    F, _, S = traversal.images.shape[:3]
    scale = scale or max(1, 96 // S)
    tiles = _enlarged_rgb(traversal.images[:, t], scale)  # (F, S·scale, S·scale, 3)
    extra = traversal.extrapolated[:, t] if traversal.extrapolated is not None else np.zeros(F, bool)
    tiles = np.where(extra[:, None, None, None], shade(tiles), tiles)
    cell = S * scale + 4
    font = _font(11)
    canvas = Image.new("RGB", (F * cell + 4, cell + 36), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for f in range(F):
        canvas.paste(Image.fromarray(tiles[f]), (4 + f * cell, 18))
        draw.text((4 + f * cell + cell / 2 - 2, 9), traversal.factor_names[f][:14], fill=(0, 0, 0), font=font,
                  anchor="mm")
    s = t - traversal.steps
    label = f"step {s:+d}" if s else "step 0 (reconstruction)"
    if extra.any():
        label += "; striped: extrapolation (past the factor's end)"
    draw.text((4, cell + 20), label, fill=(0, 0, 0), font=font)
    return canvas.convert("P", palette=Image.Palette.ADAPTIVE)


def _enlarged_rgb(images: np.ndarray, scale: int) -> np.ndarray:
    """uint8 ``(m, S, S, C)`` enlarged ``scale`` times (nearest neighbour), greyscale as RGB: ``(m, S·scale,
    S·scale, 3)``."""
    out = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out
