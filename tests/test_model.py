"""CausalVQ at a tiny configuration: shapes, invariants, parity with naive references, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from causalvq.config import ModelConfig
from causalvq.gatv2 import DenseGATv2
from causalvq.graph_discovery import GraphDiscoverers, bernoulli_st
from causalvq.kernels.grouped import grouped_linear
from causalvq.kernels.pairwise import pairwise_score, pairwise_score_reference
from causalvq.model import CausalVQ

B = 3


@pytest.fixture(params=["principled", "faithful"])
def model(request) -> CausalVQ:
    torch.manual_seed(0)
    if request.param == "faithful":
        cfg = ModelConfig.tiny(overlapping_slices=True, intervention_edges="outgoing", action_node=False,
                               dropout_on_codes=True, retrieval_score="mean", graph_residual=False,
                               unit_positional=False, gated_attention=False)
    else:
        cfg = ModelConfig.tiny(retrieval_score="sum")
    return CausalVQ(cfg).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(B, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_public_method_shapes(model: CausalVQ, images: torch.Tensor) -> None:
    cfg = model.config
    k, g, n, v, a = cfg.num_codebooks, cfg.grid_size, cfg.num_nodes, cfg.codebook_size, cfg.num_actions
    actions = torch.tensor([0, 3, 5])
    codes = model.encode_codes(images)
    assert codes.shape == (B, k, g, g) and codes.dtype == torch.long
    assert model.decode_codes(codes).shape == images.shape
    rec = model.reconstruct(images)
    assert rec.image.shape == images.shape and 0 <= rec.image.min() and rec.image.max() <= 1
    t = model.transition_codes(codes, actions)
    assert t.codes.shape == codes.shape and t.probs.shape == (B, n, v) and t.mask.shape == (B, n)
    assert torch.allclose(t.probs.sum(-1), torch.ones(B, n))
    inter = model.intervene(images, actions, steps=2)
    assert inter.image.shape == images.shape and inter.mask.dtype == torch.bool and inter.steps == 2
    ret = model.retrieve_action(images, images.flip(0))
    assert ret.probs.shape == (B, a) and ret.action.shape == (B,)
    assert torch.allclose(ret.probs.sum(-1), torch.ones(B))
    assert model.causal_graph().adjacency.shape == (n, n) and model.causal_graph(action=2).mask.shape == (n,)
    assert model.intervention_probs(codes, actions).shape == (B, n)
    d = model.do(codes, node=5, code=1)
    assert d.codes.shape == codes.shape and d.changed.shape == (B, n)
    assert (model.flatten_codes(d.codes)[:, 5] == 1).all()
    assert len(model.action_names) == a and model.action_names[0] == "a +" and model.action_names[3] == "a -"


def test_indices_codes_indices_round_trip(model: CausalVQ) -> None:
    q = model.quantizer
    # spread the codebook so that every code is its own nearest neighbour
    with torch.no_grad():
        q.codebooks.copy_(torch.randn_like(q.codebooks))
    idx = torch.randint(0, model.config.codebook_size, (B, model.config.num_codebooks, 4, 4))
    z = q.lookup(idx)
    if not q.overlapping:
        assert torch.equal(q.indices(z), idx)
    assert z.shape == (B, model.config.embedding_dim, 4, 4)


@pytest.mark.parametrize("patch", [False, True])
def test_patch_codes_read_their_own_patch_only(patch: bool) -> None:
    """B30: with patch codes, new pixels inside one cell's patch change that cell's features and no other; the
    official encoder's 3×3 layers on the grid carry them to the cells around it (at 64 px, to nearly every cell)."""
    torch.manual_seed(0)
    config = ModelConfig(image_size=64, hidden_dims=(8, 8, 8), embedding_dim=8, num_residual=2, codebook_size=16,
                         patch_codes=patch)
    encoder = CausalVQ(config).encoder.eval()
    x = torch.rand(2, 3, 64, 64)
    y = x.clone()
    y[:, :, 24:32, 40:48] = torch.rand(2, 3, 8, 8)  # the patch of cell (3, 5)
    with torch.no_grad():
        moved = (encoder(x) - encoder(y)).abs().amax(1) > 0  # (b, 8, 8)
    assert moved[:, 3, 5].all()
    assert (moved.sum((1, 2)) == 1).all() if patch else (moved.sum((1, 2)) > 25).all()


