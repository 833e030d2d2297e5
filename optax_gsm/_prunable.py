"""Which parameters GSM may prune.

The official code prunes dense and convolution kernels and trains biases and
normalisation parameters as usual. On a Flax tree the leaf's name says which
is which, not its rank: a scan-stacked layer's bias has shape ``(L, d)`` and
is still a bias. So the default rule (`default_prunable`) is:

- only real floating-point leaves are prunable (integer, bool and complex
  leaves are skipped);
- a tree that names its leaves the Flax way (some leaf is called ``kernel``,
  ``embedding``, ``bias`` or ``scale``, linen or NNX) prunes exactly the
  leaves called ``kernel`` (Dense, Conv, DenseGeneral, Einsum) and
  ``embedding`` (Embed), whatever their rank;
- any other tree (plain dicts and lists of arrays) prunes leaves of rank >= 2.

Escape hatches: ``prunable`` may be a pytree of bools like the params, a
prefix of it (``optax.masked`` style: a flag covers every floating-point
leaf below it), glob patterns over the ``/``-joined path (``"*/kernel"``,
``["encoder/*", "head/kernel"]``), or a function ``params -> any of these``.
"""

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

Prunable = (chex.ArrayTree | str | Sequence[str]
            | Callable[[chex.ArrayTree], Any] | None)

# Leaf names Flax gives to what the official code prunes ...
_KERNEL_NAMES = frozenset({"kernel", "embedding"})
# ... and names that mark a tree as Flax-named even when it has no kernel.
_FLAX_NAMES = _KERNEL_NAMES | {"bias", "scale"}


def path_names(path: tuple[Any, ...]) -> list[str]:
  """The names along a key path; NNX's trailing ``.value`` is dropped."""
  names = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      names.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      names.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      names.append(str(key.idx))
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      names.append(str(key.key))
    else:
      names.append(str(key))
  if len(path) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey) and (
      names[-1] == "value"):
    names.pop()
  return names


def path_string(path: tuple[Any, ...]) -> str:
  """``"dense/kernel"``: the names of a key path joined by ``/``."""
  return "/".join(path_names(path))


