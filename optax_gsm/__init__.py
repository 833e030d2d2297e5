"""optax_gsm: Global Sparse Momentum SGD (Ding et al., NeurIPS 2019) for Optax.

Prune while training: add `gsm` to an Optax chain, train, then `prune`.
"""

from importlib.metadata import PackageNotFoundError, version

from optax_gsm._batch_stats import recalibrate_batch_stats
from optax_gsm._bcoo import to_bcoo
from optax_gsm._compression_ratio import compression_schedule, num_active
from optax_gsm._csgd import (
  CentripetalState,
  Clusters,
  cluster_channels,
  cluster_spread,
  csgd,
  csgd_sgd,
  merge_clusters,
)
from optax_gsm._fine_tuning import keep_mask
from optax_gsm._groups import (
  Block,
  ChannelGroup,
  Groups,
  Member,
  StructureMask,
  mask_structures,
)
from optax_gsm._gsm import GSMState, StructuredGSMState, gsm, gsm_sgd
from optax_gsm._lasso import (
    LassoLayer,
    LassoReport,
    lasso_channel_prune,
    lasso_prunable,
)
from optax_gsm._lossless import LosslessSettings, lossless_settings
from optax_gsm._optimizer_state import active_mask
from optax_gsm._path_sgd import (
  path_kappa,
  path_sgd,
  scale_by_path_norm,
)
from optax_gsm._prunable import default_prunable
from optax_gsm._pruning import magnitude_mask, prunable_size, prune
from optax_gsm._readiness import LeafReadiness, PruneReadiness, prune_readiness
from optax_gsm._report import LeafSparsity, SparsityReport, sparsity_report
from optax_gsm._saliency import magnitude_saliency, taylor_saliency
from optax_gsm._selection import Selection, kth_largest, select_top, top_q_mask
from optax_gsm._shrink import kept_structures, shrink
from optax_gsm._sparse_storage import load_sparse, save_sparse
from optax_gsm._structured import (
  prune_structures,
  structure_cost,
  structure_costs,
)
from optax_gsm._tracing import channel_groups
from optax_gsm._trp import (
  LowRankFactors,
  LowRankProjectionState,
  NuclearNormState,
  low_rank_decompose,
  low_rank_project,
  low_rank_projection,
  nuclear_norm,
)

try:
  __version__ = version("optax_gsm")
except PackageNotFoundError:  # a source tree that was never installed
  __version__ = "0+unknown"

__all__ = (
    "Block",
    "CentripetalState",
    "ChannelGroup",
    "Clusters",
    "GSMState",
    "Groups",
    "LassoLayer",
    "LassoReport",
    "LeafReadiness",
    "LeafSparsity",
    "LosslessSettings",
    "LowRankFactors",
    "LowRankProjectionState",
    "Member",
    "NuclearNormState",
    "PruneReadiness",
    "Selection",
    "SparsityReport",
    "StructureMask",
    "StructuredGSMState",
    "active_mask",
    "channel_groups",
    "cluster_channels",
    "cluster_spread",
    "compression_schedule",
    "csgd",
    "csgd_sgd",
    "default_prunable",
    "gsm",
    "gsm_sgd",
    "keep_mask",
    "kept_structures",
    "kth_largest",
    "lasso_channel_prune",
    "lasso_prunable",
    "load_sparse",
    "lossless_settings",
    "low_rank_decompose",
    "low_rank_project",
    "low_rank_projection",
    "magnitude_mask",
    "magnitude_saliency",
    "mask_structures",
    "merge_clusters",
    "nuclear_norm",
    "num_active",
    "path_kappa",
    "path_sgd",
    "prunable_size",
    "prune",
    "prune_readiness",
    "prune_structures",
    "recalibrate_batch_stats",
    "save_sparse",
    "scale_by_path_norm",
    "select_top",
    "shrink",
    "sparsity_report",
    "structure_cost",
    "structure_costs",
    "taylor_saliency",
    "to_bcoo",
    "top_q_mask",
)
