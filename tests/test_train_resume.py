"""A run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run (the real CLI, subprocesses).

Stage 1 restarts dead codes (B27) and sets the output bias in its first steps, and the first kill lands inside
that window: neither keeps state outside the checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARGS = ["all", "--recipe", "tiny", "--no-progress", "--threads", "1",
        "--set", "stage1.steps=30", "--set", "stage1.checkpoint_every=3", "--set", "stage1.log_every=1",
        "--set", "stage1.output_bias=true", "--set", "stage1.restart_every=1", "--set", "stage1.restart_until=5",
        "--set", "stage2.steps=15", "--set", "stage2.checkpoint_every=3", "--set", "stage2.log_every=3",
        "--set", "stage2.average_decay=0.5",  # B32: the moving average is resumed too
        "--set", "eval.num_images=4", "--set", "eval.num_pairs=4", "--set", "eval.max_steps=0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}


def train(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "train", *map(str, args)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> None:
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output


def kill_when(path: Path, proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists (a checkpoint has been written)."""
    while proc.poll() is None and not path.exists():
        time.sleep(0.005)
    if proc.poll() is not None:
        output, _ = proc.communicate()
        pytest.fail(f"the run ended before it could be killed (rc {proc.returncode}):\n{output}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def log_without_timings(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s")} for r in records]


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    finish(train(*ARGS, "--out", clean))

    kill_when(killed / "resume" / "stage1.safetensors", train(*ARGS, "--out", killed))  # killed in stage 1
    assert not (killed / "stage1").exists()
    kill_when(killed / "resume" / "stage2.safetensors", train(*ARGS, "--out", killed, "--resume"))  # in stage 2
    assert (killed / "stage1" / "model.safetensors").is_file() and not (killed / "model").exists()
    codes_written = (killed / "stage2_codes.safetensors").stat().st_mtime_ns
    finish(train(*ARGS, "--out", killed, "--resume"))

    for name in ("stage1/model.safetensors", "model/model.safetensors"):
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name
    assert (killed / "stage2_codes.safetensors").stat().st_mtime_ns == codes_written  # the cache was reused
    log = log_without_timings(killed)
    assert log == log_without_timings(clean)
    stage1 = [r for r in log if r.get("stage") == 1 and "restarted" in r]
    assert stage1[0]["restarted"] > 0 and all(r["restarted"] == 0 for r in stage1 if r["step"] > 5)
