"""Structure: the mask loss (B21), the mask network with a hidden layer (B22) and the structure metrics, each on
hand-built cases whose answer is known."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from causalvq import losses
from causalvq.config import ModelConfig
from causalvq.metrics.structure import in_degree, in_degree_by_mask, mask_scores, propagation_scores
from causalvq.model import CausalVQ


# --- the mask loss ---------------------------------------------------------------------------------------------
def test_mask_supervision_is_the_bce_against_the_changed_nodes() -> None:
    source = torch.tensor([[0, 1, 2, 3]])
    target = torch.tensor([[0, 5, 2, 6]])  # nodes 1 and 3 change
    exact = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    assert float(losses.mask_supervision(exact, source, target)) == pytest.approx(-math.log(1 - 1e-4), rel=1e-3)
    half = torch.full((1, 4), 0.5)
    assert float(losses.mask_supervision(half, source, target)) == pytest.approx(math.log(2), rel=1e-6)
    p = torch.full((1, 4), 0.5, requires_grad=True)
    losses.mask_supervision(p, source, target).backward()
    assert (p.grad[0, [1, 3]] < 0).all() and (p.grad[0, [0, 2]] > 0).all()  # up where it changes, down elsewhere


def test_transition_loss_includes_the_mask_term_only_when_weighted() -> None:
    torch.manual_seed(0)
    model = CausalVQ(ModelConfig.tiny(positional_dropout=0.0))
    k, h = model.config.num_codebooks, model.config.grid_size
    cx = torch.randint(0, 8, (4, k, h, h))
    cy = cx.clone()
    cy[:, 0, 0, 0] = (cy[:, 0, 0, 0] + 1) % 8
    a = torch.tensor([0, 1, 2, 3])

    def regularizer(weight: float) -> float:
        model.config = model.transition.config = model.config.replace(mask_weight=weight)
        torch.manual_seed(1)
        return float(model.transition_losses(cx, cy, a).regularizer.detach())

    base, weighted = regularizer(0.0), regularizer(2.0)
    torch.manual_seed(1)
    p = model.transition(model.flatten_codes(cx), a, sample=True).mask_probs.detach()
    expected = 2.0 * float(losses.mask_supervision(p, model.flatten_codes(cx), model.flatten_codes(cy)))
    assert weighted - base == pytest.approx(expected, rel=1e-4)


def _random_steps(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four random code grids x and y (codes 0-7) and actions 0-3: a batch for the action-mode loss."""
    k, h = cfg.num_codebooks, cfg.grid_size
    return torch.randint(0, 8, (4, k, h, h)), torch.randint(0, 8, (4, k, h, h)), torch.tensor([0, 1, 2, 3])


def test_structure_scale_multiplies_the_prices_of_edges_only() -> None:
    """B25: ``structure`` s scales δ·‖Gr‖_F and κ·E[in-degree] and nothing else; s = 0 removes them."""
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(positional_dropout=0.0, delta=0.3, edge_weight=0.2, mask_weight=1.0)
    model = CausalVQ(cfg)
    cx, cy, a = _random_steps(cfg)

    def run(s: float):
        torch.manual_seed(1)
        return model.transition_losses(cx, cy, a, structure=s)

    full, half, off = run(1.0), run(0.5), run(0.0)
    torch.manual_seed(1)
    out = model.transition(model.flatten_codes(cx), a, sample=True)
    prices = float(cfg.delta * losses.graph_size(out.graph)
                   + cfg.edge_weight * losses.expected_in_degree(out.edge_probs))
    assert prices > 0
    assert float(full.regularizer - off.regularizer) == pytest.approx(prices, rel=1e-5)
    assert float(full.regularizer - half.regularizer) == pytest.approx(prices / 2, rel=1e-5)
    assert float(full.ce) == float(off.ce)  # the same draws: only the prices moved


def test_base_edge_price_adds_kappa0_times_the_no_action_in_degree() -> None:
    """B31: κ₀ prices the expected in-edges of the no-action graph in the base-mode loss, and its gradient lowers
    every off-diagonal edge probability's logit; κ₀ = 0 is the official base loss."""
    torch.manual_seed(0)
    priced = ModelConfig.tiny(positional_dropout=0.0, base_edge_weight=0.5)
    model = CausalVQ(priced)
    codes = torch.randint(0, 8, (4, priced.num_codebooks, priced.grid_size, priced.grid_size))

    def run(config: ModelConfig):
        model.config = config
        torch.manual_seed(1)
        return model.base_losses(codes)

    with_price, official = run(priced), run(dataclasses.replace(priced, base_edge_weight=0.0))
    edges = losses.expected_in_degree(model.transition(model.flatten_codes(codes), None).edge_probs)
    assert float(edges) > 0
    assert float(with_price.regularizer - official.regularizer) == pytest.approx(0.5 * float(edges), rel=1e-5)
    assert float(with_price.ce) == float(official.ce)

    model.config = priced
    torch.manual_seed(1)
    probs = model.transition(model.flatten_codes(codes), None).edge_probs
    grad, = torch.autograd.grad(priced.base_edge_weight * losses.expected_in_degree(probs), probs)
    off = ~torch.eye(probs.shape[-1], dtype=torch.bool)
    assert (grad[:, off] > 0).all() and (grad[:, ~off] == 0).all()  # descent lowers every off-diagonal edge
    with pytest.raises(ValueError, match="base_edge_weight"):
        ModelConfig.tiny(base_edge_weight=-0.1)


