"""`shrink`: remove pruned structures physically; `kept_structures`.

After structured pruning the model still has its full shapes, with the
entries of removed structures decayed to (near) zero. `shrink` slices every
member leaf down to the kept channels (params and batch statistics) and
deletes the leaves of removed residual blocks, and says the new width of
every layer, so that the user builds the smaller model and runs it on the
smaller variables. The smaller model computes what the big model computes
with removed structures set to zero (`mask_structures`).

The pattern: give each layer its width as a module attribute, with a
default, and skip blocks of width 0::

  class Block(nn.Module):
    features: int
    widths: Mapping[str, int] = {}  # module path -> width, from shrink

    @nn.compact
    def __call__(self, x):
      ...

  small_variables, widths = optax_gsm.structured.shrink(variables, groups, keep)
  small_model = MyNet(widths=widths)
  small_model.apply(small_variables, x)   # == big model on masked vars
"""

import collections
from collections.abc import Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from optax_gsm import _prunable, _validation
from optax_gsm.structured import _groups

Widths = dict[str, int]


def _check_keep(groups: _groups.Groups, keep: _groups.StructureMask) -> None:
  if len(keep.channels) != len(groups.channels) or (
      np.shape(keep.blocks) != (len(groups.blocks),)):
    raise ValueError(
        f"`keep` has {len(keep.channels)} channel masks and "
        f"{np.size(keep.blocks)} block flags; `groups` has "
        f"{len(groups.channels)} channel groups and {len(groups.blocks)} "
        "blocks.")
  for group, kept in zip(groups.channels, keep.channels):
    if np.shape(kept) != (group.size,):
      raise ValueError(f"`keep` for group {group.name!r} has shape "
                       f"{np.shape(kept)}; the group has {group.size} "
                       "channels.")
    if not np.any(kept):
      raise ValueError(
          f"`keep` for group {group.name!r} keeps no channel: a layer of "
          "width 0 would cut the network (remove a residual block instead, "
          "or keep one channel).")


class ChannelMap(NamedTuple):
  """How one group's channels become the smaller model's.

  ``target[c]``: the new channel of old channel ``c`` (-1: removed);
  ``representative[c]``: whether ``c``'s producing entries (``"out"``
  members) are the new channel's; consuming entries (``"in"``) of every
  channel with the same target are summed.
  """
  target: np.ndarray
  representative: np.ndarray


def _axis_matrix(length: int, claims) -> np.ndarray:
  """The (old, new) 0/1 matrix of one leaf axis; claims are
  ``(group, channel_of, ChannelMap, role)`` of the members on it.

  New positions come in the order of their first old position, and a
  channel's k-th occurrence on the axis (after a flatten: the k-th spatial
  position) stays apart from its other occurrences.
  """
  new_index, pairs, seen = {}, [], {}
  for p in range(length):
    claim = next((c for c in claims if c[1][p] >= 0), None)
    if claim is None:
      key = ("kept", p)
    else:
      group, channel_of, channel_map, role = claim
      channel = int(channel_of[p])
      slot = seen.get((group, channel), 0)
      seen[(group, channel)] = slot + 1
      target = int(channel_map.target[channel])
      if target < 0 or (role == "out"
                        and not channel_map.representative[channel]):
        continue
      key = (group, slot, target)
    pairs.append((p, new_index.setdefault(key, len(new_index))))
  matrix = np.zeros((length, len(new_index)))
  for p, q in pairs:
    matrix[p, q] = 1.0
  return matrix


def _norm_scales(groups: _groups.Groups, paths: list[str]) -> dict[int, int]:
  """The leaf and axis of every norm scale `ChannelGroup.rescaled` names."""
  table = {path: index for index, path in enumerate(paths)}
  found = {}
  for group in groups.channels:
    for member in group.members:
      leaf = _groups.find_leaf(table, member.path)
      if member.path in group.rescaled and leaf is not None:
        found[leaf] = member.axis
  return found


