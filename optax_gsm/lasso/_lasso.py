"""Channel pruning by LASSO regression and least-squares reconstruction.

He, Zhang and Sun, *Channel Pruning for Accelerating Very Deep Neural
Networks*, ICCV 2017 (arXiv 1707.06168). Post-training and data-driven:
layer by layer, choose which input channels of a layer to keep so that its
output on sample inputs is still reproduced, refit the layer's weights on
the kept channels, and remove the filters that produced the others.

For a layer reading channels ``i = 1..c`` (input patches ``X_i``, kernel
slices ``W_i``) with sampled outputs ``Y`` (N positions x n features)::

  min_{beta, W} 1/(2M) ||Y - sum_i beta_i X_i W_i^T||_F^2 + lambda ||beta||_1
  subject to ||beta||_0 <= c'                    (M = N n)

solved in two steps: (1) with ``W`` fixed, a LASSO on ``beta`` over the
regressors ``Z_i = X_i W_i^T`` (flattened to M x 1 each), ``lambda`` raised
(doubling, then bisection) until ``c' <= ||beta||_0 <= (1 + tol) c'`` as
the official code does; (2) with the channels fixed, least squares for
``W`` on the kept channels' patches (`jnp.linalg.lstsq`).

Multi-layer: ``Y`` comes from the ORIGINAL model and ``X`` from the model
pruned so far, so each layer also absorbs the error its predecessors left.
A layer whose output feeds a residual add through its bias or an inference
batch norm reconstructs ``Y`` plus the change of the shortcut (mapped back
through that affine chain): the branch makes up for the stream's error.

Channels and the layers that produce and consume them come from the
dependency groups (`channel_groups`); removal is `shrink`. A group whose
channels several layers produce (a residual stream joined by adds) is not
pruned: dropping a channel there also drops it from the identity
shortcuts, which no layer can reconstruct. A group several layers read is
pruned with one LASSO over all of them (their regressors stacked).
"""

import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from optax_gsm import _prunable, _validation
from optax_gsm.lasso import _layer_io
from optax_gsm.structured import _groups, _shrink

_MAX_DOUBLINGS = 60
_MAX_BISECTIONS = 60


class LassoLayer(NamedTuple):
  """What `prune_channels` did to one channel group.

  Attributes:
    group: the group's name (the producing layer's module path).
    consumers: paths of the kernels whose inputs were reconstructed.
    channels_before: the group's size.
    channels_after: channels kept.
    relative_error: ``||T - X W||_F / ||T||_F`` of the refit on the sampled
      positions, ``T`` the target outputs (all consumers together).
    lasso_lambda: the penalty that selected the channels (0: all kept).
    seconds: wall time of this layer.
  """
  group: str
  consumers: tuple[str, ...]
  channels_before: int
  channels_after: int
  relative_error: float
  lasso_lambda: float
  seconds: float


class LassoReport(NamedTuple):
  """`prune_channels`'s account: one `LassoLayer` per pruned group, in
  the order they were pruned; ``skipped``: ``(group, reason)`` of the
  groups left whole; ``keep``: the `StructureMask` that `shrink` applied;
  ``widths``: the smaller model's widths, as `shrink` returns them."""
  layers: tuple[LassoLayer, ...]
  skipped: tuple[tuple[str, str], ...]
  keep: _groups.StructureMask
  widths: _shrink.Widths

  def table(self) -> str:
    """The report as a Markdown table."""
    lines = ["| group | channels | relative error | lambda | seconds |",
             "|---|---|---|---|---|"]
    for layer in self.layers:
      lines.append(
          f"| {layer.group} | {layer.channels_before} -> "
          f"{layer.channels_after} | {layer.relative_error:.4f} | "
          f"{layer.lasso_lambda:.3g} | {layer.seconds:.2f} |")
    return "\n".join(lines)


