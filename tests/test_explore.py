"""The exploration API behind the app (causalvq.explore) and the app's event handlers, called directly.

Everything runs on a tiny untrained checkpoint whose factors are shapes3d's, so the procedural dataset matches;
properties are checked against the model's own methods (composition = the sequential transitions, do = model.do,
retrieval = model.retrieve_action, traversal columns = slider results).
"""

from __future__ import annotations

import io
import time
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.quiver import Quiver
from PIL import Image

import app
from causalvq.config import SHAPES3D_FACTORS, SHAPES3D_SIZES, ModelConfig
from causalvq.explore.checkpoints import (
    SHIPPED_CHECKPOINT,
    display_name,
    find_dataset,
    load_checkpoint_probe,
    load_model,
    render_examples,
)
from causalvq.explore.drawing import (
    LABEL_PX,
    TRAVERSAL_SHOWN_PX,
    code_colors,
    draw_code_grid,
    factor_map_figure,
    graph_heatmap,
    graph_network,
    overlay_nodes,
    retrieval_figure,
    save_traversal,
    traversal_grid,
)
from causalvq.explore.edges import describe_selection, ego_rows, focus_node, select_edges
from causalvq.explore.explorer import Explorer
from causalvq.explore.images import InputError, display_image, read_image_file, to_model_input, to_uint8_image
from causalvq.explore.views import DomainCheck
from causalvq.imaging import to_tensor, to_uint8
from causalvq.losses import retrieval_distance
from causalvq.model import CausalVQ
from causalvq.probe import FactorProbe, ProbeSettings, codes_digest

F = len(SHAPES3D_FACTORS)


def tiny_config(**changes) -> ModelConfig:
    return ModelConfig.tiny(factor_names=SHAPES3D_FACTORS, factor_sizes=SHAPES3D_SIZES, **changes)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    CausalVQ(tiny_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def explorer(checkpoint: Path) -> Explorer:
    return Explorer(CausalVQ.from_pretrained(checkpoint), source=str(checkpoint), calibration_samples=4,
                    retrieval_steps=2, retrieval_pairs=2)


@pytest.fixture(scope="module")
def loaded(explorer: Explorer):
    return explorer.sample([3, 4, 5, 2, 1, 7])


@pytest.fixture(scope="module")
def handlers(explorer: Explorer) -> app.Handlers:
    return app.Handlers(explorer)


# --- checkpoints ---
def test_load_model_folder_fallback_and_missing(checkpoint: Path, tmp_path: Path) -> None:
    ok = load_model(str(checkpoint), fallback=None)
    assert ok.model is not None and ok.source == str(checkpoint) and ok.notice == ""
    fell = load_model(str(tmp_path / "nowhere"), fallback=checkpoint)
    assert fell.model is not None and fell.source == str(checkpoint)
    assert "Could not load" in fell.notice and "shipped checkpoint instead" in fell.notice and fell.error
    none = load_model(None, fallback=tmp_path / "missing")
    assert none.model is None and "CAUSALVQ_CHECKPOINT" in none.notice


def test_uncached_repo_id_falls_back_fast_offline(checkpoint: Path) -> None:
    start = time.perf_counter()
    res = load_model("nobody-here/no-such-model", fallback=checkpoint)
    assert time.perf_counter() - start < 5.0
    assert res.source == str(checkpoint) and "no-such-model" in res.notice


def test_explorer_from_checkpoint_env(checkpoint: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAUSALVQ_CHECKPOINT", str(checkpoint))
    ex = Explorer.from_checkpoint(fallback=None)
    assert ex is not None and ex.source == str(checkpoint) and ex.dataset is not None
    monkeypatch.setenv("CAUSALVQ_CHECKPOINT", str(tmp_path / "missing"))
    assert Explorer.from_checkpoint(fallback=None) is None


def test_dataset_matching_and_disabled_sampling() -> None:
    assert find_dataset(tiny_config()).name == "shapes3d"
    assert find_dataset(ModelConfig.tiny()) is None  # factors a, b, c
    ex = Explorer(CausalVQ(ModelConfig.tiny()))
    assert ex.dataset is None and "sampling and ground truth are disabled" in ex.notice
    with pytest.raises(InputError, match="Sampling is disabled"):
        ex.sample()
    assert ex.ground_truth([0, 0, 0], [0, 0, 0]) is None
    assert ex.domain_check() is None


# --- images ---
@pytest.mark.parametrize("image", [
    np.full((40, 40), 128, np.uint8),  # greyscale (H, W)
    np.full((40, 40, 1), 128, np.uint8),
    np.full((20, 30, 4), 128, np.uint8),  # RGBA, not square
    np.full((3, 33, 33), 0.5, np.float32),  # (C, H, W) floats in [0, 1]
    np.full((50, 50, 3), 128.0, np.float64),  # floats in [0, 255]
    np.full((17, 17, 3), 32896, np.uint16),  # 16 bit
    np.ones((9, 9), bool),
    np.full((1, 1, 3), 7, np.uint8),  # one pixel
    np.full((16, 16, 2), 200, np.int32),  # grey + alpha
])
def test_to_model_input_odd_inputs(image: np.ndarray) -> None:
    for channels in (1, 3):
        x = to_model_input(image, 16, channels)
        assert x.shape == (1, channels, 16, 16) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_image_conversion_values() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert torch.equal(to_model_input(rgb, 16, 3), to_tensor(rgb))  # same size: untouched
    up = rgb.repeat(4, 0).repeat(4, 1)  # 4x nearest upscale, then area downscale: exact
    assert np.array_equal(to_uint8(to_model_input(up, 16, 3))[0], rgb)
    assert np.array_equal(to_uint8(to_model_input(display_image(rgb), 16, 3))[0], rgb)
    wide = np.concatenate([np.zeros((16, 8, 3), np.uint8), rgb, np.zeros((16, 8, 3), np.uint8)], 1)
    assert np.array_equal(to_uint8(to_model_input(wide, 16, 3))[0], rgb)  # centre crop
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    assert to_model_input(red, 4, 1)[0, 0, 0, 0].item() == pytest.approx(0.299, abs=1e-6)  # luma
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent: white
    assert (to_uint8_image(rgba) == 255).all()
    assert (to_uint8_image(np.full((4, 4), 0.5)) == 128).all()


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 5, 2), np.uint8), np.zeros((5, 5, 7), np.uint8),
                                 np.full((4, 4), np.nan), np.zeros((0, 4, 3), np.uint8), "not an image",
                                 np.array([["a"]])])
def test_bad_arrays_raise_input_error(bad) -> None:
    with pytest.raises(InputError):
        to_uint8_image(bad)


