"""The ``Explorer``: one loaded ``CausalVQ`` and the computations behind each panel of the app (``app.py``).

An ``Explorer`` wraps the model and, when one matches the checkpoint's factors, the procedural dataset it was
trained on. Its methods are plain functions of images and code grids that return numpy images or frozen
dataclasses (``causalvq.explore.views``); ``causalvq.explore.drawing`` turns those into pictures, and ``app.py``
only wires them to widgets. Nothing here imports gradio: bad input raises ``InputError`` with a sentence the app shows.

Panels and the methods behind them:

1. input: ``load_image`` (any array / PIL image / file, converted to the model input, with the factor probe's
   estimate when the checkpoint has a probe), ``sample`` (from the dataset, random or by factor values, with its
   true values), ``domain_check`` (reconstruction error against in-domain samples);
2. codes: the encoded input's code grid (``LoadedInput.codes``);
3. atomic interventions: ``apply_sliders`` — slider ``s_f`` applies action ``"<factor f> +"`` (``s_f > 0``) or
   ``"<factor f> -"`` (``s_f < 0``) ``|s_f|`` times, factors composed in factor order (f = 0 first); a move that
   takes a factor past its end from the input's values (true or estimated) is marked ``extrapolated``;
   ``ground_truth`` renders the dataset at the moved values (for uploads: from the estimate);
4. causal graph: ``graph`` (adjacency, intervened nodes, rewired entries); hard intervention ``do`` (as
   ``model.do``: do(node = code), then one no-action pass of the learned graph, beside the pass on the unedited
   grid) and ``code_choices`` (the codes a node takes in the dataset, most frequent first);
5. action retrieval: ``retrieve`` searches every single-factor move of k = 1..K steps and answers (action, k),
   "no move", or why no single-factor move explains the pair (``causalvq.metrics.reject``: the closest move is
   too far, or one more step of another factor explains y better), with the checkpoint's calibration
   (``retrieval_calibration``: its ``retrieval.json``, else measured here once on validation pairs);
6. traversals: ``traverse`` (cells past a factor's end marked ``extrapolated``);
7. factor maps: ``factor_maps`` (per action, where the mask falls and what the step changes over dataset pairs,
   computed once) and ``action_map`` (the same for one action on the current input).

Axis legend: ``S`` model image side, ``C`` image channels, ``k`` codebooks, ``h w`` latent grid, ``n`` nodes
(L = K·h·w, node i = k·h·w + y·w + x), ``v`` codebook size, ``f`` factors (F), ``a`` actions (A = 2F).
Images are ``uint8 (S, S, C)`` numpy arrays unless stated; code grids are long tensors ``(1, k, h, w)``.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from causalvq import kernels
from causalvq.config import ModelConfig
from causalvq.data import FactorDataset
from causalvq.data.pairs import TransitionSampler
from causalvq.explore.batching import Batcher
from causalvq.explore.checkpoints import (
    ENV_CHECKPOINT,
    ENV_HUB_TIMEOUT,
    SHIPPED_CHECKPOINT,
    dataset_for,
    load_checkpoint_probe,
    load_model,
)
from causalvq.explore.images import InputError, read_image_file, to_model_input
from causalvq.explore.lru import LRU
from causalvq.explore.transitions import TransitionCache, grid_key
from causalvq.explore.views import (
    ActionMap,
    CodeChoices,
    DomainCheck,
    DoView,
    GraphView,
    GroundTruth,
    LoadedInput,
    RetrievalView,
    SliderResult,
    Traversal,
)
from causalvq.imaging import to_uint8
from causalvq.metrics import reject
from causalvq.metrics.reject import RejectCalibration
from causalvq.metrics.structure import FactorMaps, factor_maps
from causalvq.model import CausalVQ
from causalvq.probe import FactorProbe

DOMAIN_FACTOR = 3.0  # an input is "far from the training domain" above DOMAIN_FACTOR × the in-domain 95th pct
GRAPHS_KEPT = 32  # graphs kept by ``Explorer.graph`` (a threshold, top-k or node change redraws without the model)
DECODED_KEPT = 1024  # slider results kept decoded by their grid (S·S·C bytes each: 12 KB at 64 px RGB)
RETRIEVAL_STEPS = reject.STEPS  # K: retrieval searches moves of 1..K steps of one action


def batching_pays() -> bool:
    """Whether concurrent slider moves should batch their transitions: on the fused kernel a batch of 8 costs
    5.7 ms a grid against 7.5 ms alone; on plain torch 26 ms against 15.6 (shipped checkpoint, one thread;
    docs/speed.md), so there each grid runs alone."""
    return kernels.loaded() is not None


class Explorer:
    """A loaded CausalVQ, its matching procedural dataset, and the computations behind each panel.

    Args:
        model: the loaded model (put in eval mode here).
        dataset: the dataset to sample from and render ground truths with; ``None`` finds the checkpoint's
            (``dataset_for``: the procedural one with its factors, else its data file when it is here); pass
            ``False`` to disable sampling.
        source: where the model came from (shown in the app).
        notice: a message about loading to show in the app ("" for none).
        calibration_samples: in-domain samples measured for the out-of-domain notice.
        map_pairs: one-step test pairs behind the factor maps (computed once, on first use).
        cache_size: transitions kept by the slider moves' memo (``transitions.TransitionCache``, one per grid and
            action, about 1.6 KB each at 64 nodes).
        max_batch: most single transitions that concurrent slider moves run as one batched call.
        code_images: dataset images whose codes are counted to order the do() choices (on first use).
        probe: the checkpoint's factor probe (``causalvq.probe``), or ``None``: then uploads get no estimate.
        retrieval_steps: K, the longest move retrieval searches.
        retrieval_pairs: validation images x behind a reject rule measured here, when the checkpoint has no
            usable ``retrieval.json`` (each x gives every single-factor move of 1..K steps in the split).
    """

    def __init__(self, model: CausalVQ, dataset: FactorDataset | None | bool = None, source: str = "",
                 notice: str = "", calibration_samples: int = 32, map_pairs: int = 384,
                 cache_size: int = 4096, code_images: int = 256, probe: FactorProbe | None = None,
                 retrieval_steps: int = RETRIEVAL_STEPS, retrieval_pairs: int = 32, max_batch: int = 16) -> None:
        if not 1 <= retrieval_steps <= 32 or retrieval_pairs < 2:
            raise ValueError(f"need 1 <= retrieval_steps <= 32 and retrieval_pairs >= 2, got {retrieval_steps}, "
                             f"{retrieval_pairs}")
        if probe is not None:
            probe.check_model(model)
        self.model = model.eval()
        self.probe = probe
        self.retrieval_steps, self.retrieval_pairs = retrieval_steps, retrieval_pairs
        self._calibration: RejectCalibration | None = None
        self._calibration_done = False
        self.retrieval_notice = ""  # where the reject rule came from, when not from the checkpoint's retrieval.json
        self._calibration_lock = threading.Lock()
        cfg = model.config
        missing = ""  # why there is no dataset, when there is none
        if dataset is None:
            dataset, missing = dataset_for(cfg, source)
        self.dataset: FactorDataset | None = dataset or None
        self.source, self.notice = source, notice
        self.calibration_samples = calibration_samples
        self._domain: DomainCheck | None = None
        self._lock = threading.Lock()
        self._steps = Batcher(self._transition_rows, max_batch)  # the slider moves' transitions, batched
        self.transitions = TransitionCache(self._slider_step, cfg.num_nodes, cache_size)  # each step computed once
        self._domain_lock = threading.Lock()
        self.map_pairs = map_pairs
        self._maps: FactorMaps | None = None
        self._maps_lock = threading.Lock()
        self._graphs: LRU[tuple, GraphView] = LRU(GRAPHS_KEPT)  # (action, grid) → graph
        self._renders: LRU[tuple[int, ...], np.ndarray] = LRU(GRAPHS_KEPT * 128)  # factors → ground-truth image
        self._decoded: LRU[bytes, np.ndarray] = LRU(DECODED_KEPT)  # grid_key → decoded slider result
        self.decodes = 0  # slider results decoded (the others were kept; tests and benchmarks)
        self.code_images = code_images
        self._counts: np.ndarray | None = None
        self._counts_lock = threading.Lock()
        if self.dataset is None and dataset is not False:
            self.notice = (f"{notice} " if notice else "") + (missing or (
                "No procedural dataset has this checkpoint's factors "
                f"({', '.join(cfg.factor_names)}): sampling is disabled, upload an image instead."))

    @classmethod
    def from_checkpoint(cls, choice: str | None = None, fallback: Path | None = SHIPPED_CHECKPOINT,
                        calibration_samples: int = 32) -> Explorer | None:
        """Load ``choice`` (default ``$CAUSALVQ_CHECKPOINT``) or the shipped checkpoint; ``None`` if neither."""
        loaded = load_model(choice if choice is not None else os.environ.get(ENV_CHECKPOINT), fallback)
        if loaded.model is None:
            return None
        probe, probe_notice = load_checkpoint_probe(loaded.source, loaded.model)
        notice = " ".join(s for s in (loaded.notice, probe_notice) if s)
        return cls(loaded.model, source=loaded.source, notice=notice, calibration_samples=calibration_samples,
                   probe=probe)

    # --- names and sizes ---
    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def factor_names(self) -> tuple[str, ...]:
        return self.config.factor_names

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.config.action_names

    @property
    def max_steps(self) -> tuple[int, ...]:
        """Slider range k_f per factor: enough steps to cross the whole factor (size − 1)."""
        return tuple(s - 1 for s in self.config.factor_sizes)

    def factor_value_labels(self, f: int) -> list[str]:
        """Readable labels of factor ``f``'s values (``"2: sphere"``, ``"3: 0.30"``) for the sampling menus."""
        size = self.config.factor_sizes[f]
        name = self.factor_names[f]
        ds = self.dataset
        if ds is not None and name == "shape" and hasattr(ds, "shape_names"):
            names = ds.shape_names
            return [f"{i}: {names[i]}" if i < len(names) else str(i) for i in range(size)]
        values = getattr(ds, "factor_values", None)
        if values is not None:
            return [f"{i}: {float(values[f][i]):.3g}" for i in range(size)]
        return [str(i) for i in range(size)]

    # --- input ---
    def domain_check(self) -> DomainCheck | None:
        """Reconstruction error on in-domain samples (computed once, lazily); ``None`` without a dataset."""
        if self.dataset is None:
            return None
        with self._domain_lock:
            if self._domain is None:
                rng = np.random.default_rng(0)
                factors = self.dataset.sample_factors(self.calibration_samples, rng)
                x = self._prepare(self.dataset.render(factors))
                with torch.inference_mode():
                    err = ((self.model.reconstruct(x).image - x) ** 2).mean((1, 2, 3)).numpy()
                q95 = float(np.quantile(err, 0.95))
                self._domain = DomainCheck(typical=float(np.median(err)), threshold=max(DOMAIN_FACTOR * q95, 1e-4))
        return self._domain

    def warm_up(self) -> None:
        """Compute now what the first visitors would otherwise wait for: the in-domain error and the dataset's
        render tables (``precompute``, where the dataset has one: Shapes3D's 480 object geometries, 11 MB at 64 px,
        which a ground truth at a new scale, shape and orientation computes otherwise, ~15 ms each)."""
        self.domain_check()
        precompute = getattr(self.dataset, "precompute", None)
        if precompute is not None:
            precompute()

    def _prepare(self, images: np.ndarray) -> torch.Tensor:
        """uint8 dataset images `(n, H, W, C)` → model input `(n, c, S, S)`."""
        cfg = self.config
        return torch.cat([to_model_input(im, cfg.image_size, cfg.in_channels) for im in images])

    def load_image(self, image: np.ndarray | Image.Image | str | os.PathLike,
                   factors: Sequence[int] | None = None) -> LoadedInput:
        """Convert any image (array, PIL image, or file path) to the model input, encode and reconstruct it.

        Raises:
            InputError: unreadable file, or an array that is not an image.
        """
        if isinstance(image, (str, os.PathLike)):
            image = read_image_file(image)
        cfg = self.config
        x = to_model_input(image, cfg.image_size, cfg.in_channels)  # (1, c, S, S)
        with torch.inference_mode():
            rec = self.model.reconstruct(x)
            error = float(((rec.image - x) ** 2).mean())
        notice = ""
        check = self.domain_check() if factors is None else None
        if check is not None and error > check.threshold:
            notice = (f"This image looks far from the training domain: its reconstruction error is {error:.4f}, "
                      f"against {check.typical:.4f} on typical {self.dataset.name} samples (threshold "
                      f"{check.threshold:.4f}). Interventions on it may not mean much.")
        elif self.dataset is None and factors is None:
            notice = "No in-domain dataset for this checkpoint: cannot say whether this image is in its domain."
        return LoadedInput(image=to_uint8(x)[0], codes=rec.codes, reconstruction=to_uint8(rec.image)[0],
                           error=error, factors=None if factors is None else tuple(int(v) for v in factors),
                           notice=notice, estimate=None if self.probe is None else self.probe.predict(rec.codes))

    def sample(self, factors: Sequence[int] | None = None, seed: int | None = None) -> LoadedInput:
        """Render one dataset image, at ``factors`` or at random (``seed``), and load it."""
        if self.dataset is None:
            raise InputError("Sampling is disabled: no procedural dataset matches this checkpoint's factors.")
        if factors is None:
            factors = self.dataset.sample_factors(1, np.random.default_rng(seed))[0]
        try:
            f = self.dataset.check_factors(np.asarray([factors]))
        except ValueError as err:
            raise InputError(f"Invalid factor values: {err}") from None
        if not self.dataset.contains(f)[0]:  # a data file whose grid is incomplete
            values = ", ".join(f"{n} = {v}" for n, v in zip(self.factor_names, f[0]))
            raise InputError(f"The data file has no image at {values}: choose other values.")
        return self.load_image(self.dataset.render(f)[0], factors=f[0].tolist())

    # --- atomic interventions ---
    def slider_steps(self, values: Sequence[float | None]) -> tuple[int, ...]:
        """Check slider values, one per factor, and return them as ints: the one check they get on the way down.

        Raises:
            InputError: wrong number of sliders, a missing or non-integer value, or one out of the range ±k_f.
        """
        F = self.config.num_factors
        if len(values) != F:
            raise InputError(f"Expected {F} slider values ({', '.join(self.factor_names)}), got {len(values)}.")
        out = []
        for name, k, s in zip(self.factor_names, self.max_steps, values):
            if s is None:
                raise InputError(f"The slider for {name} needs a value.")
            try:
                v = float(s)
            except (TypeError, ValueError):
                v = float("nan")
            if not v.is_integer():  # also NaN and ±inf
                raise InputError(f"The slider for {name} must be a whole number, got {s}.")
            if abs(v) > k:
                raise InputError(f"The slider for {name} goes from {-k} to {k}, got {int(v)}.")
            out.append(int(v))
        return tuple(out)

    def slider_actions(self, values: Sequence[float | None]) -> tuple[int, ...]:
        """The action sequence of slider values (checked by ``slider_steps``): factor order, ``|s_f|`` times
        ``f + F·(s_f < 0)`` each."""
        F = self.config.num_factors
        out: list[int] = []
        for f, s in enumerate(self.slider_steps(values)):
            out += [f + F * int(s < 0)] * abs(s)
        return tuple(out)

    @torch.inference_mode()
    def apply_actions(self, codes: torch.Tensor, actions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply an action sequence to code grids `(1, k, h, w)`: the codes and the bool `(1, n)` intervened mask.

        Each step is a transition of the grid reached so far, kept by grid and action (``self.transitions``, a
        ``TransitionCache``): a chain computes only the steps no chain has met, so one step of a slider costs one
        transition plus one per step of the sliders after it that are away from 0, and a position met before
        costs none. Safe to call from several threads at once: a step two threads need is computed once, and on
        the fused kernel (``batching_pays``) the transitions that concurrent calls need at the same moment run as
        one batched call (``_transition_rows``), whose rows are each grid's own transition.
        """
        return self.transitions.walk(codes, actions)

    def _slider_step(self, codes: torch.Tensor, action: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One transition of ``codes`` `(b, k, h, w)` by ``action`` for ``apply_actions``: batched with the other
        threads' moves when it pays (a single grid on the fused kernel), else alone."""
        a = torch.tensor([action])
        if codes.shape[0] == 1 and batching_pays():
            return self._steps(codes, a)
        return self._transition_rows(codes, a)

    @torch.inference_mode()
    def _transition_rows(self, codes: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One deterministic transition of each grid `(b, k, h, w)` by its action `(b,)` (or one action `(1,)` for
        all): the codes `(b, k, h, w)` and the bool intervened mask `(b, n)`. Row i is grid i's transition alone:
        the transition layer mixes nodes, never grids (tests/test_app_concurrency.py checks batched rows against
        single calls)."""
        tr = self.model.transition_codes(codes, actions)
        return tr.codes, tr.mask

    def extrapolated(self, start: Sequence[int], offsets: np.ndarray) -> np.ndarray:
        """Whether moving each factor from ``start`` `(f,)` by ``offsets`` `(f, ...)` steps leaves its range
        0..size_f − 1: bool, the shape of ``offsets``. Such a move asks the model for a value the data never had."""
        sizes = np.asarray(self.config.factor_sizes).reshape(-1, *[1] * (np.ndim(offsets) - 1))
        moved = np.asarray(start, dtype=np.int64).reshape(sizes.shape) + np.asarray(offsets)
        return (moved < 0) | (moved >= sizes)

    @torch.inference_mode()
    def apply_sliders(self, codes: torch.Tensor, steps: Sequence[float | None],
                      start: Sequence[int] | None = None) -> SliderResult:
        """The slider panel: compose all sliders (factor order) on ``codes`` and decode. With the input's factor
        values ``start`` (true or estimated), ``extrapolated`` marks the sliders that move a factor past its end."""
        actions = self.slider_actions(steps)
        out, mask = self.apply_actions(codes, actions)
        image = self._decode(out)
        changed = (self.model.flatten_codes(out) != self.model.flatten_codes(codes))[0].numpy()
        extra = None if start is None else self.extrapolated(start, np.asarray(self.slider_steps(steps)))
        return SliderResult(image=image, codes=out, changed=changed, intervened=mask[0].numpy(), actions=actions,
                            extrapolated=extra)

    def _decode(self, codes: torch.Tensor) -> np.ndarray:
        """The decoded image of one grid `(1, k, h, w)` (read-only, shared): a slider position met before, by any
        chain from any input, is not decoded again (``DECODED_KEPT`` kept, least recently used first out)."""
        key = grid_key(codes)
        image = self._decoded.get(key)
        if image is not None:
            return image
        image = to_uint8(self.model.decode_codes(codes))[0]
        image.flags.writeable = False
        with self._lock:
            self.decodes += 1
        self._decoded.put(key, image)
        return image

    def ground_truth(self, factors: Sequence[int], steps: Sequence[float | None],
                     estimated: bool = False) -> GroundTruth | None:
        """The dataset image with each factor moved by its slider (clipped into range); ``None`` without one.
        ``estimated``: ``factors`` are the probe's estimate for an upload (the result says so).

        Raises:
            InputError: the dataset is a data file with no image at the moved values (an incomplete grid).
        """
        if self.dataset is None:
            return None
        f = np.asarray(factors, dtype=np.int64) + np.asarray(self.slider_steps(steps))
        clipped = np.clip(f, 0, np.asarray(self.config.factor_sizes) - 1)
        key = tuple(int(v) for v in clipped)
        image = self._renders.get(key)  # a render is kept: visitors drag through the same values
        if image is None:
            if not self.dataset.contains(clipped[None])[0]:
                values = ", ".join(f"{n} = {v}" for n, v in zip(self.factor_names, key))
                raise InputError(f"The data file has no image at {values}: no ground truth for this move.")
            image = to_uint8(self._prepare(self.dataset.render(clipped[None])))[0]
            image.flags.writeable = False  # shared by every later call
            self._renders.put(key, image)
        return GroundTruth(image=image, factors=key, clipped=bool((f != clipped).any()), estimated=estimated)

    # --- causal graph ---
    def graph(self, action: int | None = None, codes: torch.Tensor | None = None) -> GraphView:
        """The learned graph for no action or ``action`` (one ``model.causal_graph`` call, kept for the next
        events on the same graph): its adjacency, the nodes the action intervenes on, averaged over all constant
        code grids or for ``codes`` `(1, k, h, w)`, and the entries the action rewires (``rewired``).

        Raises:
            InputError: an action index out of range.
        """
        if action is not None and not 0 <= action < self.config.num_actions:
            raise InputError(f"Unknown action {action}: choose one of {', '.join(self.action_names)}.")
        key = (action, None if codes is None else codes.cpu().numpy().tobytes())
        hit = self._graphs.get(key)
        if hit is not None:
            return hit
        with torch.inference_mode():
            g = self.model.causal_graph(action, codes)
            intervened = rewired = None
            if action is not None:
                intervened = (g.mask > 0.5).numpy()
                n = self.config.num_nodes
                weight = self.model.transition.rewired(torch.as_tensor(intervened, dtype=torch.float32)[None])
                rewired = np.broadcast_to(weight[0].numpy() > 0, (n, n)).copy()  # (n, n)
        view = GraphView(adjacency=g.adjacency.numpy(), intervened=intervened, rewired=rewired)
        self._graphs.put(key, view)
        return view

    @torch.inference_mode()
    def do(self, codes: torch.Tensor, node: int, code: int) -> DoView:
        """Hard intervention do(node = code), decoded, and why other nodes moved or did not.

        The codes are ``model.do``'s: the node set, one no-action pass of the learned graph over the edited grid,
        the node kept. The same pass runs on the unedited grid in the same batch (one transition call), so the
        view separates the nodes the intervention moved (``propagated``) from those the pass changes anyway
        (``drift``), and gives the edges the pass used and the ones that carried the change.
        """
        n, v = self.config.num_nodes, self.config.codebook_size
        if not 0 <= int(node) < n:
            raise InputError(f"Choose a node between 0 and {n - 1}, got {node}.")
        if not 0 <= int(code) < v:
            raise InputError(f"Choose a codebook entry between 0 and {v - 1}, got {code}.")
        node, code = int(node), int(code)
        nodes = self.model.flatten_codes(codes)  # (1, n)
        edited = nodes.clone()
        edited[:, node] = code
        out = self.model.transition(torch.cat([nodes, edited]), None, sample=False)  # as model.do, both grids
        pred = out.probs.argmax(-1)  # (2, n)
        after = pred[1].clone()
        after[node] = code
        other = torch.arange(n) != node  # (n,)
        propagated = ((after != pred[0]) & other).numpy()
        graph = (out.graph[1] > 0.5).numpy()  # (n, n), row = source
        graph[np.diag_indices(n)] = False
        direct = graph[node] & propagated  # (n,)
        via = graph[node][:, None] & graph & (propagated & ~direct)[None, :]  # (n, n): node → m → j
        carriers = via.copy()
        carriers[node] |= direct | via.any(1)
        tv = 0.5 * (out.probs[1] - out.probs[0]).abs().sum(-1) * other  # (n,)
        codes_after = self.model.unflatten_codes(after[None])  # (1, k, h, w)
        return DoView(image=to_uint8(self.model.decode_codes(codes_after))[0], codes=codes_after,
                      changed=((after != nodes[0]) & other).numpy(), node=node, code=code,
                      before=int(nodes[0, node]), propagated=propagated, drift=((pred[0] != nodes[0]) & other).numpy(),
                      edge_probs=out.edge_probs[1].numpy(), graph=graph, carriers=carriers, shift=float(tv.max()),
                      shift_node=int(tv.argmax()))

    def code_counts(self) -> np.ndarray | None:
        """How often each node takes each code over ``code_images`` dataset images (seed 0): long `(n, v)`,
        computed once, lazily; ``None`` without a dataset."""
        if self.dataset is None:
            return None
        with self._counts_lock:
            if self._counts is None:
                factors = self.dataset.sample_factors(self.code_images, np.random.default_rng(0))
                with torch.inference_mode():
                    codes = torch.cat([self.model.encode_codes(self._prepare(self.dataset.render(factors[s:s + 64])))
                                       for s in range(0, len(factors), 64)])  # (b, k, h, w)
                nodes = self.model.flatten_codes(codes)  # (b, n)
                v = self.config.codebook_size
                onehot = torch.nn.functional.one_hot(nodes, v)  # (b, n, v)
                self._counts = onehot.sum(0).numpy()  # (n, v)
        return self._counts

    def code_choices(self, node: int) -> CodeChoices:
        """The codebook entries to offer for do() at ``node``: the codes it takes in the dataset, most frequent
        first, then the others (index order); all in index order without a dataset.

        Raises:
            InputError: a node out of range.
        """
        n, v = self.config.num_nodes, self.config.codebook_size
        if not 0 <= int(node) < n:
            raise InputError(f"Choose a node between 0 and {n - 1}, got {node}.")
        counts = self.code_counts()
        if counts is None:
            return CodeChoices(node=int(node), codes=tuple(range(v)), counts=(0,) * v, images=0)
        row = counts[int(node)]
        order = np.argsort(-row, kind="stable")
        return CodeChoices(node=int(node), codes=tuple(int(c) for c in order), counts=tuple(int(row[c]) for c in order),
                           images=self.code_images)

    # --- action retrieval ---
    @torch.inference_mode()
    def move_distances(self, codes_x: torch.Tensor, codes_y: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Distance of y from x moved k = 1..``steps`` (default K) times by each action: `(b, k, h, w)` twice →
        float `(b, a, K)` (``causalvq.metrics.reject.search_moves``).

        Entry (a, k) is the model's retrieval score (``losses.retrieval_distance``: y's node NLL under the code
        distribution of the k-th transition, averaged or summed as the checkpoint's ``retrieval_score``) after k − 1
        argmax steps of action a, as the sliders apply them; k = 1 is ``model.retrieve_action_codes``'s score.
        """
        steps = self.retrieval_steps if steps is None else int(steps)
        flat = self.model.flatten_codes
        return reject.search_moves(self.model, flat(codes_x), flat(codes_y), steps).distances

    def retrieval_calibration(self) -> RejectCalibration | None:
        """The reject rule of this checkpoint (``causalvq.metrics.reject``), found once (lazily): the checkpoint's
        ``retrieval.json`` when it has a usable one, else measured here on ``retrieval_pairs`` validation images
        (``retrieval_notice`` says why); ``None`` without either."""
        with self._calibration_lock:
            if not self._calibration_done:
                stored, problem = self._stored_calibration()
                if stored is not None and stored.steps != self.retrieval_steps:
                    stored, problem = None, (f"its retrieval.json covers moves of 1..{stored.steps} steps, "
                                             f"this explorer searches 1..{self.retrieval_steps}")
                if stored is None and self.dataset is not None:
                    sampler = TransitionSampler(self.dataset, split="val")
                    stored = reject.calibrate(self.model, self.dataset, sampler, num_images=self.retrieval_pairs,
                                              steps=self.retrieval_steps)
                    self.retrieval_notice = (f"The checkpoint's calibration cannot be used ({problem}): " if problem
                                             else "The checkpoint has no retrieval.json: ") + (
                        f"the reject rule was measured here on {stored.rates.num_images} validation images.")
                elif problem:
                    self.retrieval_notice = f"The checkpoint's calibration cannot be used ({problem})."
                self._calibration, self._calibration_done = stored, True
        return self._calibration

    def _stored_calibration(self) -> tuple[RejectCalibration | None, str]:
        """The checkpoint's ``retrieval.json`` (folder or Hub repo id) as (calibration, ""), (None, "") when it has
        none, or (None, why) when it cannot be used."""
        source = self.source
        if not source or not Path(source).is_dir() and "/" not in source:  # neither a folder nor an owner/name id
            return None, ""
        try:
            if Path(source).is_dir():
                return reject.load_calibration(source, self.model), ""
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            def fetch() -> Path | None:
                try:
                    return Path(hf_hub_download(source, reject.CALIBRATION_FILE))
                except EntryNotFoundError:
                    return None

            pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            future = pool.submit(fetch)
            pool.shutdown(wait=False)  # a download that outlives the timeout finishes (or fails) in the background
            path = future.result(timeout=float(os.environ.get(ENV_HUB_TIMEOUT, "10")))
            return (None if path is None else reject.load_calibration(path.parent, self.model)), ""
        except Exception as err:  # noqa: BLE001 - any failure: measure the rule here instead, and say why
            return None, (str(err).replace(str(source), Path(source).name)[:200] or type(err).__name__)

    @torch.inference_mode()
    def retrieve(self, x: np.ndarray | Image.Image | torch.Tensor, y: np.ndarray | Image.Image | torch.Tensor
                 ) -> RetrievalView:
        """Which single-factor move of k = 1..K steps turns image x into image y, or none.

        ``x`` and ``y`` are images (any size or mode) or code grids `(1, k, h, w)`. Every (action, k) is scored
        (``move_distances``) and the closest move is judged by the reject rule (``causalvq.metrics.reject.decide``
        with ``retrieval_calibration``): "no move" for two images with the same codes; refused when its distance is
        above the threshold of its k or y has more codes it cannot explain than the limit of its k, or when one more
        step of another factor's action brings y closer by more than the margin; else the answer. Without a
        calibration the closest move is given unjudged.
        """
        cx, cy = self._codes_of(x), self._codes_of(y)
        nx, ny = self.model.flatten_codes(cx), self.model.flatten_codes(cy)  # (1, n)
        search = reject.search_moves(self.model, nx, ny, self.retrieval_steps)
        d = search.distances[0].numpy()  # (a, K)
        cal = self.retrieval_calibration()

        def extend(a: int, k: int) -> np.ndarray:
            return reject.extension_distances(self.model, search.grids[0, a, k - 1][None], ny)[0].numpy()  # (a,)

        decision = reject.decide(d, search.unexplained[0].numpy(), bool((nx == ny).all()), cal, extend)
        flat = d.reshape(-1)
        probs = np.exp(-(flat - flat.min()))
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        K = d.shape[1]
        return RetrievalView(
            ranking=tuple((f"{self.action_names[i // K]} ×{i % K + 1}", float(probs[i])) for i in order),
            action=decision.action, steps=decision.steps, distances=d,
            thresholds=None if cal is None else np.asarray(cal.thresholds), threshold=decision.threshold,
            accepted=decision.accepted, verdict=decision.verdict.value, unexplained=decision.unexplained,
            limit=decision.limit, rival=decision.rival,
            rival_distance=decision.rival_distance, margin=None if cal is None else cal.margin,
            intervened=(self.model.intervention_probs(cx, torch.tensor([decision.action]))[0] > 0.5).numpy(),
            changed=(nx != ny)[0].numpy(), codes_x=cx, codes_y=cy)

    def _codes_of(self, image: np.ndarray | Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, torch.Tensor) and not image.is_floating_point():
            return image
        cfg = self.config
        return self.model.encode_codes(to_model_input(image, cfg.image_size, cfg.in_channels))

    # --- traversals ---
    @torch.inference_mode()
    def traverse(self, codes: torch.Tensor, steps: int = 3, start: Sequence[int] | None = None,
                 estimated: bool = False) -> Traversal:
        """For each factor, −steps..+steps applications of its actions to ``codes`` `(1, k, h, w)`, decoded.

        All 2F action chains advance together in one batched transition per step. With the input's factor values
        ``start`` (``estimated``: the probe's), the cells whose move leaves a factor's range are ``extrapolated``.
        """
        if not 1 <= int(steps) <= 32:
            raise InputError(f"Choose between 1 and 32 traversal steps, got {steps}.")
        steps, F = int(steps), self.config.num_factors
        actions = torch.arange(2 * F)  # (2F,): "f +" for f < F, then "f -"
        cur = codes.expand(2 * F, -1, -1, -1)  # (2F, k, h, w)
        chain = []
        for _ in range(steps):
            cur = self.model.transition_codes(cur, actions).codes
            chain.append(cur)
        stacked = torch.cat([codes, *chain])  # (1 + steps·2F, k, h, w)
        images = to_uint8(self.model.decode_codes(stacked))  # (1 + steps·2F, S, S, C)
        centre, moved = images[0], rearrange(images[1:], "(t d f) H W C -> f d t H W C", t=steps, d=2)
        rows = [np.concatenate([moved[f, 1, ::-1], centre[None], moved[f, 0]]) for f in range(F)]
        offsets = np.broadcast_to(np.arange(-steps, steps + 1), (F, 2 * steps + 1))  # (F, 2·steps + 1)
        extra = None if start is None else self.extrapolated(start, offsets)
        return Traversal(images=np.stack(rows), steps=steps, factor_names=self.factor_names, extrapolated=extra,
                         estimated=estimated and start is not None)

    # --- factor maps ---
    def factor_maps(self) -> FactorMaps | None:
        """Per action, the share of one-step test pairs (``map_pairs`` of them, seed 0) whose mask holds each node
        and whose step changes it (``causalvq.metrics.structure.factor_maps``); computed once, lazily. ``None``
        without a dataset to draw pairs from."""
        if self.dataset is None:
            return None
        with self._maps_lock:
            if self._maps is None:
                sampler = TransitionSampler(self.dataset, split="test")
                x, y, actions = sampler.sample_pairs(self.map_pairs, np.random.default_rng(0))
                with torch.inference_mode():
                    cx = torch.cat([self.model.encode_codes(self._prepare(self.dataset.render(x[s:s + 64])))
                                    for s in range(0, len(x), 64)])  # (b, k, h, w)
                    cy = torch.cat([self.model.encode_codes(self._prepare(self.dataset.render(y[s:s + 64])))
                                    for s in range(0, len(y), 64)])
                self._maps = factor_maps(self.model, cx, cy, torch.as_tensor(actions, dtype=torch.long))
        return self._maps

    @torch.inference_mode()
    def action_map(self, codes: torch.Tensor, action: int) -> ActionMap:
        """One step of ``action`` on ``codes`` `(1, k, h, w)`: its mask and changed nodes, beside the dataset's
        factor maps of that action (when a dataset is available).

        Raises:
            InputError: an action index out of range.
        """
        if not 0 <= int(action) < self.config.num_actions:
            raise InputError(f"Unknown action {action}: choose one of {', '.join(self.action_names)}.")
        a = int(action)
        tr = self.model.transition_codes(codes, torch.tensor([a]))
        changed = (self.model.flatten_codes(tr.codes) != self.model.flatten_codes(codes))[0].numpy()
        maps = self.factor_maps()
        return ActionMap(action=a, mask=tr.mask[0].numpy().astype(bool), changed=changed,
                         image=to_uint8(self.model.decode_codes(tr.codes))[0],
                         mask_share=None if maps is None else maps.mask[a].numpy(),
                         changed_share=None if maps is None else maps.changed[a].numpy(),
                         pairs=0 if maps is None else int(maps.pairs[a]))
