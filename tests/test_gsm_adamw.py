"""GSM with AdamW: the masked gradient through Adam, exact Q, lossless prune."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_gsm


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(6, 5)),
                                            jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=5), jnp.float32)},
            "head": {"kernel": jnp.asarray(rng.normal(size=(5, 2)),
                                           jnp.float32)}}
  x = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(16, 2)), jnp.float32)

  def loss(p):
    h = jnp.tanh(x @ p["dense"]["kernel"] + p["dense"]["bias"])
    return jnp.mean((h @ p["head"]["kernel"] - y) ** 2)

  return params, loss


def _numpy_gsm_adamw(params, grads_fn, steps, *, ratio, lr, b1, b2, eps,
                     decay):
  """The update in NumPy: top-Q of |g w| over both kernels, the masked
  gradient through Adam (bias-corrected), decoupled decay, learning rate."""
  p = jax.tree.map(lambda w: np.asarray(w, np.float64), params)
  m = jax.tree.map(np.zeros_like, p)
  v = jax.tree.map(np.zeros_like, p)
  kernels = (("dense", "kernel"), ("head", "kernel"))
  size = sum(p[a][b].size for a, b in kernels)
  q = int(np.floor(size / ratio))
  for t in range(1, steps + 1):
    g = jax.tree.map(lambda a: np.asarray(a, np.float64),
                     grads_fn(jax.tree.map(jnp.float32, p)))
    scores = np.concatenate([np.abs(g[a][b] * p[a][b]).ravel()
                             for a, b in kernels])
    threshold = np.sort(scores)[::-1][q - 1]
    for a, b in kernels:
      g[a][b] = np.where(np.abs(g[a][b] * p[a][b]) >= threshold, g[a][b], 0)
    m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
    v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ ** 2, v, g)
    c1, c2 = 1 - b1 ** t, 1 - b2 ** t  # bias corrections
    p = jax.tree.map(
        lambda w, m_, v_, c1=c1, c2=c2: w - lr * (
            (m_ / c1) / (np.sqrt(v_ / c2) + eps) + decay * w), p, m, v)
  return p


@pytest.mark.parametrize("jit", [False, True])
def test_update_matches_a_numpy_reference(jit):
  params, loss = _problem()
  settings = dict(lr=0.05, b1=0.8, b2=0.95, eps=1e-6, decay=0.01)
  tx = optax_gsm.gsm_adamw(settings["lr"], 4.0, b1=settings["b1"],
                           b2=settings["b2"], eps=settings["eps"],
                           weight_decay=settings["decay"])
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  p = params
  for _ in range(4):
    updates, state = update(jax.grad(loss)(p), state, p)
    p = optax.apply_updates(p, updates)
  expected = _numpy_gsm_adamw(params, jax.grad(loss), 4, ratio=4.0,
                              **settings)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-5), p, expected)


def test_exactly_q_active_and_the_prune_is_lossless():
  params, loss = _problem(1)
  steps = 60
  tx = optax_gsm.gsm_adamw(optax.cosine_decay_schedule(0.05, steps), 10.0,
                           total_steps=steps)
  state, update = tx.init(params), jax.jit(tx.update)
  q = optax_gsm.num_active(40, 10.0)
  for _ in range(steps):
    updates, state = update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
    active = optax_gsm.active_mask(state, params)
    assert int(active["dense"]["kernel"].sum()
               + active["head"]["kernel"].sum()) == q
  pruned, kept = optax_gsm.prune(params, opt_state=state)
  # Passive weights are exact zeros by 60% of the steps: nothing to remove.
  jax.tree.map(np.testing.assert_array_equal, pruned, params)
  assert int(sum(jnp.sum(k) for k in (kept["dense"]["kernel"],
                                      kept["head"]["kernel"]))) == q
  assert float(loss(params)) < float(loss(_problem(1)[0]))


def test_composes_with_other_transforms_and_multi_steps():
  params, loss = _problem()
  tx = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0),
                                    optax_gsm.gsm_adamw(1e-2, 4.0)), 2)
  state = tx.init(params)
  for _ in range(4):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  active = optax_gsm.active_mask(state, params)
  assert int(active["dense"]["kernel"].sum() + active["head"]["kernel"].sum()
             ) == optax_gsm.num_active(40, 4.0)
  assert bool(active["dense"]["bias"].all())  # not ranked


def test_bad_arguments_are_clear_errors():
  with pytest.raises(ValueError, match="`b1` must be in"):
    optax_gsm.gsm_adamw(1e-3, 4.0, b1=1.0)
  with pytest.raises(ValueError, match="`weight_decay` must be in"):
    optax_gsm.gsm_adamw(1e-3, 4.0, weight_decay=-1.0)
  with pytest.raises(ValueError, match="`learning_rate` must be in"):
    optax_gsm.gsm_adamw(-1e-3, 4.0)
