"""The lossless default: derived hyper-parameters, and a prune that loses
nothing where the paper's recipe does."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_gsm

BETA = 0.99
CRITICAL_AT_1E_2 = (1 - math.sqrt(BETA)) ** 2 / 1e-2  # 2.5e-3


def test_constant_learning_rate():
  settings = optax_gsm.lossless_settings(1e-2, 10_000, momentum=BETA)
  assert settings.freeze_mask_at == 2_000
  assert settings.passive_weight_decay == pytest.approx(CRITICAL_AT_1E_2)
  # Never below the decay of active weights.
  assert optax_gsm.lossless_settings(
      1e-2, 10_000, momentum=BETA, weight_decay=1e-2).passive_weight_decay == 1e-2


def test_warmup_then_steps_uses_the_peak_after_the_freeze():
  warmup = optax.linear_schedule(1e-3, 1e-2, 500)
  steps = optax.piecewise_constant_schedule(1e-2, {5_000: 0.1, 8_000: 0.1})
  schedule = optax.join_schedules([warmup, steps], [500])
  settings = optax_gsm.lossless_settings(schedule, 10_000, momentum=BETA)
  assert settings.freeze_mask_at == 2_000
  assert settings.passive_weight_decay == pytest.approx(CRITICAL_AT_1E_2,
                                                        rel=1e-6)
  # A freeze after the first drop: critical damping at the rate then.
  late = optax_gsm.lossless_settings(schedule, 10_000, momentum=BETA,
                                     freeze_fraction=0.6)
  assert late.freeze_mask_at == 6_000
  assert late.passive_weight_decay == pytest.approx(10 * CRITICAL_AT_1E_2,
                                                    rel=1e-5)


def test_cosine_uses_its_value_at_the_freeze():
  schedule = optax.cosine_decay_schedule(1e-2, 1_000)
  settings = optax_gsm.lossless_settings(schedule, 1_000, momentum=BETA)
  peak = 1e-2 * 0.5 * (1 + math.cos(math.pi * 0.2))
  assert settings.freeze_mask_at == 200
  assert settings.passive_weight_decay == pytest.approx(
      (1 - math.sqrt(BETA)) ** 2 / peak, rel=1e-5)


def test_gsm_sgd_total_steps_is_gsm_sgd_with_the_derived_values():
  params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(8, 8)),
                             jnp.float32)}
  grads = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(8, 8)),
                            jnp.float32)}
  schedule = optax.cosine_decay_schedule(0.05, 50)
  derived = optax_gsm.lossless_settings(schedule, 50, momentum=0.9)
  by_budget = optax_gsm.gsm_sgd(schedule, 4.0, total_steps=50, momentum=0.9)
  explicit = optax_gsm.gsm_sgd(schedule, 4.0, momentum=0.9,
                               freeze_mask_at=derived.freeze_mask_at,
                               passive_weight_decay=derived.passive_weight_decay,
                               zero_passive_at=derived.zero_passive_at)

  def run(tx):
    state, w = tx.init(params), params
    step = jax.jit(tx.update)
    for _ in range(40):
      updates, state = step(grads, state, w)
      w = optax.apply_updates(w, updates)
    return w

  np.testing.assert_array_equal(run(by_budget)["w"], run(explicit)["w"])


@pytest.mark.slow
def test_the_default_prunes_losslessly_where_the_paper_recipe_does_not():
  # Real data (sklearn digits), a 64-64-10 MLP at 8x, 400 steps.
  datasets = pytest.importorskip("sklearn.datasets")
  data = datasets.load_digits()
  x = jnp.asarray(data.data / 16.0, jnp.float32)
  y = jnp.asarray(data.target)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {"hidden": {"kernel": jax.random.normal(k1, (64, 64)) / 8,
                       "bias": jnp.zeros(64)},
            "out": {"kernel": jax.random.normal(k2, (64, 10)) / 8,
                    "bias": jnp.zeros(10)}}

  def logits(p):
    h = jax.nn.relu(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    return h @ p["out"]["kernel"] + p["out"]["bias"]

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(logits(p), y).mean()

  def accuracy(p):
    return float(jnp.mean(jnp.argmax(logits(p), -1) == y))

  steps, schedule = 400, optax.cosine_decay_schedule(0.1, 400)

  def train(tx):
    def step(_, carry):
      w, state = carry
      updates, state = tx.update(jax.grad(loss)(w), state, w)
      return optax.apply_updates(w, updates), state
    return jax.jit(lambda: jax.lax.fori_loop(
        0, steps, step, (params, tx.init(params))))()

  # Momentum 0.9: critical damping shrinks passive weights e-fold every 20
  # steps, so 320 steps after the freeze suffice (0.99 would need ~2,000).
  w, state = train(optax_gsm.gsm_sgd(schedule, 8.0, total_steps=steps,
                                     momentum=0.9, weight_decay=5e-4))
  ready = optax_gsm.prune_readiness(w, opt_state=state)
  pruned, _ = optax_gsm.prune(w, opt_state=state)
  assert accuracy(w) > 0.9
  assert abs(accuracy(pruned) - accuracy(w)) <= 1e-3
  assert ready.removed_mass_fraction < 1e-3
  assert ready.kept_active_fraction > 0.99

  paper_w, paper_state = train(optax_gsm.gsm_sgd(schedule, 8.0, momentum=0.9,
                                                 weight_decay=5e-4))
  paper_ready = optax_gsm.prune_readiness(paper_w, opt_state=paper_state)
  assert paper_ready.removed_mass_fraction > 100 * ready.removed_mass_fraction


def _numpy_ramp(t, freeze, zero_at):
  return 1.0 if t < freeze else max((zero_at - t) / (zero_at - freeze), 0.0) ** 3


def _numpy_residual(rates, beta, eta):
  w, z = 1.0, 0.0
  for rate in rates:
    z = beta * z + eta * w
    w -= rate * z
  return abs(w)


def test_zero_passive_at_and_the_residual_of_decay_alone():
  schedule = optax.cosine_decay_schedule(1e-2, 1_200)
  settings = optax_gsm.lossless_settings(schedule, 1_200, momentum=BETA,
                                         weight_decay=5e-4)
  assert settings.zero_passive_at == 720
  rates = [float(schedule(t)) for t in range(240, 1_200)]
  assert settings.passive_residual == pytest.approx(
      _numpy_residual(rates, BETA, settings.passive_weight_decay), rel=1e-6)
  # This short budget is what decay alone cannot make lossless; the official
  # LeNet-300-100 budget is.
  assert settings.passive_residual > 0.1
  long = optax_gsm.lossless_settings(optax.cosine_decay_schedule(1e-2, 65_520),
                                     65_520, momentum=BETA, weight_decay=5e-4)
  assert long.passive_residual < 1e-6


def _train(tx, params, grads_at, steps):
  """Weights and states after each step, the first entry the initial ones."""
  weights, states = [params], [tx.init(params)]
  step = jax.jit(tx.update)
  for t in range(steps):
    updates, state = step(grads_at(t, weights[-1]), states[-1], weights[-1])
    weights.append(optax.apply_updates(weights[-1], updates))
    states.append(state)
  return weights, states


@pytest.mark.parametrize("family", ["gsm", "n_of_m"])
def test_passive_weights_follow_the_cubic_ramp_to_exact_zero(family):
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(16, 12)), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=12), jnp.float32)}}
  grads_at = lambda t, w: jax.tree.map(lambda x: jnp.cos(3 * x + t), w)
  steps, freeze, zero_at = 30, 6, 18
  if family == "gsm":
    make = lambda **kw: optax_gsm.gsm_sgd(0.05, 4.0, momentum=0.9,
                                          freeze_mask_at=freeze, **kw)
  else:
    make = lambda **kw: optax_gsm.n_of_m_gsm_sgd(0.05, (1, 4), momentum=0.9,
                                                 freeze_mask_at=freeze, **kw)
  tx, plain = make(zero_passive_at=zero_at), make()
  weights, states = _train(tx, params, grads_at, steps)
  kernel = lambda w: np.asarray(w["dense"]["kernel"])
  passive = ~np.asarray(optax_gsm.active_mask(states[-1], weights[-1])
                        ["dense"]["kernel"])
  assert passive.sum() == 16 * 12 * 3 // 4
  plain_update = jax.jit(plain.update)  # the same state: the ramp adds none
  for t in range(steps):
    u, _ = plain_update(grads_at(t, weights[t]), states[t], weights[t])
    now, after = _numpy_ramp(t, freeze, zero_at), _numpy_ramp(t + 1, freeze, zero_at)
    expected = (kernel(weights[t]) + kernel(u)) * (after / now if now > 0 else 0.0)
    if t < freeze:  # before the freeze, the plain update bit for bit
      np.testing.assert_array_equal(kernel(weights[t + 1]),
                                    kernel(weights[t]) + kernel(u))
    np.testing.assert_allclose(kernel(weights[t + 1])[passive], expected[passive],
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(  # active weights: the plain update
        kernel(weights[t + 1])[~passive],
        (kernel(weights[t]) + kernel(u))[~passive])
  # From zero_passive_at on, passive weights are exactly 0: the prune is exact.
  for t in range(zero_at, steps + 1):
    assert not kernel(weights[t])[passive].any()
  pruned, _ = optax_gsm.prune(weights[-1], opt_state=states[-1])
  np.testing.assert_array_equal(pruned["dense"]["kernel"],
                                weights[-1]["dense"]["kernel"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(zero_passive_at=5), "`zero_passive_at` needs `freeze_mask_at`"),
    (dict(zero_passive_at=5, freeze_mask_at=5),
     "`zero_passive_at` must be after `freeze_mask_at`"),
    (dict(zero_passive_at=0, freeze_mask_at=0), "`zero_passive_at` must be an int"),
])
def test_bad_zero_passive_at_is_a_clear_error(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optax_gsm.gsm_sgd(0.1, 4.0, **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(total_steps=0), "`total_steps` must be an int >= 1"),
    (dict(total_steps=10.5), "`total_steps` must be an int >= 1"),
    (dict(total_steps=10, freeze_fraction=1.0), "`freeze_fraction`"),
    (dict(total_steps=10, momentum=1.0), "`momentum`"),
    (dict(total_steps=10, zero_fraction=0.1), "`zero_fraction`"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
  kwargs = {"momentum": 0.9, **kwargs}
  with pytest.raises(ValueError, match=match):
    optax_gsm.lossless_settings(1e-2, **kwargs)


def test_a_schedule_that_is_zero_after_the_freeze_is_an_error():
  with pytest.raises(ValueError, match="`learning_rate` must be positive"):
    optax_gsm.lossless_settings(optax.linear_schedule(1e-2, 0.0, 10), 100,
                                momentum=0.9)


def test_a_traced_freeze_with_total_steps_derives_zero_passive_at():
  # inject_hyperparams traces an explicit freeze_mask_at; the derived
  # zero_passive_at must not compare it on the host.
  params = {"k": jnp.arange(1.0, 17.0).reshape(4, 4)}
  tx = optax.inject_hyperparams(optax_gsm.gsm_sgd, static_args=(
      "total_steps", "learning_rate", "momentum", "weight_decay"))(
          learning_rate=0.1, compression_ratio=4.0, total_steps=20,
          freeze_mask_at=3)
  state, update = tx.init(params), jax.jit(tx.update)
  for _ in range(20):
    updates, state = update(params, state, params)
    params = optax.apply_updates(params, updates)
  # Zero from step 12 (60% of 20): the 12 passive entries are exact zeros.
  assert int(jnp.sum(params["k"] != 0)) == 4
