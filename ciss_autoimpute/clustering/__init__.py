"""Missingness-pattern clustering.

Rows are grouped by *which* cells are missing, so a CISS-VAE can give each group
its own layers. :func:`cluster_missingness` finds the groups (Leiden on a
smoothed-Jaccard neighbour graph of the distinct patterns, or KMeans), falls back
to fewer clusters or one pooled cluster when the structure is not there, and
returns a :class:`MissingnessAssigner` that labels new rows. This module knows
nothing about models or tuning.
"""

from __future__ import annotations

from ._validation import validate_labels
from .assigner import MissingnessAssigner
from .cluster import ClusteringResult, cluster_missingness, default_min_cluster_size, user_clustering
from .silhouette import silhouette

__all__ = [
    "ClusteringResult",
    "MissingnessAssigner",
    "cluster_missingness",
    "default_min_cluster_size",
    "silhouette",
    "user_clustering",
    "validate_labels",
]