def test_base_edge_price_in_the_action_loss_prices_the_kept_nodes_in_edges_only() -> None:
    """B31 in the action-mode loss: κ₀ times the expected in-edges of the nodes the drawn mask keeps (columns with
    m = 0, which the no-action discoverer gives); an intervened node's rewired in-edges cost nothing there."""
    torch.manual_seed(0)
    priced = ModelConfig.tiny(positional_dropout=0.0, base_edge_weight=0.5)
    model = CausalVQ(priced)
    cx, cy, a = _random_steps(priced)

    def run(config: ModelConfig):
        model.config = config
        torch.manual_seed(1)
        return model.transition_losses(cx, cy, a)

    with_price, official = run(priced), run(dataclasses.replace(priced, base_edge_weight=0.0))
    torch.manual_seed(1)
    out = model.transition(model.flatten_codes(cx), a, sample=True)
    kept = (1 - out.mask)[:, None, :]  # (b, 1, n): the columns (targets) the mask keeps
    assert 0 < float(out.mask.sum()) < out.mask.numel()  # some nodes intervened on, some kept
    expected = 0.5 * float(losses.expected_in_degree(out.edge_probs * kept))
    assert float(with_price.regularizer - official.regularizer) == pytest.approx(expected, rel=1e-5)
    assert expected < 0.5 * float(losses.expected_in_degree(out.edge_probs))  # the rewired in-edges are not priced


def test_structure_schedule_of_the_stage2_recipe() -> None:
    from train.recipes import Stage2Recipe

    ramp = Stage2Recipe(structure_start=10, structure_ramp=4)
    assert [ramp.structure_scale(t) for t in (0, 9, 10, 11, 12, 13, 14, 1000)] == [0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert [Stage2Recipe(structure_start=3).structure_scale(t) for t in (2, 3)] == [0, 1]
    assert Stage2Recipe().structure_scale(0) == 1.0  # default: the paper's loss from the first step
    with pytest.raises(ValueError, match="structure_start"):
        Stage2Recipe(structure_start=-1)


def test_config_checks_the_mask_fields() -> None:
    with pytest.raises(ValueError, match="mask_weight"):
        ModelConfig.tiny(mask_weight=-1.0)
    with pytest.raises(ValueError, match="mask_hidden"):
        ModelConfig.tiny(mask_hidden=-2)


# --- the metrics -----------------------------------------------------------------------------------------------
def test_mask_scores_on_known_masks() -> None:
    changed = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    perfect = mask_scores(changed, changed)
    assert (perfect.precision, perfect.recall, perfect.size_ratio, perfect.empty_share) == (1.0, 1.0, 1.0, 0.0)
    everything = mask_scores(torch.ones_like(changed), changed)
    assert everything.precision == pytest.approx(5 / 12) and everything.recall == 1.0
    assert everything.size_ratio == pytest.approx(12 / 5) and everything.mask_nodes == 4.0
    mask = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    s = mask_scores(mask, changed)
    assert s.precision == pytest.approx(3 / 4) and s.recall == pytest.approx(3 / 5)
    assert s.size_ratio == pytest.approx(4 / 5) and s.empty_share == pytest.approx(1 / 3)
    nothing = mask_scores(torch.zeros_like(changed), changed)
    assert nothing.precision is None and nothing.recall == 0.0 and nothing.empty_share == 1.0
    with pytest.raises(ValueError):
        mask_scores(mask, changed[:, :3])


def test_in_degree_excludes_self_loops() -> None:
    n = 4
    eye = torch.eye(n, dtype=torch.bool)[None]
    assert float(in_degree(eye)) == 0.0
    full = torch.ones(1, n, n, dtype=torch.bool)
    assert float(in_degree(full)) == n - 1
    chain = torch.zeros(1, n, n)
    chain[0, 0, 1] = chain[0, 1, 2] = chain[0, 2, 3] = 1.0  # 0 → 1 → 2 → 3: three edges over four nodes
    assert float(in_degree(chain > 0.5)) == pytest.approx(3 / 4)


def test_in_degree_by_mask_splits_the_in_edges_between_intervened_and_kept_nodes() -> None:
    n = 4
    g = torch.zeros(2, n, n, dtype=torch.bool)
    g[0, 0, 1] = g[0, 2, 1] = g[0, 3, 1] = True  # graph 0: three in-edges into node 1
    g[0, 1, 1] = True  # a self-loop does not count
    g[1, 0, 3] = True  # graph 1: one in-edge into node 3
    mask = torch.tensor([[False, True, False, False], [False, True, False, False]])
    inside, outside = in_degree_by_mask(g, mask)
    assert inside == pytest.approx((3 + 0) / 2)  # node 1 of each graph: 3 and 0 in-edges
    assert outside == pytest.approx((0 + 1) / 6)  # the other 6 nodes: one in-edge into node 3 of graph 1
    assert (inside * 2 + outside * 6) / (2 * n) == pytest.approx(float(in_degree(g).mean()))  # the split of the mean
    assert in_degree_by_mask(g, torch.zeros(2, n, dtype=torch.bool)) == (None, pytest.approx(4 / 8))  # no mask
    with pytest.raises(ValueError):
        in_degree_by_mask(g, mask[:, :3])


def test_propagation_scores_on_known_interventions() -> None:
    before = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])
    reference = torch.tensor([[5, 6, 0, 0], [1, 2, 1, 1]])
    node = torch.tensor([0, 1])
    # first: do(0 = 5) also moves node 1 to the reference code 6 and node 3 to a wrong code; second: nothing else
    after = torch.tensor([[5, 6, 0, 7], [1, 2, 1, 1]])
    s = propagation_scores(before, after, node, reference)
    assert s.propagating_share == 0.5 and s.changed_nodes == 1.0 and s.agreement == 0.5
    none = propagation_scores(before, before.clone().index_put_((torch.arange(2), node), torch.tensor([5, 2])),
                              node, reference)
    assert none.propagating_share == 0.0 and none.agreement is None


