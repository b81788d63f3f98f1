"""ModelConfig: every size, coefficient and fidelity switch of a CausalVQ model, in one frozen dataclass.

A model is built from one config and a checkpoint stores it as ``config.json``; unknown keys and ill-typed
values are refused (``ModelConfig.from_dict``), so a typo fails loudly instead of being ignored.

Symbols follow the paper reference (shared/paper.md §3): K codebooks of N codes of dimension d = D / K over an
h × w grid give L = K·h·w causal nodes; F factors give A = 2F actions.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

SHAPES3D_FACTORS: tuple[str, ...] = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
SHAPES3D_SIZES: tuple[int, ...] = (10, 10, 10, 8, 4, 15)
# Sanity bounds: a config.json with absurd sizes fails here, naming the field, instead of exhausting memory.
MAX_SIZE = 1 << 16  # any width, size or layer count
MAX_NODES = 1 << 12  # L; the transition layer holds (b, L, L) graphs


def action_names(factor_names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Readable action names: index ``f`` is ``"<factor f> +"``, index ``F + f`` is ``"<factor f> -"``."""
    return tuple(f"{n} +" for n in factor_names) + tuple(f"{n} -" for n in factor_names)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes, loss coefficients and fidelity switches of a CausalVQ model (defaults: the small CPU model)."""

    # --- image model (MCQ-VAE) ---
    in_channels: int = 3  # image channels C
    image_size: int = 32  # image side S; images are (b, C, S, S) floats in [0, 1]
    hidden_dims: tuple[int, ...] = (32, 64)  # widths of the stride-2 convolutions; grid side h = S / 2**len
    num_residual: int = 2  # residual layers in the encoder and in the decoder (paper: 6)
    embedding_dim: int = 32  # D, encoder output channels, split into K blocks of d = D / K
    num_codebooks: int = 1  # K
    codebook_size: int = 64  # N, codes per codebook; also the node-feature size of the transition layer
    beta: float = 0.25  # β_vq, commitment weight of the VQ loss
    # --- factors and actions ---
    factor_names: tuple[str, ...] = SHAPES3D_FACTORS  # F names; actions are "<name> +" and "<name> -"
    factor_sizes: tuple[int, ...] = SHAPES3D_SIZES  # values per factor (used by the app's sliders)
    # --- causal-transition layer ---
    discoverer_width: int = 64  # M, hidden width of each graph discoverer MLP
    graph_width: int = 16  # G, GATv2 hidden width per head
    positional_dropout: float = 0.1  # dropout on the positional encoding (paper: 0.1)
    gamma: float = 1.5  # γ, weight of the transition loss
    alpha: float = 0.01  # α, identity term of the base-mode transition loss
    c_beta: float = 0.4  # β_ct, KL regulariser of the edge probabilities
    delta: float = 0.01  # δ, graph-size (Frobenius norm) regulariser
    epsilon: float = 0.1  # ε, non-empty-row regulariser
    change_weight: float = 0.0  # B20: extra weight λ of the action-mode CE on the nodes whose code changes from x
    #                             to y (weights 1 + λ, normalised); 0 is the official plain mean over nodes
    mask_weight: float = 0.0  # B21: weight μ of the action-mode mask loss BCE(p_i, [c^x_i ≠ c^y_i]), which
    #                           teaches the mask the nodes a step changes; 0 is the official (no such term)
    edge_weight: float = 0.0  # B23: weight κ of the expected in-degree of the action-mode graph, mean_i Σ_j C_ji (a
    #                           constant price per edge, unlike δ's Frobenius norm); 0 is the official (no such term)
    base_edge_weight: float = 0.0  # B31: weight κ₀ of the expected in-edges the no-action discoverer gives: of the
    #                                no-action graph in the base-mode loss, and of the nodes an action keeps (mask
    #                                0) in the action-mode loss, from the first step (B25 does not delay it); the
    #                                intervened nodes' rewired in-edges are left to κ; 0 is the official
    edge_budget: float = 0.0  # B26: with κ > 0, each node's first ``edge_budget`` expected in-edges are free and κ
    #                           prices only the ones above, κ·mean_i max(0, Σ_j C_ji − budget); 0 prices every edge
    mask_hidden: int = 0  # B22: hidden width of a mask network p(a, PE_i)[c_i] with one hidden layer, so the
    #                       action and the position interact; 0 is the official single linear layer
    mask_context: int = 0  # B24: the mask's hidden layer also sees the codes of the (2r + 1)² grid cells around
    #                        the node (r = mask_context), so "is this cell on the object's outline" can be said;
    #                        needs mask_hidden > 0; 0 is the official (the node's own code only)
    intervention_context: int = 0  # B28: the intervened head "by action a" also reads the codes of the (2r + 1)²
    #                                grid cells around its node (r = intervention_context) through a small
    #                                convolutional network, so a step of the object's outline can say where the
    #                                object is; 0 is the official (the node's features and its in-edges only)
    intervention_hidden: int = 64  # B28: hidden width of that network
    intervened_weight: float = 0.0  # B29: weight ν of the action-mode CE of the head "intervened by a" alone against
    #                                 c^y on every node, so it also learns what a node the step leaves keeps; 0 is
    #                                 the official (the head learns only where the sampled mask picks it)
    intervened_own_graph: bool = False  # B29b: ν's CE reads the head of a second pass over the identity graph
    #                                     (each node sees itself, the action node and its B28 context), so the term
    #                                     trains the head without rewarding edges; False reads the loss's own pass
    patch_codes: bool = False  # B30: each code reads its own patch of pixels only (2×2 stride-2 convolutions, 1×1
    #                            layers on the grid), so a step changes the codes of the cells whose pixels change;
    #                            False is the official encoder (4×4 convolutions and 3×3 layers on the grid: at 64 px
    #                            each code reads the whole image)
    # --- fidelity switches (docs/fidelity.md); the official behaviour is one flag away ---
    overlapping_slices: bool = False  # B1: official codebook k reads channels k..k+d-1 (overlapping)
    intervention_edges: Literal["incoming", "outgoing"] = "incoming"  # B3: official is "outgoing"
    action_node: bool = True  # B2: an action node sends to the intervened nodes; official: a sink (False)
    dropout_on_codes: bool = False  # B8: official drops out one-hot codes too, not only the encoding
    retrieval_score: Literal["sum", "mean"] = "mean"  # B6b: node CE averaged over nodes (official); "sum" opt-in
    graph_residual: bool = True  # B17: GATv2 layers add a root projection of the node itself; official: none
    unit_positional: bool = True  # B18: each node's positional encoding has norm 1, like its one-hot code;
    #                               official: the raw sinusoidal encoding, norm √(N/2), which drowns the code
    renormalised_ce: bool = False  # the official code CE, F.cross_entropy(log(clamp(ŷ, 1e-4)), c), renormalises
    #                                after the clamp (True); False: −log clamp(ŷ_c), up to 6.3e-3 nats lower per node
    separate_clamps: bool = False  # the official hard samples clamp p and 1 − p separately, so a saturated
    #                                probability keeps a straight-through gradient (True); False clamps p to
    #                                [1e-4, 1 − 1e-4], which gives it none
    official_dropout_draws: bool = False  # the official code draws the mask's positional dropout per sample and
    #                                       shares one draw of P between the base-mode main and identity passes
    #                                       (True); False draws the mask's once per batch (shared by a
    #                                       retrieval's copies) and each base-mode pass its own
    gated_attention: bool = True  # B19: the sampled graph gates the attention, so the straight-through gradient
    #                               reaches edges that were not drawn; official: the graph only lists the edges,
    #                               and an edge that was not drawn gets no gradient from the transition loss

    # --- derived sizes ---
    @property
    def grid_size(self) -> int:
        """Side h = w of the latent grid."""
        return self.image_size // 2 ** len(self.hidden_dims)

    @property
    def code_dim(self) -> int:
        """d = D / K, channels per codebook."""
        return self.embedding_dim // self.num_codebooks

    @property
    def num_nodes(self) -> int:
        """L = K·h·w, nodes of the causal graph."""
        return self.num_codebooks * self.grid_size**2

    @property
    def num_factors(self) -> int:
        return len(self.factor_names)

    @property
    def num_actions(self) -> int:
        """A = 2F: one step up or down on each factor."""
        return 2 * self.num_factors

    @property
    def action_names(self) -> tuple[str, ...]:
        return action_names(self.factor_names)

    def __post_init__(self) -> None:
        _check_types(self)  # JSON gives lists where tuples are declared: they become tuples
        positive = ("in_channels", "image_size", "num_residual", "embedding_dim", "num_codebooks",
                    "codebook_size", "discoverer_width", "graph_width")
        for name in positive:
            if not 0 < getattr(self, name) <= MAX_SIZE:
                raise ValueError(f"ModelConfig.{name} must be in [1, {MAX_SIZE}], got {getattr(self, name)}")
        if not self.hidden_dims or any(not 0 < h <= MAX_SIZE for h in self.hidden_dims):
            raise ValueError(f"ModelConfig.hidden_dims must be non-empty widths in [1, {MAX_SIZE}], "
                             f"got {self.hidden_dims}")
        if self.image_size % 2 ** len(self.hidden_dims):
            raise ValueError(f"ModelConfig.image_size={self.image_size} is not divisible by "
                             f"2**len(hidden_dims)={2 ** len(self.hidden_dims)}")
        if self.embedding_dim % self.num_codebooks:
            raise ValueError(f"ModelConfig.embedding_dim={self.embedding_dim} is not divisible by "
                             f"num_codebooks={self.num_codebooks}")
        if self.num_nodes > MAX_NODES:
            raise ValueError(f"ModelConfig gives {self.num_nodes} nodes (num_codebooks · grid_size²), more than "
                             f"{MAX_NODES}")
        if self.codebook_size % 2:
            raise ValueError(f"ModelConfig.codebook_size={self.codebook_size} must be even "
                             "(it is the width of the sinusoidal positional encoding)")
        if not self.factor_names:
            raise ValueError("ModelConfig.factor_names must name at least one factor")
        if len(self.factor_sizes) != len(self.factor_names):
            raise ValueError(f"ModelConfig.factor_sizes has {len(self.factor_sizes)} entries for "
                             f"{len(self.factor_names)} factor_names")
        if any(s < 2 for s in self.factor_sizes):
            raise ValueError(f"ModelConfig.factor_sizes must all be >= 2, got {self.factor_sizes}")
        if len(set(self.factor_names)) != len(self.factor_names):
            raise ValueError(f"ModelConfig.factor_names has duplicates: {self.factor_names}")
        if not 0.0 <= self.positional_dropout < 1.0:
            raise ValueError(f"ModelConfig.positional_dropout must be in [0, 1), got {self.positional_dropout}")
        if not 0 <= self.mask_hidden <= MAX_SIZE:
            raise ValueError(f"ModelConfig.mask_hidden must be in [0, {MAX_SIZE}], got {self.mask_hidden}")
        if not 0 <= self.mask_context < self.grid_size:
            raise ValueError(f"ModelConfig.mask_context must be in [0, {self.grid_size - 1}] (the grid side is "
                             f"{self.grid_size}), got {self.mask_context}")
        if self.mask_context and not self.mask_hidden:
            raise ValueError("ModelConfig.mask_context needs a hidden mask layer: set mask_hidden > 0 too")
        if not 0 <= self.intervention_context < self.grid_size:
            raise ValueError(f"ModelConfig.intervention_context must be in [0, {self.grid_size - 1}] (the grid side "
                             f"is {self.grid_size}), got {self.intervention_context}")
        if not 0 < self.intervention_hidden <= MAX_SIZE:
            raise ValueError(f"ModelConfig.intervention_hidden must be in [1, {MAX_SIZE}], "
                             f"got {self.intervention_hidden}")
        for name in ("beta", "gamma", "alpha", "c_beta", "delta", "epsilon", "change_weight", "mask_weight",
                     "edge_weight", "base_edge_weight", "edge_budget", "intervened_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"ModelConfig.{name} must be a finite non-negative number, got {value}")
        if self.intervention_edges not in ("incoming", "outgoing"):
            raise ValueError("ModelConfig.intervention_edges must be 'incoming' or 'outgoing', "
                             f"got {self.intervention_edges!r}")
        if self.retrieval_score not in ("sum", "mean"):
            raise ValueError(f"ModelConfig.retrieval_score must be 'sum' or 'mean', got {self.retrieval_score!r}")

    # --- (de)serialisation ---
    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config from a dict (e.g. ``config.json``); unknown keys raise ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"a model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)  # str: a Python dict may have non-string keys
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # --- presets ---
    @classmethod
    def paper_shapes3d(cls) -> ModelConfig:
        """The official final Shapes3D configuration (configs/ct_mcq_vae.yaml), faithful switches on."""
        return cls(image_size=64, hidden_dims=(64, 128, 256), num_residual=6, embedding_dim=128,
                   num_codebooks=1, codebook_size=64, beta=0.1, discoverer_width=800, graph_width=100,
                   overlapping_slices=True, intervention_edges="outgoing", action_node=False,
                   dropout_on_codes=True, retrieval_score="mean", graph_residual=False, unit_positional=False,
                   gated_attention=False, renormalised_ce=True, separate_clamps=True, official_dropout_draws=True)

    @classmethod
    def small(cls, **changes: Any) -> ModelConfig:
        """The small CPU configuration (32-px images, 8×8 grid, 64 codes)."""
        return cls(**changes)

    @classmethod
    def tiny(cls, **changes: Any) -> ModelConfig:
        """A seconds-fast configuration for tests: 16-px images, 4×4 grid, 2 codebooks of 8 codes."""
        base = dict(image_size=16, hidden_dims=(8, 16), num_residual=1, embedding_dim=8, num_codebooks=2,
                    codebook_size=8, factor_names=("a", "b", "c"), factor_sizes=(3, 4, 5),
                    discoverer_width=8, graph_width=4)
        base.update(changes)
        return cls(**base)



def _check_types(config: ModelConfig) -> None:
    """Reject ill-typed fields (e.g. a string where an int belongs), naming the field; store the typed values."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        try:
            object.__setattr__(config, f.name, check_type(getattr(config, f.name), hints[f.name]))
        except TypeError as err:
            raise ValueError(f"ModelConfig.{f.name} has an ill-typed value: it {err}") from None


def check_type(value: Any, hint: Any) -> Any:
    """``value`` as the annotation ``hint`` declares it, for configs read from JSON or TOML.

    An int where a float belongs becomes a float, a list where ``tuple[X, ...]`` belongs a tuple (its items checked
    the same way); a bool is never a number; a ``Literal`` takes only its values; ``Any`` takes anything. The
    model config and the training recipes check their fields with it and name the field in their errors.

    Raises:
        TypeError: ``"must be <type>, got <value> (<its type>)"``, for the caller to prefix with the field's name.
    """
    ok, typed = _typed(value, hint)
    if not ok:
        raise TypeError(f"must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    return typed


def _typed(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(whether value fits hint, value converted to it)``."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [_typed(v, item) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if origin is Literal:
        return value in typing.get_args(hint), value
    if hint is int or hint is float:
        number = isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
        if hint is int or not number:
            return number, value
        try:
            return True, float(value)
        except OverflowError:  # an int beyond float range (JSON and TOML integers are unbounded)
            return False, value
    if hint in (bool, str, dict) or origin is dict:
        return isinstance(value, origin or hint), value
    return True, value


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return "list of numbers" if item is float else f"list of {item.__name__}"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return getattr(origin or hint, "__name__", str(hint))