def leaf_paths(tree: chex.ArrayTree) -> list[str]:
  """The ``/``-joined path of every leaf of ``tree``, in leaf order."""
  return [path_string(path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def is_kernel_path(path: str) -> bool:
  """Whether a ``/``-joined path names a Flax kernel or embedding: the
  leaves the official code prunes."""
  return path.rsplit("/", 1)[-1] in _KERNEL_NAMES


def has_collections(variables: Any) -> bool:
  """Whether ``variables`` are linen variables (``{"params": ...,
  "batch_stats": ...}``) rather than params alone."""
  return isinstance(variables, Mapping) and "params" in variables and all(
      isinstance(v, Mapping) for v in variables.values())


def module_path(path: str, collections_level: bool) -> str:
  """The module of a leaf path: ``"params/block/Conv_0/kernel"`` ->
  ``"block/Conv_0"`` (with ``collections_level``, from `has_collections`,
  the collection name dropped)."""
  names = path.split("/")[:-1]
  return "/".join(names[1:] if collections_level else names)


def _is_real_float(leaf: Any) -> bool:
  return jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


def default_prunable(params: chex.ArrayTree) -> chex.ArrayTree:
  """The default prunable set: kernels and embeddings (see module docstring).

  Args:
    params: the parameters (Flax linen ``params``, an NNX ``State``, or any
      pytree of arrays).

  Returns:
    A pytree of Python bools with the structure of ``params``.
  """
  last_names = [path_names(path)[-1:] for path, _ in
                jax.tree_util.tree_leaves_with_path(params)]
  flax_named = any(names and names[0] in _FLAX_NAMES for names in last_names)

  def flag(path, leaf):
    if not _is_real_float(leaf):
      return False
    if flax_named:
      names = path_names(path)
      return bool(names) and names[-1] in _KERNEL_NAMES
    return np.ndim(leaf) >= 2

  return jax.tree_util.tree_map_with_path(flag, params)


def _from_patterns(patterns: Sequence[str], params: chex.ArrayTree):
  def flag(path, leaf):
    name = path_string(path)
    return _is_real_float(leaf) and any(
        fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
  return jax.tree_util.tree_map_with_path(flag, params)


def _is_patterns(value: Any) -> bool:
  return isinstance(value, str) or (
      isinstance(value, (list, tuple)) and bool(value)
      and all(isinstance(v, str) for v in value))


def _broadcast_prefix(flags_tree: Any, params: chex.ArrayTree) -> list[bool]:
  """One flag per leaf of ``params`` from a full or prefix tree of flags.

  A flag standing for a single leaf applies to it as given (so a wrong dtype
  is reported); a flag over a subtree covers its floating-point leaves.
  """
  flags, flags_def = jax.tree.flatten(flags_tree)
  try:
    subtrees = flags_def.flatten_up_to(params)
  except (ValueError, TypeError) as error:
    raise ValueError(
        "`prunable` must be a pytree of bools with the structure of the "
        "params or a prefix of it (optax.masked style), glob patterns, or a "
        f"callable.\nprunable: {flags_def}\n"
        f"params:   {jax.tree.structure(params)}") from error
  expanded = []
  for flag, subtree in zip(flags, subtrees):
    flag = _as_bool(flag)
    leaves = jax.tree.leaves(subtree)
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(subtree)):
      expanded.extend([flag] * len(leaves))
    else:
      expanded.extend(flag and _is_real_float(leaf) for leaf in leaves)
  return expanded


def resolve_prunable(prunable: Prunable, params: chex.ArrayTree, *,
                     check_dtypes: bool = True,
                     require_any: bool = True) -> list[bool]:
  """The prunable flag of each leaf of ``params``, checked, as Python bools.

  Args:
    prunable: None (`default_prunable`), a pytree of bools shaped like
      ``params`` or a prefix of it, glob patterns over ``/``-joined paths, or
      a function ``params -> any of these``.
    params: the parameters.
    check_dtypes: require prunable leaves to be floating point; off to count
      the entries of a mask, whose bool leaves are then judged as if they were
      the float parameters they mask.
    require_any: raise when no leaf with at least one entry is prunable.

  Returns:
    One bool per leaf of ``params``, in ``jax.tree.leaves`` order.

  Raises:
    ValueError: the pytree does not match ``params``, a flag is not a bool,
      no leaf is prunable, or a prunable leaf is not floating point.
  """
  if not check_dtypes:
    params = jax.tree.map(_float_view, params)
  if callable(prunable):
    prunable = prunable(params)
  if prunable is None:
    flags = jax.tree.leaves(default_prunable(params))
  elif _is_patterns(prunable):
    patterns = [prunable] if isinstance(prunable, str) else list(prunable)
    flags = jax.tree.leaves(_from_patterns(patterns, params))
  else:
    flags = _broadcast_prefix(prunable, params)
  with_path = jax.tree_util.tree_leaves_with_path(params)
  if require_any and not any(flag and np.size(leaf) > 0
                             for flag, (_, leaf) in zip(flags, with_path)):
    raise ValueError(
        "`prunable` selects no parameter with entries: nothing to prune. The "
        "default prunes Flax `kernel`/`embedding` leaves (rank >= 2 leaves in "
        "trees without Flax names); params have leaves "
        f"{[(path_string(p), np.shape(x)) for p, x in with_path]}.")
  for (path, leaf), flag in zip(with_path, flags):
    if check_dtypes and flag and not _is_real_float(leaf):
      raise ValueError(
          f"Parameter {path_string(path)!r} of dtype {jnp.result_type(leaf)} "
          "is marked prunable by `prunable`; only real floating-point "
          "parameters can be pruned.")
  return flags


def _float_view(leaf: Any) -> Any:
  """A bool leaf as a float32 array of its shape (a view: no copy)."""
  if jnp.result_type(leaf) == jnp.bool_:
    return np.broadcast_to(np.float32(0), np.shape(leaf))
  return leaf


def _as_bool(flag: Any) -> bool:
  if isinstance(flag, (bool, np.bool_)):
    return bool(flag)
  if np.shape(flag) == () and np.result_type(flag) == np.bool_ and not (
      isinstance(flag, jax.core.Tracer)):
    return bool(flag)
  raise ValueError(
      f"`prunable` leaves must be Python bools; got {flag!r}.")


def prunable_leaves(flags: Sequence[bool], leaves: Sequence[Any]) -> list:
  """The entries of ``leaves`` whose flag is True, in order."""
  return [leaf for leaf, flag in zip(leaves, flags) if flag]


def prunable_count(flags: Sequence[bool], leaves: Sequence[Any]) -> int:
  """N: the number of entries of the flagged leaves."""
  return sum(int(np.size(leaf)) for leaf in prunable_leaves(flags, leaves))


def merge_prunable(flags: Sequence[bool], prunable_values: Sequence[Any],
                   other: Callable[[int], Any]) -> list:
  """Puts ``prunable_values`` back at the flagged positions of a leaf list.

  The inverse of `prunable_leaves`; position ``i`` of a leaf that is not
  prunable gets ``other(i)``.
  """
  values = iter(prunable_values)
  return [next(values) if flag else other(i) for i, flag in enumerate(flags)]
