"""Path-SGD: kappa by brute force over paths, and rescaling invariance."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_gsm


def _mlp(params, x):
  h = jax.nn.relu(x @ params["w1"] + params["b1"])
  h = jax.nn.relu(h @ params["w2"] + params["b2"])
  return h @ params["w3"] + params["b3"]


def _params(seed=0, sizes=(3, 4, 3, 2)):
  rng = np.random.default_rng(seed)
  params = {}
  for i, (a, b) in enumerate(zip(sizes, sizes[1:]), 1):
    params[f"w{i}"] = jnp.asarray(rng.normal(size=(a, b)), jnp.float32)
    params[f"b{i}"] = jnp.asarray(rng.normal(size=b), jnp.float32)
  return params


def _brute_force_kappa(params):
  """Enumerates every path: from an input unit or from a bias unit (a unit
  that outputs 1) of any layer, to an output; kappa_e sums, over the paths
  through e, the product of the other edges' squared weights."""
  w = [np.asarray(params[f"w{i}"], np.float64) for i in (1, 2, 3)]
  b = [np.asarray(params[f"b{i}"], np.float64) for i in (1, 2, 3)]
  kappa = {k: np.zeros(np.shape(v)) for k, v in params.items()}
  widths = [w[0].shape[0]] + [m.shape[1] for m in w]
  for start in range(3):  # the path's first layer: w[start] or b[start]
    sources = [None] + (list(range(widths[0])) if start == 0 else [])
    for source in sources:
      for units in itertools.product(*[range(n)
                                       for n in widths[start + 1:]]):
        if source is None:  # from the bias unit into layer start + 1
          edges = [(f"b{start + 1}", (units[0],), b[start][units[0]])]
        else:
          edges = [("w1", (source, units[0]), w[0][source, units[0]])]
        for k, (u, v) in enumerate(zip(units, units[1:])):
          edges.append((f"w{start + 2 + k}", (u, v), w[start + 1 + k][u, v]))
        for name, index, _ in edges:
          kappa[name][index] += np.prod([value ** 2 for n, i, value in edges
                                         if (n, i) != (name, index)])
  return kappa


def test_kappa_equals_the_brute_force_sum_over_paths():
  params = _params()
  kappa = optax_gsm.path_norm.path_kappa(_mlp, jnp.ones((5, 3)))(params)
  expected = _brute_force_kappa(params)
  for name in params:
    np.testing.assert_allclose(kappa[name], expected[name], rtol=1e-5)


def _rescaled(params, unit, c):
  params = dict(params)
  params["w1"] = params["w1"].at[:, unit].multiply(c)
  params["b1"] = params["b1"].at[unit].multiply(c)
  params["w2"] = params["w2"].at[unit, :].divide(c)
  return params


@pytest.mark.parametrize("factor", [10.0, 1e-3])
def test_update_is_invariant_to_rescaling_a_unit_and_sgd_is_not(factor):
  # Regression (factor 1e-3): the old default eps=1e-6 was as large as the
  # rescaled unit's kappa and broke the invariance.
  params = _params(1)
  x = jax.random.normal(jax.random.key(0), (16, 3))
  y = jax.random.normal(jax.random.key(1), (16, 2))
  loss = lambda p: jnp.mean((_mlp(p, x) - y) ** 2)
  scaled = _rescaled(params, 2, factor)
  np.testing.assert_allclose(_mlp(scaled, x), _mlp(params, x), rtol=1e-5,
                             atol=1e-5)

  def step(tx, p):
    updates, _ = jax.jit(tx.update)(jax.grad(loss)(p), tx.init(p), p)
    return optax.apply_updates(p, updates)

  path = optax_gsm.path_norm.path_sgd(0.05, apply_fn=_mlp, example_input=x)
  probe = jax.random.normal(jax.random.key(2), (32, 3))
  np.testing.assert_allclose(_mlp(step(path, scaled), probe),
                             _mlp(step(path, params), probe), rtol=1e-4,
                             atol=1e-5)
  sgd = optax.sgd(0.05)
  difference = jnp.abs(_mlp(step(sgd, scaled), probe)
                       - _mlp(step(sgd, params), probe)).max()
  assert difference > 1e-2


@pytest.mark.parametrize("jit", [False, True])
def test_kappa_every_refreshes_on_its_steps_and_keeps_the_invariance(jit):
  params = _params(1)
  x = jax.random.normal(jax.random.key(0), (16, 3))
  y = jax.random.normal(jax.random.key(1), (16, 2))
  loss = lambda p: jnp.mean((_mlp(p, x) - y) ** 2)
  kappa_fn = optax_gsm.path_norm.path_kappa(_mlp, x)
  maybe_jit = jax.jit if jit else lambda f: f

  def run(p, kappa_every, steps=5):
    tx = optax_gsm.path_norm.path_sgd(0.05, apply_fn=_mlp, example_input=x,
                                      kappa_every=kappa_every)
    state, update = tx.init(p), maybe_jit(tx.update)
    for _ in range(steps):
      updates, state = update(jax.grad(loss)(p), state, p)
      p = optax.apply_updates(p, updates)
    return p

  # The reference: kappa from steps 0 and 3, in plain Python.
  p = params
  for step in range(5):
    if step % 3 == 0:
      kappa = kappa_fn(p)
    p = jax.tree.map(lambda w, g, k: w - 0.05 * g / k, p,
                     jax.grad(loss)(p), kappa)
  every3 = run(params, 3)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5,
                                                       atol=1e-6), every3, p)
  assert not np.allclose(every3["w1"], run(params, 1)["w1"])
  probe = jax.random.normal(jax.random.key(2), (32, 3))
  np.testing.assert_allclose(_mlp(run(_rescaled(params, 2, 10.0), 3), probe),
                             _mlp(every3, probe), rtol=1e-4, atol=1e-5)


