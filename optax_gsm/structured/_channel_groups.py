"""`channel_groups`: the prunable structures of a model, read off its jaxpr.

The model's apply function is traced once into `optax_gsm._graph`'s graph
(calls inlined, ``scan`` unrolled, ``while`` and ``cond`` opaque). Every
value is then one of: derived from variables only (a parameter view: which
leaf axis each of its axes is), derived from the inputs (an activation), or
a constant. Along one axis an activation may
carry channel labels: per position, the (group, channel) it belongs to.

- A Dense (``dot_general``) or Conv (``conv_general_dilated``) whose kernel
  is a variable starts a new group on its output features; its input
  labels make the kernel's input axis a member ("in"). A kernel with
  several output axes (``DenseGeneral``: attention's query, key and value
  over ``(heads, head_dim)``) starts a group on the first: one structure per
  head, all its features; one contracting several axes (attention's output
  projection over ``(heads, head_dim)``) reads the labels of any of them.
- A product of two activations (attention's scores ``q k^T`` and weighted
  values) joins labels on paired batch axes: the query's, key's and value's
  heads become one group, with the output projection's rows that read them
  (named after the query's kernel). Its multiply-adds, which no kernel
  entry takes part in, are charged to the query kernel's entries for
  ``cost="flops"``. Channels summed by such a product, or heads that meet
  an operand without them, are unprunable.
- An element-wise op joins its operands' labels (a residual add unites two
  groups) and makes members of the parameter views it meets along the
  labelled axis (bias, batch-norm scale, shift, mean and variance).
- Pooling, transposes, reshapes that keep or flatten the channel axis (a
  flatten maps row ``(h * W + w) * C + c`` to channel ``c``), slices and pads
  that do not touch it, reductions over other axes and concatenations carry
  the labels along.
- A reshape that splits the channel axis into blocks (grouped-query
  attention's query heads regrouped per key-value head, GroupNorm's groups)
  makes each block one structure, labelled on the outer axis: a key-value
  head with its query heads, a norm group with its channels. Likewise
  where each channel of one group meets a block of channels of another
  (keys and values repeated per query head). A single key-value head read
  by every query head (multi-query attention) stays; the query heads remain
  structures.
- Channels become unprunable (listed in `Groups.unprunable`) where they
  reach the model's output, a reduction over the channel axis (LayerNorm,
  RMSNorm, a softmax), a split whose blocks mix channels of several groups
  or not in order, a grouped (not depthwise) convolution, or are combined
  element-wise with an input or constant that has its own values per
  channel (a value broadcast along the channel axis, such as a causal mask
  over heads, has none).
- With ``through_norms=True``, a ``reduce_sum`` over the channel axis (a
  norm's mean and variance) yields an unlabelled per-token statistic
  instead, recorded on the group (`ChannelGroup.statistics`); the
  statistic scaled by a per-channel parameter (the norm's scale) makes that
  parameter a member where it meets the labelled channels. A transformer's
  residual stream (embedding, every branch's output projection and bias,
  the norms' scales and biases, every kernel reading it) becomes one group.
  A norm whose statistic is a mean of squares and that only multiplies the
  channels, then a per-channel scale (RMSNorm), has its scale listed in
  `ChannelGroup.rescaled`; one that subtracts a mean, or has no scale, is
  not.
- Equations the outputs do not depend on (a slice used only for its shape,
  as ``make_causal_mask(x[..., 0])``) are skipped: they constrain nothing.
- Any other op that meets labelled channels is an error naming the op
  (``on_unknown="error"``), or makes them unprunable
  (``on_unknown="unprunable"``).

A layer stacked by a scan (``nn.scan``, ``nnx.scan``) is one row of each
of its stacked leaves: its output channel ``j`` is one structure across the
whole stack (every layer keeps the same channels, so the stack stays a
stack); its FLOPs per entry are those of one layer. Leaves read inside a
``while`` or ``cond`` are listed unprunable, and labelled channels that meet
one are an error naming it (or unprunable, with ``on_unknown``).

A residual block is an ``add`` of an activation ``x`` and a branch computed
from ``x`` alone whose values and variables are used nowhere else; its
removal leaves ``x``. In a scan stack a single branch is not a block (the
layers must stay alike), but a whole layer is (``layers[i]``: row ``i`` of
every stacked leaf) when every live equation of its step and every stacked
leaf lie in such branches of that step (pre-LN layers; not post-LN ones):
with its row zeroed the layer is the identity.

Trace in inference mode (batch norm with running averages, dropout off):
dropout's random mask would make every channel unprunable.
"""

import collections
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import chex
import numpy as np

from optax_gsm import _graph, _prunable, _validation
from optax_gsm.structured import _groups

_ELEMENTWISE = frozenset("""
abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp
convert_element_type copy copy_p cos cosh div eq erf erf_inv erfc exp exp2
expm1 floor ge gt integer_pow is_finite le log log1p logistic lt max min mul
ne neg nextafter not or pow reduce_precision rem round rsqrt select_n sign
sin sinh sqrt square stop_gradient sub tan tanh xor
""".split())
_REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or "
    "argmax argmin".split())
_WINDOWED = frozenset(
    "reduce_window_max reduce_window_min reduce_window_sum "
    "reduce_window".split())
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_RANDOM = frozenset(
    "random_bits threefry2x32 rng_bit_generator rng_uniform".split())


@dataclasses.dataclass
class _Value:
  """What tracing knows of one jaxpr value.

  kind: "act" (depends on the inputs), "param" (on variables only) or
  "const". For "act", ``axis``/``group``/``channel`` label one axis (or
  ``axis`` is None). For "param", ``sources`` lists ``(leaf, axis_map)``:
  which leaf axis each axis of the value is (None: none).
  """
  kind: str
  shape: tuple[int, ...]
  axis: int | None = None
  group: np.ndarray | None = None
  channel: np.ndarray | None = None
  sources: tuple[tuple[int, tuple[int | None, ...]], ...] = ()
  # Axis numbers: every handler that moves axes maps or clears them.
  uniform: frozenset[int] = frozenset()


