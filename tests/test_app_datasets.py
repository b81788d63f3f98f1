"""The explorer follows the checkpoint's dataset (issue 20): the shipped shapes3d and dSprites checkpoints, and a
checkpoint trained on a user's own ``.npz``, through the app's handlers called directly.

Nothing here pins a checkpoint's image size, codebook or scores (the shipped checkpoints are retrained): the tests
read the factors from each checkpoint's config and compare what the handlers show with the dataset itself.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

import app
from causalvq.config import SHAPES3D_FACTORS, SHAPES3D_SIZES, ModelConfig
from causalvq.data import DSprites, Shapes3D
from causalvq.explore.checkpoints import (
    ENV_CHECKPOINT,
    ENV_CHOICES,
    ENV_DATA,
    SHIPPED_CHECKPOINTS,
    checkpoint_choices,
    display_name,
    example_factors,
    example_images,
)
from causalvq.explore.explorer import Explorer
from causalvq.model import CausalVQ

SHAPES3D, DSPRITES = SHIPPED_CHECKPOINTS


def _updates(out: tuple, slots: int) -> dict:
    """``change_checkpoint``'s outputs by name (order: ``build_demo``'s ``model_outputs``)."""
    session, info, *rest = out
    sliders, menus = rest[:slots], rest[slots:2 * slots]
    named = dict(zip(("node", "code", "action", "steps", "random", "map_action", "top_k"), rest[2 * slots:]))
    inputs = rest[2 * slots + 7:2 * slots + 16]
    return dict(session=session, info=info, sliders=sliders, menus=menus, gallery=rest[2 * slots + 16],
                input_image=inputs[0], panels=rest[2 * slots + 17:], **named)


@pytest.fixture(scope="module")
def handlers() -> app.Handlers:
    """The app's handlers as ``python app.py`` builds them: the default checkpoint open, both shipped ones listed."""
    for path in SHIPPED_CHECKPOINTS:
        if not (path / "config.json").is_file():
            pytest.skip(f"{path.name} is not shipped in this checkout")
    torch.manual_seed(0)
    explorer = Explorer.from_checkpoint(str(SHAPES3D), fallback=None)
    return app.Handlers(explorer, app.MIN_SLOTS, [str(p) for p in SHIPPED_CHECKPOINTS])


def test_both_shipped_checkpoints_are_in_the_menu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CHECKPOINT, raising=False)
    monkeypatch.delenv(ENV_CHOICES, raising=False)
    names = [display_name(c) for c in checkpoint_choices()]
    assert names[0] == SHAPES3D.name and DSPRITES.name in names  # the default first
    root = Path(__file__).resolve().parent.parent
    front = (root / "README.md").read_text().split("---\n")[1]  # the Space's front matter names both
    assert all(p.name in front for p in SHIPPED_CHECKPOINTS)
    docs = (root / "docs" / "app.md").read_text()
    assert all(f"assets/{p.name}" in docs for p in SHIPPED_CHECKPOINTS)


def test_the_app_opens_on_the_dsprites_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """``CAUSALVQ_CHECKPOINT=assets/causalvq-dsprites python app.py``: its gallery and factors from the start, and
    the default checkpoint still in the menu."""
    if not (DSPRITES / "config.json").is_file():
        pytest.skip(f"{DSPRITES.name} is not shipped in this checkout")
    monkeypatch.setenv(ENV_CHECKPOINT, str(DSPRITES))
    monkeypatch.delenv(ENV_CHOICES, raising=False)
    h = app.load_demo().handlers
    ex = h.explorer(h.new_session())
    assert ex.source == str(DSPRITES) and ex.dataset.name == "dsprites" and not ex.notice
    assert h.examples == [str(p) for p in example_images(DSprites())]
    assert set(h.sources) == {p.name for p in SHIPPED_CHECKPOINTS}
    session = h.first_example(h.new_session())[0]
    assert session.input.factors == tuple(example_factors(h.examples[0]))


