"""Structured GSM: one global ranking over channels and residual blocks.

GSM's rule carried over to structures (Ding et al., 2019, with the group
saliency of Molchanov et al., CVPR 2019): at every step each structure S
(a channel group's channel, or a residual block; see `Groups`) gets the
first-order Taylor estimate of the loss change if it were removed,

.. math::
  T_S = \\Big|\\sum_{e \\in S} g_e w_e\\Big|

(or the L2 norm of its entries, ``saliency="magnitude"``), and its cost
``c_S``: the parameters it holds (``cost="params"``) or the multiply-adds
per example they take part in (``cost="flops"``, from the traced shapes).
All structures of the model, of mixed granularity, are ranked together by
``T_S / c_S``; the longest prefix of the ranking is kept whose model, with
every other structure removed, costs at most ``1/C`` of the whole model
(counted exactly: every entry once, entries in no structure included, so
``C = 2`` with ``cost="flops"`` is a model with half the multiply-adds).
Entries of kept structures get their gradient (and decay), entries of the
others decay only, exactly as unstructured GSM
treats its active and passive weights. Removing channels and removing
blocks compete under one budget: the split between them is learned (the
"adaptive channel-and-layer pruning" of the family).

Decided on purpose:

- the kept set is a prefix of the ranking, filled: the first structure
  whose cost would overflow the budget is removed, and then, twice, of the
  structures after it whose own addition fits in what is left, the longest
  run in ranking order that fits together joins (a conv channel of LeNet-5
  is ~4% of its FLOPs: the prefix alone took 8.2-9x for 8x, the fill
  8.0x); ties in ``T_S / c_S`` go to the structure listed first (channel
  groups in order, channels by index, then blocks);
- except when that first structure is a block: a block's cost counts only
  its entries in kept channels, so it enters the prefix after its channels
  and brings them all at once, and dropping it can leave far less than the
  budget (a 4-layer stack at ``C = 4``: every layer with all its channels
  is more than a quarter, the prefix keeps no layer, 53x fewer FLOPs).
  That block is kept instead, and the lowest-ranked channels of the prefix
  go in its place (the longest shorter prefix of channels that fits with
  the blocks of the prefix and that block), when that fits;
- every channel group keeps its ``min_kept_share`` best channels whatever
  the budget, and at least one (a layer of width zero would cut the
  network): a floor the rest of the ranking pays for. By default
  (``"auto"``) the floor is half the width uniform pruning to ``C`` keeps,
  ``0.5 / sqrt(C)`` of each group on the main path, lowered until the
  floors take at most half of the budget the ranking chooses: on short
  budgets a group ranked down to one or two channels (ResNet-20's stem at
  8x) left two runs of five at chance, and every run with a floor kept
  its accuracy. Groups inside a residual branch with an identity shortcut
  (`ChannelGroup.bypassed`: a transformer's heads and MLP neurons) keep
  one channel: at width zero the shortcut still carries the signal, and a
  floor there cost a ViT 0.3-0.5 points at 2x;
- the ranking's denominator ``c_S`` counts a structure's own entries (an
  entry in two structures, a kernel entry in its input and its output
  channel's group, is in both), while the budget counts the kept model
  exactly (`model_cost`), found by bisection on the prefix length
  (about log2 of the number of structures passes over the params).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from optax_gsm import _prunable, _validation
from optax_gsm.structured import _groups

StructureSaliency = Callable[[chex.ArrayTree, chex.ArrayTree],
                             chex.ArrayTree]
_COSTS = ("params", "flops")


def check_cost(cost: str) -> None:
  if cost not in _COSTS:
    raise ValueError(f"`cost` must be one of {_COSTS}; got {cost!r}.")


def _entry_costs(groups: _groups.Groups, paths: list[str],
                 cost: str) -> list[float]:
  """Cost of one entry of each leaf: 1 (params), or its multiply-adds."""
  if cost == "params":
    return [1.0] * len(paths)
  table = {}
  for path, macs in groups.macs_per_entry.items():
    table[path] = macs
    table[path.partition("/")[2]] = macs
  return [table.get(path, 0.0) for path in paths]


def cost_per_structure(groups: _groups.Groups, tree: chex.ArrayTree,
                    cost: str = "params") -> np.ndarray:
  """The cost of every structure (channels in group order, then blocks).

  Args:
    groups: the structures.
    tree: the params (their entries are what ``"params"`` counts).
    cost: "params" or "flops" (multiply-adds per example, from the shapes
      `channel_groups` traced).

  Returns:
    float64 array of length ``groups.num_structures``.
  """
  check_cost(cost)
  resolved = _groups.resolve(groups, tree)
  leaves = jax.tree.leaves(tree)
  per_entry = _entry_costs(groups, _prunable.leaf_paths(tree), cost)
  costs = []
  for members, size in zip(resolved.channels, resolved.sizes):
    channel_cost = np.zeros(size)
    for m in members:
      shape = np.shape(leaves[m.leaf])
      per_position = np.prod(shape) / shape[m.axis] * per_entry[m.leaf]
      channel_cost += per_position * np.bincount(
          m.channel_of[m.channel_of >= 0], minlength=size)[:size]
    costs.append(channel_cost)
  costs.append(np.array(
      [sum(np.size(_groups.block_entries(leaves[i], row)) * per_entry[i]
           for i in block)
       for block, row in zip(resolved.blocks, resolved.block_rows)],
      dtype=np.float64))
  return np.concatenate(costs)


def _sum_of_parts(resolved: _groups.Resolved, contributions, block, row,
                  finish) -> jax.Array:
  """A block's saliency as the sum of its channels' (each restricted to the
  block) and of the rest of its entries, each finished on its own: sums of
  many signed contributions no longer cancel across channels."""
  total = sum(jnp.sum(_groups.block_entries(contributions[i], row))
              for i in block)
  parts, covered = jnp.zeros([], jnp.float32), jnp.zeros([], jnp.float32)
  for members, size in zip(resolved.channels, resolved.sizes):
    inside = [m for m in members if m.leaf in block]
    if not inside:
      continue
    sums = jnp.zeros([size], jnp.float32)
    for m in inside:
      member = m if row is None else m._replace(axis=m.axis - 1)
      sums = sums + _groups.per_channel_sum(
          _groups.block_entries(contributions[m.leaf], row), member, size)
    parts = parts + jnp.sum(finish(sums))
    covered = covered + jnp.sum(sums)
  return parts + finish(total - covered)


def structure_scores(resolved: _groups.Resolved, grads: chex.ArrayTree,
                     params: chex.ArrayTree,
                     saliency: str | StructureSaliency,
                     block_saliency: str = "total") -> jax.Array:
  """The saliency of every structure, flat (channels, then blocks); a
  block's is that of all its entries together (``"total"``) or the sum of
  its parts' (``"parts"``, `_sum_of_parts`)."""
  weights = [w.astype(jnp.float32) for w in jax.tree.leaves(params)]
  if saliency == "magnitude":
    contributions, finish = [w * w for w in weights], jnp.sqrt
  else:
    if saliency == "taylor":
      tree = jax.tree.map(lambda g, w: g.astype(jnp.float32) * w, grads,
                          params)
    else:
      tree = saliency(grads, params)
    contributions, finish = jax.tree.leaves(tree), jnp.abs
    if len(contributions) != len(weights):
      raise ValueError("`saliency` must return one value per parameter "
                       "entry, with the structure of the params.")
  # Every structure's sum at once: a block's is of all its entries.
  sums = _groups.structure_sums(
      resolved.layout, [c.astype(jnp.float32) for c in contributions])
  if block_saliency == "total" or not resolved.blocks:
    return finish(sums)
  channels = sum(resolved.sizes)
  blocks = [_sum_of_parts(resolved, contributions, block, row, finish)
            for block, row in zip(resolved.blocks, resolved.block_rows)]
  return jnp.concatenate([finish(sums[:channels]), jnp.stack(blocks)])


