"""Training faults, the real CLI in subprocesses: SIGKILL at seven points of ``python -m train all --recipe tiny``
(three phases of a checkpoint write, the stage-2 code cache, mid-stage, the model card), a full disk, an output
folder that is or becomes read-only, and an infinite stage-2 loss. After each, the last complete checkpoint
reads back, and ``--resume`` ends with the bytes of an uninterrupted run.

Kill points inside a write run the CLI under ``KILL_HOOK``, which wraps ``os.replace`` (the rename that ends
every atomic write) to SIGKILL the process there; the full-disk and read-only cases mount a small tmpfs (root only;
skipped elsewhere). tests/test_train_resume.py
holds the basic kill-and-resume case, tests/test_train_cli.py the NaN stage-1 loss and a folder under a file;
docs/reliability_app_train.md §3 lists the cases and results.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from causalvq.model import CausalVQ
from train.checkpoint import load_state
from train.cli import main
from train.release import read_training

REPO = Path(__file__).resolve().parents[1]
ARGS = ["all", "--recipe", "tiny", "--no-progress", "--threads", "1", "--kernel", "torch",
        "--set", "stage1.steps=12", "--set", "stage1.checkpoint_every=3", "--set", "stage1.log_every=1",
        "--set", "stage2.steps=12", "--set", "stage2.checkpoint_every=3", "--set", "stage2.log_every=1",
        "--set", "eval.num_images=4", "--set", "eval.num_pairs=4", "--set", "eval.max_steps=0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
OUTPUTS = ("stage1/model.safetensors", "model/model.safetensors", "stage2_codes.safetensors")


# The CLI, killed with SIGKILL during the n-th atomic write of a file (``train.checkpoint.atomic_write_bytes``):
# its first argument is "<file name>:<n>:<phase>", the phase one of "partial" (half the bytes in the temporary
# file), "written" (the temporary file complete and fsynced, not yet renamed) or "renamed" (renamed, the folder
# not yet fsynced).
KILL_HOOK = """
import os, signal, sys
name, n, phase = sys.argv.pop(1).rsplit(":", 2)
writes, replace = [], os.replace

