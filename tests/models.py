"""The library tests' Flax linen models: an MLP, a LeNet-5-shaped CNN and a
CIFAR-style ResNet with batch norm and projection shortcuts.

Every layer's width can be overridden through ``widths`` (module path ->
features, as `optax_gsm.structured.shrink` returns them), so that one class
builds the full model and the shrunk one; a residual block of width 0 is
skipped. Kept here, not imported from ``examples/``, so that the installed
wheel's test run exercises every library test.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp

Widths = Mapping[str, int]


class Mlp(nn.Module):
  """784-300-100-10 with ReLU."""
  widths: Widths = nn.FrozenDict()

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for name, features in (("Dense_0", 300), ("Dense_1", 100)):
      x = nn.relu(nn.Dense(self.widths.get(name, features), name=name)(x))
    return nn.Dense(10, name="Dense_2")(x)


class ConvNet(nn.Module):
  """LeNet-5's shape: conv5x5x20, pool, conv5x5x50, pool, dense 500, 10."""
  widths: Widths = nn.FrozenDict()

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], 28, 28, 1)
    for name, features in (("Conv_0", 20), ("Conv_1", 50)):
      x = nn.Conv(self.widths.get(name, features), (5, 5), padding="VALID",
                  name=name)(x)
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.Dense(self.widths.get("Dense_0", 500), name="Dense_0")(
        x.reshape(x.shape[0], -1))
    return nn.Dense(10, name="Dense_1")(nn.relu(x))


class _Block(nn.Module):
  """conv-bn-relu-conv-bn plus the shortcut (a 1x1 conv-bn where the shape
  changes), then relu."""
  channels: int
  stride: int
  widths: Widths

  @nn.compact
  def __call__(self, x):
    conv = lambda name, features, size, stride=1: nn.Conv(
        self.widths.get(name, features), size, stride, use_bias=False,
        name=name)
    bn = lambda name: nn.BatchNorm(use_running_average=True, name=name)
    y = nn.relu(bn("bn1")(conv("conv1", self.channels, (3, 3),
                               self.stride)(x)))
    y = bn("bn2")(conv("conv2", self.channels, (3, 3))(y))
    if self.stride != 1 or x.shape[-1] != self.channels:
      x = bn("shortcut_bn")(conv("shortcut_conv", self.channels, (1, 1),
                                 self.stride)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Stem conv-bn, three stages of two blocks (``stage{s}_block{b}``, the
  first block of stages 1 and 2 with stride 2 and a projection), global
  average, dense head; inference mode."""
  channels: tuple[int, int, int] = (8, 16, 32)
  widths: Widths = nn.FrozenDict()

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.widths.get("conv", self.channels[0]), (3, 3),
                use_bias=False, name="conv")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(x))
    for stage, channels in enumerate(self.channels):
      for block in range(2):
        name = f"stage{stage}_block{block}"
        if self.widths.get(name) == 0:  # removed: only the shortcut is left
          x = nn.relu(x)
          continue
        prefix = name + "/"
        inner = {k[len(prefix):]: v for k, v in self.widths.items()
                 if k.startswith(prefix)}
        x = _Block(inner.get("conv2", channels),
                   2 if stage > 0 and block == 0 else 1, inner,
                   name=name)(x)
    return nn.Dense(10, name="head")(jnp.mean(x, axis=(1, 2)))
