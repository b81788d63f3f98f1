"""Evaluation metrics (paper §10): disentanglement scores of a representation against ground-truth factors."""

from causalvq.metrics.disentanglement import (
    DCIResult,
    FactorVAEResult,
    completeness_score,
    dci,
    dci_importance,
    discrete_mutual_info,
    disentanglement_score,
    evaluate_representation,
    factor_vae,
    factor_vae_core,
    factor_vae_votes,
    histogram_discretize,
    mig,
    prune_dims,
    sap,
    sap_score_matrix,
)

__all__ = [
    "DCIResult",
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
    "prune_dims",
    "sap",
    "sap_score_matrix",
]
