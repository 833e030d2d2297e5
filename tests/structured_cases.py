"""Models the structured-pruning tests share: linen (`tests.models`) and
an NNX residual CNN with batch norm, each with an apply function of
``(variables, x)`` in inference mode and a way to rebuild it from widths."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tests import models


class NnxResidualNet(nnx.Module):
  """conv-bn-relu, then an identity residual conv-bn, a projection residual
  conv-bn (stride 2, 1x1 shortcut), global average, linear head."""

  def __init__(self, widths=None, *, rngs: nnx.Rngs):
    widths = widths or {}
    stem, inner = widths.get("conv1", 8), widths.get("conv2", 8)
    out = widths.get("conv3", 12)
    self.conv1 = nnx.Conv(3, stem, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(stem, rngs=rngs)
    self.conv2 = nnx.Conv(stem, inner, (3, 3), rngs=rngs)
    self.bn2 = nnx.BatchNorm(inner, rngs=rngs)
    self.conv3 = nnx.Conv(inner, out, (3, 3), strides=2, rngs=rngs)
    self.bn3 = nnx.BatchNorm(out, rngs=rngs)
    self.shortcut = nnx.Conv(inner, out, (1, 1), strides=2, rngs=rngs)
    self.head = nnx.Linear(out, 4, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.relu(x + self.bn2(self.conv2(x)))
    x = nnx.relu(self.shortcut(x) + self.bn3(self.conv3(x)))
    return self.head(x.mean((1, 2)))


class Case(NamedTuple):
  variables: Any
  apply: Callable[[Any, jax.Array], jax.Array]
  rebuild: Callable[[dict], Callable[[Any, jax.Array], jax.Array]]
  input_shape: tuple[int, ...]


def _with_random_statistics(variables, seed=1):
  """Batch statistics that are not 0 and 1, so that BN members matter."""
  key = jax.random.key(seed)

  def stat(path, leaf):
    name = jax.tree_util.keystr(path)
    if "mean" in name:
      return 0.3 * jax.random.normal(key, leaf.shape)
    if "var" in name:
      return jax.random.uniform(key, leaf.shape, minval=0.5, maxval=1.5)
    if "scale" in name:
      return 1.0 + 0.3 * jax.random.normal(key, leaf.shape)
    if "bias" in name:
      return 0.1 * jax.random.normal(jax.random.fold_in(key, 1), leaf.shape)
    return leaf

  return jax.tree_util.tree_map_with_path(stat, variables)


def linen_case(name: str) -> Case:
  model, shape = {
      "mlp": (models.Mlp(), (2, 784)),
      "lenet5": (models.ConvNet(), (2, 784)),
      "resnet": (models.ResNet(), (2, 8, 8, 3)),
  }[name]
  variables = _with_random_statistics(
      model.init(jax.random.key(0), jnp.ones(shape)))

  def rebuild(widths):
    return model.clone(widths=widths).apply

  return Case(variables, model.apply, rebuild, shape)


def nnx_case() -> Case:
  model = NnxResidualNet(rngs=nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)

  def rebuild(widths):
    small = NnxResidualNet(widths, rngs=nnx.Rngs(0))
    small.eval()
    small_graphdef, _ = nnx.split(small)
    return lambda s, x: nnx.merge(small_graphdef, s)(x)

  return Case(_with_random_statistics(state),
              lambda s, x: nnx.merge(graphdef, s)(x), rebuild, (2, 8, 8, 3))


def case(name: str) -> Case:
  return nnx_case() if name == "nnx" else linen_case(name)


CASES = ("mlp", "lenet5", "resnet", "nnx")


def random_keep(groups, seed=0, block_probability=0.5):
  """A random StructureMask keeping at least one channel per group."""
  import optax_gsm
  rng = np.random.default_rng(seed)
  channels = []
  for group in groups.channels:
    kept = rng.random(group.size) < 0.6
    kept[rng.integers(group.size)] = True
    channels.append(kept)
  return optax_gsm.structured.StructureMask(
      tuple(channels), rng.random(len(groups.blocks)) < block_probability)
