"""Transition-layer speed and memory at the paper's Shapes3D configuration, and model latency at the CPU one.

    python bench/bench_transition.py                  # torch path, then the fused C++ kernel
    python bench/bench_transition.py --path torch     # one path only
    python bench/bench_transition.py --threads 2 --repeats 10

Paper configuration (ModelConfig.paper_shapes3d): N = 64 codes, 8×8 grid (L = 64 nodes), K = 1, 12 actions,
discoverer width 800, graph width 100, batch 16. Each measurement runs in a fresh subprocess so that the peak
RSS is its own. Prints one line per figure; the reference figures of the official implementation on the same
kind of machine are printed alongside (from the project's issue tracker: 1,971 ms per step, 2,356 MiB peak RSS,
238 ms per retrieved pair). A last line times the part of one retrieval that no exact rewrite removes, its second
graph layer's projections, as one ideal matmul: a lower bound on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

OFFICIAL = {"step_ms": 1971.0, "rss_mib": 2356.0, "retrieve_ms_per_pair": 238.0}


def _measure(kind: str, path: str, threads: int, repeats: int) -> dict:
    import resource

    import torch

    from causalvq import kernels
    from causalvq.config import ModelConfig
    from causalvq.model import CausalVQ

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if path == "fused" and not kernels.enable():
        return {"error": "fused kernel unavailable (no compiler?)"}
    if kind == "latency":
        return _latency(repeats)
    if kind == "floor":
        return _projection_floor(repeats)
    cfg = ModelConfig.paper_shapes3d()
    model = CausalVQ(cfg)
    b = 16
    gen = torch.Generator().manual_seed(0)
    cx = torch.randint(0, cfg.codebook_size, (b, 1, cfg.grid_size, cfg.grid_size), generator=gen)
    cy = torch.randint(0, cfg.codebook_size, (b, 1, cfg.grid_size, cfg.grid_size), generator=gen)
    actions = torch.randint(0, cfg.num_actions, (b,), generator=gen)
    times = []
    if kind.startswith("step"):
        mode = kind.split(":")[1]
        model.train()
        model.requires_grad_(False)
        model.transition.requires_grad_(True)
        opt = torch.optim.Adam(model.transition_parameters(), lr=5e-4)  # the trainer's optimiser
        loss_fn = {"base": lambda: model.base_losses(cx), "action": lambda: model.transition_losses(cx, cy, actions),
                   "retrieval": lambda: model.retrieval_losses(cx, cy, actions)}[mode]
        for _ in range(repeats + 2):
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_fn().loss.backward()
            opt.step()
            times.append((time.perf_counter() - t) * 1e3)
        result = {"ms": statistics.median(times[2:])}
    else:  # retrieval of one pair, deterministic evaluation mode
        model.eval()
        with torch.no_grad():
            for _ in range(repeats + 2):
                t = time.perf_counter()
                model.retrieve_action_codes(cx[:1], cy[:1])
                times.append((time.perf_counter() - t) * 1e3)
        result = {"ms": statistics.median(times[2:])}
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _projection_floor(repeats: int) -> dict:
    """A lower bound on one retrieval at the paper configuration: its second graph layer projects the 64 nodes'
    13 × 100 first-layer features of each of the 12 passes onto the source and target terms of the two heads a
    pass uses (64 channels each), 768 × 1,300 × 256 = 256 MMAC. Timed here as one matmul of those shapes, the
    best case (the retrieval's action heads have a different weight per pass)."""
    import torch

    rows, width, cols = 12 * 64, 13 * 100, 2 * 2 * 64
    a, b = torch.randn(rows, width), torch.randn(width, cols)
    times = []
    for _ in range(max(20, repeats) + 3):
        t = time.perf_counter()
        a @ b
        times.append((time.perf_counter() - t) * 1e3)
    ms = statistics.median(times[3:])
    return {"ms": ms, "mmac": rows * width * cols / 1e6, "gmac_per_s": rows * width * cols / ms / 1e6}


def _latency(repeats: int) -> dict:
    """Single-image reconstruct and one intervention at the shipped checkpoint's configuration (random weights;
    ``ModelConfig.small()`` where the checkpoint is absent), p50 in ms."""
    from pathlib import Path

    import torch

    from causalvq.config import ModelConfig
    from causalvq.model import CausalVQ, read_config

    shipped = Path(__file__).resolve().parents[1] / "assets" / "causalvq-shapes3d"
    model = CausalVQ(read_config(shipped) if (shipped / "config.json").is_file() else ModelConfig.small()).eval()
    x = torch.rand(1, 3, 32, 32)
    out = {}
    with torch.no_grad():
        for name, fn in [("reconstruct", lambda: model.reconstruct(x)),
                         ("intervene", lambda: model.intervene(x, torch.tensor([2])))]:
            times = []
            for _ in range(max(20, repeats) + 3):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
            out[name] = statistics.median(times[3:])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", choices=["torch", "fused", "both"], default="both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(_measure(args._child[0], args._child[1], args.threads, args.repeats)))
        return

    def run(kind: str, path: str) -> dict:
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--_child", kind, path]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        return json.loads(out)

    print(f"paper configuration: N=64, 8x8 grid, 12 actions, discoverer 800, graph 100, batch 16, "
          f"{args.threads} threads, median of {args.repeats}")
    paths = ["torch", "fused"] if args.path == "both" else [args.path]
    for path in paths:
        for mode in ("action", "base", "retrieval"):
            r = run(f"step:{mode}", path)
            if "error" in r:
                print(f"[{path}] {r['error']}")
                break
            print(f"[{path}] training step ({mode} batch of 16): {r['ms']:.0f} ms, peak RSS {r['rss_mib']:.0f} MiB"
                  + (f"   (official: {OFFICIAL['step_ms']:.0f} ms, {OFFICIAL['rss_mib']:.0f} MiB)"
                     if mode == "action" else ""))
        else:
            r = run("retrieve", path)
            print(f"[{path}] action retrieval, one pair (deterministic): {r['ms']:.1f} ms, peak RSS "
                  f"{r['rss_mib']:.0f} MiB   (official: {OFFICIAL['retrieve_ms_per_pair']:.0f} ms)")
    r = run("floor", "torch")
    print(f"lower bound of one retrieval: its second-layer projections ({r['mmac']:.0f} MMAC) as one matmul take "
          f"{r['ms']:.1f} ms ({r['gmac_per_s']:.0f} GMAC/s on this machine)")
    r = run("latency", "torch")
    print(f"shipped checkpoint's configuration, one 32-px image: reconstruct {r['reconstruct']:.1f} ms p50, "
          f"one intervention {r['intervene']:.1f} ms p50")


if __name__ == "__main__":
    main()
