"""Per-leaf density bounds: exactly Q overall, every leaf within bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optax_gsm
from optax_gsm import _density_bounds


def _numpy_bounded(scores, q, low, high):
  """Each leaf its top ``low``; then the best remaining entries of leaves
  under ``high``, ties to earlier leaves and positions, up to q."""
  kept = [np.zeros(s.size, bool) for s in scores]
  orders = [sorted(range(s.size), key=lambda i, s=s: (-s.ravel()[i], i))
            for s in scores]
  for leaf, order in enumerate(orders):
    kept[leaf][order[:low[leaf]]] = True
  extras = [(-scores[leaf].ravel()[i], leaf, rank, i)
            for leaf, order in enumerate(orders)
            for rank, i in enumerate(order[low[leaf]:high[leaf]])]
  # Within a leaf extras come in its own order, so sorting by value then
  # leaf then rank takes them in the leaf's order.
  for _, leaf, _, i in sorted(extras)[:q - sum(low)]:
    kept[leaf][i] = True
  return [k.reshape(s.shape) for k, s in zip(kept, scores)]


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(st.data())
def test_bounded_selection_matches_numpy(data):
  sizes = data.draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
  scores = [np.asarray(data.draw(st.lists(
      st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0]), min_size=n, max_size=n)),
      np.float32) for n in sizes]
  low = [data.draw(st.integers(0, n)) for n in sizes]
  high = [data.draw(st.integers(lo, n)) for lo, n in zip(low, sizes)]
  q = data.draw(st.integers(sum(low), sum(high)))
  masks = _density_bounds.bounded_top_q_mask(
      [jnp.asarray(s) for s in scores], q, np.asarray(low), np.asarray(high))
  for got, want in zip(masks, _numpy_bounded(scores, q, low, high)):
    np.testing.assert_array_equal(got, want)


def _params():
  rng = np.random.default_rng(0)
  return {"first": {"kernel": jnp.asarray(0.01 * rng.normal(size=(4, 10)),
                                          jnp.float32)},
          "big": {"kernel": jnp.asarray(rng.normal(size=(10, 50)),
                                        jnp.float32)},
          "last": {"kernel": jnp.asarray(0.01 * rng.normal(size=(50, 2)),
                                         jnp.float32)}}


@pytest.mark.slow
@pytest.mark.parametrize("jit", [False, True])
def test_gsm_keeps_small_layers_alive(jit):
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  bounds = {"first": {"kernel": 0.25}, "big": {"kernel": None},
            "last": {"kernel": 0.5}}
  tx = optax_gsm.gsm(10.0, min_density=bounds)
  update = jax.jit(tx.update) if jit else tx.update
  _, state = update(grads, tx.init(params), params)
  counts = {k: int(state[0].mask[k]["kernel"].sum()) for k in params}
  assert counts["first"] >= 10 and counts["last"] >= 50
  assert sum(counts.values()) == (40 + 500 + 100) // 10
  # Without bounds the tiny layers would be emptied.
  plain = optax_gsm.gsm(10.0)
  _, plain_state = plain.update(grads, plain.init(params), params)
  assert int(plain_state[0].mask["first"]["kernel"].sum()) == 0
  # The prune ranks with the same bounds, read from the state.
  _, mask = optax_gsm.prune(params, opt_state=state)
  assert int(mask["first"]["kernel"].sum()) == 10
  assert int(mask["last"]["kernel"].sum()) == 50
  _, direct = optax_gsm.prune(params, 10.0, min_density=bounds)
  jax.tree.map(np.testing.assert_array_equal, direct, mask)


@pytest.mark.slow
def test_max_density_caps_a_leaf():
  params = _params()
  caps = {"first": {"kernel": None}, "big": {"kernel": 0.5},
          "last": {"kernel": None}}
  _, mask = optax_gsm.prune(params, 2.0, max_density=caps)
  # The big layer holds the largest weights but keeps at most half ...
  assert int(mask["big"]["kernel"].sum()) == 250
  # ... and the other 70 of Q = 320 come from the small layers.
  assert sum(int(v["kernel"].sum()) for v in mask.values()) == 320


def test_infeasible_bounds_are_clear_errors():
  params = _params()
  with pytest.raises(ValueError, match="`min_density` keeps at least 320"):
    optax_gsm.gsm(4.0, min_density=0.5).init(params)
  with pytest.raises(ValueError, match="`max_density` keeps at most 64"):
    optax_gsm.prune(params, 2.0, max_density=0.1)
  with pytest.raises(ValueError, match="min_density"):
    optax_gsm.gsm(2.0, min_density=1.5).init(params)
  with pytest.raises(ValueError, match="above `max_density`"):
    optax_gsm.prune(params, 2.0, min_density=0.6, max_density=0.5)
  with pytest.raises(ValueError, match="pytree of floats like the params"):
    optax_gsm.prune(params, 2.0, min_density={"first": 0.1})


def test_bounds_compose_with_a_chain_and_jit():
  params = _params()
  tx = optax.chain(optax_gsm.gsm(5.0, min_density=0.1, max_density=0.5),
                   optax.scale_by_learning_rate(0.1))
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  mask = optax_gsm.active_mask(state, params)
  assert sum(int(m["kernel"].sum()) for m in mask.values()) == 640 // 5