def test_mask_network_with_a_hidden_layer_equals_the_mlp_on_the_concatenated_input() -> None:
    torch.manual_seed(0)
    model = CausalVQ(ModelConfig.tiny(mask_hidden=5, positional_dropout=0.0)).eval()
    tr, cfg = model.transition, model.config
    codes = torch.randint(0, cfg.codebook_size, (3, cfg.num_nodes))
    action = torch.tensor([0, 3, 5])
    X = F.one_hot(codes, cfg.codebook_size).float()
    inp = torch.cat([F.one_hot(action, cfg.num_actions).float()[:, None].expand(-1, cfg.num_nodes, -1),
                     tr.pe.expand(3, -1, -1)], -1)  # (b, n, A + v)
    expected = torch.sigmoid(tr.mask_out(F.leaky_relu(tr.mask_net(inp)))).gather(-1, codes[..., None])
    assert torch.allclose(tr.intervention_probs(X, action), expected[..., 0], atol=1e-6)
    assert set(model.state_dict()) >= {"transition.mask_out.weight", "transition.mask_net.weight"}
    official = CausalVQ(ModelConfig.tiny())  # without the switch: the official single layer, same keys as before
    assert "transition.mask_out.weight" not in official.state_dict()
    assert official.transition.mask_net.weight.shape == (cfg.codebook_size, cfg.num_actions + cfg.codebook_size)



def test_mask_context_adds_each_neighbours_code_weight_and_nothing_past_the_border() -> None:
    """B24: the hidden layer gains Σ over the (2r + 1)² cells around node i of the weight of that cell's code,
    computed here cell by cell; a code far from the node does not move its probability."""
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(mask_hidden=5, mask_context=1, positional_dropout=0.0)
    tr = CausalVQ(cfg).eval().transition
    g, v, k = cfg.grid_size, cfg.codebook_size, cfg.num_codebooks
    codes = torch.randint(0, v, (2, cfg.num_nodes))
    action = torch.tensor([1, 4])
    X = F.one_hot(codes, v).float()
    grid = codes.view(2, k, g, g)
    weight = tr.mask_context.weight  # (H, k·v, 3, 3)
    context = torch.zeros(2, k, g, g, weight.shape[0])
    for b, y, x in itertools.product(range(2), range(g), range(g)):
        for dy, dx in itertools.product((-1, 0, 1), repeat=2):
            if 0 <= y + dy < g and 0 <= x + dx < g:
                for c in range(k):
                    context[b, :, y, x] += weight[:, c * v + grid[b, c, y + dy, x + dx], dy + 1, dx + 1]
    inp = torch.cat([F.one_hot(action, cfg.num_actions).float()[:, None].expand(-1, cfg.num_nodes, -1),
                     tr.pe.expand(2, -1, -1)], -1)
    hidden = tr.mask_net(inp) + context.flatten(1, 3)
    expected = torch.sigmoid(tr.mask_out(F.leaky_relu(hidden))).gather(-1, codes[..., None])[..., 0]
    assert torch.allclose(tr.intervention_probs(X, action), expected, atol=1e-5)
    if g > 3:  # a code three cells away from node 0 is outside its window
        far = codes.clone()
        far[:, 3 * g + 3] = (far[:, 3 * g + 3] + 1) % v
        X_far = F.one_hot(far, v).float()
        assert torch.allclose(tr.intervention_probs(X_far, action)[:, 0], tr.intervention_probs(X, action)[:, 0])


