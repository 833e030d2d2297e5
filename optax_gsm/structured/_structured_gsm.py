"""Structured GSM as an Optax transformation: GSM's update over structures.

The ranking, budget and selection of structures are `_ranking`'s; this
module turns the kept structures into an active set each step and hands it
to the masked gradient and momentum every GSM shares
(`optax_gsm._active_set`).
"""

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_gsm import _active_set, _compression_ratio, _prunable, _validation
from optax_gsm.structured import _groups, _ranking


class StructuredGSMState(NamedTuple):
  """State of the ranking of `structured_gsm` (the momentum buffer is the
  ``optax.TraceState`` after it in the chain).

  Attributes:
    count: number of updates so far (int32).
    mask: pytree of bool like the params: the entries of kept structures
      (and entries in no structure).
    kept: the `StructureMask` of the last update (`kept_structures`).
    saliency_square: per structure (channels, then blocks), the moving
      average of its squared saliency over the refreshes
      (``saliency_decay``; without it, the last refresh's square).
  """
  count: jax.Array
  mask: chex.ArrayTree
  kept: _groups.StructureMask
  saliency_square: jax.Array


def _scale_by_kept_structures(groups, cost, ratio_at, constant_ratio,
                              saliency, decays, mask_update_every,
                              freeze_mask_at, block_saliency, min_kept_share,
                              saliency_decay
                              ) -> optax.GradientTransformation:
  """The masked gradient of the structures ranked kept (``constant_ratio``:
  C, or None for a schedule, for the floors of ``min_kept_share``)."""
  mask_update_every, freeze_mask_at = _active_set.check_refresh(
      mask_update_every, freeze_mask_at)

  def init_fn(params):
    structures = 0
    if jax.tree.leaves(params):  # not `optax.tree.map_params` placeholders
      plan = _ranking.plan(groups, params, cost, min_kept_share,
                           constant_ratio)
      _ranking.budget(plan, ratio_at(0), cost)
      structures = sum(plan.resolved.sizes) + len(plan.resolved.blocks)
    return StructuredGSMState(
        count=jnp.zeros([], jnp.int32),
        mask=_active_set.all_true_like(params),
        kept=_groups.all_kept(groups),
        saliency_square=jnp.zeros([structures], jnp.float32))

  def update_fn(updates, state, params=None):
    _active_set.check_update_args("structured_gsm", updates, params)
    plan = _ranking.plan(groups, params, cost, min_kept_share,
                         constant_ratio)
    limit = _ranking.budget(plan, ratio_at(state.count), cost)

    def select(at_freeze):
      # The freeze keeps what the saliency ranks now, not the largest
      # structures (unstructured GSM's magnitude at the freeze): a dead
      # ReLU channel with large weights has zero Taylor saliency but the
      # largest norm, and kept alone it cut ResNet-20's stream to chance.
      del at_freeze
      scores = _ranking.structure_scores(plan.resolved, updates, params,
                                         saliency, block_saliency)
      if saliency_decay is None:
        return _ranking.select(plan, scores, limit), jnp.square(scores)
      square = (saliency_decay * state.saliency_square
                + (1 - saliency_decay) * jnp.square(scores))
      # Zero-initialised and not debiased: every structure's average is
      # short by the same factor, which leaves the ranking unchanged.
      return _ranking.select(plan, jnp.sqrt(square), limit), square

    kept, square = _active_set.refreshed(
        select, lambda: (state.kept, state.saliency_square), state.count,
        mask_update_every, freeze_mask_at)
    masks = _groups.entry_masks(plan.resolved, kept, params)
    kernels = jax.tree.leaves(_prunable.default_prunable(params))
    direction = _active_set.masked_gradient(
        updates, params, masks, plan.touched, decays,
        active_decays=[decays.active if kernel else decays.unranked
                       for kernel in kernels])
    return direction, StructuredGSMState(
        count=optax.safe_increment(state.count), mask=masks, kept=kept,
        saliency_square=square)

  return optax.GradientTransformation(init_fn, update_fn)


