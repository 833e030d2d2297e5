"""The examples' and benchmarks' networks as Flax linen modules: the paper's
MNIST networks and a CIFAR-style ResNet with batch norm."""

import flax.linen as nn
import jax.numpy as jnp


def max_pool_2x2(x):
  """2x2 max-pooling, stride 2, of NHWC ``x`` with even H and W.

  The same function as ``nn.max_pool(x, (2, 2), (2, 2))``, written as a
  reshape and a max: XLA's CPU backend runs the select-and-scatter that
  ``nn.max_pool``'s gradient lowers to so slowly that it made LeNet-5's
  training step 1.4x slower. At ties the gradient is shared among the
  maxima instead of going to the first one.
  """
  batch, height, width, channels = x.shape
  return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max((2, 4))


class LeNet300100(nn.Module):
  """LeNet-300-100: a 784-300-100-10 ReLU network (266,200 weights)."""

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(300)(x))
    x = nn.relu(nn.Dense(100)(x))
    return nn.Dense(10)(x)


class LeNet5(nn.Module):
  """LeNet-5, Caffe variant: conv5x5x20, max-pool 2, conv5x5x50, max-pool 2,
  dense 500, dense 10 (430,500 weights)."""

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], 28, 28, 1)
    x = max_pool_2x2(nn.Conv(20, (5, 5), padding="VALID")(x))
    x = max_pool_2x2(nn.Conv(50, (5, 5), padding="VALID")(x))
    x = nn.relu(nn.Dense(500)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


class ResidualBlock(nn.Module):
  channels: int
  stride: int

  @nn.compact
  def __call__(self, x, train):
    norm = lambda: nn.BatchNorm(use_running_average=not train)
    y = nn.Conv(self.channels, (3, 3), self.stride, use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = norm()(nn.Conv(self.channels, (3, 3), use_bias=False)(y))
    if self.stride != 1 or x.shape[-1] != self.channels:
      x = norm()(nn.Conv(self.channels, (1, 1), self.stride, use_bias=False)(x))
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32x32 images (He et al. 2016): 16/32/64 channels."""
  depth: int = 20

  @nn.compact
  def __call__(self, x, train=True):
    blocks = (self.depth - 2) // 6
    x = nn.Conv(16, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    for stage, channels in enumerate((16, 32, 64)):
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(channels, stride)(x, train)
    return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


MNIST_MODELS = {"lenet300": LeNet300100, "lenet5": LeNet5}
