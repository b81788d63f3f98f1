"""causalvq: CT-VAE — causal interventions on the codes of a multi-codebook VQ-VAE."""

from causalvq.config import ModelConfig, action_names

__all__ = ["ModelConfig", "action_names"]
__version__ = "0.1.0"
