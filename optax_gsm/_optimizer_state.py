"""Reading GSM's state back out of any optimizer state.

A GSM transformation may sit anywhere in a chain, under
``optax.multi_transform`` or ``optax.masked`` (which hide the leaves it does
not see behind ``optax.MaskedNode``), under ``optax.MultiSteps`` or
``optax.inject_hyperparams``, and there may be several. Each `GSMState`
records which leaves it ranks and its Q, so the final prune, the report and
the active mask come from the optimizer itself, not from a second guess.
"""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_gsm import _gsm, _prunable, _rules
from optax_gsm.structured import _structured_gsm


class Ranking(NamedTuple):
  """One ranking: the leaves it covers, how many entries it keeps, its rule.

  Attributes:
    flags: one bool per leaf of the params (``jax.tree.leaves`` order).
    num_active: Q, the number of entries kept over the flagged leaves.
    rule: per-leaf bounds or an N:M pattern; the plain global top-Q if
      empty.
  """
  flags: list[bool]
  num_active: int
  rule: _rules.Rule = _rules.Rule()


def covered_flags(rankings: list[Ranking]) -> list[bool]:
  """Per leaf: whether any of the rankings covers it."""
  return [any(column) for column in zip(*(r.flags for r in rankings))]


def _is_gsm_state(node: Any) -> bool:
  return isinstance(node, _gsm.GSMState)


def gsm_states(opt_state: chex.ArrayTree) -> list[_gsm.GSMState]:
  """Every `GSMState` inside ``opt_state``, in tree order.

  Raises:
    ValueError: ``opt_state`` holds none.
  """
  states = [node for node in jax.tree.leaves(opt_state, is_leaf=_is_gsm_state)
            if _is_gsm_state(node)]
  if not states:
    raise ValueError(
        "`opt_state` holds no GSMState: pass the state of an optimizer that "
        "contains `optax_gsm.gsm`, `n_of_m_gsm` or their `_sgd` optimizers "
        "(for nnx.Optimizer: "
        "`nnx.as_pure(optimizer.opt_state)`).")
  return states


class _Box:
  """Holds one aligned value; not a pytree node, so it stays a leaf."""

  def __init__(self, value):
    self.value = value


def _aligned_leaves(tree: Any, params: chex.ArrayTree) -> list[Any]:
  """The leaves of a state tree per leaf of ``params``; None where masked."""
  is_masked = lambda node: isinstance(node, optax.MaskedNode)
  try:
    boxes = jax.tree.map(
        lambda value, _: _Box(None if is_masked(value) else value),
        tree, params, is_leaf=is_masked)
  except (ValueError, TypeError) as error:
    raise ValueError(
        "`opt_state` was not made for these `params`: its GSM state has the "
        f"structure {jax.tree.structure(tree, is_leaf=is_masked)}, params "
        f"{jax.tree.structure(params)}.") from error
  return [box.value for box in jax.tree.leaves(boxes)]


def _aligned_masks(state: Any, params: chex.ArrayTree) -> list[Any]:
  """The mask leaves of a GSM state per leaf of ``params``, each checked to
  have the shape of its leaf: a state of other params with the same tree
  would otherwise rank them with its own Q."""
  masks = _aligned_leaves(state.mask, params)
  for path_and_leaf, mask in zip(
      jax.tree_util.tree_leaves_with_path(params), masks):
    path, leaf = path_and_leaf
    if mask is not None and np.shape(mask) != np.shape(leaf):
      raise ValueError(
          "`opt_state` was not made for these `params`: leaf "
          f"'{_prunable.path_string(path)}' has shape {np.shape(leaf)}, the "
          f"optimizer state's {np.shape(mask)}.")
  return masks


def state_rankings(opt_state: chex.ArrayTree,
                   params: chex.ArrayTree) -> list[Ranking]:
  """The ranking of every GSM transformation in ``opt_state``."""
  rankings = []
  for state in gsm_states(opt_state):
    _aligned_masks(state, params)
    flags = [value is not None and bool(value)
             for value in _aligned_leaves(state.prunable, params)]
    rankings.append(Ranking(flags=flags, num_active=int(state.num_active),
                            rule=_state_rule(state, params, flags)))
  return rankings


def _state_rule(state: _gsm.GSMState, params: chex.ArrayTree,
                flags: list[bool]) -> _rules.Rule:
  """The rule a GSM state ranked by: N:M, bounds, or the plain top-Q."""
  n, m = (int(v) for v in np.asarray(state.n_of_m))
  if n:
    return _rules.Rule(n_of_m=(n, m))
  sizes = [np.size(w) for w in jax.tree.leaves(params)]
  pick = lambda tree: [int(v) for v, f in zip(_aligned_leaves(tree, params),
                                              flags) if f]
  low, high = pick(state.min_active), pick(state.max_active)
  ranked_sizes = [s for s, f in zip(sizes, flags) if f]
  if not any(low) and high == ranked_sizes:
    return _rules.Rule()
  return _rules.Rule(low=np.asarray(low), high=np.asarray(high))


def active_mask(opt_state: chex.ArrayTree,
                params: chex.ArrayTree) -> chex.ArrayTree:
  """The active set of the last GSM step, as one bool pytree like ``params``.

  Merges the masks of every GSM transformation in ``opt_state`` (where
  ``optax.tree_utils.tree_get(opt_state, "mask")`` refuses several), or
  reads the one of a `optax_gsm.structured.structured_gsm`; leaves no GSM
  sees are all True.

  Args:
    opt_state: the state of an optimizer containing `gsm` (any nesting).
    params: the parameters the optimizer trains.

  Returns:
    A pytree of bool arrays with the structure and shapes of ``params``.
  """
  leaves, treedef = jax.tree.flatten(params)
  merged = [None] * len(leaves)
  structured = _structured_gsm.structured_states(opt_state)
  for state in structured:  # every leaf it masks is in its mask
    for i, mask in enumerate(_aligned_masks(state, params)):
      if mask is not None:
        merged[i] = jnp.asarray(mask)
  for state in gsm_states(opt_state) if not structured else []:
    for i, (mask, flag) in enumerate(zip(
        _aligned_masks(state, params),
        _aligned_leaves(state.prunable, params))):
      if mask is not None and flag is not None and bool(flag):
        merged[i] = jnp.asarray(mask)
  return treedef.unflatten(
      [jnp.ones(jnp.shape(w), bool) if m is None else m
       for m, w in zip(merged, leaves)])