def structured_gsm(
    groups: _groups.Groups,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    cost: str = "params",
    momentum: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    weight_decay: jax.typing.ArrayLike = 0.0,
    passive_weight_decay: jax.typing.ArrayLike | None = None,
    unprunable_weight_decay: jax.typing.ArrayLike = 0.0,
    saliency: str | _ranking.StructureSaliency = "taylor",
    mask_update_every: int = 1,
    freeze_mask_at: int | None = None,
    momentum_dtype: chex.ArrayDType | None = None,
    block_saliency: str = "total",
    min_kept_share: _ranking.MinKeptShare = "auto",
    saliency_decay: float | None = None,
) -> optax.GradientTransformation:
  r"""Structured GSM: one global ranking over channels and residual blocks.

  Each structure S (a channel of a `ChannelGroup`, or a `Block`) gets
  ``T_S = |sum_{e in S} g_e w_e|`` (or its L2 norm) and its cost ``c_S``;
  the longest prefix of the ranking by ``T_S / c_S`` whose model costs at
  most ``1/C`` of the whole stays active (see `optax_gsm.structured`):

  .. math::
    z \leftarrow \beta z + \eta w + B_S \odot g

  with ``B_S`` the entries of kept structures; passive entries decay only.
  Kernel entries keep ``weight_decay`` where active, other members (biases,
  norms) ``unprunable_weight_decay``; all passive members get
  ``passive_weight_decay``. The state is ``(StructuredGSMState,
  optax.TraceState)``.

  References:
    Ding et al., "Global Sparse Momentum SGD for Pruning Very Deep Neural
    Networks", NeurIPS 2019; Molchanov et al., "Importance Estimation for
    Neural Network Pruning", CVPR 2019 (the group Taylor saliency).

  Example::

    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax_gsm
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((1, 4))
    >>> variables = model.init(jax.random.key(0), x)
    >>> groups = optax_gsm.structured.channel_groups(model.apply, variables, x)
    >>> tx = optax_gsm.structured.structured_gsm(groups, 2.0)
    >>> state = tx.init(variables)
    >>> grads = jax.tree.map(jnp.ones_like, variables)
    >>> _, state = tx.update(grads, state, variables)
    >>> keep = optax_gsm.structured.kept_structures(state)
    >>> int(keep.channels[0].sum()) < 8
    True

  Args:
    groups: the structures (`channel_groups`).
    compression_ratio: C >= 1: the kept model costs at most 1/C of the
      whole (params or FLOPs, counted exactly); a schedule ``step -> C``
      ramps it. Exactly one of this and ``sparsity``.
    sparsity: s in [0, 1), ``C = 1 / (1 - s)``, or a schedule.
    cost: "params" or "flops" (multiply-adds per example of the traced
      input).
    momentum: see `optax_gsm.gsm`.
    nesterov: see `optax_gsm.gsm`.
    weight_decay: see `optax_gsm.gsm`.
    passive_weight_decay: see `optax_gsm.gsm`.
    unprunable_weight_decay: see `optax_gsm.gsm`.
    saliency: "taylor", "magnitude", or a callable ``(grads, params) ->
      per-entry contributions`` summed per structure.
    mask_update_every: see `optax_gsm.gsm`.
    freeze_mask_at: see `optax_gsm.gsm`; unlike `optax_gsm.gsm`, whose
      freeze keeps the weights of largest magnitude, the freeze keeps what
      ``saliency`` ranks at that step: a dead ReLU channel (no gradient,
      large weights) would otherwise be kept, and alone in a layer it
      leaves the model at chance.
    momentum_dtype: see `optax_gsm.gsm`.
    block_saliency: a block's (a residual branch's, a stack layer's)
      saliency: "total", that of all its entries together (which cancel over
      a large block), or "parts", the sum of its channels' saliencies
      (each within the block) and of its other entries'.
    min_kept_share: a share in [0, 1]: every channel group keeps at least
      this share of its channels (rounded up, and always one), its best
      ranked, whatever the budget; None: one channel; "auto" (default): half
      the width uniform pruning to C keeps, ``0.5 / sqrt(C)`` (0.18 at 8x),
      lowered until the floors take at most half of the budget the ranking
      chooses (what it leaves beyond one channel a group and everything
      outside the groups), and one channel where C is a schedule or
      traced, or where the group is ``bypassed`` (inside a residual branch
      with an identity shortcut: a transformer's heads and neurons).
      Without a floor, short budgets ranked a group on the main path down
      to a channel or two and left the model at chance (two ResNet-20 runs
      of five at 8x fewer FLOPs). Fixed when the optimizer is built (under
      ``optax.inject_hyperparams``, a static arg).
    saliency_decay: None (the current batch's saliency alone), or d in
      [0, 1): rank each structure by the root of the moving average of its
      squared saliency over the refreshes, ``a_S <- d a_S + (1 - d)
      T_S^2``, so that the freeze does not rest on one batch (Molchanov et
      al. average theirs over the batches between prunings). Fixed when the
      optimizer is built (under ``optax.inject_hyperparams``, a static
      arg).

  Returns:
    An ``optax.GradientTransformation``; its ``update`` needs the variables
    the groups were traced from (or params of the same structure).
  """
  ratio_at = _compression_ratio.compression_schedule(compression_ratio,
                                                     sparsity)
  _ranking.check_cost(cost)
  _ranking.check_block_saliency(block_saliency)
  _ranking.check_min_kept_share(min_kept_share)
  _ranking.check_saliency_decay(saliency_decay)
  decays = _active_set.check_decays(weight_decay, passive_weight_decay,
                                    unprunable_weight_decay)
  return _active_set.with_momentum(
      _scale_by_kept_structures(
          groups, cost, ratio_at,
          _ranking.constant_ratio(compression_ratio, sparsity),
          _ranking.as_contribution_saliency(saliency), decays,
          mask_update_every, freeze_mask_at, block_saliency,
          min_kept_share, saliency_decay),
      momentum, nesterov, momentum_dtype)


