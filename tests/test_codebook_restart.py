"""B27, data-dependent starts of stage 1: the quantizer moves exactly the dead codes onto encoder outputs,
deterministically; the stage-1 trainer applies the restart on the steps the recipe names and sets the decoder's
output bias to the first batch's mean pixel (tiny config, seconds). A run killed inside the restart window resumes
bit for bit (tests/test_train_resume.py), and two torchrun ranks apply the same restarts (tests/test_train_ddp.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from causalvq.quantizer import MultiCodebookQuantizer
from train.recipes import RecipeError, load_recipe


def test_code_counts_count_every_position():
    q = MultiCodebookQuantizer(num_codebooks=2, codebook_size=4, code_dim=3, beta=0.25)
    indices = torch.tensor([[[[0, 1]], [[3, 3]]], [[[1, 1]], [[3, 2]]]])  # (b=2, k=2, h=1, w=2)
    assert q.code_counts(indices).tolist() == [[1, 3, 0, 0], [0, 0, 1, 3]]


def test_restart_moves_only_dead_codes_onto_encoder_outputs():
    torch.manual_seed(0)
    q = MultiCodebookQuantizer(num_codebooks=2, codebook_size=8, code_dim=4, beta=0.25)
    z = torch.randn(3, 8, 2, 2)  # (b, K·d, h, w)
    before = q.codebooks.detach().clone()
    dead = torch.zeros(2, 8, dtype=torch.bool)
    dead[0, [1, 5]] = True
    dead[1, 7] = True
    moved = q.restart_codes(z, dead, torch.rand(2, 8))
    assert moved.tolist() == [2, 1]
    after = q.codebooks.detach()
    assert torch.equal(after[~dead], before[~dead])  # live codes untouched
    blocks = z.reshape(3, 2, 4, 2, 2).permute(1, 0, 3, 4, 2).reshape(2, 12, 4)  # (k, b·h·w, d)
    for k, j in dead.nonzero().tolist():  # each dead code is now one of its codebook's encoder outputs
        assert (blocks[k] == after[k, j]).all(-1).any(), (k, j)
    assert not q.codebooks.requires_grad or q.codebooks.grad is None


def test_restart_is_a_function_of_its_arguments_and_prefers_far_outputs():
    z = torch.zeros(1, 2, 1, 4)  # four positions, one codebook of d = 2
    z[0, :, 0, 3] = torch.tensor([5.0, 5.0])  # only position 3 lies away from the codes
    first, second = (MultiCodebookQuantizer(1, 4, 2, beta=0.25) for _ in range(2))
    with torch.no_grad():
        first.codebooks.zero_()
        second.codebooks.zero_()
    dead = torch.tensor([[False, True, True, True]])
    uniform = torch.tensor([[0.1, 0.3, 0.6, 0.99]])
    first.restart_codes(z, dead, uniform)
    second.restart_codes(z, dead, uniform)
    assert torch.equal(first.codebooks, second.codebooks)
    # D² sampling: all the mass is on position 3, so every dead code lands on it
    assert first.codebooks[0, 1:].tolist() == [[5.0, 5.0]] * 3 and first.codebooks[0, 0].tolist() == [0.0, 0.0]


def test_recipe_switch_defaults_off_and_validates():
    for name in ("tiny", "paper"):
        settings = load_recipe(name).stage1
        assert (settings.restart_every, settings.output_bias) == (0, False)  # the paper's plain VQ
    for name in ("cpu", "cpu_imbalanced"):  # patch codes use a third of the codebook without restarts (B27, B30)
        settings = load_recipe(name).stage1
        assert (settings.restart_every, settings.restart_until, settings.output_bias) == (50, 10_000, False)
    recipe = load_recipe("tiny", ["stage1.restart_every=3", "stage1.restart_until=7"])
    assert [t for t in range(12) if recipe.stage1.restarts_at(t)] == [0, 3, 6]
    assert [t for t in range(7) if load_recipe("tiny", ["stage1.restart_every=2"]).stage1.restarts_at(t)] == [
        0, 2, 4, 6]
    with pytest.raises(RecipeError, match="restart_every"):
        load_recipe("tiny", ["stage1.restart_every=-1"])


def test_stage1_step_restarts_dead_codes_and_logs_them():
    """The real stage-1 step on the tiny config: a collapsed codebook (every code but one far away) is restarted at
    step 0, so the batch then uses several codes; a step that is not a restart step moves nothing."""
    from causalvq.model import CausalVQ
    from train.data import make_sampler, open_dataset
    from train.loop import Objective, step_generators
    from train.stages import stage1_spec

    recipe = load_recipe("tiny", ["stage1.restart_every=2"])
    dataset = open_dataset(recipe.data)
    config = recipe.model_config(dataset.image_shape, dataset.factor_names, dataset.factor_sizes)
    torch.manual_seed(0)
    model = CausalVQ(config)
    with torch.no_grad():
        model.quantizer.codebooks[:, 1:] = 1e3  # only code 0 of each codebook can be chosen
    sampler = make_sampler(dataset, recipe.data, "train")
    spec = stage1_spec(model, dataset, sampler, recipe.stage1)
    batch = spec.draw(*step_generators(recipe.seed, 1, 0, 0))
    assert batch.restart_uniform.shape == (config.num_codebooks, config.codebook_size)
    assert np.array_equal(batch.restart_uniform, spec.draw(*step_generators(recipe.seed, 1, 0, 1)).restart_uniform)
    result = spec.step(Objective(model), batch, 0)
    assert result.parts["restarted"].item() > 0
    assert result.parts["usage"].item() > 1 / config.codebook_size  # more than one code per codebook now used
    frozen = model.quantizer.codebooks.detach().clone()
    assert spec.step(Objective(model), spec.draw(*step_generators(recipe.seed, 1, 1, 0)), 1).parts[
        "restarted"].item() == 0
    assert torch.equal(model.quantizer.codebooks.detach(), frozen)


def test_output_bias_starts_the_decoder_at_the_mean_pixel():
    """With ``stage1.output_bias`` the first step sets the decoder's output bias to tanh⁻¹(2·mean − 1): a decoder
    whose last layer has no weights then draws exactly the batch's mean pixel; later steps leave the bias alone."""
    from causalvq.model import CausalVQ
    from train.data import make_sampler, open_dataset
    from train.loop import Objective, step_generators
    from train.stages import stage1_spec

    recipe = load_recipe("tiny", ["stage1.output_bias=true"])
    dataset = open_dataset(recipe.data)
    config = recipe.model_config(dataset.image_shape, dataset.factor_names, dataset.factor_sizes)
    torch.manual_seed(0)
    model = CausalVQ(config)
    layer = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        layer.weight.zero_()
    spec = stage1_spec(model, dataset, make_sampler(dataset, recipe.data, "train"), recipe.stage1)
    assert spec.draw(*step_generators(recipe.seed, 1, 0, 0)).restart_uniform is None  # no restart draws
    batch = spec.draw(*step_generators(recipe.seed, 1, 0, 0))
    spec.step(Objective(model), batch, 0)
    mean = batch.images.mean((0, 2, 3))  # (c,)
    assert torch.allclose(torch.tanh(layer.bias.detach()), 2 * mean - 1, atol=1e-6)
    with torch.no_grad():
        flat = model.decoder(torch.randn(2, config.embedding_dim, 4, 4))  # (2, c, S, S)
    assert torch.allclose(flat, mean[None, :, None, None].expand_as(flat), atol=1e-5)
    bias = layer.bias.detach().clone()
    spec.step(Objective(model), spec.draw(*step_generators(recipe.seed, 1, 1, 0)), 1)
    assert torch.equal(layer.bias.detach(), bias)  # only step 0 sets it (the step itself never trains: no optimiser)
