"""Compile or load the fused C++ kernel (``pairwise.cpp``) without ever hanging on a dead build.

``torch.utils.cpp_extension.load`` guards its build folder with a ``lock`` file: a builder creates it, builds, and
removes it; every other process waits, without a bound, for it to disappear. A build that is killed (SIGKILL, a
lost machine) leaves the file behind, and every later run would wait forever. Here every build of the kernel
first takes an OS lock (``fcntl.flock`` on ``causalvq.lock`` in the same folder), which the OS releases when its
holder dies: a live builder makes the others wait (at most ``WAIT_S``), and a torch ``lock`` found while holding
the OS lock was left by a builder that died, so it is removed before ``load`` would wait on it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

NAME = "causalvq_pairwise"
SOURCE = Path(__file__).with_name("pairwise.cpp")
CFLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp")
LDFLAGS = ("-fopenmp",)
WAIT_S = 600.0  # longest wait for another live process's build (a first build takes about a minute)


def build(verbose: bool = False, wait: float = WAIT_S) -> ModuleType:
    """The compiled kernel: built on first use with the machine's compiler, then loaded from torch's cache
    (``TORCH_EXTENSIONS_DIR``). Raises on any failure, ``TimeoutError`` after ``wait`` seconds behind a live
    builder."""
    from torch.utils.cpp_extension import _get_build_directory, load

    folder = Path(_get_build_directory(NAME, verbose))
    with builder_lock(folder / "causalvq.lock", wait):
        stale = folder / "lock"
        if stale.exists():  # torch's lock with no live builder: its builder died mid-build
            stale.unlink(missing_ok=True)
        # fresh lists: load appends torch's libraries to extra_ldflags in place, and flags that differ from the
        # last call's make it rebuild the kernel under a new version
        return load(name=NAME, sources=[str(SOURCE)], extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
                    verbose=verbose)


@contextmanager
def builder_lock(path: Path, wait: float) -> Iterator[None]:
    """Hold an exclusive OS lock on ``path`` (released by the OS if this process dies); ``TimeoutError`` when
    another process holds it for more than ``wait`` seconds."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process has been building the kernel in {path.parent} for over "
                                       f"{wait:g} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
