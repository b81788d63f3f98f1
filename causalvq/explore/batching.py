"""One batched call for the single items that concurrent threads ask for at the same time.

The app answers several slider moves at once (one thread each). Each move runs a chain of single transitions
`(1, k, h, w)` → `(1, k, h, w)`; a transition of one grid is mostly fixed cost on a CPU, so the threads'
transitions are better run together. ``Batcher`` does that without waiting for anyone: a thread that finds no
batch running runs one at once with whatever is pending (at least its own item); items that arrive meanwhile wait
and go together in the next batch, which one of them runs. A thread alone is never delayed.

Axis legend: ``b`` batch (items stacked along the first axis).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(eq=False)
class _Item:
    inputs: tuple[torch.Tensor, ...]  # each `(1, ...)`
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[torch.Tensor, ...] | None = None
    error: BaseException | None = None


class Batcher:
    """Calls ``fn`` on the items of concurrent ``__call__``s stacked along their first axis.

    Args:
        fn: a function of tensors `(b, ...)` returning a tuple of tensors `(b, ...)` whose row i depends on row i
            of the inputs only (so a batched answer is the answer alone: the caller checks that for its ``fn``).
        max_batch: most items in one call; 1 turns batching off (each call runs alone, in its own thread).
    """

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]], max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.fn, self.max_batch = fn, max_batch
        self._lock = threading.Lock()
        self._pending: list[_Item] = []
        self._busy = False  # a thread is running a batch, or has been handed the next one
        self.calls = self.items = 0  # batched calls made and items they answered (for benchmarks)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``fn(*inputs)`` for inputs of batch size 1, run in a batch with the other threads' pending items
        (``max_batch`` 1: run at once in this thread, beside any other)."""
        if self.max_batch == 1:
            return tuple(self.fn(*inputs))
        item = _Item(inputs)
        with self._lock:
            self._pending.append(item)
            lead, self._busy = not self._busy, True
        if not lead:
            item.done.wait()
            lead = item.result is None and item.error is None  # woken to run the next batch, which holds it
        if lead:
            self._run()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _run(self) -> None:
        """Run one batch of the pending items, then hand the next one to the first item still waiting."""
        with self._lock:
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
        try:
            stacked = [torch.cat(parts) for parts in zip(*(it.inputs for it in batch))]  # each (b, ...)
            out = self.fn(*stacked)
            for i, it in enumerate(batch):
                it.result = tuple(o[i:i + 1] for o in out)
        except BaseException as err:  # noqa: BLE001 - every waiting caller raises it
            for it in batch:
                it.error = err
        finally:
            with self._lock:
                self.calls, self.items = self.calls + 1, self.items + len(batch)
                nxt: Any = self._pending[0] if self._pending else None
                self._busy = nxt is not None
            for it in batch:
                it.done.set()
            if nxt is not None:
                nxt.done.set()  # no result yet: it runs the next batch
