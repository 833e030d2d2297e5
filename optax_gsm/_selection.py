"""Exact global top-Q selection over a pytree of scores.

GSM ranks every prunable entry of the model in one global ranking and keeps the
``Q`` largest scores active (Ding et al., 2019, Sec. 3). Doing this with
``jax.lax.top_k`` or a sort over the concatenated scores costs hundreds of
times an optimizer update at 10M parameters, and ``top_k`` needs a static
``Q``. This module finds the threshold with a few counting passes instead:

1. Order-preserving integer keys: every float score is mapped to an ``int32``
   whose signed order is the float order (``-0.0`` and ``+0.0`` are one key;
   NaN and +-inf rank below every finite score).
2. A small fixed random sample of the keys (``2**15`` entries, drawn leaf by
   leaf at trace time, no concatenated copy of the scores) estimates where the
   Q-th largest key lies and brackets it.
3. A safeguarded interpolation search (Illinois regula falsi on the exact
   count ``#{key >= t}``, with bisection when it stalls) narrows the bracket,
   one reduction pass over the leaves per probe, until ``#{key >= t} == Q``
   or the bracket is a single key (a tie).
4. Ties at the threshold are broken by position: leaves in
   ``jax.tree.leaves`` order, entries in row-major order, earlier first. So
   exactly ``Q`` entries are selected, deterministically.

Everything runs under ``jit`` with a traced ``Q``, without host round trips,
and uses only element-wise maps and reductions over each leaf, so it
partitions over sharded parameters without gathering them.
"""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_INT32 = jnp.int32
_MIN_KEY = np.iinfo(np.int32).min  # the key of every non-finite score
_MAX_KEY = np.iinfo(np.int32).max  # above every finite key (0x7F7FFFFF)
_EXPONENT_BITS = 0x7F800000
_MAGNITUDE_BITS = 0x7FFFFFFF
_SAMPLE_SIZE = 1 << 15
# A side kept this many probes in a row triggers a bisection step.
_MAX_STALLED_PROBES = 3
# Probes allowed without halving the bracket before a bisection step, so the
# worst case stays within a small factor of plain bisection.
_MAX_SLOW_PROBES = 2


def _ordered_key(score: jax.Array) -> jax.Array:
  """Maps float scores to int32 keys with the same order (non-finite lowest).

  Works on the bit pattern, so denormals keep their order even where the
  hardware flushes them to zero in float arithmetic.
  """
  bits = lax.bitcast_convert_type(score.astype(jnp.float32), _INT32)
  non_finite = (bits & _EXPONENT_BITS) == _EXPONENT_BITS
  bits = jnp.where(bits == _MIN_KEY, 0, bits)  # -0.0 ranks as +0.0
  key = jnp.where(bits < 0, bits ^ _MAGNITUDE_BITS, bits)
  return jnp.where(non_finite, _MIN_KEY, key)


def _key_to_score(key: jax.Array) -> jax.Array:
  """Inverse of `_ordered_key` on finite keys; the non-finite key gives -inf."""
  bits = jnp.where(key < 0, key ^ _MAGNITUDE_BITS, key)
  score = lax.bitcast_convert_type(bits, jnp.float32)
  return jnp.where(key == _MIN_KEY, -jnp.inf, score)


def _count_at_least(keys: list[jax.Array], threshold: jax.Array) -> jax.Array:
  return sum(jnp.sum(k >= threshold, dtype=_INT32) for k in keys)


def _midpoint(low: jax.Array, high: jax.Array) -> jax.Array:
  """Overflow-free floor((low + high) / 2) on int32."""
  return (low >> 1) + (high >> 1) + (low & high & 1)


class _Sample(NamedTuple):
  """Sampled keys, sorted descending, and the estimated ``#{key >= k}``."""
  keys: jax.Array
  estimated_count: jax.Array


