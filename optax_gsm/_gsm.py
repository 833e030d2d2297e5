"""Global Sparse Momentum SGD as an Optax gradient transformation.

Ding, Ding, Zhou, Guo, Han, Liu, "Global Sparse Momentum SGD for Pruning Very
Deep Neural Networks", NeurIPS 2019, https://arxiv.org/abs/1909.12778.

At every step, over all prunable parameters together, the ``Q = floor(N / C)``
with the largest saliency (by default ``T = |g * w|``) form the active set
``B``; then, for prunable parameters,

.. math::
  z \\leftarrow \\beta z + \\eta w + B \\odot g

and the update is ``z`` (Nesterov: ``\\eta w + B \\odot g + \\beta z``, as
``torch.optim.SGD`` computes it). Passive parameters receive weight decay
only, and momentum shrinks them toward zero. Parameters that are not prunable
(biases, norms) get plain momentum SGD with their own decay. Chain with
``optax.scale_by_learning_rate`` (or use `gsm_sgd`) to get ``w <- w - lr z``.

How fast passive weights vanish: with learning rate ``alpha`` and no gradient,
``w`` follows ``w <- w - alpha z, z <- beta z + eta w``, whose slowest mode
shrinks by about ``alpha eta / (1 - beta)`` a step while
``alpha eta < (1 - sqrt(beta))**2`` and by ``sqrt(beta)`` a step (oscillating)
above it. The paper's LeNet setting (``alpha = 1e-2, eta = 5e-4,
beta = 0.99``) gives 5e-4 a step: about 14,000 steps to shrink passive
weights 1000-fold, so on a shorter budget the final prune costs accuracy.
``passive_weight_decay`` raises ``eta`` for passive entries only (to
``(1 - sqrt(beta))**2 / alpha`` = 2.5e-3 there: 200 steps per e-fold).
"""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax import lax

from optax_gsm import (
  _compression_ratio,
  _prunable,
  _saliency,
  _selection,
  _validation,
)


class GSMState(NamedTuple):
  """State of `gsm`.

  Attributes:
    count: number of updates so far (int32).
    mask: pytree of bool like the params: True where the last update let the
      gradient through (the active set; all True before the first update and
      on leaves that are not prunable). Find it inside any chain with
      ``optax.tree_utils.tree_get(opt_state, "mask")``.
    momentum: the momentum buffer ``z``, like the params.
  """
  count: chex.Array
  mask: Any
  momentum: Any


def gsm(
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    passive_weight_decay: float | None = None,
    unprunable_weight_decay: float = 0.0,
    saliency: str | _saliency.SaliencyFn = "taylor",
    prunable: _prunable.Prunable = None,
    mask_update_every: int = 1,
    freeze_mask_at: int | None = None,
    momentum_dtype: chex.ArrayDType | None = None,
) -> optax.GradientTransformation:
  """Global Sparse Momentum: momentum SGD where only the top-Q gradients pass.

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
      fewer steps (see the module docstring); best with ``freeze_mask_at``,
      since without it a weight that turns active again starts smaller.
    unprunable_weight_decay: decay >= 0 for parameters that are not prunable
      (the official code gives biases and norms 0).
    saliency: "taylor" (``|g * w|``, the paper's), "magnitude" (``|w|``) or a
      callable ``(grads, params) -> scores`` shaped like the params.
    prunable: None (every leaf of rank >= 2), a pytree of bools like the
      params, or a callable ``params -> pytree of bools``.
    mask_update_every: recompute the active set every this many steps and
      keep it in between (1, the paper's, recomputes every step).
    freeze_mask_at: None (the paper's: never), or the step at which the
      active set becomes the Q largest ``|w|``, what the final `prune` keeps,
      and stays fixed: every weight the prune will remove then decays for
      all the remaining steps, which makes the prune lossless when enough
      steps at a high learning rate remain (on MNIST LeNet-300-100, 60x: at
      20% of the GSM steps; see README). Q stays that of this step.
    momentum_dtype: dtype of the momentum buffer; None for the params' dtype.

  Returns:
    An ``optax.GradientTransformation``; its ``update`` needs ``params``.
    With a traced ratio (a schedule under ``jit``, or
    ``optax.inject_hyperparams``) Q follows `num_active`'s rules.
  """
  ratio_at = _compression_ratio.compression_schedule(compression_ratio, sparsity)
  _validation.check_range("momentum", momentum, low=0.0, high=1.0,
                          high_inclusive=False)
  _validation.check_range("weight_decay", weight_decay, low=0.0)
  if passive_weight_decay is None:
    passive_weight_decay = weight_decay
  _validation.check_range("passive_weight_decay", passive_weight_decay,
                          low=0.0)
  _validation.check_range("unprunable_weight_decay", unprunable_weight_decay,
                          low=0.0)
  every = _validation.concrete_float(mask_update_every)
  if every is not None:
    if every != int(every) or every < 1:
      raise ValueError("`mask_update_every` must be an int >= 1; got "
                       f"{mask_update_every!r}.")
    # A traced value (under inject_hyperparams) is used as it is.
    mask_update_every = int(every)
  if freeze_mask_at is not None:
    _validation.check_range("freeze_mask_at", freeze_mask_at, low=0.0)
  saliency_fn = _saliency.resolve_saliency(saliency)

  def prunable_flags(params):
    flags = _prunable.resolve_prunable(prunable, params)
    num_prunable = sum(jnp.size(leaf) for leaf, flag
                       in zip(jax.tree.leaves(params), flags) if flag)
    return flags, num_prunable

  def init_fn(params):
    _, num_prunable = prunable_flags(params)
    # Validates a constant ratio, or a schedule's first value, before training.
    _compression_ratio.num_active(num_prunable, ratio_at(0))
    return GSMState(
        count=jnp.zeros([], jnp.int32),
        mask=jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params),
        momentum=optax.tree_utils.tree_zeros_like(params,
                                                  dtype=momentum_dtype))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "gsm needs the params: call `update(grads, opt_state, params)`.")
    flags, num_prunable = prunable_flags(params)
    q = _compression_ratio.num_active(num_prunable, ratio_at(state.count))
    masks = _active_masks(saliency_fn, updates, params, state, flags, q,
                          mask_update_every, freeze_mask_at)
    new_momentum, new_updates = _momentum_step(
        updates, params, state.momentum, masks, flags, momentum=momentum,
        nesterov=nesterov, weight_decay=weight_decay,
        passive_weight_decay=passive_weight_decay,
        unprunable_weight_decay=unprunable_weight_decay)
    return new_updates, GSMState(
        count=optax.safe_increment(state.count), mask=masks,
        momentum=new_momentum)

  return optax.GradientTransformation(init_fn, update_fn)


