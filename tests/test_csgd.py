"""C-SGD: the update against NumPy, exact merges, shrinking spread."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_gsm
from optax_gsm.structured import _groups
from tests import structured_cases


class _Mlp(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(6, name="a")(x))
    x = nn.relu(nn.Dense(4, name="b")(x))
    return nn.Dense(2, name="c")(x)


def _mlp():
  model = _Mlp()
  x = jax.random.normal(jax.random.key(0), (8, 3))
  variables = model.init(jax.random.key(1), x)
  variables = jax.tree.map(lambda w: w + 0.1, variables)  # non-zero biases
  groups = optax_gsm.structured.channel_groups(model.apply, variables, x)
  clusters = optax_gsm.centripetal.Clusters(groups, (np.array([0, 0, 1, 2, 2, 2]),
                                         np.array([0, 1, 1, 0])))
  loss = lambda p: jnp.mean((model.apply({"params": p}, x) - 1.0) ** 2)
  return model, x, variables["params"], groups, clusters, loss


def _numpy_direction(params, grads, clusters, eps, decay):
  """The C-SGD direction written out for the MLP's two groups."""
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
  g = jax.tree.map(lambda v: np.asarray(v, np.float64), grads)
  out = {k: {n: g[k][n] + decay * p[k][n] for n in p[k]} for k in p}
  for layer, assignment in zip(("a", "b"), clusters.assignments):
    for j, cluster in enumerate(assignment):
      members = np.flatnonzero(assignment == cluster)
      if len(members) == 1:
        continue
      kernel_g = g[layer]["kernel"][:, members].mean(1)
      kernel_w = p[layer]["kernel"][:, members].mean(1)
      w = p[layer]["kernel"][:, j]
      out[layer]["kernel"][:, j] = kernel_g + decay * w + eps * (w - kernel_w)
      b = p[layer]["bias"]
      out[layer]["bias"][j] = (g[layer]["bias"][members].mean()
                               + 0.1 * eps * (b[j] - b[members].mean()))
  return out


@pytest.mark.parametrize("jit", [False, True])
def test_update_matches_numpy(jit):
  _, _, params, _, clusters, loss = _mlp()
  lr, eps, decay, beta = 0.1, 0.05, 1e-3, 0.9
  tx = optax_gsm.centripetal.centripetal_sgd(lr, clusters, centripetal_strength=eps,
                          weight_decay=decay, momentum=beta)
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  trace = jax.tree.map(lambda w: np.zeros(w.shape), params)
  for _ in range(3):
    grads = jax.grad(loss)(params)
    direction = _numpy_direction(params, grads, clusters, eps, decay)
    trace = jax.tree.map(lambda t, d: beta * t + d, trace, direction)
    expected = jax.tree.map(lambda w, t: np.asarray(w) - lr * t, params,
                            trace)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-6),
                 params, expected)


def _identical(variables, groups, clusters):
  """Every cluster's producing entries set to its first channel's."""
  leaves, treedef = jax.tree.flatten(variables)
  leaves = [np.array(w) for w in leaves]
  resolved = _groups.resolve(groups, variables)
  for members, assignment in zip(resolved.channels, clusters.assignments):
    first = {int(c): int(np.flatnonzero(assignment == c)[0])
             for c in np.unique(assignment)}
    for m in members:
      if m.role != "out":
        continue
      moved = np.moveaxis(leaves[m.leaf], m.axis, 0)
      for p, channel in enumerate(m.channel_of):
        if channel >= 0:
          moved[p] = moved[list(m.channel_of).index(
              first[int(assignment[channel])])]
  return treedef.unflatten([jnp.asarray(w) for w in leaves])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet", "vit"])
def test_merge_of_identical_clusters_is_exact(name):
  # vit: clusters of identical heads merge into one (query, key and value
  # kept, the output projection's rows summed).
  case = structured_cases.case(name)
  x = structured_cases.example_input(case, 3)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  clusters = optax_gsm.centripetal.cluster_channels(case.variables, groups, ratio=2.0)
  variables = _identical(case.variables, groups, clusters)
  assert max(optax_gsm.centripetal.cluster_spread(variables,
                                      clusters).values()) < 1e-6
  small, widths = optax_gsm.centripetal.merge_clusters(variables, groups, clusters)
  for group, assignment in zip(groups.channels, clusters.assignments):
    assert int(assignment.max()) + 1 == max(1, round(group.size / 2))
  np.testing.assert_allclose(case.rebuild(widths)(small, x),
                             case.apply(variables, x), atol=1e-5)


@pytest.mark.slow
def test_training_pulls_clusters_together():
  model, x, params, _, clusters, loss = _mlp()
  before = optax_gsm.centripetal.cluster_spread(params, clusters)
  tx = optax_gsm.centripetal.centripetal_sgd(0.05, clusters, centripetal_strength=0.3)
  state, update = tx.init(params), jax.jit(tx.update)
  for _ in range(300):
    updates, state = update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  after = optax_gsm.centripetal.cluster_spread(params, clusters)
  for name in before:  # measured: spreads of 0.3-1.0 fall below 1e-3
    assert after[name] < 1e-3 * before[name], (name, before, after)


