"""Two torchrun processes on CPU (Gloo): each rank draws its own data, both end with the same weights, stage 1's
data-dependent starts included (B27: every rank applies the same code restarts and output bias)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from causalvq.model import CausalVQ

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "train", "all", "--recipe", "tiny", "--device", "cpu", "--out", str(out), "--no-progress",
           "--threads", "1", "--set", "eval.num_images=4", "--set", "eval.num_pairs=4", "--set", "eval.max_steps=0",
           "--set", "stage1.output_bias=true", "--set", "stage1.restart_every=1", "--set", "stage1.restart_until=5",
           "--set", "stage1.log_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "event" not in r]
    assert {r["stage"] for r in steps} == {1, 2}
    assert any(r.get("restarted", 0) > 0 for r in steps)  # B27 moved codes, on both ranks alike (weights below)
    for r in steps:  # both ranks reported, with different batches
        assert len(r["data_digests"]) == 2 and r["data_digests"][0] != r["data_digests"][1], r
    weights = [r for r in records if r.get("event") == "weights"]
    assert [r["stage"] for r in weights] == [1, 2]
    for r in weights:
        assert len(r["weight_digests"]) == 2 and r["weight_digests"][0] == r["weight_digests"][1]

    model = CausalVQ.from_pretrained(out / "model")  # written once, by rank 0
    assert model.reconstruct(torch.rand(1, 3, 16, 16)).image.shape == (1, 3, 16, 16)
