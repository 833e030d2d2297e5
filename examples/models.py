"""The examples' and benchmarks' networks as Flax linen modules: the paper's
MNIST networks, a CIFAR-style ResNet with batch norm, a small pre-LN
vision transformer and a GPT-style character model with scan-stacked layers.

Every layer's width can be overridden through ``widths`` (module path ->
features, as `optax_gsm.structured.shrink` returns them), so that the same class
builds the full model and the shrunk one; a residual block of width 0 is
skipped.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp

Widths = Mapping[str, int]


def sub_widths(widths: Widths, name: str) -> dict[str, int]:
  """The entries of ``widths`` below the submodule ``name``, relative."""
  prefix = name + "/"
  return {k[len(prefix):]: v for k, v in widths.items()
          if k.startswith(prefix)}


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
  widths: Widths = nn.FrozenDict()

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.widths.get("Dense_0", 300), name="Dense_0")(x))
    x = nn.relu(nn.Dense(self.widths.get("Dense_1", 100), name="Dense_1")(x))
    return nn.Dense(10, name="Dense_2")(x)


class Mlp(nn.Module):
  """A ReLU MLP, 784-1000-1000-10 by default (the Path-SGD paper's shape,
  narrower)."""
  hidden: tuple[int, ...] = (1000, 1000)

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for features in self.hidden:
      x = nn.relu(nn.Dense(features)(x))
    return nn.Dense(10)(x)


class LeNet5(nn.Module):
  """LeNet-5, Caffe variant: conv5x5x20, max-pool 2, conv5x5x50, max-pool 2,
  dense 500, dense 10 (430,500 weights)."""
  widths: Widths = nn.FrozenDict()

  @nn.compact
  def __call__(self, x):
    conv = lambda name, features: nn.Conv(
        self.widths.get(name, features), (5, 5), padding="VALID", name=name)
    x = x.reshape(x.shape[0], 28, 28, 1)
    x = max_pool_2x2(conv("Conv_0", 20)(x))
    x = max_pool_2x2(conv("Conv_1", 50)(x))
    x = nn.Dense(self.widths.get("Dense_0", 500), name="Dense_0")(
        x.reshape(x.shape[0], -1))
    return nn.Dense(10, name="Dense_1")(nn.relu(x))


class ResidualBlock(nn.Module):
  """Two 3x3 convs with batch norm; a 1x1 projection where the shape
  changes. ``channels`` is the block's output width (the residual stream),
  ``widths["conv1"]`` its inner width."""
  channels: int
  stride: int
  widths: Widths = nn.FrozenDict()

  @nn.compact
  def __call__(self, x, train):
    norm = lambda name: nn.BatchNorm(use_running_average=not train, name=name)
    conv = lambda name, features, size, stride=1: nn.Conv(
        self.widths.get(name, features), size, stride, use_bias=False,
        name=name)
    y = nn.relu(norm("bn1")(conv("conv1", self.channels, (3, 3),
                                 self.stride)(x)))
    y = norm("bn2")(conv("conv2", self.channels, (3, 3))(y))
    if self.stride != 1 or x.shape[-1] != self.channels:
      x = norm("shortcut_bn")(conv("shortcut_conv", self.channels, (1, 1),
                                   self.stride)(x))
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """ResNet-(6n+2) (He et al. 2016): 16/32/64 channels, ``n`` blocks a
  stage named ``stage{s}_block{b}``; 32x32 images, or any size."""
  depth: int = 20
  widths: Widths = nn.FrozenDict()

  @nn.compact
  def __call__(self, x, train=True):
    blocks = (self.depth - 2) // 6
    x = nn.Conv(self.widths.get("conv", 16), (3, 3), use_bias=False,
                name="conv")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(x))
    for stage, channels in enumerate((16, 32, 64)):
      for block in range(blocks):
        name = f"stage{stage}_block{block}"
        if self.widths.get(name) == 0:  # removed: only the shortcut is left
          x = nn.relu(x)
          continue
        stride = 2 if stage > 0 and block == 0 else 1
        inner = sub_widths(self.widths, name)
        x = ResidualBlock(inner.get("conv2", channels), stride, inner,
                          name=name)(x, train)
    return nn.Dense(10, name="head")(jnp.mean(x, axis=(1, 2)))


NORMS = {"layer": nn.LayerNorm, "rms": nn.RMSNorm}
_NORM_EPSILON = 1e-6  # Flax's default for both


def stream_norm(kind: str, width: int, stream: int, name: str) -> nn.Module:
  """A norm (``kind`` in `NORMS`) of a residual stream shrunk from ``width``
  to ``stream`` channels.

  Over the kept channels, RMSNorm's mean of squares is ``width / stream``
  times the masked model's, whose removed channels are zeros. `shrink`
  multiplies the scales by ``sqrt(width / stream)``; epsilon multiplied by
  the same ``width / stream`` makes the small norm compute exactly what the
  masked one does. LayerNorm subtracts a mean, so no epsilon makes it exact:
  it keeps the default.
  """
  if kind == "rms":
    return nn.RMSNorm(epsilon=_NORM_EPSILON * width / stream, name=name)
  return NORMS[kind](epsilon=_NORM_EPSILON, name=name)


class EncoderLayer(nn.Module):
  """A pre-LN transformer layer: ``x + attention(LN(x))``, then
  ``x + MLP(LN(x))`` (GELU); causal attention for a language model.
  ``norm``: ``"layer"`` (LayerNorm) or ``"rms"`` (RMSNorm, as Llama).

  ``widths["attention/query"]`` is its number of heads (of ``head_dim``
  features each, by default the input width over ``heads``),
  ``widths["mlp_in"]`` its MLP width, and a branch named in ``widths``
  with 0 (``"attention+attention_norm"``, ``"mlp_in+mlp_norm+mlp_out"``)
  is removed: only its shortcut is left. The residual stream's width is
  the input's: a model whose stream was shrunk passes ``head_dim`` and the
  stream's ``width`` of the original (`stream_norm`).
  """
  heads: int
  mlp_width: int
  causal: bool = False
  widths: Widths = nn.FrozenDict()
  head_dim: int | None = None
  norm: str = "layer"
  width: int | None = None

  @nn.compact
  def __call__(self, x):
    head_dim = self.head_dim or x.shape[-1] // self.heads
    norm = lambda name: stream_norm(self.norm, self.width or x.shape[-1],
                                    x.shape[-1], name)
    if self.widths.get("attention+attention_norm") != 0:
      heads = self.widths.get("attention/query", self.heads)
      mask = nn.make_causal_mask(x[..., 0]) if self.causal else None
      y = norm(name="attention_norm")(x)
      x = x + nn.MultiHeadDotProductAttention(
          heads, qkv_features=heads * head_dim, out_features=x.shape[-1],
          name="attention")(y, mask=mask)
    if self.widths.get("mlp_in+mlp_norm+mlp_out") != 0:
      y = norm(name="mlp_norm")(x)
      y = nn.gelu(nn.Dense(self.widths.get("mlp_in", self.mlp_width),
                           name="mlp_in")(y))
      x = x + nn.Dense(x.shape[-1], name="mlp_out")(y)
    return x


class StackedEncoderLayer(EncoderLayer):
  """`EncoderLayer` as the step of an ``nn.scan`` over layers."""

  def __call__(self, x, _):
    return super().__call__(x), None


class VisionTransformer(nn.Module):
  """A small ViT (Dosovitskiy et al. 2021) for 28x28x1 images: 4x4 patches
  (49 tokens), a learned position embedding, ``depth`` pre-LN layers
  (``layer{i}``), mean pooling and a linear head. ``widths["patch_embed"]``:
  the residual stream's width. ``norm``: ``"layer"`` or ``"rms"``, every
  norm's kind."""
  width: int = 64
  depth: int = 4
  heads: int = 4
  mlp_width: int = 128
  patch: int = 4
  norm: str = "layer"
  widths: Widths = nn.FrozenDict()

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], 28, 28, 1)
    stream = self.widths.get("patch_embed", self.width)
    x = nn.Conv(stream, (self.patch, self.patch), self.patch,
                padding="VALID", name="patch_embed")(x)
    x = x.reshape(x.shape[0], -1, stream)
    x = x + self.param("position", nn.initializers.normal(0.02),
                       x.shape[1:])
    for layer in range(self.depth):
      name = f"layer{layer}"
      x = EncoderLayer(self.heads, self.mlp_width,
                       widths=sub_widths(self.widths, name),
                       head_dim=self.width // self.heads, norm=self.norm,
                       width=self.width, name=name)(x)
    x = stream_norm(self.norm, self.width, stream, "final_norm")(x)
    return nn.Dense(10, name="head")(x.mean(axis=1))


