"""Compression ratio, sparsity and the number of active entries Q.

GSM keeps ``Q = floor(N / C)`` of the ``N`` prunable entries active, C the
compression ratio (Ding et al., 2019, Sec. 3). Users of other pruning
libraries think in sparsity ``s`` (the fraction of zeros), ``C = 1 / (1 - s)``.
Either may be a constant or a schedule ``step -> value``.
"""

import math
from collections.abc import Callable
from typing import Any

import chex
import jax.numpy as jnp
import numpy as np

from optax_gsm import _validation

Schedule = Callable[[chex.Numeric], chex.Numeric]
RatioOrSchedule = float | chex.Numeric | Schedule

# Q = floor(N / C) is computed with this relative slack, so that a ratio
# written as a sparsity (0.9 -> C = 10.000000000000002) keeps the Q the user
# means (N / 10), in float64 constants and float32 traced values alike.
_RELATIVE_SLACK = 2.0**-20


def compression_schedule(
    compression_ratio: RatioOrSchedule | None = None,
    sparsity: RatioOrSchedule | None = None,
) -> Schedule:
  """Checks the user's ratio or sparsity and returns ``step -> ratio``.

  Args:
    compression_ratio: C >= 1, or a schedule ``step -> C``.
    sparsity: s in [0, 1), or a schedule ``step -> s``; C = 1 / (1 - s).

  Returns:
    A function of the step count returning the compression ratio.
  """
  if (compression_ratio is None) == (sparsity is None):
    raise ValueError(
        "Give exactly one of `compression_ratio` (C >= 1: keep 1/C of the "
        "prunable weights) and `sparsity` (s in [0, 1): the fraction of "
        f"zeros); got compression_ratio={compression_ratio!r}, "
        f"sparsity={sparsity!r}.")
  if compression_ratio is not None:
    _check_ratio(compression_ratio)
    return _as_schedule(compression_ratio)
  _check_sparsity(sparsity)
  sparsity_at = _as_schedule(sparsity)
  return lambda step: 1.0 / (1.0 - sparsity_at(step))


def _as_schedule(value: RatioOrSchedule) -> Schedule:
  return value if callable(value) else (lambda step: value)


def _check_ratio(value: Any) -> None:
  if not callable(value):
    _validation.check_range("compression_ratio", value, low=1.0)


def _check_sparsity(value: Any) -> None:
  if not callable(value):
    _validation.check_range("sparsity", value, low=0.0, high=1.0,
                            high_inclusive=False)


def num_active(num_prunable: int, compression_ratio: chex.Numeric) -> Any:
  """``Q = floor(N / C)``: how many of ``N`` prunable entries stay active.

  A concrete ratio gives a Python int and is checked: C >= 1 and Q >= 1, or
  a ValueError. A traced ratio (a schedule under ``jit``, or
  ``optax.inject_hyperparams``) gives an int32 array computed in float32 and
  cannot be checked: a NaN or C < 1 keeps every entry (Q = N) and
  ``N / C < 1`` keeps one (Q = 1).

  Args:
    num_prunable: N, the number of prunable entries.
    compression_ratio: C.

  Returns:
    Q, a Python int for a concrete ratio, else an int32 array.
  """
  ratio = _validation.concrete_float(compression_ratio)
  if ratio is not None:
    _validation.check_range("compression_ratio", ratio, low=1.0)
    q = math.floor(num_prunable / ratio * (1.0 + _RELATIVE_SLACK))
    q = min(q, num_prunable)
    if q < 1:
      raise ValueError(
          f"`compression_ratio`={ratio!r} keeps floor({num_prunable} / "
          f"{ratio!r}) = 0 of the {num_prunable} prunable entries; it must be "
          f"in [1, {num_prunable}].")
    return q
  ratio = jnp.asarray(compression_ratio, jnp.float32)
  q = jnp.floor(np.float32(num_prunable) / ratio
                * np.float32(1.0 + _RELATIVE_SLACK))
  q = jnp.where(jnp.isnan(q) | (ratio < 1.0), num_prunable, q)
  return jnp.clip(q, 1, num_prunable).astype(jnp.int32)
