"""shrink: the smaller model computes what the masked big one computes."""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_gsm
from optax_gsm import _prunable
from tests import structured_cases


@pytest.mark.slow
@pytest.mark.parametrize("name", structured_cases.CASES
                         + structured_cases.TRANSFORMER_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_small_model_equals_masked_big_model(name, seed):
  # Transformers: heads (query, key, value slices with the out projection's
  # rows), MLP neurons and residual branches; a scan stack keeps the same
  # heads and neurons in every layer.
  case = structured_cases.case(name)
  x = structured_cases.example_input(case, seed)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  keep = structured_cases.random_keep(
      groups, seed, block_probability=1.0 if name == "nnx" else 0.5)
  small, widths = optax_gsm.structured.shrink(case.variables, groups, keep)
  expected = case.apply(
      optax_gsm.structured.mask_structures(case.variables, groups, keep), x)
  np.testing.assert_allclose(case.rebuild(widths)(small, x), expected,
                             atol=1e-5)
  # Every kernel left shrank to its positions of kept channels along its
  # output axis (several a channel: a key-value head's query heads, a norm
  # group's channels), and widths say so.
  small_shapes = dict(zip(_prunable.leaf_paths(small),
                          [np.shape(leaf) for leaf in jax.tree.leaves(small)]))
  for group, kept in zip(groups.channels, keep.channels):
    for member in group.members:
      if member.role == "out" and member.path in small_shapes:
        inside = member.channel_of[member.channel_of >= 0]
        assert small_shapes[member.path][member.axis] == int(
            np.sum(np.asarray(kept)[inside]))


@pytest.mark.slow
def test_removed_block_disappears_and_width_zero():
  case = structured_cases.case("resnet")
  x = jnp.ones(case.input_shape)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  keep = optax_gsm.structured.StructureMask(
      tuple(np.ones(g.size, bool) for g in groups.channels),
      np.array([b.name == "stage1_block1" for b in groups.blocks]) == 0)
  small, widths = optax_gsm.structured.shrink(case.variables, groups, keep)
  assert widths["stage1_block1"] == 0
  assert "stage1_block1" not in small["params"]
  assert "stage1_block1" not in small["batch_stats"]
  assert set(small["params"]) == set(case.variables["params"]) - {
      "stage1_block1"}
  np.testing.assert_allclose(
      case.rebuild(widths)(small, x),
      case.apply(optax_gsm.structured.mask_structures(case.variables, groups, keep), x),
      atol=1e-5)


@pytest.mark.slow
def test_removed_layers_leave_the_scan_stack():
  case = structured_cases.case("gpt")
  x = structured_cases.example_input(case)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  keep = optax_gsm.structured.StructureMask(
      tuple(np.ones(g.size, bool) for g in groups.channels),
      np.array([b.name != "layers[1]" for b in groups.blocks]))
  small, widths = optax_gsm.structured.shrink(case.variables, groups, keep)
  assert widths["layers"] == 2
  big = case.variables["params"]["layers"]
  kernel = small["params"]["layers"]["mlp_in"]["kernel"]
  np.testing.assert_array_equal(kernel,
                                np.asarray(big["mlp_in"]["kernel"])[[0, 2]])
  np.testing.assert_allclose(
      case.rebuild(widths)(small, x),
      case.apply(optax_gsm.structured.mask_structures(case.variables, groups,
                                                      keep), x), atol=1e-5)


@pytest.mark.slow
def test_keeping_everything_is_the_identity():
  case = structured_cases.case("lenet5")
  x = jnp.ones(case.input_shape)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  keep = optax_gsm.structured.StructureMask(
      tuple(np.ones(g.size, bool) for g in groups.channels), np.ones(0, bool))
  small, widths = optax_gsm.structured.shrink(case.variables, groups, keep)
  chex_equal = jax.tree.map(np.array_equal, small, case.variables)
  assert all(jax.tree.leaves(chex_equal))
  assert widths == {"Conv_0": 20, "Conv_1": 50, "Dense_0": 500}


def test_keep_of_the_wrong_shape_is_an_error():
  case = structured_cases.case("mlp")
  x = jnp.ones(case.input_shape)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  with pytest.raises(ValueError, match="1 channel masks"):
    optax_gsm.structured.shrink(
        case.variables, groups, optax_gsm.structured.StructureMask(
        (np.ones(300, bool),), np.ones(0, bool)))
  with pytest.raises(ValueError, match="'Dense_1'.*100 channels"):
    optax_gsm.structured.shrink(
        case.variables, groups, optax_gsm.structured.StructureMask(
        (np.ones(300, bool), np.ones(99, bool)), np.ones(0, bool)))


@pytest.mark.slow
def test_kept_structures_reads_the_optimizer_state():
  case = structured_cases.case("mlp")
  x = jnp.ones(case.input_shape)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  params = case.variables["params"]
  tx = optax.chain(optax_gsm.structured.structured_gsm(groups, 4.0),
                   optax.scale_by_learning_rate(0.1))
  state = tx.init(params)
  grads = jax.grad(lambda p: case.apply({"params": p}, x).sum())(params)
  _, state = tx.update(grads, state, params)
  keep = optax_gsm.structured.kept_structures(state)
  np.testing.assert_array_equal(keep.channels[0], state[0][0].kept.channels[0])
  with pytest.raises(ValueError, match="0 structured GSM states"):
    optax_gsm.structured.kept_structures(optax.sgd(0.1).init(params))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet5", "resnet"])
def test_round_to_pads_with_zero_channels_and_stays_exact(name):
  case = structured_cases.case(name)
  x = jax.random.normal(jax.random.key(4), case.input_shape)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  keep = structured_cases.random_keep(groups, 5)
  small, widths = optax_gsm.structured.shrink(case.variables, groups, keep, round_to=8)
  # A multiple of 8, or the whole group (LeNet-5's 20, 50 and 500; the
  # test ResNet's 8, 16 and 32), or 0 for a removed block.
  for module, width in widths.items():
    assert width % 8 == 0 or width in (20, 50, 500), (module, width)
  np.testing.assert_allclose(
      case.rebuild(widths)(small, x),
      case.apply(optax_gsm.structured.mask_structures(case.variables, groups, keep), x),
      atol=1e-5)
  with pytest.raises(ValueError, match="round_to"):
    optax_gsm.structured.shrink(case.variables, groups, keep, round_to=0)


def test_groups_of_another_model_and_an_empty_group_are_errors():
  # Regression: shrink returned {} and mask_structures did nothing.
  case = structured_cases.case("mlp")
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables,
                                               jnp.ones(case.input_shape))
  keep = structured_cases.random_keep(groups)
  other = {"params": {"conv": {"kernel": jnp.ones((3, 3, 1, 4))}}}
  with pytest.raises(ValueError, match="not of these variables"):
    optax_gsm.structured.shrink(other, groups, keep)
  with pytest.raises(ValueError, match="not of these variables"):
    optax_gsm.structured.mask_structures(other, groups, keep)
  with pytest.raises(ValueError, match="not of these variables"):
    optax_gsm.structured.structured_gsm(groups, 2.0).init(other["params"])
  # Regression: a group keeping nothing gave width 0 with no error.
  empty = keep._replace(channels=(np.zeros(groups.channels[0].size, bool),)
                        + keep.channels[1:])
  with pytest.raises(ValueError, match="keeps no channel"):
    optax_gsm.structured.shrink(case.variables, groups, empty)


