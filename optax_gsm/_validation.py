"""Early, named checks of hyper-parameters that may be traced.

Under ``jit`` or ``optax.inject_hyperparams`` a hyper-parameter can be a
tracer; its value cannot be checked at trace time, so these checks apply to
concrete values only and each caller documents what happens to traced ones.
"""

import math
from typing import Any

import jax
import numpy as np


def concrete_float(value: Any) -> float | None:
  """``float(value)`` when it is known at trace time, else None."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return float(np.asarray(value))
  except (TypeError, ValueError):
    return None


def check_range(name: str, value: Any, *, low: float = -math.inf,
                high: float = math.inf, low_inclusive: bool = True,
                high_inclusive: bool = True) -> None:
  """Raises ValueError naming ``name`` when a concrete value is out of range."""
  number = concrete_float(value)
  if number is None:
    return
  above_low = number >= low if low_inclusive else number > low
  below_high = number <= high if high_inclusive else number < high
  if math.isnan(number) or not (above_low and below_high):
    left = "[" if low_inclusive else "("
    right = "]" if high_inclusive else ")"
    raise ValueError(
        f"`{name}` must be in {left}{low}, {high}{right}; got {value!r}.")