def test_straight_through_gradient_is_identity() -> None:
    torch.manual_seed(0)
    q = CausalVQ(ModelConfig.tiny()).quantizer
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = q(z)
    grad = torch.randn_like(out.quantized)
    (out.quantized * grad).sum().backward()
    assert torch.equal(z.grad, grad)
    # the value is the codebook vector up to the rounding of z + (e − z): absolute, of the order of |z|·2^-24
    torch.testing.assert_close(out.quantized, q.lookup(out.indices), rtol=0, atol=1e-6)


def test_codebook_gradient_is_the_same_on_every_run() -> None:
    """Two runs of one recipe on several CPU threads must train the same model: the codebook lookup's backward
    sums each code's gradient in a fixed order (advanced indexing's accumulate did not, and runs drifted apart)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        q = CausalVQ(ModelConfig.tiny()).quantizer
        indices = torch.randint(0, 4, (64, q.num_codebooks, 8, 8))  # few codes: many rows add into each
        weight = torch.randn(64, q.num_codebooks * q.code_dim, 8, 8)
        grads = []
        for _ in range(8):
            q.codebooks.grad = None
            (q.lookup(indices) * weight).sum().backward()
            grads.append(q.codebooks.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    expected = torch.zeros_like(q.codebooks)  # and it is the gradient: each code gets the sum over its uses
    w = weight.unflatten(1, (q.num_codebooks, q.code_dim)).movedim(2, -1).double()  # (b, k, h, w, d)
    for k in range(q.num_codebooks):
        for v in range(4):
            expected[k, v] = w[:, k][indices[:, k] == v].sum(0).float()
    torch.testing.assert_close(grads[0], expected, rtol=1e-5, atol=1e-4)


def test_hard_samples_are_exactly_binary_with_gradient() -> None:
    p = torch.rand(1000, requires_grad=True)
    for sample in (True, False):
        s = bernoulli_st(p, sample)
        assert set(s.detach().unique().tolist()) <= {0.0, 1.0}
    s = bernoulli_st(p, True)
    s.sum().backward()
    assert p.grad.abs().sum() > 0
    assert torch.equal(bernoulli_st(p, False), (p > 0.5).float())
    freq = bernoulli_st(torch.full((20000,), 0.3), True).mean().item()
    assert abs(freq - 0.3) < 0.02


def test_zero_mask_action_pass_equals_no_action_pass(model: CausalVQ, images: torch.Tensor) -> None:
    with torch.no_grad():
        model.transition.mask_net.bias.fill_(-30.0)  # p ≈ 0: the action intervenes on no node
    codes = model.encode_codes(images)
    acted = model.transition_codes(codes, torch.tensor([1, 2, 4]))
    plain = model.transition_codes(codes, None)
    assert not acted.mask.any()
    assert torch.equal(acted.codes, plain.codes)
    assert torch.allclose(acted.probs, plain.probs, atol=1e-6)


def test_nodes_outside_the_mask_use_the_no_action_head(model: CausalVQ) -> None:
    nodes = torch.randint(0, model.config.codebook_size, (B, model.config.num_nodes))
    out = model.transition(nodes, torch.tensor([0, 1, 2]), sample=True)
    m = out.mask.bool()
    assert m.any() and (~m).any()
    expected = torch.where(m[..., None], out.head_logits[:, :, 1], out.head_logits[:, :, 0]).softmax(-1)
    assert torch.allclose(out.probs, expected, atol=1e-6)


def test_causal_graph_is_the_forward_pass_graph(model: CausalVQ) -> None:
    """``causal_graph`` on one grid gives the edge probabilities and the mask of the evaluation pass itself;
    on several grids their means."""
    codes = model.unflatten_codes(torch.randint(0, model.config.codebook_size, (B, model.config.num_nodes)))
    nodes = model.flatten_codes(codes)
    with torch.no_grad():
        out = model.transition(nodes, torch.tensor([2] * B), sample=False)
        plain = model.transition(nodes, None, sample=False)
    for i in range(B):
        graph = model.causal_graph(2, codes[i:i + 1])
        assert torch.equal(graph.mask, out.mask[i])  # (batch size moves the float rounding of C only)
        assert torch.allclose(graph.adjacency, out.edge_probs[i], atol=1e-6)
    graph = model.causal_graph(2, codes)
    assert torch.allclose(graph.adjacency, out.edge_probs.mean(0)) and torch.allclose(graph.mask, out.mask.mean(0))
    graph = model.causal_graph(None, codes)
    assert torch.allclose(graph.adjacency, plain.edge_probs.mean(0)) and not graph.mask.any()


def test_factorised_discoverer_equals_naive_concatenated_mlp() -> None:
    torch.manual_seed(0)
    b, n, v, hidden, t = 2, 6, 8, 5, 4
    disc = GraphDiscoverers(t, v, hidden).double()
    P = torch.randn(b, n, v, dtype=torch.double)
    which = torch.tensor([1, 3])
    fast = disc(P, which)
    for s in range(b):
        k = int(which[s])
        mlp = nn.Sequential(nn.Linear(2 * v, hidden), nn.LeakyReLU(), nn.Linear(hidden, 1), nn.Sigmoid()).double()
        with torch.no_grad():
            mlp[0].weight.copy_(disc.w1[k])
            mlp[0].bias.copy_(disc.b1[k])
            mlp[2].weight.copy_(disc.w2[k][None])
            mlp[2].bias.copy_(disc.b2[k][None])
        pairs = torch.cat([P[s][:, None].expand(n, n, v), P[s][None].expand(n, n, v)], -1)  # (n, n, 2v)
        assert torch.allclose(fast[s], mlp(pairs)[..., 0], atol=1e-12)


def test_grouped_linear_equals_per_sample_gathered_weights() -> None:
    torch.manual_seed(0)
    weight = torch.randn(4, 3, 5, dtype=torch.double, requires_grad=True)
    bias = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    weight2 = torch.randn(4, 7, 5, dtype=torch.double, requires_grad=True)  # a second family, without bias
    x = torch.randn(6, 2, 5, dtype=torch.double, requires_grad=True)
    # unsorted (gathered), already sorted (taken as it comes), one map for all
    # and a range of maps each used as often (one batched matmul), sorted or not
    for index in (torch.tensor([2, 0, 3, 2, 0, 1]), torch.tensor([0, 0, 1, 3, 3, 3]), torch.full((6,), 3),
                  torch.tensor([1, 1, 2, 2, 3, 3]), torch.tensor([2, 3, 1, 2, 3, 1])):
        out, out2 = grouped_linear(x, [(weight, bias), (weight2, None)], index)
        ref = torch.einsum("bni,boi->bno", x, weight[index]) + bias[index][:, None]
        ref2 = torch.einsum("bni,boi->bno", x, weight2[index])
        assert torch.allclose(out, ref, atol=1e-12) and torch.allclose(out2, ref2, atol=1e-12)
        leaves = (x, weight, bias, weight2)
        grads = torch.autograd.grad(out.square().sum() + out2.sin().sum(), leaves)
        ref_grads = torch.autograd.grad(ref.square().sum() + ref2.sin().sum(), leaves)
        assert all(torch.allclose(g, r, atol=1e-12) for g, r in zip(grads, ref_grads))


def test_pairwise_score_gradients_match_reference(pairwise_args) -> None:
    args = pairwise_args
    assert torch.autograd.gradcheck(lambda *a: pairwise_score(*a, slope=0.2), args)
    out, ref = pairwise_score(*args, slope=0.2), pairwise_score_reference(*args, slope=0.2)
    assert torch.allclose(out, ref)


def _gatv2_per_edge(gat: DenseGATv2, x: torch.Tensor, weights: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Naive GATv2 for one graph, edge by edge, as a sparse message-passing library computes it."""
    n = x.shape[0]
    H, C = gat.heads, gat.out_dim
    xs, xt = gat.lin_src(x).view(n, H, C), gat.lin_tgt(x).view(n, H, C)
    out = torch.zeros(n, H, C, dtype=x.dtype)
    for i in range(n):
        sources = [j for j in range(n) if j != i and edges[j, i]]
        loop_w = torch.stack([weights[j, i] for j in sources]).mean() if sources else x.new_zeros(())
        ws = [weights[j, i] for j in sources] + [loop_w]
        sources = sources + [i]
        logits = torch.stack([
            (gat.att * F.leaky_relu(xt[i] + xs[j] + w * gat.lin_edge, 0.2)).sum(-1) for j, w in zip(sources, ws)])
        alpha = logits.softmax(0)  # (deg, H)
        out[i] = sum(alpha[e][:, None] * xs[j] for e, j in enumerate(sources))
    root = gat.lin_root(x) if gat.lin_root is not None else 0
    return out.reshape(n, H * C) + gat.bias + root


