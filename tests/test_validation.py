"""Bad hyper-parameters fail early, naming the argument and its range."""

import jax
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
    (dict(freeze_mask_at=-1), "`freeze_mask_at` must be an int >= 0"),
    # Regression: 2.5 was accepted and the mask then never froze.
    (dict(freeze_mask_at=2.5), "`freeze_mask_at` must be an int >= 0"),
    (dict(freeze_mask_at=3.0), "`freeze_mask_at` must be an int >= 0"),
    (dict(saliency="hessian"),
     r"`saliency` must be one of \['magnitude', 'taylor'\]"),
])
def test_bad_hyper_parameter_is_a_clear_error(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optax_gsm.gsm(10.0, **kwargs)
  with pytest.raises(ValueError, match=match):
    optax_gsm.gsm_sgd(0.1, 10.0, **kwargs)


@pytest.mark.parametrize("args,kwargs,match", [
    (("10",), {}, "`compression_ratio` must be a real number"),
    (("ten",), {}, "`compression_ratio` must be a real number"),
    ((10.0,), dict(momentum="0.9"), "`momentum` must be a real number"),
    ((10.0,), dict(weight_decay=True), "`weight_decay` must be a real number"),
    ((10.0,), dict(nesterov="yes"), "`nesterov` must be True or False"),
    ((), dict(sparsity="0.9"), "`sparsity` must be a real number"),
])
def test_wrong_types_fail_at_construction_with_the_name(args, kwargs, match):
  with pytest.raises(TypeError, match=match):
    optax_gsm.gsm(*args, **kwargs)


def test_traced_float_freeze_step_is_refused():
  tx = optax.inject_hyperparams(optax_gsm.gsm)(compression_ratio=4.0,
                                               freeze_mask_at=2.5)
  params = {"w": jnp.ones((4, 4))}
  with pytest.raises(ValueError, match="`freeze_mask_at` must be an int"):
    tx.init(params)
  # An int is traced under inject_hyperparams and works.
  tx = optax.inject_hyperparams(optax_gsm.gsm)(compression_ratio=4.0,
                                               freeze_mask_at=1)
  state = tx.init(params)
  for _ in range(3):
    _, state = jax.jit(tx.update)(params, state, params)
  assert int(optax.tree_utils.tree_get(state, "num_active")) == 4


def test_negative_learning_rate_is_an_error():
  with pytest.raises(ValueError, match="`learning_rate`"):
    optax_gsm.gsm_sgd(-0.1, 10.0)


def test_saliency_of_the_wrong_shape_or_structure_is_an_error():
  params = {"w": jnp.ones((2, 2))}
  tx = optax_gsm.gsm(2.0, saliency=lambda g, p: {"w": jnp.ones(3)})
  with pytest.raises(ValueError, match="score of shape"):
    tx.update(params, tx.init(params), params)
  tx = optax_gsm.gsm(2.0, saliency=lambda g, p: [jnp.ones((2, 2))])
  with pytest.raises(ValueError, match="`saliency` must return scores with "
                     "the structure of the params"):
    jax.jit(tx.update)(params, tx.init(params), params)


def test_traced_hyper_parameters_are_accepted():
  tx = optax.inject_hyperparams(optax_gsm.gsm)(
      compression_ratio=4.0, momentum=0.5, weight_decay=0.1)
  params = {"w": jnp.ones((4, 4))}
  updates, state = tx.update(params, tx.init(params), params)
  assert int(optax.tree_utils.tree_get(state, "mask")["w"].sum()) == 4


def test_report_refuses_jit_and_reports_trees_without_kernels():
  with pytest.raises(TypeError, match="outside the jitted step"):
    jax.jit(lambda p: optax_gsm.sparsity_report(p).nonzero)({"w": jnp.ones(3)})
  report = optax_gsm.sparsity_report({"scale": jnp.ones(3),
                                      "bias": jnp.zeros(2)})
  assert report.prunable_size == 0 and report.nonzero == 3
  assert "no prunable parameters" in str(report)


@pytest.mark.parametrize("make", [
    lambda: optax_gsm.gsm(2.0), lambda: optax_gsm.n_of_m_gsm((1, 2))])
def test_updates_unlike_the_params_are_an_error_naming_the_leaf(make):
  # Regression: a raw broadcast error from inside the saliency.
  tx = make()
  params = {"layer": {"kernel": jnp.ones((4, 6))}}
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"'layer/kernel' has shape \(6, 4\)"):
    tx.update({"layer": {"kernel": jnp.ones((6, 4))}}, state, params)
  with pytest.raises(ValueError, match="structure of `params`"):
    tx.update({"other": jnp.ones((4, 6))}, state, params)
