"""Exact global top-Q selection over a pytree of scores.

GSM ranks every prunable entry of the model in one global ranking and keeps the
``Q`` largest scores active (Ding et al., 2019, Sec. 3). Doing this with
``jax.lax.top_k`` or a sort over the concatenated scores costs hundreds of
times an optimizer update at 10M parameters, and ``top_k`` needs a static
``Q``. This module finds the threshold with a few counting passes instead:

1. Order-preserving integer keys: every float score is mapped to an ``int32``
   whose signed order is the float order (``-0.0`` and ``+0.0`` are one key;
   NaN and +-inf rank below every finite score).
2. A small fixed sample of the keys (``N / 128``, at most ``2**14``
   entries, a strided slice of each leaf, no concatenated copy of the
   scores) estimates where the Q-th largest key lies.
3. Passes over the leaves, each counting ``#{key >= t}`` exactly at four
   thresholds in one variadic reduction, narrow the bracket
   ``count(low) >= Q > count(high)``: first around the sample's estimate,
   then clustered around the key interpolated at rank Q (or at the thirds of
   the bracket and next to its ends when a pass made little progress), until
   ``#{key >= t} == Q`` or the bracket is a single key (a tie). Small
   leaves of one shape and sharding are stacked for these passes, so that
   compile time grows with the number of distinct layouts rather than of
   leaves.
4. Ties at the threshold are broken by position: leaves in
   ``jax.tree.leaves`` order, entries in row-major order, earlier first
   (a bisection over the global positions, five parts a pass, finds the
   position where the ties taken end; it runs only on a tie). So
   exactly ``Q`` entries are selected, deterministically. Each leaf's mask
   reads shared scalars and the leaf's position; GSM passes the positions
   in its state, at run time, so that equally shaped leaves share one
   compiled mask kernel.

Everything runs under ``jit`` with a traced ``Q``, without host round trips,
and uses only element-wise maps, strided slices and reductions over each
leaf, so it partitions over sharded parameters without gathering them: per
counting pass the devices (and processes) exchange a few scalars.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_INT32 = jnp.int32
MIN_KEY = np.iinfo(np.int32).min  # the key of every non-finite score
MAX_KEY = np.iinfo(np.int32).max  # above every finite key (0x7F7FFFFF)
_EXPONENT_BITS = 0x7F800000
_MAGNITUDE_BITS = 0x7FFFFFFF
_MIN_SAMPLE_SIZE = 1 << 10
_MAX_SAMPLE_SIZE = 1 << 14
# Thresholds counted per pass. XLA's CPU backend reduces several operands in
# one variadic reduction about as fast as it reduces one (measured: 4 counts
# of 10M keys in ~1.2 ms, one plain `jnp.sum` ~4 ms), so each pass counts 4.
PROBES_PER_PASS = 4
# Sample standard deviations of the rank estimate spanned by the first pass.
_FIRST_PASS_SPREAD = (-3.0, -0.7, 0.7, 3.0)
# Expected interpolation errors (in sqrt of the bracket's entries) spanned
# by a pass once the target is bracketed.
_INTERPOLATION_SPREAD = (-3.0, -1.0, 1.0, 3.0)
# `_widen`, while one side of the bracket is unbounded: the probes step past
# the bounded side by these multiples of its rank error ...
_WIDEN_STEP_MULTIPLES = (0.5, 1.0, 2.0, 4.0)
# ... and the steps grow by this factor each pass, so that a far target is
# reached in a logarithmic number of passes.
_WIDEN_GROWTH_PER_PASS = 4.0
# Where the sample has no key past the bounded side (ties), the probes nudge
# it by 2**(4 i) keys, i = 0, 1, 2, ... across probes and passes: 1, 16,
# 256, ... keys, capped at 2**30.
_NUDGE_LOG2_STEP = 4
_NUDGE_MAX_LOG2 = 30
# Leaves below this size that share a shape and sharding are stacked for
# the counting passes (`stack_equal_layouts`).
_STACK_MAX_ENTRIES = 1 << 18


def ordered_key(score: jax.Array) -> jax.Array:
  """Maps float scores to int32 keys with the same order (non-finite lowest).

  A finite float's key is its magnitude bits, negated for negative floats
  (so ``-0.0`` and ``+0.0`` are one key). Works on the bit pattern, so
  denormals keep their order even where the hardware flushes them to zero
  in float arithmetic.
  """
  bits = lax.bitcast_convert_type(score.astype(jnp.float32), _INT32)
  magnitude = bits & _MAGNITUDE_BITS
  key = jnp.where(bits < 0, -magnitude, magnitude)
  return jnp.where(magnitude >= _EXPONENT_BITS, MIN_KEY, key)


def _key_to_score(key: jax.Array) -> jax.Array:
  """Inverse of `ordered_key` on finite keys; the non-finite key gives -inf."""
  bits = jnp.where(key < 0, -key | MIN_KEY, key)
  score = lax.bitcast_convert_type(bits, jnp.float32)
  return jnp.where(key == MIN_KEY, -jnp.inf, score)


def count_true(conditions: list[jax.Array],
                axes: tuple[int, ...]) -> list[jax.Array]:
  """``sum(c, axes)`` as int32 for each bool array (of one shape), in one
  variadic reduction.

  XLA's CPU backend fuses the bool-to-int conversion into a reduction of
  two or more operands, but not into a reduction of one: that materialises
  an int32 copy of the operand (4 bytes an entry) and runs an order of
  magnitude slower (benchmarks/update_time.py), and an unused output is
  dropped first. So a lone condition is counted twice in one reduction and
  both counts are used.
  """
  operands = [c.astype(_INT32) for c in conditions]
  if len(operands) == 1:
    twice = lax.reduce((operands[0], operands[0]), (np.int32(0),) * 2,
                       lambda x, y: (x[0] + y[0], x[1] + y[1]), axes)
    return [(twice[0] + twice[1]) // 2]
  return list(lax.reduce(
      tuple(operands), tuple(np.int32(0) for _ in operands),
      lambda x, y: tuple(a + b for a, b in zip(x, y)), axes))


def _count_at_least(keys: list[jax.Array], thresholds: jax.Array) -> jax.Array:
  """``#{key >= t}`` for each of the thresholds, in one pass over each leaf."""
  total = jnp.zeros(thresholds.shape[0], _INT32)
  for k in keys:
    total = total + jnp.stack(count_true(
        [k >= t for t in thresholds], tuple(range(k.ndim))))
  return total


