"""Evaluation metrics (paper §10): disentanglement scores of a representation against ground-truth factors."""

from causalvq.metrics.dci import DCIResult, completeness_score, dci, dci_importance, disentanglement_score
from causalvq.metrics.disentanglement import (
    SIZE_PRESETS,
    DisentanglementSizes,
    discrete_mutual_info,
    evaluate_representation,
    histogram_discretize,
    mig,
    noise_baseline,
    noise_representation,
    sap,
    sap_score_matrix,
    unrelated_baseline,
    unrelated_representation,
)
from causalvq.metrics.factor_vae import FactorVAEResult, factor_vae, factor_vae_core, factor_vae_votes, prune_dims

__all__ = [
    "SIZE_PRESETS",
    "DCIResult",
    "DisentanglementSizes",
    "FactorVAEResult",
    "completeness_score",
    "dci",
    "dci_importance",
    "discrete_mutual_info",
    "disentanglement_score",
    "evaluate_representation",
    "factor_vae",
    "factor_vae_core",
    "factor_vae_votes",
    "histogram_discretize",
    "mig",
    "noise_baseline",
    "noise_representation",
    "prune_dims",
    "sap",
    "sap_score_matrix",
    "unrelated_baseline",
    "unrelated_representation",
]
