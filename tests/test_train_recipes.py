"""Recipes: built-ins load, TOML round trip, --set overrides, and errors that name the key and the file."""

from __future__ import annotations

import pytest

from train.recipes import RecipeError, builtin_recipes, check_resumable, load_recipe, parse_override, recipe_from_toml

SHAPES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")


def test_builtin_recipes_load_and_round_trip():
    assert {"tiny", "cpu", "cpu_dsprites", "paper"} <= set(builtin_recipes())
    for name in ("tiny", "cpu", "cpu_dsprites", "paper"):
        recipe = load_recipe(name)
        again = recipe_from_toml(recipe.to_toml())
        assert recipe.differences(again) == []


def test_shipped_checkpoint_was_trained_by_the_cpu_recipe():
    """The README says ``python -m train all --recipe cpu`` reproduces the shipped checkpoint: its recorded recipe
    and config must be what the recipe file gives today."""
    from pathlib import Path

    from causalvq.checkpoint import read_config

    shipped = Path(__file__).resolve().parent.parent / "assets" / "causalvq-shapes3d"
    recorded = recipe_from_toml((shipped / "recipe.toml").read_text(), source=str(shipped / "recipe.toml"))
    assert load_recipe("cpu").differences(recorded) == []
    config = read_config(shipped)
    assert config == load_recipe("cpu").model_config((64, 64, 3), config.factor_names, config.factor_sizes)


def test_shipped_dsprites_checkpoint_was_trained_by_the_cpu_dsprites_recipe():
    """docs/data.md says ``python -m train all --recipe cpu_dsprites`` reproduces assets/causalvq-dsprites: its
    recorded recipe and config must be what the recipe file gives today."""
    from pathlib import Path

    from causalvq.checkpoint import read_config

    shipped = Path(__file__).resolve().parent.parent / "assets" / "causalvq-dsprites"
    recorded = recipe_from_toml((shipped / "recipe.toml").read_text(), source=str(shipped / "recipe.toml"))
    assert load_recipe("cpu_dsprites").differences(recorded) == []
    config = read_config(shipped)
    assert config == load_recipe("cpu_dsprites").model_config((64, 64, 1), config.factor_names, config.factor_sizes)
    assert not list(shipped.rglob("*optim*")) and not (shipped / "resume").exists()  # a release, no training state


def test_paper_recipe_matches_the_paper():
    recipe = load_recipe("paper")
    config = recipe.model_config((64, 64, 3), SHAPES, (10, 10, 10, 8, 4, 15))
    assert (config.hidden_dims, config.codebook_size, config.num_codebooks, config.embedding_dim) == \
        ((64, 128, 256), 64, 1, 128)
    assert (recipe.stage1.lr, recipe.stage1.batch_size, recipe.stage1.lr_decay) == (5e-4, 64, 0.98)
    assert (recipe.stage2.lr, recipe.stage2.batch_size, recipe.stage2.lr_decay) == (5e-4, 16, 0.994)
    # every size and fidelity switch is the preset's; beta is the stage-1 config's 0.25 (the CT config says 0.1)
    from causalvq.config import ModelConfig

    assert config == ModelConfig.paper_shapes3d().replace(beta=0.25)


def test_cpu_dsprites_recipe_builds_a_64px_greyscale_model_on_an_8x8_grid():
    """The recipe's data section renders procedural dSprites at 64 px, one channel; the model it builds reads them
    into an 8×8 grid of 64 nodes, with the dataset's five factors and ten actions (no training)."""
    import numpy as np

    from causalvq.data import render_images
    from causalvq.data.dsprites import FACTOR_NAMES, FACTOR_SIZES
    from causalvq.model import CausalVQ
    from train.data import open_dataset

    recipe = load_recipe("cpu_dsprites")
    dataset = open_dataset(recipe.data)
    assert (dataset.name, dataset.image_shape, dataset.factor_names, dataset.factor_sizes) == (
        "dsprites", (64, 64, 1), FACTOR_NAMES, FACTOR_SIZES)
    config = recipe.model_config(dataset.image_shape, dataset.factor_names, dataset.factor_sizes)
    assert (config.factor_names, config.factor_sizes, config.num_actions) == (FACTOR_NAMES, FACTOR_SIZES, 10)
    assert (config.image_size, config.in_channels, config.hidden_dims, config.grid_size, config.num_nodes) == (
        64, 1, (32, 64, 64), 8, 64)
    assert (config.codebook_size, config.graph_width) == (64, 48)
    assert (config.change_weight, config.mask_weight, config.mask_hidden, config.edge_weight, config.delta) == (
        1.0, 5.0, 64, 0.001, 0.0)
    assert (config.mask_context, config.intervention_context, config.intervened_weight,
            config.intervened_own_graph, config.patch_codes) == (1, 2, 1.0, True, False)
    assert (recipe.stage1.steps, recipe.stage2.steps, recipe.stage2.lr_decay_every) == (3000, 14000, 1003)
    assert config.base_edge_weight == 0.01  # B31
    assert (recipe.stage1.output_bias, recipe.stage1.restart_every, recipe.stage1.restart_until) == (True, 1, 1000)
    x = render_images(dataset, dataset.sample_factors(2, np.random.default_rng(0)), config.image_size)
    assert x.shape == (2, 1, 64, 64) and 0 <= float(x.min()) < float(x.max()) <= 1
    assert CausalVQ(config).encode_codes(x).shape == (2, 1, 8, 8)


