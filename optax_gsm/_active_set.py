"""What every GSM transformation shares: the masked gradient and momentum.

Global (`gsm`), N:M (`n_of_m_gsm`) and structured
(`optax_gsm.structured.structured_gsm`) GSM differ only in how they choose
the active set ``B``. Given it, each is

.. math::
  d = B \\odot (g + \\eta w) + (1 - B) \\odot \\eta_p w, \\qquad
  z \\leftarrow \\beta z + d

with ``d = g + \\eta_u w`` on leaves no ranking covers: a masked gradient
followed by ``optax.trace`` (its Nesterov form is ``d + \\beta z``, as
``torch.optim.SGD`` computes it).
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax import lax

from optax_gsm import _lossless, _prunable, _validation


class Decays(NamedTuple):
  """Weight decays inside the momentum: of active ranked entries, of passive
  ones, and of leaves no ranking covers."""
  active: jax.typing.ArrayLike
  passive: jax.typing.ArrayLike
  unranked: jax.typing.ArrayLike


def check_decays(weight_decay: jax.typing.ArrayLike,
                 passive_weight_decay: jax.typing.ArrayLike | None,
                 unprunable_weight_decay: jax.typing.ArrayLike) -> Decays:
  """The three decays, each checked >= 0 (passive defaults to active)."""
  _validation.check_range("weight_decay", weight_decay, low=0.0)
  if passive_weight_decay is None:
    passive_weight_decay = weight_decay
  _validation.check_range("passive_weight_decay", passive_weight_decay,
                          low=0.0)
  _validation.check_range("unprunable_weight_decay", unprunable_weight_decay,
                          low=0.0)
  return Decays(weight_decay, passive_weight_decay, unprunable_weight_decay)


def check_refresh(mask_update_every: Any, freeze_mask_at: Any
                  ) -> tuple[Any, Any]:
  """``mask_update_every`` >= 1 and ``freeze_mask_at`` >= 0 (or None)."""
  mask_update_every = _validation.check_int("mask_update_every",
                                            mask_update_every, low=1)
  if freeze_mask_at is not None:
    freeze_mask_at = _validation.check_int("freeze_mask_at", freeze_mask_at,
                                           low=0)
  return mask_update_every, freeze_mask_at


def refreshed(select: Callable[[Any], Any], keep_old: Callable[[], Any],
              count: jax.Array, mask_update_every: Any,
              freeze_mask_at: Any) -> Any:
  """``select(at_freeze)`` on refresh steps, else ``keep_old()``.

  Every ``mask_update_every`` steps before ``freeze_mask_at`` the selection
  is refreshed from the saliency; at ``freeze_mask_at`` it is refreshed once
  more (``at_freeze`` true: `gsm` and N:M choose from magnitudes there,
  structured GSM from its saliency) and never again. One
  ``lax.cond``, so only one selection runs per step.
  """
  if (isinstance(mask_update_every, int) and mask_update_every == 1
      and freeze_mask_at is None):
    return select(False)
  on_refresh_step = count % mask_update_every == 0
  if freeze_mask_at is None:
    at_freeze, refresh = False, on_refresh_step
  else:
    at_freeze = count == freeze_mask_at
    refresh = at_freeze | (on_refresh_step & (count < freeze_mask_at))
  return lax.cond(refresh, lambda: select(at_freeze), keep_old)


def masked_gradient(grads: chex.ArrayTree, params: chex.ArrayTree,
                    masks: chex.ArrayTree, ranked: Sequence[bool],
                    decays: Decays,
                    active_decays: Sequence[Any] | None = None
                    ) -> chex.ArrayTree:
  """``d``: the gradient where active, the decay alone where passive.

  ``ranked`` marks the leaves a ranking covers (in ``jax.tree.leaves``
  order); ``active_decays`` (default: ``decays.active`` on each) is each
  ranked leaf's decay where active.
  """
  treedef = jax.tree.structure(params)
  if active_decays is None:
    active_decays = [decays.active] * len(ranked)

  def leaf(g, w, active, is_ranked, active_decay):
    if not is_ranked:
      return (g + decays.unranked * w).astype(g.dtype)
    return jnp.where(active, g + active_decay * w,
                     decays.passive * w).astype(g.dtype)

  return treedef.unflatten([leaf(*args) for args in zip(
      treedef.flatten_up_to(grads), jax.tree.leaves(params),
      treedef.flatten_up_to(masks), ranked, active_decays)])


def check_like_params(grads: chex.ArrayTree, params: chex.ArrayTree) -> None:
  """Raises a ValueError naming the first leaf where ``grads`` (the updates
  given to ``update``) differ from ``params`` in structure or shape."""
  try:
    leaves = jax.tree.structure(params).flatten_up_to(grads)
  except (ValueError, TypeError) as error:
    raise ValueError(
        "`updates` must have the structure of `params`; got "
        f"{jax.tree.structure(grads)}, params are "
        f"{jax.tree.structure(params)}.") from error
  for path, g, w in zip(_prunable.leaf_paths(params), leaves,
                        jax.tree.leaves(params)):
    if jnp.shape(g) != jnp.shape(w):
      raise ValueError(
          f"`updates` leaf '{path}' has shape {jnp.shape(g)}, its param "
          f"{jnp.shape(w)}.")


def with_momentum(direction: optax.GradientTransformation,
                  momentum: jax.typing.ArrayLike, nesterov: bool,
                  momentum_dtype: Any) -> optax.GradientTransformation:
  """``direction`` followed by ``optax.trace`` (and, for a momentum buffer of
  another dtype, a cast of the update back to the params' dtype)."""
  _validation.check_range("momentum", momentum, low=0.0, high=1.0,
                          high_inclusive=False)
  _validation.check_bool("nesterov", nesterov)
  parts = [direction, optax.trace(momentum, nesterov=nesterov,
                                  accumulator_dtype=momentum_dtype)]
  if momentum_dtype is not None:
    parts.append(optax.stateless(
        lambda updates, params: optax.tree.cast_like(updates, params)))
  return optax.chain(*parts)


def lossless_defaults(learning_rate: optax.ScalarOrSchedule,
                      total_steps: int | None, *, momentum: Any,
                      weight_decay: Any, freeze_mask_at: Any,
                      passive_weight_decay: Any, zero_passive_at: Any
                      ) -> tuple[Any, Any, Any]:
  """``(freeze_mask_at, passive_weight_decay, zero_passive_at)``: with
  ``total_steps``, `lossless_settings` fills those not given."""
  if isinstance(total_steps, jax.core.Tracer):
    raise TypeError(
        "`total_steps` must be a concrete int: the lossless settings are "
        "derived from it when the optimizer is built. Under "
        "`optax.inject_hyperparams`, pass `static_args=('total_steps',)`.")
  if total_steps is not None:
    derived = _lossless.lossless_settings(
        learning_rate, total_steps, momentum=momentum,
        weight_decay=weight_decay)
    if freeze_mask_at is None:
      freeze_mask_at = derived.freeze_mask_at
    if passive_weight_decay is None:
      passive_weight_decay = derived.passive_weight_decay
    if zero_passive_at is None:
      zero_passive_at = derived.zero_passive_at
      if not isinstance(freeze_mask_at, jax.core.Tracer):
        # An explicit freeze after the derived zero step: zero just after it.
        zero_passive_at = max(zero_passive_at, freeze_mask_at + 1)
  return freeze_mask_at, passive_weight_decay, zero_passive_at


def with_learning_rate(
    make_direction: Callable[..., optax.GradientTransformation],
    learning_rate: optax.ScalarOrSchedule, total_steps: int | None, *,
    momentum: Any, weight_decay: Any, freeze_mask_at: Any,
    passive_weight_decay: Any, zero_passive_at: Any,
    **kwargs: Any) -> optax.GradientTransformation:
  """``make_direction(...)`` chained with the learning rate, then, with
  ``zero_passive_at``, the shrink of passive weights to zero; with
  ``total_steps``, `lossless_settings` fills the three settings not given."""
  if not callable(learning_rate):
    _validation.check_range("learning_rate", learning_rate, low=0.0)
  freeze_mask_at, passive_weight_decay, zero_passive_at = lossless_defaults(
      learning_rate, total_steps, momentum=momentum,
      weight_decay=weight_decay, freeze_mask_at=freeze_mask_at,
      passive_weight_decay=passive_weight_decay,
      zero_passive_at=zero_passive_at)
  inner = optax.chain(
      make_direction(momentum=momentum, weight_decay=weight_decay,
                     freeze_mask_at=freeze_mask_at,
                     passive_weight_decay=passive_weight_decay, **kwargs),
      optax.scale_by_learning_rate(learning_rate))
  if zero_passive_at is None:
    return inner
  return zeroing_passive(inner, freeze_mask_at, zero_passive_at)


def with_adamw(
    make_direction: Callable[..., optax.GradientTransformation],
    learning_rate: optax.ScalarOrSchedule, total_steps: int | None, *,
    b1: Any, weight_decay: Any, mask: Any, freeze_mask_at: Any,
    zero_passive_at: Any) -> optax.GradientTransformation:
  """``make_direction(freeze_mask_at=...)`` (a ranking in front of Adam's
  moments), AdamW's decoupled decay and the learning rate, then, with
  ``zero_passive_at``, the shrink of passive weights to zero; with
  ``total_steps``, `lossless_settings` fills the settings not given."""
  if not callable(learning_rate):
    _validation.check_range("learning_rate", learning_rate, low=0.0)
  _validation.check_range("weight_decay", weight_decay, low=0.0)
  freeze_mask_at, _, zero_passive_at = lossless_defaults(
      learning_rate, total_steps, momentum=b1, weight_decay=0.0,
      freeze_mask_at=freeze_mask_at, passive_weight_decay=0.0,
      zero_passive_at=zero_passive_at)
  inner = optax.chain(
      make_direction(freeze_mask_at=freeze_mask_at),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate))
  if zero_passive_at is None:
    return inner
  return zeroing_passive(inner, freeze_mask_at, zero_passive_at)