def structured_gsm_sgd(
    learning_rate: optax.ScalarOrSchedule,
    groups: _groups.Groups,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    total_steps: int | None = None,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    cost: str = "params",
    momentum: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    weight_decay: jax.typing.ArrayLike = 0.0,
    passive_weight_decay: jax.typing.ArrayLike | None = None,
    unprunable_weight_decay: jax.typing.ArrayLike = 0.0,
    saliency: str | _ranking.StructureSaliency = "taylor",
    mask_update_every: int = 1,
    freeze_mask_at: int | None = None,
    zero_passive_at: int | None = None,
    momentum_dtype: chex.ArrayDType | None = None,
    block_saliency: str = "total",
    min_kept_share: _ranking.MinKeptShare = "auto",
    saliency_decay: float | None = None,
) -> optax.GradientTransformation:
  r"""`structured_gsm` chained with ``optax.scale_by_learning_rate``.

  .. math::
    w_{t+1} = w_t - \alpha_t z_{t+1}

  ``total_steps`` derives a lossless freeze and passive decay, as in
  `optax_gsm.gsm_sgd`.

  Args:
    learning_rate: alpha >= 0, or a schedule ``step -> alpha``.
    groups: see `structured_gsm`.
    compression_ratio: see `structured_gsm`.
    total_steps: see `optax_gsm.gsm_sgd`.
    sparsity: see `structured_gsm`.
    cost: see `structured_gsm`.
    momentum: see `optax_gsm.gsm`.
    nesterov: see `optax_gsm.gsm`.
    weight_decay: see `optax_gsm.gsm`.
    passive_weight_decay: see `optax_gsm.gsm`.
    unprunable_weight_decay: see `optax_gsm.gsm`.
    saliency: see `structured_gsm`.
    mask_update_every: see `optax_gsm.gsm`.
    freeze_mask_at: see `optax_gsm.gsm`.
    zero_passive_at: see `optax_gsm.gsm_sgd`.
    momentum_dtype: see `optax_gsm.gsm`.
    block_saliency: see `structured_gsm`.
    min_kept_share: see `structured_gsm`.
    saliency_decay: see `structured_gsm`.

  Returns:
    An ``optax.GradientTransformation``.
  """
  return _active_set.with_learning_rate(
      structured_gsm, learning_rate, total_steps, momentum=momentum,
      weight_decay=weight_decay, freeze_mask_at=freeze_mask_at,
      passive_weight_decay=passive_weight_decay,
      zero_passive_at=zero_passive_at, groups=groups,
      compression_ratio=compression_ratio, sparsity=sparsity, cost=cost,
      nesterov=nesterov, unprunable_weight_decay=unprunable_weight_decay,
      saliency=saliency, mask_update_every=mask_update_every,
      momentum_dtype=momentum_dtype, block_saliency=block_saliency,
      min_kept_share=min_kept_share, saliency_decay=saliency_decay)


