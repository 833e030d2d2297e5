"""Optax's own harness for contributed optimizers, run on every optimizer.

``optax/contrib/_common_test.py`` ships in the optax wheel; its test bodies
are called here with this library's optimizers at ratio 1 (every entry
active: the update is momentum SGD's, so its convergence targets apply).
"""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_gsm

common = pytest.importorskip("optax.contrib._common_test")


def _ones_kappa(params):
  return jax.tree.map(jnp.ones_like, params)


# name -> (factory, kwargs). Glob "*" ranks every leaf, whatever its rank.
_OPTIMIZERS = {
    "gsm_sgd": (optax_gsm.gsm_sgd, {
        "learning_rate": 1e-3, "compression_ratio": 1.0, "prunable": "*"}),
    "gsm_sgd_lossless": (optax_gsm.gsm_sgd, {
        "learning_rate": 1e-3, "compression_ratio": 1.0, "prunable": "*",
        "total_steps": 100}),
    "gsm_adamw": (optax_gsm.gsm_adamw, {
        "learning_rate": 1e-3, "compression_ratio": 1.0, "prunable": "*",
        "weight_decay": 0.0}),
    "gsm_adamw_lossless": (optax_gsm.gsm_adamw, {
        "learning_rate": 1e-3, "compression_ratio": 1.0, "prunable": "*",
        "total_steps": 100}),
    "n_of_m_gsm_sgd": (optax_gsm.n_of_m_gsm_sgd, {
        "learning_rate": 1e-3, "n_of_m": (1, 1)}),
    "centripetal_sgd": (optax_gsm.centripetal.centripetal_sgd, {
        "learning_rate": 1e-3, "clusters": optax_gsm.centripetal.Clusters(
            optax_gsm.structured.Groups((), (), ()), ())}),
    "path_sgd": (functools.partial(optax_gsm.path_norm.path_sgd,
                                   kappa_fn=_ones_kappa),
                 {"learning_rate": 1e-3}),
}
_CASES = [pytest.param(name, id=name) for name in _OPTIMIZERS]


@pytest.fixture(autouse=True)
def _our_factories(monkeypatch):
  monkeypatch.setattr(common, "_get_opt_factory",
                      lambda name: _OPTIMIZERS[name][0])


def _harness():
  """A harness instance whose ``subTest`` blocks raise their failures."""
  case = common.ContribTest("test_optimizers0")
  case.subTest = lambda *args, **kwargs: contextlib.nullcontext()
  return case


def _call(test_name, name, **kwargs):
  body = getattr(common.ContribTest, test_name + "0").__wrapped__
  body(_harness(), opt_name=name, opt_kwargs=dict(_OPTIMIZERS[name][1]),
       **kwargs)


# N:M ranks kernels (rank >= 2); these harness targets are vectors. The
# lossless variant differs from gsm_sgd only after its freeze step: it runs
# where steps are many (convergence) and where init is (map_params).
_LOSSLESS = ("gsm_sgd_lossless", "gsm_adamw_lossless")
_VECTOR_CASES = [pytest.param(name, id=name) for name in _OPTIMIZERS
                 if name not in ("n_of_m_gsm_sgd", *_LOSSLESS)]


@pytest.mark.parametrize("name", _VECTOR_CASES)
def test_accepts_extra_args_and_does_not_recompile(name):
  _call("test_optimizers_accept_extra_args", name, wrapper_name=None,
        wrapper_kwargs=None, wrap=False)


@pytest.mark.parametrize("target", ["parabola", "rosenbrock",
                                    "matrix_parabola", "mixed_tensor_target"])
@pytest.mark.parametrize("name", _CASES)
def test_converges_and_maps_params(name, target):
  if name == "n_of_m_gsm_sgd" and target != "matrix_parabola":
    pytest.skip("N:M ranks kernels (rank >= 2); this target has vectors.")
  _call("test_optimizers", name, wrapper_name=None, wrapper_kwargs=None,
        target=getattr(common, f"_setup_{target}"), dtype="float32")


@pytest.mark.parametrize("name", [n for n in _CASES
                                  if n.values[0] not in _LOSSLESS])
def test_inject_hyperparams_gives_the_same_updates(name):
  if name == "path_sgd":
    pytest.skip("kappa_fn is a callable, which inject_hyperparams reads as "
                "a schedule; see test_path_sgd_injects_with_static_kappa.")
  _call("test_optimizers_can_be_wrapped_in_inject_hyperparams", name)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", _VECTOR_CASES)
def test_preserves_dtype_and_accumulates_gradients(name, dtype):
  _call("test_preserve_dtype", name, dtype=dtype)
  _call("test_gradient_accumulation", name, dtype=dtype)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.float32])
@pytest.mark.parametrize("name", _VECTOR_CASES)
def test_state_is_shape_dtype_and_sharding_stable(name, dtype):
  _call("test_state_shape_dtype_shard_stability", name, wrapper_name=None,
        wrapper_kwargs=None, dtype=dtype)


@pytest.mark.parametrize("name", _VECTOR_CASES)
def test_accepts_a_learning_rate_schedule(name):
  _call("test_optimizers_accept_learning_rate_schedule_if_type_annotated_"
        "as_such", name, wrapper_name=None, wrapper_kwargs=None)


def test_path_sgd_injects_with_static_kappa():
  params = [jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
  grads = [jnp.full((2, 3), 0.5), jnp.full((2, 5, 2), -1.0)]
  kappa = lambda p: jax.tree.map(lambda w: 2.0 + w, p)
  plain = optax_gsm.path_norm.path_sgd(0.1, kappa_fn=kappa)
  injected = optax.inject_hyperparams(
      optax_gsm.path_norm.path_sgd, static_args=("kappa_fn",))(
          learning_rate=0.1, kappa_fn=kappa)
  expected, _ = plain.update(grads, plain.init(params), params)
  updates, _ = injected.update(grads, injected.init(params), params)
  jax.tree.map(np.testing.assert_allclose, updates, expected)


@pytest.mark.parametrize("name", _CASES)
def test_init_under_eval_shape_and_map_params(name):
  # How users shard or cast an optimizer state: init on abstract params, and
  # `optax.tree.map_params` (which calls init on placeholders).
  factory, kwargs = _OPTIMIZERS[name]
  tx = factory(**kwargs)
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  abstract = jax.eval_shape(tx.init, params)
  state = tx.init(params)
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  halved = optax.tree.map_params(tx, lambda w: w.astype(jnp.bfloat16), state)
  for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(halved)):
    assert after.shape == before.shape


def test_total_steps_is_static_under_inject_hyperparams():
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
  with pytest.raises(TypeError, match="static_args=\\('total_steps',\\)"):
    tx = optax.inject_hyperparams(optax_gsm.gsm_sgd)(
        learning_rate=0.1, compression_ratio=2.0, total_steps=10)
    jax.jit(tx.init)(params)
  tx = optax.inject_hyperparams(optax_gsm.gsm_sgd, static_args=(
      "total_steps",))(learning_rate=0.1, compression_ratio=2.0,
                       total_steps=10)
  plain = optax_gsm.gsm_sgd(0.1, 2.0, total_steps=10)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  expected, _ = plain.update(grads, plain.init(params), params)
  np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)
