"""The final global magnitude prune that ends GSM training.

GSM trains with Q active weights; the passive ones shrink toward zero but are
not exactly zero. After training, the Q largest ``|w|`` over all prunable
parameters are kept and the rest are set to zero (Ding et al., 2019, Sec. 3,
and the official ``gsm_prune_pipeline``), with no fine-tuning. The official
code's ``>=`` threshold can keep Q + 1 weights on ties; this keeps exactly Q.
"""


import chex
import jax
import jax.numpy as jnp

from optax_gsm import _compression_ratio, _prunable, _selection


def prunable_size(params: chex.ArrayTree,
                  prunable: _prunable.Prunable = None) -> int:
  """N: the number of prunable entries of ``params``."""
  flags = _prunable.resolve_prunable(prunable, params)
  return sum(jnp.size(w) for w, f in zip(jax.tree.leaves(params), flags) if f)


def magnitude_mask(
    params: chex.ArrayTree,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    prunable: _prunable.Prunable = None,
) -> chex.ArrayTree:
  """Bool pytree: True at the ``Q = floor(N / C)`` largest ``|w|`` over all
  prunable leaves, and everywhere on leaves that are not prunable."""
  ratio = _compression_ratio.compression_schedule(compression_ratio,
                                                  sparsity)(0)
  flags = _prunable.resolve_prunable(prunable, params)
  leaves, treedef = jax.tree.flatten(params)
  prunable_leaves = [w for w, f in zip(leaves, flags) if f]
  q = _compression_ratio.num_active(sum(jnp.size(w) for w in prunable_leaves),
                                    ratio)
  chosen = iter(_selection.top_q_mask(
      [jnp.abs(jnp.asarray(w, jnp.float32)) for w in prunable_leaves], q))
  return treedef.unflatten(
      [next(chosen) if f else jnp.ones(jnp.shape(w), bool)
       for w, f in zip(leaves, flags)])


def prune(
    params: chex.ArrayTree,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    prunable: _prunable.Prunable = None,
) -> tuple[chex.ArrayTree, chex.ArrayTree]:
  """Global magnitude pruning: keep exactly ``Q = floor(N / C)`` weights.

  Args:
    params: the trained parameters.
    compression_ratio: C >= 1 (exactly one of this and ``sparsity``).
    sparsity: s in [0, 1), ``C = 1 / (1 - s)``.
    prunable: which leaves may be pruned, as in `gsm` (default rank >= 2).

  Returns:
    ``(pruned_params, mask)``: the params with every pruned entry set to
    zero, and the bool mask of kept entries (all True on leaves that are not
    prunable). Ties in ``|w|`` are broken by position, as in `select_top`.
  """
  mask = magnitude_mask(params, compression_ratio, sparsity=sparsity,
                        prunable=prunable)
  pruned = jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros_like(w)),
                        params, mask)
  return pruned, mask
