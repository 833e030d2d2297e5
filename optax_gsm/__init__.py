"""optax_gsm: Global Sparse Momentum SGD (Ding et al., NeurIPS 2019) for Optax.

Prune while training: add `gsm` to an Optax chain, train, then `prune`.
"""

from optax_gsm._compression_ratio import compression_schedule, num_active
from optax_gsm._gsm import GSMState, gsm, gsm_sgd
from optax_gsm._prunable import default_prunable
from optax_gsm._pruning import magnitude_mask, prunable_size, prune
from optax_gsm._report import LeafSparsity, SparsityReport, sparsity_report
from optax_gsm._saliency import magnitude_saliency, taylor_saliency
from optax_gsm._selection import Selection, kth_largest, select_top, top_q_mask

__version__ = "0.1.0"

__all__ = (
    "GSMState",
    "LeafSparsity",
    "Selection",
    "SparsityReport",
    "compression_schedule",
    "default_prunable",
    "gsm",
    "gsm_sgd",
    "kth_largest",
    "magnitude_mask",
    "magnitude_saliency",
    "num_active",
    "prunable_size",
    "prune",
    "select_top",
    "sparsity_report",
    "taylor_saliency",
    "top_q_mask",
)
