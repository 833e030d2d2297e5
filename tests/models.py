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
import jax
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


class GroupNormNet(nn.Module):
  """Two conv-GroupNorm-relu layers (groups of 2 channels), global average,
  dense head. GroupNorm by ``group_size``: fewer channels, fewer groups."""
  widths: Widths = nn.FrozenDict()

  @nn.compact
  def __call__(self, x):
    for name, features in (("conv0", 8), ("conv1", 6)):
      x = nn.Conv(self.widths.get(name, features), (3, 3), name=name)(x)
      x = nn.relu(nn.GroupNorm(num_groups=None, group_size=2,
                               name=f"{name}_norm")(x))
    return nn.Dense(10, name="head")(jnp.mean(x, axis=(1, 2)))


class GroupedQueryAttention(nn.Module):
  """Attention with ``kv_heads`` key-value heads, each read by
  ``heads // kv_heads`` query heads (grouped-query; multi-query at one):
  the query heads reshaped per key-value head, or (``repeat``) the keys and
  values repeated per query head. ``widths["query"]`` / ``widths["key"]``:
  the query and key-value heads left, as `shrink` returns them."""
  heads: int
  kv_heads: int
  head_dim: int
  repeat: bool = False
  widths: Widths = nn.FrozenDict()

  @nn.compact
  def __call__(self, x):
    heads = self.widths.get("query", self.heads)
    kv_heads = self.widths.get("key", self.kv_heads)
    batch, length, width = x.shape
    dense = lambda name, count: nn.DenseGeneral((count, self.head_dim),
                                                name=name)(x)
    q = dense("query", heads) / self.head_dim ** 0.5
    k, v = dense("key", kv_heads), dense("value", kv_heads)
    if self.repeat:
      k, v = (jnp.repeat(a, heads // kv_heads, axis=2) for a in (k, v))
      weights = nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k))
      out = jnp.einsum("bhts,bshd->bthd", weights, v)
    else:
      q = q.reshape(batch, length, kv_heads, heads // kv_heads, self.head_dim)
      weights = nn.softmax(jnp.einsum("btkgd,bskd->bkgts", q, k))
      out = jnp.einsum("bkgts,bskd->btkgd", weights, v).reshape(
          batch, length, heads, self.head_dim)
    return nn.DenseGeneral(width, axis=(-2, -1), name="out")(out)


def counted_layer_norm(x, count, scale, bias):
  """LayerNorm whose mean and variance divide by ``count`` channels (the
  model's original width): a residual stream shrunk from ``count`` channels
  normalises as the masked one, whose removed channels are zeros."""
  mean = x.sum(-1, keepdims=True) / count
  variance = (x * x).sum(-1, keepdims=True) / count - mean * mean
  return (x - mean) * jax.lax.rsqrt(variance + 1e-6) * scale + bias


def rms_norm_by_hand(x, scale):
  """RMSNorm as model code often writes it: normalised, then scaled."""
  return x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-6) * scale


class RmsNormByHand(nn.Module):
  """`rms_norm_by_hand` as a linen module."""

  @nn.compact
  def __call__(self, x):
    return rms_norm_by_hand(
        x, self.param("scale", nn.initializers.ones, (x.shape[-1],)))


class CountedLayerNorm(nn.Module):
  """`counted_layer_norm` as a linen module."""
  count: int

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    return counted_layer_norm(
        x, self.count,
        self.param("scale", nn.initializers.ones, (features,)),
        self.param("bias", nn.initializers.zeros, (features,)))


class GqaTransformer(nn.Module):
  """Token embedding, one pre-LN layer (grouped-query attention branch, MLP
  branch), mean over tokens, dense head. The residual stream's width is
  ``widths["embed"]`` (and ``"mlp_out"``); ``norm``: "layer"
  (`nn.LayerNorm`), "counted" (LayerNorm over the original width,
  `CountedLayerNorm`), "rms" (`nn.RMSNorm`) or "rms_by_hand"
  (`RmsNormByHand`)."""
  vocab: int = 11
  width: int = 12
  heads: int = 4
  kv_heads: int = 2
  repeat: bool = False
  norm: str = "layer"
  widths: Widths = nn.FrozenDict()

  @nn.compact
  def __call__(self, tokens):
    def norm(name):
      return {"layer": lambda: nn.LayerNorm(name=name),
              "counted": lambda: CountedLayerNorm(self.width, name=name),
              "rms": lambda: nn.RMSNorm(name=name),
              "rms_by_hand": lambda: RmsNormByHand(name=name)}[self.norm]()

    x = nn.Embed(self.vocab, self.widths.get("embed", self.width),
                 name="embed")(tokens)
    inner = {k.removeprefix("attention/"): v for k, v in self.widths.items()
             if k.startswith("attention/")}
    # A branch `shrink` removed has width 0.
    if self.widths.get("attention+attention_norm") != 0:
      x = x + GroupedQueryAttention(self.heads, self.kv_heads, 3,
                                    self.repeat, inner, name="attention")(
          norm("attention_norm")(x))
    if self.widths.get("mlp_in+mlp_norm+mlp_out") != 0:
      y = norm("mlp_norm")(x)
      y = nn.gelu(nn.Dense(self.widths.get("mlp_in", 16), name="mlp_in")(y))
      x = x + nn.Dense(self.widths.get("mlp_out", self.width),
                       name="mlp_out")(y)
    return nn.Dense(self.vocab, name="head")(x.mean(1))
