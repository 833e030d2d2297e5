"""A pruned model, stored and run sparse.

`save_sparse` / `load_sparse`: a compact file of the non-zeros;
`to_bcoo`: ``jax.experimental.sparse`` BCOO arrays of the pruned kernels.
"""

from optax_gsm.export._bcoo import to_bcoo
from optax_gsm.export._sparse_file import load_sparse, save_sparse

__all__ = ("load_sparse", "save_sparse", "to_bcoo")
