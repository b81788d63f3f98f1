"""Where the time of a slider move goes, end to end: client, HTTP and events, queue, gradio's pre- and
post-processing, the model, drawing, PNG encoding and the cache files.

Usage::

    python bench/profile_slide.py [--app DIR] [--clients 1] [--moves 60] [--checkpoint DIR_OR_REPO]

The app (``DIR/app.py``, default this repository; ``--app`` profiles another copy, e.g. a checkout of an older
commit, with the same script) is imported and launched in this process with gradio's own profiler on
(``GRADIO_PROFILING=1``: queue wait, preprocess, function call, postprocess and their total per event), and timers
wrapped around the pieces of a move: ``Explorer.apply_sliders`` (transitions and decoding), ``Explorer.ground_truth``
(the dataset render), ``display_image`` (the page's image; a 256-px upscale before 2026-12-06), ``Handlers._grid``
(the code-grid picture), gradio's PNG encoder and its cache writer. It waits for the fused kernel and the explorer's
warm-up (in-domain check, render tables), as a warm app has them.

``--clients`` ``gradio_client`` clients run in a child process (as ``bench/bench_load.py``'s do: a client's
threads would otherwise share this process's GIL). Each uploads an example, makes 5 warm-up moves, then
``--moves`` moves of one slider by one step (a person dragging); each move is a ``/slide`` call, its output files
downloaded (none since its images come inline), then a ``/ground_truth`` call when ``/slide`` does not answer the
ground truth itself (before issue 18 the page fired that event beside ``/slide``).

Prints one table, milliseconds: for the client's view the p50 per call, for the server's pieces the p50 per call
and the mean per move (calls per move × mean per call), and "HTTP, events, client" = client round trip − server
total (p50s: the events' SSE messages, the HTTP requests, and gradio_client's 50 ms polling of its message queue).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from functools import wraps
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
WARMUP = 5

TIMES: dict[str, list[float]] = defaultdict(list)  # label → seconds of each call (server side)
_LOCK = threading.Lock()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(owner: object, name: str, label: str) -> None:
    """Wrap ``owner.name`` so each call's duration is recorded under ``label``."""
    fn = getattr(owner, name)

    @wraps(fn)
    def run(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with _LOCK:
                TIMES[label].append(time.perf_counter() - t)

    setattr(owner, name, run)


def walk(rng: random.Random, current: list[int], max_steps: list[int]) -> list[int]:
    """One slider one step from ``current`` (as bench/bench_load.py's ``--moves walk``)."""
    out = list(current)
    f = rng.randrange(len(max_steps))
    step = rng.choice((-1, 1))
    out[f] += step if abs(out[f] + step) <= max_steps[f] else -step
    return out


# --- the client side (child process) ---------------------------------------------------------------------------
def client_main(url: str, clients: int, moves: int, max_steps: list[int], slots: int, truth: bool) -> None:
    """``clients`` threads; prints "ready" after the uploads and warm-up, waits for a line on stdin, then prints
    one JSON object: per call, the /slide round trip, its downloads and the /ground_truth round trip (seconds)."""
    import httpx
    from gradio_client import Client, handle_file

    examples = sorted((ROOT / "assets" / "examples").glob("*.png"))
    go = threading.Event()
    ready = threading.Barrier(clients + 1)
    out: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []

    def one(i: int) -> None:
        rng = random.Random(i)
        client = Client(url, verbose=False, download_files=False)
        http = httpx.Client()
        client.predict(handle_file(str(examples[i % len(examples)])), api_name="/load_image")
        current = [0] * len(max_steps)
        for m in range(WARMUP + moves):
            if m == WARMUP:
                ready.wait()
                go.wait()
            current = walk(rng, current, max_steps)
            values = current + [0] * (slots - len(current))
            try:
                t0 = time.perf_counter()
                result = client.predict(*values, api_name="/slide")
                t1 = time.perf_counter()
                for f in result:  # images to fetch (inline ones, data URLs, came in the answer)
                    if isinstance(f, dict) and f.get("url") and not f["url"].startswith("data:"):
                        http.get(f["url"]).raise_for_status()
                t2 = time.perf_counter()
                if truth:
                    client.predict(*values, api_name="/ground_truth")
                t3 = time.perf_counter()
            except Exception as err:  # noqa: BLE001 - reported
                errors.append(f"{type(err).__name__}: {str(err)[:200]}")
                continue
            if m >= WARMUP:
                with _LOCK:
                    out["slide"].append(t1 - t0)
                    out["download"].append(t2 - t1)
                    if truth:
                        out["truth"].append(t3 - t2)
        client.close()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
    start = time.perf_counter()
    for t in threads:
        t.join()
    out["elapsed"] = [time.perf_counter() - start]
    print(json.dumps({"times": out, "errors": errors}), flush=True)


# --- the server side (this process) ----------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default=str(ROOT), help="folder of the app.py to profile (default: this repo)")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--moves", type=int, default=60, help="moves per client after 5 warm-up moves")
    parser.add_argument("--checkpoint", default=None, help="default: $CAUSALVQ_CHECKPOINT, else the shipped one")
    parser.add_argument("--_client", default=None, help=argparse.SUPPRESS)  # url: run as the client process
    parser.add_argument("--_shape", default=None, help=argparse.SUPPRESS)  # json [max_steps, slots, truth]
    args = parser.parse_args()
    if args._client:
        max_steps, slots, truth = json.loads(args._shape)
        client_main(args._client, args.clients, args.moves, max_steps, slots, truth)
        return

    app_dir = Path(args.app).resolve()
    checkpoint = args.checkpoint or os.environ.get("CAUSALVQ_CHECKPOINT") or str(ROOT / "assets" / "causalvq-shapes3d")
    cache = tempfile.mkdtemp(prefix="causalvq-profile-cache-")
    os.environ.update(OFFLINE, GRADIO_PROFILING="1", CAUSALVQ_CHECKPOINT=checkpoint, GRADIO_TEMP_DIR=cache)
    sys.path.insert(0, str(app_dir))  # its app.py and its causalvq package, ahead of the installed one
    os.chdir(app_dir)
    import torch
    from gradio import processing_utils
    from gradio.profiling import collector

    import app
    import causalvq

    assert Path(causalvq.__file__).resolve().is_relative_to(app_dir), causalvq.__file__
    app.configure_threads()
    loader = app.start_fused_kernel()
    if loader is not None:
        loader.join()
    from causalvq import kernels

    ex = next(iter(app.demo.handlers.explorers.values()))
    ex.warm_up()
    path = "fused kernel" if kernels.loaded() is not None else "plain torch"

    timed(type(ex), "apply_sliders", "model: transitions + decode (Explorer.apply_sliders)")
    timed(type(ex), "ground_truth", "ground truth render (Explorer.ground_truth)")
    timed(app, "display_image", "page image (display_image)")
    timed(app.Handlers, "_grid", "code grid picture (Handlers._grid)")
    timed(processing_utils, "encode_pil_to_bytes", "PNG encoding (PIL)")
    timed(processing_utils, "save_pil_to_cache", "cache file: encode, hash, write")

    port = free_port()
    app.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, **app.LAUNCH_OPTIONS)
    url = f"http://127.0.0.1:{port}/"
    slide = next(d for d in app.demo.fns.values() if getattr(d, "api_name", None) == "slide")
    truth = len(slide.outputs) < 5  # /slide without the ground truth: the page fires /ground_truth beside it
    shape = json.dumps([list(ex.max_steps), app.demo.handlers.slots, truth])
    child = subprocess.Popen([sys.executable, __file__, "--_client", url, "--_shape", shape, "--clients",
                              str(args.clients), "--moves", str(args.moves)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "GRADIO_PROFILING": ""})
    try:
        line = child.stdout.readline()
        if line.strip() != "ready":
            sys.exit(f"client process failed: {line!r}")
        TIMES.clear()
        collector.clear()
        load_before = os.getloadavg()[0]
        child.stdin.write("go\n")
        child.stdin.flush()
        result = json.loads(child.stdout.readline())
        load_after = os.getloadavg()[0]
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        app.demo.close()

    client = {k: np.asarray(v) * 1000 for k, v in result["times"].items()}
    moves = len(client["slide"])
    traces = collector.get_all()

    def p50(values) -> float:
        return float(np.percentile(values, 50)) if len(values) else float("nan")

    rows: list[tuple[str, str, float, float]] = []  # (what, calls per move, p50 per call, mean per move)

    def row(what: str, values, per_move_calls: float | None = None) -> None:
        values = np.asarray(values, dtype=float)
        calls = len(values) / moves if per_move_calls is None else per_move_calls
        rows.append((what, f"{calls:.2f}", p50(values), float(values.mean()) * calls if len(values) else 0.0))

    row("**client: /slide round trip** (gradio_client, without downloads)", client["slide"], 1)
    row("client: downloading the output images", client["download"], 1)
    end = client["slide"] + client["download"]
    row("**client: /slide end to end**", end, 1)
    for name in ("slide", "ground_truth"):
        tr = [t for t in traces if t["fn_name"] == name]
        if not tr:
            continue
        for phase in ("queue_wait", "preprocess", "fn_call", "postprocess", "total"):
            row(f"server /{name}: {phase.replace('_', ' ')}", [t[f"{phase}_ms"] for t in tr])
        if name == "slide":
            row("HTTP, events, client (round trip − server total, p50s)",
                [p50(client["slide"]) - p50([t["total_ms"] for t in tr])], 1)
    if truth:
        row("client: /ground_truth round trip", client["truth"], 1)
    for label, values in TIMES.items():
        row(f"  {label}", np.asarray(values) * 1000)

    elapsed = result["times"]["elapsed"][0]
    cfg = ex.config
    print(f"app: {app_dir} ({path}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)); checkpoint "
          f"{checkpoint} ({cfg.num_nodes} nodes, {cfg.image_size}-px)")
    print(f"{args.clients} client(s) × {args.moves} moves (one slider, one step) in {elapsed:.1f} s: "
          f"{moves / elapsed:.1f} moves/s; {len(result['errors'])} errors; load average {load_before:.2f} before / "
          f"{load_after:.2f} after, {os.cpu_count()} CPUs")
    print("\n| what | calls per move | p50 per call (ms) | mean per move (ms) |\n|---|---|---|---|")
    for what, calls, med, mean in rows:
        print(f"| {what} | {calls} | {med:.1f} | {mean:.1f} |")
    for err in result["errors"][:5]:
        print(f"  error: {err}")


if __name__ == "__main__":
    main()