def scale_by_structured_gsm_adam(
    groups: _groups.Groups,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    cost: str = "params",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    saliency: str | _ranking.StructureSaliency = "taylor",
    mask_update_every: int = 1,
    freeze_mask_at: int | None = None,
    block_saliency: str = "total",
    min_kept_share: _ranking.MinKeptShare = "auto",
    saliency_decay: float | None = None,
) -> optax.GradientTransformation:
  r"""Adam's direction of the gradient masked to the kept structures.

  .. math::
    u_t = \mathrm{Adam}_{\beta_1, \beta_2, \epsilon}(B_S \odot g_t)

  with ``B_S`` the entries of the structures `structured_gsm`'s ranking
  keeps (heads, neurons, channels and branches under one budget); the
  entries of the others get no gradient, so their moments decay. The state
  is ``(StructuredGSMState, optax.ScaleByAdamState)``.

  References:
    Ding et al., NeurIPS 2019; Molchanov et al., CVPR 2019; Kingma and Ba,
    "Adam: A Method for Stochastic Optimization", ICLR 2015.

  Example::

    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax_gsm
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((1, 4))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> groups = optax_gsm.structured.channel_groups(
    ...     model.apply, {"params": params}, x)
    >>> tx = optax_gsm.structured.scale_by_structured_gsm_adam(groups, 2.0)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> _, state = tx.update(grads, tx.init(params), params)
    >>> int(optax_gsm.structured.kept_structures(state).channels[0].sum()) < 8
    True

  Args:
    groups: see `structured_gsm`.
    compression_ratio: see `structured_gsm`.
    sparsity: see `structured_gsm`.
    cost: see `structured_gsm`.
    b1: Adam's first-moment decay, in [0, 1).
    b2: Adam's second-moment decay, in [0, 1).
    eps: added to the root of the second moment, >= 0.
    saliency: see `structured_gsm`.
    mask_update_every: see `optax_gsm.gsm`.
    freeze_mask_at: see `structured_gsm`.
    block_saliency: see `structured_gsm`.
    min_kept_share: see `structured_gsm`.
    saliency_decay: see `structured_gsm`.

  Returns:
    An ``optax.GradientTransformation``; its ``update`` needs ``params``.
  """
  for name, value in (("b1", b1), ("b2", b2)):
    _validation.check_range(name, value, low=0.0, high=1.0,
                            high_inclusive=False)
  _validation.check_range("eps", eps, low=0.0)
  _ranking.check_cost(cost)
  _ranking.check_block_saliency(block_saliency)
  _ranking.check_min_kept_share(min_kept_share)
  _ranking.check_saliency_decay(saliency_decay)
  return optax.chain(
      _scale_by_kept_structures(
          groups, cost,
          _compression_ratio.compression_schedule(compression_ratio,
                                                  sparsity),
          _ranking.constant_ratio(compression_ratio, sparsity),
          _ranking.as_contribution_saliency(saliency),
          _active_set.check_decays(0.0, 0.0, 0.0), mask_update_every,
          freeze_mask_at, block_saliency, min_kept_share, saliency_decay),
      optax.scale_by_adam(b1, b2, eps))


