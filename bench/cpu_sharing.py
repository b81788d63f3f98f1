"""A training job sharing the CPU, measured: the same short stage 1 alone and beside a second copy of itself, with
OpenMP's default (spinning) wait policy and with ``OMP_WAIT_POLICY=PASSIVE``.

    python bench/cpu_sharing.py                    # 100 stage-1 steps of cpu_dsprites, each case
    python bench/cpu_sharing.py --recipe cpu --steps 50

Each job is ``python -m train stage1 --recipe <recipe> --set stage1.steps=<steps>`` in a fresh folder, with torch's
default thread count; the figure is the training loop's clock at the last step (``time_s`` in ``metrics.jsonl``),
so start-up and writes are left out. Run it on an otherwise idle machine: anything else running moves the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(recipe: str, steps: int, out: Path, passive: bool) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    command = [sys.executable, "-m", "train", "stage1", "--recipe", recipe, "--out", str(out), "--no-progress",
               "--set", f"stage1.steps={steps}", "--set", f"stage1.log_every={steps}",
               "--set", f"stage1.checkpoint_every={steps}"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def clock(proc: subprocess.Popen, out: Path) -> float:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"a training job failed (rc {proc.returncode}):\n{err}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return records[-1]["time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cpu_dsprites")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    print(f"{args.steps} stage-1 steps of {args.recipe}, {os.cpu_count()} cores; seconds on the training loop's clock")
    with tempfile.TemporaryDirectory() as tmp:
        for passive in (False, True):
            policy = "OMP_WAIT_POLICY=PASSIVE" if passive else "default wait policy"
            out = Path(tmp, f"alone{passive}")
            alone = clock(start(args.recipe, args.steps, out, passive), out)
            outs = [Path(tmp, f"pair{passive}{i}") for i in range(2)]
            procs = [start(args.recipe, args.steps, o, passive) for o in outs]
            pair = [clock(p, o) for p, o in zip(procs, outs)]
            print(f"{policy:>24}: alone {alone:6.1f} s | two at once {pair[0]:6.1f} s and {pair[1]:6.1f} s "
                  f"({max(pair) / alone:.1f}× alone)")


if __name__ == "__main__":
    main()
