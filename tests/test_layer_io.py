"""Layer inputs and outputs read off a model's jaxpr: a Dense or Conv as
``rows @ matrix`` (any strides, padding, dilation), kernels found through
dtype conversions, residual adds found through bias and batch norm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_gsm import _prunable
from optax_gsm.lasso import _layer_io


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), strides=2, padding="SAME")(x)
    y = nn.Conv(4, (3, 2), kernel_dilation=(2, 1), padding="SAME")(
        nn.relu(x))
    x = nn.relu(x + nn.BatchNorm(use_running_average=True)(y))
    x = nn.Conv(5, (2, 2), padding="VALID")(x)
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def net():
  x = jax.random.normal(jax.random.key(1), (3, 9, 8, 2))
  model = _Net()
  variables = model.init(jax.random.key(0), x)
  program = _layer_io.Program(model.apply, variables, (x,))
  return variables, x, program


def test_every_layer_is_rows_times_its_kernel(net):
  variables, x, program = net
  leaves = jax.tree.leaves(variables)
  paths = _prunable.leaf_paths(variables)
  kernels = [i for i, p in enumerate(paths) if p.endswith("kernel")]
  assert len(kernels) == 4
  for leaf in kernels:
    (layer,) = program.layers(leaf)
    values = program.run(variables, (x,), {layer.activation, layer.output})
    rows, matrix, unflatten, _ = _layer_io.layer_matrices(
        program, layer, values[layer.activation], leaves[leaf])
    expected = _layer_io.output_rows(program, layer, values[layer.output])
    np.testing.assert_allclose(rows @ matrix, expected, atol=1e-5)
    np.testing.assert_array_equal(unflatten(matrix), leaves[leaf])


def test_the_residual_branch_finds_its_shortcut_and_slope(net):
  variables, x, program = net
  paths = _prunable.leaf_paths(variables)
  found = {}
  for leaf, path in enumerate(paths):
    if path.endswith("kernel"):
      (layer,) = program.layers(leaf)
      found[path.split("/")[1]] = (layer, program.shortcut(layer.output))
  assert found["Conv_1"][1] is not None  # conv -> bias -> BN -> add
  assert found["Conv_2"][1] is None and found["Dense_0"][1] is None
  layer, (chain, _, _) = found["Conv_1"]
  operands = program.chain_operands(chain)
  values = program.run(variables, (x,), {layer.output, *operands})
  slope = program.slope(chain, {i: values[i] for i in operands},
                        layer.output, values[layer.output])
  stats = variables["batch_stats"]["BatchNorm_0"]
  scale = variables["params"]["BatchNorm_0"]["scale"]
  np.testing.assert_allclose(
      slope, jnp.broadcast_to(scale / jnp.sqrt(stats["var"] + 1e-5),
                              slope.shape), rtol=1e-4)