def check_block_saliency(block_saliency: str) -> None:
  if block_saliency not in ("total", "parts"):
    raise ValueError("`block_saliency` must be 'total' or 'parts'; got "
                     f"{block_saliency!r}.")


def _split(flat: jax.Array, sizes: tuple[int, ...]) -> _groups.StructureMask:
  parts = jnp.split(flat, np.cumsum(sizes)) if sizes else [flat]
  return _groups.StructureMask(channels=tuple(parts[:len(sizes)]),
                               blocks=parts[len(sizes)])


KeptCost = Callable[[jax.Array], jax.Array]
AddedCosts = Callable[[jax.Array], jax.Array]
# Rounds of filling the budget left after the prefix (two reach the target
# within 1% on LeNet-5 and ResNet-20 at 2-8x; one structure per round would
# be the exact greedy fill).
FILL_ROUNDS = 2


def select_structures(scores: jax.Array, costs: np.ndarray,
                      sizes: tuple[int, ...], budget: jax.typing.ArrayLike,
                      kept_cost: KeptCost, added_costs: AddedCosts,
                      floors: tuple[int, ...] | None = None
                      ) -> _groups.StructureMask:
  """Keeps the longest prefix of the ranking whose kept cost is in budget,
  then fills what the budget has left.

  The ranking is by ``scores / costs`` (ties to the structure listed first),
  each group's ``floors[i]`` best channels first whatever the budget (one
  per group when None); ``kept_cost(kept)``
  (kept: flat bool per structure) is monotone in the kept set, so the
  longest prefix within ``budget`` is found by bisection on its length.
  When the structure that overflows is a block, it is kept and the
  prefix's lowest-ranked channels are dropped instead, when some shorter
  prefix of channels fits with it (a second bisection). Then, `FILL_ROUNDS`
  times: of the structures not kept whose ``added_costs(kept)`` (what each
  alone would add) fits in the budget left, the longest prefix in ranking
  order that fits together is kept too.
  """
  costs = jnp.asarray(costs, jnp.float32)
  ratio = jnp.where(costs > 0, scores / jnp.maximum(costs, 1e-30), jnp.inf)
  ratio = jnp.where(jnp.isnan(ratio), -jnp.inf, ratio)
  # Each channel's rank within its group, for every group in one sort (by
  # group, then ratio, then index: ties to the channel listed first).
  channels = sum(sizes)
  group_of = np.repeat(np.arange(len(sizes)), sizes)
  index = np.arange(channels)
  by_group = jnp.lexsort((index, -ratio[:channels], group_of))
  rank = jnp.zeros([channels], jnp.int32).at[by_group].set(index) - np.repeat(
      np.cumsum((0,) + tuple(sizes))[:-1], sizes)
  forced = jnp.concatenate([
      rank < np.repeat(floors or (1,) * len(sizes), sizes),
      jnp.zeros([scores.shape[0] - channels], bool)])
  # Forced channels alone rank +inf; free structures (zero cost) next.
  ratio = jnp.where(forced, jnp.inf, jnp.minimum(
      ratio, jnp.finfo(jnp.float32).max))
  order = jnp.argsort(-ratio, stable=True)
  position = jnp.zeros(order.shape, jnp.int32).at[order].set(
      jnp.arange(order.shape[0], dtype=jnp.int32))

  count = order.shape[0]
  forced_count = jnp.sum(forced, dtype=jnp.int32)
  is_block = jnp.arange(count) >= sum(sizes)
  steps = max(1, int(np.ceil(np.log2(count + 2))) + 1)

  def longest(base, rank, low, high):
    """The largest n in [low, high] with ``base | (rank < n)`` in budget
    (it grows with n; n is ``low`` when none is), and that set's cost."""

    def bisect(step, bracket):  # `below` = low - 1 stands for "none fits"
      below, high, _ = bracket
      last = step == steps  # costs the answer, for the caller
      middle = jnp.where(last, jnp.maximum(below, low),
                         (below + high + 1) // 2)
      cost = jnp.asarray(kept_cost(base | (rank < middle)), jnp.float32)
      ok = (cost <= budget) & ~last
      return (jnp.where(ok, middle, below),
              jnp.where(ok | last, high, middle - 1), cost)

    below, _, cost = jax.lax.fori_loop(
        0, steps + 1, bisect, (low - 1, high, jnp.float32(0)))
    return jnp.maximum(below, low), cost

  # Each phase is one bisection of a kept set ``base | (rank < n)``, all in
  # one loop, so that `kept_cost` is compiled once rather than in a loop per
  # phase (tens of kernels each).
  def prefix_phase(kept, length, cost):  # the longest prefix in budget
    del kept, length, cost
    return (jnp.zeros([count], bool), position, forced_count,
            jnp.int32(count), jnp.asarray(False))

  def block_phase(prefix, length, cost):
    # The block that overflowed kept, with the prefix's best channels.
    del cost
    with_block = prefix | (position == length)
    overflows = (length < count) & is_block[order[jnp.minimum(length,
                                                                count - 1)]]
    return (with_block & is_block, jnp.where(with_block, position, count),
            forced_count, length, overflows)

  def fill_phase(kept, length, cost):
    # The structures that alone fit in what is left, in ranking order.
    del length
    fits = ~kept & (added_costs(kept) <= budget - cost)
    in_order = fits[order]
    place = jnp.zeros([count], jnp.int32).at[order].set(jnp.where(
        in_order, jnp.cumsum(in_order, dtype=jnp.int32) - 1, count))
    return (kept, place, jnp.int32(0), jnp.sum(fits, dtype=jnp.int32),
            jnp.asarray(False))

  def phase(index, carry):
    kept, length, cost = carry
    base, rank, low, high, block_overflows = jax.lax.switch(
        jnp.minimum(index, 2), (prefix_phase, block_phase, fill_phase),
        kept, length, cost)
    n, grown_cost = longest(base, rank, low, high)
    # The block phase keeps its set only when it is in budget.
    take = (index != 1) | (block_overflows & (grown_cost <= budget))
    return (jnp.where(take, base | (rank < n), kept),
            jnp.where(index == 0, n, length),
            jnp.where(take, grown_cost, cost))

  kept, _, _ = jax.lax.fori_loop(
      0, 2 + FILL_ROUNDS, phase,
      (jnp.zeros([count], bool), jnp.int32(0), jnp.float32(0)))
  return _split(kept, sizes)


class StructuredPlan(NamedTuple):
  """What a structured GSM needs, fixed at init for one params structure.

  ``unit_costs``: the cost of one entry of each
  leaf; ``total``: the cost of the whole tree (every leaf, in structures or
  not); ``floors``: the channels each group keeps whatever the budget.
  """
  resolved: _groups.Resolved
  costs: np.ndarray
  touched: list[bool]
  unit_costs: list[float]
  total: float
  floors: tuple[int, ...]


def _check_static_float(name: str, value: float | None, why: str,
                        **bounds) -> None:
  """None, or a concrete float within ``bounds`` (`check_range`'s): ``why``
  says what it fixes when the optimizer is built."""
  if value is None:
    return
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
        f"`{name}` must be a concrete float: {why} when the optimizer is "
        "built. Under `optax.inject_hyperparams`, pass "
        f"`static_args=('{name}',)`.")
  _validation.check_range(name, value, **bounds)


