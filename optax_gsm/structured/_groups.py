"""Prunable structures: channel groups and residual blocks, and their masks.

A structure is what one pruning decision removes. A `ChannelGroup` of size n
holds n channels that must go together with everything that touches them:
channel j of a Dense or Conv output is the kernel's output slice j, bias
entry j, the batch-norm scale, shift, mean and variance entries j, and input
slice j of every layer that consumes it (after a flatten, the block of rows
of that channel). Channels joined by a residual add form one group across
all branches. A `Block` is a residual branch whose removal leaves only its
identity shortcut: all its leaves go at once.

Each `Member` names a leaf by its ``/``-joined path in the variables the
groups were built from, an axis of it, and per position along that axis the
channel it belongs to (-1: none). `channel_groups` builds `Groups` by
tracing a model; they can also be written or edited by hand (the classes are
plain frozen dataclasses: ``dataclasses.replace`` and `Groups.without`).

The same `Groups` apply to the full variables (linen ``{"params": ...,
"batch_stats": ...}`` or an NNX state) and to the params alone: a member
path is looked up as written and, failing that, without its first name
(the collection).

`StructureMask` says which structures are kept: one bool vector per channel
group and one bool per block. An entry is kept when every structure it
belongs to is kept; entries in no structure are always kept.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from optax_gsm import _prunable


@dataclasses.dataclass(frozen=True)
class Member:
  """One leaf's share of a channel group.

  Attributes:
    path: the leaf's ``/``-joined path, e.g. ``"params/Conv_0/kernel"``.
    axis: the leaf axis along which channels lie (non-negative).
    channel_of: int array of the leaf's length along ``axis``: the group
      channel of each position, -1 for positions outside the group (after a
      concatenation with something unprunable).
    role: ``"out"`` where the group's channels are produced (kernel output
      axis, bias, normalisation entries) or ``"in"`` where they are consumed
      (a kernel's input slices).
  """
  path: str
  axis: int
  channel_of: np.ndarray
  role: str


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
  """Channels that are pruned together: ``size`` of them, all members.

  ``kind`` is ``"heads"`` for attention heads (each channel a head: its
  query, key and value slices and the output projection's rows), else
  ``"channels"``. ``statistics`` names what reduces over the channels (a
  norm's statistics over a transformer's residual stream, with
  ``channel_groups(..., through_norms=True)``); where it is not empty, the
  masked model's statistics run over every channel, zeros included, and
  `shrink`'s model computes them over the channels kept. ``rescaled``
  lists the scales of those norms where every one is a root-mean-square
  norm with a per-channel scale (RMSNorm): `shrink` multiplies each by
  ``sqrt(width / width kept)``, and the small model computes what the
  masked one does, up to the norms' epsilon, which then acts as epsilon
  times the kept share (exactly, where the small model's norms multiply
  their epsilon by ``width / width kept``). Where ``statistics`` is set
  and ``rescaled`` is empty (LayerNorm subtracts a mean, or a norm has no
  scale: ``statistics`` ends with the reason), the two are equal only
  where the small model's norms divide by the original width.
  ``bypassed``: every member lies in one residual branch with an identity
  shortcut (a block `channel_groups` found, whether or not it is still in
  ``blocks``): with none of its channels the branch adds nothing and the
  shortcut still carries the signal, where a group on the main path at
  width zero cuts the network.
  """
  name: str
  size: int
  members: tuple[Member, ...]
  kind: str = "channels"
  statistics: str = ""
  rescaled: tuple[str, ...] = ()
  bypassed: bool = False


@dataclasses.dataclass(frozen=True)
class Block:
  """A residual branch with an identity shortcut: removed as a whole.

  Attributes:
    name: the module path common to its leaves (e.g. ``"stage1_block0"``);
      where two blocks share it (the attention and MLP branches of one
      transformer layer), that path and the block's sub-modules joined by
      ``+`` (``"layer0/mlp_in+mlp_norm+mlp_out"``).
    paths: every leaf of the branch (params and statistics).
    row: for a layer of a scan stack (``"layers[2]"``: every branch of that
      layer), the row of each stacked leaf that is its; None: whole leaves.
  """
  name: str
  paths: tuple[str, ...]
  row: int | None = None


@dataclasses.dataclass(frozen=True)
class Groups:
  """Every prunable structure of a model.

  Attributes:
    channels: the channel groups.
    blocks: the removable residual blocks.
    unprunable: ``(name, reason)`` of channel groups tracing found but that
      cannot be pruned (model outputs, channels mixed by a normalisation).
    macs_per_entry: per kernel path, multiply-adds per example that each of
      its entries takes part in (for ``cost="flops"``).
  """
  channels: tuple[ChannelGroup, ...]
  blocks: tuple[Block, ...] = ()
  unprunable: tuple[tuple[str, str], ...] = ()
  macs_per_entry: Mapping[str, float] = dataclasses.field(
      default_factory=dict)

  @property
  def num_structures(self) -> int:
    return sum(g.size for g in self.channels) + len(self.blocks)

  def without(self, names: Sequence[str]) -> "Groups":
    """These groups less the channel groups and blocks with these names."""
    names = set(names)
    unknown = names - {g.name for g in self.channels} - {
        b.name for b in self.blocks}
    if unknown:
      raise ValueError(f"`names` has no structure called {sorted(unknown)}.")
    return dataclasses.replace(
        self,
        channels=tuple(g for g in self.channels if g.name not in names),
        blocks=tuple(b for b in self.blocks if b.name not in names),
        unprunable=self.unprunable + tuple(
            (n, "removed by Groups.without") for n in sorted(names)))


class StructureMask(NamedTuple):
  """Which structures are kept: a bool vector per channel group, then blocks.

  Attributes:
    channels: tuple of bool arrays, one of each group's size.
    blocks: bool array with one entry per block.
  """
  channels: tuple[chex.Array, ...]
  blocks: chex.Array


def _lookup(paths: list[str]) -> dict[str, int]:
  table = {}
  for index, path in enumerate(paths):
    table[path] = index
  return table


def find_leaf(table: Mapping[str, int], path: str) -> int | None:
  """The leaf index of ``path`` in a tree, as written or without its first
  name (the collection); None if the tree has no such leaf."""
  if path in table:
    return table[path]
  _, _, rest = path.partition("/")
  return table.get(rest)


class ResolvedMember(NamedTuple):
  leaf: int
  axis: int
  channel_of: np.ndarray
  role: str


class Layout(NamedTuple):
  """Where each structure's entries lie, for sums over the structures in a
  few array ops whatever the number of leaves (a loop of ops per member
  compiled to hundreds of kernels).

  Every membership depends on one axis of a leaf. An item is a leaf's axis
  with the structure of each position along it (``num_structures``: in
  none), or a single position for a block of whole leaves. An entry is
  kept when each of its leaf's items keeps its position, so a leaf keeps
  the product of its items' kept positions and of the lengths of its
  other axes; a structure's sum over its entries is the sum of its
  positions' sums over the other axes.
  """
  position_item: np.ndarray  # [P] the item of each position
  position_structure: np.ndarray  # [P] its structure
  item_leaf: np.ndarray  # [items]
  item_axis: tuple[int | None, ...]  # None: a whole leaf
  leaf_items: np.ndarray  # [leaves, w] item indices, padded: the value 1
  item_others: np.ndarray  # [items, w] its leaf's other items, padded
  other_lengths: np.ndarray  # [leaves] float64: its axes in no item
  num_structures: int


class Resolved(NamedTuple):
  """`Groups` against one tree: members as leaf indices (absent ones gone);
  per block its leaves and its row (None: whole leaves); the `Layout`."""
  channels: tuple[tuple[ResolvedMember, ...], ...]
  sizes: tuple[int, ...]
  blocks: tuple[tuple[int, ...], ...]
  block_rows: tuple[int | None, ...]
  layout: Layout


def _padded(rows: list[list[int]], pad: int) -> np.ndarray:
  width = max([len(r) for r in rows] + [1])
  return np.asarray([r + [pad] * (width - len(r)) for r in rows],
                    np.int32).reshape(len(rows), width)


def _layout(channels: tuple[tuple[ResolvedMember, ...], ...],
            sizes: tuple[int, ...], blocks: tuple[tuple[int, ...], ...],
            block_rows: tuple[int | None, ...], shapes: list[tuple],
            paths: list[str], names: list[str]) -> Layout:
  """The `Layout` of these structures on leaves of ``shapes`` (``paths``);
  ``names``, per structure, name the two in the error for a position
  claimed twice along one axis."""
  num = sum(sizes) + len(blocks)
  along = {}  # (leaf, axis) -> structure per position

  def claim(leaf, axis, structures):
    current = along.setdefault((leaf, axis),
                               np.full(shapes[leaf][axis], num, np.int32))
    claimed = structures < num
    taken = claimed & (current < num)
    if np.any(taken):
      position = int(np.argmax(taken))
      raise ValueError(
          f"groups: position {position} of {paths[leaf]!r} along axis "
          f"{axis} is in {names[current[position]]!r} and in "
          f"{names[structures[position]]!r}; a position belongs to one "
          "structure per axis.")
    current[claimed] = structures[claimed]

  start = np.cumsum((0,) + sizes)
  for group, members in enumerate(channels):
    for member in members:
      claim(member.leaf, member.axis, np.where(
          member.channel_of < 0, num, start[group] + member.channel_of))
  items = []  # (leaf, axis, structure per position)
  for block, (leaves, row) in enumerate(zip(blocks, block_rows)):
    structure = start[-1] + block
    for leaf in leaves:
      if row is None:
        items.append((leaf, None, np.asarray([structure], np.int32)))
      else:
        rows = np.full(shapes[leaf][0], num, np.int32)
        rows[row] = structure
        claim(leaf, 0, rows)
  items = [(leaf, axis, s) for (leaf, axis), s in along.items()] + items
  leaf_items = [[] for _ in shapes]
  for i, (leaf, _, _) in enumerate(items):
    leaf_items[leaf].append(i)
  pad = len(items)
  return Layout(
      position_item=np.concatenate(
          [np.full(len(s), i, np.int32) for i, (_, _, s) in enumerate(items)]
          + [np.zeros([0], np.int32)]),
      position_structure=np.concatenate(
          [s for _, _, s in items] + [np.zeros([0], np.int32)]),
      item_leaf=np.asarray([leaf for leaf, _, _ in items], np.int32),
      item_axis=tuple(axis for _, axis, _ in items),
      leaf_items=_padded(leaf_items, pad),
      item_others=_padded([[o for o in leaf_items[leaf] if o != i]
                           for i, (leaf, _, _) in enumerate(items)], pad),
      other_lengths=np.asarray(
          [np.prod([n for axis, n in enumerate(shape)
                    if (leaf, axis) not in along]) for leaf, shape in
           enumerate(shapes)], np.float64).reshape(-1),
      num_structures=num)


def resolve(groups: Groups, tree: chex.ArrayTree) -> Resolved:
  """Looks every member of ``groups`` up in ``tree``; checks the shapes and
  that a position lies in one structure per axis."""
  leaves = jax.tree.leaves(tree)
  shapes = [np.shape(w) for w in leaves]
  paths = _prunable.leaf_paths(tree)
  table = _lookup(paths)
  channels = []
  for group in groups.channels:
    members = []
    for member in group.members:
      index = find_leaf(table, member.path)
      if index is None:
        continue
      shape = shapes[index]
      if not 0 <= member.axis < len(shape) or (
          shape[member.axis] != len(member.channel_of)):
        raise ValueError(
            f"groups: member {member.path!r} axis {member.axis} has "
            f"{len(member.channel_of)} positions; the leaf has shape {shape}.")
      members.append(ResolvedMember(index, member.axis,
                                    np.asarray(member.channel_of, np.int32),
                                    member.role))
    if group.members and not members:
      raise ValueError(
          f"`groups` are not of these variables: no member of group "
          f"{group.name!r} (e.g. {group.members[0].path!r}) is among their "
          "leaves. Were the groups traced from another model?")
    channels.append(tuple(members))
  blocks = tuple(
      tuple(i for i in (find_leaf(table, p) for p in block.paths)
            if i is not None)
      for block in groups.blocks)
  channels = tuple(channels)
  sizes = tuple(g.size for g in groups.channels)
  rows = tuple(block.row for block in groups.blocks)
  names = [g.name for g in groups.channels for _ in range(g.size)] + [
      b.name for b in groups.blocks]
  return Resolved(channels, sizes, blocks, rows,
                  _layout(channels, sizes, blocks, rows, shapes, paths, names))


def touched_leaves(resolved: Resolved, num_leaves: int) -> list[bool]:
  """Per leaf: whether some structure has entries in it."""
  touched = [False] * num_leaves
  for members in resolved.channels:
    for member in members:
      touched[member.leaf] = True
  for block in resolved.blocks:
    for leaf in block:
      touched[leaf] = True
  return touched


def _segment_index(member: ResolvedMember, size: int) -> np.ndarray:
  return np.where(member.channel_of < 0, size, member.channel_of)


def per_channel_sum(values: jax.Array, member: ResolvedMember,
                    size: int) -> jax.Array:
  """Sums ``values`` (a member's leaf) over each channel's entries: (size,)."""
  moved = jnp.moveaxis(values, member.axis, 0)
  rows = moved.reshape(moved.shape[0], -1).sum(axis=1)
  return jax.ops.segment_sum(rows, _segment_index(member, size),
                             num_segments=size + 1)[:size]


def expand_along(vector: jax.Array, axis: int, ndim: int) -> jax.Array:
  shape = [1] * ndim
  shape[axis] = -1
  return vector.reshape(shape)


def entry_masks(resolved: Resolved, keep: StructureMask,
                tree: chex.ArrayTree, xp: Any = jnp) -> chex.ArrayTree:
  """Bool pytree like ``tree`` (the tree ``resolved`` is of): entries of
  kept structures (and of none).

  Only the shapes of ``tree`` are read; ``xp=np`` computes on the host.
  """
  leaves, treedef = jax.tree.flatten(tree)
  shapes = [np.shape(w) for w in leaves]
  layout_ = resolved.layout
  kept = xp.concatenate([xp.asarray(k, bool) for k in keep.channels]
                        + [xp.asarray(keep.blocks, bool).reshape(-1),
                           xp.ones([1], bool)])
  masks = [xp.ones(shape, bool) for shape in shapes]
  for leaf, axis, structures in zip(layout_.item_leaf, layout_.item_axis,
                                    _item_structures(layout_)):
    along = kept[structures]
    masks[leaf] = masks[leaf] & (along[0] if axis is None else expand_along(
        along, axis, len(shapes[leaf])))
  return treedef.unflatten(masks)


def _item_structures(layout_: Layout) -> list[np.ndarray]:
  """Each item's structure per position."""
  counts = np.bincount(layout_.position_item,
                       minlength=len(layout_.item_leaf))
  return np.split(layout_.position_structure, np.cumsum(counts)[:-1])


def structure_sums(layout_: Layout, values: list[jax.Array]) -> jax.Array:
  """Per structure, the sum of ``values`` (leaves like the tree) over its
  entries."""
  rows = [jnp.sum(values[leaf]).reshape(1) if axis is None else
          jnp.sum(values[leaf], axis=tuple(
              a for a in range(values[leaf].ndim) if a != axis))
          for leaf, axis in zip(layout_.item_leaf, layout_.item_axis)]
  return jax.ops.segment_sum(
      jnp.concatenate(rows + [jnp.zeros([0], jnp.float32)]),
      layout_.position_structure,
      num_segments=layout_.num_structures + 1)[:layout_.num_structures]


def _segment_sum(xp: Any, data: Any, segments: np.ndarray,
                 num: int) -> Any:
  if xp is np:
    return np.bincount(segments, weights=data, minlength=num)
  return jax.ops.segment_sum(data, segments, num_segments=num)


def _item_values(layout_: Layout, kept_flat: Any, xp: Any = jnp) -> Any:
  """Each item's kept positions, then a 1 (the padding's value)."""
  dtype = np.float64 if xp is np else jnp.float32
  kept = xp.concatenate([xp.asarray(kept_flat, dtype), xp.ones([1], dtype)])
  sums = _segment_sum(xp, kept[layout_.position_structure],
                      layout_.position_item, len(layout_.item_leaf))
  return xp.concatenate([sums, xp.ones([1], dtype)])


def _leaf_scales(layout_: Layout, unit_costs: list[float],
                 dtype: Any = np.float32) -> np.ndarray:
  return (np.asarray(unit_costs, np.float64)
          * layout_.other_lengths).astype(dtype)


def kept_cost(layout_: Layout, unit_costs: list[float], kept_flat: Any,
              xp: Any = jnp) -> Any:
  """The cost of the entries ``kept_flat`` (per structure: channels group
  by group, then blocks) keeps, entries in no structure included;
  ``xp=np`` counts on the host in float64."""
  values = _item_values(layout_, kept_flat, xp)
  scales = _leaf_scales(layout_, unit_costs,
                        np.float64 if xp is np else np.float32)
  return xp.sum(scales * xp.prod(values[layout_.leaf_items], axis=1))


def added_costs(layout_: Layout, unit_costs: list[float],
                kept_flat: jax.Array) -> jax.Array:
  """Per structure: the cost its entries would add to the model kept by
  ``kept_flat`` were it kept too.

  An entry is added when every other structure it is in is kept; entries
  of a structure already kept count as if it were not.
  """
  values = _item_values(layout_, kept_flat)
  rest = (_leaf_scales(layout_, unit_costs)[layout_.item_leaf]
          * jnp.prod(values[layout_.item_others], axis=1))
  return _segment_sum(jnp, rest[layout_.position_item],
                      layout_.position_structure,
                      layout_.num_structures + 1)[:layout_.num_structures]


def block_entries(values: Any, row: int | None) -> Any:
  """The entries of a leaf that a block holds: all, or its row."""
  return values if row is None else values[row]


def mask_structures(tree: chex.ArrayTree, groups: Groups,
                    keep: StructureMask) -> chex.ArrayTree:
  """``tree`` with every entry of a removed structure set to zero.

  This is the masked big model that `shrink` makes physically smaller: both
  compute the same function.

  Args:
    tree: params or full variables.
    groups: the structures (from `channel_groups` or by hand).
    keep: which structures stay (`kept_structures`).

  Returns:
    ``tree`` with removed structures zeroed.
  """
  masks = entry_masks(resolve(groups, tree), keep, tree)
  return jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros_like(w)),
                      tree, masks)


def all_kept(groups: Groups) -> StructureMask:
  """The `StructureMask` that keeps everything."""
  return StructureMask(
      channels=tuple(jnp.ones([g.size], bool) for g in groups.channels),
      blocks=jnp.ones([len(groups.blocks)], bool))
