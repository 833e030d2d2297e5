"""Non-finite gradients: the active count stays exact and
`optax.apply_if_finite` skips such steps cleanly."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_gsm


def test_nan_and_inf_scores_rank_lowest_and_count_stays_exact():
  params = {"w": jnp.ones((4, 5))}
  grads = {"w": jnp.arange(20.0).reshape(4, 5)
           .at[0, 0].set(jnp.nan).at[3, 4].set(jnp.inf).at[1, 1].set(-jnp.inf)}
  tx = optax_gsm.gsm(2.0)
  _, state = jax.jit(tx.update)(grads, tx.init(params), params)
  mask = np.asarray(state[0].mask["w"])
  assert mask.sum() == 10
  assert not mask[0, 0] and not mask[3, 4] and not mask[1, 1]
  # The ten largest finite |g w|: 9..18 except 6 -> 10..18 and 9.
  np.testing.assert_array_equal(np.flatnonzero(mask.ravel()),
                                [9, 10, 11, 12, 13, 14, 15, 16, 17, 18])


def test_apply_if_finite_skips_non_finite_steps():
  params = {"w": jnp.arange(1.0, 13.0).reshape(3, 4)}
  tx = optax.apply_if_finite(optax_gsm.gsm_sgd(0.1, 3.0, momentum=0.9), 3)
  state = tx.init(params)
  step = jax.jit(tx.update)
  good = {"w": jnp.full((3, 4), 0.5)}
  updates, state = step(good, state, params)
  params = optax.apply_updates(params, updates)
  before_params, before_state = params, state
  bad = {"w": good["w"].at[1, 2].set(jnp.nan)}
  updates, state = step(bad, state, params)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, updates))
  chex.assert_trees_all_equal(state.inner_state, before_state.inner_state)
  assert int(state.notfinite_count) == 1
  params = optax.apply_updates(params, updates)
  chex.assert_trees_all_equal(params, before_params)
  updates, state = step(good, state, params)
  assert int(state.notfinite_count) == 0
  assert int(optax.tree_utils.tree_get(state, "mask")["w"].sum()) == 4