def replace_then_die(src, dst, *args, **kwargs):
    if os.path.basename(dst) != name:
        return replace(src, dst, *args, **kwargs)
    writes.append(dst)
    if len(writes) != int(n):
        return replace(src, dst, *args, **kwargs)
    if phase == "partial":
        os.truncate(src, os.path.getsize(src) // 2)
    if phase == "renamed":
        replace(src, dst, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace_then_die
from train.cli import main
sys.exit(main(sys.argv[1:]))
"""


# --- helpers ---
def start(out: Path, *extra: str, kill_at: str | None = None) -> subprocess.Popen:
    """``python -m train`` with ARGS, or the same under ``KILL_HOOK`` with ``kill_at``."""
    command = ["-c", KILL_HOOK, kill_at] if kill_at else ["-m", "train"]
    return subprocess.Popen([sys.executable, *command, *ARGS, "--out", str(out), *extra], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(out: Path, *extra: str, kill_at: str | None = None) -> tuple[int, str]:
    proc = start(out, *extra, kill_at=kill_at)
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output


def killed_at(out: Path, point: str, resume: bool = True) -> None:
    """Run under ``KILL_HOOK`` at ``point``; it must die by SIGKILL there."""
    code, output = run(out, *(["--resume"] if resume else []), kill_at=point)
    assert code == -signal.SIGKILL, f"not killed at {point} (rc {code}):\n{output}"


def state_step(out: Path, stage: int) -> int | None:
    """Step of the resume state of ``stage`` (it must read back), or None when there is none."""
    path = out / "resume" / f"stage{stage}.safetensors"
    return load_state(path).step if path.exists() else None


def stale_temporaries(out: Path) -> list[Path]:
    return sorted(out.rglob(".*.tmp"))


def log_without_timings(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s")} for r in records]


def evaluation_without_timings(out: Path) -> dict:
    report = json.loads((out / "model" / "eval" / "eval.json").read_text())
    report.pop("seconds")
    return report


def card_without_timings(out: Path) -> str:
    """The model card without its training-time line (a resumed run's clock differs; the card says it resumed)."""
    lines = (out / "model" / "README.md").read_text().splitlines()
    assert sum(line.startswith("**Training**") for line in lines) == 1
    return "\n".join(line for line in lines if not line.startswith("**Training**"))


def steps_trained(out: Path) -> dict:
    return {stage: info["steps"] for stage, info in read_training(out / "model").items()}


def assert_same_results(out: Path, clean: Path) -> None:
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
    assert log_without_timings(out) == log_without_timings(clean)
    assert evaluation_without_timings(out) == evaluation_without_timings(clean)
    assert card_without_timings(out) == card_without_timings(clean)
    assert steps_trained(out) == steps_trained(clean) == {1: 12, 2: 12}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run with ARGS."""
    out = tmp_path_factory.mktemp("clean") / "run"
    code, output = run(out)
    assert code == 0, output
    return out


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs mounted at ``tmp_path / "disk"`` (skips where mounting is not allowed); unmounted after."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def remount(disk: Path, options: str) -> None:
    """``mount -o remount,<options>``; retried while a file open for writing makes the kernel refuse (EBUSY)."""
    for _ in range(400):
        if subprocess.run(["mount", "-o", f"remount,{options}", str(disk)], capture_output=True).returncode == 0:
            return
        time.sleep(0.005)
    raise AssertionError(f"could not remount {disk} {options}")


def one_line_error(output: str, *words: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in output, output
    assert all(w in lines[0] for w in words), output
    return lines[0]


# --- SIGKILL at seven points, resumed after each ---
@pytest.mark.slow
def test_sigkill_at_seven_points_then_resume_is_bit_identical(tmp_path: Path, clean: Path) -> None:
    out = tmp_path / "run"

    # 1. stage 1, checkpoint of step 6 half written: the step-3 checkpoint is intact, the torn temporary ignored
    killed_at(out, "stage1.safetensors:2:partial", resume=False)
    assert state_step(out, 1) == 3 and len(stale_temporaries(out)) == 1
    # 2. stage 1 (resumed at 3), checkpoint of step 9 complete and fsynced but not renamed: step 6 is the state
    killed_at(out, "stage1.safetensors:2:written")
    assert state_step(out, 1) == 6
    [tmp] = stale_temporaries(out)  # the torn one of kill 1 was removed when this run wrote the file again
    assert load_state(tmp).step == 9  # complete, yet never taken for the checkpoint
    # 3. stage 1 (resumed at 6), last checkpoint renamed, folder not fsynced: stage 1 is done, not yet released
    killed_at(out, "stage1.safetensors:2:renamed")
    assert state_step(out, 1) == 12 and not (out / "stage1").exists()
    # 4. stage 2's code cache half written: no cache file, no stage-2 state
    killed_at(out, "stage2_codes.safetensors:1:partial")
    assert (out / "stage1" / "model.safetensors").is_file()
    assert not (out / "stage2_codes.safetensors").exists() and state_step(out, 2) is None
    # 5. mid stage 2, between checkpoints: SIGKILL from outside once step 4 is logged
    proc = start(out, "--resume")
    log = out / "metrics.jsonl"
    while proc.poll() is None and '"stage": 2, "step": 4,' not in (log.read_text() if log.exists() else ""):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, output
    mid = state_step(out, 2)
    assert mid in (3, 6, 9)  # the run goes on for a few ms before the signal lands
    # 6. stage 2, the next checkpoint half written: the previous one is intact
    killed_at(out, "stage2.safetensors:1:partial")
    assert state_step(out, 2) == mid
    # 7. the model card's evaluation table written to a temporary, not renamed: the card without it stays
    killed_at(out, "README.md:2:written")
    assert state_step(out, 2) == 12 and (out / "model" / "eval" / "eval.json").is_file()
    assert "Not evaluated yet" in (out / "model" / "README.md").read_text()

    code, output = run(out, "--resume")
    assert code == 0, output
    assert_same_results(out, clean)
    assert stale_temporaries(out) == []  # none left behind (model/ is what --push-to-hub uploads)


# --- a full disk, a read-only folder ---
@pytest.mark.slow
@pytest.mark.parametrize("failing", ["stage1.safetensors", "stage2.safetensors"])
def test_full_disk_is_a_one_line_error_and_resume_finishes_once_there_is_room(tmpfs: Path, clean: Path,
                                                                               failing: str) -> None:
    """The disk fills while a checkpoint is written (room for the previous one, not for a second copy)."""
    size = {name: (clean / "resume" / name).stat().st_size for name in ("stage1.safetensors", "stage2.safetensors")}
    before_stage2 = sum(p.stat().st_size for p in clean.rglob("*") if p.is_file() and not p.is_relative_to(
        clean / "model") and p.name not in ("stage2.safetensors", "stage2_losses.png"))
    room = (size["stage1.safetensors"] * 3 // 2 if failing == "stage1.safetensors"
            else before_stage2 + size["stage2.safetensors"] * 3 // 2)
    remount(tmpfs, f"size={room // 1024 + 32}k")
    out = tmpfs / "run"
    code, output = run(out)
    assert code == 2, output
    one_line_error(output, f"cannot write {out / 'resume' / failing}", "No space left on device")
    stage = int(failing[5])
    assert state_step(out, stage) is not None and stale_temporaries(out) == []

    remount(tmpfs, "size=8m")  # room again
    code, output = run(out, "--resume")
    assert code == 0, output
    assert_same_results(out, clean)


@pytest.mark.slow
def test_output_folder_turned_read_only_mid_run(tmpfs: Path, clean: Path) -> None:
    out = tmpfs / "run"
    proc = start(out)
    while proc.poll() is None and not (out / "resume" / "stage1.safetensors").exists():
        time.sleep(0.002)
    remount(tmpfs, "ro")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, output
    one_line_error(output, "cannot write", str(out), "Read-only file system")
    assert state_step(out, 1) is not None

    remount(tmpfs, "rw")
    code, output = run(out, "--resume")
    assert code == 0, output
    assert_same_results(out, clean)


def test_read_only_output_folder_is_refused_before_training(tmp_path: Path, capsys) -> None:
    """chmod 500 for a normal user; root ignores permissions, so there a read-only tmpfs (skipped if impossible)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)],
                          capture_output=True).returncode != 0:
            pytest.skip("root, and mounting a tmpfs is not allowed")
    else:
        folder.chmod(0o500)
    try:
        assert main(["stage1", "--recipe", "tiny", "--out", str(folder / "run"), "--no-progress", "--threads",
                     "1", "--kernel", "torch"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: cannot write to the output folder") and err.count("\n") == 1, err
        assert list(folder.iterdir()) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        else:
            folder.chmod(0o700)


# --- an infinite stage-2 loss ---
@pytest.mark.slow
def test_infinite_stage2_loss_stops_keeps_the_last_good_state_and_resumes(tmp_path: Path, clean: Path, capsys,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """(The stage-1 NaN case is in tests/test_train_cli.py.) Stage 2's 5th step returns +inf: the run stops naming
    the step, the step-3 state is kept, and resuming without the fault gives the uninterrupted run's bytes."""
    calls = {"n": 0}

    def poisoned(original):
        def losses(self, *args):
            out = original(self, *args)
            calls["n"] += 1
            return dataclasses.replace(out, loss=out.loss + float("inf")) if calls["n"] == 5 else out
        return losses

    for name in ("base_losses", "transition_losses", "retrieval_losses"):
        monkeypatch.setattr(CausalVQ, name, poisoned(getattr(CausalVQ, name)))
    threads = torch.get_num_threads()
    out = tmp_path / "run"
    try:
        assert main([*ARGS, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "stage 2: the loss became inf at step 5" in err and "last good checkpoint is kept" in err, err
        assert state_step(out, 2) == 3 and not (out / "model").exists()
        monkeypatch.undo()
        assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert_same_results(out, clean)