@jax.jit
def lasso(gram: jax.Array, correlation: jax.Array, penalty: jax.Array,
          initial: jax.Array, tolerance: float = 1e-6,
          max_sweeps: int = 2000) -> jax.Array:
  """LASSO by cyclic coordinate descent on the Gram form.

  Minimises ``1/2 b^T G b - h^T b + penalty ||b||_1``, which for
  ``G = Z^T Z / M`` and ``h = Z^T y / M`` is scikit-learn's
  ``Lasso(alpha=penalty, fit_intercept=False)`` objective
  ``1/(2M) ||y - Z b||^2 + alpha ||b||_1`` up to a constant. Why this and
  not scikit-learn: after the c x c Gram matrix is formed (one matmul over
  the M = N n rows) every sweep costs O(c^2) whatever the number of sampled
  positions, it runs jitted on the accelerator beside the model, and it
  keeps scikit-learn out of the dependencies. Each update is exact::

    b_j <- soft(h_j - sum_{k != j} G_jk b_k, penalty) / G_jj

  Args:
    gram: ``G``, (c, c) symmetric positive semi-definite.
    correlation: ``h``, (c,).
    penalty: ``lambda >= 0``.
    initial: the starting ``b`` (warm start along a penalty path).
    tolerance: stop when no coefficient moved by more than ``tolerance``
      times the largest one (relative), or after ``max_sweeps`` sweeps.
    max_sweeps: the most sweeps over all coordinates.

  Returns:
    ``b``, (c,).
  """
  diagonal = jnp.diagonal(gram)
  safe = jnp.where(diagonal > 0, diagonal, 1.0)

  def coordinate(j, carry):
    b, product, moved = carry
    rest = correlation[j] - product[j] + diagonal[j] * b[j]
    new = jnp.where(
        diagonal[j] > 0,
        jnp.sign(rest) * jnp.maximum(jnp.abs(rest) - penalty, 0.0) / safe[j],
        0.0)
    change = new - b[j]
    return (b.at[j].set(new), product + gram[:, j] * change,
            jnp.maximum(moved, jnp.abs(change)))

  def sweep(carry):
    b, product, _, count = carry
    b, product, moved = jax.lax.fori_loop(
        0, b.shape[0], coordinate, (b, product, jnp.zeros((), b.dtype)))
    return b, product, moved, count + 1

  def going(carry):
    b, _, moved, count = carry
    return (moved > tolerance * jnp.maximum(jnp.max(jnp.abs(b)), 1e-30)) & (
        count < max_sweeps)

  b = initial.astype(gram.dtype)
  carry = (b, gram @ b, jnp.asarray(jnp.inf, gram.dtype), 0)
  return jax.lax.while_loop(going, sweep, carry)[0]


def select_channels(gram: jax.Array, correlation: jax.Array, count: int,
                    tolerance: float) -> tuple[np.ndarray, float]:
  """Which channels to keep: ``(kept, lambda)``.

  ``lambda`` is doubled from ``max|h| / 1024`` until fewer than ``count``
  coefficients are non-zero, then bisected until ``count <= nonzero <=
  (1 + tolerance) count`` (the official search). If the path jumps over
  that window (ties), the ``count`` largest ``|b|`` at the smallest penalty
  seen with too many are kept.
  """
  size = gram.shape[0]
  if count >= size:
    return np.ones(size, bool), 0.0
  upper_count = int(np.floor((1 + tolerance) * count))
  largest = float(jnp.max(jnp.abs(correlation)))
  if largest == 0.0:  # nothing explains the output: keep the first ones
    kept = np.zeros(size, bool)
    kept[:count] = True
    return kept, 0.0
  zeros = jnp.zeros(size, gram.dtype)

  def solve(penalty, start):
    b = lasso(gram, correlation, jnp.asarray(penalty, gram.dtype), start)
    return b, int(jnp.sum(b != 0))

  low, high = 0.0, largest / 1024
  low_b = zeros
  b, nonzero = solve(high, zeros)
  for _ in range(_MAX_DOUBLINGS):
    if nonzero < count:
      break
    low, low_b = high, b
    high *= 2
    b, nonzero = solve(high, b)
  if count <= nonzero <= upper_count:
    return np.asarray(b != 0), high
  for _ in range(_MAX_BISECTIONS):
    middle = (low + high) / 2
    b, nonzero = solve(middle, low_b)
    if count <= nonzero <= upper_count:
      return np.asarray(b != 0), middle
    if nonzero > upper_count:
      low, low_b = middle, b
    else:
      high = middle
  if low == 0.0:
    low_b, _ = solve(0.0, zeros)
  kept = np.zeros(size, bool)
  kept[np.argsort(-np.abs(np.asarray(low_b)), kind="stable")[:count]] = True
  return kept, low


def _unprunable_reason(group: _groups.ChannelGroup) -> str | None:
  """Why LASSO pruning cannot remove this group's channels (None: it can)."""
  if group.kind == "heads":
    return ("attention heads: LASSO reconstructs a layer from its input "
            "channels; a head is made by query, key and value through a "
            "softmax (prune heads with structured GSM or C-SGD)")
  producers = sum(m.role == "out" and _prunable.is_kernel_path(m.path)
                  for m in group.members)
  if producers != 1:
    return (f"{producers} layers produce these channels (a residual stream "
            "joined by adds): removing one drops it from the identity "
            "shortcuts too, which no layer reconstructs")
  if not any(m.role == "in" and _prunable.is_kernel_path(m.path)
             for m in group.members):
    return "no Dense or Conv layer reads these channels"
  return None