def _active_masks(saliency_fn, grads, params, state, flags, q,
                  mask_update_every, freeze_mask_at):
  """The new mask pytree: top-Q of the prunable scores, all True elsewhere.

  Recomputed every ``mask_update_every`` steps; with ``freeze_mask_at``,
  set to the top-Q by magnitude at that step and kept from then on.
  """
  treedef = jax.tree.structure(params)
  old_masks = treedef.flatten_up_to(state.mask)

  def select_top(saliency):
    scores = treedef.flatten_up_to(saliency(grads, params))
    prunable_scores = []
    for score, w, flag in zip(scores, jax.tree.leaves(params), flags):
      if flag and jnp.shape(score) != jnp.shape(w):
        raise ValueError(
            f"saliency returned a score of shape {jnp.shape(score)} for a "
            f"parameter of shape {jnp.shape(w)}.")
      if flag:
        prunable_scores.append(score)
    return _selection.top_q_mask(prunable_scores, q)

  def keep():
    return [m for m, flag in zip(old_masks, flags) if flag]

  every_step = isinstance(mask_update_every, int) and mask_update_every == 1
  if every_step and freeze_mask_at is None:
    prunable_masks = select_top(saliency_fn)
  else:
    refresh = state.count % mask_update_every == 0
    branch = jnp.where(refresh, 0, 2)
    if freeze_mask_at is not None:
      branch = jnp.where(state.count < freeze_mask_at, branch,
                         jnp.where(state.count == freeze_mask_at, 1, 2))
    prunable_masks = lax.switch(branch, [
        lambda: select_top(saliency_fn),
        lambda: select_top(_saliency.magnitude_saliency),
        keep])
  prunable_masks = iter(prunable_masks)
  masks = [next(prunable_masks) if flag else jnp.ones(jnp.shape(m), bool)
           for m, flag in zip(old_masks, flags)]
  return treedef.unflatten(masks)


def _momentum_step(grads, params, momentum_buffer, masks, flags, *, momentum,
                   nesterov, weight_decay, passive_weight_decay,
                   unprunable_weight_decay):
  """``z <- beta z + decay w + B g``; returns (z, update) per leaf."""
  treedef = jax.tree.structure(params)

  def leaf(g, w, z, active, flag):
    if flag:
      direction = jnp.where(active, g + weight_decay * w,
                            passive_weight_decay * w)
    else:
      direction = g + unprunable_weight_decay * w
    new_z = (momentum * z + direction).astype(z.dtype)
    update = direction + momentum * new_z if nesterov else new_z
    return new_z, update.astype(g.dtype)

  pairs = [leaf(*args) for args in zip(
      treedef.flatten_up_to(grads), jax.tree.leaves(params),
      treedef.flatten_up_to(momentum_buffer), treedef.flatten_up_to(masks),
      flags)]
  return (treedef.unflatten([z for z, _ in pairs]),
          treedef.unflatten([u for _, u in pairs]))


def gsm_sgd(
    learning_rate: optax.ScalarOrSchedule,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    passive_weight_decay: float | None = None,
    unprunable_weight_decay: float = 0.0,
    saliency: str | _saliency.SaliencyFn = "taylor",
    prunable: _prunable.Prunable = None,
    mask_update_every: int = 1,
    freeze_mask_at: int | None = None,
    momentum_dtype: chex.ArrayDType | None = None,
) -> optax.GradientTransformation:
  """GSM SGD: `gsm` chained with ``optax.scale_by_learning_rate``.

  ``w <- w - learning_rate * z``, the paper's update (Eq. 6). Every argument
  is explicit so that ``optax.inject_hyperparams(gsm_sgd)`` sees it.

  Args:
    learning_rate: alpha >= 0, or a schedule ``step -> alpha``.
    compression_ratio: see `gsm`.
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
    momentum_dtype: see `gsm`.

  Returns:
    An ``optax.GradientTransformation``.
  """
  if not callable(learning_rate):
    _validation.check_range("learning_rate", learning_rate, low=0.0)
  return optax.chain(
      gsm(compression_ratio, sparsity=sparsity, momentum=momentum,
          nesterov=nesterov, weight_decay=weight_decay,
          passive_weight_decay=passive_weight_decay,
          unprunable_weight_decay=unprunable_weight_decay, saliency=saliency,
          prunable=prunable, mask_update_every=mask_update_every,
          freeze_mask_at=freeze_mask_at, momentum_dtype=momentum_dtype),
      optax.scale_by_learning_rate(learning_rate))