@pytest.mark.parametrize("residual", [False, True])
def test_dense_gatv2_matches_per_edge_reference(residual: bool) -> None:
    torch.manual_seed(0)
    gat = DenseGATv2(5, 3, 2, residual=residual).double()
    with torch.no_grad():
        gat.bias.normal_()
        gat.lin_src.bias.normal_()
    b, n = 2, 6
    x = torch.randn(b, n, 5, dtype=torch.double)
    weights = torch.rand(b, n, n, dtype=torch.double)
    edges = torch.rand(b, n, n) > 0.5
    edges[0, :, 2] = False  # a node without incoming edges: only its self-loop, weight 0
    dense = gat(x, weights, edges)
    for s in range(b):
        assert torch.allclose(dense[s], _gatv2_per_edge(gat, x[s], weights[s], edges[s]), atol=1e-10)
    heads = torch.tensor([[1], [0]])
    subset = gat(x, weights, edges, heads=heads)
    assert torch.allclose(subset[0], dense[0, :, 3:]) and torch.allclose(subset[1], dense[1, :, :3])
    pairs = gat(x, weights, edges, heads=torch.tensor([[0, 1], [0, 0]]))  # two heads per sample, one repeated
    assert torch.allclose(pairs[0], dense[0]) and torch.allclose(pairs[1], dense[1, :, :3].repeat(1, 2))