def structured_gsm_adamw(
    learning_rate: optax.ScalarOrSchedule,
    groups: _groups.Groups,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    total_steps: int | None = None,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    cost: str = "params",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    mask: Any = None,
    saliency: str | _ranking.StructureSaliency = "taylor",
    mask_update_every: int = 1,
    freeze_mask_at: int | None = None,
    zero_passive_at: int | None = None,
    block_saliency: str = "total",
    min_kept_share: _ranking.MinKeptShare = "auto",
    saliency_decay: float | None = None,
) -> optax.GradientTransformation:
  r"""Structured GSM with AdamW: `scale_by_structured_gsm_adam`, AdamW's
  decoupled weight decay and the learning rate.

  .. math::
    w_{t+1} = w_t - \alpha_t \big(\mathrm{Adam}(B_S \odot g_t)
      + \lambda w_t\big)

  For transformers, which train with AdamW. ``total_steps`` gives the same
  lossless default as `structured_gsm_sgd` and `optax_gsm.gsm_adamw`: the
  kept structures are frozen at 20% of the steps and the removed ones shrink
  to exact zeros by 60%, so `shrink` changes nothing.

  Args:
    learning_rate: alpha >= 0, or a schedule ``step -> alpha``.
    groups: see `structured_gsm`.
    compression_ratio: see `structured_gsm`.
    total_steps: see `optax_gsm.gsm_adamw`.
    sparsity: see `structured_gsm`.
    cost: see `structured_gsm`.
    b1: see `scale_by_structured_gsm_adam`.
    b2: see `scale_by_structured_gsm_adam`.
    eps: see `scale_by_structured_gsm_adam`.
    weight_decay: lambda >= 0, AdamW's decoupled decay.
    mask: which leaves decay, as ``optax.adamw``'s ``mask`` (None: all).
    saliency: see `structured_gsm`.
    mask_update_every: see `optax_gsm.gsm`.
    freeze_mask_at: see `structured_gsm`.
    zero_passive_at: see `optax_gsm.gsm_sgd`.
    block_saliency: see `structured_gsm`.
    min_kept_share: see `structured_gsm`.
    saliency_decay: see `structured_gsm`.

  Returns:
    An ``optax.GradientTransformation``.
  """
  return _active_set.with_adamw(
      functools.partial(
          scale_by_structured_gsm_adam, groups, compression_ratio,
          sparsity=sparsity, cost=cost, b1=b1, b2=b2, eps=eps,
          saliency=saliency, mask_update_every=mask_update_every,
          block_saliency=block_saliency, min_kept_share=min_kept_share,
          saliency_decay=saliency_decay),
      learning_rate, total_steps, b1=b1, weight_decay=weight_decay,
      mask=mask, freeze_mask_at=freeze_mask_at,
      zero_passive_at=zero_passive_at)


def structured_states(opt_state: chex.ArrayTree) -> list[StructuredGSMState]:
  """Every `StructuredGSMState` inside ``opt_state``, in tree order."""
  is_state = lambda node: isinstance(node, StructuredGSMState)
  return [node for node in jax.tree.leaves(opt_state, is_leaf=is_state)
          if is_state(node)]


def kept_structures(opt_state: chex.ArrayTree) -> _groups.StructureMask:
  """The structures a `structured_gsm` kept at its last update.

  Args:
    opt_state: the state of an optimizer containing `structured_gsm`.

  Returns:
    Its `StructureMask` (host numpy arrays).

  Raises:
    ValueError: no structured GSM state, or several.
  """
  states = structured_states(opt_state)
  if len(states) != 1:
    raise ValueError(
        f"`opt_state` holds {len(states)} structured GSM states; "
        "kept_structures needs exactly one (structured_gsm).")
  return jax.tree.map(np.asarray, states[0].kept)