def test_kmeans_groups_near_identical_channels_and_even_splits():
  _, _, params, groups, _, _ = _mlp()
  kernel = np.asarray(params["a"]["kernel"])
  twins = kernel.copy()
  twins[:, 3:] = twins[:, :3] + 1e-4  # channels 3-5 copy channels 0-2
  params = dict(params, a=dict(params["a"], kernel=jnp.asarray(twins),
                               bias=jnp.zeros(6)))
  clusters = optax_gsm.centripetal.cluster_channels(params, groups, widths={"a": 3})
  np.testing.assert_array_equal(clusters.assignments[0][:3],
                                clusters.assignments[0][3:])
  assert clusters.widths == {"a": 3, "b": 4}
  even = optax_gsm.centripetal.cluster_channels(params, groups, ratio=2.0,
                                                method="even")
  np.testing.assert_array_equal(even.assignments[0], [0, 0, 1, 1, 2, 2])


def test_bad_arguments_are_clear_errors():
  _, _, params, groups, clusters, _ = _mlp()
  with pytest.raises(ValueError, match=r"`widths`\['a'\] must be an int in "
                                       r"\[1, 6\]"):
    optax_gsm.centripetal.cluster_channels(params, groups, widths={"a": 7})
  with pytest.raises(ValueError, match="names no channel group"):
    optax_gsm.centripetal.cluster_channels(params, groups, widths={"z": 2})
  with pytest.raises(ValueError, match="does not match its groups"):
    optax_gsm.centripetal.centripetal(optax_gsm.centripetal.Clusters(
        groups, (np.zeros(6, int),))).init(
        params)
  with pytest.raises(ValueError, match="centripetal_strength"):
    optax_gsm.centripetal.centripetal(clusters, centripetal_strength=float("nan"))
  with pytest.raises(ValueError, match="`method` must be one of"):
    optax_gsm.centripetal.cluster_channels(params, groups, ratio=2.0, method="random")


@pytest.mark.slow
def test_vector_factor_scales_the_pull_on_biases():
  _, _, params, _, clusters, loss = _mlp()
  grads = jax.grad(loss)(params)
  updates = {}
  for factor in (0.1, 1.0):
    tx = optax_gsm.centripetal.centripetal(
        clusters, centripetal_strength=0.5, momentum=0.0,
                        vector_factor=factor)
    updates[factor], _ = tx.update(grads, tx.init(params), params)
  b, assignment = np.asarray(params["a"]["bias"]), clusters.assignments[0]
  mean = np.array([b[assignment == c].mean() for c in assignment])
  np.testing.assert_allclose(
      updates[1.0]["a"]["bias"][:2] - updates[0.1]["a"]["bias"][:2],
      0.9 * 0.5 * (b - mean)[:2], rtol=1e-5, atol=1e-7)


class _DenseBatchNorm(nn.Module):
  widths: dict = None

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense((self.widths or {}).get("d0", 4), name="d0")(x)
    h = nn.BatchNorm(use_running_average=not train, name="bn")(h)
    return nn.Dense(2, name="d1")(nn.relu(h))


def test_batch_statistics_count_and_recalibration_makes_the_merge_exact():
  # Regression: identical kernels and biases with stale batch statistics
  # gave a spread of 0 and a merged output off by 0.34.
  model, x = _DenseBatchNorm(), jax.random.normal(jax.random.key(0), (64, 3))
  variables = model.init(jax.random.key(1), x)
  kernel = np.array(variables["params"]["d0"]["kernel"])
  kernel[:, 1], kernel[:, 3] = kernel[:, 0], kernel[:, 2]
  variables["params"]["d0"]["kernel"] = jnp.asarray(kernel)
  variables["batch_stats"]["bn"] = {"mean": jnp.asarray([0.0, 0.3, 0.0, 0.3]),
                                    "var": jnp.asarray([1.0, 2.0, 1.0, 2.0])}
  groups = optax_gsm.structured.channel_groups(model.apply, variables, x)
  clusters = optax_gsm.centripetal.Clusters(groups, (np.array([0, 0, 1, 1]),))
  assert optax_gsm.centripetal.cluster_spread(variables, clusters)["d0"] > 0.1
  with pytest.raises(ValueError, match="batch statistics"):
    optax_gsm.centripetal.cluster_spread(variables["params"], clusters)
  fresh = optax_gsm.structured.recalibrate_batch_stats(
      functools.partial(model.apply, train=True, mutable=["batch_stats"]),
      variables, [x[:32], x[32:]])
  assert optax_gsm.centripetal.cluster_spread(fresh, clusters)["d0"] < 1e-5
  small, widths = optax_gsm.centripetal.merge_clusters(fresh, groups, clusters)
  np.testing.assert_allclose(_DenseBatchNorm(widths=widths).apply(small, x),
                             model.apply(fresh, x), atol=1e-5)
