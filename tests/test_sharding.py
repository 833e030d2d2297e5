"""Sharded parameters: the update partitions without gathering whole
parameters, and the mask equals the single-device one."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_gsm
from optax_gsm import _density_bounds

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")


def mesh():
  return Mesh(np.array(jax.devices()[:8]), ("data",))


def mesh_2d():
  return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  return {"a": {"kernel": jnp.asarray(rng.normal(size=(256, 512)), jnp.float32),
                "bias": jnp.zeros(512)},
          "b": {"kernel": jnp.asarray(rng.normal(size=(512, 64)), jnp.float32)},
          # Same layout as "b": the two are stacked for counting.
          "c": {"kernel": jnp.asarray(rng.normal(size=(512, 64)), jnp.float32)}}


def shard(tree):
  """Fully-sharded data parallel: every leaf split along its first axis."""
  return jax.tree.map(
      lambda x: jax.device_put(x, NamedSharding(mesh(), P("data"))), tree)


def gathered_sizes(compiled_text):
  """Element counts of every all-gather result in compiled HLO."""
  sizes = []
  for shape in re.findall(r"= [a-z0-9]+\[([0-9,]*)\]\S* all-gather\(",
                          compiled_text):
    sizes.append(int(np.prod([int(d) for d in shape.split(",") if d])))
  return sizes


@pytest.mark.slow
def test_sharded_update_matches_single_device_and_gathers_no_parameter():
  params = make_params()
  grads = make_params(seed=1)
  tx = optax_gsm.gsm_sgd(0.1, 20.0, momentum=0.9, weight_decay=1e-3)
  update = jax.jit(tx.update)
  sharded_params, sharded_grads = shard(params), shard(grads)
  sharded_state = jax.jit(tx.init)(sharded_params)
  compiled = update.lower(sharded_grads, sharded_state,
                          sharded_params).compile().as_text()
  smallest_kernel = 512 * 64
  # Only per-row totals (tie-breaking) may be gathered, never a parameter.
  assert all(size < smallest_kernel // 8 for size in gathered_sizes(compiled))

  sharded_updates, new_state = update(sharded_grads, sharded_state,
                                      sharded_params)
  updates, reference_state = update(grads, tx.init(params), params)
  chex.assert_trees_all_equal(new_state[0][0].mask, reference_state[0][0].mask)
  chex.assert_trees_all_close(sharded_updates, updates, rtol=1e-6)
  assert new_state[0][1].trace["a"]["kernel"].sharding.spec == P("data")


def test_sharded_ties_give_the_single_device_mask():
  # The cut falls in "c", searched together with "a" (same layout).
  scores = {"a": jnp.ones((256, 512)), "b": jnp.ones((512, 64)),
            "c": jnp.ones((256, 512))}
  q = 256 * 512 + 512 * 64 + 1000
  sharded = jax.jit(optax_gsm.top_q_mask)(shard(scores), q)
  chex.assert_trees_all_equal(sharded, optax_gsm.top_q_mask(scores, q))
  assert int(sharded["c"].sum()) == 1000


def test_sharded_density_bounds_give_the_single_device_mask():
  # Per-leaf searches and the row-major tie cut, on leaves split over 8
  # devices; three values, so that ties fall at every threshold.
  rng = np.random.default_rng(3)
  scores = [jnp.asarray(rng.integers(0, 3, shape), jnp.float32)
            for shape in [(256, 512), (512, 64), (512, 64)]]
  low = np.asarray([1000, 20_000, 0])
  high = np.asarray([40_000, 30_000, 512 * 64])
  q = 70_000
  bounded = jax.jit(_density_bounds.bounded_top_q_mask, static_argnums=(2, 3))
  sharded = bounded(shard(scores), q, tuple(low), tuple(high))
  reference = _density_bounds.bounded_top_q_mask(scores, q, low, high)
  chex.assert_trees_all_equal(sharded, reference)
  assert sum(int(m.sum()) for m in sharded) == q
  assert 20_000 <= int(sharded[1].sum()) <= 30_000


def test_eager_init_places_the_mask_like_the_params():
  # Regression: the mask of an eager `init` landed on one device while the
  # momentum followed the params' sharding.
  params = shard(make_params())
  state = optax_gsm.gsm(20.0).init(params)
  for mask, w in zip(jax.tree.leaves(state[0].mask), jax.tree.leaves(params)):
    assert mask.sharding == w.sharding


@pytest.mark.parametrize("spec", [P(None, "model"), P("data", "model"),
                                  P("data", None)],
                         ids=["model", "data-model", "fsdp"])
@pytest.mark.slow
def test_whole_update_gathers_nothing_parameter_sized(spec):
  # Regression: the sample's scattered gather and the tie-break's cumsum
  # all-gathered whole key leaves at the top level of every update.
  params = make_params()
  grads = make_params(seed=1)

  def put(x):
    vector_spec = P(spec[1]) if spec[1] else P()
    return jax.device_put(x, NamedSharding(
        mesh_2d(), spec if x.ndim == 2 else vector_spec))

  tx = optax_gsm.gsm_sgd(0.1, 20.0, momentum=0.9, weight_decay=1e-3)
  sharded_params, sharded_grads = jax.tree.map(put, (params, grads))
  state = jax.jit(tx.init)(sharded_params)
  compiled = jax.jit(tx.update).lower(sharded_grads, state,
                                      sharded_params).compile().as_text()
  smallest_kernel = 512 * 64
  assert all(size <= smallest_kernel // 16
             for size in gathered_sizes(compiled)), gathered_sizes(compiled)
  _, new_state = jax.jit(tx.update)(sharded_grads, state, sharded_params)
  _, reference = jax.jit(tx.update)(grads, tx.init(params), params)
  chex.assert_trees_all_equal(new_state[0][0].mask, reference[0][0].mask)