def zeroing_passive(inner: optax.GradientTransformation, freeze_mask_at: Any,
                     zero_passive_at: Any) -> optax.GradientTransformation:
  """``inner``'s updates, with each passive weight scaled by
  `_lossless.passive_scale` on top of its update: exactly zero from
  ``zero_passive_at`` on. The passive set is the ranking's mask, read from
  ``inner``'s state (``state[0][0]``: the ranking leads ``inner``'s chain),
  so the state is ``inner``'s."""
  if freeze_mask_at is None:
    raise ValueError(
        "`zero_passive_at` needs `freeze_mask_at`: passive weights are shrunk "
        "to zero only once the active set is fixed.")
  zero_passive_at = _validation.check_int("zero_passive_at", zero_passive_at,
                                          low=1)
  if (not isinstance(freeze_mask_at, jax.core.Tracer)
      and not isinstance(zero_passive_at, jax.core.Tracer)
      and zero_passive_at <= freeze_mask_at):
    raise ValueError(
        f"`zero_passive_at` must be after `freeze_mask_at` ({freeze_mask_at}); "
        f"got {zero_passive_at}.")

  def update_fn(updates, state, params=None):
    updates, state = inner.update(updates, state, params)
    ranking = state[0][0]
    scale = _lossless.passive_scale(ranking.count - 1, freeze_mask_at,
                                    zero_passive_at)
    updates = jax.tree.map(
        lambda u, w, active: jnp.where(
            active, u, (scale * (w + u) - w).astype(u.dtype)),
        updates, params, ranking.mask)
    return updates, state

  return optax.GradientTransformation(inner.init, update_fn)


def all_true_like(params: chex.ArrayTree) -> chex.ArrayTree:
  """A bool pytree of True like ``params`` (mapped, so that
  ``optax.tree.map_params`` placeholders pass through)."""
  return jax.tree.map(lambda w: jnp.ones_like(w, dtype=bool), params)


def check_update_args(name: str, updates: chex.ArrayTree,
                      params: chex.ArrayTree | None) -> None:
  """``update`` needs the params, and updates like them."""
  if params is None:
    raise ValueError(
        f"{name} needs the params: call `update(grads, opt_state, params)`.")
  check_like_params(updates, params)
