"""Centripetal SGD: pull the filters of each cluster together, then merge.

Ding, Ding, Guo, Han, "Centripetal SGD for Pruning Very Deep Convolutional
Networks with Complicated Structure", CVPR 2019,
https://arxiv.org/abs/1904.03837.

The channels of every channel group (`channel_groups`: a layer's output
channels with everything that produces them, joined across residual adds)
are split into as many clusters as the target width (`cluster_channels`).
For channel ``j`` in cluster ``H``, every producing member entry (kernel
slice, bias, normalisation scale and shift) moves by

.. math::
  g'_j = \\frac{1}{|H|}\\sum_{i \\in H} g_i + \\eta W_j
    + \\epsilon \\Big(W_j - \\frac{1}{|H|}\\sum_{i \\in H} W_i\\Big)

inside momentum SGD (`centripetal`): the gradient is shared and the
centripetal term pulls the cluster's filters together until they are identical. Vector
members (bias, normalisation) get no decay and ``0.1 * eps`` (the official
code's choice); singleton clusters and everything outside the groups get
plain momentum SGD with decay. Once the filters of a cluster are identical
their channels are too, and `merge_clusters` keeps one per cluster and
sums the consumers' input slices of the cluster into it: the thinner model
computes what the trained one computes, with no fine-tuning.
`cluster_spread` says how far each cluster still is from identical.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_gsm import _prunable, _validation
from optax_gsm.structured import _groups, _shrink

_METHODS = ("kmeans", "even")
_KMEANS_ITERATIONS = 50
_VECTOR_EPS_FACTOR = 0.1  # the official code's centripetal factor for vectors


@dataclasses.dataclass(frozen=True)
class Clusters:
  """The clusters of every channel group.

  Attributes:
    groups: the channel groups they cluster.
    assignments: per group, the cluster of each channel (ints from 0,
      numbered in the order of their first channel).
  """
  groups: _groups.Groups
  assignments: tuple[np.ndarray, ...]

  @property
  def widths(self) -> dict[str, int]:
    return {g.name: int(a.max()) + 1
            for g, a in zip(self.groups.channels, self.assignments)}


def _renumbered(assignment: np.ndarray) -> np.ndarray:
  """Cluster ids in the order of their first channel."""
  _, first = np.unique(assignment, return_index=True)
  order = np.argsort(np.argsort(first))
  return order[np.searchsorted(np.unique(assignment), assignment)]


def _squared_distances(features: np.ndarray, centres: np.ndarray
                       ) -> np.ndarray:
  """``|x_i - c_j|^2`` for all pairs, through one matrix product (the
  difference tensor would be n x k x d)."""
  distance = ((features ** 2).sum(1)[:, None] - 2 * features @ centres.T
              + (centres ** 2).sum(1)[None])
  return np.maximum(distance, 0.0)


def _kmeans(features: np.ndarray, k: int, seed: int) -> np.ndarray:
  """k-means++ seeding, then Lloyd iterations; no empty cluster.

  O(k n d) a pass: the seeding keeps each point's distance to its nearest
  centre so far, the means come from one scatter-add.
  """
  rng = np.random.default_rng(seed)
  n = features.shape[0]
  chosen = [rng.integers(n)]
  nearest = np.sum((features - features[chosen[0]]) ** 2, axis=1)
  for _ in range(1, k):
    total = nearest.sum()
    choice = rng.choice(n, p=nearest / total) if total > 0 else (
        rng.integers(n))
    chosen.append(choice)
    nearest = np.minimum(nearest,
                         np.sum((features - features[choice]) ** 2, axis=1))
  centres = features[chosen]
  for _ in range(_KMEANS_ITERATIONS):
    distance = _squared_distances(features, centres)
    assignment = np.argmin(distance, axis=1)
    for cluster in np.flatnonzero(np.bincount(assignment, minlength=k) == 0):
      far = np.argmax(distance[np.arange(n), assignment])  # refill from it
      assignment[far] = cluster
    sums = np.zeros_like(centres)
    np.add.at(sums, assignment, features)
    counts = np.bincount(assignment, minlength=k)[:, None]
    new = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
    if np.allclose(new, centres):
      break
    centres = new
  return assignment


def _target_widths(groups, widths, ratio) -> list[int]:
  if (widths is None) == (ratio is None):
    raise ValueError("Give exactly one of `widths` and `ratio`.")
  if ratio is not None:
    _validation.check_range("ratio", ratio, low=1.0)
    return [max(1, round(g.size / ratio)) for g in groups.channels]
  unknown = set(widths) - {g.name for g in groups.channels}
  if unknown:
    raise ValueError(f"`widths` names no channel group: {sorted(unknown)}; "
                     f"the groups are {[g.name for g in groups.channels]}.")
  out = []
  for g in groups.channels:
    width = widths.get(g.name, g.size)
    if not isinstance(width, (int, np.integer)) or not 1 <= width <= g.size:
      raise ValueError(f"`widths`[{g.name!r}] must be an int in [1, "
                       f"{g.size}] (the layer's width); got {width!r}.")
    out.append(int(width))
  return out


def _filters(group_members, leaves, size) -> np.ndarray:
  """Per channel: its producing kernel entries, flattened and joined."""
  parts = []
  for m in group_members:
    if m.role != "out":
      continue
    moved = np.moveaxis(np.asarray(leaves[m.leaf], np.float64), m.axis, 0)
    rows = moved.reshape(moved.shape[0], -1)
    per_channel = np.zeros((size, rows.shape[1]))
    inside = m.channel_of >= 0
    per_channel[m.channel_of[inside]] = rows[inside]
    parts.append(per_channel)
  return np.concatenate(parts, axis=1)


def cluster_channels(variables: chex.ArrayTree, groups: _groups.Groups, *,
                     widths: Mapping[str, int] | None = None,
                     ratio: float | None = None, method: str = "kmeans",
                     seed: int = 0) -> Clusters:
  """Clusters the channels of every group, as many as the target width.

  ``"kmeans"`` (the official code) clusters the channels by their
  producing parameters (every ``"out"`` member slice of the group, joined:
  channels a residual add joins are clustered once), with k-means++
  seeding and Lloyd iterations in NumPy: no extra dependency, the same
  answer for a seed everywhere, and a group has at most thousands of
  channels, so scikit-learn would buy nothing. ``"even"`` puts channels
  ``i * k // n`` together by index.

  Args:
    variables: the (trained) params, or full variables.
    groups: the channel groups (`channel_groups`); blocks are ignored.
    widths: target width per group name (others keep their width), or
    ratio: every group to ``round(size / ratio)`` channels.
    method: "kmeans" or "even".
    seed: the k-means++ seed.

  Returns:
    `Clusters`.
  """
  if method not in _METHODS:
    raise ValueError(f"`method` must be one of {_METHODS}; got {method!r}.")
  targets = _target_widths(groups, widths, ratio)
  resolved = _groups.resolve(groups, variables)
  leaves = jax.tree.leaves(variables)
  assignments = []
  for group, members, k in zip(groups.channels, resolved.channels, targets):
    if method == "even" or k == group.size:
      assignment = np.arange(group.size) * k // group.size
    else:
      assignment = _kmeans(_filters(members, leaves, group.size), k, seed)
    assignments.append(_renumbered(np.asarray(assignment)))
  return Clusters(groups, tuple(assignments))


def _cluster_means(values: jax.Array, member, assignment: np.ndarray,
                   count: int) -> jax.Array:
  """Each entry replaced by its cluster's mean along the member axis."""
  moved = jnp.moveaxis(values, member.axis, 0)
  inside = member.channel_of >= 0
  cluster_of = np.where(inside, assignment[np.maximum(member.channel_of, 0)],
                        count)
  sizes = np.bincount(cluster_of, minlength=count + 1).astype(np.float32)
  sums = jax.ops.segment_sum(moved, cluster_of, num_segments=count + 1)
  means = sums / jnp.asarray(np.maximum(sizes, 1)).reshape(
      (-1,) + (1,) * (moved.ndim - 1))
  return jnp.moveaxis(means[cluster_of], 0, member.axis)