AUTO_SHARE = "auto"
MinKeptShare = float | str | None


def check_min_kept_share(min_kept_share: MinKeptShare) -> None:
  """"auto", None, or a concrete share in [0, 1] (it sets the selection's
  shapes)."""
  if isinstance(min_kept_share, str):
    if min_kept_share != AUTO_SHARE:
      raise ValueError(
          f"`min_kept_share` must be '{AUTO_SHARE}', None or a share in "
          f"[0, 1]; got {min_kept_share!r}.")
    return
  _check_static_float("min_kept_share", min_kept_share,
                      "it fixes how many channels each group keeps",
                      low=0.0, high=1.0)


def constant_ratio(compression_ratio: Any, sparsity: Any) -> float | None:
  """C when the user gave a concrete ratio or sparsity, None for a schedule
  or a traced value (unknown when the optimizer is built)."""
  if compression_ratio is not None:
    return (None if callable(compression_ratio)
            else _validation.concrete_float(compression_ratio))
  share = None if callable(sparsity) else _validation.concrete_float(sparsity)
  return None if share is None else 1.0 / (1.0 - share)


def check_saliency_decay(saliency_decay: float | None) -> None:
  """None, or a concrete decay in [0, 1) (it chooses the ranking)."""
  _check_static_float("saliency_decay", saliency_decay,
                      "it chooses between the averaged ranking and the "
                      "current batch's", low=0.0, high=1.0,
                      high_inclusive=False)