def test_reader_options_need_a_path():
    recipe = load_recipe("tiny", ["data.name=celeba", "data.path=celeba/", 'data.reader_options.attributes=["Bald"]'])
    assert recipe.data.reader_options == {"attributes": ["Bald"]}
    with pytest.raises(RecipeError, match="data.reader_options .* data.path, which is not set"):
        load_recipe("tiny", ["data.reader_options.crop=100"])


def test_overrides_are_typed_and_dotted():
    recipe = load_recipe("tiny", ["stage1.steps=100", "model.codebook_size=16", "data.name=dsprites",
                                  "stage2.mode_ratio=[7, 1, 1]", ("seed", 5)])
    assert recipe.stage1.steps == 100
    assert recipe.model["codebook_size"] == 16
    assert recipe.data.name == "dsprites"
    assert recipe.stage2.mode_ratio == (7.0, 1.0, 1.0)
    assert recipe.seed == 5
    assert parse_override("data.path=some/file.h5") == ("data.path", "some/file.h5")


@pytest.mark.parametrize("override, words", [
    ("stage1.stepz=3", ["stage1.stepz", "tiny.toml"]),
    ("optimizer.lr=3", ["optimizer", "tiny.toml"]),
    ("model.codebook_sise=8", ["codebook_sise", "tiny.toml"]),
    ('stage1.steps="ten"', ["stage1.steps", "int"]),
    ("stage2.lr=true", ["stage2.lr", "float"]),
    ('model.codebook_size="x"', ["codebook_size"]),
    ("stage1.steps=0", ["stage1.steps", ">= 1"]),
    ("stage2.mode_ratio=[1, 1]", ["stage2.mode_ratio"]),
])
def test_bad_recipes_name_the_key(override, words):
    with pytest.raises(RecipeError) as err:
        load_recipe("tiny", [override])
    for word in words:
        assert word in str(err.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[stage1]\nsteps = 2\nwarmup = 3\n")
    with pytest.raises(RecipeError, match=r"mine\.toml.*stage1\.warmup"):
        load_recipe(str(path))
    path.write_text("[stage1\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(str(path))
    with pytest.raises(RecipeError, match="unknown recipe 'nope'"):
        load_recipe("nope")


def test_dataset_fields_come_from_the_data():
    recipe = load_recipe("tiny")
    config = recipe.model_config((16, 16, 1), ("a", "b"), (3, 4))
    assert (config.in_channels, config.factor_names, config.factor_sizes) == (1, ("a", "b"), (3, 4))
    clash = load_recipe("tiny", ["model.in_channels=3"])
    with pytest.raises(RecipeError, match="model.in_channels"):
        clash.model_config((16, 16, 1), ("a", "b"), (3, 4))


def test_resuming_allows_only_the_keys_that_do_not_change_a_step():
    saved = load_recipe("tiny")
    check_resumable(saved, load_recipe("tiny", ["stage1.steps=99", "eval.num_pairs=3", "data.prefetch=2"]), "x")
    with pytest.raises(RecipeError, match=r"cannot resume x: .*\(model\.codebook_size, stage1\.lr differ\)"):
        check_resumable(saved, load_recipe("tiny", ["stage1.lr=0.5", "model.codebook_size=16"]), "x")
