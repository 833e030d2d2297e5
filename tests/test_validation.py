"""Bad hyper-parameters fail early, naming the argument and its range."""

import jax.numpy as jnp
import optax
import pytest

import optax_gsm


@pytest.mark.parametrize("kwargs,match", [
    (dict(momentum=1.0), r"`momentum` must be in \[0.0, 1.0\)"),
    (dict(momentum=-0.1), r"`momentum` must be in \[0.0, 1.0\)"),
    (dict(weight_decay=-1e-4), r"`weight_decay` must be in \[0.0, inf\]"),
    (dict(unprunable_weight_decay=-1.0), "`unprunable_weight_decay`"),
    (dict(passive_weight_decay=-1.0), "`passive_weight_decay`"),
    (dict(mask_update_every=0), "`mask_update_every` must be an int >= 1"),
    (dict(mask_update_every=2.5), "`mask_update_every` must be an int >= 1"),
    (dict(saliency="hessian"), r"`saliency` must be one of \['magnitude', 'taylor'\]"),
])
def test_bad_hyper_parameter_is_a_clear_error(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optax_gsm.gsm(10.0, **kwargs)


def test_negative_learning_rate_is_an_error():
  with pytest.raises(ValueError, match="`learning_rate`"):
    optax_gsm.gsm_sgd(-0.1, 10.0)


def test_saliency_of_the_wrong_shape_is_an_error():
  tx = optax_gsm.gsm(2.0, saliency=lambda g, p: {"w": jnp.ones(3)})
  params = {"w": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="score of shape"):
    tx.update(params, tx.init(params), params)


def test_traced_hyper_parameters_are_accepted():
  tx = optax.inject_hyperparams(optax_gsm.gsm)(
      compression_ratio=4.0, momentum=0.5, weight_decay=0.1)
  params = {"w": jnp.ones((4, 4))}
  updates, state = tx.update(params, tx.init(params), params)
  assert int(optax.tree_utils.tree_get(state, "mask")["w"].sum()) == 4