class CharTransformer(nn.Module):
  """A GPT-style character language model: token and position embeddings,
  ``depth`` causal pre-LN layers stacked by ``nn.scan`` (one compiled
  layer; parameters ``layers/...`` with a leading layer axis), a final
  norm and a linear head over the vocabulary. Every layer of the
  stack has the same widths (``widths["layers/attention/query"]``, ...);
  ``widths["layers"]`` is the number of layers kept, ``widths["embed"]``
  the residual stream's width. ``remat``: each
  layer rematerialised in the backward pass (``nn.remat``), less memory
  for one more forward pass. ``norm``: ``"layer"`` or ``"rms"``, every
  norm's kind."""
  vocab: int
  width: int = 128
  depth: int = 4
  heads: int = 4
  mlp_width: int = 512
  context: int = 128
  remat: bool = False
  norm: str = "layer"
  widths: Widths = nn.FrozenDict()

  @nn.compact
  def __call__(self, tokens):
    stream = self.widths.get("embed", self.width)
    x = nn.Embed(self.vocab, stream, name="embed")(tokens)
    x = x + self.param("position", nn.initializers.normal(0.02),
                       (self.context, stream))[:tokens.shape[1]]
    layer = nn.remat(StackedEncoderLayer) if self.remat else StackedEncoderLayer
    stack = nn.scan(layer, variable_axes={"params": 0},
                    split_rngs={"params": True},
                    length=self.widths.get("layers", self.depth))
    x, _ = stack(self.heads, self.mlp_width, True,
                 sub_widths(self.widths, "layers"),
                 head_dim=self.width // self.heads, norm=self.norm,
                 width=self.width, name="layers")(x, None)
    x = stream_norm(self.norm, self.width, stream, "final_norm")(x)
    return nn.Dense(self.vocab, name="head")(x)


MNIST_MODELS = {"lenet300": LeNet300100, "lenet5": LeNet5}