def _clustered_positions(member, assignment: np.ndarray) -> np.ndarray:
  """Along the member axis: positions whose cluster has several channels."""
  sizes = np.bincount(assignment)
  inside = member.channel_of >= 0
  return inside & (sizes[assignment[np.maximum(member.channel_of, 0)]] > 1)


class CentripetalState(NamedTuple):
  """State of `centripetal`'s centripetal step: the number of updates so far."""
  count: jax.Array


def _centripetal_gradient(clusters: Clusters, *,
                          centripetal_strength: optax.ScalarOrSchedule = 3e-3,
                          weight_decay: float = 1e-4,
                          vector_factor: float = _VECTOR_EPS_FACTOR
                          ) -> optax.GradientTransformation:
  """The C-SGD direction ``g'`` (before momentum); see the module."""
  if not callable(centripetal_strength):
    _validation.check_range("centripetal_strength", centripetal_strength,
                            low=0.0)
  _validation.check_range("weight_decay", weight_decay, low=0.0)
  _validation.check_range("vector_factor", vector_factor, low=0.0)

  def init_fn(params):
    _check_clusters(clusters, params)
    return CentripetalState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("centripetal needs the params: call "
                       "`update(grads, opt_state, params)`.")
    resolved = _check_clusters(clusters, params)
    eps = (centripetal_strength(state.count) if callable(centripetal_strength)
           else centripetal_strength)
    leaves, treedef = jax.tree.flatten(params)
    grads = treedef.flatten_up_to(updates)
    paths = _prunable.leaf_paths(params)
    directions = [g + weight_decay * w for g, w in zip(grads, leaves)]
    for members, assignment in zip(resolved.channels, clusters.assignments):
      count = int(assignment.max()) + 1
      for m in members:
        if m.role != "out":
          continue
        w, g = leaves[m.leaf], grads[m.leaf]
        vector = np.ndim(w) == 1 or not _prunable.is_kernel_path(paths[m.leaf])
        decay = 0.0 if vector else weight_decay
        strength = eps * (vector_factor if vector else 1.0)
        pulled = (_cluster_means(g, m, assignment, count) + decay * w
                  + strength * (w - _cluster_means(w, m, assignment, count)))
        where = _groups.expand_along(_clustered_positions(m, assignment),
                                     m.axis, np.ndim(w))
        directions[m.leaf] = jnp.where(where, pulled.astype(g.dtype),
                                       directions[m.leaf])
    return treedef.unflatten(directions), CentripetalState(
        count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def _check_clusters(clusters: Clusters, tree: Any) -> _groups.Resolved:
  if len(clusters.assignments) != len(clusters.groups.channels) or any(
      np.shape(a) != (g.size,)
      for a, g in zip(clusters.assignments, clusters.groups.channels)):
    raise ValueError("`clusters` does not match its groups: one assignment "
                     "per channel group, one cluster per channel.")
  return _groups.resolve(clusters.groups, tree)


def centripetal(clusters: Clusters, *,
         centripetal_strength: optax.ScalarOrSchedule = 3e-3,
         weight_decay: float = 1e-4, momentum: float = 0.9,
         nesterov: bool = False,
         vector_factor: float = _VECTOR_EPS_FACTOR
         ) -> optax.GradientTransformation:
  r"""Centripetal SGD before the learning rate: the centripetal gradient + momentum.

  Example::

    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax, optax_gsm
    >>> model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(1)])
    >>> x = jnp.ones((1, 3))
    >>> variables = model.init(jax.random.key(0), x)
    >>> groups = optax_gsm.structured.channel_groups(model.apply, variables, x)
    >>> clusters = optax_gsm.centripetal.cluster_channels(variables, groups, ratio=2.0)
    >>> tx = optax_gsm.centripetal.centripetal_sgd(0.1, clusters)
    >>> params = variables["params"]
    >>> state = tx.init(params)

  Args:
    clusters: from `cluster_channels`.
    centripetal_strength: eps >= 0, or a schedule (ResNet-56 CIFAR: 3e-3).
    weight_decay: eta >= 0 for kernels (vector members get none).
    momentum: beta in [0, 1).
    nesterov: Nesterov momentum.
    vector_factor: >= 0, the share of ``eps`` that vector members (bias,
      normalisation) get: 0.1 in the official code, made for hundreds of
      epochs; on short budgets their clusters then lag behind the kernels'
      (ResNet-20 on MNIST, 500 steps: the merge cost 0.3 points at 0.1),
      and 1.0 pulls them as hard as the kernels.

  Returns:
    An ``optax.GradientTransformation`` that needs ``params``.
  """
  _validation.check_range("momentum", momentum, low=0.0, high=1.0,
                          high_inclusive=False)
  return optax.chain(
      _centripetal_gradient(
          clusters, centripetal_strength=centripetal_strength,
          weight_decay=weight_decay, vector_factor=vector_factor),
      optax.trace(decay=momentum, nesterov=nesterov))


def centripetal_sgd(learning_rate: optax.ScalarOrSchedule,
                    clusters: Clusters, *,
             centripetal_strength: optax.ScalarOrSchedule = 3e-3,
             weight_decay: float = 1e-4, momentum: float = 0.9,
             nesterov: bool = False,
             vector_factor: float = _VECTOR_EPS_FACTOR
             ) -> optax.GradientTransformation:
  """`centripetal` chained with ``optax.scale_by_learning_rate``."""
  return optax.chain(
      centripetal(clusters, centripetal_strength=centripetal_strength,
           weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
           vector_factor=vector_factor),
      optax.scale_by_learning_rate(learning_rate))


def cluster_spread(variables: chex.ArrayTree, clusters: Clusters
                   ) -> dict[str, float]:
  """Per group: the largest distance of a channel's producing entries from
  its cluster's mean: everything `merge_clusters` assumes equal within a
  cluster (kernel slice, bias, normalisation parameters and batch
  statistics). 0 when every cluster is identical: the merge is then exact.

  With batch norm, the running statistics of a cluster's channels differ
  even once their filters agree (they average activations from earlier in
  training): recompute them on the final model first
  (`optax_gsm.structured.recalibrate_batch_stats`), then measure and merge.

  Args:
    variables: the variables the groups were traced from (with their batch
      statistics; params alone are refused when the groups have
      statistics, which the spread must measure).
    clusters: from `cluster_channels`.

  Returns:
    ``{group name: spread}``.
  """
  resolved = _check_clusters(clusters, variables)
  table = set(_prunable.leaf_paths(variables))
  missing = [m.path for g in clusters.groups.channels for m in g.members
             if m.role == "out" and m.path not in table
             and m.path.partition("/")[2] not in table]
  if missing:
    raise ValueError(
        f"`variables` lack members of the groups ({missing[0]!r}): pass the "
        "variables the groups were traced from, batch statistics included; "
        "the merge assumes those equal within a cluster too.")
  leaves = jax.tree.leaves(variables)
  spread = {}
  for group, members, assignment in zip(clusters.groups.channels,
                                        resolved.channels,
                                        clusters.assignments):
    features = _filters(members, leaves, group.size)
    means = np.stack([features[assignment == c].mean(0)
                      for c in range(int(assignment.max()) + 1)])
    spread[group.name] = float(np.max(np.linalg.norm(
        features - means[assignment], axis=1)))
  return spread


def merge_clusters(variables: chex.ArrayTree, groups: _groups.Groups,
                   clusters: Clusters) -> tuple[chex.ArrayTree, dict]:
  """One channel per cluster: the thinner model's variables and widths.

  Keeps each cluster's first channel (its kernel slice, bias, normalisation
  parameters and statistics) and sums the input slices of the cluster's
  channels in every consumer (after a flatten, block by block; across
  residual adds, in every branch). Exact when every cluster is identical
  (`cluster_spread` 0, batch statistics included: with batch norm,
  `optax_gsm.structured.recalibrate_batch_stats` first); `shrink`'s
  machinery.

  Args:
    variables: the trained variables.
    groups: the channel groups the clusters were made for.
    clusters: from `cluster_channels`.

  Returns:
    ``(small_variables, widths)`` as `shrink` returns them.
  """
  if [(g.name, g.size) for g in groups.channels] != [
      (g.name, g.size) for g in clusters.groups.channels]:
    raise ValueError("`clusters` were made for other groups.")
  _check_clusters(clusters, variables)
  maps = []
  for assignment in clusters.assignments:
    first = np.zeros(len(assignment), bool)
    first[np.unique(assignment, return_index=True)[1]] = True
    maps.append(_shrink.ChannelMap(target=assignment, representative=first))
  return _shrink.reduce_channels(variables, groups, maps,
                                 np.zeros(len(groups.blocks), bool))