def test_each_dataset_has_its_own_shipped_examples() -> None:
    for dataset in (Shapes3D(), DSprites()):
        paths = example_images(dataset)
        assert len(paths) >= 4, f"no examples shipped for {dataset.name}"
        for p in paths:  # each is the dataset's own image at the factors in its name
            factors = np.asarray([example_factors(p)])
            assert np.array_equal(np.asarray(Image.open(p)), dataset.render(factors)[0].squeeze(-1)
                                  if dataset.image_shape[-1] == 1 else dataset.render(factors)[0])
            assert p.stat().st_size < 8_000  # kept small
    assert not set(example_images(Shapes3D())) & set(example_images(DSprites()))


def test_switching_the_checkpoint_changes_sliders_menus_and_gallery(handlers: app.Handlers) -> None:
    slots = handlers.slots
    start = handlers.new_session()
    shapes = handlers.explorer(start)
    assert handlers.examples == [str(p) for p in example_images(shapes.dataset)]

    out = _updates(handlers.change_checkpoint(DSPRITES.name, start), slots)
    ds = handlers.explorer(out["session"])
    cfg = ds.config
    assert out["session"].checkpoint == str(DSPRITES) and out["session"].input is None
    assert f"`{DSPRITES.name}`" in out["info"] and "greyscale" in out["info"]
    F = cfg.num_factors
    assert [s["label"] for s in out["sliders"][:F]] == list(cfg.factor_names) == list(DSprites.factor_names)
    assert [s["maximum"] for s in out["sliders"][:F]] == [n - 1 for n in cfg.factor_sizes]
    assert all(s["visible"] for s in out["sliders"][:F]) and not any(s["visible"] for s in out["sliders"][F:])
    assert [m["label"] for m in out["menus"][:F]] == list(cfg.factor_names)
    assert [len(m["choices"]) for m in out["menus"][:F]] == list(cfg.factor_sizes)
    assert out["menus"][0]["choices"][0][0].endswith(ds.dataset.shape_names[0])  # the dataset's own value names
    assert [n for n, _ in out["map_action"]["choices"]] == list(cfg.action_names)
    assert out["random"]["interactive"] is True
    gallery = out["gallery"]["value"]
    assert gallery == [str(p) for p in example_images(ds.dataset)] and out["gallery"]["visible"]
    assert not set(gallery) & set(handlers.examples)  # not the shapes3d pictures
    assert out["input_image"] is None and all(p in (None, "") for p in out["panels"])  # old answers cleared

    # the new checkpoint's first example loads (the page chains it after the switch), with its true factors
    loaded = handlers.first_example(out["session"])
    assert loaded[0].input.factors == tuple(example_factors(gallery[0]))
    assert loaded[4].startswith("Dataset sample: " + cfg.factor_names[0])
    # a click in the new gallery opens the new dataset's picture
    assert handlers.load_example(out["session"], 1)[0].input.factors == tuple(example_factors(gallery[1]))

    back = _updates(handlers.change_checkpoint(SHAPES3D.name, out["session"]), slots)
    assert [s["label"] for s in back["sliders"][:shapes.config.num_factors]] == list(shapes.factor_names)
    assert back["gallery"]["value"] == handlers.examples


def test_dsprites_samples_ground_truth_and_greyscale_display(handlers: app.Handlers) -> None:
    session = _updates(handlers.change_checkpoint(DSPRITES.name, handlers.new_session()), handlers.slots)["session"]
    ex = handlers.explorer(session)
    F, slots = ex.config.num_factors, handlers.slots
    assert ex.dataset.name == "dsprites" and ex.config.in_channels == 1
    out = handlers.sample_factors(session, 2, 3, 10, 5, 20, *([None] * (slots - F)))
    session, shown, recon, grid = out[:4]
    assert session.input.factors == (2, 3, 10, 5, 20) and "shape = 2: heart" in out[4]
    assert shown.ndim == 2 and recon.ndim == 2 and grid.ndim == 3  # greyscale pictures shown as greyscale
    assert shown.shape == recon.shape == (64, 64)  # the model's own pixels (the page enlarges them)
    pos_x = ex.factor_names.index("pos_x")
    steps = [0] * slots
    steps[pos_x] = 3
    image, _, text, truth, truth_text = handlers.move(session, *steps)
    assert image.ndim == 2 and truth.ndim == 2 and "inside" in text
    want = ex.load_image(ex.dataset.render(np.array([[2, 3, 10, 8, 20]]))[0])  # pos_x + 3: the true picture
    assert np.array_equal(truth, app.display_image(want.image))
    assert truth_text.startswith("Ground truth") and "pos_x = 8" in truth_text
    out = handlers.sample_random(session)
    menus = out[-slots:][:F]
    assert tuple(menus) == out[0].input.factors and all(0 <= v < n for v, n in zip(menus, ex.config.factor_sizes))