def test_mask_context_needs_a_hidden_layer_and_fits_the_grid() -> None:
    with pytest.raises(ValueError, match="mask_hidden"):
        ModelConfig.tiny(mask_context=1)
    with pytest.raises(ValueError, match="mask_context"):
        ModelConfig.tiny(mask_hidden=4, mask_context=ModelConfig.tiny().grid_size)


# --- B28: the intervened head reads the codes around its node ---------------------------------------------------
def test_intervention_context_reads_the_window_around_each_node_and_nothing_past_it() -> None:
    """Changing a code moves the context logits of the nodes within r cells (Chebyshev) of it, in every codebook
    (the K nodes of a cell share the convolution), and of no other."""
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(intervention_context=1, positional_dropout=0.0)
    ctx = CausalVQ(cfg).eval().transition.context
    g, v = cfg.grid_size, cfg.codebook_size
    codes = torch.randint(0, v, (1, cfg.num_nodes))
    action = torch.tensor([2])
    y0, x0 = 1, 2
    moved = codes.clone()
    moved[0, y0 * g + x0] = (moved[0, y0 * g + x0] + 1) % v
    with torch.no_grad():
        changed = (ctx(moved, action) - ctx(codes, action)).abs().amax(-1)[0] > 1e-6  # (n,)
    window = torch.tensor([max(abs(y - y0), abs(x - x0)) <= 1
                           for _ in range(cfg.num_codebooks) for y in range(g) for x in range(g)])
    assert torch.equal(changed, window)


def test_intervention_context_adds_to_the_intervened_head_only() -> None:
    """Head 0 ("unchanged") is the same with and without the context network, head a + 1 gains its logits, and a
    pass without an action is untouched; without the switch there is no such network (the official layer)."""
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(intervention_context=1, positional_dropout=0.0)
    tr = CausalVQ(cfg).eval().transition
    codes = torch.randint(0, cfg.codebook_size, (3, cfg.num_nodes))
    action = torch.tensor([0, 3, 5])
    with torch.no_grad():
        out = tr(codes, action, sample=False)
        no_action = tr(codes, sample=False)
        context, tr.context = tr.context, None
        plain, plain_no_action = tr(codes, action, sample=False), tr(codes, sample=False)
        extra = context(codes, action)
    assert torch.allclose(out.head_logits[:, :, 0], plain.head_logits[:, :, 0])
    assert torch.allclose(out.head_logits[:, :, 1], plain.head_logits[:, :, 1] + extra, atol=1e-6)
    assert extra.abs().amax() > 0.01
    assert torch.equal(no_action.probs, plain_no_action.probs)
    assert not any(k.startswith("transition.context") for k in CausalVQ(ModelConfig.tiny()).state_dict())


def test_intervention_context_trains_from_the_transition_loss() -> None:
    torch.manual_seed(0)
    tr = CausalVQ(ModelConfig.tiny(intervention_context=1)).transition
    codes = torch.randint(0, tr.config.codebook_size, (4, tr.config.num_nodes))
    out = tr(codes, torch.tensor([0, 1, 2, 3]))
    (out.probs * torch.rand_like(out.probs)).sum().backward()
    assert tr.context.conv.weight.grad.abs().sum() > 0 and tr.context.action.weight.grad.abs().sum() > 0


def test_intervened_weight_adds_the_intervened_heads_own_cross_entropy_on_every_node() -> None:
    """B29: ν·CE(ŷ^a, c^y) over all nodes joins the regulariser; ν = 0 is the loss as before."""
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(positional_dropout=0.0, mask_weight=1.0)
    model = CausalVQ(cfg)
    cx, cy, a = _random_steps(cfg)

    def run(weight: float):
        model.config = dataclasses.replace(cfg, intervened_weight=weight)
        torch.manual_seed(1)
        return model.transition_losses(cx, cy, a)

    plain, added = run(0.0), run(0.5)
    torch.manual_seed(1)
    out = model.transition(model.flatten_codes(cx), a, sample=True)
    head = losses.code_cross_entropy(out.head_logits[:, :, 1].softmax(-1), model.flatten_codes(cy))
    extra = (added.regularizer - plain.regularizer).detach().item()
    assert extra == pytest.approx(0.5 * head.detach().item(), rel=1e-5)
    assert added.ce.detach().item() == plain.ce.detach().item()
    with pytest.raises(ValueError, match="intervened_weight"):
        ModelConfig.tiny(intervened_weight=-1.0)