def test_identity_graph_fast_path_equals_dense_attention() -> None:
    torch.manual_seed(0)
    for residual in (False, True):
        gat = DenseGATv2(5, 3, 2, residual=residual).double()
        x = torch.randn(2, 6, 5, dtype=torch.double)
        no_edges = torch.zeros(2, 6, 6, dtype=torch.bool)
        dense = gat(x, torch.rand(2, 6, 6, dtype=torch.double), no_edges)
        assert torch.allclose(gat(x, None, None), dense, atol=1e-12)
        heads = torch.tensor([[1], [0]])
        assert torch.allclose(gat(x, None, None, heads=heads), gat(x, torch.zeros(2, 6, 6, dtype=torch.double),
                                                                    no_edges, heads=heads), atol=1e-12)


def test_gated_attention_has_the_masked_values_and_the_relaxed_gradient() -> None:
    """B19: the gated softmax equals the masked softmax in value; its gradient in the graph is the gradient of
    the relaxed attention g·exp(s) / Σ g·exp(s) at the drawn graph, absent edges included."""
    from causalvq.gatv2 import gated_softmax

    torch.manual_seed(0)
    b, h, n = 2, 3, 5
    logits = torch.randn(b, h, n, n, dtype=torch.double) * 3
    graph = (torch.rand(b, n, n) > 0.6).double().requires_grad_(True)
    edges = (graph.detach() > 0) | torch.eye(n, dtype=torch.bool)
    gated = gated_softmax(logits, edges, graph)
    assert torch.allclose(gated, logits.masked_fill(~edges[:, None], float("-inf")).softmax(-1), atol=1e-12)

    def relaxed(g: torch.Tensor) -> torch.Tensor:  # the attention as a smooth function of the graph
        g = torch.where(torch.eye(n, dtype=torch.bool), torch.ones_like(g), g)[:, None]
        return g * logits.exp() / (g * logits.exp()).sum(-1, keepdim=True)

    weight = torch.randn(b, h, n, n, dtype=torch.double)
    (grad,) = torch.autograd.grad((gated * weight).sum(), graph)
    (expected,) = torch.autograd.grad((relaxed(graph) * weight).sum(), graph)
    assert torch.allclose(grad, expected, atol=1e-10)
    absent = (graph.detach() == 0) & ~torch.eye(n, dtype=torch.bool)
    assert absent.any() and (grad[absent] != 0).all()
    # in the logits: the masked softmax's gradient
    logits.requires_grad_(True)
    (grad,) = torch.autograd.grad((gated_softmax(logits, edges, graph) * weight).sum(), logits)
    masked = logits.masked_fill(~edges[:, None], float("-inf")).softmax(-1)
    (expected,) = torch.autograd.grad((masked * weight).sum(), logits)
    assert torch.allclose(grad, expected, atol=1e-12)


