"""Per-leaf density bounds on GSM's global top-Q ranking.

A global ranking may empty a small layer that the network cannot do
without (the first conv, the classifier). ``min_density`` and
``max_density`` (a float for every prunable leaf, or a pytree of floats
like the params) bound each leaf's kept share: leaf ``l`` with ``n_l``
entries keeps ``k_l`` of them with

.. math::
  \\lceil d^{min}_l n_l \\rceil \\le k_l \\le \\lfloor d^{max}_l n_l \\rfloor,
  \\qquad \\sum_l k_l = Q

and otherwise the global ranking holds: there is one threshold ``tau``
such that every leaf within its bounds keeps exactly its entries above
``tau`` (plus ties at ``tau``, to earlier leaves first), a leaf at its lower
bound keeps its own top ``lo_l`` and one at its upper bound its own top
``hi_l``. ``tau`` is found by bisection over the 2**32 float keys (32
counting passes), then each leaf selects its exact top ``k_l`` (`select_top`,
ties by position).
"""

import math
from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from optax_gsm import _selection, _validation

Density = float | chex.ArrayTree | None
_KEY_BITS = 32


def _per_leaf(name: str, density: Density, params: chex.ArrayTree,
              default: float) -> list[float]:
  leaves = jax.tree.leaves(params)
  if density is None:
    values = [default] * len(leaves)
  elif isinstance(density, (int, float)) and not isinstance(density, bool):
    values = [float(density)] * len(leaves)
  else:
    try:
      values = jax.tree.structure(params).flatten_up_to(density)
    except (ValueError, TypeError) as error:
      raise ValueError(
          f"`{name}` must be a float or a pytree of floats like the params; "
          f"got {jax.tree.structure(density)}.") from error
    values = [default if v is None else v for v in values]
  for value in values:
    _validation.check_range(name, value, low=0.0, high=1.0)
  return [float(v) for v in values]


def leaf_bounds(params: chex.ArrayTree, flags: Sequence[bool],
                min_density: Density,
                max_density: Density) -> tuple[np.ndarray, np.ndarray]:
  """``(lo, hi)``: the kept-count bounds of every prunable leaf."""
  lows = _per_leaf("min_density", min_density, params, 0.0)
  highs = _per_leaf("max_density", max_density, params, 1.0)
  lo, hi = [], []
  for leaf, flag, low, high in zip(jax.tree.leaves(params), flags, lows,
                                   highs):
    if not flag:
      continue
    if low > high:
      raise ValueError(f"`min_density`={low} is above `max_density`={high} "
                       "for a leaf.")
    size = np.size(leaf)
    lo.append(math.ceil(low * size - 1e-9))
    hi.append(math.floor(high * size + 1e-9))
  return np.asarray(lo, np.int64), np.asarray(hi, np.int64)


def check_feasible(lo: np.ndarray, hi: np.ndarray, q: Any) -> None:
  """A concrete Q must lie within ``[sum lo, sum hi]``."""
  q = _validation.concrete_float(q)
  if q is None:
    return
  if q < lo.sum():
    raise ValueError(
        f"`min_density` keeps at least {int(lo.sum())} entries, more than "
        f"the {int(q)} the compression ratio allows: lower `min_density` "
        "(its leaves' shares must sum to at most 1/C) or the ratio.")
  if q > hi.sum():
    raise ValueError(
        f"`max_density` keeps at most {int(hi.sum())} entries, fewer than "
        f"the {int(q)} the compression ratio keeps: raise `max_density` or "
        "the ratio.")


def _clipped_counts(keys, threshold, lo, hi):
  counts = jnp.stack([
      _selection.count_true([k >= threshold], tuple(range(k.ndim)))[0]
      for k in keys])
  return jnp.clip(counts, lo, hi)


def bounded_top_q_mask(scores: list[jax.Array], q: Any, lo: np.ndarray,
                       hi: np.ndarray) -> list[jax.Array]:
  """Masks of exactly ``clip(q, sum lo, sum hi)`` entries within bounds."""
  keys = lax.optimization_barrier(
      [_selection.ordered_key(jnp.asarray(s)) for s in scores])
  lo = jnp.asarray(lo, jnp.int32)
  hi = jnp.asarray(hi, jnp.int32)
  q = jnp.clip(jnp.asarray(q, jnp.int32), lo.sum(), hi.sum())

  def total(threshold):
    return _clipped_counts(keys, threshold, lo, hi).sum()

  def bisect(_, bracket):
    low, high = bracket  # total(low) >= q > total(high)
    middle = (low >> 1) + (high >> 1) + (low & high & 1)
    enough = total(middle) >= q
    return (jnp.where(enough, middle, low), jnp.where(enough, high, middle))

  low, high = lax.fori_loop(
      0, _KEY_BITS, bisect,
      (jnp.int32(_selection.MIN_KEY), jnp.int32(_selection.MAX_KEY)))
  at_low = _clipped_counts(keys, low, lo, hi)
  above = _clipped_counts(keys, high, lo, hi)
  # Entries tied at `low` go to earlier leaves first.
  ties = at_low - above
  wanted = q - above.sum()
  before = jnp.cumsum(ties) - ties
  counts = above + jnp.clip(wanted - before, 0, ties)
  # Every finite key is below MAX_KEY, so total(MAX_KEY) = sum(lo): when
  # q == sum(lo) the bisection never moves `high` and each leaf keeps lo.
  counts = jnp.where(q <= lo.sum(), lo, counts)
  return [_selection.select_top(s, k).mask for s, k in zip(scores, counts)]
