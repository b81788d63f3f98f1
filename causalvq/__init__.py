"""causalvq: CT-VAE — causal interventions on the codes of a multi-codebook VQ-VAE."""

from causalvq.config import ModelConfig, action_names
from causalvq.model import CausalVQ

__all__ = ["CausalVQ", "ModelConfig", "action_names"]
__version__ = "0.1.0"