@pytest.mark.parametrize("gated", [False, True])
def test_gated_attention_switch_changes_gradients_only(gated: bool) -> None:
    """The transition's outputs do not depend on the switch; only gated attention sends the transition loss's
    gradient to edges that were not drawn (the official edge list gives them none)."""
    from causalvq.transition import CausalTransition

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(gated_attention=gated)
    layer = CausalTransition(cfg).eval()
    codes, action = torch.randint(0, cfg.codebook_size, (B, cfg.num_nodes)), torch.tensor([0, 2, 5])
    torch.manual_seed(1)
    out = layer(codes, action, sample=True)
    out.graph.retain_grad()
    out.probs.log().sum().backward()
    absent = out.graph == 0
    assert absent.any() and bool((out.graph.grad[absent] != 0).any()) == gated
    layer.config = cfg.replace(gated_attention=not gated)
    torch.manual_seed(1)
    assert torch.allclose(layer(codes, action, sample=True).probs, out.probs, atol=1e-6)


def test_positional_encoding_scale() -> None:
    """B18: unit-norm encoding rows by default; the official raw sinusoidal rows have norm √(N/2)."""
    from causalvq.transition import CausalTransition

    cfg = ModelConfig.tiny(codebook_size=16)
    assert torch.allclose(CausalTransition(cfg).pe.norm(dim=-1), torch.ones(cfg.num_nodes))
    raw = CausalTransition(cfg.replace(unit_positional=False)).pe
    assert torch.allclose(raw.norm(dim=-1), torch.full((cfg.num_nodes,), (16 / 2) ** 0.5))
    assert not ModelConfig.paper_shapes3d().unit_positional


def test_eval_pass_without_gradients_equals_pass_with_gradients(model: CausalVQ) -> None:
    """Without gradients the action discoverer scores only the rewired entries: the same numbers."""
    codes = torch.randint(0, model.config.codebook_size, (B, model.config.num_nodes))
    action = torch.tensor([0, 2, 5])
    with torch.no_grad():
        skipped = model.transition(codes, action, sample=False)
    full = model.transition(codes, action, sample=False)
    assert torch.equal(skipped.mask, full.mask)
    assert torch.allclose(skipped.edge_probs, full.edge_probs, atol=1e-7)
    assert torch.allclose(skipped.probs, full.probs, atol=1e-6)