def floors(sizes: tuple[int, ...], min_kept_share: float | None,
           exempt: tuple[bool, ...] = ()) -> tuple[int, ...]:
  """The channels each group keeps whatever the budget: its share rounded
  up, and at least one (a layer of width zero would cut the network); one
  for the groups ``exempt`` marks."""
  share = min_kept_share or 0.0
  exempt = exempt or (False,) * len(sizes)
  return tuple(1 if free else max(1, int(np.ceil(share * size - 1e-9)))
               for size, free in zip(sizes, exempt))


def auto_share(plan_: StructuredPlan, ratio: float | None,
               exempt: tuple[bool, ...]) -> float | None:
  """``min_kept_share="auto"``: half the width uniform pruning to C keeps,
  ``0.5 / sqrt(C)``, or the largest share below it (to 1/4096) whose
  floors (on the groups ``exempt`` does not mark) take at most half of
  what the ranking chooses (the budget ``total / C`` less what no ranking
  removes: one channel a group and everything outside the groups), so
  that the ranking still chooses most of the model; None (one channel)
  for a scheduled C. ``plan_`` holds one-channel floors."""
  if ratio is None:
    return None
  least = minimum_cost(plan_)
  limit = least + 0.5 * max(plan_.total / ratio - least, 0.0)

  def fits(share):
    sized = plan_._replace(floors=floors(plan_.resolved.sizes, share, exempt))
    return minimum_cost(sized) <= limit

  share = 0.5 / float(np.sqrt(ratio))
  if fits(share):
    return share
  low, high = 0.0, share
  for _ in range(12):
    middle = 0.5 * (low + high)
    low, high = (middle, high) if fits(middle) else (low, middle)
  return low or None