def _sample(keys: list[jax.Array], sample_size: int) -> _Sample:
  """A fixed pseudo-random sample of every leaf, in proportion to its size."""
  total = sum(k.size for k in keys)
  rng = np.random.default_rng(0)
  parts, weights = [], []
  for k in keys:
    num = min(k.size, max(1, -(-sample_size * k.size // total)))
    flat = k.reshape(-1)
    if num < k.size:
      flat = flat[np.sort(rng.integers(0, k.size, num))]
    parts.append(flat)
    weights.append(np.full(num, k.size / num, np.float32))
  ascending_keys, ascending_weights = lax.sort(
      (jnp.concatenate(parts), jnp.asarray(np.concatenate(weights))),
      num_keys=1)
  return _Sample(keys=ascending_keys[::-1],
                 estimated_count=jnp.cumsum(ascending_weights[::-1]))


def _sample_key_at_count(sample: _Sample, count: jax.Array) -> jax.Array:
  """The sampled key whose estimated ``#{key >= it}`` first reaches count."""
  index = jnp.searchsorted(sample.estimated_count, count)
  return sample.keys[jnp.clip(index, 0, sample.keys.size - 1)]


def _sample_count_at_least(sample: _Sample, key: jax.Array) -> jax.Array:
  """The sample's estimate of ``#{key >= threshold}``."""
  weights = jnp.diff(sample.estimated_count, prepend=0.0)
  return jnp.sum(jnp.where(sample.keys >= key, weights, 0.0))


class _Search(NamedTuple):
  """Bracket of the search: count(low) >= q > count(high)."""
  low: jax.Array
  low_count: jax.Array
  high: jax.Array
  high_count: jax.Array
  low_weight: jax.Array   # Illinois-scaled residual at low, >= 0
  high_weight: jax.Array  # Illinois-scaled residual at high, < 0
  low_stalls: jax.Array   # probes in a row that moved low
  high_stalls: jax.Array  # probes in a row that moved high
  last_was_empty: jax.Array  # the last probe met no entry: count unchanged
  last_was_jump: jax.Array   # the last probe was next to the far side
  halving_width: jax.Array   # bracket width (float) at the last halving
  slow_probes: jax.Array     # probes since the width last halved
  probes: jax.Array


def _interpolate(low: jax.Array, high: jax.Array,
                 fraction: jax.Array) -> jax.Array:
  """``low + floor((high - low) * fraction)`` without int32 overflow."""
  width = high - low  # wraps to negative only when it exceeds 2**31 - 1
  width_f = jnp.where(width > 0, width.astype(jnp.float32),
                      high.astype(jnp.float32) - low.astype(jnp.float32))
  offset = jnp.floor(width_f * jnp.clip(fraction, 0.0, 1.0))
  # Offsets past 2**31 only occur for brackets spanning both signs.
  return jnp.where(offset < 2.0**30, low + offset.astype(_INT32),
                   _midpoint(low, high))


def _next_probe(search: _Search, q: jax.Array, sample: _Sample,
                per_sample: float) -> tuple[jax.Array, jax.Array]:
  """Where to count next.

  First the sample's estimate of the q-th key. While one side of the
  bracket is unbounded, step past the known side by twice its observed rank
  error, read off the sample (widening x4 per failed probe; a step of
  ``16**(stalls - 1)`` keys where the sample has no distinct key there, as in
  ties). Once bounded: Illinois interpolation, bisection when one side has
  moved ``_MAX_STALLED_PROBES`` times in a row or the bracket has not halved
  in ``_MAX_SLOW_PROBES`` probes, and the key next to the far
  side after a probe that met no entry (not twice in a row).

  Returns:
    The probe, and whether it is such a jump.
  """
  q_f = q.astype(jnp.float32)
  unbounded_low = search.low == _MIN_KEY
  unbounded_high = search.high == _MAX_KEY
  bounded_side = jnp.where(unbounded_high, search.low, search.high)
  bounded_error = jnp.where(unbounded_high, search.low_weight,
                            -search.high_weight)
  stalls = jnp.maximum(search.low_stalls, search.high_stalls)
  step = ((2.0 * bounded_error + per_sample)
          * 4.0 ** (stalls - 1).astype(jnp.float32))
  bounded_estimate = _sample_count_at_least(sample, bounded_side)
  from_sample = jnp.where(
      search.probes == 0, _sample_key_at_count(sample, q_f),
      _sample_key_at_count(
          sample, jnp.where(unbounded_high, bounded_estimate - step,
                            bounded_estimate + step)))
  # Where the sample has no key past the bounded side (ties), nudge it by
  # 1, 16, 256, ... keys.
  nudge = jnp.left_shift(1, jnp.minimum(4 * (stalls - 1), 30)).astype(_INT32)
  nudged = jnp.where(
      unbounded_high,
      jnp.where(search.low > _MAX_KEY - nudge, _MAX_KEY, search.low + nudge),
      jnp.where(search.high < _MIN_KEY + nudge, _MIN_KEY, search.high - nudge))
  sample_usable = (from_sample > search.low) & (from_sample < search.high)
  unbounded_probe = jnp.where(sample_usable, from_sample, nudged)

  fraction = search.low_weight / (search.low_weight - search.high_weight)
  bounded_probe = jnp.where((stalls >= _MAX_STALLED_PROBES)
                            | (search.slow_probes >= _MAX_SLOW_PROBES),
                            _midpoint(search.low, search.high),
                            _interpolate(search.low, search.high, fraction))
  # A probe that met no entry says the mass sits at the far end, as with a
  # tie at the threshold: try the key next to the far side.
  jump = search.last_was_empty & ~search.last_was_jump
  bounded_probe = jnp.where(
      jump, jnp.where(search.high_stalls > 0, search.low + 1, search.high - 1),
      bounded_probe)
  unbounded = unbounded_low | unbounded_high
  probe = jnp.where(unbounded, unbounded_probe, bounded_probe)
  # Stay strictly inside the bracket so every probe shrinks it.
  return jnp.clip(probe, search.low + 1, search.high - 1), jump & ~unbounded


def _find_threshold(keys: list[jax.Array], q: jax.Array) -> _Search:
  """Narrows ``count(low) >= q > count(high)`` until exact or adjacent."""
  total = sum(k.size for k in keys)
  sample = _sample(keys, _SAMPLE_SIZE)
  q_f = q.astype(jnp.float32)
  per_sample = total / sample.keys.size
  zero = jnp.zeros((), _INT32)
  start = _Search(
      low=jnp.asarray(_MIN_KEY, _INT32), low_count=jnp.asarray(total, _INT32),
      high=jnp.asarray(_MAX_KEY, _INT32), high_count=zero,
      low_weight=jnp.asarray(total, jnp.float32) - q_f,
      high_weight=-q_f, low_stalls=zero, high_stalls=zero,
      last_was_empty=jnp.zeros((), bool), last_was_jump=jnp.zeros((), bool),
      halving_width=jnp.asarray(2.0**32, jnp.float32), slow_probes=zero,
      probes=zero)

  def unfinished(search):
    return ((search.low_count != q) & (search.low < search.high - 1)
            & (q > 0))

  def probe_once(search):
    probe, is_jump = _next_probe(search, q, sample, per_sample)
    count = _count_at_least(keys, probe)
    residual = count.astype(jnp.float32) - q_f
    is_low = count >= q
    low = jnp.where(is_low, probe, search.low)
    high = jnp.where(is_low, search.high, probe)
    width = high.astype(jnp.float32) - low.astype(jnp.float32)
    halved = width <= 0.5 * search.halving_width
    return _Search(
        low=low,
        low_count=jnp.where(is_low, count, search.low_count),
        high=high,
        high_count=jnp.where(is_low, search.high_count, count),
        # Illinois: halve the residual of a side kept twice in a row.
        low_weight=jnp.where(
            is_low, residual,
            jnp.where(search.high_stalls > 0, 0.5, 1.0) * search.low_weight),
        high_weight=jnp.where(
            is_low,
            jnp.where(search.low_stalls > 0, 0.5, 1.0) * search.high_weight,
            jnp.minimum(residual, -0.5)),
        low_stalls=jnp.where(is_low, search.low_stalls + 1, 0),
        high_stalls=jnp.where(is_low, 0, search.high_stalls + 1),
        last_was_empty=count == jnp.where(is_low, search.low_count,
                                          search.high_count),
        last_was_jump=is_jump,
        halving_width=jnp.where(halved, width, search.halving_width),
        slow_probes=jnp.where(halved, 0, search.slow_probes + 1),
        probes=search.probes + 1)

  return lax.while_loop(unfinished, probe_once, start)


def _row_major_rank(ties: jax.Array) -> jax.Array:
  """1-based row-major rank of each True entry among the True entries.

  Built axis by axis (ties in earlier slabs along each axis, then within the
  slab) instead of one cumsum over the flattened array, so that a leaf
  sharded along any axis is never reshaped into one flat array.
  """
  counts = ties.astype(_INT32)
  rank = counts
  for axis in range(ties.ndim):
    slab_totals = jnp.sum(counts, axis=tuple(range(axis + 1, ties.ndim)),
                          keepdims=True)
    rank = rank + jnp.cumsum(slab_totals, axis=axis) - slab_totals
  return rank


def _tie_broken_masks(keys: list[jax.Array], threshold: jax.Array,
                      to_take: jax.Array) -> list[jax.Array]:
  """``key > threshold`` plus the first ``to_take`` entries equal to it."""
  masks = []
  taken_before = jnp.zeros((), _INT32)
  for k in keys:
    ties = k == threshold
    num_ties = jnp.sum(ties, dtype=_INT32)
    take_here = jnp.clip(to_take - taken_before, 0, num_ties)

    def partial_ties(ties=ties, take_here=take_here):
      return ties & (_row_major_rank(ties) <= take_here)

    def all_or_no_ties(ties=ties, take_here=take_here, num_ties=num_ties):
      return ties & (take_here == num_ties)

    # Only the one leaf where the cut falls needs the (slow) prefix count.
    chosen_ties = lax.cond((take_here > 0) & (take_here < num_ties),
                           partial_ties, all_or_no_ties)
    masks.append((k > threshold) | chosen_ties)
    taken_before = taken_before + num_ties
  return masks


class Selection(NamedTuple):
  """The result of `select_top`.

  Attributes:
    mask: pytree of bool shaped like the scores, True at exactly ``q``
      entries.
    num_probes: counting passes over the scores that the search used.
  """
  mask: Any
  num_probes: jax.Array


def _keys_and_count(scores: chex.ArrayTree, q: chex.Numeric):
  leaves, treedef = jax.tree.flatten(scores)
  if not leaves:
    raise ValueError("`scores` has no leaves to select from.")
  total = sum(np.size(leaf) for leaf in leaves)
  if total >= np.iinfo(np.int32).max:
    raise ValueError(f"{total} scores; at most 2**31 - 2 are supported.")
  keys = [_ordered_key(jnp.asarray(leaf)) for leaf in leaves]
  return keys, treedef, jnp.clip(jnp.asarray(q).astype(_INT32), 0, total)


def _select_keys(keys: list[jax.Array], q: jax.Array):
  search = _find_threshold(keys, q)
  # Not exact: the bracket is one key wide and `low` is a tied key.
  masks = lax.cond(
      search.low_count == q,
      lambda: [k >= search.low for k in keys],
      lambda: _tie_broken_masks(keys, search.low, q - search.high_count))
  return [m & (q > 0) for m in masks], search.probes


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
  keys, treedef, q = _keys_and_count(scores, q)
  masks, num_probes = _select_keys(keys, q)
  return Selection(mask=jax.tree.unflatten(treedef, masks),
                   num_probes=num_probes)


def top_q_mask(scores: chex.ArrayTree, q: chex.Numeric) -> chex.ArrayTree:
  """Boolean pytree, True at exactly the ``q`` largest scores.

  See `select_top` for the ranking, tie-breaking and non-finite scores.
  """
  return select_top(scores, q).mask


def kth_largest(scores: chex.ArrayTree, k: chex.Numeric) -> jax.Array:
  """The ``k``-th largest score over a whole pytree, as float32.

  Ranked as in `select_top`: -inf if that entry is not finite, +inf for
  ``k == 0``.
  """
  keys, _, k = _keys_and_count(scores, k)
  masks, _ = _select_keys(keys, k)
  smallest_selected = jnp.min(jnp.stack(
      [jnp.min(jnp.where(m, key, _MAX_KEY)) for m, key in zip(masks, keys)]))
  return jnp.where(k > 0, _key_to_score(smallest_selected), jnp.inf)