def test_batched_retrieval_equals_per_action_loop(model: CausalVQ, images: torch.Tensor) -> None:
    from causalvq.losses import retrieval_distance

    cx, cy = model.encode_codes(images), model.encode_codes(images.flip(0))
    batched = model.retrieve_action_codes(cx, cy)
    nodes_y = model.flatten_codes(cy)
    loop = torch.stack([
        retrieval_distance(model.transition_codes(cx, torch.full((B,), a)).probs[:, None], nodes_y,
                           model.config.retrieval_score)[:, 0]
        for a in range(model.num_actions)], 1)
    assert torch.allclose(batched.scores, loop, atol=1e-5)


def test_training_losses_backpropagate_to_the_transition_only(model: CausalVQ, images: torch.Tensor) -> None:
    model.train()
    codes = model.encode_codes(images)
    actions = torch.tensor([0, 1, 2])
    for loss in (model.base_losses(codes), model.transition_losses(codes, codes, actions),
                 model.retrieval_losses(codes, codes, actions)):
        model.zero_grad()
        loss.loss.backward()
        assert torch.isfinite(loss.loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.transition_parameters())
        assert all(p.grad is None for p in model.image_parameters())
    model.zero_grad()
    model.image_losses(images).loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_change_weighted_cross_entropy() -> None:
    """B20: weight 0 is the plain mean CE; a weight λ counts each changed node 1 + λ times, normalised."""
    from causalvq import losses

    torch.manual_seed(0)
    probs = torch.rand(2, 5, 4).softmax(-1)
    source = torch.tensor([[0, 1, 2, 3, 0], [1, 1, 1, 1, 1]])
    target = torch.tensor([[0, 1, 3, 3, 2], [1, 1, 1, 1, 1]])  # nodes (0, 2) and (0, 4) change
    nll = losses.node_nll(probs, target)
    assert torch.allclose(losses.change_weighted_cross_entropy(probs, target, source, 0.0),
                          losses.code_cross_entropy(probs, target))
    expected = (nll.sum() + 3.0 * (nll[0, 2] + nll[0, 4])) / (10 + 3.0 * 2)
    assert torch.allclose(losses.change_weighted_cross_entropy(probs, target, source, 3.0), expected)


def test_change_weight_changes_the_optimised_loss_only() -> None:
    """B20 reweights the loss the optimiser sees when codes change; the reported CE stays the plain mean."""
    cx = torch.randint(0, 8, (3, 2, 4, 4), generator=torch.Generator().manual_seed(1))
    cy = cx.clone()
    cy[:, 0, 0] = (cy[:, 0, 0] + 1) % 8
    actions = torch.tensor([0, 1, 2])
    out = {}
    for weight in (0.0, 4.0):
        torch.manual_seed(0)
        model = CausalVQ(ModelConfig.tiny(change_weight=weight)).train()
        torch.manual_seed(1)
        out[weight] = model.transition_losses(cx, cy, actions)
    assert torch.equal(out[0.0].ce, out[4.0].ce)
    assert not torch.allclose(out[0.0].loss, out[4.0].loss)
    with pytest.raises(ValueError, match="change_weight"):
        ModelConfig(change_weight=-1.0)


