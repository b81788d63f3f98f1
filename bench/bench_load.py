"""Load test of the explorer: many clients moving sliders at once, every answer checked.

Usage::

    python bench/bench_load.py [--clients 20] [--seconds 60] [--moves walk|random] [--checkpoint DIR_OR_REPO]
                               [--url URL | --app DIR] [--check 300] [--client run|http|gradio_client]

Without ``--url`` it starts ``python app.py`` in a fresh process (as deployed; the clients' threads would share
the GIL with an in-process server and slow it down) on ``--checkpoint``, else ``$CAUSALVQ_CHECKPOINT``, else the
shipped ``assets/causalvq-shapes3d``, else an untrained ``ModelConfig.small()`` (the trained small model's
compute); ``--app DIR`` starts ``DIR/app.py`` instead of this repository's (an older copy, for a baseline measured
by the same clients). With ``--url`` it drives that app instead (then ``--checkpoint`` names the checkpoint it
serves, for the model-side check).

Each client (its own session) talks to the app as the page does (``--client run``, the default: ``/slide`` skips
gradio's queue, so one ``POST /gradio_api/run/slide`` an answer, images inline as data URLs or fetched by URL),
through gradio's queued HTTP API (``--client http``: one ``POST /gradio_api/call/<api>`` and one event stream per
call, as ``curl``; the page's path before ``/slide`` left the queue, and again with ``CAUSALVQ_SLIDE_QUEUE=1``) or
through a ``gradio_client.Client`` (``--client gradio_client``, which polls for results every 50 ms and costs the
shared machine several times the app's CPU per answer). It uploads one of the gallery examples, then, until
``--seconds`` have passed, calls ``/slide``, one call after another: ``--moves walk`` (default) moves one slider one
step (a person dragging a slider: the prefix cache holds the factors before it, so a call runs one transition for
the moved factor and one per step of the factors after it); ``--moves random`` draws every slider uniformly in its
range ±k_f (a jump: ~25 transitions a call, the prefix cache rarely helps). Every answer is checked: its images came
back, are PNGs and have the sizes the model gives (result ``display_image``: S px, code grid ``draw_code_grid``,
and the ground truth, S px, where ``/slide`` answers it too). After the run ``--check`` answers drawn at random are
compared pixel for pixel with the model-side result of the same input and slider values (``Explorer.apply_sliders``
→ ``display_image``, the code grid, and ``Explorer.ground_truth``); ``--check -1`` compares all of them.

Prints: calls, errors (exceptions), wrong answers, latency p50 / p95 / max, throughput (answers per second), the
CPU time the clients' process and (without ``--url``, on Linux) the app's process spent during the run, per answer
(the clients share the app's machine here, where a Space's visitors bring their own: the app's CPU per answer
bounds what its cores could serve), and (without ``--url``) the size of the app's gradio cache (``GRADIO_TEMP_DIR``:
files, bytes, folders) at the end of the run and after the app stopped.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass
class Answer:
    """One /slide call: which client input and slider values, what came back, how long it took."""

    example: int  # index into the examples list (the client's input)
    values: list[int]  # all slider slots sent
    seconds: float
    image: str | None = None  # downloaded result image
    grid: str | None = None  # downloaded code-grid image
    truth: str | None = None  # downloaded ground-truth image, when /slide answers it (else None)
    problem: str = ""  # "" when the answer looked right


@dataclass
class ClientLog:
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # exceptions raised by the call


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_checkpoint(arg: str | None) -> tuple[str, bool]:
    """--checkpoint, $CAUSALVQ_CHECKPOINT, the shipped checkpoint, else an untrained ModelConfig.small() written
    to a temporary folder; returns it and whether it is such a temporary folder."""
    checkpoint = arg or os.environ.get("CAUSALVQ_CHECKPOINT")
    shipped = ROOT / "assets" / "causalvq-shapes3d"
    if not checkpoint and (shipped / "config.json").is_file():
        checkpoint = str(shipped)
    if checkpoint:
        return checkpoint, False
    import torch

    from causalvq.config import ModelConfig
    from causalvq.model import CausalVQ

    torch.manual_seed(0)
    checkpoint = tempfile.mkdtemp(prefix="causalvq-load-")
    CausalVQ(ModelConfig.small()).save_pretrained(checkpoint)
    print(f"no checkpoint: using an untrained ModelConfig.small() in {checkpoint}", flush=True)
    return checkpoint, True


def kernel_env(folder: Path) -> dict[str, str]:
    """The fused kernel's build folder for the app in ``folder``: torch's default for this repository, one of its
    own for another copy (``--app``). torch rebuilds an extension whose source path changed, so two copies sharing a
    folder rebuild each other's kernel on every start, a minute of compiler beside the measured app."""
    if folder == ROOT or "TORCH_EXTENSIONS_DIR" in os.environ:
        return {}
    tag = hashlib.sha1(str(folder).encode()).hexdigest()[:10]
    return {"TORCH_EXTENSIONS_DIR": str(Path(tempfile.gettempdir()) / f"causalvq-extensions-{tag}")}


