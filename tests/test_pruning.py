"""The final global magnitude prune keeps exactly Q weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_gsm


def test_prune_keeps_exactly_q_largest_magnitudes():
  rng = np.random.default_rng(0)
  params = {"a": {"kernel": jnp.asarray(rng.normal(size=(20, 30)), jnp.float32),
                  "bias": jnp.ones(30)},
            "b": {"kernel": jnp.asarray(rng.normal(size=(30, 5)), jnp.float32)}}
  pruned, mask = optax_gsm.prune(params, 12.5)
  q = (600 + 150) // 12.5
  magnitudes = np.abs(np.concatenate([np.asarray(params["a"]["kernel"]).ravel(),
                                      np.asarray(params["b"]["kernel"]).ravel()]))
  threshold = np.sort(magnitudes)[::-1][int(q) - 1]
  kept = np.concatenate([np.asarray(pruned["a"]["kernel"]).ravel(),
                         np.asarray(pruned["b"]["kernel"]).ravel()])
  assert np.count_nonzero(kept) == q
  np.testing.assert_array_equal(kept != 0, magnitudes >= threshold)
  np.testing.assert_array_equal(pruned["a"]["bias"], 1.0)  # not prunable
  assert bool(mask["a"]["bias"].all())
  np.testing.assert_array_equal(
      pruned["a"]["kernel"], jnp.where(mask["a"]["kernel"], params["a"]["kernel"], 0))


def test_prune_with_ties_keeps_exactly_q_and_sparsity_keyword():
  params = {"w": jnp.ones((10, 10))}
  pruned, mask = optax_gsm.prune(params, sparsity=0.93)
  assert int(mask["w"].sum()) == 7
  assert int(jnp.count_nonzero(pruned["w"])) == 7


def test_prune_under_jit():
  params = {"w": jnp.arange(100.0).reshape(10, 10)}
  pruned, _ = jax.jit(lambda p: optax_gsm.prune(p, 4.0))(params)
  assert int(jnp.count_nonzero(pruned["w"])) == 25
  assert float(pruned["w"].min()) == 0.0 and float(pruned["w"][7, 5]) == 75.0


@pytest.mark.parametrize("shape", [(8, 5), (5, 4)])
def test_a_state_of_other_shapes_is_an_error_naming_the_leaf(shape):
  # Regression: same tree, other shapes: the old Q was used silently.
  tx = optax_gsm.gsm(2.0)
  state = tx.init({"layer": {"kernel": jnp.ones((4, 5))}})
  other = {"layer": {"kernel": jnp.ones(shape)}}
  for call in (lambda: optax_gsm.prune(other, opt_state=state),
               lambda: optax_gsm.active_mask(state, other),
               lambda: optax_gsm.prune_readiness(other, opt_state=state)):
    with pytest.raises(ValueError, match=r"'layer/kernel' has shape"):
      call()
