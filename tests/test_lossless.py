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
                               passive_weight_decay=derived.passive_weight_decay)

  def run(tx):
    state, w = tx.init(params), params
    step = jax.jit(tx.update)
    for _ in range(15):
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


@pytest.mark.parametrize("kwargs,match", [
    (dict(total_steps=0), "`total_steps` must be an int >= 1"),
    (dict(total_steps=10.5), "`total_steps` must be an int >= 1"),
    (dict(total_steps=10, freeze_fraction=1.0), "`freeze_fraction`"),
    (dict(total_steps=10, momentum=1.0), "`momentum`"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
  kwargs = {"momentum": 0.9, **kwargs}
  with pytest.raises(ValueError, match=match):
    optax_gsm.lossless_settings(1e-2, **kwargs)


def test_a_schedule_that_is_zero_after_the_freeze_is_an_error():
  with pytest.raises(ValueError, match="`learning_rate` must be positive"):
    optax_gsm.lossless_settings(optax.linear_schedule(1e-2, 0.0, 10), 100,
                                momentum=0.9)