def prepare_kernel(folder: Path, env: dict[str, str]) -> str:
    """Build (or find built) the fused kernel of the app in ``folder`` before the app starts, so no compiler runs
    during the measurement and the app loads it from the cache at once. Returns a line saying what it found."""
    code = "from causalvq import kernels; print(kernels.enable())"
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=900)
    except subprocess.TimeoutExpired:
        return "fused kernel: build timed out (the app serves on plain torch until it loads it)"
    ready = done.stdout.strip().endswith("True")
    return "fused kernel: ready" if ready else "fused kernel: unavailable (plain torch)"


def start_app(checkpoint: str, cache: Path, folder: Path = ROOT, settle: float = 0.0) -> tuple[subprocess.Popen, str]:
    """``python app.py`` in ``folder`` on a free port, its gradio cache in ``cache``; returns the process and its
    URL once the page answers and ``settle`` more seconds have passed (the app's start-up work in the background:
    loading the kernel, the in-domain check, the render tables). The fused kernel is built before the app starts."""
    port = free_port()
    env = {**os.environ, **OFFLINE, **kernel_env(folder), "CAUSALVQ_CHECKPOINT": checkpoint,
           "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_TEMP_DIR": str(cache)}
    print(prepare_kernel(folder, env), flush=True)
    url = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # start-up takes seconds, minutes on a machine busy with training
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    time.sleep(settle)
                    return proc, url
        except OSError:
            if proc.poll() is not None:
                sys.exit("app.py exited during start-up")
            time.sleep(0.1)
    proc.terminate()
    sys.exit("app.py did not answer within 600 s")


def cache_size(folder: Path) -> tuple[int, int, int]:
    """(files, bytes, folders) under ``folder``: what the app's gradio cache holds."""
    files = folders = size = 0
    for p in folder.rglob("*"):
        if p.is_dir():
            folders += 1
        elif p.is_file():
            files += 1
            size += p.stat().st_size
    return files, size, folders


def cache_line(when: str, folder: Path, seconds: float | None = None) -> str:
    """One line on the cache's size; with ``seconds`` (the run's length), the hour-scale bound it implies."""
    files, size, folders = cache_size(folder)
    line = f"server cache {when}: {files} files, {size / 2**20:.1f} MB, {folders} folders"
    if seconds:  # delete_cache=(3600, 3600): a file lives at most 2 h, so at this rate the cache stays under
        line += (f" ({files / seconds * 60:.0f} files/min; delete_cache removes files older than 1 h every hour, so "
                 f"at this rate the cache peaks near {size / seconds * 7200 / 2**20:.0f} MB)")
    return line


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and all its threads so far (Linux ``/proc``); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15 of stat)