def prunable_groups(groups: _groups.Groups) -> tuple[str, ...]:
  """The channel groups `prune_channels` can prune: made by one Dense
  or Conv (not a residual stream) and read by at least one.

  Example::

    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax_gsm
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((1, 4))
    >>> variables = model.init(jax.random.key(0), x)
    >>> optax_gsm.lasso.prunable_groups(
    ...     optax_gsm.structured.channel_groups(model.apply, variables, x))
    ('layers_0',)
  """
  return tuple(g.name for g in groups.channels
               if _unprunable_reason(g) is None)


class _Consumer(NamedTuple):
  """One layer reading a group: its kernel leaf and program op."""
  leaf: int
  member: _groups.ResolvedMember
  layer: _layer_io.Layer


def _targets(groups: _groups.Groups, resolved: _groups.Resolved,
             paths: list[str], program: _layer_io.Program,
             keep: float | None, widths: Mapping[str, int] | None
             ) -> tuple[list[tuple[int, int, list[_Consumer]]],
                        list[tuple[str, str]]]:
  """``([(group index, channels to keep, consumers)], skipped)`` in the
  order the consumers run."""
  names = {group.name for group in groups.channels}
  if widths is not None:
    unknown = set(widths) - names
    if unknown:
      raise ValueError(
          f"`widths` names {sorted(unknown)}, which are not channel groups "
          f"of `groups`; the groups are {sorted(names)}.")
  plans, skipped = [], []
  for index, (group, members) in enumerate(zip(groups.channels,
                                               resolved.channels)):
    if widths is not None:
      if group.name not in widths:
        continue
      count = _validation.check_int(f"widths[{group.name!r}]",
                                    widths[group.name], low=1)
      if count > group.size:
        raise ValueError(
            f"`widths[{group.name!r}]` is {count}; the group has "
            f"{group.size} channels (allowed: 1 to {group.size}).")
    else:
      count = max(1, int(round(keep * group.size)))
    readers = [m for m in members
               if m.role == "in" and _prunable.is_kernel_path(paths[m.leaf])]
    reason = _unprunable_reason(group)
    consumers = []
    for member in readers if reason is None else []:
      layers = program.layers(member.leaf)
      if len(layers) != 1:
        reason = (f"{paths[member.leaf]} is used by {len(layers)} Dense/Conv "
                  "ops; LASSO pruning needs exactly one")
        break
      consumers.append(_Consumer(member.leaf, member, layers[0]))
    if reason is not None:
      if widths is not None:
        raise ValueError(f"`widths` asks to prune group {group.name!r}, "
                         f"which cannot be: {reason}.")
      skipped.append((group.name, reason))
      continue
    plans.append((index, count, consumers))
  plans.sort(key=lambda plan: min(c.layer.op for c in plan[2]))
  return plans, skipped


def _sample(rows: int, inputs: int, per_input: int,
            rng: np.random.Generator) -> np.ndarray:
  """``per_input`` distinct positions of each input's (all when fewer)."""
  positions = rows // inputs
  if positions <= per_input:
    return np.arange(rows)
  picks = [b * positions + rng.choice(positions, per_input, replace=False)
           for b in range(inputs)]
  return np.sort(np.concatenate(picks))


class _Problem(NamedTuple):
  """One consumer's sampled regression: ``rows @ matrix ~ target``."""
  rows: jax.Array
  matrix: jax.Array
  target: jax.Array
  channel: np.ndarray  # per kernel input entry: group channel, -1: none
  unflatten: Callable[[jax.Array], jax.Array]


def _problem(program, consumer, original, pruned, kernel, sample_rows,
             shortcut) -> _Problem:
  layer = consumer.layer
  rows, matrix, unflatten, in_index = _layer_io.layer_matrices(
      program, layer, pruned[layer.activation], kernel)
  target = original[layer.output]
  if shortcut is not None:
    chain, _, other = shortcut
    values = {i: pruned[i] for i in program.chain_operands(chain)}
    slope = program.slope(chain, values, layer.output, pruned[layer.output])
    change = original[other] - pruned[other]
    target = target + jnp.where(jnp.abs(slope) > 1e-12,
                                change / jnp.where(slope == 0, 1, slope), 0)
  target = _layer_io.output_rows(program, layer, target)
  index = sample_rows(rows.shape[0])
  return _Problem(rows[index], matrix, target[index],
                  np.asarray(consumer.member.channel_of)[in_index], unflatten)


