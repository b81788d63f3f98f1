"""The speed-ups of the transition layer, each an exact rewrite of a computation the model's modules state plainly.

- ``causalvq.kernels.pairwise``: the pairwise additive scores of the discoverers and of GATv2 attention, in
  cache-sized blocks on plain torch, or in the fused C++ kernel (``pairwise.cpp``) once ``enable()`` has loaded it;
- ``causalvq.kernels.grouped``: per-sample choice among several linear maps without per-sample weight copies;
- ``causalvq.kernels.build``: compiles the C++ kernel with the machine's compiler (once, cached by torch) and
  never waits on the lock of a build that died.

The fused kernel is opt-in and explicit: nothing is built or switched at import. The training CLI, the app and
the benchmarks call ``enable()``; the library and the tests run on plain torch until something does. Both paths
compute the same numbers (tests/test_fused_kernel.py).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

_KERNEL: ModuleType | None = None  # the compiled kernel, once ``enable`` has built or loaded it
_FAILURE: str | None = None  # why the last ``enable`` could not load it (said once; ``disable`` forgets it)


def enable(verbose: bool = False) -> bool:
    """Build (first call: about a minute, cached by torch) and use the fused C++ kernel; True once it is in use.

    On any failure (no compiler or ninja, a failed build, another process building for longer than
    ``build.WAIT_S``) the process stays on plain torch, and one line on stderr says so; later calls return False
    without trying again until ``disable()``. ``CAUSALVQ_FUSED_KERNEL=0`` forbids the kernel (False, silently).
    """
    global _KERNEL, _FAILURE
    if os.environ.get("CAUSALVQ_FUSED_KERNEL") == "0":
        return False
    if _KERNEL is None and _FAILURE is None:
        try:
            from causalvq.kernels.build import build

            _KERNEL = build(verbose=verbose)
        except Exception as err:  # any build failure: plain torch, the same numbers
            _FAILURE = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            print(f"causalvq: fused kernel unavailable ({_FAILURE}); running on plain torch", file=sys.stderr,
                  flush=True)
    return _KERNEL is not None


def disable() -> None:
    """Go back to the plain-torch path (a later ``enable`` loads the kernel again, or tries again)."""
    global _KERNEL, _FAILURE
    _KERNEL = _FAILURE = None


def loaded() -> ModuleType | None:
    """The compiled kernel while it is in use, else None (plain torch)."""
    return _KERNEL
