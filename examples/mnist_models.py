"""The paper's MNIST networks as Flax linen modules."""

import flax.linen as nn


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
    x = nn.max_pool(nn.Conv(20, (5, 5), padding="VALID")(x), (2, 2), (2, 2))
    x = nn.max_pool(nn.Conv(50, (5, 5), padding="VALID")(x), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(500)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


MODELS = {"lenet300": LeNet300100, "lenet5": LeNet5}
