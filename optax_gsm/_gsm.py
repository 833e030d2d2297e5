"""Global Sparse Momentum SGD as an Optax gradient transformation.

Ding, Ding, Zhou, Guo, Han, Liu, "Global Sparse Momentum SGD for Pruning Very
Deep Neural Networks", NeurIPS 2019, https://arxiv.org/abs/1909.12778.

At every step, over all prunable parameters together, the ``Q = floor(N / C)``
with the largest saliency (by default ``T = |g * w|``) form the active set
``B``; then, for prunable parameters,

.. math::
  z \\leftarrow \\beta z + \\eta w + B \\odot g

and the update is ``z`` (Nesterov: ``\\eta w + B \\odot g + \\beta z``, as
``torch.optim.SGD`` computes it): the masked gradient of
`optax_gsm._active_set` followed by ``optax.trace``. Passive parameters
receive weight decay only, and momentum shrinks them toward zero. Parameters
that are not prunable (biases, norms) get plain momentum SGD with their own
decay. Chain with ``optax.scale_by_learning_rate`` (or use `gsm_sgd`) to get
``w <- w - lr z``.

How fast passive weights vanish: with learning rate ``alpha`` and no gradient,
``w`` follows ``w <- w - alpha z, z <- beta z + eta w``, whose slowest mode
shrinks by about ``alpha eta / (1 - beta)`` a step while
``alpha eta < (1 - sqrt(beta))**2`` and by ``sqrt(beta)`` a step (oscillating)
above it. The paper's LeNet setting (``alpha = 1e-2, eta = 5e-4,
beta = 0.99``) gives 5e-4 a step: about 14,000 steps to shrink passive
weights 1000-fold, so on a shorter budget the final prune costs accuracy.
``passive_weight_decay`` raises ``eta`` for passive entries only (to
``(1 - sqrt(beta))**2 / alpha`` = 2.5e-3 there: 200 steps per e-fold);
`lossless_settings` derives it and ``freeze_mask_at`` from a step budget.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_gsm import (
  _active_set,
  _compression_ratio,
  _density_bounds,
  _prunable,
  _rules,
  _saliency,
)

# The entries of each leaf's `GSMState.leaf_ranking`.
_PRUNABLE, _MIN_ACTIVE, _MAX_ACTIVE, _POSITION = range(4)


class GSMState(NamedTuple):
  """State of the ranking of `gsm` and `n_of_m_gsm` (the momentum buffer is
  the ``optax.TraceState`` after it in the chain).

  Attributes:
    count: number of updates so far (int32).
    mask: pytree of bool like the params: True where the last update let the
      gradient through (the active set; all True before the first update and
      on leaves that are not prunable). `active_mask` finds it in any
      ``opt_state``, with several GSM groups too.
    num_active: Q of the current mask (int32).
    n_of_m: int32 ``[n, m]`` of an N:M ranking, ``[0, 0]`` for a global one.
    leaf_ranking: pytree of int32 ``[4]`` arrays like the params, per leaf
      ``[prunable, min_active, max_active, position]``; read them as the
      properties below. One small array per leaf rather than four scalars:
      every state leaf is an output of the jitted update, and XLA's compile
      time grows with their number (measured: 4,000 scalar outputs of 1,000
      leaves cost a third of the update's compile time on CPU).

  Properties (pytrees like the params):
    prunable: bool scalars, which leaves this GSM ranks. `prune`,
      `magnitude_mask`, `sparsity_report` and `prune_readiness` read it (with
      ``num_active``) from ``opt_state=``, so that the final prune ranks
      exactly what the optimizer ranked.
    min_active: int32 scalars, each ranked leaf's lower bound on kept
      entries (``min_density``; 0 without).
    max_active: likewise the upper bound (``max_density``; the leaf's size
      without).
    position: int32 scalars, each ranked leaf's position among the ranked
      leaves (-1 on the others); ties in the ranking go to earlier positions.
      A run-time input of the update, so that XLA compiles the mask of
      equally shaped leaves once rather than once per leaf.
  """
  count: jax.Array
  mask: chex.ArrayTree
  num_active: jax.Array
  n_of_m: jax.Array
  leaf_ranking: chex.ArrayTree

  def _ranking_entry(self, index: int, dtype) -> Any:
    return jax.tree.map(lambda r: r[index].astype(dtype), self.leaf_ranking)

  @property
  def prunable(self) -> Any:
    return self._ranking_entry(_PRUNABLE, bool)

  @property
  def min_active(self) -> Any:
    return self._ranking_entry(_MIN_ACTIVE, jnp.int32)

  @property
  def max_active(self) -> Any:
    return self._ranking_entry(_MAX_ACTIVE, jnp.int32)

  @property
  def position(self) -> Any:
    return self._ranking_entry(_POSITION, jnp.int32)



def _prunable_scores(saliency_fn, grads, params, flags):
  """The saliency of each prunable leaf, checked, with pruned zeros demoted.

  An exact zero weight whose score is zero gets the largest negative float
  (a denormal; the selection orders keys by bit pattern), so that it ranks
  just below every non-zero weight of score zero: ties at zero go to weights
  that exist, and a pruned model never regrows by a tie.
  """
  scores = saliency_fn(grads, params)
  treedef = jax.tree.structure(params)
  if jax.tree.structure(scores) != treedef:
    raise ValueError(
        "`saliency` must return scores with the structure of the params; got "
        f"{jax.tree.structure(scores)}, params are {treedef}.")
  demoted = -np.float32(np.finfo(np.float32).smallest_subnormal)
  prunable_scores = []
  for score, w in zip(_prunable.prunable_leaves(flags, jax.tree.leaves(scores)),
                      _prunable.prunable_leaves(flags, jax.tree.leaves(params))):
    if jnp.shape(score) != jnp.shape(w):
      raise ValueError(
          f"`saliency` returned a score of shape {jnp.shape(score)} for a "
          f"parameter of shape {jnp.shape(w)}.")
    score = jnp.asarray(score, jnp.float32)
    prunable_scores.append(
        jnp.where((score == 0) & (w == 0), demoted, score))
  return prunable_scores


def _leaf_ranking(params, flags: list[bool], rule: _rules.Rule) -> Any:
  """`GSMState.leaf_ranking`: per leaf ``[prunable, min_active, max_active,
  position]``; a leaf GSM does not rank keeps ``[0, 0, size, -1]``."""
  low = iter(rule.low if rule.low is not None else [])
  high = iter(rule.high if rule.high is not None else [])
  positions = np.where(flags, np.cumsum(flags) - 1, -1)
  rows = []
  for leaf, flag, position in zip(jax.tree.leaves(params), flags, positions):
    size = np.size(leaf)
    rows.append(jnp.asarray(
        [flag, next(low, 0) if flag else 0,
         next(high, size) if flag else size, position], jnp.int32))
  return jax.tree.structure(params).unflatten(rows)


def _active_masks(saliency_fn, grads, params, state, flags, q, rule,
                  mask_update_every, freeze_mask_at):
  """The new mask pytree and its Q: top-Q of the prunable scores (see
  `refreshed` for when)."""
  treedef = jax.tree.structure(params)
  old_masks = treedef.flatten_up_to(state.mask)

  def select_active(at_freeze):
    scores = _prunable_scores(saliency_fn, grads, params, flags)
    if freeze_mask_at is not None:
      magnitudes = _prunable_scores(_saliency.magnitude_saliency, grads,
                                    params, flags)
      scores = [jnp.where(at_freeze, m, s)
                for m, s in zip(magnitudes, scores)]
    positions = [r[_POSITION] for r in _prunable.prunable_leaves(
        flags, treedef.flatten_up_to(state.leaf_ranking))]
    return (_rules.masks(scores, q, rule, positions),
            jnp.asarray(q, jnp.int32))

  prunable_masks, num_active = _active_set.refreshed(
      select_active,
      lambda: (_prunable.prunable_leaves(flags, old_masks), state.num_active),
      state.count, mask_update_every, freeze_mask_at)
  masks = _prunable.merge_prunable(
      flags, prunable_masks, lambda i: jnp.ones_like(old_masks[i]))
  return treedef.unflatten(masks), num_active



Ranking = Callable[[chex.ArrayTree, Any], tuple[list[bool], Any, _rules.Rule]]


def ranked_active_set(
    name: str, ranking: Ranking, saliency: str | _saliency.SaliencyFn,
    decays: _active_set.Decays, mask_update_every: Any, freeze_mask_at: Any
) -> optax.GradientTransformation:
  """The masked gradient of a ranking over leaves, with a `GSMState`:
  ``ranking(params, step)`` gives the ranked leaves, Q and rule."""
  saliency_fn = _saliency.resolve_saliency(saliency)
  mask_update_every, freeze_mask_at = _active_set.check_refresh(
      mask_update_every, freeze_mask_at)

  def init_fn(params):
    if jax.tree.leaves(params):
      # Validates a constant ratio, or a schedule's first value, now.
      flags, q, rule = ranking(params, 0)
    else:  # `optax.tree.map_params` placeholders: nothing to rank yet
      flags, q, rule = [], 0, _rules.Rule()
    return GSMState(
        count=jnp.zeros([], jnp.int32),
        mask=_active_set.all_true_like(params),
        num_active=jnp.asarray(q, jnp.int32),
        n_of_m=jnp.asarray(rule.n_of_m or (0, 0), jnp.int32),
        leaf_ranking=_leaf_ranking(params, flags, rule))

  def update_fn(updates, state, params=None):
    _active_set.check_update_args(name, updates, params)
    flags, q, rule = ranking(params, state.count)
    masks, num_active = _active_masks(
        saliency_fn, updates, params, state, flags, q, rule,
        mask_update_every, freeze_mask_at)
    direction = _active_set.masked_gradient(updates, params, masks, flags,
                                            decays)
    return direction, state._replace(
        count=optax.safe_increment(state.count), mask=masks,
        num_active=num_active)

  return optax.GradientTransformation(init_fn, update_fn)


def global_ranking(compression_ratio, sparsity, prunable, min_density,
                    max_density) -> Ranking:
  """The paper's ranking: the global top-Q, optionally within per-leaf
  density bounds."""
  ratio_at = _compression_ratio.compression_schedule(compression_ratio,
                                                     sparsity)
  bounded = min_density is not None or max_density is not None

  def ranking(params, step):
    flags = _prunable.resolve_prunable(prunable, params)
    q = _compression_ratio.num_active(
        _prunable.prunable_count(flags, jax.tree.leaves(params)),
        ratio_at(step))
    if not bounded:
      return flags, q, _rules.Rule()
    low, high = _density_bounds.leaf_bounds(params, flags, min_density,
                                            max_density)
    _density_bounds.check_feasible(low, high, q)
    return flags, q, _rules.Rule(low=low, high=high)

  return ranking


def gsm(
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    momentum: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    weight_decay: jax.typing.ArrayLike = 0.0,
    passive_weight_decay: jax.typing.ArrayLike | None = None,
    unprunable_weight_decay: jax.typing.ArrayLike = 0.0,
    saliency: str | _saliency.SaliencyFn = "taylor",
    prunable: _prunable.Prunable = None,
    mask_update_every: int = 1,
    freeze_mask_at: int | None = None,
    momentum_dtype: chex.ArrayDType | None = None,
    min_density: _density_bounds.Density = None,
    max_density: _density_bounds.Density = None,
) -> optax.GradientTransformation:
  r"""Global Sparse Momentum: momentum SGD where only the top-Q gradients pass.

  At step t, over all prunable entries of the model together (N of them),
  the ``Q = floor(N / C)`` entries with the largest saliency (by default
  ``T = |g * w|``, the first-order Taylor estimate of the loss change if the
  entry were zeroed) form the active set ``B_t``; then

  .. math::
    z_{t+1} = \beta z_t + \eta w_t + B_t \odot g_t, \qquad
    u_t = z_{t+1} \quad (\text{Nesterov: } \eta w_t + B_t \odot g_t
      + \beta z_{t+1})

  and a following ``optax.scale_by_learning_rate(alpha)`` makes
  ``w_{t+1} = w_t - \alpha u_t`` (Eq. 6 of the paper). Passive entries get
  the decay only (``passive_weight_decay`` if given), so momentum drives them
  toward zero; after training `prune` keeps the Q largest ``|w|``. Leaves
  that are not prunable (biases, norms) get plain momentum SGD with
  ``unprunable_weight_decay``. Ties in the ranking go to earlier leaves and
  entries; an entry that is exactly zero with a zero score ranks just below
  every non-zero weight of score zero, so a pruned model fine-tuned with a
  fresh GSM state never re-activates its zeros by a tie.

  The state is ``(GSMState, optax.TraceState)``: the ranking, then the
  momentum buffer ``z``.

  References:
    Ding, Ding, Zhou, Guo, Han, Liu, "Global Sparse Momentum SGD for Pruning
    Very Deep Neural Networks", NeurIPS 2019,
    https://arxiv.org/abs/1909.12778.

  Example::

    >>> import jax.numpy as jnp, optax, optax_gsm
    >>> params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
    >>> tx = optax.chain(optax_gsm.gsm(4.0, momentum=0.9, weight_decay=1e-4),
    ...                  optax.scale_by_learning_rate(0.1))
    >>> state = tx.init(params)
    >>> grads = {"dense": {"kernel": jnp.arange(12.0).reshape(4, 3),
    ...                    "bias": jnp.ones(3)}}
    >>> updates, state = tx.update(grads, state, params)
    >>> int(optax_gsm.active_mask(state, params)["dense"]["kernel"].sum())
    3

  Args:
    compression_ratio: C >= 1; ``Q = floor(N / C)`` of the N prunable entries
      stay active. A schedule ``step -> C`` ramps compression. Exactly one of
      this and ``sparsity``.
    sparsity: s in [0, 1), the fraction of prunable entries to make passive
      (``C = 1 / (1 - s)``), or a schedule ``step -> s``.
    momentum: beta in [0, 1).
    nesterov: use Nesterov momentum, as ``torch.optim.SGD(nesterov=True)``.
    weight_decay: eta >= 0 for prunable parameters, inside the momentum.
    passive_weight_decay: None (the paper's: ``weight_decay``), or the decay
      >= 0 of passive prunable entries, active ones keeping ``weight_decay``.
      A larger value drives the weights the final prune removes to zero in
      fewer steps (see `lossless_settings`); best with ``freeze_mask_at``,
      since without it a weight that turns active again starts smaller.
    unprunable_weight_decay: decay >= 0 for parameters that are not prunable
      (the official code gives biases and norms 0).
    saliency: "taylor" (``|g * w|``, the paper's), "magnitude" (``|w|``) or a
      callable ``(grads, params) -> scores`` with the params' structure.
    prunable: which leaves GSM ranks: None (`default_prunable`: Flax
      ``kernel`` and ``embedding`` leaves, else rank >= 2), a pytree of bools
      like the params or a prefix of it, glob patterns over ``/``-joined
      paths, or a callable ``params -> any of these``.
    mask_update_every: int >= 1: recompute the active set every this many
      steps and keep it in between (1, the paper's, recomputes every step).
    freeze_mask_at: None (the paper's: never), or the int step >= 0 at which
      the active set becomes the Q largest ``|w|``, what the final `prune`
      keeps, and stays fixed: every weight the prune will remove then decays
      for all the remaining steps, which makes the prune lossless when
      enough steps at a high learning rate remain (see `lossless_settings`).
      Q stays that of this step.
    momentum_dtype: dtype of the momentum buffer; None for the params' dtype.
    min_density: None, or a float in [0, 1] (every prunable leaf) or a
      pytree of floats like the params (None entries: no bound): each leaf
      keeps at least this share; still exactly Q active overall (see
      `optax_gsm._density_bounds`). Costs some 30-40 counting passes a
      refresh (four thresholds each).
    max_density: likewise, the most each leaf may keep.

  Returns:
    An ``optax.GradientTransformation``; its ``update`` needs ``params``.
    With a traced ratio (a schedule under ``jit``, or
    ``optax.inject_hyperparams``) Q follows `num_active`'s rules.
  """
  decays = _active_set.check_decays(weight_decay, passive_weight_decay,
                                    unprunable_weight_decay)
  ranking = global_ranking(compression_ratio, sparsity, prunable,
                            min_density, max_density)
  return _active_set.with_momentum(
      ranked_active_set("gsm", ranking, saliency, decays, mask_update_every,
                        freeze_mask_at),
      momentum, nesterov, momentum_dtype)


def gsm_sgd(
    learning_rate: optax.ScalarOrSchedule,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    total_steps: int | None = None,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    momentum: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    weight_decay: jax.typing.ArrayLike = 0.0,
    passive_weight_decay: jax.typing.ArrayLike | None = None,
    unprunable_weight_decay: jax.typing.ArrayLike = 0.0,
    saliency: str | _saliency.SaliencyFn = "taylor",
    prunable: _prunable.Prunable = None,
    mask_update_every: int = 1,
    freeze_mask_at: int | None = None,
    zero_passive_at: int | None = None,
    momentum_dtype: chex.ArrayDType | None = None,
    min_density: _density_bounds.Density = None,
    max_density: _density_bounds.Density = None,
) -> optax.GradientTransformation:
  r"""GSM SGD: `gsm` chained with ``optax.scale_by_learning_rate``.

  .. math::
    z_{t+1} = \beta z_t + \eta w_t + B_t \odot g_t, \qquad
    w_{t+1} = w_t - \alpha_t z_{t+1}

  the paper's update (Eq. 6), ``B_t`` the global top-Q of ``|g * w|``
  (see `gsm`). Give ``total_steps`` (the number of steps you will train
  with GSM) for a final prune that changes nothing, at every budget:
  ``freeze_mask_at``, ``passive_weight_decay`` and ``zero_passive_at`` are
  then derived from the budget and the learning rate by `lossless_settings`
  (an explicit value of any wins): the active set is fixed at 20% of the
  steps and the passive weights are exactly zero from 60% on, so the active
  ones have the last 40% to make up for them. Leave it out for the paper's
  exact recipe.

  Every argument is explicit so that ``optax.inject_hyperparams(gsm_sgd)``
  sees it.

  References:
    Ding et al., "Global Sparse Momentum SGD for Pruning Very Deep Neural
    Networks", NeurIPS 2019, https://arxiv.org/abs/1909.12778.

  Example::

    >>> import jax, jax.numpy as jnp, optax, optax_gsm
    >>> params = {"dense": {"kernel": jnp.linspace(-1, 1, 60).reshape(6, 10),
    ...                     "bias": jnp.zeros(10)}}
    >>> schedule = optax.cosine_decay_schedule(0.1, 100)
    >>> tx = optax_gsm.gsm_sgd(schedule, 10.0, total_steps=100, momentum=0.9)
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> for _ in range(100):
    ...   updates, state = update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> pruned, mask = optax_gsm.prune(params, opt_state=state)
    >>> int(mask["dense"]["kernel"].sum())
    6

  Args:
    learning_rate: alpha >= 0, or a schedule ``step -> alpha``.
    compression_ratio: see `gsm`.
    total_steps: None (the paper's recipe), or the int number of GSM steps
      of the run: derive a lossless ``freeze_mask_at`` and
      ``passive_weight_decay`` from it (`lossless_settings`).
    sparsity: see `gsm`.
    momentum: see `gsm`.
    nesterov: see `gsm`.
    weight_decay: see `gsm`.
    passive_weight_decay: see `gsm`.
    unprunable_weight_decay: see `gsm`.
    saliency: see `gsm`.
    prunable: see `gsm`.
    mask_update_every: see `gsm`.
    freeze_mask_at: see `gsm`.
    zero_passive_at: None, or the int step after ``freeze_mask_at`` from
      which passive weights are exactly zero: from the freeze on they are
      scaled down by a cubic ramp on top of their update, whatever the
      learning rate and momentum (`lossless_settings`). Derived from
      ``total_steps`` (halfway from the freeze to the end: 60% of it) when
      that is given; None otherwise (the
      paper's recipe: passive weights only decay).
    momentum_dtype: see `gsm`.
    min_density: see `gsm`.
    max_density: see `gsm`.

  Returns:
    An ``optax.GradientTransformation``.
  """
  return _active_set.with_learning_rate(
      gsm, learning_rate, total_steps, momentum=momentum,
      weight_decay=weight_decay, freeze_mask_at=freeze_mask_at,
      passive_weight_decay=passive_weight_decay,
      zero_passive_at=zero_passive_at,
      compression_ratio=compression_ratio, sparsity=sparsity,
      nesterov=nesterov, unprunable_weight_decay=unprunable_weight_decay,
      saliency=saliency, prunable=prunable,
      mask_update_every=mask_update_every, momentum_dtype=momentum_dtype,
      min_density=min_density, max_density=max_density)
