"""prune_readiness against a NumPy reference."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import optax_gsm


def test_numbers_match_numpy():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(6, 5)).astype(np.float32)
  b = rng.normal(size=(5, 3)).astype(np.float32)
  params = {"a": {"kernel": jnp.asarray(a), "bias": jnp.ones(5)},
            "b": {"kernel": jnp.asarray(b)}}
  ready = optax_gsm.prune_readiness(params, 5.0)
  flat = np.abs(np.concatenate([a.ravel(), b.ravel()])).astype(np.float64)
  q = 45 // 5
  order = np.argsort(-flat, kind="stable")
  kept, removed = flat[order[:q]], flat[order[q:]]
  assert ready.kept == q
  assert [leaf.path for leaf in ready.leaves] == ["a/kernel", "b/kernel"]
  np.testing.assert_allclose(ready.largest_removed, removed.max(), rtol=1e-6)
  np.testing.assert_allclose(ready.smallest_kept, kept.min(), rtol=1e-6)
  np.testing.assert_allclose(ready.removed_mass_fraction,
                             removed.sum() / flat.sum(), rtol=1e-6)
  assert ready.kept_active_fraction is None
  assert "a/kernel" in str(ready)
  assert json.loads(json.dumps(ready.to_dict()))["kept"] == q


def test_kept_active_counts_the_last_active_set():
  params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
  tx = optax_gsm.gsm(4.0)
  # Gradients favour the smallest weights: the active set is the 4 smallest
  # |g w|, the prune keeps the 4 largest |w|: no overlap.
  grads = {"w": 1.0 / params["w"] ** 2}
  _, state = tx.update(grads, tx.init(params), params)
  ready = optax_gsm.prune_readiness(params, opt_state=state)
  assert ready.kept == 4 and ready.kept_active_fraction == 0.0
  _, state = tx.update({"w": jnp.ones((4, 4))}, state, params)
  assert optax_gsm.prune_readiness(
      params, opt_state=state).kept_active_fraction == 1.0


def test_lossless_is_a_pass_fail_on_the_removed_share():
  w = np.zeros((10, 10), np.float32)
  w[0] = np.arange(1, 11)             # the 10 weights a 10x prune keeps
  params = {"w": jnp.asarray(w)}
  ready = optax_gsm.prune_readiness(params, 10.0)
  assert ready.lossless() and ready.lossless(tolerance=0.0)
  assert "lossless: the prune removes at most" in str(ready)
  w[1, 0] = 0.11                       # 0.11 of 55.11 removed: 0.2%
  ready = optax_gsm.prune_readiness({"w": jnp.asarray(w)}, 10.0)
  assert not ready.lossless() and ready.lossless(tolerance=0.01)
  assert "NOT lossless" in str(ready)


def test_lossless_tolerance_is_checked():
  ready = optax_gsm.prune_readiness({"w": jnp.ones((4, 4))}, 2.0)
  with pytest.raises(ValueError, match="`tolerance`"):
    ready.lossless(tolerance=-1.0)
