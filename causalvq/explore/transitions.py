"""The slider moves' transitions, each computed once: a bounded, thread-safe memo of (code grid, action) → step.

A slider position is a chain of single deterministic transitions from the input's codes (factor order, ``|s_f|``
steps of factor f: ``Explorer.slider_actions``). A deterministic transition (eval mode, mask and graph thresholded
at 0.5) is a function of the grid and the action only, so one step is kept under the grid's bytes and the action:

- a chain walks from its input's grid, step by step, and computes only the steps it has not met: one step of a
  slider with every later slider (factor order) at 0 costs one transition away from 0 and none back, and a
  position met before, by this visitor or another from the same grid, none;
- two chains that reach the same grid (a step that changes no code, a factor at its end, two inputs with the same
  codes) share every step after it, which a cache keyed on the input and the action prefix does not;
- nothing can go stale: another input, or any other grid, is another key.

What a move must still compute: every step after the moved slider, when a later slider is away from 0, runs on a
grid not met before (the steps are composed in factor order), so those steps are new transitions.

Concurrent chains that need the same missing step at once wait for the one thread that computes it. At most
``size`` steps are kept (least recently used first out; every step a chain walks through is refreshed, so the
chains of the visitors moving sliders now stay); a step holds two copies of a grid's codes and its mask, about
17·n bytes plus ~0.5 KB of Python objects (n nodes: 1.6 KB at n = 64).

Axis legend: ``b`` grids (1 for a slider move), ``k`` codebooks, ``h w`` latent grid, ``n`` nodes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from causalvq.explore.lru import LRU


@dataclass(frozen=True)
class Step:
    """One transition of a grid by an action, as the memo keeps it (never modified: callers share it)."""

    codes: torch.Tensor  # (b, k, h, w) long, the grid after the transition
    mask: torch.Tensor  # (b, n) bool, the nodes the transition intervened on
    key: bytes  # grid_key(codes): the key of the next step from this grid


def grid_key(codes: torch.Tensor) -> bytes:
    """The memo's key of code grids `(b, k, h, w)`: their dtype, shape and codes' bytes."""
    return f"{codes.dtype}{tuple(codes.shape)}".encode() + codes.detach().cpu().contiguous().numpy().tobytes()


class TransitionCache:
    """Chains of single transitions with every step computed once (see the module docstring).

    Args:
        run: one deterministic transition of grids `(b, k, h, w)` by one action `int`: the codes `(b, k, h, w)` and
            the bool intervened mask `(b, n)`.
        num_nodes: n, the nodes of a grid (the mask of an empty chain).
        size: most steps kept (≥ 1).
    """

    def __init__(self, run: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]], num_nodes: int,
                 size: int = 4096) -> None:
        self.run, self.num_nodes, self.size = run, num_nodes, size
        self._steps: LRU[tuple[bytes, int], Step] = LRU(size)  # raises ValueError for size < 1
        self._running: dict[tuple[bytes, int], threading.Event] = {}  # steps being computed now → done
        self._lock = threading.Lock()
        self.computed = self.reused = 0  # transitions run, and steps answered from the memo (tests, benchmarks)

    def __len__(self) -> int:
        return len(self._steps)

    def clear(self) -> None:
        """Forget every kept step (the steps being computed now still finish)."""
        with self._lock:
            self._steps.clear()

    def walk(self, codes: torch.Tensor, actions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply ``actions`` in order to ``codes`` `(b, k, h, w)`: the last grid `(b, k, h, w)` and the bool mask
        `(b, n)` of the nodes any step intervened on (``codes`` itself and no node for no action)."""
        key, cur = grid_key(codes), codes
        mask = torch.zeros(codes.shape[0], self.num_nodes, dtype=torch.bool)
        for a in actions:
            step = self.step(cur, key, int(a))
            cur, key, mask = step.codes, step.key, mask | step.mask
        return cur, mask

    def step(self, codes: torch.Tensor, key: bytes, action: int) -> Step:
        """The transition of ``codes`` (whose ``grid_key`` is ``key``) by ``action``: kept, being computed by another
        thread (then its answer), or computed here."""
        k = (key, action)
        while True:
            with self._lock:
                hit = self._steps.get(k)
                if hit is not None:
                    self.reused += 1
                    return hit
                running = self._running.get(k)
                if running is None:
                    running = self._running[k] = threading.Event()
                    break
            running.wait()  # then the step is kept (or its thread failed, or it left already: compute it here)
        try:
            out, mask = self.run(codes, action)
            step = Step(codes=out.clone(), mask=mask.clone(), key=grid_key(out))  # clones: no batch kept alive
            with self._lock:
                self.computed += 1
                self._steps.put(k, step)
        finally:
            with self._lock:
                del self._running[k]
            running.set()
        return step
