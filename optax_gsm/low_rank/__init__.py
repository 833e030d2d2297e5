"""Trained Rank Pruning (Xu et al., IJCAI 2019): low-rank kernels by training.

`add_nuclear_norm` adds the nuclear norm's subgradient; `low_rank_projection`
(or `truncate_rank` in the loop) replaces kernels by truncated SVDs every
few steps; `low_rank_decompose` factors the trained kernels.
`limit_lapack_threads` keeps the decompositions' LAPACK from taking the
training step's cores on CPU.
"""

from optax_gsm.low_rank._lapack import limit_lapack_threads
from optax_gsm.low_rank._trp import (
  LowRankFactors,
  LowRankProjectionState,
  NuclearNormState,
  add_nuclear_norm,
  low_rank_decompose,
  low_rank_projection,
  truncate_rank,
)

__all__ = (
    "LowRankFactors",
    "LowRankProjectionState",
    "NuclearNormState",
    "add_nuclear_norm",
    "limit_lapack_threads",
    "low_rank_decompose",
    "low_rank_projection",
    "truncate_rank",
)
