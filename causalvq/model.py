"""CausalVQ: the CT-VAE model — an MCQ-VAE whose code indices are the variables of a learned causal graph.

Axes: ``b`` batch, ``c`` image channels, ``S`` image side, ``k`` codebooks, ``h w`` latent grid, ``n`` nodes
(L = K·h·w, node i = k·h·w + y·w + x), ``v`` codebook size, ``a`` actions.

Images in and out are float tensors `(b, c, S, S)` in [0, 1]; actions are long tensors `(b,)`. The inference
methods default to the deterministic evaluation mode (``sample=False``: thresholds at 0.5 instead of Gumbel noise,
no dropout); ``sample=True`` draws as in training. Checkpoints are ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants
import torch
from einops import rearrange, repeat
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.utils import LocalEntryNotFoundError
from torch import nn

from causalvq import checkpoint, losses
from causalvq.autoencoder import Decoder, Encoder
from causalvq.config import ModelConfig
from causalvq.quantizer import MultiCodebookQuantizer
from causalvq.transition import CausalTransition, TransitionOutput


# --- results -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reconstruction:
    image: torch.Tensor  # (b, c, S, S) in [0, 1]
    codes: torch.Tensor  # (b, k, h, w)


@dataclass(frozen=True)
class Transition:
    codes: torch.Tensor  # (b, k, h, w) argmax codes after the transition
    probs: torch.Tensor  # (b, n, v) per-node code distribution
    mask: torch.Tensor  # (b, n) bool, nodes the action intervened on
    graph: torch.Tensor  # (b, n, n) bool, the sampled (or, deterministic, thresholded) graph; row = source


@dataclass(frozen=True)
class Intervention:
    image: torch.Tensor  # (b, c, S, S) decoded codes after the last step
    codes_before: torch.Tensor  # (b, k, h, w)
    codes_after: torch.Tensor  # (b, k, h, w)
    mask: torch.Tensor  # (b, n) bool, nodes intervened on in any step
    steps: int


@dataclass(frozen=True)
class Retrieval:
    probs: torch.Tensor  # (b, a) p(a | x, y) = softmax(−scores)
    action: torch.Tensor  # (b,) argmax
    scores: torch.Tensor  # (b, a) distance of each candidate action (node NLL, summed or averaged)


@dataclass(frozen=True)
class Graph:
    adjacency: torch.Tensor  # (n, n) edge probabilities C averaged over the code grids (row = source)
    mask: torch.Tensor  # (n,) fraction of the grids in which the action intervenes on each node: exactly 0/1 for
    #                     one grid, 0 without an action


@dataclass(frozen=True)
class DoResult:
    codes: torch.Tensor  # (b, k, h, w) codes after do(node = code) and propagation
    changed: torch.Tensor  # (b, n) bool, nodes whose code differs from the input


@dataclass(frozen=True)
class ImageLosses:
    loss: torch.Tensor  # recon + vq
    recon: torch.Tensor
    vq: torch.Tensor
    perplexity: torch.Tensor  # mean over codebooks
    usage: torch.Tensor  # mean fraction of codes used


@dataclass(frozen=True)
class TransitionLosses:
    loss: torch.Tensor  # what the optimiser minimises
    ce: torch.Tensor  # code cross-entropy of the prediction
    regularizer: torch.Tensor  # weighted regulariser terms (already inside loss)
    accuracy: torch.Tensor  # fraction of nodes whose argmax code is the target
    mask_size: torch.Tensor  # mean intervened nodes per sample (0 without an action), for the training log
    in_degree: torch.Tensor  # expected in-edges per node of the graph (self-loops excluded), for the training log


@dataclass(frozen=True)
class RetrievalLosses:
    loss: torch.Tensor  # −log p(a* | x, y)
    accuracy: torch.Tensor  # fraction of pairs whose argmax action is right


# --- the model -----------------------------------------------------------------------------------------------
class CausalVQ(nn.Module, PyTorchModelHubMixin, library_name="causalvq", license="mit",
               tags=["causalvq", "ct-vae", "vq-vae", "causal-representation-learning"],
               repo_url="https://github.com/causalvq/causalvq", paper_url="https://arxiv.org/abs/2302.00869",
               coders={ModelConfig: (lambda c: c.to_dict(), ModelConfig.from_dict)}):
    """CT-VAE (Gendron, Witbrock & Dobbie, IJCAI 2023), built from one ``ModelConfig``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"CausalVQ needs a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config.in_channels, config.hidden_dims, config.num_residual, config.embedding_dim,
                               patch=config.patch_codes)
        self.quantizer = MultiCodebookQuantizer(config.num_codebooks, config.codebook_size, config.code_dim,
                                                config.beta, overlapping=config.overlapping_slices)
        self.decoder = Decoder(config.in_channels, config.hidden_dims, config.num_residual, config.embedding_dim)
        self.transition = CausalTransition(config)

    # --- names and shapes ---
    @property
    def action_names(self) -> tuple[str, ...]:
        return self.config.action_names

    @property
    def num_actions(self) -> int:
        return self.config.num_actions

    def _check_images(self, x: torch.Tensor, name: str = "x") -> None:
        c, s = self.config.in_channels, self.config.image_size
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor (b, {c}, {s}, {s}) in [0, 1]")
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"{name} must have shape (b, {c}, {s}, {s}), got {tuple(x.shape)}")

    def _check_actions(self, action: torch.Tensor, batch: int) -> torch.Tensor:
        action = torch.as_tensor(action, device=self.device).long().reshape(-1)
        if action.numel() == 1 and batch > 1:
            action = action.expand(batch)
        if action.shape != (batch,):
            raise ValueError(f"action must have shape ({batch},), got {tuple(action.shape)}")
        if action.numel() and (action.min() < 0 or action.max() >= self.num_actions):
            raise ValueError(f"actions must lie in [0, {self.num_actions}), got {action.tolist()}")
        return action

    @property
    def device(self) -> torch.device:
        return self.quantizer.codebooks.device

    def flatten_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """`(b, k, h, w)` → `(b, n)`, node i = k·h·w + y·w + x."""
        return rearrange(codes, "b k h w -> b (k h w)")

    def unflatten_codes(self, nodes: torch.Tensor) -> torch.Tensor:
        """`(b, n)` → `(b, k, h, w)`."""
        g = self.config.grid_size
        return rearrange(nodes, "b (k h w) -> b k h w", h=g, w=g)

    # --- code level ---
    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Code indices of images: `(b, c, S, S)` → long `(b, k, h, w)`."""
        self._check_images(x)
        return self.quantizer.indices(self.encoder(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Images of code indices: long `(b, k, h, w)` → `(b, c, S, S)` in [0, 1]."""
        return self.decoder(self.quantizer.lookup(codes))

    def transition_codes(self, codes: torch.Tensor, action: torch.Tensor | None, sample: bool = False) -> Transition:
        """Apply one action (or none) to code grids: the argmax codes, the distribution and the mask."""
        nodes = self.flatten_codes(codes)
        if action is not None:
            action = self._check_actions(action, nodes.shape[0])
        out = self.transition(nodes, action, sample=sample)
        return Transition(codes=self.unflatten_codes(out.probs.argmax(-1)), probs=out.probs, mask=out.mask > 0.5,
                          graph=out.graph > 0.5)

    def intervention_probs(self, codes: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Probability that ``action`` intervenes on each node: `(b, k, h, w)` codes → `(b, n)`."""
        nodes = self.flatten_codes(codes)
        action = self._check_actions(action, nodes.shape[0])
        return self.transition.intervention_probs(self.transition.node_features(nodes).onehot, action)

    def do(self, codes: torch.Tensor, node: int, code: int) -> DoResult:
        """Hard intervention do(node = code), then one no-action pass of the learned graph.

        The intervened node keeps its new code; every other node is predicted by the no-action head from the
        edited grid, so the change propagates along the learned edges.
        """
        n, v = self.config.num_nodes, self.config.codebook_size
        if not 0 <= node < n:
            raise ValueError(f"node must lie in [0, {n}), got {node}")
        if not 0 <= code < v:
            raise ValueError(f"code must lie in [0, {v}), got {code}")
        nodes = self.flatten_codes(codes).clone()
        nodes[:, node] = code
        out = self.transition(nodes, None, sample=False)
        new = out.probs.argmax(-1)
        new[:, node] = code
        return DoResult(codes=self.unflatten_codes(new), changed=new != self.flatten_codes(codes))

    @torch.no_grad()
    def causal_graph(self, action: int | None = None, codes: torch.Tensor | None = None) -> Graph:
        """The learned graph for no action or ``action``, from the transition's own edge function (``edges``,
        the one its forward pass uses), deterministic (no dropout, thresholds at 0.5) and averaged over code
        grids.

        Without ``codes`` the average runs over every node taking each of its codes in turn (codebook entry j
        everywhere, j = 0..N−1); with ``codes`` `(b, k, h, w)` over those grids.
        """
        if codes is None:
            v = self.config.codebook_size
            codes = torch.arange(v, device=self.device)[:, None].expand(v, self.config.num_nodes)
            codes = self.unflatten_codes(codes)
        nodes = self.flatten_codes(codes)
        act = None if action is None else self._check_actions(torch.tensor([action]), 1).expand(nodes.shape[0])
        was_training = self.training
        self.eval()
        try:
            edges = self.transition.edges(self.transition.node_features(nodes), act, sample=False)
        finally:
            self.train(was_training)
        return Graph(adjacency=edges.probs.mean(0), mask=edges.mask.mean(0))

    # --- image level ---
    def reconstruct(self, x: torch.Tensor) -> Reconstruction:
        """Encode, quantize and decode (the codes go straight to the decoder)."""
        codes = self.encode_codes(x)
        return Reconstruction(image=self.decode_codes(codes), codes=codes)

    def intervene(self, x: torch.Tensor, action: torch.Tensor | int, steps: int = 1,
                  sample: bool = False) -> Intervention:
        """Apply ``action`` to images ``steps`` times in code space and decode the result."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        before = self.encode_codes(x)
        action = self._check_actions(action, x.shape[0])
        codes, touched = before, torch.zeros(x.shape[0], self.config.num_nodes, dtype=torch.bool, device=x.device)
        for _ in range(steps):
            t = self.transition_codes(codes, action, sample=sample)
            codes, touched = t.codes, touched | t.mask
        return Intervention(image=self.decode_codes(codes), codes_before=before, codes_after=codes, mask=touched,
                            steps=steps)

    def retrieve_action(self, x: torch.Tensor, y: torch.Tensor, sample: bool = False) -> Retrieval:
        """Which action turns x into y: p(a | x, y) over the A actions, all scored in one batched pass."""
        self._check_images(y, "y")
        return self.retrieve_action_codes(self.encode_codes(x), self.encode_codes(y), sample=sample)

    def retrieve_action_codes(self, codes_x: torch.Tensor, codes_y: torch.Tensor, sample: bool = False) -> Retrieval:
        """``retrieve_action`` on code grids `(b, k, h, w)`."""
        scores = self._action_scores(self.flatten_codes(codes_x), self.flatten_codes(codes_y), sample)
        return Retrieval(probs=(-scores).softmax(-1), action=scores.argmin(-1), scores=scores)

    def _action_scores(self, nodes_x: torch.Tensor, nodes_y: torch.Tensor, sample: bool) -> torch.Tensor:
        """Distance `(b, a)` of every action, the A passes batched into one (b·A copies).

        In eval mode the node features and the no-action graph of a pair are computed once for its A copies
        (exact: without dropout they are the same); in training every copy draws its own dropout, as the
        official A separate passes do.
        """
        b, a = nodes_x.shape[0], self.num_actions
        actions = torch.arange(a, device=nodes_x.device).repeat(b)  # (b·a,)
        if self.transition.training:
            out = self.transition(repeat(nodes_x, "b n -> (b a) n", a=a), actions, sample=sample)
        else:
            out = self.transition(nodes_x, actions, sample=sample, copies=a)
        probs = rearrange(out.probs, "(b a) n v -> b a n v", a=a)
        return losses.retrieval_distance(probs, nodes_y, self.config.retrieval_score, self.config.renormalised_ce)

    # --- training objectives ---
    def image_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.quantizer.parameters(), *self.decoder.parameters()]

    def transition_parameters(self) -> list[nn.Parameter]:
        return list(self.transition.parameters())

    def image_losses(self, x: torch.Tensor) -> ImageLosses:
        """Stage 1: MSE(decode(quantize(encode(x))), x) + VQ loss."""
        self._check_images(x)
        q = self.quantizer(self.encoder(x))
        recon = losses.reconstruction_mse(self.decoder(q.quantized), x)
        return ImageLosses(loss=recon + q.loss, recon=recon, vq=q.loss, perplexity=q.perplexity.mean(),
                           usage=q.usage.mean())

    def base_losses(self, codes_x: torch.Tensor) -> TransitionLosses:
        """Stage 2, no action: γ·[CE(ŷ, c^x) + α·(CE(ŷ^I, c^x) + MSE(Gr, I)) + κ₀·E[in-degree]] (κ₀: B31, 0 in the
        official loss; not scaled by B25's schedule, and ``transition_losses`` prices the same discoverer's edges
        into the nodes an action keeps)."""
        cfg, nodes = self.config, self.flatten_codes(codes_x)
        # official_dropout_draws: both passes see one draw of P, as in the official code; else each draws its own
        features = self.transition.node_features(nodes) if cfg.official_dropout_draws else None
        out = self.transition(nodes, None, sample=True, nodes=features)
        ident = self.transition(nodes, None, sample=True, identity_graph=True, nodes=features)
        r = cfg.renormalised_ce
        ce = losses.code_cross_entropy(out.probs, nodes, r)
        reg = cfg.alpha * (losses.code_cross_entropy(ident.probs, nodes, r) + losses.identity_graph_mse(out.graph))
        if cfg.base_edge_weight > 0:  # B31: a price per expected edge of the no-action graph
            reg = reg + cfg.base_edge_weight * losses.expected_in_degree(out.edge_probs)
        return TransitionLosses(loss=cfg.gamma * (ce + reg), ce=ce, regularizer=reg, accuracy=_accuracy(out, nodes),
                                **_structure_log(out))

    def transition_losses(self, codes_x: torch.Tensor, codes_y: torch.Tensor, action: torch.Tensor,
                          structure: float = 1.0) -> TransitionLosses:
        """Stage 2, action: γ·[CE(ŷ, c^y) + β_ct·KL + s·δ·‖Gr‖_F + ε·‖v‖₂ + μ·BCE(p, c^x ≠ c^y) + s·κ·E[in-degree]
        + κ₀·E[in-degree of the kept nodes] + ν·CE(ŷ^a, c^y)] (μ: B21, κ: B23, κ₀: B31, ν: B29; all 0 in the
        official loss). ŷ^a is the head "intervened by a" alone, on every node: what the node would become were the
        action to intervene on it. κ₀ prices the no-action discoverer's edges, which the blended graph keeps where
        the mask is 0; the intervened nodes' rewired in-edges are left to κ.

        With ``change_weight`` λ > 0 the CE inside the loss weights the nodes that change by 1 + λ (B20); ``ce``
        still reports the plain mean CE. ``structure`` s scales the two prices of edges, δ and κ (B25: the trainer's
        schedule, ``Stage2Recipe.structure_scale``; 1 is the loss as written).
        """
        cfg = self.config
        nodes_x, nodes_y = self.flatten_codes(codes_x), self.flatten_codes(codes_y)
        action = self._check_actions(action, nodes_x.shape[0])
        out = self.transition(nodes_x, action, sample=True)
        ce = losses.code_cross_entropy(out.probs, nodes_y, cfg.renormalised_ce)
        fit = ce if cfg.change_weight == 0 else losses.change_weighted_cross_entropy(out.probs, nodes_y, nodes_x,
                                                                                     cfg.change_weight,
                                                                                     cfg.renormalised_ce)
        reg = (cfg.c_beta * losses.kl_to_noise(out.edge_probs) + structure * cfg.delta * losses.graph_size(out.graph)
               + cfg.epsilon * losses.empty_row_penalty(out.edge_probs))
        if cfg.mask_weight > 0:  # B21: the mask learns which nodes the step changes
            reg = reg + cfg.mask_weight * losses.mask_supervision(out.mask_probs, nodes_x, nodes_y)
        if cfg.edge_weight > 0 and structure > 0:  # B23: a price per expected edge; B26: above a free budget
            edges = (losses.in_degree_above(out.edge_probs, cfg.edge_budget) if cfg.edge_budget > 0
                     else losses.expected_in_degree(out.edge_probs))
            reg = reg + structure * cfg.edge_weight * edges
        if cfg.base_edge_weight > 0:  # B31: the no-action discoverer's edges into the nodes the action keeps
            kept = out.edge_probs * (1 - self.transition.rewired(out.mask.detach()))  # C on the columns m = 0
            reg = reg + cfg.base_edge_weight * losses.expected_in_degree(kept)
        if cfg.intervened_weight > 0:  # B29: the intervened head also learns the nodes the step keeps
            # B29b: from a pass over the identity graph, so no edge is paid for by this term
            head = self.transition.intervened_alone(nodes_x, action) if cfg.intervened_own_graph \
                else out.head_logits[:, :, 1]
            intervened = head.softmax(-1)  # (b, n, v)
            reg = reg + cfg.intervened_weight * losses.code_cross_entropy(intervened, nodes_y, cfg.renormalised_ce)
        return TransitionLosses(loss=cfg.gamma * (fit + reg), ce=ce, regularizer=reg,
                                accuracy=_accuracy(out, nodes_y), **_structure_log(out))

    def retrieval_losses(self, codes_x: torch.Tensor, codes_y: torch.Tensor, action: torch.Tensor) -> RetrievalLosses:
        """Stage 2, retrieval: −log p(a* | x, y) over all A actions (weight 1; regularisers discarded)."""
        nodes_x, nodes_y = self.flatten_codes(codes_x), self.flatten_codes(codes_y)
        action = self._check_actions(action, nodes_x.shape[0])
        scores = self._action_scores(nodes_x, nodes_y, sample=True)
        return RetrievalLosses(loss=losses.retrieval_nll(scores, action),
                               accuracy=(scores.argmin(-1) == action).float().mean())

    # --- checkpoints (files: causalvq.checkpoint) ---
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> CausalVQ:
        """Load a checkpoint folder or a Hub repo id (``config.json`` + ``model.safetensors``, strict).

        A local folder is read directly, with errors that name the missing file, the bad config field or the
        mismatching tensor; a repo id goes through the Hub cache (``HF_HUB_OFFLINE=1`` resolves it offline).
        """
        path = Path(pretrained_model_name_or_path)
        if path.is_dir():
            if kwargs.keys() - {"map_location"}:
                raise TypeError(f"unexpected argument(s) for a local checkpoint: {sorted(kwargs)}")
            return checkpoint.load_model(cls, checkpoint.read_config(path), path / checkpoint.WEIGHTS_NAME,
                                         kwargs.get("map_location", "cpu"))
        if not checkpoint.REPO_ID.match(str(pretrained_model_name_or_path)):
            raise FileNotFoundError(f"no checkpoint folder at {str(pretrained_model_name_or_path)!r}")
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except LocalEntryNotFoundError as err:  # offline or unreachable, and not in the cache
            offline = " (HF_HUB_OFFLINE is set)" if huggingface_hub.constants.HF_HUB_OFFLINE else ""
            raise FileNotFoundError(f"checkpoint {str(pretrained_model_name_or_path)!r} is not in the local Hub "
                                    f"cache and the Hub cannot be reached{offline}") from err

    def _save_pretrained(self, save_directory: Path) -> None:
        checkpoint.save_weights(self, save_directory)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                         local_files_only: bool, token, config: ModelConfig | None = None,
                         map_location: str = "cpu", **kwargs) -> CausalVQ:
        if kwargs:
            raise TypeError(f"unexpected argument(s) to from_pretrained: {', '.join(sorted(kwargs))}")
        weights = hf_hub_download(model_id, checkpoint.WEIGHTS_NAME, revision=revision, cache_dir=cache_dir,
                                  force_download=force_download, local_files_only=local_files_only, token=token)
        if config is None:
            raise FileNotFoundError(f"checkpoint {model_id!r} has no {checkpoint.CONFIG_NAME}")
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        return checkpoint.load_model(cls, config, weights, map_location)


def _accuracy(out: TransitionOutput, target: torch.Tensor) -> torch.Tensor:
    return (out.probs.argmax(-1) == target).float().mean()


def _structure_log(out: TransitionOutput) -> dict[str, torch.Tensor]:
    """What the training log follows of a pass's structure: its mean mask size and expected in-degree (detached)."""
    with torch.no_grad():
        return {"mask_size": out.mask.sum(-1).float().mean(), "in_degree": losses.expected_in_degree(out.edge_probs)}
