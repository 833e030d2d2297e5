"""Sparsity stays: fine-tuning with freeze_pruned, and GSM never regrows zeros."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_gsm


def problem():
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(12, 16)),
                                            jnp.float32),
                      "bias": jnp.zeros(16)},
            "out": {"kernel": jnp.asarray(rng.normal(size=(16, 4)),
                                          jnp.float32)}}
  x = jnp.asarray(rng.normal(size=(32, 12)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, 32))

  def loss(p):
    h = jax.nn.relu(x @ p["dense"]["kernel"] + p["dense"]["bias"])
    return optax.softmax_cross_entropy_with_integer_labels(
        h @ p["out"]["kernel"], y).mean()
  return params, loss


def fine_tune(tx, params, loss, steps=20):
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params


@pytest.mark.slow
def test_freeze_pruned_keeps_pruned_entries_exactly_zero_under_adamw():
  params, loss = problem()
  pruned, mask = optax_gsm.prune(params, 8.0)
  tuned = fine_tune(optax.chain(optax.adamw(1e-2, weight_decay=1e-2),
                                optax_gsm.freeze_pruned(mask)), pruned, loss)
  for w, m in zip(jax.tree.leaves(tuned), jax.tree.leaves(mask)):
    np.testing.assert_array_equal(np.asarray(w)[~np.asarray(m)], 0.0)
  # The kept weights did train.
  assert float(loss(tuned)) < float(loss(pruned))
  # Without it, adamw regrows every pruned entry.
  regrown = fine_tune(optax.adamw(1e-2), pruned, loss)
  assert optax_gsm.sparsity_report(regrown).prunable_nonzero > (
      optax_gsm.sparsity_report(pruned).prunable_nonzero)


@pytest.mark.slow
def test_fresh_gsm_on_a_pruned_model_keeps_its_zeros_inactive():
  # Kernel entries with zero gradient (dead inputs) tie at score 0 with the
  # pruned zeros; the tie goes to the existing weights.
  params, loss = problem()
  pruned, mask = optax_gsm.prune(params, 8.0)
  q = optax_gsm.num_active(optax_gsm.prunable_size(params), 8.0)
  tx = optax_gsm.gsm(8.0, momentum=0.9)
  grads = jax.grad(loss)(pruned)
  grads["dense"]["kernel"] = grads["dense"]["kernel"].at[:6].set(0.0)
  _, state = tx.update(grads, tx.init(pruned), pruned)
  active = optax_gsm.active_mask(state, pruned)
  assert sum(int(a.sum()) for a in jax.tree.leaves(
      {k: active[k]["kernel"] for k in active})) == q
  for name in ("dense", "out"):
    assert not np.any(np.asarray(active[name]["kernel"])
                      & ~np.asarray(mask[name]["kernel"]))


def test_freeze_pruned_structure_mismatch_is_a_clear_error():
  tx = optax_gsm.freeze_pruned({"w": jnp.ones(3, bool)})
  with pytest.raises(ValueError, match="`mask` must have the structure"):
    tx.update({"v": jnp.ones(3)}, tx.init(None))
