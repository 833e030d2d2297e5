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
  """
  name: str
  size: int
  members: tuple[Member, ...]
  kind: str = "channels"
  statistics: str = ""
  rescaled: tuple[str, ...] = ()


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


class Resolved(NamedTuple):
  """`Groups` against one tree: members as leaf indices (absent ones gone);
  per block its leaves and its row (None: whole leaves)."""
  channels: tuple[tuple[ResolvedMember, ...], ...]
  sizes: tuple[int, ...]
  blocks: tuple[tuple[int, ...], ...]
  block_rows: tuple[int | None, ...] = ()


def resolve(groups: Groups, tree: chex.ArrayTree) -> Resolved:
  """Looks every member of ``groups`` up in ``tree``; checks the shapes."""
  leaves = jax.tree.leaves(tree)
  table = _lookup(_prunable.leaf_paths(tree))
  channels = []
  for group in groups.channels:
    members = []
    for member in group.members:
      index = find_leaf(table, member.path)
      if index is None:
        continue
      shape = np.shape(leaves[index])
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
  return Resolved(tuple(channels), tuple(g.size for g in groups.channels),
                  blocks, tuple(block.row for block in groups.blocks))


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


class _Factor(NamedTuple):
  """One structure membership of a leaf: ``kept`` says, along ``axis``,
  whether each position's structure of that membership is kept (a scalar
  for a block of whole leaves, ``axis`` None). ``group`` and ``member``
  for a channel group's member, ``block`` and ``row`` for a block."""
  kept: Any
  axis: int | None
  group: int | None = None
  member: ResolvedMember | None = None
  block: int | None = None
  row: int | None = None


def _factors(resolved: Resolved, keep: StructureMask, shapes: list[tuple],
             xp: Any) -> list[list[_Factor]]:
  """Per leaf: its memberships; an entry is kept when all of them are."""
  factors = [[] for _ in shapes]
  for group, (members, kept, size) in enumerate(zip(
      resolved.channels, keep.channels, resolved.sizes)):
    kept_or_none = xp.concatenate([xp.asarray(kept, bool),
                                   xp.ones([1], bool)])
    for member in members:
      factors[member.leaf].append(_Factor(
          kept_or_none[_segment_index(member, size)], member.axis,
          group=group, member=member))
  for block, (leaves, row, kept) in enumerate(zip(
      resolved.blocks, resolved.block_rows, xp.asarray(keep.blocks, bool))):
    for leaf in leaves:
      factors[leaf].append(
          _Factor(kept, None, block=block) if row is None else
          _Factor((xp.arange(shapes[leaf][0]) != row) | kept, 0,
                  block=block, row=row))
  return factors


def entry_masks(resolved: Resolved, keep: StructureMask,
                tree: chex.ArrayTree, xp: Any = jnp) -> chex.ArrayTree:
  """Bool pytree like ``tree``: entries of kept structures (and of none).

  Only the shapes of ``tree`` are read; ``xp=np`` computes on the host.
  """
  leaves, treedef = jax.tree.flatten(tree)
  shapes = [np.shape(w) for w in leaves]
  masks = []
  for shape, factors in zip(shapes, _factors(resolved, keep, shapes, xp)):
    mask = xp.ones(shape, bool)
    for factor in factors:
      mask = mask & (factor.kept if factor.axis is None else expand_along(
          factor.kept, factor.axis, len(shape)))
    masks.append(mask)
  return treedef.unflatten(masks)


def _along_axes(shape: tuple, factors: list[_Factor],
                without: _Factor | None = None
                ) -> tuple[jax.Array, dict[int, jax.Array]]:
  """The product of ``factors`` (but ``without``) as a scalar and one
  vector per axis: every membership depends on one axis at most, so an
  entry is kept by the scalar times its position's value on every axis."""
  scalar, vectors = jnp.ones([], jnp.float32), {}
  for factor in factors:
    if factor is without:
      continue
    kept = jnp.asarray(factor.kept, jnp.float32)
    if factor.axis is None:
      scalar = scalar * kept
    else:
      vectors[factor.axis] = vectors.get(factor.axis, 1.0) * kept
  return scalar, vectors


def _count_over(shape: tuple, vectors: dict[int, jax.Array],
                skip: int | None = None) -> jax.Array:
  """Entries kept summed over every axis but ``skip``."""
  count = jnp.ones([], jnp.float32)
  for axis, length in enumerate(shape):
    if axis != skip:
      count = count * (jnp.sum(vectors[axis]) if axis in vectors
                       else float(length))
  return count


def kept_counts(resolved: Resolved, keep: StructureMask,
                tree: chex.ArrayTree) -> list[jax.Array]:
  """Per leaf of ``tree``: its entries kept by ``keep`` (the sum of its
  `entry_masks` mask, from the kept flags alone: one product per axis)."""
  shapes = [np.shape(w) for w in jax.tree.leaves(tree)]
  counts = []
  for shape, factors in zip(shapes, _factors(resolved, keep, shapes, jnp)):
    scalar, vectors = _along_axes(shape, factors)
    counts.append(scalar * _count_over(shape, vectors))
  return counts


def added_costs(resolved: Resolved, keep: StructureMask,
                tree: chex.ArrayTree, unit_costs: list[float]) -> jax.Array:
  """Per structure (channels group by group, then blocks): the cost its
  entries would add to the model kept by ``keep`` were it kept too.

  An entry is added when every other structure it is in is kept; entries
  of a structure already kept count as if it were not. Only the shapes of
  ``tree`` are read.
  """
  shapes = [np.shape(w) for w in jax.tree.leaves(tree)]
  channels = [jnp.zeros([size], jnp.float32) for size in resolved.sizes]
  blocks = [jnp.zeros([], jnp.float32) for _ in resolved.blocks]
  for shape, factors, unit in zip(shapes,
                                  _factors(resolved, keep, shapes, jnp),
                                  unit_costs):
    if not unit:
      continue
    for factor in factors:
      scalar, vectors = _along_axes(shape, factors, without=factor)
      if factor.axis is None:
        blocks[factor.block] += unit * scalar * _count_over(shape, vectors)
        continue
      along = vectors.get(factor.axis, jnp.ones([shape[factor.axis]]))
      rest = unit * scalar * _count_over(shape, vectors, skip=factor.axis)
      if factor.block is not None:
        blocks[factor.block] += rest * along[factor.row]
      else:
        size = resolved.sizes[factor.group]
        channels[factor.group] += rest * jax.ops.segment_sum(
            along, _segment_index(factor.member, size),
            num_segments=size + 1)[:size]
  return jnp.concatenate(channels + [jnp.stack(blocks) if blocks
                                     else jnp.zeros([0], jnp.float32)])


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
