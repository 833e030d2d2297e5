"""Optimizer state survives an orbax checkpoint; resuming is bit-identical."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_gsm

ocp = pytest.importorskip("orbax.checkpoint")


def make_problem():
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(12, 8)), jnp.float32),
                      "bias": jnp.zeros(8)},
            "out": {"kernel": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)}}
  data = [(jnp.asarray(rng.normal(size=(16, 12)), jnp.float32),
           jnp.asarray(rng.integers(0, 3, 16))) for _ in range(12)]
  tx = optax_gsm.gsm_sgd(optax.cosine_decay_schedule(0.1, 12), 6.0,
                         momentum=0.99, nesterov=True, weight_decay=5e-4)

  def loss(p, x, y):
    h = jax.nn.relu(x @ p["dense"]["kernel"] + p["dense"]["bias"])
    return optax.softmax_cross_entropy_with_integer_labels(
        h @ p["out"]["kernel"], y).mean()

  @jax.jit
  def step(params, state, x, y):
    updates, state = tx.update(jax.grad(loss)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state

  return params, data, tx, step


@pytest.mark.slow  # orbax: a real save and restore
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
  params, data, tx, step = make_problem()
  state = tx.init(params)
  for x, y in data:
    params, state = step(params, state, x, y)
  uninterrupted = (params, state)

  params, data, tx, step = make_problem()
  state = tx.init(params)
  for x, y in data[:5]:
    params, state = step(params, state, x, y)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "step5", {"params": params, "opt_state": state})
  checkpointer.wait_until_finished()
  del params, state

  # A new process would rebuild the structure from init, then restore.
  fresh_params, _, tx, step = make_problem()
  target = {"params": fresh_params, "opt_state": tx.init(fresh_params)}
  restored = checkpointer.restore(tmp_path / "step5", target)
  params, state = restored["params"], restored["opt_state"]
  assert isinstance(state[0][0], optax_gsm.GSMState)
  assert state[0][0].mask["dense"]["kernel"].dtype == jnp.bool_
  for x, y in data[5:]:
    params, state = step(params, state, x, y)
  chex.assert_trees_all_equal((params, state), uninterrupted)