def plan(groups: _groups.Groups, params: chex.ArrayTree, cost: str,
         min_kept_share: MinKeptShare = None,
         ratio: float | None = None) -> StructuredPlan:
  """The plan for ``params``; ``ratio`` (a constant C, or None) sets the
  floors of ``min_kept_share="auto"``, which spare the bypassed groups (a
  residual branch's channels: at width zero the shortcut still carries
  the signal)."""
  resolved = _groups.resolve(groups, params)
  if not any(resolved.channels) and not resolved.blocks:
    raise ValueError(
        "`groups` has no member in these params: were they traced from "
        "other variables?")
  unit_costs = _entry_costs(groups, _prunable.leaf_paths(params), cost)
  plan_ = StructuredPlan(
      resolved=resolved,
      costs=cost_per_structure(groups, params, cost),
      touched=_groups.touched_leaves(resolved, len(jax.tree.leaves(params))),
      unit_costs=unit_costs,
      total=float(sum(u * np.size(w) for u, w in
                      zip(unit_costs, jax.tree.leaves(params)))),
      floors=floors(resolved.sizes, None))
  if min_kept_share != AUTO_SHARE:
    return plan_._replace(floors=floors(resolved.sizes, min_kept_share))
  bypassed = tuple(g.bypassed for g in groups.channels)
  return plan_._replace(floors=floors(
      resolved.sizes, auto_share(plan_, ratio, bypassed), bypassed))