def test_save_load_identical_outputs(model: CausalVQ, images: torch.Tensor, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    loaded = CausalVQ.from_pretrained(tmp_path)
    assert loaded.config == model.config
    actions = torch.tensor([0, 1, 2])
    assert torch.equal(loaded.reconstruct(images).image, model.reconstruct(images).image)
    assert torch.equal(loaded.intervene(images, actions).image, model.intervene(images, actions).image)
    assert torch.equal(loaded.retrieve_action(images, images).probs, model.retrieve_action(images, images).probs)


def test_checkpoint_errors_name_the_problem(tmp_path) -> None:
    model = CausalVQ(ModelConfig.tiny())
    model.save_pretrained(tmp_path / "ok")
    with pytest.raises(FileNotFoundError, match="config.json"):
        (tmp_path / "nocfg").mkdir()
        CausalVQ.from_pretrained(tmp_path / "nocfg")
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        CausalVQ.from_pretrained(tmp_path / "missing" / "dir")
    bad = tmp_path / "bad"
    bad.mkdir()
    data = json.loads((tmp_path / "ok" / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**data, "codebok_size": 3}))
    (bad / "model.safetensors").write_bytes((tmp_path / "ok" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="codebok_size"):
        CausalVQ.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({**data, "codebook_size": "eight"}))
    with pytest.raises(ValueError, match="codebook_size"):
        CausalVQ.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({**data, "codebook_size": 16}))
    with pytest.raises(ValueError, match=r"quantizer\.codebooks"):
        CausalVQ.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps(data))
    (bad / "model.safetensors").write_bytes((tmp_path / "ok" / "model.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot read weights"):
        CausalVQ.from_pretrained(bad)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="not divisible by num_codebooks"):
        ModelConfig.tiny(embedding_dim=9)
    with pytest.raises(ValueError, match="image_size"):
        ModelConfig.tiny(image_size=18)
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"image_sise": 32})
    with pytest.raises(ValueError, match="factor_sizes"):
        ModelConfig.tiny(factor_sizes=(3, 4))
    with pytest.raises(ValueError, match="intervention_edges"):
        ModelConfig.tiny(intervention_edges="sideways")
    cfg = ModelConfig.paper_shapes3d()
    assert (cfg.num_nodes, cfg.num_actions, cfg.grid_size) == (64, 12, 8)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_golden_slice() -> None:
    """A seeded forward pass, pinned: catches silent changes to the model's arithmetic."""
    torch.manual_seed(1234)
    model = CausalVQ(ModelConfig.tiny()).eval()
    x = torch.linspace(0, 1, 3 * 16 * 16).reshape(1, 3, 16, 16)
    rec = model.reconstruct(x)
    nodes = torch.arange(model.config.num_nodes)[None] % model.config.codebook_size
    out = model.transition(nodes, torch.tensor([2]), sample=False)
    got = rec.image[0, 0, 0, :4].tolist() + out.probs[0, 0, :4].tolist()
    assert got == pytest.approx(GOLDEN, abs=1e-4), got


GOLDEN = [0.52459, 0.52842, 0.52753, 0.5284, 0.09665, 0.07263, 0.14355, 0.26368]


def test_one_hot_projections_equal_the_linear_maps_of_the_features() -> None:
    """The gathers that replace linear maps of one-hot node features give the same values and gradients."""
    torch.manual_seed(0)
    gat = DenseGATv2(8, 3, 2, residual=True).double()
    codes = torch.randint(0, 8, (4, 5))
    extra = torch.randn(5, 8, dtype=torch.double)
    fast = gat.project_onehot(codes, extra)
    slow = gat.project(F.one_hot(codes, 8).double() + extra)
    for f, s in zip(fast, slow):
        assert torch.allclose(f, s, atol=1e-12)
    grads = torch.autograd.grad(sum(t.square().sum() for t in fast), list(gat.parameters()), allow_unused=True)
    ref = torch.autograd.grad(sum(t.square().sum() for t in slow), list(gat.parameters()), allow_unused=True)
    assert all((g is None and r is None) or torch.allclose(g, r, atol=1e-12) for g, r in zip(grads, ref))


def test_intervention_probs_equal_the_mask_network_on_the_concatenated_input() -> None:
    cfg = ModelConfig.tiny()
    transition = CausalVQ(cfg).transition.eval()
    codes = torch.randint(0, cfg.codebook_size, (6, cfg.num_nodes))
    action = torch.randint(0, cfg.num_actions, (6,))
    X = F.one_hot(codes, cfg.codebook_size).float()
    inp = torch.cat([F.one_hot(action, cfg.num_actions).float()[:, None].expand(6, cfg.num_nodes, -1),
                     transition.pe.expand(6, -1, -1)], -1)
    naive = (torch.sigmoid(transition.mask_net(inp)) * X).sum(-1)
    assert torch.allclose(transition.intervention_probs(X, action), naive, atol=1e-6)
