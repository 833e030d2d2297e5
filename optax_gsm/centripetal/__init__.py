"""Centripetal SGD (Ding et al., CVPR 2019): merge channels, not prune them.

`cluster_channels` clusters each layer's channels; `centripetal` pulls each
cluster to one point while training; `merge_clusters` folds each cluster
into one channel of a smaller model.
"""

from optax_gsm.centripetal._csgd import (
  CentripetalState,
  Clusters,
  centripetal,
  centripetal_sgd,
  cluster_channels,
  cluster_spread,
  merge_clusters,
)

__all__ = (
    "CentripetalState",
    "Clusters",
    "centripetal",
    "centripetal_sgd",
    "cluster_channels",
    "cluster_spread",
    "merge_clusters",
)
