"""Models the structured-pruning tests share: linen (`tests.models`, the
examples' ViT and scan-stacked character transformer) and NNX (a residual
CNN with batch norm, a transformer with ``nnx.MultiHeadAttention``), each
with an apply function of ``(variables, x)`` in inference mode and a way to
rebuild it from widths."""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
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


class NnxCountedLayerNorm(nnx.Module):
  """`models.counted_layer_norm` as an NNX module."""

  def __init__(self, features, count, *, rngs: nnx.Rngs):
    del rngs
    self.count = count
    self.scale = nnx.Param(jnp.ones(features))
    self.bias = nnx.Param(jnp.zeros(features))

  def __call__(self, x):
    return models.counted_layer_norm(x, self.count, self.scale[...],
                                     self.bias[...])


class NnxEncoderLayer(nnx.Module):
  """A pre-LN transformer layer; ``widths`` as `examples.models`'s (a
  branch of width 0 is left out). ``stream``: the residual stream's width
  (``width`` unless shrunk); ``norm``: "layer" (`nnx.LayerNorm`), "counted"
  (over ``width`` channels, `NnxCountedLayerNorm`) or "rms"
  (`nnx.RMSNorm`)."""

  def __init__(self, width, heads, mlp_width, widths, *, rngs: nnx.Rngs,
               stream=None, norm="layer"):
    stream = stream or width
    norm = {"layer": lambda: nnx.LayerNorm(stream, rngs=rngs),
            "counted": lambda: NnxCountedLayerNorm(stream, width, rngs=rngs),
            "rms": lambda: nnx.RMSNorm(stream, rngs=rngs)}[norm]
    self.has_attention = widths.get("attention+attention_norm") != 0
    self.has_mlp = widths.get("mlp_in+mlp_norm+mlp_out") != 0
    if self.has_attention:
      kept_heads = widths.get("attention/query", heads)
      self.attention_norm = norm()
      self.attention = nnx.MultiHeadAttention(
          kept_heads, stream, kept_heads * (width // heads), stream,
          decode=False, rngs=rngs)
    if self.has_mlp:
      hidden = widths.get("mlp_in", mlp_width)
      self.mlp_norm = norm()
      self.mlp_in = nnx.Linear(stream, hidden, rngs=rngs)
      self.mlp_out = nnx.Linear(hidden, stream, rngs=rngs)

  def __call__(self, x):
    if self.has_attention:
      x = x + self.attention(self.attention_norm(x))
    if self.has_mlp:
      x = x + self.mlp_out(nnx.gelu(self.mlp_in(self.mlp_norm(x))))
    return x


class NnxTransformer(nnx.Module):
  """Linear embedding, two `NnxEncoderLayer`, mean over tokens, head."""

  def __init__(self, widths=None, *, rngs: nnx.Rngs):
    widths = widths or {}
    self.embed = nnx.Linear(4, 16, rngs=rngs)
    self.layer0 = NnxEncoderLayer(16, 4, 24, _below(widths, "layer0"),
                                  rngs=rngs)
    self.layer1 = NnxEncoderLayer(16, 4, 24, _below(widths, "layer1"),
                                  rngs=rngs)
    self.head = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(self.layer1(self.layer0(self.embed(x))).mean(1))


class NnxStackedTransformer(nnx.Module):
  """`NnxEncoderLayer` x 3 made by ``nnx.vmap`` and run by ``nnx.scan``;
  ``widths["layers"]`` is the number of layers, ``widths["embed"]`` the
  residual stream's width."""

  def __init__(self, widths=None, *, rngs: nnx.Rngs, norm="layer"):
    widths = widths or {}
    inner = _below(widths, "layers")
    stream = widths.get("embed", 16)
    self.embed = nnx.Linear(4, stream, rngs=rngs)

    @nnx.split_rngs(splits=widths.get("layers", 3))
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return NnxEncoderLayer(16, 4, 24, inner, rngs=rngs, stream=stream,
                             norm=norm)

    self.layers = make(rngs)
    self.head = nnx.Linear(stream, 3, rngs=rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def step(x, layer):
      return layer(x)

    return self.head(step(self.embed(x), self.layers).mean(1))


def _below(widths, name):
  prefix = name + "/"
  return {k[len(prefix):]: v for k, v in widths.items()
          if k.startswith(prefix)}


def _example_models():
  """`examples.models`, or a skip where the tests run outside the source
  tree (the installed wheel's check)."""
  return pytest.importorskip("examples.models", exc_type=ImportError)


class Case(NamedTuple):
  variables: Any
  apply: Callable[[Any, jax.Array], jax.Array]
  rebuild: Callable[[dict], Callable[[Any, jax.Array], jax.Array]]
  input_shape: tuple[int, ...]
  vocab: int = 0  # inputs are tokens below this, not real numbers


def example_input(case: Case, seed: int = 0) -> jax.Array:
  """An input of the case's shape: random tokens or normal values."""
  key = jax.random.key(seed + 10)
  if case.vocab:
    return jax.random.randint(key, case.input_shape, 0, case.vocab)
  return jax.random.normal(key, case.input_shape)


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


def _linen_model(name: str):
  if name == "vit":
    return _example_models().VisionTransformer(
        width=16, depth=2, heads=4, mlp_width=24, patch=7), (2, 784)
  if name in ("gpt", "gpt_remat"):
    return _example_models().CharTransformer(
        vocab=11, width=16, depth=3, heads=4, mlp_width=24, context=8,
        remat=name == "gpt_remat"), (2, 8)
  return {"mlp": (models.Mlp(), (2, 784)),
          "lenet5": (models.ConvNet(), (2, 784)),
          "resnet": (models.ResNet(), (2, 8, 8, 3)),
          "groupnorm": (models.GroupNormNet(), (2, 8, 8, 3)),
          "gqa": (models.GqaTransformer(), (2, 5)),
          "mqa": (models.GqaTransformer(kv_heads=1), (2, 5)),
          "gqa_repeat": (models.GqaTransformer(repeat=True), (2, 5)),
          "mqa_repeat": (models.GqaTransformer(kv_heads=1, repeat=True),
                         (2, 5)),
          "gqa_counted_norms": (models.GqaTransformer(norm="counted"),
                                (2, 5)),
          "gqa_rms_norms": (models.GqaTransformer(norm="rms"), (2, 5)),
          "gqa_rms_norms_by_hand": (models.GqaTransformer(norm="rms_by_hand"),
                                    (2, 5))}[name]


def linen_case(name: str) -> Case:
  model, shape = _linen_model(name)
  vocab = getattr(model, "vocab", 0)
  example = jnp.zeros(shape, jnp.int32) if vocab else jnp.ones(shape)
  variables = _with_random_statistics(
      model.init(jax.random.key(0), example))

  def rebuild(widths):
    return model.clone(widths=widths).apply

  return Case(variables, model.apply, rebuild, shape, vocab)


def _nnx_case(module: type, shape: tuple[int, ...]) -> Case:
  model = module(rngs=nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)

  def rebuild(widths):
    small = module(widths, rngs=nnx.Rngs(0))
    small.eval()
    small_graphdef, _ = nnx.split(small)
    return lambda s, x: nnx.merge(small_graphdef, s)(x)

  return Case(_with_random_statistics(state),
              lambda s, x: nnx.merge(graphdef, s)(x), rebuild, shape)


def case(name: str) -> Case:
  if name == "nnx":
    return _nnx_case(NnxResidualNet, (2, 8, 8, 3))
  if name == "nnx_transformer":
    return _nnx_case(NnxTransformer, (2, 5, 4))
  if name == "nnx_scan":
    return _nnx_case(NnxStackedTransformer, (2, 5, 4))
  for norm in ("counted", "rms"):
    if name == f"nnx_scan_{norm}_norms":
      return _nnx_case(functools.partial(NnxStackedTransformer, norm=norm),
                       (2, 5, 4))
  return linen_case(name)


CASES = ("mlp", "lenet5", "resnet", "groupnorm", "nnx")
TRANSFORMER_CASES = ("vit", "gpt", "gpt_remat", "gqa", "mqa", "gqa_repeat",
                     "mqa_repeat", "nnx_transformer", "nnx_scan")


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
