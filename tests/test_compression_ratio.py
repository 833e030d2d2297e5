"""Q = floor(N / C), sparsity, schedules, and their checks."""

import jax
import jax.numpy as jnp
import pytest

import optax_gsm


@pytest.mark.parametrize("num_prunable,ratio,expected", [
    (266_200, 60.0, 4436), (100, 1.0, 100), (100, 3.0, 33), (10, 10.0, 1),
    (431_080, 300.0, 1436), (100, 100.0, 1),
])
def test_num_active_is_floor_n_over_c(num_prunable, ratio, expected):
  assert optax_gsm.num_active(num_prunable, ratio) == expected
  traced = jax.jit(lambda c: optax_gsm.num_active(num_prunable, c))(ratio)
  assert int(traced) == expected


@pytest.mark.parametrize("sparsity,expected", [(0.9, 10), (0.5, 50), (0.0, 100),
                                              (0.99, 1), (0.7, 30)])
def test_sparsity_is_the_alternative_keyword(sparsity, expected):
  schedule = optax_gsm.compression_schedule(sparsity=sparsity)
  assert optax_gsm.num_active(100, schedule(0)) == expected


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "exactly one"),
    (dict(compression_ratio=10.0, sparsity=0.9), "exactly one"),
    (dict(compression_ratio=0.5), r"compression_ratio.*\[1.0, inf\]"),
    (dict(compression_ratio=float("nan")), "compression_ratio"),
    (dict(sparsity=1.0), r"sparsity.*\[0.0, 1.0\)"),
    (dict(sparsity=-0.1), "sparsity"),
])
def test_bad_ratio_is_a_clear_error(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optax_gsm.gsm(**kwargs)


def test_ratio_leaving_nothing_is_an_error_at_init():
  tx = optax_gsm.gsm(1000.0)
  with pytest.raises(ValueError, match=r"keeps floor\(100 / 1000.0\) = 0"):
    tx.init({"w": jnp.ones((10, 10))})


def test_schedule_first_value_is_checked_at_init():
  tx = optax_gsm.gsm(lambda step: 0.5 + step)
  with pytest.raises(ValueError, match="compression_ratio"):
    tx.init({"w": jnp.ones((10, 10))})


def test_traced_invalid_ratio_has_documented_behaviour():
  at = jax.jit(lambda c: optax_gsm.num_active(100, c))
  assert int(at(jnp.nan)) == 100  # NaN keeps every entry
  assert int(at(0.5)) == 100      # C < 1 keeps every entry
  assert int(at(1e9)) == 1        # N / C < 1 keeps one
