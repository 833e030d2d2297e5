"""Which parameters GSM may prune.

The official code prunes dense and convolution kernels (rank 2 and 4) and
trains biases and normalisation parameters as usual; by default every leaf of
rank >= 2 is prunable. Users pass a pytree of bools or a function of the
params to choose otherwise.
"""

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

Prunable = chex.ArrayTree | Callable[[chex.ArrayTree], Any] | None


def default_prunable(params: chex.ArrayTree) -> chex.ArrayTree:
  """True for every leaf of rank >= 2 (dense and conv kernels)."""
  return jax.tree.map(lambda leaf: np.ndim(leaf) >= 2, params)


def resolve_prunable(prunable: Prunable, params: chex.ArrayTree, *,
                     check_dtypes: bool = True) -> list[bool]:
  """The prunable flag of each leaf of ``params``, checked, as Python bools.

  Args:
    prunable: None (rank >= 2), a pytree of bools shaped like ``params``, or
      a function ``params -> pytree of bools``.
    params: the parameters.
    check_dtypes: require prunable leaves to be floating point (off to count
      the entries of a mask).

  Returns:
    One bool per leaf of ``params``, in ``jax.tree.leaves`` order.

  Raises:
    ValueError: the pytree does not match ``params``, a flag is not a bool,
      no leaf is prunable, or a prunable leaf is not floating point.
  """
  if prunable is None:
    flags_tree = default_prunable(params)
  elif callable(prunable):
    flags_tree = prunable(params)
  else:
    flags_tree = prunable
  params_leaves, params_def = jax.tree.flatten(params)
  flags, flags_def = jax.tree.flatten(flags_tree)
  if flags_def != params_def:
    raise ValueError(
        "`prunable` must be a pytree of bools with the structure of the "
        f"params.\nprunable: {flags_def}\nparams:   {params_def}")
  flags = [_as_bool(flag) for flag in flags]
  paths = [jax.tree_util.keystr(path)
           for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  if not any(flags):
    raise ValueError(
        "`prunable` selects no parameter: nothing to prune. The default "
        "prunes every leaf of rank >= 2; params have leaves "
        f"{[(p, np.shape(x)) for p, x in zip(paths, params_leaves)]}.")
  for path, leaf, flag in zip(paths, params_leaves, flags):
    dtype = jnp.result_type(leaf)
    if check_dtypes and flag and not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(
          f"Parameter {path} of dtype {dtype} is marked "
          "prunable; only floating-point parameters can be pruned.")
  return flags


def _as_bool(flag: Any) -> bool:
  if isinstance(flag, (bool, np.bool_)):
    return bool(flag)
  if np.shape(flag) == () and np.result_type(flag) == np.bool_ and not (
      isinstance(flag, jax.core.Tracer)):
    return bool(flag)
  raise ValueError(
      f"`prunable` leaves must be Python bools; got {flag!r}.")
