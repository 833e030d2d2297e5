"""N:M sparsity: exactly n of every m consecutive weights along the input.

NVIDIA's sparse tensor cores (Ampere and later) run a matmul up to 2x faster
when every group of 4 consecutive weights along the reduction axis holds at
most 2 non-zeros (2:4). With ``n_of_m=(n, m)`` GSM's ranking becomes local:
in every group of ``m`` consecutive entries along the input axis of a
prunable kernel (axis -2: a Flax Dense kernel is ``(in, out)``, a Conv
kernel ``(h, w, in, out)``), the ``n`` with the largest saliency are active;
the others decay (SR-STE, Zhou et al., ICLR 2021, trains such masks with a
straight-through estimator instead). Ties go to the earlier entry.
"""

import jax
import jax.numpy as jnp
import numpy as np


def check_n_of_m(n_of_m) -> tuple[int, int]:
  """``(n, m)`` as ints with ``1 <= n <= m``, or a ValueError."""
  try:
    n, m = n_of_m
  except (TypeError, ValueError):
    raise ValueError(
        f"`n_of_m` must be a pair (n, m) of ints; got {n_of_m!r}.") from None
  if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
             for v in (n, m)) or not 1 <= n <= m:
    raise ValueError(
        f"`n_of_m`=({n!r}, {m!r}) needs ints with 1 <= n <= m.")
  return int(n), int(m)


def check_shape(shape: tuple[int, ...], m: int, name: str = "a kernel"):
  """The input axis (-2) must exist and be a multiple of ``m``."""
  if len(shape) < 2 or shape[-2] % m:
    raise ValueError(
        f"`n_of_m` with m={m} needs the input axis (-2) of every prunable "
        f"kernel to be a multiple of {m}; {name} has shape {shape}.")


def n_of_m_mask(scores: jax.Array, n: int, m: int) -> jax.Array:
  """True at the ``n`` largest of every ``m`` consecutive entries along
  axis -2 (ties to the earlier entry; NaN lowest)."""
  check_shape(scores.shape, m)
  moved = jnp.moveaxis(scores.astype(jnp.float32), -2, -1)
  grouped = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
  grouped = jnp.where(jnp.isnan(grouped), -jnp.inf, grouped)
  order = jnp.argsort(-grouped, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)
  kept = (rank < n).reshape(moved.shape)
  return jnp.moveaxis(kept, -1, -2)