def _shrunk_stream_against_masked(case, groups, stream, x, exact):
  """Shrinks a random part of the stream (every block kept) and compares
  the small model with the masked one: equal to 1e-5 where ``exact``
  (norms over the original width), else apart. Returns (kept, widths)."""
  keep = structured_cases.random_keep(groups, seed=2, block_probability=1.0)
  kept = int(np.sum(keep.channels[groups.channels.index(stream)]))
  assert 0 < kept < stream.size
  small, widths = optax_gsm.structured.shrink(case.variables, groups, keep)
  expected = case.apply(
      optax_gsm.structured.mask_structures(case.variables, groups, keep), x)
  got = case.rebuild(widths)(small, x)
  if exact:
    np.testing.assert_allclose(got, expected, atol=1e-5)
  else:
    assert np.max(np.abs(got - expected)) > 1e-3
  return kept, widths


_NORM_SCALES = ("params/attention_norm/scale", "params/mlp_norm/scale")


@pytest.mark.parametrize("name, rescaled", [
    ("gqa", ()), ("gqa_counted_norms", ()),
    ("gqa_rms_norms", _NORM_SCALES),
    ("gqa_rms_norms_by_hand", _NORM_SCALES)])
def test_residual_stream_through_norms(name, rescaled):
  # The stream (embedding, every branch's output, the norms' scales and
  # biases, every kernel reading it) is one group once its norms' statistics
  # may run over fewer channels. Masked, removed channels are zeros among
  # the statistics' terms; shrunk, they are gone: the same model where the
  # norms divide by the original width, or where they are RMSNorms whose
  # scales shrink multiplies by sqrt(width / kept); not under LayerNorm.
  case = structured_cases.case(name)
  x = structured_cases.example_input(case)
  assert "embed" in dict(optax_gsm.structured.channel_groups(
      case.apply, case.variables, x).unprunable)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x,
                                               through_norms=True)
  (stream,) = [g for g in groups.channels if g.statistics]
  assert stream.name == "embed" and stream.size == 12
  assert {m.path.split("/", 1)[1] for m in stream.members} >= {
      "embed/embedding", "attention_norm/scale", "attention/out/kernel",
      "mlp_out/bias", "head/kernel"}
  assert stream.rescaled == rescaled
  assert ("LayerNorm" in stream.statistics) == (not rescaled)
  kept, widths = _shrunk_stream_against_masked(
      case, groups, stream, x, exact=name != "gqa")
  assert widths["embed"] == widths["mlp_out"] == kept


