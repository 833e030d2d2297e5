"""N:M sparsity: exactly n of every m consecutive weights along the input.

NVIDIA's sparse tensor cores (Ampere and later) run a matmul up to 2x faster
when every group of 4 consecutive weights along the reduction axis holds at
most 2 non-zeros (2:4). With ``n_of_m=(n, m)`` GSM's ranking becomes local:
in every group of ``m`` consecutive entries along the input axis of a
prunable kernel (axis -2: a Flax Dense kernel is ``(in, out)``, a Conv
kernel ``(h, w, in, out)``), the ``n`` with the largest saliency are active;
the others decay (SR-STE, Zhou et al., ICLR 2021, trains such masks with a
straight-through estimator instead). Ties go to the earlier entry.

`n_of_m_gsm` is `gsm` with this ranking instead of the global top-Q; its
state is the same `GSMState`, so `prune`, `active_mask` and the reports read
the pattern from ``opt_state=``.
"""

import chex
import jax
import numpy as np
import optax

from optax_gsm import _active_set, _gsm, _prunable, _rules, _saliency
from optax_gsm._rules import check_n_of_m, check_shape


def _ranking(n_of_m: tuple[int, int],
             prunable: _prunable.Prunable) -> _gsm.Ranking:
  def ranking(params, step):
    del step  # the pattern fixes Q
    flags = _prunable.resolve_prunable(prunable, params)
    for path, leaf in zip(
        _prunable.prunable_leaves(flags, _prunable.leaf_paths(params)),
        _prunable.prunable_leaves(flags, jax.tree.leaves(params))):
      check_shape(np.shape(leaf), n_of_m[1], repr(path))
    ranked = _prunable.prunable_leaves(flags, jax.tree.leaves(params))
    return flags, _rules.n_of_m_count([np.shape(w) for w in ranked],
                                      n_of_m), _rules.Rule(n_of_m=n_of_m)
  return ranking


def n_of_m_gsm(
    n_of_m: tuple[int, int],
    *,
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
) -> optax.GradientTransformation:
  r"""GSM with an N:M active set: ``n`` of every ``m`` entries along the input.

  .. math::
    z \leftarrow \beta z + \eta w + B \odot g, \qquad
    B = \text{the } n \text{ most salient of every } m
        \text{ consecutive entries along axis } -2

  everything else as in `gsm` (momentum, decays, ``freeze_mask_at``); the
  ratio is ``m / n``. 2:4 runs on sparse tensor cores.

  References:
    Ding et al., "Global Sparse Momentum SGD for Pruning Very Deep Neural
    Networks", NeurIPS 2019; Mishra et al., "Accelerating Sparse Deep Neural
    Networks", 2021, https://arxiv.org/abs/2104.08378 (2:4 sparsity).

  Example::

    >>> import jax.numpy as jnp, optax_gsm
    >>> params = {"dense": {"kernel": jnp.ones((8, 3))}}
    >>> tx = optax_gsm.n_of_m_gsm((2, 4))
    >>> state = tx.init(params)
    >>> grads = {"dense": {"kernel": jnp.arange(24.0).reshape(8, 3)}}
    >>> _, state = tx.update(grads, state, params)
    >>> optax_gsm.active_mask(state, params)["dense"]["kernel"][:4, 0].tolist()
    [False, False, True, True]

  Args:
    n_of_m: ``(n, m)`` ints with ``1 <= n <= m``; the input axis (-2) of
      every prunable kernel must be a multiple of ``m``.
    momentum: see `gsm`.
    nesterov: see `gsm`.
    weight_decay: see `gsm`.
    passive_weight_decay: see `gsm`.
    unprunable_weight_decay: see `gsm`.
    saliency: see `gsm`.
    prunable: see `gsm`.
    mask_update_every: see `gsm`.
    freeze_mask_at: see `gsm` (the freeze keeps the magnitude N:M pattern).
    momentum_dtype: see `gsm`.

  Returns:
    An ``optax.GradientTransformation``; its ``update`` needs ``params``.
  """
  n_of_m = check_n_of_m(n_of_m)
  decays = _active_set.check_decays(weight_decay, passive_weight_decay,
                                    unprunable_weight_decay)
  return _active_set.with_momentum(
      _gsm.ranked_active_set("n_of_m_gsm", _ranking(n_of_m, prunable),
                             saliency, decays, mask_update_every,
                             freeze_mask_at),
      momentum, nesterov, momentum_dtype)


def n_of_m_gsm_sgd(
    learning_rate: optax.ScalarOrSchedule,
    n_of_m: tuple[int, int],
    *,
    total_steps: int | None = None,
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
) -> optax.GradientTransformation:
  r"""`n_of_m_gsm` chained with ``optax.scale_by_learning_rate``.

  .. math::
    w_{t+1} = w_t - \alpha_t z_{t+1}

  ``total_steps`` derives a lossless freeze and passive decay, as in
  `gsm_sgd`.

  Args:
    learning_rate: alpha >= 0, or a schedule ``step -> alpha``.
    n_of_m: see `n_of_m_gsm`.
    total_steps: see `gsm_sgd`.
    momentum: see `gsm`.
    nesterov: see `gsm`.
    weight_decay: see `gsm`.
    passive_weight_decay: see `gsm`.
    unprunable_weight_decay: see `gsm`.
    saliency: see `gsm`.
    prunable: see `gsm`.
    mask_update_every: see `gsm`.
    freeze_mask_at: see `gsm`.
    zero_passive_at: see `gsm_sgd`.
    momentum_dtype: see `gsm`.

  Returns:
    An ``optax.GradientTransformation``.
  """
  return _active_set.with_learning_rate(
      n_of_m_gsm, learning_rate, total_steps, momentum=momentum,
      weight_decay=weight_decay, freeze_mask_at=freeze_mask_at,
      passive_weight_decay=passive_weight_decay,
      zero_passive_at=zero_passive_at, n_of_m=n_of_m,
      nesterov=nesterov, unprunable_weight_decay=unprunable_weight_decay,
      saliency=saliency, prunable=prunable,
      mask_update_every=mask_update_every, momentum_dtype=momentum_dtype)