def reduce_channels(variables: chex.ArrayTree, groups: _groups.Groups,
                    maps: list[ChannelMap], removed_blocks: np.ndarray, *,
                    rescale_norms: bool = False
                    ) -> tuple[chex.ArrayTree, Widths]:
  """The smaller variables for one `ChannelMap` per group, and the widths:
  what `shrink` (keep or drop) and `merge_clusters` (sum a cluster into one
  channel) share. ``rescale_norms``: multiply the scales of root-mean-square
  norms over fewer channels by ``sqrt(width / width kept)`` (`shrink`)."""
  leaves, treedef = jax.tree.flatten(variables)
  resolved = _groups.resolve(groups, variables)
  paths = _prunable.leaf_paths(variables)
  norm_scales = _norm_scales(groups, paths) if rescale_norms else {}
  claims = {}
  for index, (members, channel_map) in enumerate(zip(resolved.channels,
                                                     maps)):
    for m in members:
      claims.setdefault((m.leaf, m.axis), []).append(
          (index, m.channel_of, channel_map, m.role))
  small = []
  for index, leaf in enumerate(leaves):
    value = np.asarray(leaf)
    for (i, axis), on_axis in claims.items():
      if i == index:
        matrix = _axis_matrix(value.shape[axis], on_axis)
        moved = np.moveaxis(value, axis, -1).astype(np.float64) @ matrix
        value = np.moveaxis(moved, -1, axis).astype(np.asarray(leaf).dtype)
    if index in norm_scales:
      # mean(x * x) over fewer channels is larger by width / width kept.
      axis = norm_scales[index]
      value = (value * np.sqrt(np.shape(leaf)[axis] / value.shape[axis])
               ).astype(value.dtype)
    small.append(jnp.asarray(value))
  widths: Widths = {}
  for members, channel_map in zip(resolved.channels, maps):
    for m in members:
      if m.role == "out" and _prunable.is_kernel_path(paths[m.leaf]):
        # The kernel's output axis left: one position per kept channel, or
        # several where a channel is a block of them (grouped-query heads).
        inside = m.channel_of[m.channel_of >= 0]
        widths[_prunable.module_path(
            paths[m.leaf], _prunable.has_collections(variables))] = int(
                np.sum(channel_map.representative[inside]
                       & (channel_map.target[inside] >= 0)))
  removed, removed_rows, stack_of = set(), collections.defaultdict(set), {}
  for block, resolved_block, flag in zip(groups.blocks, resolved.blocks,
                                         np.asarray(removed_blocks, bool)):
    if flag and block.row is None:
      widths[block.name] = 0
      removed.update(resolved_block)
    elif flag:
      for leaf in resolved_block:
        removed_rows[leaf].add(block.row)
        stack_of[leaf] = block.name.rpartition("[")[0]
  for leaf, rows in removed_rows.items():
    # A stack keeps its other layers: ``widths[stack]`` is their number.
    widths[stack_of[leaf]] = small[leaf].shape[0] - len(rows)
    small[leaf] = jnp.delete(small[leaf], np.array(sorted(rows)), axis=0)
  if not removed:
    return treedef.unflatten(small), widths
  return _without(variables, paths, small, removed), widths


def _rounded(keep: _groups.StructureMask,
             round_to: int) -> tuple[_groups.StructureMask,
                                     _groups.StructureMask]:
  """``(slots, keep)``: each group's kept channels plus removed ones (first
  by index) up to a multiple of ``round_to`` (at most the group's size)."""
  slots = []
  for kept in keep.channels:
    kept = np.array(kept, bool)
    missing = -int(kept.sum()) % round_to
    extra = np.flatnonzero(~kept)[:missing]
    kept[extra] = True
    slots.append(kept)
  return _groups.StructureMask(tuple(slots), keep.blocks), keep


def shrink(variables: chex.ArrayTree, groups: _groups.Groups,
           keep: _groups.StructureMask, *,
           round_to: int = 1) -> tuple[chex.ArrayTree, Widths]:
  """Removes the pruned structures: a smaller model's variables and widths.

  Example::

    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax_gsm
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((1, 4))
    >>> variables = model.init(jax.random.key(0), x)
    >>> groups = optax_gsm.structured.channel_groups(model.apply, variables, x)
    >>> keep = optax_gsm.structured.StructureMask(
    ...     channels=(jnp.arange(8) < 3,), blocks=jnp.zeros([0], bool))
    >>> small, widths = optax_gsm.structured.shrink(variables, groups, keep)
    >>> widths, small["params"]["layers_2"]["kernel"].shape
    ({'layers_0': 3}, (3, 2))

  Args:
    variables: the full-size variables (params and batch statistics, or the
      params alone), as the groups were traced from.
    groups: the structures (`channel_groups`).
    keep: which structures stay (`kept_structures`, or by hand).
    round_to: int >= 1: round every group's width up to a multiple of this
      (or its full size) with zero channels: removed channels whose entries
      are all set to zero, so the model still computes exactly what the
      masked one computes. Hardware likes round widths: odd widths can run
      slower than the dense model (``python -m benchmarks.width_rounding``
      measures both).

  Returns:
    ``(small_variables, widths)``: the variables with removed channels
    sliced out and removed blocks deleted, and ``widths``: for each module
    that produces a channel group, the length of its kernel's output axis
    left (the channels or heads kept; where a structure is a block of
    positions, its positions: a grouped-query query kernel keeps each kept
    key-value head's query heads), and 0 for each removed block.
  """
  _check_keep(groups, keep)
  round_to = _validation.check_int("round_to", round_to, low=1)
  if round_to > 1:
    keep, real = _rounded(keep, round_to)
    variables = _groups.mask_structures(variables, groups, real)
  maps = []
  for kept in keep.channels:
    kept = np.asarray(kept, bool)
    maps.append(ChannelMap(target=np.where(kept, np.cumsum(kept) - 1, -1),
                           representative=kept))
  return reduce_channels(variables, groups, maps,
                         ~np.asarray(keep.blocks, bool), rescale_norms=True)


def _without(variables: Any, paths: list[str], leaves: list[Any],
             removed: set[int]) -> dict:
  """Nested dicts of the kept leaves; emptied sub-dicts are dropped."""
  if hasattr(variables, "to_pure_dict"):  # nnx.State
    variables = variables.to_pure_dict()
  if not isinstance(variables, Mapping):
    raise ValueError(
        "shrink can delete removed blocks only from nested mappings (linen "
        "variables, nnx.State); got a "
        f"{type(variables).__name__}.")
  result: dict = {}
  for index, (path, leaf) in enumerate(zip(paths, leaves)):
    if index in removed:
      continue
    node = result
    names = path.split("/")
    for name in names[:-1]:
      node = node.setdefault(name, {})
    node[names[-1]] = leaf
  return result
