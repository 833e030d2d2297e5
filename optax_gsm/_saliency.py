"""Saliency: how important each parameter is to the loss right now.

GSM ranks parameters by the first-order Taylor estimate of the loss change
if the parameter were set to zero, ``T = |dL/dw * w|`` (Ding et al., 2019,
Eq. 4); the paper's ablation also uses the magnitude ``|w|``. Scores are
float32, whatever the parameters' dtype, so low-precision products neither
round nor overflow before ranking.
"""

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

SaliencyFn = Callable[[chex.ArrayTree, chex.ArrayTree], chex.ArrayTree]


def taylor_saliency(grads: chex.ArrayTree,
                    params: chex.ArrayTree) -> chex.ArrayTree:
  """``|g * w|``: the first-order Taylor estimate of removing each weight."""
  return jax.tree.map(
      lambda g, w: jnp.abs(g.astype(jnp.float32) * w.astype(jnp.float32)),
      grads, params)


def magnitude_saliency(grads: chex.ArrayTree,
                       params: chex.ArrayTree) -> chex.ArrayTree:
  """``|w|``: weight magnitude, ignoring the gradients."""
  del grads
  return jax.tree.map(lambda w: jnp.abs(w.astype(jnp.float32)), params)


_BY_NAME = {"taylor": taylor_saliency, "magnitude": magnitude_saliency}


def resolve_saliency(saliency: str | SaliencyFn) -> SaliencyFn:
  """The saliency function for "taylor", "magnitude" or a callable."""
  if callable(saliency):
    return saliency
  if saliency not in _BY_NAME:
    raise ValueError(
        f"`saliency` must be one of {sorted(_BY_NAME)} or a callable "
        f"(grads, params) -> scores; got {saliency!r}.")
  return _BY_NAME[saliency]