def test_conv_weight_sharing_sums_over_positions():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(2, (3, 3), padding="VALID", use_bias=False)(x))
      return nn.Dense(1, use_bias=False)(x.reshape(x.shape[0], -1))

  model = Net()
  x = jnp.ones((1, 5, 5, 1))
  params = model.init(jax.random.key(0), x)["params"]
  kappa = optax_gsm.path_norm.path_kappa(
      lambda p, x: model.apply({"params": p}, x), x)(params)
  conv = np.asarray(params["Conv_0"]["kernel"]) ** 2
  dense = np.asarray(params["Dense_0"]["kernel"]).reshape(3, 3, 2) ** 2
  # A conv weight (h, w, 0, c) lies on one path per output position, each
  # through that position's dense weight, with an input of 1.
  np.testing.assert_allclose(
      kappa["Conv_0"]["kernel"][..., 0, :],
      np.broadcast_to(dense.sum((0, 1)), (3, 3, 2)), rtol=1e-5)
  np.testing.assert_allclose(
      np.asarray(kappa["Dense_0"]["kernel"]).reshape(3, 3, 2),
      np.broadcast_to(conv.sum((0, 1, 2)), (3, 3, 2)), rtol=1e-5)


def test_batch_norm_is_a_clear_error_and_kappa_fn_is_the_way_out():
  class Normed(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.BatchNorm(use_running_average=True)(nn.Dense(4)(x))
      return nn.Dense(2)(nn.relu(x))

  model = Normed()
  x = jnp.ones((2, 3))
  variables = model.init(jax.random.key(0), x)
  apply = lambda p, x: model.apply({"params": p,
                                    "batch_stats": variables["batch_stats"]},
                                   x)
  tx = optax_gsm.path_norm.path_sgd(0.1, apply_fn=apply, example_input=x)
  params = variables["params"]
  grads = jax.tree.map(jnp.ones_like, params)
  with pytest.raises(NotImplementedError, match="`sub` breaks path"):
    tx.init(params)  # before any training step
  custom = optax_gsm.path_norm.path_sgd(
      0.1, kappa_fn=lambda p: jax.tree.map(lambda w: jnp.full_like(w, 2.0), p))
  updates, _ = custom.update(grads, custom.init(params), params)
  np.testing.assert_allclose(updates["Dense_0"]["kernel"],
                             -0.1 / 2.0, rtol=1e-6)


def test_bad_arguments_are_clear_errors():
  with pytest.raises(ValueError, match="Give `kappa_fn`"):
    optax_gsm.path_norm.path_sgd(0.1)
  with pytest.raises(ValueError, match="`eps` must be in"):
    optax_gsm.path_norm.scale_by_path_norm(lambda p: p, eps=0.0)
  with pytest.raises(ValueError, match="`kappa_every`"):
    optax_gsm.path_norm.path_sgd(0.1, kappa_fn=lambda p: p, kappa_every=0)


def test_kappa_of_a_scan_stack_is_that_of_its_unrolled_layers():
  # The graph unrolls a scan: layer i of the stack is row i of its leaves.
  rng = np.random.default_rng(0)
  stacked = {"w": jnp.asarray(rng.normal(size=(3, 4, 4)), jnp.float32),
             "b": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}

  def scanned(params, x):
    layer = lambda h, wb: (jax.nn.relu(h @ wb[0] + wb[1]), None)
    return jax.lax.scan(layer, x, (params["w"], params["b"]))[0]

  def unrolled(params, x):
    for i in range(3):
      x = jax.nn.relu(x @ params[f"w{i}"] + params[f"b{i}"])
    return x

  layers = {f"{k}{i}": v[i] for k, v in stacked.items() for i in range(3)}
  x = jnp.ones((2, 4))
  kappa = optax_gsm.path_norm.path_kappa(scanned, x)(stacked)
  expected = optax_gsm.path_norm.path_kappa(unrolled, x)(layers)
  for k in ("w", "b"):
    np.testing.assert_allclose(
        kappa[k], np.stack([expected[f"{k}{i}"] for i in range(3)]),
        rtol=1e-5)


def test_float64_params_keep_their_dtype():
  # Regression: path_kappa cast the params to float32 and failed on float64.
  with jax.enable_x64(True):
    params = jax.tree.map(lambda w: jnp.asarray(w, jnp.float64), _params())
    x = jnp.ones((2, 3), jnp.float64)
    kappa = optax_gsm.path_norm.path_kappa(_mlp, x)(params)
    expected = optax_gsm.path_norm.path_kappa(_mlp, x.astype(jnp.float32))(
        jax.tree.map(lambda w: w.astype(jnp.float32), params))
    for k in params:
      assert kappa[k].dtype == jnp.float64
      np.testing.assert_allclose(kappa[k], expected[k], rtol=1e-5)