def min_kept_channels(groups: _groups.Groups, params: chex.ArrayTree,
                      compression_ratio: float, *, cost: str = "params",
                      min_kept_share: MinKeptShare = AUTO_SHARE
                      ) -> dict[str, int]:
  """The channels each group keeps whatever the ranking, at a constant C.

  What `structured_gsm` (and `prune_structures`) hold each group to: with
  ``"auto"``, half the uniform width on the main path and one channel in
  the groups a shortcut bypasses (`ChannelGroup.bypassed`).

  Example:
    >>> optax_gsm.structured.min_kept_channels(  # doctest: +SKIP
    ...     groups, params, 4.0, cost="flops")
    {'conv': 2, 'stage0_block0/conv1': 1, ...}

  Args:
    groups: the structures.
    params: the params.
    compression_ratio: C >= 1.
    cost: "params" or "flops".
    min_kept_share: as in `structured_gsm`.

  Returns:
    Per channel group's name, its floor in channels.
  """
  check_cost(cost)
  check_min_kept_share(min_kept_share)
  _validation.check_range("compression_ratio", compression_ratio, low=1.0)
  plan_ = plan(groups, params, cost, min_kept_share, float(compression_ratio))
  return {g.name: f for g, f in zip(groups.channels, plan_.floors)}


def added_costs_fn(plan_: StructuredPlan) -> AddedCosts:
  """What each structure alone would add to the kept params' cost."""
  return lambda kept_flat: _groups.added_costs(plan_.resolved.layout,
                                               plan_.unit_costs, kept_flat)


def kept_cost_fn(plan_: StructuredPlan) -> KeptCost:
  """The exact cost of the params once the structures not kept are gone."""
  return lambda kept_flat: _groups.kept_cost(plan_.resolved.layout,
                                             plan_.unit_costs, kept_flat)


def minimum_cost(plan_: StructuredPlan) -> float:
  """The least cost kept under any budget: each group's floor of its
  cheapest channels, no block (counted in float64)."""
  flat, start = np.zeros(len(plan_.costs), bool), 0
  for size, floor in zip(plan_.resolved.sizes, plan_.floors):
    cheapest = np.argsort(plan_.costs[start:start + size], kind="stable")
    flat[start + cheapest[:floor]] = True
    start += size
  return float(_groups.kept_cost(plan_.resolved.layout, plan_.unit_costs,
                                 flat, np))


def budget(plan_: StructuredPlan, ratio: Any, cost: str) -> Any:
  """``total / C``, checked against the minimum for a concrete C."""
  concrete = _validation.concrete_float(ratio)
  if concrete is None:
    return plan_.total / jnp.maximum(jnp.asarray(ratio, jnp.float32), 1.0)
  _validation.check_range("compression_ratio", concrete, low=1.0)
  least = minimum_cost(plan_)
  if plan_.total / concrete < least:
    raise ValueError(
        f"`compression_ratio`={concrete!r} leaves a budget of "
        f"{plan_.total / concrete:.6g} ({cost}), less than the channels "
        f"every group keeps (one, or `min_kept_share` of them) and "
        f"everything outside the groups already cost ({least:.6g}); the "
        f"most it can be is {plan_.total / least:.4g}.")
  return plan_.total / concrete


