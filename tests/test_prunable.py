"""Which leaves are prunable, on plain and real Flax trees, and the errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import optax_gsm

PARAMS = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
          "conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.zeros(4)},
          "norm": {"scale": jnp.ones(4)}}


class Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return nn.LayerNorm()(x + nn.relu(nn.Dense(8)(x))), None


class ScanStack(nn.Module):
  """Four residual blocks stacked by nn.scan: every leaf gets a leading L."""
  @nn.compact
  def __call__(self, x):
    x = nn.Embed(16, 8)(x)
    stack = nn.scan(Block, variable_axes={"params": 0},
                    split_rngs={"params": True}, length=4)
    x, _ = stack()(x, None)
    return nn.Dense(16)(x)


def scan_params():
  return ScanStack().init(jax.random.PRNGKey(0), jnp.zeros((2, 5), int))[
      "params"]


@pytest.mark.slow
def test_flax_names_decide_not_rank_on_a_scan_stacked_model():
  params = scan_params()
  assert params["ScanBlock_0"]["Dense_0"]["bias"].shape == (4, 8)
  assert params["ScanBlock_0"]["LayerNorm_0"]["scale"].shape == (4, 8)
  flags = optax_gsm.default_prunable(params)
  assert flags == {
      "Embed_0": {"embedding": True},
      "ScanBlock_0": {"Dense_0": {"kernel": True, "bias": False},
                      "LayerNorm_0": {"scale": False, "bias": False}},
      "Dense_0": {"kernel": True, "bias": False}}
  pruned, _ = optax_gsm.prune(params, 10.0)
  # Regression: rank >= 2 made these 32 stacked biases prunable and zeroed them.
  np.testing.assert_array_equal(pruned["ScanBlock_0"]["Dense_0"]["bias"],
                                params["ScanBlock_0"]["Dense_0"]["bias"])
  np.testing.assert_array_equal(pruned["ScanBlock_0"]["LayerNorm_0"]["scale"],
                                params["ScanBlock_0"]["LayerNorm_0"]["scale"])


def test_nnx_state_kernels_and_batch_norm():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
      self.bn = nnx.BatchNorm(4, rngs=rngs)
      self.out = nnx.Linear(4, 2, rngs=rngs)

  state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
  flags = jax.tree.leaves(optax_gsm.default_prunable(state))
  paths = [optax_gsm.sparsity_report(state).leaves[i].path
           for i in range(len(flags))]
  assert dict(zip(paths, flags)) == {
      "bn/bias": False, "bn/scale": False, "conv/bias": False,
      "conv/kernel": True, "out/bias": False, "out/kernel": True}


def test_integer_and_complex_leaves_are_skipped_not_errors():
  params = {"table": {"kernel": jnp.ones((3, 3), jnp.int32)},
            "phase": {"kernel": jnp.ones((3, 3), jnp.complex64)},
            "dense": {"kernel": jnp.ones((3, 3))}}
  assert optax_gsm.default_prunable(params) == {
      "table": {"kernel": False}, "phase": {"kernel": False},
      "dense": {"kernel": True}}
  tx = optax_gsm.gsm(3.0)
  state = tx.init(params)
  assert int(state[0].num_active) == 3


def test_plain_trees_use_rank():
  flags = optax_gsm.default_prunable({"w": jnp.ones((3, 3)), "b": jnp.ones(3),
                                      "i": jnp.ones((3, 3), jnp.int8)})
  assert flags == {"w": True, "b": False, "i": False}
  assert optax_gsm.default_prunable(PARAMS) == {
      "dense": {"kernel": True, "bias": False},
      "conv": {"kernel": True, "bias": False}, "norm": {"scale": False}}
  assert optax_gsm.prunable_size(PARAMS) == 12 + 72


def test_pytree_prefix_pattern_and_callable_choices():
  only_dense = {"dense": {"kernel": True, "bias": False},
                "conv": {"kernel": False, "bias": False},
                "norm": {"scale": False}}
  assert optax_gsm.prunable_size(PARAMS, only_dense) == 12
  assert optax_gsm.prunable_size(PARAMS, lambda p: only_dense) == 12
  # A prefix flag covers every floating-point leaf below it (optax.masked).
  assert optax_gsm.prunable_size(
      PARAMS, {"dense": True, "conv": False, "norm": False}) == 12 + 3
  assert optax_gsm.prunable_size(PARAMS, "*/kernel") == 12 + 72
  assert optax_gsm.prunable_size(PARAMS, ["conv/*", "norm/scale"]) == 72 + 4 + 4


@pytest.mark.parametrize("prunable,params,match", [
    ({"dense": True, "conv": True}, PARAMS, "structure of the params"),
    (lambda p: {"w": False}, {"w": jnp.ones((3, 3))}, "selects no parameter"),
    (None, {"b": jnp.ones(3)}, "selects no parameter"),
    (None, {"w": jnp.ones((0, 3))}, "selects no parameter with entries"),
    ({"w": True}, {"w": jnp.ones((3, 3), jnp.int32)}, "only real floating-point"),
    ({"w": True}, {"w": jnp.ones((3, 3), jnp.complex64)},
     "only real floating-point"),
    ({"w": 1}, {"w": jnp.ones((3, 3))}, "must be Python bools"),
])
def test_bad_prunable_is_a_clear_error(prunable, params, match):
  tx = optax_gsm.gsm(2.0, prunable=prunable)
  with pytest.raises(ValueError, match=match):
    tx.init(params)
