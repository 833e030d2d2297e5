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
``hi_l``. ``tau`` and then each leaf's own threshold for its ``k_l`` are found by
counting passes that narrow a bracket per leaf (four thresholds a pass, about
14 passes each), and the ties at each leaf's threshold are taken in row-major
order.
"""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from optax_gsm import _selection, _validation

Density = float | chex.ArrayTree | None


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


class _Search(NamedTuple):
  brackets: _selection.Bracket
  want: jax.Array  # each leaf's kept count, once the global search is done
  global_done: jax.Array


def _thresholds(blocks: _selection.Blocks, sizes: jax.Array, q: jax.Array,
                lo: jax.Array, hi: jax.Array) -> _Search:
  """The global threshold (its bracket in every row alike), then each
  leaf's count ``k_l`` and its own threshold, in one loop.

  Global: ``sum_l clip(count_l(low), lo, hi) >= q > ... (high)``, the
  leaves' counts at both ends kept, until the bracket is adjacent or exact;
  then ``k_l``: the clipped counts above ``high`` plus the entries at
  ``low`` to the earlier leaves first. Per leaf: ``count_l(low_l) >= k_l >
  count_l(high_l)``, until adjacent or exact.
  """
  num = sizes.shape[0]
  start = _selection.Bracket(
      low=jnp.full([num], _selection.MIN_KEY, jnp.int32),
      high=jnp.full([num], _selection.MAX_KEY, jnp.int32),
      low_count=sizes, high_count=jnp.zeros([num], jnp.int32))

  def leaf_done(search):
    b = search.brackets
    return (b.low_count == search.want) | _selection.adjacent(b.low, b.high)

  def global_done(brackets):
    total = jnp.clip(brackets.low_count, lo, hi).sum()
    return (total == q) | _selection.adjacent(brackets.low[0], brackets.high[0])

  def unfinished(search):
    return ~search.global_done | ~jnp.all(leaf_done(search))

  def one_pass(search):
    b = search.brackets
    probes = _selection.even_probes(b.low, b.high)
    counts = _selection.count_rows(
        blocks, lambda k, rows, j: k >= rows(probes[:, j]))
    # Global: every row holds the same bracket and reaches alike.
    total = jnp.clip(counts, lo[:, None], hi[:, None]).sum(axis=0)
    reached = jnp.where(search.global_done, counts >= search.want[:, None],
                        jnp.broadcast_to(total >= q, counts.shape))
    b = _selection.narrow(b, probes, counts, reached)
    now_done = ~search.global_done & global_done(b)
    # Entries between the ends go to earlier leaves first.
    above = jnp.clip(b.high_count, lo, hi)
    between = jnp.clip(b.low_count, lo, hi) - above
    before = jnp.cumsum(between) - between
    want = above + jnp.clip(q - above.sum() - before, 0, between)
    return _Search(
        brackets=jax.tree.map(lambda fresh, kept: jnp.where(now_done, fresh,
                                                            kept), start, b),
        want=jnp.where(now_done, want, search.want),
        global_done=search.global_done | now_done)

  first = _Search(start, jnp.zeros([num], jnp.int32), jnp.asarray(False))
  return lax.while_loop(unfinished, one_pass, first)


def _tie_ends(blocks: _selection.Blocks, sizes: jax.Array,
              threshold: jax.Array, take: jax.Array) -> jax.Array:
  """Per leaf, the row-major index just past its ``take``-th entry equal to
  ``threshold`` (0 when take is 0)."""

  def count_below(passes, probes):
    stored, one = _selection.opaque_one(blocks.keys, passes)

    def tied_before(k, rows, j):
      index = _selection.row_major_index(k.shape[1:], one)
      return (k == rows(threshold)) & (index < rows(probes[:, j]))

    return _selection.count_rows(blocks._replace(keys=stored), tied_before)

  return _selection.tie_ends(take, sizes, count_below)[0]


def bounded_top_q_mask(scores: list[jax.Array], q: Any, lo: np.ndarray,
                       hi: np.ndarray) -> list[jax.Array]:
  """Masks of exactly ``clip(q, sum lo, sum hi)`` entries within bounds.

  Three searches, each counting ``PROBES_PER_PASS`` thresholds per pass over every
  leaf: the global threshold, then each leaf's own threshold for its count
  (both in one loop, so that its kernels are compiled once), then where
  each leaf's ties at its threshold end in row-major order.
  """
  keys = [_selection.ordered_key(jnp.asarray(s)) for s in scores]
  blocks = _selection.stack_equal_layouts(keys)
  lo = jnp.asarray(lo, jnp.int32)
  hi = jnp.asarray(hi, jnp.int32)
  q = jnp.clip(jnp.asarray(q, jnp.int32), lo.sum(), hi.sum())
  sizes = jnp.asarray([k.size for k in keys], jnp.int32)
  search = _thresholds(blocks, sizes, q, lo, hi)
  want, b = search.want, search.brackets
  exact = b.low_count == want
  # A leaf that keeps nothing: no key exceeds or equals MAX_KEY.
  threshold = jnp.where(want > 0, b.low, _selection.MAX_KEY)
  ends = _tie_ends(blocks, sizes, threshold,
                   jnp.where(exact, 0, want - b.high_count))
  ends = jnp.where(exact, sizes, ends)
  return [(k > threshold[i]) | ((k == threshold[i]) & (
      _selection.row_major_index(k.shape) < ends[i]))
          for i, k in enumerate(keys)]
