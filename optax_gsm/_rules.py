"""How one ranking turns the scores of its leaves into masks.

Three rules share GSM's update and the final prune: the global top-Q (the
paper's), the global top-Q under per-leaf density bounds
(`optax_gsm._density_bounds`), and the local N:M pattern
(`optax_gsm._n_of_m`).
"""

from typing import Any, NamedTuple

import jax
import numpy as np

from optax_gsm import _density_bounds, _n_of_m, _selection


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
    return [_n_of_m.n_of_m_mask(s, *rule.n_of_m) for s in scores]
  if rule.low is not None:
    return _density_bounds.bounded_top_q_mask(scores, q, rule.low, rule.high)
  if positions is None:
    positions = _selection.leaf_positions(len(scores))
  return _selection.top_q_masks(scores, q, positions).mask


def n_of_m_count(shapes: list[tuple[int, ...]], n_of_m: tuple[int, int]) -> int:
  """Q of an N:M pattern: n of every m entries of each ranked leaf."""
  n, m = n_of_m
  return sum(int(np.prod(s)) // m * n for s in shapes)