class _UnionFind:
  """Channel groups being built: union by residual adds, members, fixes.

  Labels and members number a group's channels as it was created;
  ``factor[g]`` consecutive ones of them are one structure once a reshape
  split them off together (`coarsen`): structure ``channel // factor[g]``.
  """

  def __init__(self):
    self.parent: list[int] = []
    self.size: list[int] = []
    self.name: list[str] = []
    self.members: list[list[tuple]] = []
    self.fixed: list[str | None] = []
    self.heads: list[bool] = []
    # Why a group's channels are reduced over (`through_norms`), or None;
    # the scales of its norms, ``(leaf, axis)``; why `shrink` cannot make
    # those norms exact by rescaling their scales, or None.
    self.statistics: list[str | None] = []
    self.norm_scales: list[set[tuple[int, int]]] = []
    self.inexact: list[str | None] = []
    self.factor: list[int] = []

  def new(self, size: int, name: str) -> int:
    self.parent.append(len(self.parent))
    self.size.append(size)
    self.name.append(name)
    self.members.append([])
    self.fixed.append(None)
    self.heads.append(False)
    self.statistics.append(None)
    self.norm_scales.append(set())
    self.inexact.append(None)
    self.factor.append(1)
    return len(self.parent) - 1

  def structures(self, group: int) -> int:
    """How many structures ``group`` (an original group) has."""
    return self.size[group] // self.factor[group]

  def coarsen(self, group: int, by: int) -> bool:
    """Makes every ``by`` consecutive structures of ``group``'s set one;
    False (nothing changed) where ``by`` does not divide their number."""
    root = self.find(group)
    in_set = [g for g in range(len(self.parent)) if self.find(g) == root]
    if any(self.structures(g) % by for g in in_set):
      return False
    for g in in_set:
      self.factor[g] *= by
    return True

  def find(self, group: int) -> int:
    while self.parent[group] != group:
      self.parent[group] = self.parent[self.parent[group]]
      group = self.parent[group]
    return group

  def union(self, a: int, b: int) -> None:
    a, b = self.find(a), self.find(b)
    if a != b:
      self.parent[b] = a
      self.members[a].extend(self.members[b])
      self.fixed[a] = self.fixed[a] or self.fixed[b]
      self.heads[a] = self.heads[a] or self.heads[b]
      self.statistics[a] = self.statistics[a] or self.statistics[b]
      self.norm_scales[a] |= self.norm_scales[b]
      self.inexact[a] = self.inexact[a] or self.inexact[b]

  def fix(self, groups, reason: str) -> None:
    for group in self.roots(groups):
      if self.fixed[group] is None:
        self.fixed[group] = reason

  def roots(self, groups) -> set[int]:
    """The sets of these labels (-1: none)."""
    return {self.find(int(g)) for g in np.asarray(groups).ravel() if g >= 0}

  def not_rescalable(self, groups, reason: str) -> None:
    for group in self.roots(groups):
      self.inexact[group] = self.inexact[group] or reason


