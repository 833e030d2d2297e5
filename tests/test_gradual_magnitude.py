"""Gradual magnitude pruning, the examples' baseline (Zhu & Gupta 2017):
the cubic schedule, exact counts at every mask update, pruned weights stay
zero, global and per-layer scope."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

gmp = pytest.importorskip("examples.gradual_magnitude")


def test_cubic_schedule_matches_the_formula():
  sparsity = gmp.polynomial_sparsity(0.9, begin_step=10, ramp_steps=100)
  for step in (0, 10, 35, 60, 110, 500):
    progress = np.clip((step - 10) / 100, 0, 1)
    np.testing.assert_allclose(sparsity(step), 0.9 - 0.9 * (1 - progress) ** 3,
                               rtol=1e-6)


def _run(scope, steps=30):
  rng = np.random.default_rng(0)
  params = {"a": {"kernel": jnp.asarray(rng.normal(size=(20, 30)),
                                        jnp.float32)},
            "b": {"kernel": jnp.asarray(rng.normal(size=(30, 10)),
                                        jnp.float32),
                  "bias": jnp.ones(10)}}
  tx = optax.chain(optax.sgd(0.01, momentum=0.9),
                   gmp.gradual_magnitude_pruning(
                       10.0, ramp_steps=20, update_every=5, scope=scope))
  state = tx.init(params)
  update = jax.jit(tx.update)
  history = []
  for _ in range(steps):
    grads = jax.tree.map(lambda w: jnp.asarray(
        rng.normal(size=w.shape), jnp.float32), params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append(params)
  return params, history


@pytest.mark.slow  # trains
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_ends_at_the_ratio_and_pruned_weights_stay_zero(scope):
  params, history = _run(scope)
  kernels = [params["a"]["kernel"], params["b"]["kernel"]]
  nonzero = sum(int(jnp.sum(k != 0)) for k in kernels)
  assert nonzero == round(0.1 * 900)
  if scope == "layer":
    assert [int(jnp.sum(k != 0)) for k in kernels] == [60, 30]
  assert bool(jnp.all(params["b"]["bias"] != 0))  # biases are not pruned
  # After the ramp (step 20) the zeros never come back.
  zeros = [k == 0 for k in jax.tree.leaves(history[21])]
  for later in history[22:]:
    for z, k in zip(zeros, jax.tree.leaves(later)):
      assert bool(jnp.all(jnp.where(z, k == 0, True)))


def test_mask_follows_the_schedule_during_the_ramp():
  _, history = _run("global", steps=12)
  # Step 5's update (the 6th) sets sparsity s(5) = 0.9 (1 - (1 - 5/20)**3).
  nonzero = sum(int(jnp.sum(k != 0)) for k in
                (history[5]["a"]["kernel"], history[5]["b"]["kernel"]))
  keep = 1 - 0.9 * (1 - (1 - 5 / 20) ** 3)
  assert nonzero == round(keep * 900)


def test_bad_arguments():
  with pytest.raises(ValueError, match="compression_ratio"):
    gmp.gradual_magnitude_pruning(0.5, ramp_steps=10)
  with pytest.raises(ValueError, match="scope"):
    gmp.gradual_magnitude_pruning(10.0, ramp_steps=10, scope="block")
