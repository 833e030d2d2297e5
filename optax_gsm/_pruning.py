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
  _density_bounds,
  _optimizer_state,
  _prunable,
  _rules,
  _saliency,
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
    n_of_m: tuple[int, int] | None = None,
    min_density: _density_bounds.Density = None,
    max_density: _density_bounds.Density = None,
) -> list[_optimizer_state.Ranking]:
  """The rankings a prune of ``params`` makes, from either source."""
  if opt_state is not None:
    if any(v is not None for v in (compression_ratio, sparsity, prunable,
                                   n_of_m, min_density, max_density)):
      raise ValueError(
          "Give either `opt_state` (the prunable set, Q and rule of the GSM "
          "optimizer) or `compression_ratio`/`sparsity`, `prunable`, "
          "`n_of_m` and the density bounds, not both.")
    return _optimizer_state.state_rankings(opt_state, params)
  if n_of_m is not None:
    n_of_m = _rules.check_n_of_m(n_of_m)
    if compression_ratio is not None or sparsity is not None:
      raise ValueError("`n_of_m` sets the ratio (m / n): leave "
                       "`compression_ratio` and `sparsity` out.")
    flags = _prunable.resolve_prunable(prunable, params)
    ranked = _prunable.prunable_leaves(flags, jax.tree.leaves(params))
    for leaf in ranked:
      _rules.check_shape(jnp.shape(leaf), n_of_m[1])
    return [_optimizer_state.Ranking(
        flags=flags, num_active=_rules.n_of_m_count(
            [jnp.shape(w) for w in ranked], n_of_m),
        rule=_rules.Rule(n_of_m=n_of_m))]
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
  q = _compression_ratio.num_active(num_prunable, ratio)
  rule = _rules.Rule()
  if min_density is not None or max_density is not None:
    low, high = _density_bounds.leaf_bounds(params, flags, min_density,
                                            max_density)
    _density_bounds.check_feasible(low, high, q)
    rule = _rules.Rule(low=low, high=high)
  return [_optimizer_state.Ranking(flags=flags, num_active=q, rule=rule)]


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
        ranking.flags, _rules.masks(scores, ranking.num_active, ranking.rule),
        lambda i, masks=masks: masks[i])
  return masks


def magnitude_mask(
    params: chex.ArrayTree,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    prunable: _prunable.Prunable = None,
    opt_state: chex.ArrayTree | None = None,
    n_of_m: tuple[int, int] | None = None,
    min_density: _density_bounds.Density = None,
    max_density: _density_bounds.Density = None,
) -> chex.ArrayTree:
  """Bool pytree: True at the ``Q = floor(N / C)`` largest ``|w|`` over all
  prunable leaves, and everywhere on leaves that are not prunable.

  Arguments as in `prune`.
  """
  return jax.tree.unflatten(
      jax.tree.structure(params),
      ranking_masks(params, rankings(
          params, compression_ratio, sparsity, prunable, opt_state, n_of_m,
          min_density, max_density)))


def prune(
    params: chex.ArrayTree,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    prunable: _prunable.Prunable = None,
    opt_state: chex.ArrayTree | None = None,
    n_of_m: tuple[int, int] | None = None,
    min_density: _density_bounds.Density = None,
    max_density: _density_bounds.Density = None,
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
      way to rank exactly what GSM ranked), N:M patterns and density
      bounds included.
    n_of_m: ``(n, m)``: keep the ``n`` largest ``|w|`` of every ``m``
      consecutive entries along each kernel's input axis (-2) instead.
    min_density: per-leaf lower bounds on the kept share, as in `gsm`.
    max_density: per-leaf upper bounds, as in `gsm`.

  Returns:
    ``(pruned_params, mask)``: the params with every pruned entry set to
    zero, and the bool mask of kept entries (all True on leaves that are not
    prunable). Exact zeros rank below every non-zero weight; other ties in
    ``|w|`` are broken by position, as in `select_top`.
  """
  mask = magnitude_mask(params, compression_ratio, sparsity=sparsity,
                        prunable=prunable, opt_state=opt_state,
                        n_of_m=n_of_m, min_density=min_density,
                        max_density=max_density)
  pruned = jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros_like(w)),
                        params, mask)
  return pruned, mask