def _regressors(problem: _Problem, size: int) -> tuple[jax.Array, jax.Array]:
  """``(Z, y)``: per channel its contribution ``X_i W_i`` (N x n x c), and
  the target less the entries outside the group."""
  channel = problem.channel
  counts = np.bincount(channel[channel >= 0], minlength=size)
  width = int(counts.max(initial=0))
  entries = problem.rows.shape[1]
  index = np.full((size, width), entries)  # padding: a zero column
  for c in range(size):
    found = np.flatnonzero(channel == c)
    index[c, :len(found)] = found
  rows = jnp.pad(problem.rows, ((0, 0), (0, 1)))
  matrix = jnp.pad(problem.matrix, ((0, 1), (0, 0)))
  z = jnp.einsum("ncs,cso->noc", rows[:, index], matrix[index],
                 precision=jax.lax.Precision.HIGHEST)
  outside = np.flatnonzero(channel < 0)
  y = problem.target - jnp.dot(problem.rows[:, outside],
                               problem.matrix[outside],
                               precision=jax.lax.Precision.HIGHEST)
  return z, y


def _refit(problem: _Problem, kept: np.ndarray) -> tuple[jax.Array, float,
                                                         float]:
  """Least squares on the kept entries: ``(kernel, squared error, squared
  target)``; removed channels' entries become zero."""
  channel = problem.channel
  columns = np.flatnonzero((channel < 0) | kept[np.maximum(channel, 0)])
  x = problem.rows[:, columns]
  solution = jnp.linalg.lstsq(x, problem.target)[0]
  matrix = jnp.zeros_like(problem.matrix).at[columns].set(solution)
  residual = problem.target - jnp.dot(x, solution,
                                      precision=jax.lax.Precision.HIGHEST)
  return (problem.unflatten(matrix), float(jnp.sum(residual ** 2)),
          float(jnp.sum(problem.target ** 2)))