def test_intervened_weight_teaches_the_head_on_nodes_outside_the_mask() -> None:
    """Without B29 a node the mask leaves gives the intervened head no gradient; with it, it does."""
    torch.manual_seed(0)
    for weight, moved in ((0.0, False), (1.0, True)):
        model = CausalVQ(ModelConfig.tiny(positional_dropout=0.0, intervened_weight=weight))
        with torch.no_grad():  # a mask that picks no node
            model.transition.mask_net.weight.zero_()
            model.transition.mask_net.bias.fill_(-30.0)
        k, h = model.config.num_codebooks, model.config.grid_size
        cx = torch.randint(0, 8, (4, k, h, h))
        model.transition_losses(cx, cx, torch.tensor([0, 1, 2, 3])).loss.backward()
        grad = model.transition.gat2.bias.grad  # the second layer's output bias, head by head
        rows = grad.unflatten(0, (model.config.num_actions + 1, -1))[1:]  # the heads "intervened by a"
        assert bool(rows.abs().sum() > 0) == moved


def test_intervened_own_graph_term_pays_for_no_edge() -> None:
    """B29b: ν's CE read from a pass over the identity graph is the same whatever the graph (complete or empty),
    so the term cannot reward an edge; B29's, read from the loss's own pass, changes with the graph."""
    def term(edge_logit: float, own_graph: bool) -> float:
        model = _forced(0.0, edge_logit).train()  # every node's mask probability 0.5, every edge's ≈ 0 or 1
        cx, cy, a = _pairs(model, 4)
        out = []
        for weight in (0.0, 1.0):
            model.config = dataclasses.replace(model.config, intervened_weight=weight, intervened_own_graph=own_graph)
            torch.manual_seed(1)
            out.append(model.transition_losses(cx, cy, a).regularizer.detach().item())
        return out[1] - out[0]

    assert term(30.0, True) == pytest.approx(term(-30.0, True), rel=1e-6)
    assert abs(term(30.0, False) - term(-30.0, False)) > 1e-3
    torch.manual_seed(0)  # and it trains the head: the intervened heads get a gradient from it
    model = CausalVQ(ModelConfig.tiny(positional_dropout=0.0, intervened_weight=1.0, intervened_own_graph=True))
    cx, cy, a = _random_steps(model.config)
    model.transition_losses(cx, cy, a).loss.backward()
    rows = model.transition.gat2.bias.grad.unflatten(0, (model.config.num_actions + 1, -1))[1:]
    assert rows.abs().sum() > 0


@pytest.mark.parametrize("train", [False, True])
def test_identity_action_pass_skips_the_discoverers_and_gives_the_same_heads(train: bool) -> None:
    """A pass over the identity graph reads no edge probability, so skipping the discoverers changes nothing:
    the same heads and mask as the pass that computes them (training: the same noise draws too)."""
    torch.manual_seed(0)
    tr = CausalVQ(ModelConfig.tiny(positional_dropout=0.0, intervention_context=1)).transition.train(train)
    codes = torch.randint(0, tr.config.codebook_size, (4, tr.config.num_nodes))
    action = torch.tensor([0, 1, 2, 3])
    runs = []
    for graph in (True, False):
        edges = tr.edges
        tr.edges = lambda *args, **kw: edges(*args, **{**kw, "graph": graph})  # noqa: B023
        torch.manual_seed(1)
        runs.append(tr(codes, action, sample=train, identity_graph=True))
        del tr.edges
    full, skipped = runs
    assert full.edge_probs.abs().sum() > 0 and skipped.edge_probs.abs().sum() == 0
    assert torch.equal(full.mask, skipped.mask)
    torch.testing.assert_close(full.head_logits, skipped.head_logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("action_node", "gated", "residual"),
                         [(True, True, True), (True, False, True), (True, True, False), (False, True, True)])
