"""Slider moves compute each transition once (issue 18): ``causalvq.explore.transitions.TransitionCache``.

Every answer of ``Handlers.move`` on the memo equals, pixel for pixel, the answer of the serial path (every
transition of the chain run anew, no cache) over random walks of one slider one step, moves back and forth, the
input image changing between moves, a memo of 5 steps, and 8 threads at once. The comparison is shown to catch a
cache that answers the previous input's chain. A move computes exactly the steps no earlier chain met, never more
than the prefix cache it replaces, and a move computes no panel outside the sliders' tab.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import app
from causalvq.config import SHAPES3D_FACTORS, SHAPES3D_SIZES, ModelConfig
from causalvq.explore import explorer
from causalvq.explore.explorer import Explorer
from causalvq.explore.transitions import TransitionCache, grid_key
from causalvq.imaging import to_uint8
from causalvq.model import CausalVQ

THREADS = 8
F = len(SHAPES3D_FACTORS)
Move = tuple[int, list[int]]  # (input image index, slider values)


class Serial(Explorer):
    """The serial, uncached path: every transition of a slider chain run anew, one grid at a time, and decoded."""

    def _decode(self, codes: torch.Tensor) -> np.ndarray:
        return to_uint8(self.model.decode_codes(codes))[0]

    def apply_actions(self, codes: torch.Tensor, actions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        c, mask = codes, torch.zeros(codes.shape[0], self.config.num_nodes, dtype=torch.bool)
        for a in actions:
            tr = self.model.transition_codes(c, torch.tensor([int(a)]))
            c, mask = tr.codes, mask | tr.mask
        return c, mask


class ForgetsTheInput(TransitionCache):
    """A broken memo for the negative check: its chains start from one key whatever the input, so after the input
    changes it answers the previous input's steps (a stale state)."""

    def walk(self, codes: torch.Tensor, actions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        key, cur = b"the input", codes
        mask = torch.zeros(codes.shape[0], self.num_nodes, dtype=torch.bool)
        for a in actions:
            step = self.step(cur, key, int(a))
            cur, key, mask = step.codes, step.key, mask | step.mask
        return cur, mask


@pytest.fixture(autouse=True)
def as_served(monkeypatch: pytest.MonkeyPatch):
    """One torch thread, as the app serves, and batched transitions on the plain-torch path too (the app batches
    them on the fused kernel only), so the memo's steps also come through the batcher."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(explorer, "batching_pays", lambda: True)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> CausalVQ:
    torch.manual_seed(0)
    return CausalVQ(ModelConfig.tiny(factor_names=SHAPES3D_FACTORS, factor_sizes=SHAPES3D_SIZES)).eval()


@pytest.fixture(scope="module")
def images(model: CausalVQ) -> list[np.ndarray]:
    ex = Explorer(model, calibration_samples=4)
    return [ex.dataset.render(np.array([[i, 9 - i, 2 * i, i % 8, i % 4, 3 * i]]))[0] for i in range(4)]


def walk(max_steps: Sequence[int], moves: int, seed: int, inputs: int, switch: float = 0.15) -> list[Move]:
    """Random moves of one slider one step (a person dragging), with moves straight back (back and forth) and, with
    probability ``switch``, another input image (sliders kept, as the page keeps them until its reset)."""
    rng, cur, image, out = random.Random(seed), [0] * len(max_steps), seed % inputs, []
    while len(out) < moves:
        if rng.random() < switch:
            image = rng.randrange(inputs)
        f, step = rng.randrange(len(max_steps)), rng.choice((-1, 1))
        if abs(cur[f] + step) > max_steps[f]:
            step = -step
        cur[f] += step
        out.append((image, list(cur)))
        if rng.random() < 0.25:  # and back
            cur[f] -= step
            out.append((image, list(cur)))
    return out[:moves]


def answers(h: app.Handlers, sessions: list[app.Session], moves: Sequence[Move]) -> list[tuple]:
    pad = [0] * (h.slots - F)
    return [h.move(sessions[i], *v, *pad) for i, v in moves]


def serial_answers(model: CausalVQ, images: list[np.ndarray], moves: Sequence[Move]) -> list[tuple]:
    ex = Serial(model, calibration_samples=4, max_batch=1)
    return answers(app.Handlers(ex), sessions_of(ex, images), moves)


def sessions_of(ex: Explorer, images: list[np.ndarray]) -> list[app.Session]:
    return [app.Session(checkpoint=ex.source, input=ex.load_image(im)) for im in images]


def same(got: tuple, want: tuple) -> bool:
    return len(got) == len(want) and all(
        np.array_equal(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else a == b
        for a, b in zip(got, want))


def first_difference(got: list[tuple], want: list[tuple], moves: Sequence[Move]) -> str | None:
    for m, (g, w) in enumerate(zip(got, want, strict=True)):
        if not same(g, w):
            return f"move {m} {moves[m]} differs from the serial answer"
    return None


@torch.inference_mode()
def chain(model: CausalVQ, codes: torch.Tensor, actions: Sequence[int]) -> tuple[list[tuple[bytes, int]], bytes]:
    """The (grid, action) steps of a chain and the key of the grid it ends on, on the serial path."""
    steps, c = [], codes
    for a in actions:
        steps.append((grid_key(c), int(a)))
        c = model.transition_codes(c, torch.tensor([int(a)])).codes
    return steps, grid_key(c)


def test_random_moves_back_and_forth_and_new_images_equal_the_serial_path(model: CausalVQ, images) -> None:
    ex = Explorer(model, calibration_samples=4)
    moves = walk(ex.max_steps, 60, seed=0, inputs=len(images))
    assert len({i for i, _ in moves}) > 1  # the input changes during the walk
    got = answers(app.Handlers(ex), sessions_of(ex, images), moves)
    assert first_difference(got, serial_answers(model, images, moves), moves) is None
    assert ex.transitions.reused > ex.transitions.computed  # most steps came from the memo


def test_the_comparison_catches_a_cache_that_keeps_the_previous_input(model: CausalVQ, images) -> None:
    ex = Explorer(model, calibration_samples=4)
    ex.transitions = ForgetsTheInput(ex._slider_step, ex.config.num_nodes)
    moves = walk(ex.max_steps, 60, seed=0, inputs=len(images))
    got = answers(app.Handlers(ex), sessions_of(ex, images), moves)
    assert first_difference(got, serial_answers(model, images, moves), moves) is not None


def test_a_memo_of_five_steps_stays_bounded_and_exact(model: CausalVQ, images) -> None:
    ex = Explorer(model, calibration_samples=4, cache_size=5)
    h, sessions = app.Handlers(ex), sessions_of(ex, images)
    moves = walk(ex.max_steps, 40, seed=3, inputs=len(images))
    want = serial_answers(model, images, moves)
    for m, (i, v) in enumerate(moves):
        assert same(answers(h, sessions, [(i, v)])[0], want[m]), f"move {m} {moves[m]}"
        assert len(ex.transitions) <= 5


def test_eight_threads_at_once_equal_the_serial_path_and_compute_each_step_once(model: CausalVQ, images) -> None:
    ex = Explorer(model, calibration_samples=4)  # batches the transitions of concurrent moves
    h, sessions = app.Handlers(ex), sessions_of(ex, images)
    walks = [walk(ex.max_steps, 16, seed=t % 6, inputs=len(images)) for t in range(THREADS)]  # 2 pairs alike
    start = threading.Barrier(THREADS, timeout=120)  # a thread that dies before it breaks the wait, never hangs it

    def run(moves: list[Move]) -> list[tuple]:
        start.wait()
        return answers(h, sessions, moves)

    with ThreadPoolExecutor(THREADS) as pool:
        got = list(pool.map(run, walks))
    for t, moves in enumerate(walks):
        assert first_difference(got[t], serial_answers(model, images, moves), moves) is None, f"thread {t}"
    steps = {s for moves in walks for i, v in moves
             for s in chain(model, sessions[i].input.codes, ex.slider_actions(v))[0]}
    assert ex.transitions.computed == len(steps)  # every step once, although two threads walked each of 2 walks
    assert ex._steps.items > ex._steps.calls  # transitions of different threads did run as one call


def test_a_move_computes_only_the_steps_no_chain_met_before(model: CausalVQ, images) -> None:
    ex = Explorer(model, calibration_samples=4)
    h, sessions = app.Handlers(ex), sessions_of(ex, images)
    moves = walk(ex.max_steps, 80, seed=5, inputs=len(images))
    met: set[tuple[bytes, int]] = set()
    decoded: set[bytes] = set()
    prefixes: set[tuple[bytes, tuple[int, ...]]] = set()
    memo = prefix = 0
    for i, v in moves:
        codes, actions = sessions[i].input.codes, ex.slider_actions(v)
        steps, last = chain(model, codes, actions)
        before, decodes = ex.transitions.computed, ex.decodes
        answers(h, sessions, [(i, v)])
        assert ex.transitions.computed - before == len(set(steps) - met), (i, v)
        assert ex.decodes - decodes == int(last not in decoded), (i, v)  # a position met before: not decoded
        met |= set(steps)
        decoded.add(last)
        memo += ex.transitions.computed - before
        base, t = grid_key(codes), len(actions)  # the prefix cache this memo replaced: (input, action prefix)
        while t and (base, actions[:t]) not in prefixes:
            t -= 1
        prefix += len(actions) - t
        prefixes |= {(base, actions[:u]) for u in range(1, len(actions) + 1)}
    assert memo <= prefix

    # a fresh explorer: one step of the last slider away from 0 costs at most one transition (none when that step
    # was met already, e.g. a step that changes no code), back costs none, and so does a position met before
    ex = Explorer(model, calibration_samples=4)
    h, s = app.Handlers(ex), sessions_of(ex, images[:1])
    answers(h, s, [(0, [1, 0, 0, 0, 0, 2])])
    for v, most in (([1, 0, 0, 0, 0, 3], 1), ([1, 0, 0, 0, 0, 2], 0), ([1, 0, 0, 0, 0, 3], 0), ([1, 0, 0, 0, 0, 2], 0)):
        before = ex.transitions.computed
        answers(h, s, [(0, v)])
        assert ex.transitions.computed - before <= most, v


def test_a_move_computes_nothing_for_hidden_panels(model: CausalVQ) -> None:
    """The slider event answers the sliders' own tab only; the other tabs compute when they are opened (a tab's
    select event) or on their own button."""
    demo = app.build_demo(Explorer(model, source="tiny", calibration_samples=4), choices=["tiny"])
    fns = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}

    def tab(block) -> str | None:
        while block is not None and not isinstance(block, app.gr.Tab):
            block = block.parent
        return None if block is None else block.elem_id

    slide = fns["slide"]
    assert {tab(demo.blocks[b]) for b, _ in slide.targets} == {"panel-interventions"}
    assert {tab(c) for c in slide.outputs} == {"panel-interventions"}
    for name, tab_id in (("graph_focus", "panel-graph"), ("factor_maps", "panel-maps")):
        events = {(tab(demo.blocks[b]), e) for b, e in fns[name].targets}
        assert (tab_id, "select") in events and all(t == tab_id for t, _ in events), name
    for name in ("graph", "graph_node"):  # the graph's other events: its own widgets only
        assert all(tab(demo.blocks[b]) == "panel-graph" for b, _ in fns[name].targets), name
    for name in ("traverse", "retrieve", "do"):
        assert {e for _, e in fns[name].targets} == {"click"}, name
