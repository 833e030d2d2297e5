"""Early, named checks of hyper-parameters that may be traced.

Under ``jit`` or ``optax.inject_hyperparams`` a hyper-parameter can be a
tracer; its value cannot be checked at trace time, so these checks apply to
concrete values only (a traced one must still have a numeric dtype) and each
caller documents what happens to traced ones.
"""

import math
import numbers
from typing import Any

import jax
import numpy as np


def _is_real_number(value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, numbers.Real):
    return True
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    dtype = value.dtype
    return np.ndim(value) == 0 and (np.issubdtype(dtype, np.floating)
                                    or np.issubdtype(dtype, np.integer))
  return False


def check_number(name: str, value: Any) -> None:
  """Raises TypeError naming ``name`` unless ``value`` is a real scalar.

  Strings (``'0.9'``), bools and arrays of other dtypes or shapes are refused
  here rather than failing later, inside the update, without the name.
  """
  if not _is_real_number(value):
    raise TypeError(
        f"`{name}` must be a real number (a Python or NumPy/JAX scalar); got "
        f"{value!r} of type {type(value).__name__}.")


def check_bool(name: str, value: Any) -> None:
  """Raises TypeError naming ``name`` unless ``value`` is a bool."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"`{name}` must be True or False; got {value!r}.")


def concrete_float(value: Any) -> float | None:
  """``float(value)`` when it is a number known at trace time, else None."""
  if isinstance(value, jax.core.Tracer) or not _is_real_number(value):
    return None
  return float(np.asarray(value))


def check_range(name: str, value: Any, *, low: float = -math.inf,
                high: float = math.inf, low_inclusive: bool = True,
                high_inclusive: bool = True) -> None:
  """Raises ValueError naming ``name`` when a concrete value is out of range,
  TypeError when it is not a real number."""
  check_number(name, value)
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


def check_int(name: str, value: Any, *, low: int) -> int | Any:
  """An integer hyper-parameter >= ``low``: a Python int when concrete.

  A traced value (under ``optax.inject_hyperparams``) must have an integer
  dtype: a float such as 2.5 would silently never equal a step count.

  Returns:
    ``int(value)`` for a concrete value, the tracer otherwise.
  """
  if isinstance(value, jax.core.Tracer):
    if not np.issubdtype(value.dtype, np.integer):
      raise ValueError(f"`{name}` must be an int >= {low}; got a traced "
                       f"value of dtype {value.dtype}.")
    return value
  integral = not isinstance(value, (bool, np.bool_)) and (
      isinstance(value, numbers.Integral)
      or (_is_real_number(value)
          and np.issubdtype(np.asarray(value).dtype, np.integer)))
  if not integral or int(value) < low:
    raise ValueError(f"`{name}` must be an int >= {low}; got {value!r}.")
  return int(value)
