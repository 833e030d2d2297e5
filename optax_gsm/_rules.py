"""How one ranking turns the scores of its leaves into masks.

Three rules share GSM's update and the final prune: the global top-Q (the
paper's), the global top-Q under per-leaf density bounds
(`optax_gsm._density_bounds`), and the local N:M pattern
(`n_of_m_mask`, see `optax_gsm._n_of_m`).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_gsm import _density_bounds, _selection


class Rule(NamedTuple):
  """A ranking's rule: bounds (``low``/``high`` kept counts per ranked
  leaf) or ``n_of_m``; neither for the plain global top-Q."""
  low: np.ndarray | None = None
  high: np.ndarray | None = None
  n_of_m: tuple[int, int] | None = None


def masks(scores: list[jax.Array], q: Any, rule: Rule,
          positions: list[Any] | None = None) -> list[jax.Array]:
  """The kept (active) mask of every ranked leaf under ``rule``; the top-Q
  breaks ties by ``positions`` (`optax_gsm._selection.top_q_masks`; leaf
  order when None)."""
  if rule.n_of_m is not None:
    return [n_of_m_mask(s, *rule.n_of_m) for s in scores]
  if rule.low is not None:
    return _density_bounds.bounded_top_q_mask(scores, q, rule.low, rule.high)
  if positions is None:
    positions = _selection.leaf_positions(len(scores))
  return _selection.top_q_masks(scores, q, positions).mask


def n_of_m_count(shapes: list[tuple[int, ...]], n_of_m: tuple[int, int]) -> int:
  """Q of an N:M pattern: n of every m entries of each ranked leaf."""
  n, m = n_of_m
  return sum(int(np.prod(s)) // m * n for s in shapes)


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


_PAIRWISE_UP_TO = 32


def n_of_m_mask(scores: jax.Array, n: int, m: int) -> jax.Array:
  """True at the ``n`` largest of every ``m`` consecutive entries along
  axis -2 (ties to the earlier entry; NaN and +-inf lowest, as in the
  global ranking)."""
  check_shape(scores.shape, m)
  shape = scores.shape
  # (..., in, out) -> (..., in / m, m, out): a group is axis -2, no transpose.
  grouped = scores.astype(jnp.float32).reshape(
      shape[:-2] + (shape[-2] // m, m, shape[-1]))
  # Every non-finite score ranks lowest, as in the global ranking.
  grouped = jnp.where(jnp.isfinite(grouped), grouped, -jnp.inf)
  if m <= _PAIRWISE_UP_TO:
    # An entry's rank is the number of entries ahead of it: larger, or equal
    # and earlier. m elementwise passes; XLA's CPU sort of short rows is
    # ~50x slower.
    position = jnp.arange(m)[:, None]
    rank = sum(((grouped[..., j:j + 1, :] > grouped)
                | ((grouped[..., j:j + 1, :] == grouped) & (j < position))
                ).astype(jnp.int32) for j in range(m))
  else:
    order = jnp.argsort(-grouped, axis=-2, stable=True)
    rank = jnp.argsort(order, axis=-2, stable=True)
  return (rank < n).reshape(shape)
