"""Latency of the explorer: one slider move through the running app's API, the same handler model-side, start-up.

Usage::

    python bench/bench_app.py [--checkpoint DIR_OR_REPO] [--calls 50]

Without ``--checkpoint`` it uses ``$CAUSALVQ_CHECKPOINT`` or the shipped ``assets/causalvq-shapes3d``, and if
neither exists an untrained ``ModelConfig.small()`` model (same compute as the trained small model). Prints:

* start-up: ``python app.py`` in a fresh process → the page answers, and → the first API answer (an upload);
* API: p50 / p95 of ``/slide`` over ``--calls`` calls through gradio_client against that process;
* model-side: p50 / p95 of ``Handlers.slide`` called in-process (transitions + decode + the code-grid picture),
  on the fused kernel as the app runs once ``app.start_fused_kernel`` has loaded it (its line names the path), and
  again on the plain-torch path (what the app serves on before the kernel is there, or without a compiler).

Slider values follow a random walk (one slider, one step per call), as a person dragging sliders does.
Targets: API p50 ≤ 150 ms, model-side p50 ≤ 25 ms.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def walk(max_steps: list[int], calls: int, slots: int, seed: int = 0) -> list[list[int]]:
    """``calls`` slider vectors, each one step of one slider away from the previous one."""
    rng = np.random.default_rng(seed)
    cur = [0] * len(max_steps)
    out = []
    for _ in range(calls):
        f = int(rng.integers(len(max_steps)))
        step = int(rng.choice([-1, 1]))
        if abs(cur[f] + step) > max_steps[f]:
            step = -step
        cur[f] += step
        out.append(cur + [0] * (slots - len(cur)))
    return out


def pct(times: list[float]) -> str:
    ms = np.asarray(times) * 1000
    return f"p50 {np.percentile(ms, 50):6.1f} ms   p95 {np.percentile(ms, 95):6.1f} ms   (n={len(ms)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="folder or Hub repo id (default: env / shipped)")
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    os.environ.update(OFFLINE)
    sys.path.insert(0, str(ROOT))

    checkpoint = args.checkpoint or os.environ.get("CAUSALVQ_CHECKPOINT")
    shipped = ROOT / "assets" / "causalvq-shapes3d"
    if not checkpoint and (shipped / "config.json").is_file():
        checkpoint = str(shipped)
    if not checkpoint:
        from causalvq.config import ModelConfig
        from causalvq.model import CausalVQ

        checkpoint = tempfile.mkdtemp(prefix="causalvq-bench-")
        CausalVQ(ModelConfig.small()).save_pretrained(checkpoint)
        print(f"no checkpoint: using an untrained ModelConfig.small() in {checkpoint}")
    example = sorted((ROOT / "assets" / "examples").glob("*.png"))[0]

    # --- start-up, in a fresh process ---
    port = free_port()
    env = {**os.environ, "CAUSALVQ_CHECKPOINT": checkpoint, "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1"}
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    sys.exit("app.py exited during start-up")
                time.sleep(0.05)
        page = time.perf_counter() - start
        from gradio_client import Client, handle_file

        client = Client(url, verbose=False)
        out = client.predict(handle_file(str(example)), api_name="/load_image")
        first = time.perf_counter() - start
        slots = sum(1 for v in out[4:] if isinstance(v, (int, float)))

        # --- API latency of a slider move ---
        from causalvq.checkpoint import read_config

        try:
            config = read_config(checkpoint)
        except FileNotFoundError:  # a Hub repo id: ask the running app instead
            config = None
        max_steps = [s - 1 for s in config.factor_sizes] if config else [3] * 6
        moves = walk(max_steps, args.calls + 5, slots)
        api = []
        for i, values in enumerate(moves):
            t = time.perf_counter()
            client.predict(*values, api_name="/slide")
            if i >= 5:  # warm-up
                api.append(time.perf_counter() - t)
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    # --- model-side: the same handler, in-process ---
    import torch

    from app import Handlers, Session, configure_threads, start_fused_kernel
    from causalvq import kernels
    from causalvq.explore.explorer import Explorer

    configure_threads()  # as `python app.py` does
    loader = start_fused_kernel()  # as `python app.py` does; waited for here
    if loader is not None:
        loader.join()
    path = "fused kernel" if kernels.loaded() is not None else "plain torch"
    explorer = Explorer.from_checkpoint(checkpoint, fallback=None)
    handlers = Handlers(explorer)
    session = Session(checkpoint=explorer.source, input=explorer.load_image(example))
    moves = walk(list(explorer.max_steps), args.calls + 5, handlers.slots)

    def forget() -> None:
        """Drop the explorer's kept transitions and decoded results: a move then runs its whole chain anew."""
        explorer.transitions.clear()
        explorer._decoded.clear()

    def model_side(clear_cache: bool) -> list[float]:
        times = []
        for i, values in enumerate(moves):
            if clear_cache:
                forget()
            t = time.perf_counter()
            handlers.slide(session, *values)
            if i >= 5:
                times.append(time.perf_counter() - t)
        return times

    side, cold = model_side(False), model_side(True)
    plain = None
    if kernels.loaded() is not None:  # the same on the torch path (before the kernel is there, or without one)
        kernels.disable()
        forget()
        plain = model_side(False)

    cfg = explorer.config
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"checkpoint: {checkpoint} ({cfg.num_codebooks}×{cfg.grid_size}×{cfg.grid_size} nodes, "
          f"{cfg.codebook_size} codes, {cfg.image_size}-px); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {load:.2f}")
    print(f"start-up: page answers after {page:5.2f} s, first API answer (upload) after {first:5.2f} s")
    print(f"slider move, API (gradio_client)      : {pct(api)}   target p50 <= 150 ms")
    print(f"slider move, model-side (handler)     : {pct(side)}   target p50 <= 25 ms   ({path})")
    print(f"slider move, model-side, no cache     : {pct(cold)}")
    if plain is not None:
        print(f"slider move, model-side, plain torch  : {pct(plain)}")


if __name__ == "__main__":
    main()