def test_identity_heads_equal_the_graph_network_over_the_identity_graph(action_node: bool, gated: bool,
                                                                        residual: bool) -> None:
    """The identity pass's two sources per node give the dense graph network's heads over the (n + 1)-node identity
    graph, and the same gradients: to the weights, and to the mask through the action node's edges (B19's gate)."""
    torch.manual_seed(0)
    config = ModelConfig.tiny(positional_dropout=0.0, action_node=action_node, gated_attention=gated,
                              graph_residual=residual)
    tr = CausalVQ(config).transition
    b, n = 6, config.num_nodes
    codes = torch.randint(0, config.codebook_size, (b, n))
    action = torch.randint(0, config.num_actions, (b,))
    logits = torch.randn(b, n, requires_grad=True)
    probs = torch.sigmoid(logits)
    m = (probs.detach() > 0.5).float() + probs - probs.detach()  # hard 0/1 with a straight-through gradient
    weight = torch.randn(b, n, 2, config.codebook_size)
    runs = []
    for cheap in (False, True):
        tr.zero_grad()
        logits.grad = None
        terms = tr.project_nodes(tr.node_features(codes))
        H = tr.identity_heads(terms, m, action) if cheap else \
            tr.graph_network(terms, torch.zeros(b, n, n), torch.eye(n).expand(b, n, n), m, action)
        (H * weight).sum().backward(retain_graph=True)
        grads = {name: p.grad.clone() for name, p in tr.named_parameters() if p.grad is not None}
        runs.append((H.detach(), torch.zeros(b, n) if logits.grad is None else logits.grad.clone(), grads))
    (dense, dense_m, dense_w), (cheap, cheap_m, cheap_w) = runs
    torch.testing.assert_close(cheap, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cheap_m, dense_m, rtol=1e-4, atol=1e-5)
    assert dense_w
    for name in dense_w.keys() | cheap_w.keys():  # a weight one path does not read has a zero gradient in the other
        zero = torch.zeros_like(dict(tr.named_parameters())[name])
        torch.testing.assert_close(cheap_w.get(name, zero), dense_w.get(name, zero), rtol=1e-4, atol=1e-5, msg=name)
    if action_node:  # the mask is read: through the edges' weights, and their gate where B19 is on
        assert dense_m.abs().sum() > 0
    with torch.no_grad():  # and without gradients (the fused attention where it is built)
        terms = tr.project_nodes(tr.node_features(codes))
        torch.testing.assert_close(tr.identity_heads(terms, m, action), dense, rtol=1e-5, atol=1e-5)


def test_intervened_alone_is_the_identity_pass_intervened_head() -> None:
    """B29b's term reads one head of the identity pass: the same logits as the whole pass (the same draws of
    dropout and mask, in training), and the same gradients."""
    torch.manual_seed(0)
    tr = CausalVQ(ModelConfig.tiny(intervention_context=1)).transition.train()
    assert tr.dropout.p > 0
    codes = torch.randint(0, tr.config.codebook_size, (5, tr.config.num_nodes))
    action = torch.randint(0, tr.config.num_actions, (5,))
    runs = []
    for alone in (False, True):
        tr.zero_grad()
        torch.manual_seed(1)
        head = tr.intervened_alone(codes, action) if alone else \
            tr(codes, action, sample=True, identity_graph=True).head_logits[:, :, 1]
        head.square().sum().backward()
        runs.append((head.detach(), {k: p.grad.clone() for k, p in tr.named_parameters() if p.grad is not None}))
    (whole, whole_grads), (alone, alone_grads) = runs
    torch.testing.assert_close(alone, whole, rtol=1e-5, atol=1e-5)
    for name in whole_grads.keys() | alone_grads.keys():  # head "unchanged" reads weights the term does not
        zero = torch.zeros_like(dict(tr.named_parameters())[name])
        torch.testing.assert_close(alone_grads.get(name, zero), whole_grads.get(name, zero), rtol=1e-4, atol=1e-5,
                                   msg=name)
    assert alone_grads["mask_net.weight"].abs().sum() > 0  # the mask learns from the term, through the action node


def test_intervention_context_fits_the_grid() -> None:
    with pytest.raises(ValueError, match="intervention_context"):
        ModelConfig.tiny(intervention_context=ModelConfig.tiny().grid_size)
    with pytest.raises(ValueError, match="intervention_hidden"):
        ModelConfig.tiny(intervention_context=1, intervention_hidden=0)

# --- the evaluation section, on models whose structure is set by hand --------------------------------------------
def _forced(mask_logit: float, edge_logit: float) -> CausalVQ:
    """A tiny model whose mask is all or nothing and whose graph is complete or empty (through the biases)."""
    torch.manual_seed(0)
    model = CausalVQ(ModelConfig.tiny(positional_dropout=0.0)).eval()
    with torch.no_grad():
        model.transition.mask_net.weight.zero_()
        model.transition.mask_net.bias.fill_(mask_logit)
        model.transition.discoverers.w2.zero_()
        model.transition.discoverers.b2.fill_(edge_logit)
    return model


