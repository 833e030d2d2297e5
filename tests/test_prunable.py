"""Which leaves are prunable, and the errors for bad choices."""

import jax.numpy as jnp
import pytest

import optax_gsm

PARAMS = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
          "conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.zeros(4)},
          "norm": {"scale": jnp.ones(4)}}


def test_default_is_rank_two_and_up():
  flags = optax_gsm.default_prunable(PARAMS)
  assert flags == {"dense": {"kernel": True, "bias": False},
                   "conv": {"kernel": True, "bias": False},
                   "norm": {"scale": False}}
  assert optax_gsm.prunable_size(PARAMS) == 12 + 72


def test_pytree_and_callable_choices():
  only_dense = {"dense": {"kernel": True, "bias": False},
                "conv": {"kernel": False, "bias": False},
                "norm": {"scale": False}}
  assert optax_gsm.prunable_size(PARAMS, only_dense) == 12
  assert optax_gsm.prunable_size(PARAMS, lambda p: only_dense) == 12


@pytest.mark.parametrize("prunable,params,match", [
    ({"dense": True}, PARAMS, "structure of the params"),
    (lambda p: {"w": False}, {"w": jnp.ones((3, 3))}, "selects no parameter"),
    (None, {"b": jnp.ones(3)}, "selects no parameter"),
    ({"w": True}, {"w": jnp.ones((3, 3), jnp.int32)}, "only floating-point"),
    ({"w": True}, {"w": jnp.ones((3, 3), jnp.complex64)}, "only floating-point"),
    ({"w": 1}, {"w": jnp.ones((3, 3))}, "must be Python bools"),
])
def test_bad_prunable_is_a_clear_error(prunable, params, match):
  tx = optax_gsm.gsm(2.0, prunable=prunable)
  with pytest.raises(ValueError, match=match):
    tx.init(params)