def prune_channels(
    apply_fn: Callable[..., Any], variables: chex.ArrayTree,
    groups: _groups.Groups, inputs: Any, *, keep: float | None = None,
    widths: Mapping[str, int] | None = None, samples_per_input: int = 10,
    lasso_tolerance: float = 0.1, seed: int = 0, verbose: bool = False,
) -> tuple[chex.ArrayTree, LassoReport]:
  """Prunes channels by LASSO selection and least-squares reconstruction.

  For each prunable channel group in the order the model reads it: sample
  ``samples_per_input`` output positions per input of every layer reading
  the group, with its input patches ``X`` from the model pruned so far and
  its target outputs from the original model; choose the channels by LASSO
  (see `select_channels`), refit the readers' kernels on the kept channels
  by least squares, and zero the removed channels' producers; finally
  `shrink`. The smaller model needs no further training to be used (a
  short fine-tuning with any optimizer helps).

  Example::

    groups = optax_gsm.structured.channel_groups(apply_fn, variables, x[:1])
    small, report = optax_gsm.lasso.prune_channels(
        apply_fn, variables, groups, x[:500], keep=0.5)
    print(report.table())
    small_model = MyNet(widths=report.widths)   # as for `shrink`

  Args:
    apply_fn: ``(variables, *inputs) -> outputs`` in inference mode (batch
      norm on running averages), as for `channel_groups`.
    variables: the trained variables (params and batch statistics).
    groups: the model's structures (`channel_groups`).
    inputs: sample inputs (unlabeled), an array with the examples on its
      first axis, or a tuple of such arrays passed as ``*inputs``.
    keep: share of channels kept in every prunable group, in (0, 1]
      (``max(1, round(keep * size))`` channels).
    widths: instead of ``keep``: ``{group name: channels to keep}``; the
      groups not named stay whole.
    samples_per_input: output positions sampled per input of each layer
      (the paper: 10); a Dense layer on flat inputs has one.
    lasso_tolerance: accept ``c'`` to ``(1 + lasso_tolerance) c'`` channels
      from the LASSO search (the official 0.1); 0 keeps exactly ``c'``.
    seed: the sampling seed.
    verbose: print each layer as it is pruned.

  Returns:
    ``(small_variables, report)``, as every prune here returns the pruned
    tree and what it kept: the variables `shrink` returns for the kept
    channels, and a `LassoReport` (``report.widths`` builds the smaller
    model, ``report.keep`` is its `StructureMask`).

  Raises:
    ValueError: ``keep`` outside (0, 1], both or neither of ``keep`` and
      ``widths``, a width outside 1 to the group's size, a group the
      method cannot prune named in ``widths``, or fewer sampled positions
      than kept kernel entries (the least-squares fit needs at least as
      many rows as unknowns per output).
  """
  if (keep is None) == (widths is None):
    raise ValueError("Give exactly one of `keep` (a share of channels) and "
                     "`widths` (channels per group).")
  if keep is not None:
    _validation.check_range("keep", keep, low=0.0, high=1.0,
                            low_inclusive=False)
  samples_per_input = _validation.check_int("samples_per_input",
                                            samples_per_input, low=1)
  _validation.check_range("lasso_tolerance", lasso_tolerance, low=0.0)
  args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
  args = tuple(jnp.asarray(a) for a in args)
  num_inputs = int(args[0].shape[0])
  program = _layer_io.Program(apply_fn, variables, args)
  paths = _prunable.leaf_paths(variables)
  resolved = _groups.resolve(groups, variables)
  plans, skipped = _targets(groups, resolved, paths, program, keep, widths)
  shortcuts = {c.layer.output: program.shortcut(c.layer.output)
               for _, _, consumers in plans for c in consumers}
  wanted = set()
  for _, _, consumers in plans:
    for c in consumers:
      wanted.update((c.layer.activation, c.layer.output))
  for found in shortcuts.values():
    if found is not None:
      wanted.update((found[2], *program.chain_operands(found[0])))
  original = program.run(variables, args, wanted)
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(variables)
  kept_masks = [np.ones(g.size, bool) for g in groups.channels]
  layers = []
  for index, count, consumers in plans:
    start = time.perf_counter()
    group = groups.channels[index]
    current = treedef.unflatten(leaves)
    pruned = program.run(current, args, wanted)
    problems = []
    for consumer in consumers:
      problems.append(_problem(
          program, consumer, original, pruned, leaves[consumer.leaf],
          lambda total: _sample(total, num_inputs, samples_per_input, rng),
          shortcuts[consumer.layer.output]))
    gram = correlation = 0.0
    total_rows = 0
    for problem in problems:
      z, y = _regressors(problem, group.size)
      z = z.reshape(-1, group.size)
      gram = gram + jnp.dot(z.T, z, precision=jax.lax.Precision.HIGHEST)
      correlation = correlation + jnp.dot(
          z.T, y.reshape(-1), precision=jax.lax.Precision.HIGHEST)
      total_rows += z.shape[0]
    kept, penalty = select_channels(gram / total_rows,
                                    correlation / total_rows, count,
                                    float(lasso_tolerance))
    error = norm = 0.0
    for consumer, problem in zip(consumers, problems):
      unknowns = int(np.sum((problem.channel < 0)
                            | kept[np.maximum(problem.channel, 0)]))
      if problem.rows.shape[0] < unknowns:
        raise ValueError(
            f"Too few samples to refit {paths[consumer.leaf]}: "
            f"{problem.rows.shape[0]} sampled positions for {unknowns} "
            "kernel entries per output. Pass more `inputs` or a larger "
            f"`samples_per_input` (now {samples_per_input}).")
      leaves[consumer.leaf], squared, target = _refit(problem, kept)
      error, norm = error + squared, norm + target
    kept_masks[index] = kept
    one = _groups.StructureMask(
        tuple(kept if i == index else np.ones(g.size, bool)
              for i, g in enumerate(groups.channels)),
        np.ones(len(groups.blocks), bool))
    leaves = jax.tree.leaves(_groups.mask_structures(
        treedef.unflatten(leaves), groups, one))
    layers.append(LassoLayer(
        group.name, tuple(paths[c.leaf] for c in consumers), group.size,
        int(kept.sum()), float(np.sqrt(error / max(norm, 1e-30))), penalty,
        time.perf_counter() - start))
    if verbose:
      last = layers[-1]
      print(f"lasso {last.group}: {last.channels_before} -> "
            f"{last.channels_after} channels, relative error "
            f"{last.relative_error:.4f}, lambda {last.lasso_lambda:.3g}, "
            f"{last.seconds:.1f} s", flush=True)
  kept_mask = _groups.StructureMask(tuple(kept_masks),
                                    np.ones(len(groups.blocks), bool))
  small, small_widths = _shrink.shrink(treedef.unflatten(leaves), groups,
                                       kept_mask)
  return small, LassoReport(tuple(layers), tuple(skipped), kept_mask,
                            small_widths)