def _pairs(model: CausalVQ, b: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g, k, v = model.config.grid_size, model.config.num_codebooks, model.config.codebook_size
    cx = torch.randint(0, v, (b, k, g, g), generator=torch.Generator().manual_seed(1))
    cy = cx.clone()
    cy[:, 0, 0, :2] = (cy[:, 0, 0, :2] + 1) % v  # every step changes nodes 0 and 1
    return cx, cy, torch.arange(b) % model.config.num_actions


def test_evaluate_structure_reads_the_models_masks_and_graphs() -> None:
    import numpy as np

    from causalvq.metrics.structure import evaluate_structure

    names = ModelConfig.tiny().factor_names
    everything = _forced(mask_logit=20.0, edge_logit=20.0)
    cx, cy, a = _pairs(everything)
    n = everything.config.num_nodes
    s = evaluate_structure(everything, cx, cy, a, names, np.random.default_rng(0), batch_size=5)
    assert s.mask.recall == 1.0 and s.mask.precision == pytest.approx(2 / n) and s.mask.empty_share == 0.0
    assert s.action_in_degree == n - 1 and s.no_action_in_degree == n - 1
    assert s.action_in_degree_intervened == n - 1 and s.action_in_degree_kept is None  # every node intervened
    assert s.propagation.num_interventions == len(a)
    nothing = _forced(mask_logit=-20.0, edge_logit=-20.0)
    s = evaluate_structure(nothing, cx, cy, a, names, np.random.default_rng(0))
    assert s.mask.recall == 0.0 and s.mask.precision is None and s.mask.empty_share == 1.0
    assert s.action_in_degree == 0.0 and s.no_action_in_degree == 0.0
    assert s.action_in_degree_intervened is None and s.action_in_degree_kept == 0.0  # nothing intervened
    # no edges: a node's output depends on its own code only, so do() on one node cannot move another
    assert s.propagation.propagating_share == 0.0 and s.propagation.changed_nodes == 0.0
    assert set(s.per_factor_mask) == set(names)


def test_factor_maps_average_the_mask_and_the_change_per_action() -> None:
    from causalvq.metrics.structure import factor_maps

    model = _forced(mask_logit=20.0, edge_logit=0.0)
    cx, cy, a = _pairs(model)
    maps = factor_maps(model, cx, cy, a, batch_size=5)
    A = model.config.num_actions
    assert maps.mask.shape == (A, *cx.shape[1:]) and torch.equal(maps.pairs, torch.bincount(a, minlength=A))
    assert torch.all(maps.mask[maps.pairs > 0] == 1.0)
    expected = torch.zeros(cx.shape[1:])
    expected[0, 0, :2] = 1.0
    assert torch.equal(maps.changed[0], expected)


def test_expected_in_degree_counts_off_diagonal_edge_probabilities() -> None:
    C = torch.full((2, 4, 4), 0.5)
    assert float(losses.expected_in_degree(C)) == pytest.approx(3 * 0.5)
    eye = torch.eye(4).expand(2, 4, 4)
    assert float(losses.expected_in_degree(eye)) == 0.0
    p = torch.full((1, 3, 3), 0.3, requires_grad=True)
    losses.expected_in_degree(p).backward()
    off = ~torch.eye(3, dtype=torch.bool)
    assert torch.allclose(p.grad[0][off], torch.full((6,), 1 / 3)) and torch.all(p.grad[0].diagonal() == 0)


def test_in_degree_above_prices_only_the_in_edges_past_the_budget() -> None:
    """B26: node j's in-edges are column j without its self-loop; only what exceeds the budget costs, per node."""
    C = torch.zeros(1, 4, 4)
    C[0, :, 0] = 1.0  # node 0: three in-edges (and its self-loop, which is free)
    C[0, 1, 2] = 0.5  # node 2: half an in-edge
    assert float(losses.in_degree_above(C, 0.0)) == pytest.approx(float(losses.expected_in_degree(C)))
    assert float(losses.in_degree_above(C, 2.0)) == pytest.approx((3 - 2) / 4)  # node 2 stays under the budget
    assert float(losses.in_degree_above(C, 3.0)) == 0.0
    p = C.clone().requires_grad_(True)
    losses.in_degree_above(p, 1.0).backward()
    expected = torch.zeros(4, 4)
    expected[1:, 0] = 1 / 4  # only node 0's incoming off-diagonal entries carry the price's gradient
    assert torch.equal(p.grad[0], expected)


def test_edge_budget_replaces_the_price_of_every_edge_by_the_price_above_it() -> None:
    """With κ > 0 the loss prices E[in-degree] (B23), or its part above ``edge_budget`` (B26); the training log
    reports the pass's mask size and expected in-degree either way."""
    cfg = ModelConfig.tiny(positional_dropout=0.0, edge_weight=0.2)
    k, h = cfg.num_codebooks, cfg.grid_size
    cx, cy = torch.randint(0, 8, (4, k, h, h)), torch.randint(0, 8, (4, k, h, h))
    a = torch.tensor([0, 1, 2, 3])

    def run(budget: float):
        torch.manual_seed(0)
        model = CausalVQ(dataclasses.replace(cfg, edge_budget=budget))
        torch.manual_seed(1)
        out = model.transition(model.flatten_codes(cx), a, sample=True)
        torch.manual_seed(1)
        return model.transition_losses(cx, cy, a), out

    (every, out), (above, _), (free, _) = run(0.0), run(1.0), run(float(cfg.num_nodes))
    price = lambda b: cfg.edge_weight * float(losses.in_degree_above(out.edge_probs, b))  # noqa: E731
    assert float(every.regularizer - free.regularizer) == pytest.approx(price(0.0), rel=1e-5)
    assert float(above.regularizer - free.regularizer) == pytest.approx(price(1.0), rel=1e-5)
    assert 0 < price(1.0) < price(0.0)
    assert float(every.in_degree) == pytest.approx(float(losses.expected_in_degree(out.edge_probs)))
    assert float(every.mask_size) == pytest.approx(float(out.mask.sum(-1).mean()))
    with pytest.raises(ValueError, match="edge_budget"):
        ModelConfig.tiny(edge_budget=-1.0)


def _structure(mask_nodes: float, changed_nodes: float, precision: float, action_deg: float,
               propagating: float | None, spread: float | None = None):
    from causalvq.metrics.structure import MaskScores, PropagationScores, StructureResult

    m = MaskScores(precision=precision, recall=0.8, size_ratio=mask_nodes / changed_nodes, empty_share=0.0,
                   mask_nodes=mask_nodes, changed_nodes=changed_nodes, num_pairs=10)
    d = PropagationScores(propagating_share=propagating, changed_nodes=spread, agreement=None if spread is None
                          else 0.5, num_interventions=10)
    per = {"hue": dataclasses.replace(m, mask_nodes=mask_nodes + 3), "shape": dataclasses.replace(m, mask_nodes=2.0)}
    return StructureResult(mask=m, per_factor_mask=per, action_in_degree=action_deg, no_action_in_degree=0.0,
                           per_factor_action_in_degree={"hue": action_deg, "shape": action_deg},
                           propagation=d, per_factor_propagation={"hue": d, "shape": d})


def test_structure_in_words_says_what_the_figures_say() -> None:
    """The plain-words paragraph of eval.md and the model card: a mask over every node is called useless for
    locating factors; a sparse one gets its per-factor sizes; do() is said to spread only when it does."""
    from causalvq.metrics.report import structure_in_words

    dense = structure_in_words(_structure(64.0, 19.5, 0.30, 62.4, 0.0), ("hue", "shape"), 64)
    assert "intervenes on 64.0 of the 64 nodes" in dense and "changes 19.5" in dense
    assert "covers nearly every node" in dense and "per factor" not in dense
    assert "62.40 in-edges" in dense and "does not propagate" in dense and "puts each change" not in dense

    sparse = structure_in_words(_structure(21.7, 22.8, 0.85, 0.67, 0.0), ("hue", "shape"), 64)
    assert "covers nearly every node" not in sparse and "85 % of the intervened nodes" in sparse
    assert "hue 24.7, shape 2.0" in sparse and "puts each change where it happens" in sparse

    spreading = structure_in_words(_structure(10.0, 12.0, 0.9, 3.0, 0.4, 2.5), ("hue", "shape"), None)
    assert "of the" not in spreading.split(".")[0]  # no node count given: none invented
    assert "40 % of 10 tries, 2.5 other nodes" in spreading and "carries part of each change" in spreading
    assert "does not propagate" not in spreading
    assert "cells around it" not in sparse  # no B28 context: not mentioned
    with_context = structure_in_words(_structure(21.7, 22.8, 0.85, 0.67, 0.0), ("hue", "shape"), 64, context=2)
    assert "the 5×5 cells around it" in with_context and "(B28)" in with_context
    assert "into each node the action intervenes on" not in sparse  # an eval.json without the split: not invented
    split = structure_in_words(dataclasses.replace(_structure(10.0, 12.0, 0.9, 3.0, 0.0), action_in_degree_intervened=
                                                   19.2, action_in_degree_kept=0.0), ("hue", "shape"), 64)
    assert "3.00 in-edges per node" in split and "(19.20 into each node the action intervenes on, 0.00 into" in split
