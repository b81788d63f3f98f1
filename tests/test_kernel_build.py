"""Building the fused kernel never hangs: a dead build's lock is cleared, a live builder is waited on for a bounded
time, and a failed build leaves the process on plain torch with one line saying so.

Every test builds into its own ``TORCH_EXTENSIONS_DIR`` with a compiler that fails at once (``CXX=false``), so
nothing real is touched and no test waits a minute for a compiler.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from causalvq import kernels
from causalvq.kernels import build

REPO = Path(__file__).resolve().parents[1]
UNAVAILABLE = "causalvq: fused kernel unavailable"


@pytest.fixture
def stale_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private extensions folder holding the lock of a build that was killed; the compiler fails at once."""
    lock = tmp_path / "extensions" / build.NAME / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    monkeypatch.setenv("CXX", "false")
    monkeypatch.delenv("CAUSALVQ_FUSED_KERNEL", raising=False)
    kernels.disable()
    yield lock
    kernels.disable()


def test_enable_clears_a_stale_lock_and_says_once_that_it_runs_on_plain_torch(stale_lock: Path, capfd) -> None:
    result = []
    thread = threading.Thread(target=lambda: result.append(kernels.enable()), daemon=True)
    thread.start()
    thread.join(timeout=60)  # torch's own wait on the lock has no bound
    assert not thread.is_alive(), "enable() waited on the dead build's lock"
    assert result == [False] and kernels.loaded() is None and not stale_lock.exists()
    assert kernels.enable() is False  # the failure is remembered, not retried
    lines = [line for line in capfd.readouterr().err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith(UNAVAILABLE) and lines[0].endswith("running on plain torch")


def test_training_with_a_stale_lock_starts_and_trains_on_plain_torch(stale_lock: Path, tmp_path: Path) -> None:
    """``python -m train all`` with the kernel requested (the default) and a dead build's lock in its way."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["all", "--recipe", "tiny", "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1",
            "--set", "stage1.steps=2", "--set", "stage2.steps=2", "--set", "eval.num_images=4",
            "--set", "eval.num_pairs=4", "--set", "eval.max_steps=0"]
    proc = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)  # about 10 s of training; a hang on the lock never returns
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    said = [line for line in err.splitlines() if "kernel" in line]
    assert len(said) == 1 and said[0].startswith(UNAVAILABLE), err
    assert "all: done" in out and (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_a_live_builder_is_waited_on_for_a_bounded_time_and_a_dead_one_not_at_all(tmp_path: Path) -> None:
    """The builders' OS lock: held by a live process it bounds the wait; once that process is killed, it is free."""
    path = tmp_path / "causalvq.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(path)!r}, os.O_CREAT | os.O_RDWR)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="another process has been building"), build.builder_lock(path, 0.5):
            pass
        assert time.monotonic() - start < 10
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, as for a killed build
        holder.wait()
    with build.builder_lock(path, 0.5):
        pass


def test_every_build_passes_the_same_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``load`` appends to the flag lists it is given; flags that differ from the last call's would rebuild the
    kernel on every ``enable`` after a ``disable``."""
    import torch.utils.cpp_extension

    seen = []

    def fake_load(name, sources, extra_cflags, extra_ldflags, verbose):
        seen.append((list(extra_cflags), list(extra_ldflags)))
        extra_ldflags.append("-ltorch")  # as torch does
        return "kernel"

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    assert build.build() == build.build() == "kernel"
    assert seen[0] == seen[1] == (list(build.CFLAGS), list(build.LDFLAGS))


def test_plain_torch_until_enabled(tmp_path: Path) -> None:
    """Importing the library builds and switches nothing, whatever the environment says."""
    code = "import causalvq.model, causalvq.kernels as k; print(k.loaded() is None)"
    env = {**os.environ, "CAUSALVQ_FUSED_KERNEL": "1", "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True" and not any(tmp_path.iterdir())
