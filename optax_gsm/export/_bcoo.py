"""Pruned kernels as ``jax.experimental.sparse.BCOO`` matrices.

A pruned dense kernel at 60x is 98% zeros; as a BCOO matrix (the non-zero
values and their (row, column) indices) it takes 1/60 of the values and
``x @ kernel`` skips the zeros. Convolution kernels stay dense: XLA has no
sparse convolution, and what makes convolutions faster is fewer channels.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from optax_gsm import _prunable


def to_bcoo(tree: chex.ArrayTree, mask: chex.ArrayTree | None = None, *,
            prunable: _prunable.Prunable = None) -> chex.ArrayTree:
  """``tree`` with its prunable rank-2 kernels as BCOO matrices.

  Run a Flax linen model on the result with
  ``examples.sparse_inference.apply_with_bcoo`` (an interceptor of
  ``nn.Dense`` that computes ``x @ kernel`` with the BCOO kernel), or use the
  BCOO leaves in your own forward: ``x @ kernel`` works with a BCOO
  ``kernel``. ``jax.experimental.sparse.sparsify`` cannot trace Flax models
  here: it does not support the ``custom_jvp`` of activations such as
  ``nn.relu`` (jax 0.10).

  Args:
    tree: params (pruned, or with ``mask`` to prune them here).
    mask: None (keep the non-zeros), or a bool pytree like ``tree`` (from
      `prune`): entries where it is False are zeroed in every leaf and
      dropped from the BCOO ones.
    prunable: which leaves to convert, as in `gsm` (default: Flax kernels
      and embeddings); only rank-2 ones become BCOO.

  Returns:
    A pytree like ``tree`` whose converted leaves are ``BCOO`` with exactly
    as many stored entries as non-zeros. Host-side: call it outside ``jit``.
  """
  flags = _prunable.resolve_prunable(prunable, tree, require_any=False)
  leaves, treedef = jax.tree.flatten(tree)
  masks = (treedef.flatten_up_to(mask) if mask is not None
           else [None] * len(leaves))

  def convert(leaf, flag, keep):
    if keep is not None:  # every masked leaf is pruned, BCOO or not
      leaf = jnp.where(keep, leaf, jnp.zeros_like(leaf))
    if not flag or np.ndim(leaf) != 2:
      return leaf
    # Built on the host from the non-zero positions: BCOO.fromdense would
    # compile a program per kernel shape.
    dense = np.asarray(leaf)
    rows, cols = np.nonzero(dense)
    return sparse.BCOO((jnp.asarray(dense[rows, cols]),
                        jnp.asarray(np.stack([rows, cols], 1), jnp.int32)),
                       shape=dense.shape, indices_sorted=True,
                       unique_indices=True)

  return treedef.unflatten([convert(*args)
                            for args in zip(leaves, flags, masks)])
