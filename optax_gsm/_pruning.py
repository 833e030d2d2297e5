"""The final global magnitude prune that ends GSM training.

GSM trains with Q active weights; the passive ones shrink toward zero but are
not exactly zero. After training, the Q largest ``|w|`` over all prunable
parameters are kept and the rest are set to zero (Ding et al., 2019, Sec. 3,
and the official ``gsm_prune_pipeline``), with no fine-tuning. The official
code's ``>=`` threshold can keep Q + 1 weights on ties; this keeps exactly Q.

Which leaves are ranked together and Q come either from the arguments or,
with ``opt_state=``, from the GSM transformations in the optimizer state:
then a prune after ``optax.multi_transform`` ranks exactly what each GSM
ranked (one ranking per GSM transformation, each with its own Q).
"""

import chex
import jax
import jax.numpy as jnp

from optax_gsm import (
  _compression_ratio,
  _optimizer_state,
  _prunable,
  _saliency,
  _selection,
)


def prunable_size(params: chex.ArrayTree,
                  prunable: _prunable.Prunable = None) -> int:
  """N: the number of prunable entries of ``params``."""
  flags = _prunable.resolve_prunable(prunable, params)
  return _prunable.prunable_count(flags, jax.tree.leaves(params))


def rankings(
    params: chex.ArrayTree,
    compression_ratio: _compression_ratio.RatioOrSchedule | None,
    sparsity: _compression_ratio.RatioOrSchedule | None,
    prunable: _prunable.Prunable,
    opt_state: chex.ArrayTree | None,
) -> list[_optimizer_state.Ranking]:
  """The global rankings a prune of ``params`` makes, from either source."""
  if opt_state is not None:
    if compression_ratio is not None or sparsity is not None or (
        prunable is not None):
      raise ValueError(
          "Give either `opt_state` (the prunable set and Q of the GSM "
          "optimizer) or `compression_ratio`/`sparsity` and `prunable`, not "
          "both.")
    return _optimizer_state.state_rankings(opt_state, params)
  for name, value in (("compression_ratio", compression_ratio),
                      ("sparsity", sparsity)):
    if callable(value):
      raise ValueError(
          f"`{name}` must be a number here, not a schedule: a prune keeps one "
          "Q. Pass the schedule's value at your last step, or "
          "`opt_state=` to take the ratio the optimizer used.")
  ratio = _compression_ratio.compression_schedule(compression_ratio,
                                                  sparsity)(0)
  flags = _prunable.resolve_prunable(prunable, params)
  num_prunable = _prunable.prunable_count(flags, jax.tree.leaves(params))
  return [_optimizer_state.Ranking(
      flags=flags, num_active=_compression_ratio.num_active(num_prunable,
                                                            ratio))]


def ranking_masks(
    params: chex.ArrayTree,
    ranking_list: list[_optimizer_state.Ranking]) -> list[jax.Array]:
  """Per leaf: the magnitude top-Q mask of each ranking, True elsewhere."""
  leaves = jax.tree.leaves(params)
  masks = [jnp.ones(jnp.shape(w), bool) for w in leaves]
  for ranking in ranking_list:
    ranked = _prunable.prunable_leaves(ranking.flags, leaves)
    # Zeros rank below every non-zero weight, as in GSM's own selection.
    scores = jax.tree.leaves(_saliency.magnitude_saliency(None, ranked))
    scores = [jnp.where(s == 0, -jnp.inf, s) for s in scores]
    masks = _prunable.merge_prunable(
        ranking.flags, _selection.top_q_mask(scores, ranking.num_active),
        lambda i, masks=masks: masks[i])
  return masks


def magnitude_mask(
    params: chex.ArrayTree,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    prunable: _prunable.Prunable = None,
    opt_state: chex.ArrayTree | None = None,
) -> chex.ArrayTree:
  """Bool pytree: True at the ``Q = floor(N / C)`` largest ``|w|`` over all
  prunable leaves, and everywhere on leaves that are not prunable.

  Arguments as in `prune`.
  """
  return jax.tree.unflatten(
      jax.tree.structure(params),
      ranking_masks(params, rankings(params, compression_ratio, sparsity, prunable,
                              opt_state)))


def prune(
    params: chex.ArrayTree,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    prunable: _prunable.Prunable = None,
    opt_state: chex.ArrayTree | None = None,
) -> tuple[chex.ArrayTree, chex.ArrayTree]:
  """Global magnitude pruning: keep exactly ``Q = floor(N / C)`` weights.

  Args:
    params: the trained parameters.
    compression_ratio: C >= 1, a number (exactly one of this and
      ``sparsity``, unless ``opt_state`` is given).
    sparsity: s in [0, 1), ``C = 1 / (1 - s)``.
    prunable: which leaves may be pruned, as in `gsm` (default: Flax kernels
      and embeddings).
    opt_state: instead of the three above, the optimizer state of the run:
      each GSM transformation in it contributes its own prunable set and Q
      (recommended: with ``multi_transform`` or ``masked`` it is the only
      way to rank exactly what GSM ranked).

  Returns:
    ``(pruned_params, mask)``: the params with every pruned entry set to
    zero, and the bool mask of kept entries (all True on leaves that are not
    prunable). Exact zeros rank below every non-zero weight; other ties in
    ``|w|`` are broken by position, as in `select_top`.
  """
  mask = magnitude_mask(params, compression_ratio, sparsity=sparsity,
                        prunable=prunable, opt_state=opt_state)
  pruned = jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros_like(w)),
                        params, mask)
  return pruned, mask
