"""optax_gsm: Global Sparse Momentum SGD (Ding et al., NeurIPS 2019) for Optax.

Prune while training: add `gsm` to an Optax chain, train, then `prune`.

The core (this namespace) is GSM itself: the transformations, the exact
top-Q selection, the final prune and the checks around it. Each further
capability is a subpackage:

- `optax_gsm.structured`: channels and residual blocks found by tracing the
  model, structured GSM, and `shrink` to a smaller model.
- `optax_gsm.centripetal`: Centripetal SGD (C-SGD).
- `optax_gsm.low_rank`: Trained Rank Pruning (TRP).
- `optax_gsm.path_norm`: Path-SGD.
- `optax_gsm.lasso`: LASSO channel pruning with reconstruction.
- `optax_gsm.export`: sparse files and BCOO arrays of a pruned model.
"""

from importlib.metadata import PackageNotFoundError, version

from optax_gsm import centripetal, export, lasso, low_rank, path_norm, structured
from optax_gsm._compression_ratio import compression_schedule, num_active
from optax_gsm._fine_tuning import freeze_pruned
from optax_gsm._gsm import GSMState, gsm, gsm_sgd
from optax_gsm._gsm_adamw import gsm_adamw, scale_by_gsm_adam
from optax_gsm._lossless import LosslessSettings, lossless_settings
from optax_gsm._n_of_m import n_of_m_gsm, n_of_m_gsm_sgd
from optax_gsm._optimizer_state import active_mask
from optax_gsm._prunable import default_prunable
from optax_gsm._pruning import magnitude_mask, prunable_size, prune
from optax_gsm._readiness import LeafReadiness, PruneReadiness, prune_readiness
from optax_gsm._report import LeafSparsity, SparsityReport, sparsity_report
from optax_gsm._saliency import magnitude_saliency, taylor_saliency
from optax_gsm._selection import Selection, kth_largest, select_top, top_q_mask

try:
  __version__ = version("optax_gsm")
except PackageNotFoundError:  # a source tree that was never installed
  __version__ = "0+unknown"

__all__ = (
    "GSMState",
    "LeafReadiness",
    "LeafSparsity",
    "LosslessSettings",
    "PruneReadiness",
    "Selection",
    "SparsityReport",
    "active_mask",
    "centripetal",
    "compression_schedule",
    "default_prunable",
    "export",
    "freeze_pruned",
    "gsm",
    "gsm_adamw",
    "gsm_sgd",
    "kth_largest",
    "lasso",
    "lossless_settings",
    "low_rank",
    "magnitude_mask",
    "magnitude_saliency",
    "n_of_m_gsm",
    "n_of_m_gsm_sgd",
    "num_active",
    "path_norm",
    "prunable_size",
    "prune",
    "prune_readiness",
    "scale_by_gsm_adam",
    "select_top",
    "sparsity_report",
    "structured",
    "taylor_saliency",
    "top_q_mask",
)