# --- a checkpoint trained on a user's own .npz ---
NAMES, SIZES = ("colour", "size", "slant"), (3, 2, 4)


@pytest.fixture()
def npz_checkpoint(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """(checkpoint folder, data file, its factors, its images): a tiny model over factors no renderer has, its
    recipe.toml naming the data file, the grid incomplete (one combination missing)."""
    rng = np.random.default_rng(0)
    factors = np.stack(np.meshgrid(*[np.arange(s) for s in SIZES], indexing="ij"), -1).reshape(-1, 3)[1:]
    images = rng.integers(0, 256, (len(factors), 20, 20, 3), dtype=np.uint8)
    data = tmp_path / "my_shapes.npz"
    np.savez(data, images=images, factors=factors, factor_names=np.array(NAMES))
    torch.manual_seed(0)
    folder = tmp_path / "mine"
    CausalVQ(ModelConfig.tiny(factor_names=NAMES, factor_sizes=SIZES)).save_pretrained(folder)
    (folder / "recipe.toml").write_text(f'[data]\nname = "npz"\npath = "{data}"\n')
    return folder, data, factors, images


def test_npz_checkpoint_without_its_data_file_opens_with_sampling_disabled(npz_checkpoint, monkeypatch) -> None:
    folder, data, _, _ = npz_checkpoint
    data.rename(data.with_name("elsewhere.npz"))  # trained here, opened on a machine without the file
    monkeypatch.delenv(ENV_DATA, raising=False)
    ex = Explorer.from_checkpoint(str(folder), fallback=None)
    assert ex.dataset is None
    assert "sampling and ground truth are disabled" in ex.notice and "`my_shapes.npz`" in ex.notice
    assert ENV_DATA in ex.notice and str(data.parent) not in ex.notice  # the file's name, never its path
    h = app.Handlers(ex, app.MIN_SLOTS, [str(folder)])
    assert "disabled" in app.describe(ex)
    specs = app.widget_specs(ex, h.slots)
    assert specs.random["interactive"] is False and not any(m["visible"] for m in specs.menus)
    session = h.new_session()
    with pytest.raises(gr.Error, match="Sampling is disabled"):
        h.sample_random(session)
    with pytest.raises(gr.Error, match="Sampling is disabled"):  # the (hidden) menus' button says the same
        h.sample_factors(session, *([None] * h.slots))
    assert h.examples == [] and h.first_example(session)[1:] == (gr.skip(),) * (4 + h.slots + 5)
    upload = folder / "upload.png"
    Image.new("RGB", (30, 30), "teal").save(upload)
    out = h.load_upload(str(upload), session)  # uploads still work
    assert out[0].input is not None and out[-3] is None and out[-2].startswith("No ground truth")


def test_npz_checkpoint_with_its_data_file_samples_and_renders_ground_truth(npz_checkpoint, monkeypatch) -> None:
    folder, data, factors, images = npz_checkpoint
    for where in ("recipe", "env"):
        if where == "env":  # the recipe's path is gone, CAUSALVQ_DATA gives the file
            moved = data.with_name("copy.npz")
            data.rename(moved)
            monkeypatch.setenv(ENV_DATA, str(moved))
        ex = Explorer.from_checkpoint(str(folder), fallback=None)
        assert ex.dataset is not None and ex.dataset.factor_names == NAMES, where
        assert "disabled" not in ex.notice
        h = app.Handlers(ex, app.MIN_SLOTS, [str(folder)])
        slots = h.slots
        out = h.sample_factors(h.new_session(), 1, 0, 2, *([None] * (slots - 3)))
        session = out[0]
        row = int(np.flatnonzero((factors == [1, 0, 2]).all(1))[0])
        assert session.input.factors == (1, 0, 2) and "Dataset sample" in out[4]
        assert np.array_equal(session.input.image, ex.load_image(images[row]).image)  # the file's own picture
        steps = [0, 1, 1, *([0] * (slots - 3))]
        truth, text = h.ground_truth(session, *steps)
        moved_row = int(np.flatnonzero((factors == [1, 1, 3]).all(1))[0])
        assert np.array_equal(truth, app.display_image(ex.load_image(images[moved_row]).image))
        assert text.startswith("Ground truth") and "slant = 3" in text
        session = h.sample_factors(session, 0, 0, 1, *([None] * (slots - 3)))[0]
        truth, text = h.ground_truth(session, 0, 0, -1, *([0] * (slots - 3)))  # to (0, 0, 0): not in the file
        assert truth is None and "no image at" in text
        with pytest.raises(gr.Error, match="no image at"):
            h.sample_factors(session, 0, 0, 0, *([None] * (slots - 3)))
        first = h.first_example(h.new_session())  # no shipped examples: the page opens on a sample of the file
        assert first[0].input is not None and first[0].input.factors is not None


def test_every_panel_answers_on_the_dsprites_checkpoint() -> None:
    """Graph, do(), retrieval, traversals and factor maps on the greyscale dSprites checkpoint (small one-off
    measurements: 48 map pairs, 32 images behind the do() order)."""
    if not (DSPRITES / "config.json").is_file():
        pytest.skip(f"{DSPRITES.name} is not shipped in this checkout")
    from matplotlib.figure import Figure

    ex = Explorer(CausalVQ.from_pretrained(DSPRITES), source=str(DSPRITES), map_pairs=48, code_images=32)
    h = app.Handlers(ex, app.MIN_SLOTS, [str(DSPRITES)])
    session = h.first_example(h.new_session())[0]
    F, slots = ex.config.num_factors, h.slots
    heat, net, text, table = h.graph(session, 0, 0.5, app.GRAPH_OVER[1])
    assert isinstance(heat, Figure) and ex.action_names[0] in text
    image, grid, _, text = h.do(session, 3, h.code_choices(session, 3)["value"])
    assert image.ndim == 2 and grid.ndim == 3 and text.startswith("do(node 3")  # greyscale, coloured code grid
    steps = [0] * slots
    steps[ex.factor_names.index("pos_y")] = 1
    x, y = h.pair_from_sliders(session, *steps)
    assert x.ndim == y.ndim == 2
    _, _, text = h.retrieve(session, x, y)
    assert text.startswith("Answer:") and "retrieval.json" in text  # the checkpoint's own reject rule
    trav, png, gif = h.traverse(session, 2)
    assert trav.shape[0] > F * ex.config.image_size and Path(png).is_file() and Path(gif).is_file()  # F rows
    fig, overlay, text = h.factor_maps(session, ex.action_names.index("pos_x +"))
    pairs = int(ex.factor_maps().pairs[ex.action_names.index("pos_x +")])  # its share of the 48 test pairs
    assert isinstance(fig, Figure) and overlay.ndim == 3 and f"Over {pairs} one-step test pairs of “pos_x +”" in text


def test_graph_caption_says_what_the_graph_does_not_draw() -> None:
    """With B28 an intervened node reads its neighbourhood outside the graph: the caption says so under an action,
    and says nothing of it without an action or without the switch."""
    for context in (0, 1):
        torch.manual_seed(0)
        config = ModelConfig.tiny(factor_names=SHAPES3D_FACTORS, factor_sizes=SHAPES3D_SIZES,
                                  intervention_context=context)
        ex = Explorer(CausalVQ(config), source=f"tiny{context}", calibration_samples=4)
        h = app.Handlers(ex)
        session = app.Session(ex.source)
        *_, under_action, _ = h.graph(session, 2, 0.5, app.GRAPH_OVER[0])
        *_, no_action, _ = h.graph(session, app.NO_ACTION, 0.5, app.GRAPH_OVER[0])
        assert ("3×3 cells around it" in under_action) == bool(context)
        assert "cells around it" not in no_action