class _Sample(NamedTuple):
  """Sampled keys, sorted descending; each stands for ``weight`` entries."""
  keys: jax.Array
  weight: float


def _sample_strides(shape: tuple[int, ...], num: int) -> list[int]:
  """Per-axis strides leaving about ``num`` entries of a ``shape`` leaf.

  Doubles the stride of the axis with the most remaining entries until the
  strided grid has at most ``2 * num`` entries.
  """
  strides = [1] * len(shape)
  kept = lambda: [-(-d // s) for d, s in zip(shape, strides)]
  while int(np.prod(kept())) > 2 * num:
    axis = int(np.argmax(kept()))
    strides[axis] *= 2
  return strides


def _sample(keys: list[jax.Array]) -> _Sample:
  """A fixed strided sample of every leaf, in proportion to its size.

  ``N / 128`` entries, between ``_MIN_SAMPLE_SIZE`` and ``_MAX_SAMPLE_SIZE``:
  enough to land the first probe within a fraction of a percent of the
  target rank, small enough that sorting it costs less than a counting pass.
  A strided slice, not a gather at scattered indices: on a sharded leaf it
  partitions into each shard's own slice, so only the small sample moves
  between devices.
  """
  total = sum(k.size for k in keys)
  target = min(total,
               max(_MIN_SAMPLE_SIZE, min(_MAX_SAMPLE_SIZE, total // 128)))
  parts = []
  for k in keys:
    num = min(k.size, max(1, round(target * k.size / total)))
    strides = _sample_strides(k.shape, num)
    parts.append(k[tuple(slice(None, None, s) for s in strides)].reshape(-1))
  sample = jnp.sort(jnp.concatenate(parts))[::-1]
  return _Sample(keys=sample, weight=total / sample.size)


def _sample_key_at_count(sample: _Sample, count: jax.Array) -> jax.Array:
  """The sampled key whose estimated ``#{key >= it}`` first reaches count."""
  index = jnp.ceil(count / sample.weight).astype(_INT32) - 1
  return sample.keys[jnp.clip(index, 0, sample.keys.size - 1)]


def _sample_count_at_least(sample: _Sample, key: jax.Array) -> jax.Array:
  """The sample's estimate of ``#{key >= threshold}``."""
  return jnp.sum(sample.keys >= key, dtype=_INT32) * sample.weight


class Bracket(NamedTuple):
  """``low`` on the side of the probes that reach a search's target and
  ``high`` on the other, with what was counted at each: scalars for one
  search, vectors for one search per row."""
  low: jax.Array
  low_count: jax.Array
  high: jax.Array
  high_count: jax.Array


def narrow(bracket: Bracket, probes: jax.Array, counts: jax.Array,
           reached: jax.Array) -> Bracket:
  """The bracket after a pass: the last probe (of each row, along the last
  axis) that reaches the target becomes the low end, the first that does
  not the high end. The probes that reach it must be a prefix."""
  num_low = jnp.sum(reached, axis=-1)
  low_index = jnp.maximum(num_low - 1, 0)[..., None]
  high_index = jnp.minimum(num_low, probes.shape[-1] - 1)[..., None]
  at = lambda rows, index: jnp.take_along_axis(rows, index, axis=-1)[..., 0]
  has_low, has_high = num_low > 0, num_low < probes.shape[-1]
  return Bracket(
      low=jnp.where(has_low, at(probes, low_index), bracket.low),
      low_count=jnp.where(has_low, at(counts, low_index), bracket.low_count),
      high=jnp.where(has_high, at(probes, high_index), bracket.high),
      high_count=jnp.where(has_high, at(counts, high_index),
                           bracket.high_count))


def _unsigned(x: jax.Array) -> jax.Array:
  return lax.bitcast_convert_type(x, jnp.uint32)


def even_probes(low: jax.Array, high: jax.Array) -> jax.Array:
  """``PROBES_PER_PASS`` values per bracket ``[low, high]`` (int32
  vectors), cutting it into parts of at most ``ceil((high - low) /
  (PROBES_PER_PASS + 1))``, above ``low`` and below ``high`` while the
  bracket is wider than one (``low`` otherwise): ``[brackets,
  PROBES_PER_PASS]``. Widths are taken modulo 2**32, so that a bracket over
  the whole int32 range is exact."""
  width = _unsigned(high) - _unsigned(low)
  parts = jnp.uint32(PROBES_PER_PASS + 1)
  step = width // parts + (width % parts != 0).astype(jnp.uint32)
  offsets = jnp.minimum(
      step[:, None] * jnp.arange(1, PROBES_PER_PASS + 1, dtype=jnp.uint32),
      jnp.maximum(width, 1)[:, None] - 1)
  return lax.bitcast_convert_type(_unsigned(low)[:, None] + offsets,
                                  jnp.int32)


def adjacent(low: jax.Array, high: jax.Array) -> jax.Array:
  """Whether the brackets ``[low, high]`` hold at most two int32 values."""
  return _unsigned(high) - _unsigned(low) <= 1


class _Search(NamedTuple):
  """The bracket ``count(low) >= q > count(high)`` and its history."""
  low: jax.Array
  low_count: jax.Array
  high: jax.Array
  high_count: jax.Array
  previous_entries: jax.Array  # low_count - high_count before the last pass
  passes: jax.Array


def _interpolate(search: _Search, counts: jax.Array) -> jax.Array:
  """Keys where the line through the bracket's ends reaches ``counts``.

  Offsets are added to ``low`` in int32, so that narrow brackets keep
  single-key precision; float32 is used only for brackets wider than 2**31.
  """
  fraction = jnp.clip((search.low_count - counts) / (
      search.low_count - search.high_count).astype(jnp.float32), 0.0, 1.0)
  # The bracket's width in keys (not entries); wraps to negative past
  # 2**31 - 1.
  key_span = search.high - search.low
  offset = jnp.minimum(jnp.floor(key_span.astype(jnp.float32) * fraction),
                       key_span.astype(jnp.float32))
  narrow = search.low + offset.astype(_INT32)
  low_f = search.low.astype(jnp.float32)
  wide = low_f + (search.high.astype(jnp.float32) - low_f) * fraction
  wide = jnp.clip(wide, float(MIN_KEY), 2.0**31 - 256.0).astype(_INT32)
  return jnp.where(key_span > 0, narrow, wide)


def _thirds(search: _Search) -> jax.Array:
  """Both keys next to the ends and two inner points: cuts the key range by
  three and settles a tie at either end.

  The inner points are the thirds of the key range, not of the counts: with
  the bracket's counts replaced by 3 at ``low`` and 0 at ``high``,
  `_interpolate` at counts 2 and 1 lands one and two thirds of the way up.
  """
  third = _interpolate(search._replace(low_count=jnp.asarray(3, _INT32),
                                       high_count=jnp.asarray(0, _INT32)),
                       jnp.asarray([2.0, 1.0]))
  return jnp.stack([search.low + 1, third[0], third[1], search.high - 1])


def _widen(search: _Search, q: jax.Array, sample: _Sample) -> jax.Array:
  """Probes past the bounded side when the other side is still unbounded.

  Steps past the bounded side by multiples of its observed rank error, read
  off the sample, growing x4 per pass; where the sample has no key there
  (ties), nudges the bounded side by 1, 16, 256, ... keys instead.
  """
  high_open = search.high == MAX_KEY
  bounded = jnp.where(high_open, search.low, search.high)
  error = jnp.abs(jnp.where(high_open, search.low_count, search.high_count)
                  - q).astype(jnp.float32)
  growth = _WIDEN_GROWTH_PER_PASS ** (search.passes - 1).astype(jnp.float32)
  steps = (error + sample.weight * growth) * jnp.asarray(_WIDEN_STEP_MULTIPLES)
  estimate = _sample_count_at_least(sample, bounded)
  from_sample = jax.vmap(lambda c: _sample_key_at_count(sample, c))(
      jnp.where(high_open, estimate - steps, estimate + steps))
  shift = jnp.minimum(
      _NUDGE_LOG2_STEP * (jnp.arange(PROBES_PER_PASS)
                          + PROBES_PER_PASS * search.passes
                          - PROBES_PER_PASS),
      _NUDGE_MAX_LOG2)
  nudge = jnp.left_shift(1, jnp.maximum(shift, 0)).astype(_INT32)
  nudged = jnp.where(
      high_open,
      jnp.where(bounded > MAX_KEY - nudge, MAX_KEY - 1, bounded + nudge),
      jnp.where(bounded < MIN_KEY + nudge, MIN_KEY + 1, bounded - nudge))
  usable = jnp.where(high_open, from_sample > bounded, from_sample < bounded)
  return jnp.where(usable, from_sample, nudged)


def _next_probes(search: _Search, q: jax.Array, sample: _Sample) -> jax.Array:
  """The ``PROBES_PER_PASS`` keys to count next, ascending, in the bracket.

  First pass: sample estimates around rank q. While a side is unbounded:
  `_widen`. Bracketed: a cluster around the interpolated key at rank q, as
  wide as the expected interpolation error; `_thirds` when the last pass
  did not cut the bracket's entries by 4.
  """
  q_f = q.astype(jnp.float32)
  sigma = jnp.sqrt(jnp.maximum(q_f, 1.0) * sample.weight) + sample.weight
  first = jax.vmap(lambda c: _sample_key_at_count(sample, c))(
      q_f + sigma * jnp.asarray(_FIRST_PASS_SPREAD))
  # The bracket's width in entries (not keys): how many scores lie in it.
  entries = search.low_count - search.high_count
  # At most an eighth of the bracket: a small bracket is cut into pieces a
  # few entries wide instead of probing its ends (measured: fewer passes).
  spread = jnp.minimum(jnp.sqrt(entries.astype(jnp.float32)) + 1.0,
                       entries.astype(jnp.float32) / 8 + 0.5)
  clustered = _interpolate(
      search, q_f + spread * jnp.asarray(_INTERPOLATION_SPREAD))
  progressed = 4 * entries <= search.previous_entries
  bracketed = jnp.where(progressed, clustered, _thirds(search))
  unbounded = (search.low == MIN_KEY) | (search.high == MAX_KEY)
  probes = jnp.where(search.passes == 0, first,
                     jnp.where(unbounded, _widen(search, q, sample),
                               bracketed))
  # Strictly inside the bracket, so that every pass shrinks it.
  return jnp.sort(jnp.clip(probes, search.low + 1, search.high - 1))


def _equal_layout_groups(arrays: list[jax.Array]) -> list[list[int]]:
  """Indices of the arrays grouped by shape and sharding, in first-seen
  order: arrays of one group combine element-wise without moving data."""
  groups = {}
  for i, a in enumerate(arrays):
    layout = (a.shape, getattr(jax.typeof(a), "sharding", None))
    groups.setdefault(layout, []).append(i)
  return list(groups.values())


class Blocks(NamedTuple):
  """The keys as the search counts them, each block ``[members, *shape]``.

  XLA compiles a reduction per array per program (tens of ms each on CPU:
  hundreds of small kernels took minutes), so leaves of under
  ``_STACK_MAX_ENTRIES`` entries that share a layout are stacked into one
  block, a copy of a few MB at most per leaf. A larger leaf, whose copy
  would cost memory and bandwidth, is a block of one (a free reshape).
  """
  keys: list[jax.Array]
  members: list[list[int]]  # the leaves of each block, in stacking order


def stack_equal_layouts(keys: list[jax.Array]) -> Blocks:
  arrays, members = [], []
  for group in _equal_layout_groups(keys):
    if len(group) > 1 and keys[group[0]].size < _STACK_MAX_ENTRIES:
      arrays.append(jnp.stack([keys[i] for i in group]))
      members.append(group)
    else:
      arrays.extend(keys[i][None] for i in group)
      members.extend([i] for i in group)
  # Materialise the blocks once: otherwise XLA sinks the whole saliency
  # computation into the search loop and redoes it at every pass.
  return Blocks(lax.optimization_barrier(arrays), members)


def count_rows(blocks: Blocks, predicate: Callable[..., jax.Array],
               num_probes: int = PROBES_PER_PASS) -> jax.Array:
  """``#{predicate(block, rows, j)}`` over each leaf for each probe ``j``:
  ``[leaves, num_probes]`` in leaf order, one variadic reduction per block
  (`stack_equal_layouts`), so that the kernels compiled grow with the
  layouts, not the leaves. ``rows(values)`` gives the values of a per-leaf
  array at the block's leaves, shaped to broadcast against the block."""
  parts = []
  for block, members in zip(blocks.keys, blocks.members):
    index = np.asarray(members)
    shape = (-1,) + (1,) * (block.ndim - 1)
    rows = lambda values, index=index, shape=shape: values[index].reshape(
        shape)
    parts.append(jnp.stack(count_true(
        [predicate(block, rows, j) for j in range(num_probes)],
        tuple(range(1, block.ndim))), axis=-1))
  leaf_order = np.argsort(np.concatenate(blocks.members))
  return jnp.concatenate(parts)[leaf_order]


def opaque_one(arrays: Any, passes: jax.Array) -> tuple[Any, jax.Array]:
  """``arrays`` and an int32 1, through an optimization barrier tied to a
  loop's pass counter: inside the loop XLA cannot see that ``one`` is 1, so
  index arithmetic scaled by it stays in the loop instead of being hoisted
  out into stored copies."""
  stored, one, _ = lax.optimization_barrier(
      (arrays, jnp.asarray(1, _INT32), passes))
  return stored, one


def _find_threshold(keys: list[jax.Array], q: jax.Array) -> _Search:
  """Narrows ``count(low) >= q > count(high)`` until exact or adjacent."""
  total = sum(k.size for k in keys)
  sample = _sample(keys)
  start = _Search(
      low=jnp.asarray(MIN_KEY, _INT32), low_count=jnp.asarray(total, _INT32),
      high=jnp.asarray(MAX_KEY, _INT32), high_count=jnp.asarray(0, _INT32),
      previous_entries=jnp.asarray(total, _INT32),
      passes=jnp.asarray(0, _INT32))

  def unfinished(search):
    return ((search.low_count != q) & (search.low < search.high - 1)
            & (q > 0))

  def one_pass(search):
    probes = _next_probes(search, q, sample)
    counts = _count_at_least(keys, probes)
    # Counts fall as keys rise: the probes with count >= q are a prefix.
    bracket = narrow(Bracket(*search[:4]), probes, counts, counts >= q)
    return _Search(*bracket,
                   previous_entries=search.low_count - search.high_count,
                   passes=search.passes + 1)

  return lax.while_loop(unfinished, one_pass, start)


def row_major_index(shape: tuple[int, ...],
                     one: jax.Array | int = 1) -> jax.Array:
  """Each entry's flat row-major index (int32), built from per-axis iotas so
  that it is computed shard by shard on a sharded leaf. The strides are
  multiplied by ``one`` (see `opaque_one`)."""
  if not shape:
    return jnp.zeros(shape, _INT32)
  index = lax.broadcasted_iota(_INT32, shape, len(shape) - 1) * one
  for axis in range(len(shape) - 1):
    stride = int(np.prod(shape[axis + 1:], dtype=np.int64))
    index = index + lax.broadcasted_iota(_INT32, shape, axis) * (stride * one)
  return index


def _leaf_offsets(keys: list[jax.Array]) -> np.ndarray:
  """Each leaf's global position: the entries of the leaves before it."""
  sizes = np.asarray([k.size for k in keys], np.int64)
  return (np.cumsum(sizes) - sizes).astype(np.int32)


def tie_ends(take: jax.Array, size: jax.Array,
             count_below: Callable[[Any, jax.Array], jax.Array]
             ) -> tuple[jax.Array, jax.Array]:
  """Per row, a position ``E`` in ``[0, size]`` with exactly ``take`` tied
  entries before it, and the counting passes that found them.

  ``count_below(one, probes)`` counts each row's ties before each of its
  probes (``[rows, PROBES_PER_PASS]``), with ``one`` from `opaque_one`, so
  that the positions are computed in each pass and never stored. The
  bracket ``(a, b]`` (fewer than ``take`` ties before ``a``, at least
  ``take`` before ``b``) is cut into five at each pass until exactly
  ``take`` ties lie before ``b`` or ``b = a + 1``: at most ``log5(size)``
  passes. A bisection rather than the threshold search's interpolation: its
  loop compiles in a fraction of the time, and it runs only on a tie. (A
  cumulative count per axis compiled to tens of kernels a leaf: several
  times the compile time of the whole search.) ``take`` 0 gives 0.
  """
  start = Bracket(
      low=jnp.where(take > 0, 0, -1).astype(_INT32),
      low_count=jnp.zeros_like(take, _INT32),
      high=jnp.where(take > 0, size, 0).astype(_INT32),
      high_count=jnp.full_like(take, MAX_KEY, _INT32))  # not counted yet

  def unfinished(state):
    b, _ = state
    return jnp.any((b.high_count != take) & ~adjacent(b.low, b.high))

  def one_pass(state):
    b, passes = state
    probes = even_probes(b.low, b.high)
    counts = count_below(passes, probes)
    return narrow(b, probes, counts, counts < take[:, None]), passes + 1

  ends, passes = lax.while_loop(unfinished, one_pass,
                                (start, jnp.asarray(0, _INT32)))
  return ends.high, passes


def _tie_end(blocks: Blocks, offsets: np.ndarray, low: jax.Array,
             take: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The global position ``E`` below which exactly ``take`` of the keys tied
  at ``low`` lie (`tie_ends` over one row), and the passes it took. An
  entry's global position is its leaf's offset plus its row-major index."""
  total = sum(k.size for k in blocks.keys)

  def count_below(passes, probes):
    stored, one = opaque_one(blocks.keys, passes)
    per_leaf = count_rows(blocks._replace(keys=stored), lambda k, rows, j: (
        k == low) & (rows(offsets) + row_major_index(k.shape[1:], one)
                     < probes[0, j]))
    return per_leaf.sum(axis=0)[None]

  ends, passes = tie_ends(take[None], jnp.asarray([total], _INT32),
                          count_below)
  return ends[0], passes


class Selection(NamedTuple):
  """The result of `select_top`.

  Attributes:
    mask: pytree of bool shaped like the scores, True at exactly ``q``
      entries.
    num_passes: counting passes over the scores that the search used (each
      counts ``PROBES_PER_PASS`` thresholds).
  """
  mask: Any
  num_passes: jax.Array


def _keys_and_count(scores: chex.ArrayTree, q: chex.Numeric):
  """The ordered int32 keys of every leaf, the treedef, and Q clipped to
  ``[0, N]`` as int32.

  Raises:
    ValueError: no leaves, or more entries than int32 counts can hold.
  """
  leaves, treedef = jax.tree.flatten(scores)
  if not leaves:
    raise ValueError("`scores` has no leaves to select from.")
  total = sum(np.size(leaf) for leaf in leaves)
  # Positions up to N (`_tie_end`) must stay below MAX_KEY.
  if total > np.iinfo(np.int32).max - 2:
    raise ValueError(f"{total} scores; at most 2**31 - 3 are supported.")
  keys = [ordered_key(jnp.asarray(leaf)) for leaf in leaves]
  return keys, treedef, jnp.clip(jnp.asarray(q).astype(_INT32), 0, total)


def select_keys(keys: list[jax.Array], q: jax.Array,
                 positions: list[jax.Array]):
  """Masks of exactly the ``q`` largest keys, and the passes it took.

  The search ends with ``count(low) == q`` (then ``key >= low`` is the
  answer) or with a one-key bracket whose key ``low`` is tied: then every
  key above it plus the first ``q - count(high)`` keys equal to it, by
  position (`_tie_end`). ``q == 0`` selects nothing.

  Each leaf's mask reads only shared scalars and its own position
  ``positions[i]`` (``i``): passed at run time (as GSM's state does), it
  leaves the masks of equally shaped leaves one kernel, which XLA compiles
  once (a per-leaf constant or slice would make each its own kernel, tens of
  ms of CPU compile time apiece).
  """
  blocks = stack_equal_layouts(keys)
  search = _find_threshold(blocks.keys, q)
  offsets = _leaf_offsets(keys)
  # Exact (or nothing to select): every key at `low` is taken.
  end, tie_passes = lax.cond(
      (search.low_count == q) | (q == 0),
      lambda: (jnp.asarray(MAX_KEY, _INT32), jnp.asarray(0, _INT32)),
      lambda: _tie_end(blocks, offsets, search.low, q - search.high_count))
  # No finite or non-finite key reaches MAX_KEY: q == 0 selects nothing.
  low = jnp.where(q > 0, search.low, MAX_KEY)
  # A leaf's offset is looked up by its run-time position, so that equally
  # shaped leaves keep one mask kernel.
  offsets = jnp.asarray(offsets)
  masks = [(k > low) | ((k == low) & (
      row_major_index(k.shape) < end - offsets[p]))
           for k, p in zip(keys, positions)]
  return masks, search.passes + tie_passes


def leaf_positions(num_leaves: int) -> list[np.ndarray]:
  """Each leaf's position in the tie order, as int32 scalars: what
  `top_q_masks` takes, best passed to a jitted function as an argument."""
  return [np.int32(i) for i in range(num_leaves)]


# Jitted so that eager callers (an un-jitted `update`, `prune`) compile the
# counting loop once per set of leaf shapes instead of at every call; under an
# outer jit it is inlined.
@jax.jit
def top_q_masks(scores: list[jax.Array], q: chex.Numeric,
                positions: list[jax.Array]) -> Selection:
  """`select_top` of a list of scores, ties broken by ``positions`` (each
  leaf's int32 position in leaf order, `leaf_positions`).

  Positions that are run-time values (an argument of the caller's jit, such
  as GSM's state) keep the masks of equally shaped leaves one compiled
  kernel; see `select_keys`.
  """
  keys, _, q = _keys_and_count(scores, q)
  masks, num_passes = select_keys(keys, q, positions)
  return Selection(mask=masks, num_passes=num_passes)


def select_top(scores: chex.ArrayTree, q: chex.Numeric) -> Selection:
  """Selects exactly the ``q`` largest entries over a whole pytree of scores.

  One global ranking over every entry of every leaf, as GSM requires, found
  by counting passes (see the module docstring), never by sorting. Ties are
  broken by position (leaf order of ``jax.tree.leaves``, then row-major),
  earlier entries first. NaN and +-inf rank below every finite score. Scores
  are compared as float32.

  Args:
    scores: pytree of float arrays.
    q: how many entries to select; may be traced. Clipped to ``[0, N]``, N
      the total number of entries.

  Returns:
    A `Selection`: the mask and the number of counting passes used.
  """
  leaves, treedef = jax.tree.flatten(scores)
  selection = top_q_masks(leaves, q, leaf_positions(len(leaves)))
  return selection._replace(mask=jax.tree.unflatten(treedef, selection.mask))


def top_q_mask(scores: chex.ArrayTree, q: chex.Numeric) -> chex.ArrayTree:
  """Boolean pytree, True at exactly the ``q`` largest scores.

  See `select_top` for the ranking, tie-breaking and non-finite scores.
  """
  return select_top(scores, q).mask


@jax.jit
def kth_largest(scores: chex.ArrayTree, k: chex.Numeric) -> jax.Array:
  """The ``k``-th largest score over a whole pytree, as float32.

  Ranked as in `select_top`: -inf if that entry is not finite, +inf for
  ``k == 0``.
  """
  keys, _, k = _keys_and_count(scores, k)
  masks, _ = select_keys(keys, k, leaf_positions(len(keys)))
  smallest_selected = jnp.min(jnp.stack(
      [jnp.min(jnp.where(m, key, MAX_KEY)) for m, key in zip(masks, keys)]))
  return jnp.where(k > 0, _key_to_score(smallest_selected), jnp.inf)