def png_size(path: str | None) -> tuple[int, int] | None:
    """(height, width) of a PNG file, from its header; None if it is missing or not a PNG."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return (img.height, img.width) if img.format == "PNG" else None
    except (OSError, TypeError, ValueError):
        return None


def next_values(rng: random.Random, current: list[int], max_steps: list[int], moves: str) -> list[int]:
    """The next slider values: all drawn anew (``random``) or one slider one step from ``current`` (``walk``)."""
    if moves == "random":
        return [rng.randint(-k, k) for k in max_steps]
    out = list(current)
    f = rng.randrange(len(max_steps))
    step = rng.choice((-1, 1))
    out[f] += step if abs(out[f] + step) <= max_steps[f] else -step
    return out


def data_url_bytes(url: str) -> bytes:
    """The bytes of a ``data:<mime>;base64,<payload>`` URL (the app's inline images)."""
    head, _, payload = url.partition(",")
    if not head.endswith(";base64"):
        raise ValueError(f"not a base64 data URL: {url[:40]}")
    return base64.b64decode(payload)


class GradioClientTransport:
    """Calls through ``gradio_client.Client`` (one per client thread): its own session, files downloaded into
    ``downloads``. It waits for results by polling its message queue every 50 ms."""

    def __init__(self, url: str, path: Path, downloads: Path) -> None:
        from gradio_client import Client, handle_file

        self.client = Client(url, verbose=False, download_files=str(downloads))
        self.downloads = downloads
        downloads.mkdir(parents=True, exist_ok=True)
        self.client.predict(handle_file(str(path)), api_name="/load_image")

    def slide(self, values: list[int]) -> tuple:
        out = self.client.predict(*values, api_name="/slide")  # image, grid, text (, truth image, text)
        return tuple(self._inline(v) for v in out)

    def _inline(self, value: Any) -> Any:
        """An image that came inline (gradio_client hands over its dict with a data URL) written to a file."""
        if not isinstance(value, dict) or not str(value.get("url", "")).startswith("data:"):
            return value
        fd, name = tempfile.mkstemp(suffix=".png", dir=self.downloads)
        with os.fdopen(fd, "wb") as f:
            f.write(data_url_bytes(value["url"]))
        return name

    def close(self) -> None:
        self.client.close()


class HttpTransport:
    """Calls through gradio's documented HTTP API, as ``curl`` would: ``POST /gradio_api/upload`` for the input,
    then per call ``POST /gradio_api/call/<api>`` (with this client's ``session_hash``, so the session's state is
    kept) and ``GET /gradio_api/call/<api>/<event_id>``, read as a server-sent event stream until ``complete``.
    Each image of an answer is fetched by its URL into ``downloads``, as a browser fetches it."""

    def __init__(self, url: str, path: Path, downloads: Path) -> None:
        import uuid

        import httpx

        self.http = httpx.Client(base_url=url, timeout=300)
        self.session = uuid.uuid4().hex
        self.downloads, self.count = downloads, 0
        downloads.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as f:
            r = self.http.post("gradio_api/upload", files={"files": (path.name, f, "image/png")})
        r.raise_for_status()
        self._call("load_image", [{"path": r.json()[0], "meta": {"_type": "gradio.FileData"}}])

    def _call(self, api: str, data: list) -> list:
        import json

        r = self.http.post(f"gradio_api/call/{api}", json={"data": data, "session_hash": self.session})
        r.raise_for_status()
        event = None
        with self.http.stream("GET", f"gradio_api/call/{api}/{r.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line[len("event:"):].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    out = json.loads(line[len("data:"):])
                    if event == "error":
                        raise RuntimeError(f"/{api}: {out}")
                    return out
        raise RuntimeError(f"/{api}: the event stream ended without a result")

    def _fetch(self, value: Any) -> Any:
        """An image output (a file's dict with its URL) fetched into a file, or decoded when it came inline as a
        data URL (as the page decodes it); anything else as it came."""
        if not isinstance(value, dict) or not value.get("url"):
            return value
        self.count += 1
        target = self.downloads / f"{self.count}.png"
        if value["url"].startswith("data:"):
            target.write_bytes(data_url_bytes(value["url"]))
        else:
            r = self.http.get(value["url"])
            r.raise_for_status()
            target.write_bytes(r.content)
        return str(target)

    def slide(self, values: list[int]) -> tuple:
        return tuple(self._fetch(v) for v in self._call("slide", values))

    def close(self) -> None:
        self.http.close()


class RunTransport(HttpTransport):
    """``POST /gradio_api/run/<api>``: one request and its JSON answer, as the page calls an event that skips the
    queue (``queue=False``)."""

    def slide(self, values: list[int]) -> tuple:
        return tuple(self._fetch(v) for v in self._run("slide", [None, *values]))  # None: the session's state

    def _run(self, api: str, data: list) -> list:
        r = self.http.post(f"gradio_api/run/{api}", json={"data": data, "session_hash": self.session})
        if r.status_code != 200:
            raise RuntimeError(f"/{api}: HTTP {r.status_code}: {r.text[:200]}")
        return r.json()["data"]


TRANSPORTS = {"http": HttpTransport, "run": RunTransport, "gradio_client": GradioClientTransport}


def client_loop(url: str, example: int, path: Path, max_steps: list[int], slots: int, moves: str,
                sizes: dict[str, tuple], barrier: threading.Barrier, stop: list[float], seed: int, downloads: Path,
                log: ClientLog, transport: str = "http") -> None:
    """One client: upload ``path``, wait for all clients, then move sliders until ``stop[0]``."""
    rng = random.Random(seed)
    try:
        client = TRANSPORTS[transport](url, path, downloads)
    except Exception as err:  # noqa: BLE001 - counted, reported
        log.errors.append(f"connect and upload: {type(err).__name__}: {err}")
        barrier.wait()
        return
    barrier.wait()
    current = [0] * len(max_steps)
    while time.monotonic() < stop[0]:
        current = next_values(rng, current, max_steps, moves)
        values = current + [0] * (slots - len(max_steps))
        t = time.perf_counter()
        try:
            out = client.slide(values)  # image, grid, text (, truth image, truth text)
        except Exception as err:  # noqa: BLE001 - counted, reported
            log.errors.append(f"{type(err).__name__}: {str(err)[:200]}")
            continue
        answer = Answer(example=example, values=values, seconds=time.perf_counter() - t, image=out[0], grid=out[1],
                        truth=out[3] if len(out) > 3 else None)
        if png_size(answer.image) != sizes["image"]:
            answer.problem = f"result image {answer.image!r}: size {png_size(answer.image)}, expected {sizes['image']}"
        elif png_size(answer.grid) != sizes["grid"]:
            answer.problem = f"code grid {answer.grid!r}: size {png_size(answer.grid)}, expected {sizes['grid']}"
        elif len(out) > 3 and png_size(answer.truth) != sizes["image"]:
            answer.problem = f"ground truth {answer.truth!r}: size {png_size(answer.truth)}, expected {sizes['image']}"
        log.answers.append(answer)
    client.close()


def model_side(checkpoint: str, examples: list[Path]):
    """The handlers and each example's loaded input, in this process (as the app computes them for an upload:
    its ground truth comes from the probe's estimate of its factors)."""
    from app import MIN_SLOTS, Handlers, configure_threads
    from causalvq.explore.explorer import Explorer

    configure_threads()  # as `python app.py` does: the same threads give the same numbers
    explorer = Explorer.from_checkpoint(checkpoint, fallback=None)
    if explorer is None:
        sys.exit(f"cannot load {checkpoint}")
    handlers = Handlers(explorer, max(MIN_SLOTS, explorer.config.num_factors))  # as build_demo lays them out
    return handlers, [explorer.load_image(p) for p in examples]


def expected_sizes(handlers, inputs) -> dict[str, tuple]:
    from causalvq.explore.images import display_image

    ex = handlers.explorer(handlers.new_session())
    image = display_image(inputs[0].reconstruction)
    grid = handlers._grid(ex, inputs[0].codes)
    return {"image": image.shape[:2], "grid": grid.shape[:2]}


def check_pixels(handlers, inputs, answers: list[Answer]) -> list[str]:
    """Compare answers with the model-side result of the same input and slider values; returns the mismatches."""
    from PIL import Image

    from causalvq.explore.images import display_image

    ex = handlers.explorer(handlers.new_session())
    F = ex.config.num_factors
    wrong = []
    for a in answers:
        inp = inputs[a.example]
        r = ex.apply_sliders(inp.codes, a.values[:F])
        want_image = display_image(r.image)
        want_grid = handlers._grid(ex, r.codes, r.changed, r.intervened)
        with Image.open(a.image) as img:
            got_image = np.asarray(img)
        with Image.open(a.grid) as img:
            got_grid = np.asarray(img)
        if not np.array_equal(got_image, want_image):
            wrong.append(f"example {a.example}, sliders {a.values[:F]}: the result image differs from the model's")
        elif not np.array_equal(got_grid, want_grid):
            wrong.append(f"example {a.example}, sliders {a.values[:F]}: the code grid differs from the model's")
        elif a.truth is not None and inp.start is not None:
            with Image.open(a.truth) as img:
                got_truth = np.asarray(img)
            want_truth = display_image(ex.ground_truth(inp.start, a.values[:F], estimated=inp.estimated).image)
            if not np.array_equal(got_truth, want_truth):
                wrong.append(f"example {a.example}, sliders {a.values[:F]}: the ground truth differs from the model's")
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the clients move sliders (default 60)")
    parser.add_argument("--moves", choices=("walk", "random"), default="walk",
                        help="walk: one slider one step (default); random: every slider drawn anew each call")
    parser.add_argument("--client", choices=tuple(TRANSPORTS), default="run",
                        help="run: one POST /gradio_api/run/slide an answer, as the page (default); http: the queued "
                             "HTTP API, one event stream per call; gradio_client: gradio_client.Client, which polls "
                             "for results every 50 ms")
    parser.add_argument("--url", default=None, help="an app already running (default: start python app.py)")
    parser.add_argument("--app", default=str(ROOT), help="folder whose app.py to start (default: this repository)")
    parser.add_argument("--checkpoint", default=None, help="folder or Hub repo id (default: env / shipped / untrained)")
    parser.add_argument("--check", type=int, default=300,
                        help="answers compared pixel for pixel with the model side (-1: all, 0: none)")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to wait after the app answers, for its start-up work in the background")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients must be >= 1 and --seconds > 0")
    os.environ.update(OFFLINE)
    sys.path.insert(0, str(ROOT))
    import torch

    checkpoint, temporary = resolve_checkpoint(args.checkpoint)
    scratch = [Path(checkpoint)] if temporary else []  # removed at the end, with the downloads and the cache
    examples = sorted((ROOT / "assets" / "examples").glob("*.png"))
    if not examples:
        sys.exit("no example images in assets/examples")
    handlers, inputs = model_side(checkpoint, examples)
    ex = handlers.explorer(handlers.new_session())
    sizes = expected_sizes(handlers, inputs)

    proc = None
    url = args.url
    downloads = Path(tempfile.mkdtemp(prefix="causalvq-load-downloads-"))
    cache = Path(tempfile.mkdtemp(prefix="causalvq-load-cache-"))
    scratch += [downloads, cache]
    if url is None:
        proc, url = start_app(checkpoint, cache, Path(args.app).resolve(), args.settle)
    logs = [ClientLog() for _ in range(args.clients)]
    barrier = threading.Barrier(args.clients + 1)
    stop = [float("inf")]
    threads = [threading.Thread(target=client_loop, daemon=True, args=(
        url, i % len(examples), examples[i % len(examples)], list(ex.max_steps), handlers.slots, args.moves, sizes,
        barrier, stop, args.seed * 1000 + i, downloads / f"client{i}", logs[i], args.client))
        for i in range(args.clients)]
    try:
        for t in threads:
            t.start()
        barrier.wait(timeout=300)  # every client has connected and uploaded its input
        load_before = os.getloadavg()[0]
        app_cpu = process_cpu_seconds(proc.pid) if proc is not None else None
        own_cpu = time.process_time()  # this process: the clients' threads (and nothing else runs meanwhile)
        start = time.monotonic()
        stop[0] = start + args.seconds
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        own_cpu = time.process_time() - own_cpu
        if app_cpu is not None:
            app_cpu = process_cpu_seconds(proc.pid) - app_cpu
        load_after = os.getloadavg()[0]
        cache_end = cache_line("at the end of the run", cache, elapsed) if proc is not None else ""
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)

    answers = [a for log in logs for a in log.answers]
    errors = [e for log in logs for e in log.errors]
    wrong = [a.problem for a in answers if a.problem]
    sample = [a for a in answers if not a.problem]
    if 0 <= args.check < len(sample):
        sample = random.Random(args.seed).sample(sample, args.check)
    wrong += check_pixels(handlers, inputs, sample)
    ms = np.asarray([a.seconds for a in answers]) * 1000 if answers else np.zeros(1)

    cfg = ex.config
    print(f"checkpoint: {checkpoint} ({cfg.num_codebooks}×{cfg.grid_size}×{cfg.grid_size} nodes, "
          f"{cfg.codebook_size} codes, {cfg.image_size}-px); app: {url}"
          f"{' (python ' + str(Path(args.app).resolve() / 'app.py') + ')' if proc else ''}")
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before:.2f} before / {load_after:.2f} after; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) model-side")
    print(f"clients: {args.clients} for {elapsed:.1f} s, /slide, --moves {args.moves}, --client {args.client}")
    print(f"answers: {len(answers)}   errors: {len(errors)}   wrong: {len(wrong)} "
          f"(every answer's images checked; {len(sample)} compared pixel for pixel with the model side)")
    print(f"latency: p50 {np.percentile(ms, 50):.0f} ms   p95 {np.percentile(ms, 95):.0f} ms   "
          f"max {ms.max():.0f} ms")
    print(f"throughput: {len(answers) / elapsed:.1f} answers/s")
    if answers:  # where the machine's CPU went: the app's process, and the clients' own process
        per = lambda cpu: f"{cpu:.1f} CPU s ({cpu / len(answers) * 1000:.1f} ms an answer)"  # noqa: E731
        line = f"CPU during the run: clients {per(own_cpu)}"
        if app_cpu is not None:
            line += (f"; app {per(app_cpu)}, so {os.cpu_count()} cores given to the app alone would serve at most "
                     f"{os.cpu_count() * len(answers) / app_cpu:.0f} answers/s")
        print(line)
    if proc is not None:  # GRADIO_TEMP_DIR of the app: what it wrote, and what is left once it has stopped
        print(cache_end)
        print(cache_line("after the app stopped", cache))
    for line in (errors + wrong)[:10]:
        print(f"  problem: {line}")
    for folder in scratch:
        shutil.rmtree(folder, ignore_errors=True)
    sys.exit(1 if errors or wrong else 0)


if __name__ == "__main__":
    main()