@pytest.mark.parametrize("name", ["gpt", "vit", "nnx_scan"])
def test_stream_of_scan_stacked_and_patch_models_is_one_group(name):
  # Scan-stacked layers (linen and NNX) and a ViT's patch embedding: one
  # stream group holding every norm's scale, however the layers are stacked.
  case = structured_cases.case(name)
  groups = optax_gsm.structured.channel_groups(
      case.apply, case.variables, structured_cases.example_input(case),
      through_norms=True)
  (stream,) = [g for g in groups.channels if g.statistics]
  norms = {"/".join(m.path.split("/")[-2:]) for m in stream.members
           if "norm" in m.path}
  assert norms >= {"attention_norm/scale", "attention_norm/bias",
                   "mlp_norm/scale", "mlp_norm/bias"}
  assert groups.unprunable == (("head", "model output"),)


@pytest.mark.parametrize("name", ["nnx_scan", "nnx_scan_counted_norms",
                                  "nnx_scan_rms_norms"])
def test_stream_of_an_nnx_scan_stack_shrinks(name):
  # Every stacked layer's norms, projections and biases lose the same
  # stream channels; with norms over the original width, or RMSNorms (their
  # stacked scales rescaled), the small stack computes what the masked one
  # does.
  case = structured_cases.case(name)
  x = structured_cases.example_input(case)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x,
                                               through_norms=True)
  (stream,) = [g for g in groups.channels if g.statistics]
  assert len(stream.rescaled) == (2 if name == "nnx_scan_rms_norms" else 0)
  kept, widths = _shrunk_stream_against_masked(
      case, groups, stream, x, exact=name != "nnx_scan")
  assert widths["embed"] == kept


class _RmsStream(nn.Module):
  """A residual stream under one RMSNorm, with or without its scale."""
  use_scale: bool = True
  widths: Mapping[str, int] = nn.FrozenDict()

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.widths.get("Dense_0", 8))(x)
    y = nn.RMSNorm(use_scale=self.use_scale)(x)
    x = x + nn.Dense(self.widths.get("Dense_1", 8))(jax.nn.relu(
        nn.Dense(self.widths.get("Dense_2", 6))(y)))
    return nn.Dense(2)(x)


@pytest.mark.parametrize("use_scale", [True, False])
def test_rms_norm_is_exact_only_with_a_scale_to_rescale(use_scale):
  model = _RmsStream(use_scale)
  x = jax.random.normal(jax.random.key(1), (3, 5))
  variables = model.init(jax.random.key(0), x)
  groups = optax_gsm.structured.channel_groups(model.apply, variables, x,
                                               through_norms=True)
  (stream,) = [g for g in groups.channels if g.statistics]
  assert stream.rescaled == (("params/RMSNorm_0/scale",) if use_scale
                             else ())
  assert ("cannot rescale: a norm without a scale" in stream.statistics
          ) != use_scale
  keep = structured_cases.random_keep(groups, seed=1)
  assert 0 < np.sum(keep.channels[groups.channels.index(stream)]) < 8
  small, widths = optax_gsm.structured.shrink(variables, groups, keep)
  expected = model.apply(
      optax_gsm.structured.mask_structures(variables, groups, keep), x)
  got = model.clone(widths=widths).apply(small, x)
  assert np.allclose(got, expected, atol=1e-5) == use_scale
  # Rounded widths: zero channels among the statistic's terms, as masked.
  small, widths = optax_gsm.structured.shrink(variables, groups, keep,
                                              round_to=3)
  got = model.clone(widths=widths).apply(small, x)
  assert np.allclose(got, expected, atol=1e-5) == use_scale