class _Tracer:
  """One forward pass over the graph, assigning labels and members."""

  def __init__(self, graph: _graph.Graph, paths: list[str], leaf_ids: list[int],
               on_unknown: str, collections_level: bool,
               through_norms: bool = False):
    self.graph = graph
    self.collections_level = collections_level
    self.paths = paths
    self.on_unknown = on_unknown
    self.through_norms = through_norms
    self.groups = _UnionFind()
    self.values: dict[int, _Value] = {}
    self.macs: dict[str, float] = collections.defaultdict(float)
    # Rows of a scan-stacked leaf are the layers of one stack: each layer's
    # channel j is one structure across the stack (the stack stays a stack).
    self.scan_length = {s.leaf: s.length for s in graph.scanned}
    self.stack_group: dict[tuple[int, int], int] = {}
    # With `through_norms`: squares of labelled channels, per-token
    # statistics derived from a reduction over them, and channels divided
    # by a statistic that no scale has multiplied yet.
    self.squares: set[int] = set()
    self.derived: set[int] = set()
    self.unscaled: set[int] = set()
    # Leaves read inside control flow no walker follows, and why.
    self.opaque: dict[int, str] = {}
    for leaf, index in enumerate(leaf_ids):
      shape = graph.shapes[index]
      self.values[index] = _Value(
          "param", shape, sources=((leaf, tuple(range(len(shape)))),))
    for index in graph.constants:
      self.values[index] = _Value("const", graph.shapes[index])

  # -- helpers --------------------------------------------------------------

  def value(self, index: int) -> _Value:
    if index not in self.values:  # a model input
      self.values[index] = _Value("act", self.graph.shapes[index])
    return self.values[index]

  def fix(self, value: _Value, reason: str) -> None:
    if value.kind == "act" and value.axis is not None:
      self.groups.fix(value.group, reason)

  def member(self, value: _Value, source, axis_in_source: int,
             role: str) -> bool:
    """Makes a parameter view's axis a member of ``value``'s labels; False
    if that axis is no single leaf axis."""
    leaf, axis_map = source
    leaf_axis = axis_map[axis_in_source]
    if leaf_axis is None:
      return False
    for group in set(int(g) for g in value.group if g >= 0):
      channel_of = np.where(value.group == group, value.channel, -1)
      # With its original group: a later `coarsen` renumbers it.
      self.groups.members[self.groups.find(group)].append(
          (leaf, leaf_axis, channel_of, role, group))
    return True

  def new_group(self, shape, axis: int, source, role_axis: int,
                name_leaf: int) -> _Value:
    size = shape[axis]
    name = self.paths[name_leaf]
    group = self.groups.new(size, name)
    out = _Value("act", tuple(shape), axis=axis,
                 group=np.full(size, group), channel=np.arange(size))
    for src in source:
      if not self.member(out, src, role_axis, "out"):
        self.groups.fix([group], f"kernel of {name} is reshaped")
      elif src[0] in self.scan_length:
        key = (src[0], src[1][role_axis])
        self.groups.union(self.stack_group.setdefault(key, group), group)
    return out

  def unknown(self, eqn: _graph.Eqn, labelled: list[_Value]) -> None:
    reason = f"op `{eqn.name}`"
    if self.on_unknown == "error":
      names = sorted({
          _prunable.module_path(self.groups.name[self.groups.find(int(g))],
                       self.collections_level)
          for v in labelled for g in v.group if g >= 0})
      raise NotImplementedError(
          f"channel_groups cannot follow channels through {reason} (channels "
          f"of {names}). Pass `on_unknown='unprunable'` to leave them "
          "unpruned, or build the groups by hand (optax_gsm.structured.Groups).")
    for v in labelled:
      self.fix(v, reason)

  def not_followed(self, values: list[_Value], reason: str) -> None:
    """Parameter leaves whose channels no group follows, and why."""
    for v in values:
      if v.kind == "param":
        for leaf, _ in v.sources:
          self.opaque.setdefault(leaf, reason)

  def default_outputs(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    kind = ("act" if any(v.kind == "act" for v in ins)
            else "param" if any(v.kind == "param" for v in ins) else "const")
    for out in eqn.outputs:
      shape = self.graph.shapes[out]
      sources = tuple((leaf, (None,) * len(shape))
                      for v in ins for leaf, _ in v.sources)
      self.values[out] = _Value(kind, shape, sources=sources)

  # -- the pass -------------------------------------------------------------

  def run(self, outputs: list[int], live: set[int]) -> None:
    """Labels every value the ``live`` equations compute; a dead one (a
    slice whose only use is its shape, as ``make_causal_mask(x[..., 0])``)
    constrains nothing."""
    random: set[int] = set()  # values drawn from a PRNG, and what they make
    for index, eqn in enumerate(self.graph.eqns):
      if index not in live:
        continue
      self.random_operand = any(i in random for i in eqn.inputs)
      if eqn.name in _RANDOM or (self.random_operand and all(
          self.value(i).kind != "act" or i in random for i in eqn.inputs)):
        random.update(eqn.outputs)
      ins = [self.value(i) for i in eqn.inputs]
      labelled = [v for v in ins if v.kind == "act" and v.axis is not None]
      handler = _HANDLERS.get(eqn.name)
      if handler is None:
        for name, family in _FAMILIES:
          if eqn.name in family:
            handler = name
      if handler is not None:
        getattr(self, handler)(eqn, ins)
        if self.through_norms and eqn.outputs:
          self.follow_norm(eqn, ins)
      else:
        if eqn.name in _graph.OPAQUE_CONTROL_FLOW:
          for v in ins:
            for leaf, _ in v.sources:
              self.opaque.setdefault(leaf, f"used inside `{eqn.name}`")
        if labelled:
          self.unknown(eqn, labelled)
        self.default_outputs(eqn, ins)
    for index in outputs:
      self.fix(self.value(index), "model output")

  def elementwise(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    shape = self.graph.shapes[eqn.outputs[0]]
    uniform = frozenset(range(len(shape))).intersection(
        *(v.uniform for v in ins if len(v.shape) == len(shape)))
    acts = [v for v in ins if v.kind == "act"]
    if not acts:
      kind = "param" if any(v.kind == "param" for v in ins) else "const"
      sources = tuple(
          (leaf, tuple(m if v.shape[a] == shape[a] else None
                       for a, m in enumerate(axis_map)))
          for v in ins if len(v.shape) == len(shape)
          for leaf, axis_map in v.sources)
      self.values[eqn.outputs[0]] = _Value(kind, shape, sources=sources,
                                           uniform=uniform)
      return
    labelled = [v for v in acts if v.axis is not None
                and v.shape[v.axis] == shape[v.axis]]
    out = _Value("act", shape, uniform=uniform)
    if self.through_norms and not labelled:
      # A norm's per-token factor times its per-channel scale: the scale
      # becomes a member where the product meets labelled channels.
      out = self.scaled_statistic(shape, ins)
    if labelled:
      first = labelled[0]
      out = dataclasses.replace(first, shape=shape, uniform=uniform)
      for other in labelled[1:]:
        self.join(first, other)
      axis = first.axis
      for v in ins:
        full = (len(v.shape) == len(shape) and v.shape[axis] == shape[axis]
                and axis not in v.uniform)
        if v.kind == "param" and full:
          for source in v.sources:
            if not self.member(first, source, axis, "out"):
              self.fix(first, "a parameter with its own values per channel")
        elif (v.kind == "act" and v.axis is None and v.sources
              and len(v.shape) == len(shape) and v.shape[axis] == shape[axis]
              and axis in v.uniform):
          for source in v.sources:
            if not self.member(first, source, axis, "out"):
              self.fix(first, "a parameter with its own values per channel")
        elif v.kind != "param" and full and v.axis != axis:
          if self.random_operand:
            what = ("random values (dropout in training mode? trace with "
                    "train=False or deterministic=True)")
          else:
            what = "a constant" if v.kind == "const" else "an input"
          self.fix(first, f"{what} with its own values per channel")
    self.values[eqn.outputs[0]] = out

  def scaled_statistic(self, shape: tuple[int, ...],
                       ins: list[_Value]) -> _Value:
    """An unlabelled product of activations and parameters: ``uniform``
    where the activations are, with the parameters' views as ``sources``."""
    same_rank = [v for v in ins if len(v.shape) == len(shape)]
    uniform = frozenset(range(len(shape))).intersection(*(
        v.uniform | {a for a, n in enumerate(v.shape) if n != shape[a]}
        for v in same_rank if v.kind != "param"))
    sources = tuple(
        (leaf, tuple(m if v.shape[a] == shape[a] else None
                     for a, m in enumerate(axis_map)))
        for v in same_rank for leaf, axis_map in v.sources)
    return _Value("act", shape, uniform=uniform, sources=sources)

  def follow_norm(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    """Tells root-mean-square norms with a per-channel scale (`shrink`
    rescales the scale by ``sqrt(width / width kept)``: exact up to the
    norm's epsilon) from norms it cannot make exact: a mean subtracted
    (LayerNorm), or no scale to rescale."""
    out, name = eqn.outputs[0], eqn.name
    result = self.values[out]
    first = ins[0]
    if name in _PASS_THROUGH:
      for found in (self.squares, self.derived, self.unscaled):
        if eqn.inputs[0] in found:
          found.add(out)
      return
    labelled = first.kind == "act" and first.axis is not None
    if labelled and (name == "square" or (
        name == "integer_pow" and eqn.params["y"] == 2) or (
            name == "mul" and eqn.inputs[0] == eqn.inputs[1])):
      self.squares.add(out)
      return
    if name == "reduce_sum" and labelled and first.axis in eqn.params["axes"]:
      self.derived.add(out)
      if eqn.inputs[0] not in self.squares:
        self.groups.not_rescalable(first.group,
                                   "a mean over the channels (LayerNorm)")
      return
    derived = [v for i, v in zip(eqn.inputs, ins) if i in self.derived]
    unscaled = [v for i, v in zip(eqn.inputs, ins) if i in self.unscaled]
    if derived and result.kind == "act" and result.axis is None:
      self.derived.add(out)  # still one value per token
    elif derived and name != "mul":
      self.groups.not_rescalable(
          result.group, "a statistic meets the channels other than as a "
          "factor")
    elif derived:
      # The statistic meets the channels, already scaled (Flax's norms) or
      # to be scaled next (``x * rsqrt(mean(x * x)) * scale``).
      sources = [s for v in derived for s in v.sources]
      if sources:
        self.norm_scale(result, sources)
      else:
        self.unscaled.add(out)
    if unscaled:
      sources = [s for v in ins if v.kind == "param" for s in v.sources]
      if name == "mul" and sources and result.axis is not None:
        self.norm_scale(result, sources)
      else:
        for v in unscaled:
          self.groups.not_rescalable(v.group, "a norm without a scale")

  def norm_scale(self, channels: _Value, sources) -> None:
    for leaf, axis_map in sources:
      leaf_axis = axis_map[channels.axis]
      if leaf_axis is None:
        self.groups.not_rescalable(channels.group,
                                   "a norm's scale not per channel")
        continue
      for group in self.groups.roots(channels.group):
        self.groups.norm_scales[group].add((leaf, leaf_axis))

  def join(self, a: _Value, b: _Value) -> None:
    if a.axis != b.axis or not np.array_equal(a.group < 0, b.group < 0):
      self.fix(a, "joined with channels along another axis")
      self.fix(b, "joined with channels along another axis")
      return
    pairs = {}
    factor = self.groups.factor
    for ga, ca, gb, cb in zip(a.group, a.channel, b.group, b.channel):
      if ga >= 0:
        structure = int(ca) // factor[ga]
        pairs.setdefault((int(ga), int(gb)), []).append(
            (structure, structure == int(cb) // factor[gb]))
    for (ga, gb), pairs_ab in pairs.items():
      # Every structure of both meets its namesake, and only it.
      same = [s for _, s in pairs_ab]
      covered = {structure for structure, _ in pairs_ab}
      sizes_match = (self.groups.structures(ga) == self.groups.structures(gb)
                     == len(covered))
      if all(same) and sizes_match:
        self.groups.union(ga, gb)
      elif not self.join_coarsened(a, b, ga, gb):
        self.groups.fix([ga, gb], "joined with a permutation of channels")

  def join_coarsened(self, a: _Value, b: _Value, ga: int, gb: int) -> bool:
    """Joins ``ga`` and ``gb`` where each structure of one meets a block of
    ``by`` consecutive structures of the other (keys and values repeated
    for each query head of grouped-query attention): the block becomes one
    structure. False (nothing changed) otherwise."""
    groups = self.groups
    where = (a.group == ga) & (b.group == gb)
    sa = a.channel[where] // groups.factor[ga]
    sb = b.channel[where] // groups.factor[gb]
    (fine, fine_s), (coarse, coarse_s) = sorted(
        [(ga, sa), (gb, sb)], key=lambda side: -groups.structures(side[0]))
    count = groups.structures(coarse)
    by = groups.structures(fine) // count
    if (by < 2 or groups.structures(fine) != by * count
        or not np.array_equal(fine_s // by, coarse_s)
        or len(set(coarse_s.tolist())) != count
        or not groups.coarsen(fine, by)):
      return False
    groups.union(ga, gb)
    return True

  def broadcast_in_dim(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    v = ins[0]
    shape = self.graph.shapes[eqn.outputs[0]]
    dims = eqn.params["broadcast_dimensions"]
    uniform = frozenset(
        d for d in range(len(shape)) if d not in dims) | frozenset(
            d for a, d in enumerate(dims)
            if a in v.uniform or v.shape[a] != shape[d])
    if v.kind == "act":
      out = _Value("act", shape, uniform=uniform)
      if v.axis is not None:
        if v.shape[v.axis] == shape[dims[v.axis]]:
          out = dataclasses.replace(v, shape=shape, axis=dims[v.axis],
                                    uniform=uniform)
        else:
          self.fix(v, "broadcast along the channel axis")
      self.values[eqn.outputs[0]] = out
      return
    sources = []
    for leaf, axis_map in v.sources:
      new_map = [None] * len(shape)
      for a, d in enumerate(dims):
        if v.shape[a] == shape[d]:
          new_map[d] = axis_map[a]
      sources.append((leaf, tuple(new_map)))
    self.values[eqn.outputs[0]] = _Value(v.kind, shape, sources=tuple(sources),
                                         uniform=uniform)

  def reshape(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    v = ins[0]
    shape = self.graph.shapes[eqn.outputs[0]]
    blocks = _reshape_blocks(v.shape, shape)
    if v.kind != "act":
      sources = []
      for leaf, axis_map in v.sources:
        new_map = [None] * len(shape)
        for (i0, i1), (o0, o1) in blocks:
          kept_in = [a for a in range(i0, i1) if v.shape[a] != 1]
          kept_out = [a for a in range(o0, o1) if shape[a] != 1]
          if len(kept_in) == 1 and len(kept_out) == 1:
            new_map[kept_out[0]] = axis_map[kept_in[0]]
        sources.append((leaf, tuple(new_map)))
      self.values[eqn.outputs[0]] = _Value(v.kind, shape,
                                           sources=tuple(sources))
      return
    out = _Value("act", shape)
    if v.axis is not None:
      for (i0, i1), (o0, o1) in blocks:
        if not i0 <= v.axis < i1:
          continue
        kept_out = [a for a in range(o0, o1) if shape[a] != 1]
        if len(kept_out) == 1:  # keeps or flattens the channel axis
          inner = int(np.prod(v.shape[v.axis + 1:i1], dtype=np.int64))
          positions = np.arange(shape[kept_out[0]])
          index = (positions // inner) % v.shape[v.axis]
          out = _Value("act", shape, axis=kept_out[0], group=v.group[index],
                       channel=v.channel[index])
        else:
          out = self.split(v, shape, kept_out, i0, i1)
    # Axes made of axes the value is constant along (a repeat: a broadcast,
    # then a merge) stay constant.
    uniform = frozenset(
        a for (i0, i1), (o0, o1) in blocks
        if all(v.shape[b] == 1 or b in v.uniform for b in range(i0, i1))
        for a in range(o0, o1))
    self.values[eqn.outputs[0]] = dataclasses.replace(out, uniform=uniform)

  def split(self, v: _Value, shape, kept_out: list[int], i0: int,
            i1: int) -> _Value:
    """A reshape that splits the channel axis (grouped-query attention's
    query heads per key-value head, GroupNorm's groups): the outer axis
    carries the labels, and the channels of one of its positions become one
    structure (`_UnionFind.coarsen`): a key-value head with its query heads,
    a norm group with its channels."""
    outer = kept_out[0]
    factor = v.shape[v.axis] // shape[outer]
    starts = np.arange(shape[outer]) * factor
    simple = ([a for a in range(i0, i1) if v.shape[a] != 1] == [v.axis]
              and factor * shape[outer] == v.shape[v.axis])
    channels = v.channel.reshape(-1, factor) if simple else None
    groups = v.group.reshape(-1, factor) if simple else None
    group = int(v.group[0])
    aligned = (
        simple and np.all(groups == group)
        and np.all(channels == channels[:, :1] + np.arange(factor))
        and np.all(channels[:, 0] % factor == 0)
        and factor % self.groups.factor[group] == 0
        and self.groups.coarsen(group, factor // self.groups.factor[group]))
    if not aligned:
      self.fix(v, "a reshape that splits the channel axis into unaligned "
               "parts")
      return _Value("act", shape)
    return _Value("act", shape, axis=outer, group=v.group[starts],
                  channel=v.channel[starts])

  def transpose(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    v = ins[0]
    perm = tuple(eqn.params["permutation"])
    shape = self.graph.shapes[eqn.outputs[0]]
    if v.kind == "act":
      axis = None if v.axis is None else perm.index(v.axis)
      self.values[eqn.outputs[0]] = dataclasses.replace(
          v, shape=shape, axis=axis,
          uniform=frozenset(perm.index(a) for a in v.uniform))
    else:
      self.values[eqn.outputs[0]] = _Value(
          v.kind, shape, sources=tuple(
              (leaf, tuple(axis_map[p] for p in perm))
              for leaf, axis_map in v.sources))

  def squeeze(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    self.drop_axes(eqn, ins[0], tuple(eqn.params["dimensions"]), None)

  def reduction(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    v, axes = ins[0], tuple(eqn.params["axes"])
    if (self.through_norms and eqn.name == "reduce_sum" and v.kind == "act"
        and v.axis in axes):
      # A norm's mean or variance: the statistic is one value per token,
      # and the channels stay prunable (over fewer of them once shrunk).
      for group in set(int(g) for g in v.group if g >= 0):
        root = self.groups.find(group)
        self.groups.statistics[root] = (
            self.groups.statistics[root]
            or f"`{eqn.name}` over the channels (a norm's statistics)")
      v = dataclasses.replace(v, axis=None, group=None, channel=None)
    self.drop_axes(eqn, v, axes,
                   f"a reduction over the channel axis (`{eqn.name}`, "
                   "e.g. LayerNorm)")

  def drop_axes(self, eqn: _graph.Eqn, v: _Value, axes, reason) -> None:
    shape = self.graph.shapes[eqn.outputs[0]]
    kept = [a for a in range(len(v.shape)) if a not in axes]
    if v.kind == "act":
      out = _Value("act", shape)
      if v.axis is not None:
        if v.axis in axes:
          self.fix(v, reason or f"`{eqn.name}` of the channel axis")
        else:
          out = dataclasses.replace(
              v, shape=shape, axis=kept.index(v.axis),
              uniform=frozenset(kept.index(a) for a in v.uniform
                                if a in kept))
      self.values[eqn.outputs[0]] = out
    else:
      self.values[eqn.outputs[0]] = _Value(
          v.kind, shape, sources=tuple(
              (leaf, tuple(axis_map[a] for a in kept))
              for leaf, axis_map in v.sources))

  def along_axes(self, eqn: _graph.Eqn, ins: list[_Value], untouched) -> None:
    """Ops that keep every axis: labels pass where the channel axis is
    ``untouched(axis)``."""
    v = ins[0]
    shape = self.graph.shapes[eqn.outputs[0]]
    if v.kind == "act" and v.axis is not None:
      if untouched(v.axis) and shape[v.axis] == v.shape[v.axis]:
        self.values[eqn.outputs[0]] = dataclasses.replace(v, shape=shape)
      else:
        self.fix(v, f"`{eqn.name}` along the channel axis")
        self.values[eqn.outputs[0]] = _Value("act", shape)
    else:
      self.default_outputs(eqn, ins)
    for other in ins[1:]:
      if other.kind == "act" and other.axis is not None:
        self.unknown(eqn, [other])

  def windowed(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    p = eqn.params
    self.along_axes(eqn, ins, lambda a: (
        p["window_dimensions"][a] == 1 and p["window_strides"][a] == 1
        and tuple(p["padding"][a]) == (0, 0)))

  def cumulative(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    self.along_axes(eqn, ins, lambda a: a != eqn.params["axis"])

  def pad(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    config = eqn.params["padding_config"]
    self.along_axes(eqn, ins, lambda a: tuple(config[a]) == (0, 0, 0))

  def slice(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    p = eqn.params
    v = ins[0]
    if v.kind != "act":  # a row of a stacked leaf keeps its other axes
      shape = self.graph.shapes[eqn.outputs[0]]
      self.values[eqn.outputs[0]] = _Value(v.kind, shape, sources=tuple(
          (leaf, tuple(m if v.shape[a] == shape[a] else None
                       for a, m in enumerate(axis_map)))
          for leaf, axis_map in v.sources))
      return
    self.along_axes(eqn, ins, lambda a: (
        p["start_indices"][a] == 0 and (p["strides"] is None
                                        or p["strides"][a] == 1)))

  def concatenate(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    dim = eqn.params["dimension"]
    shape = self.graph.shapes[eqn.outputs[0]]
    if not any(v.kind == "act" for v in ins):
      self.default_outputs(eqn, ins)
      return
    labelled = [v for v in ins if v.kind == "act" and v.axis is not None]
    if labelled and all(v.axis == dim for v in labelled):
      groups, channels = [], []
      for v in ins:
        if v.kind == "act" and v.axis is not None:
          groups.append(v.group)
          channels.append(v.channel)
        else:
          groups.append(np.full(v.shape[dim], -1))
          channels.append(np.full(v.shape[dim], -1))
      self.values[eqn.outputs[0]] = _Value(
          "act", shape, axis=dim, group=np.concatenate(groups),
          channel=np.concatenate(channels))
      return
    if labelled and all(v.axis != dim for v in labelled):
      self.elementwise(eqn,
                       [dataclasses.replace(v, shape=shape) for v in ins])
      return
    self.unknown(eqn, labelled)
    self.values[eqn.outputs[0]] = _Value("act", shape)

  def dot_general(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    shape = self.graph.shapes[eqn.outputs[0]]
    if lhs.kind == "act" and rhs.kind == "act":
      self.activation_product(eqn, ins)
      return
    if lhs.kind == "act" and rhs.kind == "param" and not lb:
      act, param, act_axes, param_axes = lhs, rhs, tuple(lc), tuple(rc)
    elif rhs.kind == "act" and lhs.kind == "param" and not lb:
      act, param, act_axes, param_axes = rhs, lhs, tuple(rc), tuple(lc)
    else:
      labelled = [v for v in ins if v.kind == "act" and v.axis is not None]
      if labelled:
        self.unknown(eqn, labelled)
      if any(v.kind == "act" for v in ins):
        self.not_followed(ins, "a kernel with batch dimensions")
      self.default_outputs(eqn, ins)
      return
    self.consume(act, act_axes, param, param_axes, eqn)
    param_free = [a for a in range(len(param.shape)) if a not in param_axes]
    if not param_free:
      self.values[eqn.outputs[0]] = _Value("act", shape)
      return
    # Output axes: lhs's free axes, then rhs's. A kernel with several
    # output axes (DenseGeneral, attention's (heads, head_dim)) makes one
    # structure of each position of the first: a head with all its features.
    act_free = [a for a in range(len(act.shape)) if a not in act_axes]
    out_axis = len(act_free) if param is rhs else 0
    batch_axis = 0 if param is rhs else len(param_free)
    examples = (shape[batch_axis] if 0 in act_free and len(act.shape) > 1
                else 1)
    self.count_macs(param, shape,
                    int(np.prod([param.shape[a] for a in param_free])),
                    examples)
    self.values[eqn.outputs[0]] = self.new_group(
        shape, out_axis, param.sources, param_free[0], param.sources[0][0])

  def activation_product(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    """A product of two activations (attention's query-key and weights-value
    products): labels on paired batch axes (heads) are joined; a label on a
    free axis passes when the other side has none."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    shape = self.graph.shapes[eqn.outputs[0]]
    position = []  # per operand: its axis -> the output's (absent: summed)
    offset = len(lb)
    for v, batch, contracted in ((ins[0], lb, lc), (ins[1], rb, rc)):
      table = {a: i for i, a in enumerate(batch)}
      free = [a for a in range(len(v.shape))
              if a not in batch and a not in contracted]
      table.update({a: offset + i for i, a in enumerate(free)})
      offset += len(free)
      position.append(table)
    ins = list(ins)
    for side, v in enumerate(ins):
      if v.axis is not None and self.one_structure(v):
        # A single key-value head that every query head reads (multi-query
        # attention, repeated or broadcast) stays, the same for every head;
        # the query heads remain structures.
        self.fix(v, "one head shared by every query head (multi-query "
                 "attention)")
        ins[side] = dataclasses.replace(v, axis=None, group=None,
                                        channel=None,
                                        uniform=v.uniform | {v.axis})
    labelled = [side for side, v in enumerate(ins) if v.axis is not None]
    out = _Value("act", shape)
    summed = [ins[s] for s in labelled if ins[s].axis not in position[s]]
    axes = [position[s][ins[s].axis] for s in labelled if not summed]
    if summed:
      for v in ins:
        self.fix(v, "contracted with another activation")
    elif len(labelled) == 2 and axes[0] == axes[1] < len(lb):
      # The older side names the heads: the query's kernel.
      older, newer = sorted(ins, key=lambda v: self.groups.find(
          int(v.group[v.group >= 0].min())))
      self.join(older, dataclasses.replace(newer, axis=older.axis))
      for group in older.group[older.group >= 0]:
        self.groups.heads[self.groups.find(int(group))] = True
      out = dataclasses.replace(older, shape=shape, axis=axes[0],
                                uniform=frozenset())
      self.count_product_macs(out, shape, np.prod(
          [ins[0].shape[a] for a in lc]), examples=shape[0] if 0 in lb else 1)
    elif len(labelled) == 2:
      for v in ins:
        self.fix(v, "multiplied with other channels of an activation")
    elif labelled:
      side = labelled[0]
      v, other = ins[side], ins[1 - side]
      partner = (rb, lb)[side]
      if axes[0] < len(lb) and partner[axes[0]] not in other.uniform:
        self.fix(v, "multiplied per channel with an activation that no "
                 "structure of these channels produces")
      else:
        out = dataclasses.replace(v, shape=shape, axis=axes[0],
                                  uniform=frozenset())
    self.values[eqn.outputs[0]] = out

  def one_structure(self, v: _Value) -> bool:
    """Whether every position of ``v``'s labelled axis is one structure of
    a group of one."""
    labelled = v.group >= 0
    if not np.all(labelled):
      return False
    groups = self.groups
    return all(groups.structures(int(g)) == 1 for g in set(v.group.tolist()))

  def consume(self, act: _Value, act_axes: tuple[int, ...], param: _Value,
              param_axes: tuple[int, ...], eqn: _graph.Eqn) -> None:
    """The input slices of a kernel join the labels of what it reads."""
    if act.axis is None:
      return
    if act.axis not in act_axes:
      self.unknown(eqn, [act])
      return
    param_axis = param_axes[act_axes.index(act.axis)]
    for source in param.sources:
      if not self.member(act, source, param_axis, "in"):
        self.fix(act, f"read by a reshaped kernel ({self.paths[source[0]]})")

  def count_macs(self, param: _Value, out_shape, out_features: int,
                 examples: int) -> None:
    """Each kernel entry takes part in one multiply-add per output position
    of its output feature."""
    per_entry = int(np.prod(out_shape)) / out_features / max(1, examples)
    for leaf, _ in param.sources:
      # A scan-stacked leaf: this op uses one of its rows.
      self.macs[self.paths[leaf]] += per_entry / self.scan_length.get(leaf, 1)

  def count_product_macs(self, out: _Value, shape, contracted: int,
                         examples: int) -> None:
    """A product of activations per head (attention's scores and weighted
    values) costs multiply-adds that no kernel entry counts: they are
    charged to the entries of the kernel that names the heads (the query),
    which go exactly when a head or its branch goes."""
    path = self.groups.name[self.groups.find(int(out.group[out.group >= 0][0]))]
    leaf = self.paths.index(path)
    entries = np.prod(self.graph.shapes[self.graph.leaf_ids[leaf]])
    self.macs[path] += float(np.prod(shape) * contracted / examples / entries)

  def conv_general_dilated(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    lhs, rhs = ins
    shape = self.graph.shapes[eqn.outputs[0]]
    numbers = eqn.params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = (numbers.lhs_spec, numbers.rhs_spec,
                                    numbers.out_spec)
    if not (lhs.kind == "act" and rhs.kind == "param"):
      labelled = [v for v in ins if v.kind == "act" and v.axis is not None]
      if labelled:
        self.unknown(eqn, labelled)
      self.default_outputs(eqn, ins)
      return
    in_features = lhs.shape[lhs_spec[1]]
    out_features = shape[out_spec[1]]
    groups = eqn.params["feature_group_count"]
    examples = shape[out_spec[0]]
    self.count_macs(rhs, shape, out_features, examples)
    if groups == 1:
      self.consume(lhs, (lhs_spec[1],), rhs, (rhs_spec[1],), eqn)
      self.values[eqn.outputs[0]] = self.new_group(
          shape, out_spec[1], rhs.sources, rhs_spec[0], rhs.sources[0][0])
      return
    if groups == in_features == out_features and lhs.axis == lhs_spec[1]:
      # Depthwise: output channel j is input channel j, filtered.
      out = dataclasses.replace(lhs, shape=shape, axis=out_spec[1],
                                uniform=frozenset())
      for source in rhs.sources:
        self.member(out, source, rhs_spec[0], "out")
      self.values[eqn.outputs[0]] = out
      return
    self.fix(lhs, f"a grouped convolution ({groups} groups)")
    out = self.new_group(shape, out_spec[1], rhs.sources, rhs_spec[0],
                         rhs.sources[0][0])
    self.fix(out, f"a grouped convolution ({groups} groups)")
    self.values[eqn.outputs[0]] = out

  def gather(self, eqn: _graph.Eqn, ins: list[_Value]) -> None:
    operand, indices = ins[0], ins[1]
    shape = self.graph.shapes[eqn.outputs[0]]
    slice_sizes = eqn.params["slice_sizes"]
    embedding = (operand.kind == "param" and indices.kind == "act"
                 and indices.axis is None and len(operand.shape) == 2
                 and slice_sizes[-1] == operand.shape[-1]
                 and shape[-1] == operand.shape[-1])
    if embedding:  # Embed: looked-up rows, features last
      self.values[eqn.outputs[0]] = self.new_group(
          shape, len(shape) - 1, operand.sources, 1, operand.sources[0][0])
      return
    labelled = [v for v in ins if v.kind == "act" and v.axis is not None]
    if labelled:
      self.unknown(eqn, labelled)
    self.default_outputs(eqn, ins)


# Ops that keep a value as it is, for `_Tracer.follow_norm`.
_PASS_THROUGH = frozenset(
    "convert_element_type copy copy_p reduce_precision".split())
_HANDLERS = {name: name for name in (
    "broadcast_in_dim", "reshape", "transpose", "squeeze", "pad", "slice",
    "concatenate", "dot_general", "conv_general_dilated", "gather")}
_FAMILIES = (("elementwise", _ELEMENTWISE), ("reduction", _REDUCTIONS),
             ("windowed", _WINDOWED), ("cumulative", _CUMULATIVE))


def _reshape_blocks(in_shape, out_shape):
  """Pairs of axis ranges ``((i0, i1), (o0, o1))`` with equal products."""
  blocks, i, o = [], 0, 0
  while i < len(in_shape) or o < len(out_shape):
    i0, o0 = i, o
    p_in = p_out = 1
    if i < len(in_shape):
      p_in *= in_shape[i]
      i += 1
    if o < len(out_shape):
      p_out *= out_shape[o]
      o += 1
    while p_in != p_out:
      if p_in < p_out:
        p_in *= in_shape[i]
        i += 1
      else:
        p_out *= out_shape[o]
        o += 1
    # Trailing size-1 axes join the block they follow.
    while i < len(in_shape) and in_shape[i] == 1 and (
        o >= len(out_shape) or out_shape[o] != 1):
      i += 1
    while o < len(out_shape) and out_shape[o] == 1 and (
        i >= len(in_shape) or in_shape[i] != 1):
      o += 1
    blocks.append(((i0, i), (o0, o)))
  return blocks


def _closure(graph: _graph.Graph, producer: dict[int, int], start: int) -> set[int]:
  """The equations that ``start`` depends on (its producer included)."""
  seen, stack = set(), [start]
  while stack:
    index = producer.get(stack.pop())
    if index is not None and index not in seen:
      seen.add(index)
      stack.extend(graph.eqns[index].inputs)
  return seen


def _live(graph: _graph.Graph, producer: dict[int, int]) -> set[int]:
  """The equations the model's outputs depend on."""
  return set().union(*(_closure(graph, producer, o) for o in graph.outputs))


def _blocks(graph: _graph.Graph, tracer: _Tracer, leaf_ids: list[int],
            outputs: list[int], live: set[int]
            ) -> tuple[list[tuple[int, ...]], list[tuple[tuple[int, ...], int]]]:
  """Leaves of every residual branch ``x + f(x)`` that can be removed, and
  the layers of scan stacks that are nothing but such branches:
  ``(stacked leaves, row)`` each."""
  producer = graph.producers()
  consumers = collections.defaultdict(set, {
      index: set(users) for index, users in graph.consumers().items()})
  leaf_of = {index: leaf for leaf, index in enumerate(leaf_ids)}
  row_reads = {eqn: (leaf, step.row) for step in graph.steps
               for eqn, leaf in step.row_reads.items()}
  found, in_rows = [], []
  for add_index, eqn in enumerate(graph.eqns):
    if eqn.name not in ("add", "add_any") or len(eqn.inputs) != 2:
      continue
    values = [tracer.value(i) for i in eqn.inputs]
    if any(v.kind != "act" for v in values) or (
        values[0].shape != values[1].shape):
      continue
    for branch_out, shortcut in (eqn.inputs, eqn.inputs[::-1]):
      branch = (_closure(graph, producer, branch_out)
                - _closure(graph, producer, shortcut))
      leaves = _branch_leaves(graph, tracer, branch, branch_out, shortcut,
                              add_index, consumers, leaf_of, outputs,
                              row_reads)
      if leaves and all(isinstance(leaf, int) for leaf in leaves):
        found.append(tuple(sorted(leaves)))
      elif leaves:
        in_rows.append((leaves, branch | {add_index}))
  return found, _removable_layers(graph, in_rows, live)


def _removable_layers(graph: _graph.Graph, in_rows, live: set[int]
                      ) -> list[tuple[tuple[int, ...], int]]:
  """The scan steps whose every live equation and stacked leaf is in
  residual branches of that step: with their rows zeroed the layer is the
  identity, so it can leave the stack."""
  layers = []
  for step in graph.steps:
    eqns, leaves = set(), set()
    for rows, branch in in_rows:
      if branch <= set(step.eqns) and all(r == step.row for _, r in rows):
        eqns |= branch
        leaves |= {leaf for leaf, _ in rows}
    if eqns >= set(step.eqns) & live and leaves == set(step.leaves):
      layers.append((step.leaves, step.row))
  return layers


def _branch_leaves(graph, tracer, branch, branch_out, shortcut, add_index,
                   consumers, leaf_of, outputs, row_reads):
  """The branch's leaves (``(leaf, row)`` for a row of a scan-stacked leaf)
  if it reads only ``shortcut`` and its own values and nothing outside uses
  them; else None."""
  if not branch:
    return None
  leaves, reads_shortcut = set(), False
  for i in branch:
    inputs = graph.eqns[i].inputs
    if i in row_reads:  # the other rows are other layers'
      leaves.add(row_reads[i])
      inputs = []
    for index in inputs:
      if index == shortcut:
        reads_shortcut = True
      elif index in leaf_of:
        leaves.add(leaf_of[index])
        if not consumers[index] <= branch:
          return None
      elif tracer.value(index).kind == "act" and not any(
          index in graph.eqns[j].outputs for j in branch):
        return None
    for index in graph.eqns[i].outputs:
      allowed = branch | ({add_index} if index == branch_out else set())
      if not consumers[index] <= allowed or index in outputs:
        return None
  if not reads_shortcut or not leaves:
    return None
  return leaves


def channel_groups(apply_fn: Callable[..., Any], variables: chex.ArrayTree,
                   *args: Any, on_unknown: str = "error",
                   through_norms: bool = False,
                   **kwargs: Any) -> _groups.Groups:
  """Every prunable structure of a model, found by tracing ``apply_fn``.

  Traces ``apply_fn(variables, *args, **kwargs)`` with `jax.make_jaxpr`
  and follows each Dense/Conv output channel through the model (see the
  module docstring for the ops it understands): the channel with its bias
  and batch-norm entries, and the input slice of every layer that reads it
  (after a flatten, the rows of that channel in Flax's NHWC order), with
  channels that residual adds join forming one group across all branches
  (projection shortcuts included). Also finds residual blocks whose removal
  leaves the identity shortcut.

  Attention heads (``nn.MultiHeadDotProductAttention``,
  ``nnx.MultiHeadAttention``) are structures: a head's query, key and value
  slices with the output projection's rows that read it; with grouped-query
  attention (query heads reshaped per key-value head), a key-value head
  with its query heads. GroupNorm's groups are structures: a norm group's
  channels go together.

  Channels that reach the model's output (the logits), that LayerNorm
  mixes (unless ``through_norms``), or that are combined with per-channel
  inputs or constants are not prunable; `Groups.unprunable` lists them with
  the reason, and the kernels whose channels it does not follow by path.

  Trace in inference mode (``train=False``, batch norm on running
  averages): dropout's random mask makes every channel it meets unprunable.

  Example (linen)::

    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax_gsm
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> groups = optax_gsm.structured.channel_groups(model.apply, variables,
    ...                                   jnp.ones((1, 4)))
    >>> [(g.name, g.size, len(g.members)) for g in groups.channels]
    [('layers_0', 8, 3)]

  For NNX, trace the pure function of the state::

    graphdef, state = nnx.split(model)
    groups = channel_groups(
        lambda s, x: nnx.merge(graphdef, s)(x), state, x)

  Args:
    apply_fn: ``(variables, *args, **kwargs) -> outputs``.
    variables: the model's variables (params and batch statistics).
    *args: example inputs, arrays (shapes matter, values do not).
    on_unknown: "error" (default): an op this tracer does not model that
      meets prunable channels raises NotImplementedError naming it;
      "unprunable": those channels are left unpruned instead.
    through_norms: False (default): channels a norm reduces over (a
      transformer's residual stream under LayerNorm or RMSNorm) are
      unprunable. True: they form a group (its `ChannelGroup.statistics`
      says why), the norms' scales and biases members. The masked model's
      statistics then run over every channel, zeros included, and the
      shrunk model's over the channels kept. Under RMSNorm with a scale
      `shrink` rescales the scales and the two are equal (up to the norms'
      epsilon; `ChannelGroup.rescaled`); under LayerNorm only where the
      norms divide by the original width (in the tests' transformer, 4 of
      12 channels removed: up to 0.33 off on outputs up to 1.17).
    **kwargs: passed to ``apply_fn`` as constants (``train=False``).

  Returns:
    `Groups`: channel groups (with members) and residual blocks.

  Raises:
    NotImplementedError: an op the tracer cannot follow channels through
      (``on_unknown="error"``).
  """
  if on_unknown not in ("error", "unprunable"):
    raise ValueError(
        f"`on_unknown` must be 'error' or 'unprunable'; got {on_unknown!r}.")
  _validation.check_bool("through_norms", through_norms)
  graph = _graph.trace(apply_fn, variables, args, kwargs)
  paths = _prunable.leaf_paths(variables)
  collections_level = _prunable.has_collections(variables)
  tracer = _Tracer(graph, paths, graph.leaf_ids, on_unknown,
                   collections_level, through_norms)
  live = _live(graph, graph.producers())
  tracer.run(graph.outputs, live)
  blocks, layers = _blocks(graph, tracer, graph.leaf_ids, graph.outputs,
                           live)
  return _assemble(tracer, paths, blocks, layers, collections_level)


def _named_blocks(paths: list[str], blocks, collections_level: bool
                  ) -> list[_groups.Block]:
  """Each distinct block, named by the modules it holds: their common path,
  or where two blocks share it (a transformer layer's attention and MLP
  branches), that path and the names of its sub-modules in the block."""
  unique = list(dict.fromkeys(blocks))
  modules = [sorted({_prunable.module_path(paths[leaf], collections_level)
                     for leaf in leaves}) for leaves in unique]
  common = [os.path.commonpath(m) if all(m) else "" for m in modules]
  names = []
  for prefix, module_paths in zip(common, modules):
    if prefix and common.count(prefix) == 1:
      names.append(prefix)
      continue
    parts = sorted({os.path.relpath(m, prefix or ".").split(os.sep)[0]
                    for m in module_paths})
    names.append(os.path.join(prefix, "+".join(parts)))
  return [_groups.Block(name, tuple(paths[leaf] for leaf in leaves))
          for name, leaves in zip(names, unique)]


def _stack_layers(paths: list[str], layers, collections_level: bool
                  ) -> list[_groups.Block]:
  """A block per removable layer of a stack: ``<stack>[<row>]``."""
  result = []
  for leaves, row in layers:
    modules = [_prunable.module_path(paths[leaf], collections_level)
               for leaf in leaves]
    prefix = os.path.commonpath(modules) if all(modules) else ""
    result.append(_groups.Block(f"{prefix}[{row}]",
                                tuple(paths[leaf] for leaf in leaves), row))
  return result


def _assemble(tracer: _Tracer, paths: list[str], blocks, layers,
              collections_level: bool) -> _groups.Groups:
  found = tracer.groups
  channels, unprunable = [], []
  # The leaves of each identity-shortcut branch, for `bypassed`.
  branches = [set(leaves) for leaves in blocks] + [
      set(stacked) for stacked, _ in layers]
  for group in range(len(found.parent)):
    if found.find(group) != group:
      continue
    name = _prunable.module_path(found.name[group], collections_level)
    if found.fixed[group] is not None:
      unprunable.append((name, found.fixed[group]))
      continue
    merged = {}
    for leaf, axis, channel_of, role, origin in found.members[group]:
      channel_of = np.where(channel_of >= 0,
                            channel_of // found.factor[origin], -1)
      key = (leaf, axis)
      if key in merged:
        channel_of = np.where(channel_of >= 0, channel_of, merged[key][0])
      merged[key] = (channel_of, role if key not in merged
                     else merged[key][1])
    members = tuple(
        _groups.Member(paths[leaf], axis, np.asarray(c, np.int32), role)
        for (leaf, axis), (c, role) in sorted(merged.items()))
    statistics, rescaled = found.statistics[group] or "", ()
    if statistics and found.inexact[group]:
      statistics += f"; `shrink` cannot rescale: {found.inexact[group]}"
    elif statistics:
      rescaled = tuple(sorted({paths[leaf]
                               for leaf, _ in found.norm_scales[group]}))
    leaves = {leaf for leaf, _ in merged}
    channels.append(_groups.ChannelGroup(
        name, found.structures(group), members,
        "heads" if found.heads[group] else "channels", statistics, rescaled,
        bypassed=any(leaves <= branch for branch in branches)))
  block_list = (_named_blocks(paths, blocks, collections_level)
                + _stack_layers(paths, layers, collections_level))
  for leaf, reason in sorted(tracer.opaque.items()):
    unprunable.append((paths[leaf], reason))
  return _groups.Groups(channels=tuple(channels), blocks=tuple(block_list),
                        unprunable=tuple(unprunable),
                        macs_per_entry=dict(tracer.macs))