def test_read_image_files(tmp_path: Path) -> None:
    palette = Image.new("P", (10, 12))
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png")
    assert read_image_file(tmp_path / "p.png").shape == (12, 10, 4)
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "g16.png")
    assert (to_uint8_image(read_image_file(tmp_path / "g16.png")) == 156).all()
    Image.new("CMYK", (8, 8)).save(tmp_path / "c.jpg")
    assert read_image_file(tmp_path / "c.jpg").shape == (8, 8, 3)
    frames = [Image.new("RGB", (6, 6), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert read_image_file(tmp_path / "a.gif").shape[:2] == (6, 6)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (tmp_path / "notes.txt").write_text("hello")
    for name in ("corrupt.png", "notes.txt"):
        with pytest.raises(InputError, match="not an image this explorer can read"):
            read_image_file(tmp_path / name)
    with pytest.raises(InputError, match="could not be found"):
        read_image_file(tmp_path / "gone.png")


# --- input panel ---
def test_load_image_and_sample(explorer: Explorer, loaded) -> None:
    S = explorer.config.image_size
    assert loaded.image.shape == (S, S, 3) and loaded.reconstruction.shape == (S, S, 3)
    assert loaded.codes.shape == (1, 2, 4, 4) and loaded.factors == (3, 4, 5, 2, 1, 7)
    with torch.inference_mode():
        assert torch.equal(loaded.codes, explorer.model.encode_codes(to_tensor(loaded.image)))
    assert explorer.sample(seed=3).factors == explorer.sample(seed=3).factors
    with pytest.raises(InputError, match="Invalid factor values"):
        explorer.sample([99, 0, 0, 0, 0, 0])


def test_domain_notice(explorer: Explorer, monkeypatch: pytest.MonkeyPatch) -> None:
    check = explorer.domain_check()
    assert check is not None and check.threshold > 0 and check.typical >= 0
    monkeypatch.setattr(explorer, "_domain", DomainCheck(typical=0.001, threshold=0.002))
    far = explorer.load_image(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert "far from the training domain" in far.notice
    monkeypatch.setattr(explorer, "_domain", DomainCheck(typical=0.001, threshold=10.0))
    assert explorer.load_image(np.zeros((64, 64, 3), np.uint8)).notice == ""


def test_warm_up_computes_the_domain_check_and_every_render_table(checkpoint: Path) -> None:
    ex = Explorer(CausalVQ.from_pretrained(checkpoint), calibration_samples=4)
    assert not ex.dataset._ready.all()  # computed on first use otherwise
    want = ex.dataset.render(np.array([[1, 2, 3, 4, 1, 9]]))
    ex.warm_up()
    assert ex.dataset._ready.all() and ex._domain is not None
    assert np.array_equal(ex.dataset.render(np.array([[1, 2, 3, 4, 1, 9]])), want)  # the same pixels either way
    Explorer(CausalVQ(ModelConfig.tiny())).warm_up()  # no dataset: nothing to do


# --- code grid ---
def test_code_grid_picture() -> None:
    codes = torch.arange(32).reshape(1, 2, 4, 4) % 8
    img = draw_code_grid(codes, 8, cell=20)
    assert img.shape == (14 + 4 * 20, 2 * 4 * 20 + 10, 3) and img.dtype == np.uint8
    colors = code_colors(8)
    assert len({tuple(c) for c in colors}) == 8
    assert tuple(img[14 + 20 + 3, 20 + 16]) == tuple(colors[5])  # codebook 0, row 1, col 1 (code 5), near a corner
    changed = np.zeros(32, bool)
    changed[5] = True
    assert not np.array_equal(draw_code_grid(codes, 8, changed, cell=20), img)


# --- atomic interventions ---
def test_slider_actions_order_and_validation(explorer: Explorer) -> None:
    assert explorer.slider_actions([0] * F) == ()
    assert explorer.slider_actions([2, 0, -1, 0, 0, 1]) == (0, 0, 2 + F, 5)  # factor order; "f -" = f + F
    assert explorer.slider_steps([2.0, 0, -1, 0, 0, 1]) == (2, 0, -1, 0, 0, 1)  # whole floats, as sliders send
    cases = (([0] * (F - 1), "Expected 6 slider values"), ([100, 0, 0, 0, 0, 0], "floor_hue goes from -9 to 9"),
             ([0.5, 0, 0, 0, 0, 0], "whole number"), ([float("nan"), 0, 0, 0, 0, 0], "whole number"),
             ([0, "two", 0, 0, 0, 0], "whole number"), ([0, 0, None, 0, 0, 0], "object_hue needs a value"))
    for bad, message in cases:
        with pytest.raises(InputError, match=message):
            explorer.slider_actions(bad)


def test_apply_sliders_is_the_sequential_composition(explorer: Explorer, loaded) -> None:
    steps = [1, -2, 0, 0, 1, 0]
    r = explorer.apply_sliders(loaded.codes, steps)
    codes, mask = loaded.codes, torch.zeros(1, explorer.config.num_nodes, dtype=torch.bool)
    with torch.inference_mode():
        for a in (0, 1 + F, 1 + F, 4):
            t = explorer.model.transition_codes(codes, torch.tensor([a]))
            codes, mask = t.codes, mask | t.mask
        image = to_uint8(explorer.model.decode_codes(codes))[0]
    assert r.actions == (0, 1 + F, 1 + F, 4)
    assert torch.equal(r.codes, codes) and np.array_equal(r.intervened, mask[0].numpy())
    assert np.array_equal(r.image, image)
    assert np.array_equal(r.changed, (codes != loaded.codes).reshape(-1).numpy())
    again = explorer.apply_sliders(loaded.codes, steps)  # served from the prefix cache
    assert torch.equal(again.codes, r.codes) and np.array_equal(again.image, r.image)
    zero = explorer.apply_sliders(loaded.codes, [0] * F)
    assert np.array_equal(zero.image, loaded.reconstruction) and not zero.changed.any()


def test_prefix_cache_makes_a_one_step_move_one_transition(explorer: Explorer, loaded,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    explorer.apply_sliders(loaded.codes, [0, 0, 0, 3, 0, 0])
    calls = []
    original = explorer.model.transition_codes
    monkeypatch.setattr(explorer.model, "transition_codes", lambda *a, **k: calls.append(1) or original(*a, **k))
    explorer.apply_sliders(loaded.codes, [0, 0, 0, 4, 0, 0])
    assert len(calls) == 1


def test_ground_truth_moves_and_clips(explorer: Explorer, loaded) -> None:
    gt = explorer.ground_truth(loaded.factors, [1, 0, 0, 0, 0, -1])
    assert gt.factors == (4, 4, 5, 2, 1, 6) and not gt.clipped
    assert gt.image.shape == loaded.image.shape
    assert explorer.ground_truth(loaded.factors, [0, 0, 0, 0, 3, 0]).clipped  # shape 1 + 3 > 3


# --- causal graph and do ---
def _arrows(fig: Figure) -> int:
    """Arrows drawn in a node–link figure (every quiver's arrow count)."""
    return sum(c.N for c in fig.axes[0].collections if isinstance(c, Quiver))


def _title_count(fig: Figure) -> int:
    return int(fig.axes[0].get_title().split()[0])


def test_graph_and_intervened_nodes(explorer: Explorer, loaded) -> None:
    n = explorer.config.num_nodes
    g = explorer.graph(None)
    adj = g.adjacency
    assert adj.shape == (n, n) and 0 <= adj.min() and adj.max() <= 1 and g.intervened is None and g.rewired is None
    with torch.inference_mode():
        assert np.allclose(adj, explorer.model.causal_graph(None).adjacency.numpy())
        step = explorer.model.transition_codes(loaded.codes, torch.tensor([3]))
        over_all = explorer.model.causal_graph(3).mask
    one = explorer.graph(3, loaded.codes)
    assert one.adjacency.shape == (n, n)
    assert np.array_equal(one.intervened, step.mask[0].numpy())  # the mask of the forward pass itself
    assert np.array_equal(explorer.graph(3).intervened, (over_all > 0.5).numpy())  # in most constant grids
    # rewired: the intervened nodes' in-edges (columns, the config's "incoming")
    assert explorer.config.intervention_edges == "incoming"
    assert np.array_equal(one.rewired, np.broadcast_to(one.intervened[None, :], (n, n)))
    with pytest.raises(InputError, match="Unknown action"):
        explorer.graph(2 * F)
    marked = np.zeros(n, bool)
    marked[:3] = True
    assert isinstance(graph_heatmap(adj, explorer.config, marked), Figure)
    sel = select_edges(adj, 0.5, rewired=one.rewired)
    net = graph_network(sel, explorer.config, marked=marked, codes=loaded.codes)
    edges = int((adj > 0.5).sum() - (np.diag(adj) > 0.5).sum())
    assert _arrows(net) == _title_count(net) == len(sel) == sel.above == edges  # no cap
    empty = graph_network(select_edges(adj, 1.0), explorer.config)
    assert _arrows(empty) == _title_count(empty) == 0


def _spread_adjacency(n: int = 32, seed: int = 0) -> np.ndarray:
    """Edge probabilities spread over (0, 1), so thresholds between them matter."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, n))


def test_edge_selection_counts_and_threshold(explorer: Explorer) -> None:
    adj = _spread_adjacency(explorer.config.num_nodes)
    low, high = select_edges(adj, 0.5), select_edges(adj, 0.9)
    off = ~np.eye(len(adj), dtype=bool)
    assert len(low) == low.above == int(((adj > 0.5) & off).sum())
    assert 0 < len(high) < len(low)
    for sel in (low, high):
        fig = graph_network(sel, explorer.config)
        assert _arrows(fig) == _title_count(fig) == len(sel)  # the title states what is drawn
        assert f"**Drawn: {len(sel)}**" in describe_selection(sel)
        assert np.allclose(sel.prob, adj[sel.source, sel.target]) and (sel.source != sel.target).all()
        assert (np.diff(sel.prob) <= 0).all()  # strongest first


def test_top_k_parents_per_node(explorer: Explorer) -> None:
    adj = _spread_adjacency(explorer.config.num_nodes, seed=1)
    n, t = len(adj), 0.3
    for k in (1, 3):
        sel = select_edges(adj, t, top_k=k)
        for j in range(n):
            parents = sel.source[sel.target == j]
            above = [i for i in range(n) if i != j and adj[i, j] > t]
            want = sorted(above, key=lambda i: -adj[i, j])[:k]
            assert sorted(parents.tolist()) == sorted(want)
        assert sel.above == select_edges(adj, t).above  # the caption still counts the whole graph
        fig = graph_network(sel, explorer.config)
        assert _arrows(fig) == _title_count(fig) == len(sel) <= k * n
        assert f"{k} most probable parent" in describe_selection(sel)


def test_focus_node_prefers_an_intervened_node_with_edges() -> None:
    n, t = 6, 0.5
    adj = np.zeros((n, n))
    adj[0, 3] = adj[1, 3] = adj[2, 4] = 0.9  # node 3: two parents; node 4: one; nodes 0-2: one child each
    adj[5, 5] = 1.0  # a self-loop is not an edge
    intervened = np.array([False, False, False, True, True, True])
    assert focus_node(adj, t, 0, intervened) == 3  # off the mask: the intervened node with the most edges
    assert focus_node(adj, t, 4, intervened) == 4  # the picked node stays while it is intervened and has an edge
    assert focus_node(adj, t, 5, intervened) == 3  # intervened but edgeless (its self-loop does not count)
    assert focus_node(adj, 0.95, 4, intervened) == 4  # no edge anywhere: an intervened pick stays
    assert focus_node(adj, 0.95, 0, intervened) == 3  # ... else the first intervened node
    assert focus_node(adj, t, 5, None) == 3  # no action: every node is a candidate (3 has 2 edges, 0-2 one)
    assert focus_node(adj, t, 1, np.zeros(n, bool)) == 1  # an empty mask: every node; node 1 has an edge
    assert focus_node(adj, t, 5, np.zeros(n, bool)) == 3


def test_ego_view_and_table(explorer: Explorer) -> None:
    cfg = explorer.config
    adj = _spread_adjacency(cfg.num_nodes, seed=2)
    node, t = 5, 0.6
    sel = select_edges(adj, t, node=node)
    rows = ego_rows(sel, str)
    parents = [r for r in rows if r[0].startswith("parent")]
    children = [r for r in rows if r[0].startswith("child")]
    want_parents = {i: adj[i, node] for i in range(len(adj)) if i != node and adj[i, node] > t}
    want_children = {j: adj[node, j] for j in range(len(adj)) if j != node and adj[node, j] > t}
    assert {r[1] for r in parents} == set(want_parents) and len(parents) == len(want_parents)
    assert {r[1] for r in children} == set(want_children) and len(children) == len(want_children)
    for r in parents:
        assert r[3] == pytest.approx(want_parents[r[1]], abs=5e-4)  # the true probability
    for r in children:
        assert r[3] == pytest.approx(want_children[r[1]], abs=5e-4)
    assert sel.parents_above == len(want_parents) and sel.children_above == len(want_children)
    fig = graph_network(sel, cfg)
    assert _arrows(fig) == _title_count(fig) == len(rows)
    # within the top-k rule: the node's k best parents, and the nodes that have it among theirs
    top = select_edges(adj, t, top_k=2, node=node)
    whole = select_edges(adj, t, top_k=2)
    into, out = whole.target == node, whole.source == node
    assert set(top.source[top.parents]) == set(whole.source[into])
    assert set(top.target[top.children]) == set(whole.target[out])
    assert top.parents_above == len(want_parents)  # the counts before narrowing stay


def test_rewired_edges_are_highlighted(explorer: Explorer, loaded) -> None:
    g = explorer.graph(3, loaded.codes)
    sel = select_edges(g.adjacency, 0.0, rewired=g.rewired)
    assert np.array_equal(sel.rewired, g.intervened[sel.target])  # an intervened node's in-edges
    assert sel.rewired_above == int((g.rewired & ~np.eye(len(g.rewired), dtype=bool)).sum())
    fig = graph_network(sel, explorer.config, marked=g.intervened)
    colours = next(c for c in fig.axes[0].collections if isinstance(c, Quiver)).get_facecolors()  # (e, 4)
    reddish = colours[:, 0] > colours[:, 2]
    assert reddish.sum() == sel.rewired.sum()
    if sel.rewired.any():
        assert "rewired by the action" in describe_selection(sel)


def test_do_matches_model_do(explorer: Explorer, loaded) -> None:
    view = explorer.do(loaded.codes, node=5, code=3)
    with torch.inference_mode():
        ref = explorer.model.do(loaded.codes, 5, 3)
        image = to_uint8(explorer.model.decode_codes(ref.codes))[0]
        plain = explorer.model.transition_codes(loaded.codes, None)  # the pass on the unedited grid
    assert torch.equal(view.codes, ref.codes) and view.codes.reshape(-1)[5] == 3
    assert np.array_equal(view.image, image)
    expected = ref.changed[0].numpy().copy()
    expected[5] = False
    assert np.array_equal(view.changed, expected)
    flat = lambda c: c.reshape(-1).numpy()  # noqa: E731
    moved = flat(ref.codes) != flat(plain.codes)
    moved[5] = False
    assert np.array_equal(view.propagated, moved)
    drift = flat(plain.codes) != flat(loaded.codes)
    drift[5] = False
    assert np.array_equal(view.drift, drift)
    assert view.before == int(flat(loaded.codes)[5])
    for node, code in ((-1, 0), (explorer.config.num_nodes, 0), (0, explorer.config.codebook_size)):
        with pytest.raises(InputError):
            explorer.do(loaded.codes, node, code)


def test_do_edges_that_carried_the_change(explorer: Explorer, loaded) -> None:
    """Each propagated node is reached from the node by the carrier edges (one edge, or two through a child),
    every carrier is an edge of the pass, and the handler draws exactly the carriers."""
    handlers = app.Handlers(explorer)
    session = _session(handlers, explorer, loaded)
    found = 0
    for node in range(0, explorer.config.num_nodes, 3):
        for code in range(explorer.config.codebook_size):
            v = explorer.do(loaded.codes, node, code)
            assert not (v.carriers & ~v.graph).any() and not v.carriers[:, node].any()
            reach = v.carriers[node] | (v.carriers[node][:, None] & v.carriers).any(0)  # (n,)
            assert not (v.carriers.any(0) & ~reach).any()  # every carrier lies on a path from the node
            found += int(v.propagated.any())
            if v.propagated.any() and found == 1:
                _, _, fig, text = handlers.do(session, node, code)
                assert _arrows(fig) == _title_count(fig) == int(v.carriers.sum())
                assert "changed through propagation" in text
                assert all(str(j) in text for j in np.flatnonzero(v.propagated))
    assert found  # the untrained tiny model does propagate somewhere


def test_do_says_why_nothing_propagates(checkpoint: Path, loaded) -> None:
    """Without an edge out of the node nothing can move, and the sentence says so; with every edge present and
    nothing moved, it says the node is a parent and how little the children moved."""
    sessions = {}
    for name, bias in (("none", -30.0), ("all", 30.0)):
        model = CausalVQ.from_pretrained(checkpoint)
        with torch.no_grad():
            model.transition.discoverers.b2.fill_(bias)  # edge probabilities ≈ 0 or ≈ 1 everywhere
        ex = Explorer(model, source=name, calibration_samples=4)
        handlers = app.Handlers(ex)
        sessions[name] = (ex, handlers, _session(handlers, ex, loaded))
    ex, handlers, session = sessions["none"]
    v = ex.do(loaded.codes, 5, (int(loaded.codes.reshape(-1)[5]) + 1) % ex.config.codebook_size)
    assert not v.graph.any() and not v.propagated.any() and v.shift < 1e-6
    *_, text = handlers.do(session, 5, v.code)
    assert "no other node changed, because no node has node 5 as a parent above 0.5" in text
    ex, handlers, session = sessions["all"]
    for code in range(ex.config.codebook_size):
        v = ex.do(loaded.codes, 5, code)
        *_, text = handlers.do(session, 5, code)
        if code == v.before:
            assert "already has code" in text and not v.propagated.any()
        elif not v.propagated.any():
            assert f"node 5 is a parent of {int(v.graph[5].sum())} node(s) above 0.5" in text
            assert f"{v.shift:.3f} in total variation" in text
        else:
            assert "changed through propagation" in text


def test_code_choices_follow_dataset_frequency(explorer: Explorer, checkpoint: Path) -> None:
    cfg = explorer.config
    counts = explorer.code_counts()
    factors = explorer.dataset.sample_factors(explorer.code_images, np.random.default_rng(0))
    with torch.inference_mode():
        codes = torch.cat([explorer.model.encode_codes(to_model_input(im, cfg.image_size, cfg.in_channels))
                           for im in explorer.dataset.render(factors)])
    flat = explorer.model.flatten_codes(codes).numpy()  # (b, n)
    for node in (0, 7, cfg.num_nodes - 1):
        c = explorer.code_choices(node)
        want = np.bincount(flat[:, node], minlength=cfg.codebook_size)
        assert np.array_equal(counts[node], want)
        assert sorted(c.codes) == list(range(cfg.codebook_size)) and c.images == explorer.code_images
        assert list(c.counts) == [int(want[k]) for k in c.codes]
        assert list(c.counts) == sorted(c.counts, reverse=True)  # most frequent first
    handlers = app.Handlers(explorer)
    update = handlers.code_choices(_session(handlers, explorer), 7)
    c = explorer.code_choices(7)
    assert [v for _, v in update["choices"]] == list(c.codes) and update["value"] == c.codes[0]
    assert update["choices"][0][0].startswith(f"{c.codes[0]}: in {c.counts[0]} of {c.images} dataset images")
    bare = Explorer(CausalVQ.from_pretrained(checkpoint), dataset=False)
    assert bare.code_choices(7).codes == tuple(range(cfg.codebook_size)) and bare.code_choices(7).images == 0
    with pytest.raises(InputError):
        explorer.code_choices(cfg.num_nodes)


# --- retrieval ---
def test_retrieval_ranking(explorer: Explorer, loaded) -> None:
    y = explorer.apply_sliders(loaded.codes, [0, 0, 1, 0, 0, 0]).image
    view = explorer.retrieve(loaded.image, y)
    K = explorer.retrieval_steps
    probs = [p for _, p in view.ranking]
    assert len(view.ranking) == 2 * F * K and probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert {n for n, _ in view.ranking} == {f"{a} ×{k}" for a in explorer.action_names for k in range(1, K + 1)}
    with torch.inference_mode():
        ref = explorer.model.retrieve_action(to_tensor(loaded.image), to_tensor(y))
    # one step is the model's own retrieval score; the answer is the closest move over every (action, k)
    assert np.allclose(view.distances[:, 0], ref.scores[0].numpy(), atol=1e-5)
    assert view.distances[view.action, view.steps - 1] == view.distances.min()
    assert view.ranking[0][0] == f"{explorer.action_names[view.action]} ×{view.steps}"
    assert view.intervened.shape == view.changed.shape == (explorer.config.num_nodes,)
    same = explorer.retrieve(loaded.codes, loaded.codes)  # code grids work too
    assert not same.changed.any()
    assert isinstance(retrieval_figure(view), Figure)


def test_move_distances_follow_the_slider_chains(explorer: Explorer, loaded) -> None:
    y = explorer.apply_sliders(loaded.codes, [0, 0, 0, 0, 0, -2]).codes
    d = explorer.move_distances(loaded.codes, y, 3)[0]  # (a, 3)
    a = 2 * F - 1  # "orientation -"
    with torch.inference_mode():  # the k-th step's distribution after k − 1 argmax steps, as the sliders apply them
        c = explorer.apply_actions(loaded.codes, [a, a])[0]
        probs = explorer.model.transition_codes(c, torch.tensor([a])).probs
    cfg = explorer.config
    want = retrieval_distance(probs[:, None], explorer.model.flatten_codes(y), cfg.retrieval_score, cfg.renormalised_ce)
    assert float(d[a, 2]) == pytest.approx(float(want[0, 0]), rel=1e-5)


def test_reject_rule_answers_no_above_the_threshold_of_its_k(explorer: Explorer, loaded) -> None:
    cal = explorer.retrieval_calibration()  # the tiny checkpoint has no retrieval.json: measured here, once
    assert cal.thresholds == tuple(cal.thresholds) and len(cal.thresholds) == explorer.retrieval_steps
    assert cal is explorer.retrieval_calibration() and cal.split == "val" and "no retrieval.json" in \
        explorer.retrieval_notice
    other = loaded.codes.clone()  # y differs from x in one code (the same codes are always "no move")
    other[0, 0, 0, 0] = (other[0, 0, 0, 0] + 1) % explorer.config.codebook_size
    view = explorer.retrieve(loaded.codes, other)
    d = float(view.distances[view.action, view.steps - 1])
    assert view.threshold == cal.thresholds[view.steps - 1] and view.verdict in {"move", "too far", "two factors"}
    assert view.accepted == (view.verdict == "move")
    K, n = explorer.retrieval_steps, explorer.config.num_nodes
    wide = dict(limits=(float(n),) * K, margin=1e6)  # the other checks out of the way
    for changes, verdict, answer in (
            (dict(thresholds=(d + 1.0,) * K, **wide), "move", "Answer: **"),
            (dict(thresholds=(d / 2,) * K, **wide), "too far", "Answer: **no single-factor move"),
            (dict(thresholds=(d + 1.0,) * K, limits=(-1.0,) * K, margin=1e6), "too far", "Answer: **no single-"),
            (dict(thresholds=(d + 1.0,) * K, limits=(float(n),) * K, margin=-1e6), "two factors",
             "Answer: **no single-factor move explains this pair: two factors")):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(explorer, "_calibration", replace(cal, **changes))
            v = explorer.retrieve(loaded.codes, other)
            assert (v.verdict, v.accepted) == (verdict, verdict == "move")
            text = app.retrieval_text(explorer, v)
            assert text.startswith(answer) and "of the val split" in text  # and where the rule comes from
            assert isinstance(retrieval_figure(v), Figure)
    without = Explorer(explorer.model, dataset=False)  # no dataset and no retrieval.json: nothing to judge with
    v = without.retrieve(loaded.codes, other)
    assert v.accepted is None and v.verdict == "unjudged" and "cannot say no" in app.retrieval_text(without, v)
    same = explorer.retrieve(loaded.codes, loaded.codes)
    assert same.accepted is False and app.retrieval_text(explorer, same).startswith("Answer: **no move**")


@pytest.mark.slow
def test_shipped_checkpoint_retrieval_says_no_to_unrelated_images_and_finds_two_steps(monkeypatch) -> None:
    from causalvq.metrics import reject

    monkeypatch.setattr(reject, "calibrate", lambda *a, **k: pytest.fail("the shipped retrieval.json was not used"))
    ex = Explorer(CausalVQ.from_pretrained(SHIPPED_CHECKPOINT), source=str(SHIPPED_CHECKPOINT))
    x = ex.sample([2, 5, 1, 3, 1, 4])
    two = ex.sample([2, 5, 3, 3, 1, 4])  # object_hue + twice
    true = ex.retrieve(x.codes, two.codes)
    assert (ex.action_names[true.action], true.steps, true.verdict) == ("object_hue +", 2, "move")
    assert ex.retrieve(x.codes, ex.sample([8, 1, 7, 6, 3, 12]).codes).accepted is False  # unrelated
    assert ex.retrieve(x.codes, ex.sample([3, 6, 1, 3, 1, 4]).codes).accepted is False  # floor and wall hue moved
    assert ex.retrieve(x.codes, x.codes).verdict == "no move"  # the same codes, whatever the scores
    assert ex.retrieval_notice == ""


# --- valid ranges and the factor estimate ---
def test_moves_past_a_factors_end_are_marked_extrapolated(explorer: Explorer, loaded, tmp_path: Path) -> None:
    start = loaded.factors  # (3, 4, 5, 2, 1, 7); sizes 10, 10, 10, 8, 4, 15
    inside = explorer.apply_sliders(loaded.codes, [6, -4, 4, 0, 2, 0], start)
    assert not inside.extrapolated.any()
    past = explorer.apply_sliders(loaded.codes, [7, -5, 4, 0, 2, 0], start)
    assert past.extrapolated.tolist() == [True, True, False, False, False, False]
    assert explorer.apply_sliders(loaded.codes, [7, 0, 0, 0, 0, 0]).extrapolated is None  # start unknown
    t = explorer.traverse(loaded.codes, 2, start)
    assert t.extrapolated.shape == (F, 5)
    assert t.extrapolated[4].tolist() == [True, False, False, False, False]  # shape 1: −2 leaves 0..3
    assert not t.extrapolated[[0, 1, 2, 5]].any() and t.extrapolated[3].tolist() == [False] * 5
    plain = traversal_grid(replace(t, extrapolated=None))
    marked = traversal_grid(t)
    cell = explorer.config.image_size * max(1, 96 // explorer.config.image_size) + 2
    rows, cols = np.nonzero((marked[:plain.shape[0]] != plain).any(-1))  # only the one shaded cell differs
    assert len(rows) and rows.min() >= 20 + 4 * cell and rows.max() < 20 + 5 * cell + 2
    assert cols.max() - cols.min() < cell and marked.shape[0] > plain.shape[0]  # plus the legend line
    png, gif = save_traversal(t, tmp_path)
    with Image.open(gif) as g:
        first = np.asarray(g.convert("RGB"))
    _, plain_gif = save_traversal(replace(t, extrapolated=None), tmp_path / "plain")
    with Image.open(plain_gif) as g:
        assert not np.array_equal(first, np.asarray(g.convert("RGB")))  # frame −2 marks shape


@pytest.fixture(scope="module")
def probed(explorer: Explorer) -> Explorer:
    """The tiny explorer with a factor probe fitted on its codes of 64 dataset images."""
    ds = explorer.dataset
    factors = ds.sample_factors(64, np.random.default_rng(1))
    with torch.inference_mode():
        codes = explorer.model.encode_codes(explorer._prepare(ds.render(factors)))
    codes = codes.clone()  # a normal tensor: the fit differentiates through its rows
    probe = FactorProbe.fit_codes(codes, factors, ds.factor_names, ds.factor_sizes, explorer.config.codebook_size,
                                  ProbeSettings(num_images=64, steps=5), codes_digest=codes_digest(explorer.model))
    return Explorer(explorer.model, source=explorer.source, calibration_samples=4, probe=probe,
                    retrieval_steps=2, retrieval_pairs=2)


def test_every_input_gets_the_probes_estimate(probed: Explorer, tmp_path: Path) -> None:
    sample = probed.sample([3, 4, 5, 2, 1, 7])
    want = probed.probe.predict(sample.codes)
    assert torch.equal(sample.estimate.values, want.values) and sample.start == (3, 4, 5, 2, 1, 7)  # true values
    path = tmp_path / "up.png"
    Image.fromarray(probed.dataset.render(np.asarray([[1, 2, 3, 4, 2, 9]]))[0]).save(path)
    up = probed.load_image(str(path))
    assert up.factors is None and up.estimated and up.start == tuple(probed.probe.predict(up.codes).values[0].tolist())
    h = app.Handlers(probed)
    out = h.load_upload(str(path), app.Session(checkpoint=probed.source))
    assert "Probe estimate: floor_hue = " in out[4]
    session = out[0]
    pad = [0] * (h.slots - F)
    truth, text = h.ground_truth(session, 1, 0, 0, 0, 0, 0, *pad)
    gt = probed.ground_truth(up.start, [1, 0, 0, 0, 0, 0], estimated=True)
    assert text.startswith("**Estimated** ground truth") and np.array_equal(truth, display_image(gt.image))
    steps = [0] * F
    steps[4] = -(up.start[4] + 1) if up.start[4] <= 1 else 4 - up.start[4]  # one past shape's end (0..3)
    _, _, text = h.slide(session, *steps, *pad)
    assert "Extrapolation" in text and "estimated values" in text
    t = probed.traverse(up.codes, 2, up.start, up.estimated)
    assert t.estimated and t.extrapolated is not None


def test_without_a_probe_uploads_say_no_estimate_and_samples_keep_their_truth(handlers: app.Handlers,
                                                                            explorer: Explorer,
                                                                            tmp_path: Path) -> None:
    assert explorer.probe is None
    path = tmp_path / "up.png"
    Image.new("RGB", (32, 32), "teal").save(path)
    out = handlers.load_upload(str(path), _session(handlers, explorer))
    session, notice = out[0], out[4]
    assert "No factor estimate is available" in notice and session.input.start is None
    pad = [0] * (handlers.slots - F)
    truth, text = handlers.ground_truth(session, 1, 0, 0, 0, 0, 0, *pad)
    assert truth is None and text.startswith("No estimate is available")
    _, _, text = handlers.slide(session, 1, 0, 0, 0, 0, 0, *pad)
    assert "No estimate is available" in text
    sample = _session(handlers, explorer, explorer.sample([3, 4, 5, 2, 1, 7]))
    truth, text = handlers.ground_truth(sample, 1, 0, 0, 0, 0, 0, *pad)
    assert truth is not None and text.startswith("Ground truth: floor_hue = 4")


def test_checkpoint_probe_loading(probed: Explorer, checkpoint: Path, tmp_path: Path) -> None:
    assert load_checkpoint_probe(str(checkpoint), probed.model) == (None, "")  # no probe: no notice
    folder = tmp_path / "with-probe"
    probed.model.save_pretrained(folder)
    probed.probe.save(folder)
    probe, notice = load_checkpoint_probe(str(folder), probed.model)
    assert notice == "" and torch.equal(probe.weight, probed.probe.weight)
    (folder / "probe.safetensors").write_bytes(b"broken")
    probe, notice = load_checkpoint_probe(str(folder), probed.model)
    assert probe is None and "cannot be used" in notice and str(tmp_path) not in notice
    assert Explorer.from_checkpoint(str(checkpoint)).probe is None


def test_retrieval_bar_values_stay_inside_the_plot_and_clear_of_the_ticks(explorer: Explorer, loaded) -> None:
    """Issue 17: the longest bars' numbers ran past the plot's right edge and over the threshold ticks."""
    v = explorer.retrieve(loaded.codes, explorer.sample([9, 0, 0, 0, 3, 14]).codes)
    K = v.distances.shape[1]
    long_bars = np.linspace(5.0, 9.0, v.distances.size).reshape(v.distances.shape)  # long bars, close together
    for view in (replace(v, distances=long_bars, thresholds=np.full(K, 9.05)),  # each tick just past its bar
                 replace(v, distances=long_bars, thresholds=np.linspace(1.0, 20.0, K)),  # ticks past the bars
                 replace(v, distances=long_bars, thresholds=None)):
        fig = retrieval_figure(view)
        fig.canvas.draw()
        ax = fig.axes[0]
        box = ax.get_window_extent()
        texts = [t.get_window_extent() for t in ax.texts]
        assert len(texts) == min(12, view.distances.size)
        assert all(t.x0 >= box.x0 and t.x1 <= box.x1 for t in texts), "a number runs past the plot"
        if view.thresholds is not None:
            ticks = ax.transData.transform(ax.collections[-1].get_offsets())  # (rows, 2) in pixels
            bars = [b.get_window_extent().x1 for b in ax.patches]  # (rows,) the bars' ends
            for t, (tick_x, tick_y), end in zip(texts, ticks, bars):
                assert t.y0 <= tick_y <= t.y1 and not t.x0 - 2 <= tick_x <= t.x1 + 2, "a number is on its tick"
                assert t.x0 >= end, "a number is on its bar"


def _cell_rows(grid: np.ndarray) -> np.ndarray:
    """Which rows of a traversal grid cross the cells (mostly non-white; the label lines are mostly white)."""
    return (grid != 255).any(-1).mean(1) > 0.4


def _header_text_height(grid: np.ndarray) -> int:
    """Height in pixels of the traversal grid's column numbers (the dark pixels above the first row of cells)."""
    top = int(np.flatnonzero(_cell_rows(grid))[0])
    rows = np.flatnonzero((grid[:top].min(-1) < 128).any(1))
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_traversal_labels_are_readable_once_the_page_shrinks_the_grid(explorer: Explorer, loaded, steps) -> None:
    """Issue 17: at k = 8 the grid is ~1,800 px wide and the page shows it ~960 px wide: labels drawn at 13 px came
    out ~5 px tall. Measured on the picture: the column numbers' height once shrunk to the page."""
    t = explorer.traverse(loaded.codes, steps, loaded.start)
    grid = traversal_grid(t)
    shown = min(1.0, TRAVERSAL_SHOWN_PX / grid.shape[1])  # the page shrinks wider grids to its column
    assert _header_text_height(grid) * shown >= 0.6 * LABEL_PX  # digits are ~0.7 of the font size
    cells = np.flatnonzero(_cell_rows(grid))
    legend = np.flatnonzero((grid[cells.max() + 1:].min(-1) < 128).any(0))  # the line under them
    assert legend.max() < grid.shape[1] - 2  # the striped-cells legend is not cut at the right


# --- traversals ---
def test_traversal_columns_are_slider_results(explorer: Explorer, loaded, tmp_path: Path) -> None:
    k = 2
    t = explorer.traverse(loaded.codes, k)
    S = explorer.config.image_size
    assert t.images.shape == (F, 2 * k + 1, S, S, 3)
    for f in range(F):
        assert np.array_equal(t.images[f, k], loaded.reconstruction)
    for f, s in ((0, 2), (3, -1), (5, 1)):
        steps = [0] * F
        steps[f] = s
        assert np.array_equal(t.images[f, k + s], explorer.apply_sliders(loaded.codes, steps).image)
    grid = traversal_grid(t)
    assert grid.ndim == 3 and grid.shape[0] > F * S and grid.shape[1] > (2 * k + 1) * S
    png, gif = save_traversal(t, tmp_path)
    assert Image.open(png).size == (grid.shape[1], grid.shape[0])
    with Image.open(gif) as g:
        assert g.n_frames == 2 * (2 * k + 1) - 2 and g.info.get("loop") == 0
    with pytest.raises(InputError):
        explorer.traverse(loaded.codes, 0)


def test_render_examples_names_carry_factors(explorer: Explorer, tmp_path: Path) -> None:
    paths = render_examples(explorer.dataset, tmp_path, count=2, seed=1)
    for p in paths:
        factors = app._example_factors(p)
        assert factors is not None and len(factors) == F
        assert np.array_equal(np.asarray(Image.open(p)), explorer.dataset.render(np.asarray([factors]))[0])


# --- the app's handlers, called directly ---
def _session(handlers: app.Handlers, explorer: Explorer, loaded=None) -> app.Session:
    return app.Session(checkpoint=explorer.source, input=loaded)


def test_handlers_input_events(handlers: app.Handlers, explorer: Explorer, tmp_path: Path) -> None:
    slots = handlers.slots
    path = tmp_path / "in.png"
    Image.new("RGB", (48, 40), "orange").save(path)
    out = handlers.load_upload(str(path), _session(handlers, explorer))
    assert len(out) == 5 + slots + 5
    session, shown, recon, grid, notice = out[:5]
    assert session.input is not None and session.input.factors is None
    assert shown.shape == recon.shape and grid.ndim == 3 and isinstance(notice, str)
    assert list(out[5:5 + slots]) == [0] * slots
    out = handlers.sample_random(_session(handlers, explorer))
    assert len(out) == 5 + slots + 5 + slots and out[0].input.factors is not None
    assert list(out[-slots:-slots + F]) == list(out[0].input.factors)
    out = handlers.sample_factors(_session(handlers, explorer), 1, 2, 3, 4, 0, 5, None, None)
    assert out[0].input.factors == (1, 2, 3, 4, 0, 5) and "Dataset sample" in out[4]
    if handlers.examples:
        out = handlers.load_example(_session(handlers, explorer), 0)
        assert out[0].input.factors == tuple(app._example_factors(handlers.examples[0]))


def test_handlers_refuse_bad_input(handlers: app.Handlers, explorer: Explorer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(gr.Error, match="not an image this explorer can read"):
        handlers.load_upload(str(bad), _session(handlers, explorer))
    with pytest.raises(gr.Error, match="Choose an image file"):
        handlers.load_upload(None, _session(handlers, explorer))
    with pytest.raises(gr.Error, match="Load an image first"):
        handlers.do(_session(handlers, explorer), 0, 0)
    with pytest.raises(gr.Error, match="Choose a value for every factor"):
        handlers.sample_factors(_session(handlers, explorer), None, 0, 0, 0, 0, 0)
    with pytest.raises(gr.Error, match="No model is loaded"):
        app.Handlers(None).sample_random(app.Session(checkpoint=""))
    # sliders before any input do nothing (no error toast while the first image loads)
    assert handlers.slide(_session(handlers, explorer), *([1] * handlers.slots)) == (gr.skip(),) * 3
    loaded = _session(handlers, explorer, explorer.sample([0] * F))
    with pytest.raises(gr.Error, match="The slider for wall_hue needs a value"):
        handlers.slide(loaded, 0, None, *([0] * (handlers.slots - 2)))
    with pytest.raises(gr.Error, match="The slider for floor_hue goes from -9 to 9, got 10"):
        handlers.ground_truth(loaded, 10, *([0] * (handlers.slots - 1)))
    # the page's move skips the queue, whose errors gradio's page does not show: the sentence goes in the caption
    refused = handlers.move(loaded, 10, *([0] * (handlers.slots - 1)))
    assert refused[:2] == refused[3:] == (gr.skip(),) * 2
    assert refused[2] == f"**{app.REFUSED}** The slider for floor_hue goes from -9 to 9, got 10."


def test_handlers_intervention_events(handlers: app.Handlers, explorer: Explorer, loaded) -> None:
    session = _session(handlers, explorer, loaded)
    pad = [0] * (handlers.slots - F)
    image, grid, text = handlers.slide(session, 2, 0, 0, 0, 0, 0, *pad)
    assert np.array_equal(image, display_image(explorer.apply_sliders(loaded.codes, [2, 0, 0, 0, 0, 0]).image))
    assert grid.ndim == 3 and "inside" in text and "Extrapolation" not in text  # floor_hue 3 + 2 = 5 of 0..9
    _, _, text = handlers.slide(session, 0, 0, 0, 0, 3, 0, *pad)  # shape 1 + 3 = 4, past 0..3
    assert "Extrapolation" in text and "shape +3 from 1 (range 0..3)" in text
    truth, text = handlers.ground_truth(session, 2, 0, 0, 0, 0, 0, *pad)
    assert truth is not None and "Ground truth" in text
    out = handlers.reset(session)
    assert list(out[:handlers.slots]) == [0] * handlers.slots
    assert np.array_equal(out[handlers.slots], display_image(loaded.reconstruction))


def test_handlers_graph_do_retrieval_traversal(handlers: app.Handlers, explorer: Explorer, loaded) -> None:
    session = _session(handlers, explorer, loaded)
    heat, net, text, table = handlers.graph(session, app.NO_ACTION, 0.5, app.GRAPH_OVER[0])
    assert isinstance(heat, Figure) and isinstance(net, Figure) and "no action" in text
    assert f"**Drawn: {_arrows(net)}**" in text and _title_count(net) == _arrows(net)  # caption = drawing
    calls = []
    original = explorer.model.causal_graph
    with pytest.MonkeyPatch.context() as mp:  # one model call per graph event, none for a graph already drawn
        mp.setattr(explorer.model, "causal_graph", lambda *a, **k: calls.append(1) or original(*a, **k))
        heat, net, text, table = handlers.graph(session, 4, 0.3, app.GRAPH_OVER[1], app.GRAPH_VIEWS[1], 0, 6)
        assert len(calls) == 1
        for t, k, node, view in ((0.6, 0, 6, app.GRAPH_VIEWS[1]), (0.3, 2, 6, app.GRAPH_VIEWS[0]),
                                 (0.3, 0, 9, app.GRAPH_VIEWS[1])):
            handlers.graph(session, 4, t, app.GRAPH_OVER[1], view, k, node)
        assert len(calls) == 1
    g = explorer.graph(4, loaded.codes)
    marked = g.intervened
    assert f"Intervened nodes (red): {app._node_list(marked)}." in text
    ego = select_edges(g.adjacency, 0.3, 0, 6, g.rewired)
    assert _arrows(net) == len(ego) == len(table["data"]) and table["headers"][0] == "edge"
    assert f"**Drawn: {len(ego)}**" in text and f"Node 6 has {ego.parents_above} parent(s)" in text
    with pytest.raises(gr.Error, match="Load an image first"):
        handlers.graph(app.Session(checkpoint=explorer.source), 2, 0.3, app.GRAPH_OVER[1])
    # the panel opened or its action changed: the node picker moves onto the intervened node with the most edges,
    # and its do() codes come in the same event
    heat, net, text, table, node, codes = handlers.graph_focus(session, 4, 0.3, app.GRAPH_OVER[1], app.GRAPH_VIEWS[0],
                                                               3, 0)
    focus = focus_node(g.adjacency, 0.3, 0, g.intervened)
    assert node["value"] == focus and (not marked.any() or marked[focus])
    assert f"Table: node {focus}'s" in text
    assert codes["value"] == explorer.code_choices(focus).codes[0]
    assert [c for _, c in codes["choices"]] == list(explorer.code_choices(focus).codes)
    *_, text, table, codes = handlers.graph_node(session, 4, 0.3, app.GRAPH_OVER[1], app.GRAPH_VIEWS[1], 0, 9)
    assert "Node 9 has" in text and [c for _, c in codes["choices"]] == list(explorer.code_choices(9).codes)
    image, grid, fig, text = handlers.do(session, 3, 1)
    assert image.ndim == 3 and grid.ndim == 3 and isinstance(fig, Figure) and text.startswith("do(node 3")
    x, y = handlers.pair_from_sliders(session, 0, 0, 1, 0, 0, 0, *([0] * (handlers.slots - F)))
    fig, grid, text = handlers.retrieve(session, x, y)
    assert isinstance(fig, Figure) and text.startswith("Answer:")
    with pytest.raises(gr.Error, match="Both x and y"):
        handlers.retrieve(session, x, None)
    grid, png, gif = handlers.traverse(session, 2)
    assert grid.ndim == 3 and Path(png).suffix == ".png" and Path(gif).suffix == ".gif"


def test_handlers_checkpoint_switch(handlers: app.Handlers, explorer: Explorer, tmp_path: Path) -> None:
    other = tmp_path / "other"
    CausalVQ(ModelConfig.tiny()).save_pretrained(other)  # factors a, b, c: no dataset
    out = handlers.change_checkpoint(str(other), _session(handlers, explorer))
    session, info = out[:2]
    assert session.checkpoint == str(other) and session.input is None and "a, b, c" in info
    assert "`other`" in info and str(tmp_path) not in info  # named, never by the machine's path
    sliders = out[2:2 + handlers.slots]
    assert [s.get("label") for s in sliders[:3]] == ["a", "b", "c"] and sliders[3]["visible"] is False
    with pytest.raises(gr.Error, match="Keeping the current checkpoint"):
        handlers.change_checkpoint(str(tmp_path / "missing"), session)


def test_gallery_selection(handlers: app.Handlers, explorer: Explorer) -> None:
    if not handlers.examples:
        pytest.skip("no assets/examples")
    evt = gr.SelectData(None, {"index": 1, "value": None})
    out = handlers.select_example(_session(handlers, explorer), evt)
    assert out[0].input is not None


def test_png_bytes_roundtrip_of_display(loaded) -> None:
    buf = io.BytesIO()
    Image.fromarray(display_image(loaded.image)).save(buf, format="PNG")
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    assert np.array_equal(to_uint8(to_model_input(back, loaded.image.shape[0], 3))[0], loaded.image)


def test_app_without_a_checkpoint_opens_with_a_notice(tmp_path: Path) -> None:
    res = load_model(str(tmp_path / "missing"), fallback=tmp_path / "also-missing")
    assert res.model is None
    demo = app.build_demo(None, notice=res.notice, choices=[])
    assert isinstance(demo, gr.Blocks)
    assert "No checkpoint found" in app.describe(None, res.notice)
    session = demo.handlers.new_session()
    out = demo.handlers.first_example(session)
    assert out[0] is session and all(v == gr.skip() for v in out[1:])


# --- factor maps ---
@pytest.fixture(scope="module")
def small_maps(checkpoint: Path) -> Explorer:
    return Explorer(CausalVQ.from_pretrained(checkpoint), calibration_samples=4, map_pairs=48)


def test_factor_maps_are_shares_of_dataset_pairs_computed_once(small_maps: Explorer) -> None:
    maps = small_maps.factor_maps()
    cfg = small_maps.config
    assert maps.mask.shape == maps.changed.shape == (cfg.num_actions, cfg.num_codebooks, cfg.grid_size, cfg.grid_size)
    assert int(maps.pairs.sum()) == 48
    assert 0.0 <= float(maps.mask.min()) and float(maps.mask.max()) <= 1.0 and float(maps.changed.max()) <= 1.0
    assert small_maps.factor_maps() is maps  # cached


def test_action_map_is_the_step_on_this_input_and_follows_the_action(small_maps: Explorer, loaded) -> None:
    model = small_maps.model
    views = [small_maps.action_map(loaded.codes, a) for a in range(small_maps.config.num_actions)]
    for a, v in enumerate(views):
        with torch.inference_mode():
            tr = model.transition_codes(loaded.codes, torch.tensor([a]))
        assert np.array_equal(v.mask, tr.mask[0].numpy())
        assert np.array_equal(v.changed, (model.flatten_codes(tr.codes) != model.flatten_codes(loaded.codes))[0])
        assert v.pairs == int(small_maps.factor_maps().pairs[a])
    # the maps are the chosen action's: not all actions share one picture
    assert any(not np.array_equal(views[0].mask_share, v.mask_share) for v in views[1:])
    with pytest.raises(InputError, match="Unknown action"):
        small_maps.action_map(loaded.codes, small_maps.config.num_actions)
    fig = factor_map_figure(views[0], small_maps.config, "t")
    assert isinstance(fig, Figure) and len(fig.axes) >= 2 * small_maps.config.num_codebooks
    over = overlay_nodes(loaded.image, small_maps.config, np.ones_like(views[0].mask), views[0].changed)
    plain = overlay_nodes(loaded.image, small_maps.config, np.zeros_like(views[0].mask),
                          np.zeros_like(views[0].changed))
    assert over.shape == plain.shape and over.shape[-1] == 3
    assert (over[..., 0].astype(int) - over[..., 1]).mean() > (plain[..., 0].astype(int) - plain[..., 1]).mean()


def test_factor_maps_handler(small_maps: Explorer, loaded, checkpoint: Path) -> None:
    handlers = app.Handlers(small_maps)
    session = app.Session(checkpoint=small_maps.source, input=loaded)
    fig0, overlay, text0 = handlers.factor_maps(session, 0)
    fig1, _, text1 = handlers.factor_maps(session, 1)
    assert isinstance(fig0, Figure) and overlay.ndim == 3
    assert small_maps.action_names[0] in text0 and small_maps.action_names[1] in text1
    assert text0 != text1
    with pytest.raises(gr.Error, match="Load an image first"):
        handlers.factor_maps(app.Session(checkpoint=small_maps.source), 0)
    bare = app.Handlers(Explorer(CausalVQ.from_pretrained(checkpoint), dataset=False, source="bare"))
    fig, overlay, text = bare.factor_maps(app.Session(checkpoint="bare", input=loaded), 0)
    assert fig is None and overlay.ndim == 3 and "No procedural dataset" in text


# --- defects: names, bad uploads ---
def test_checkpoints_are_named_never_by_a_machine_path(explorer: Explorer, checkpoint: Path, tmp_path: Path) -> None:
    assert display_name(str(checkpoint)) == checkpoint.name
    assert display_name("someone/causalvq-shapes3d") == "someone/causalvq-shapes3d"  # a Hub repo id
    assert str(checkpoint) not in app.describe(explorer) and f"`{checkpoint.name}`" in app.describe(explorer)
    res = load_model(str(tmp_path / "missing"), fallback=checkpoint)
    assert str(tmp_path) not in res.notice and "`missing`" in res.notice


def test_a_bad_upload_in_the_page_changes_nothing_but_the_upload_box(handlers: app.Handlers, explorer: Explorer,
                                                                     loaded, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    with caplog.at_level("WARNING", logger="causalvq.app"):
        out = handlers.upload_in_page(str(bad), _session(handlers, explorer, loaded))
    assert len(out) == 5 + handlers.slots + 5 + 1
    assert all(v == gr.skip() for v in out[:-1]) and out[-1] is None  # state, images, sliders kept; box cleared
    assert len(caplog.records) == 1 and "not an image this explorer can read" in caplog.records[0].getMessage()
    good = tmp_path / "good.png"
    Image.new("RGB", (48, 40), "orange").save(good)
    out = handlers.upload_in_page(str(good), _session(handlers, explorer, loaded))
    assert out[0].input is not None and out[0].input is not loaded and out[-1] is None