def select(plan_: StructuredPlan, scores: jax.Array,
           limit: Any) -> _groups.StructureMask:
  """`select_structures` with the plan's exact kept and added costs."""
  return select_structures(scores, plan_.costs, plan_.resolved.sizes, limit,
                           kept_cost_fn(plan_), added_costs_fn(plan_),
                           plan_.floors)


def model_cost(groups: _groups.Groups, tree: chex.ArrayTree,
                   keep: _groups.StructureMask,
                   cost: str = "params") -> tuple[float, float]:
  """The exact cost of the model before and after removing structures.

  Counts every entry of ``tree`` that survives (an entry shared by two
  structures once), in params or multiply-adds per example of the traced
  input; entries in no structure count as kept.

  Args:
    groups: the structures.
    tree: the params.
    keep: the structures kept (`kept_structures`).
    cost: "params" or "flops".

  Returns:
    ``(before, after)``.
  """
  check_cost(cost)
  keep = jax.tree.map(np.asarray, keep)
  masks = _groups.entry_masks(_groups.resolve(groups, tree), keep, tree, np)
  per_entry = _entry_costs(groups, _prunable.leaf_paths(tree), cost)
  before = after = 0.0
  for mask, unit in zip(jax.tree.leaves(masks), per_entry):
    before += unit * np.size(mask)
    after += unit * float(np.sum(mask))
  return before, after


def as_contribution_saliency(saliency: Any) -> Any:
  """Validates ``saliency`` for structures: a name or a callable."""
  if callable(saliency) or saliency in ("taylor", "magnitude"):
    return saliency
  raise ValueError(
      "`saliency` of structures must be 'taylor', 'magnitude' or a callable "
      f"(grads, params) -> per-entry contributions; got {saliency!r}.")



def prune_structures(params: chex.ArrayTree, groups: _groups.Groups,
                     compression_ratio: float, *, cost: str = "params",
                     saliency: str = "magnitude",
                     grads: chex.ArrayTree | None = None,
                     block_saliency: str = "total",
                     min_kept_share: MinKeptShare = None
                     ) -> tuple[chex.ArrayTree, _groups.StructureMask]:
  """One-shot structured pruning: the structures GSM's rule keeps now.

  The same budgeted ranking as `structured_gsm` (saliency per unit
  cost, a prefix of the ranking within ``sum(costs) / C``, each group's
  best channel kept), applied once to ``params``: by default by magnitude
  (the L2 norm of each structure), with ``grads`` by Taylor saliency.

  Args:
    params: the params.
    groups: the structures.
    compression_ratio: C >= 1, the budget's divisor.
    cost: "params" or "flops".
    saliency: "magnitude", or "taylor" (needs ``grads``).
    grads: gradients like the params, for "taylor".
    block_saliency: "total" or "parts" (see `structured_gsm`).
    min_kept_share: the share of each group kept whatever the ranking, as
      in `structured_gsm`; None by default (one channel): the one-shot
      global pruning the examples compare against.

  Returns:
    ``(pruned_params, keep)``, as every prune here returns: the params with
    the entries of removed structures set to zero (`mask_structures`), and
    the kept `StructureMask` (`shrink` takes it).
  """
  check_cost(cost)
  if saliency == "taylor" and grads is None:
    raise ValueError("`saliency`='taylor' needs `grads`.")
  if saliency not in ("magnitude", "taylor"):
    raise ValueError(
        f"`saliency` must be 'magnitude' or 'taylor'; got {saliency!r}.")
  check_block_saliency(block_saliency)
  check_min_kept_share(min_kept_share)
  plan_ = plan(groups, params, cost, min_kept_share,
               _validation.concrete_float(compression_ratio))
  scores = structure_scores(plan_.resolved, grads, params, saliency,
                            block_saliency)
  keep = jax.tree.map(np.asarray, select(
      plan_, scores, budget(plan_, compression_ratio, cost)))
  return _groups.mask_structures(params, groups, keep), keep
