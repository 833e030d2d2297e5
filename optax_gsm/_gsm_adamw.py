"""GSM with AdamW: the global top-Q active set in front of Adam.

Transformers are trained with AdamW, not momentum SGD. GSM's idea carries
over unchanged: only the Q most salient gradients reach the optimizer, the
rest of the prunable weights get no gradient, only decay, and the final
prune removes them. Here the masked gradient feeds Adam's moments (a passive
weight's moments decay, as GSM's momentum does), AdamW's decoupled weight
decay follows, and with ``total_steps`` the passive weights are shrunk to
exact zeros by the same cubic ramp as in `gsm_sgd` (`lossless_settings`), so
the prune changes nothing.
"""

import functools
from typing import Any

import chex
import optax

from optax_gsm import (
  _active_set,
  _compression_ratio,
  _density_bounds,
  _gsm,
  _prunable,
  _saliency,
  _validation,
)


def scale_by_gsm_adam(
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: chex.ArrayDType | None = None,
    nesterov: bool = False,
    saliency: str | _saliency.SaliencyFn = "taylor",
    prunable: _prunable.Prunable = None,
    mask_update_every: int = 1,
    freeze_mask_at: int | None = None,
    min_density: _density_bounds.Density = None,
    max_density: _density_bounds.Density = None,
) -> optax.GradientTransformation:
  r"""Adam's direction of the GSM-masked gradient.

  .. math::
    d_t = B_t \odot g_t, \qquad
    u_t = \mathrm{Adam}_{\beta_1, \beta_2, \epsilon}(d_t)

  with ``B_t`` the global top-Q of the saliency (``|g * w|``), exactly as in
  `gsm`; leaves it does not rank pass their whole gradient. The state is
  ``(GSMState, optax.ScaleByAdamState)``, so `prune`, `active_mask` and the
  reports read the active set from it.

  References:
    Ding et al., "Global Sparse Momentum SGD for Pruning Very Deep Neural
    Networks", NeurIPS 2019; Kingma and Ba, "Adam: A Method for Stochastic
    Optimization", ICLR 2015.

  Example::

    >>> import jax.numpy as jnp, optax_gsm
    >>> params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
    >>> tx = optax_gsm.scale_by_gsm_adam(4.0)
    >>> grads = {"dense": {"kernel": jnp.arange(12.0).reshape(4, 3),
    ...                    "bias": jnp.ones(3)}}
    >>> _, state = tx.update(grads, tx.init(params), params)
    >>> int(optax_gsm.active_mask(state, params)["dense"]["kernel"].sum())
    3

  Args:
    compression_ratio: see `gsm`.
    sparsity: see `gsm`.
    b1: Adam's first-moment decay, in [0, 1).
    b2: Adam's second-moment decay, in [0, 1).
    eps: added to the root of the second moment, >= 0.
    eps_root: added inside the root, >= 0.
    mu_dtype: dtype of the first moment; None for the params' dtype.
    nesterov: Nesterov momentum in Adam (NAdam).
    saliency: see `gsm`.
    prunable: see `gsm`.
    mask_update_every: see `gsm`.
    freeze_mask_at: see `gsm`.
    min_density: see `gsm`.
    max_density: see `gsm`.

  Returns:
    An ``optax.GradientTransformation``; its ``update`` needs ``params``.
  """
  for name, value in (("b1", b1), ("b2", b2)):
    _validation.check_range(name, value, low=0.0, high=1.0,
                            high_inclusive=False)
  _validation.check_range("eps", eps, low=0.0)
  _validation.check_range("eps_root", eps_root, low=0.0)
  no_decay = _active_set.check_decays(0.0, 0.0, 0.0)
  ranking = _gsm.global_ranking(compression_ratio, sparsity, prunable,
                                min_density, max_density)
  return optax.chain(
      _gsm.ranked_active_set("scale_by_gsm_adam", ranking, saliency,
                             no_decay, mask_update_every, freeze_mask_at),
      optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype,
                          nesterov=nesterov))


def gsm_adamw(
    learning_rate: optax.ScalarOrSchedule,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    total_steps: int | None = None,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: chex.ArrayDType | None = None,
    weight_decay: float = 1e-4,
    mask: Any = None,
    nesterov: bool = False,
    saliency: str | _saliency.SaliencyFn = "taylor",
    prunable: _prunable.Prunable = None,
    mask_update_every: int = 1,
    freeze_mask_at: int | None = None,
    zero_passive_at: int | None = None,
    min_density: _density_bounds.Density = None,
    max_density: _density_bounds.Density = None,
) -> optax.GradientTransformation:
  r"""GSM AdamW: `scale_by_gsm_adam`, AdamW's decoupled weight decay and the
  learning rate.

  .. math::
    w_{t+1} = w_t - \alpha_t \big(\mathrm{Adam}(B_t \odot g_t)
      + \lambda w_t\big)

  as ``optax.adamw`` with the gradient masked to GSM's active set ``B_t``.
  Give ``total_steps`` for a final prune that changes nothing: the active
  set is then frozen at 20% of the steps and the passive weights shrink to
  exact zeros by 60% of them (a cubic ramp that does not depend on the
  learning rate, `lossless_settings`); an explicit ``freeze_mask_at`` or
  ``zero_passive_at`` wins.

  Example::

    >>> import jax, jax.numpy as jnp, optax, optax_gsm
    >>> params = {"dense": {"kernel": jnp.linspace(-1, 1, 60).reshape(6, 10),
    ...                     "bias": jnp.zeros(10)}}
    >>> tx = optax_gsm.gsm_adamw(1e-2, 10.0, total_steps=50)
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> for _ in range(50):
    ...   updates, state = update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> pruned, kept = optax_gsm.prune(params, opt_state=state)
    >>> int(kept["dense"]["kernel"].sum()), int((params["dense"]["kernel"] != 0).sum())
    (6, 6)

  Args:
    learning_rate: alpha >= 0, or a schedule ``step -> alpha``.
    compression_ratio: see `gsm`.
    total_steps: None, or the int number of steps of the run: derive a
      lossless ``freeze_mask_at`` and ``zero_passive_at``.
    sparsity: see `gsm`.
    b1: see `scale_by_gsm_adam`.
    b2: see `scale_by_gsm_adam`.
    eps: see `scale_by_gsm_adam`.
    eps_root: see `scale_by_gsm_adam`.
    mu_dtype: see `scale_by_gsm_adam`.
    weight_decay: lambda >= 0, AdamW's decoupled decay (all weights).
    mask: which leaves decay, as ``optax.adamw``'s ``mask`` (None: all).
    nesterov: see `scale_by_gsm_adam`.
    saliency: see `gsm`.
    prunable: see `gsm`.
    mask_update_every: see `gsm`.
    freeze_mask_at: see `gsm`.
    zero_passive_at: see `gsm_sgd`.
    min_density: see `gsm`.
    max_density: see `gsm`.

  Returns:
    An ``optax.GradientTransformation``.
  """
  return _active_set.with_adamw(
      functools.partial(
          scale_by_gsm_adam, compression_ratio, sparsity=sparsity, b1=b1,
          b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
          nesterov=nesterov, saliency=saliency, prunable=prunable,
          mask_update_every=mask_update_every, min_density=min_density,
          max_density=max_density),
      learning_rate, total_steps, b1=b1, weight_decay=weight_decay,
      mask=mask, freeze_mask_at=freeze_mask_at,
      zero_passive_at=zero_passive_at)
