"""channel_groups finds the groups one would write by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_gsm
from tests import structured_cases


def _summary(groups):
  """{group name: {(path, axis, role)}} and per member its channel map."""
  members = {g.name: {(m.path, m.axis, m.role) for m in g.members}
             for g in groups.channels}
  maps = {(g.name, m.path, m.axis): m.channel_of for g in groups.channels
          for m in g.members}
  return members, maps


def _dense(name, role, axis):
  """Members of a Dense/Conv kernel (+ its bias for "out")."""
  out = {(f"params/{name}/kernel", axis, role)}
  if role == "out":
    out.add((f"params/{name}/bias", 0, "out"))
  return out


def _trace(name):
  case = structured_cases.case(name)
  return case, optax_gsm.structured.channel_groups(
      case.apply, case.variables, structured_cases.example_input(case))


def test_mlp_groups_are_the_hand_written_ones():
  _, groups = _trace("mlp")
  members, maps = _summary(groups)
  assert members == {
      "Dense_0": _dense("Dense_0", "out", 1) | _dense("Dense_1", "in", 0),
      "Dense_1": _dense("Dense_1", "out", 1) | _dense("Dense_2", "in", 0)}
  for channel_of in maps.values():
    np.testing.assert_array_equal(channel_of, np.arange(len(channel_of)))
  assert groups.blocks == ()
  assert groups.unprunable == (("Dense_2", "model output"),)
  assert [g.size for g in groups.channels] == [300, 100]


@pytest.mark.slow  # traces a whole LeNet-5
def test_lenet5_flatten_maps_rows_to_channels_in_nhwc_order():
  _, groups = _trace("lenet5")
  members, maps = _summary(groups)
  assert members == {
      "Conv_0": _dense("Conv_0", "out", 3) | _dense("Conv_1", "in", 2),
      "Conv_1": _dense("Conv_1", "out", 3) | _dense("Dense_0", "in", 0),
      "Dense_0": _dense("Dense_0", "out", 1) | _dense("Dense_1", "in", 0)}
  # 4 x 4 x 50 flattened: row (h * 4 + w) * 50 + c is channel c.
  np.testing.assert_array_equal(
      maps[("Conv_1", "params/Dense_0/kernel", 0)], np.arange(800) % 50)


def _bn(module, collection_free=False):
  prefix = "" if collection_free else "params/"
  stats = "" if collection_free else "batch_stats/"
  return {(f"{prefix}{module}/scale", 0, "out"),
          (f"{prefix}{module}/bias", 0, "out"),
          (f"{stats}{module}/mean", 0, "out"),
          (f"{stats}{module}/var", 0, "out")}


def _conv(path, role):
  return {(f"params/{path}/kernel", 3 if role == "out" else 2, role)}


@pytest.mark.slow  # ~8 s: traces a ResNet; CI runs it
def test_resnet_groups_join_residual_adds_and_projection_shortcuts():
  _, groups = _trace("resnet")
  members, _ = _summary(groups)
  expected = {}
  # The stem's channels run through stage 0 (identity shortcuts) and into
  # stage 1's first block (its conv1 and its projection read them).
  expected["conv"] = (_conv("conv", "out") | _bn("bn")
                      | _conv("stage1_block0/conv1", "in")
                      | _conv("stage1_block0/shortcut_conv", "in"))
  for block in ("stage0_block0", "stage0_block1"):
    expected["conv"] |= (_conv(f"{block}/conv1", "in")
                         | _conv(f"{block}/conv2", "out") | _bn(f"{block}/bn2"))
  for stage, following in ((1, "stage2_block0"), (2, None)):
    first, second = f"stage{stage}_block0", f"stage{stage}_block1"
    stream = (_conv(f"{first}/shortcut_conv", "out")
              | _bn(f"{first}/shortcut_bn") | _conv(f"{first}/conv2", "out")
              | _bn(f"{first}/bn2") | _conv(f"{second}/conv1", "in")
              | _conv(f"{second}/conv2", "out") | _bn(f"{second}/bn2"))
    if following:
      stream |= (_conv(f"{following}/conv1", "in")
                 | _conv(f"{following}/shortcut_conv", "in"))
    expected[f"{first}/shortcut_conv"] = stream
  for stage in range(3):
    for block in range(2):
      name = f"stage{stage}_block{block}"
      expected[f"{name}/conv1"] = (_conv(f"{name}/conv1", "out")
                                   | _bn(f"{name}/bn1")
                                   | _conv(f"{name}/conv2", "in"))
  # The last stage's channels reach the head through the global mean.
  expected["stage2_block0/shortcut_conv"] = (
      expected.pop("stage2_block0/shortcut_conv")
      | {("params/head/kernel", 0, "in")})
  assert members == expected
  assert [b.name for b in groups.blocks] == [
      "stage0_block0", "stage0_block1", "stage1_block1", "stage2_block1"]
  block = groups.blocks[1]
  assert set(block.paths) == {
      f"{c}/stage0_block1/{m}" for c, m in [
          ("params", "conv1/kernel"), ("params", "conv2/kernel"),
          ("params", "bn1/scale"), ("params", "bn1/bias"),
          ("params", "bn2/scale"), ("params", "bn2/bias"),
          ("batch_stats", "bn1/mean"), ("batch_stats", "bn1/var"),
          ("batch_stats", "bn2/mean"), ("batch_stats", "bn2/var")]}
  assert groups.unprunable == (("head", "model output"),)


@pytest.mark.slow
def test_nnx_groups_and_block():
  _, groups = _trace("nnx")
  members, _ = _summary(groups)

  def conv(name, role, bias=True):
    out = {(f"{name}/kernel", 3 if role == "out" else 2, role)}
    return out | ({(f"{name}/bias", 0, "out")} if role == "out" else set())

  assert members == {
      "conv1": (conv("conv1", "out") | _bn("bn1", True) | conv("conv2", "in")
                | conv("conv2", "out") | _bn("bn2", True) | conv("conv3", "in")
                | conv("shortcut", "in")),
      "shortcut": (conv("shortcut", "out") | conv("conv3", "out")
                   | _bn("bn3", True) | {("head/kernel", 0, "in")}),
  }
  assert [(b.name, set(b.paths)) for b in groups.blocks] == [
      ("bn2+conv2", {"conv2/kernel", "conv2/bias", "bn2/scale", "bn2/bias",
                     "bn2/mean", "bn2/var"})]


class _Concat(nn.Module):
  @nn.compact
  def __call__(self, x):
    a = nn.Dense(3, name="a")(x)
    b = nn.Dense(2, name="b")(x)
    return nn.Dense(1, name="c")(nn.relu(jnp.concatenate([a, x, b], -1)))


def test_concatenation_maps_positions_to_each_group():
  model = _Concat()
  x = jnp.ones((2, 4))
  variables = model.init(jax.random.key(0), x)
  groups = optax_gsm.structured.channel_groups(model.apply, variables, x)
  _, maps = _summary(groups)
  # Rows of c: a's 3 channels, x's 4 features (unprunable), b's 2.
  np.testing.assert_array_equal(maps[("a", "params/c/kernel", 0)],
                                [0, 1, 2, -1, -1, -1, -1, -1, -1])
  np.testing.assert_array_equal(maps[("b", "params/c/kernel", 0)],
                                [-1, -1, -1, -1, -1, -1, -1, 0, 1])


class _LayerNormed(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.LayerNorm()(nn.Dense(6, name="normed")(x))
    return nn.Dense(2, name="out")(nn.relu(nn.Dense(5, name="free")(x)))


def test_layer_norm_makes_its_channels_unprunable():
  model = _LayerNormed()
  x = jnp.ones((2, 4))
  variables = model.init(jax.random.key(0), x)
  groups = optax_gsm.structured.channel_groups(model.apply, variables, x)
  assert [g.name for g in groups.channels] == ["free"]
  reasons = dict(groups.unprunable)
  assert "reduction over the channel axis" in reasons["normed"]


class _Sorted(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(2, name="out")(jnp.sort(nn.Dense(6, name="sorted")(x), -1))


def test_unknown_op_is_an_error_naming_it_or_unprunable_on_request():
  model = _Sorted()
  x = jnp.ones((2, 4))
  variables = model.init(jax.random.key(0), x)
  with pytest.raises(NotImplementedError, match="`sort`.*'sorted'"):
    optax_gsm.structured.channel_groups(model.apply, variables, x)
  groups = optax_gsm.structured.channel_groups(model.apply, variables, x,
                                    on_unknown="unprunable")
  assert groups.channels == ()
  assert ("sorted", "op `sort`") in groups.unprunable
  with pytest.raises(ValueError, match="on_unknown"):
    optax_gsm.structured.channel_groups(model.apply, variables, x, on_unknown="skip")
  with pytest.raises(TypeError, match="`through_norms` must be True or False"):
    optax_gsm.structured.channel_groups(model.apply, variables, x,
                                        through_norms="yes")


def test_groups_without_removes_by_name_and_rejects_unknown_names():
  _, groups = _trace("mlp")
  fewer = groups.without(["Dense_1"])
  assert [g.name for g in fewer.channels] == ["Dense_0"]
  with pytest.raises(ValueError, match="Dense_9"):
    groups.without(["Dense_9"])


class _PreLayerNormLayer(nn.Module):
  """A pre-LN transformer layer: two residual branches in one module."""

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(name="attention_norm")(x)
    x = x + nn.MultiHeadDotProductAttention(2, name="attention")(y)
    y = nn.gelu(nn.Dense(12, name="mlp_in")(nn.LayerNorm(name="mlp_norm")(x)))
    return x + nn.Dense(x.shape[-1], name="mlp_out")(y)


class _Transformer(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Dense(8, name="embed")(x)
    for i in range(2):
      x = _PreLayerNormLayer(name=f"layer{i}")(x)
    return nn.Dense(3, name="head")(x.mean(1))


def _transformer_groups():
  model = _Transformer()
  x = jnp.ones((2, 5, 4))
  variables = model.init(jax.random.key(0), x)
  return variables, optax_gsm.structured.channel_groups(model.apply,
                                                        variables, x)


def test_each_residual_branch_of_a_layer_is_its_own_named_block():
  _, groups = _transformer_groups()
  names = [b.name for b in groups.blocks]
  assert names == ["layer0/attention+attention_norm",
                   "layer0/mlp_in+mlp_norm+mlp_out",
                   "layer1/attention+attention_norm",
                   "layer1/mlp_in+mlp_norm+mlp_out"]
  fewer = groups.without(["layer0/attention+attention_norm"])
  assert [b.name for b in fewer.blocks] == names[1:]
  assert all(p.startswith("params/layer0/mlp")
             for p in groups.blocks[1].paths)


def test_attention_heads_are_structures():
  # A head: its query, key and value slices (kernels and biases) and the
  # out projection's rows that read it.
  _, groups = _transformer_groups()
  members, _ = _summary(groups)
  for layer in ("layer0", "layer1"):
    attention = f"params/{layer}/attention"
    assert members[f"{layer}/attention/query"] == {
        (f"{attention}/{p}/kernel", 1, "out") for p in ("query", "key",
                                                        "value")} | {
        (f"{attention}/{p}/bias", 0, "out") for p in ("query", "key",
                                                      "value")} | {
        (f"{attention}/out/kernel", 0, "in")}
  kinds = {g.name: (g.kind, g.size) for g in groups.channels}
  assert kinds["layer0/attention/query"] == ("heads", 2)
  assert kinds["layer0/mlp_in"] == ("channels", 12)


def test_attention_products_are_charged_to_the_query_kernel():
  # 5 tokens, width 8, 2 heads of 4: each projection entry takes part in 5
  # multiply-adds per example; scores and weighted values add 2 x (2 heads
  # x 5 x 5 x 4) = 400 per example over the query kernel's 64 entries.
  _, groups = _transformer_groups()
  macs = {path.removeprefix("params/layer0/"): m
          for path, m in groups.macs_per_entry.items() if "layer0" in path}
  assert macs == {"attention/query/kernel": 5.0 + 400 / 64,
                  "attention/key/kernel": 5.0, "attention/value/kernel": 5.0,
                  "attention/out/kernel": 5.0, "mlp_in/kernel": 5.0,
                  "mlp_out/kernel": 5.0}


@pytest.mark.parametrize("name", structured_cases.CASES
                         + structured_cases.TRANSFORMER_CASES)
def test_every_kernel_is_in_a_group_or_unprunable_with_a_reason(name):
  case = structured_cases.case(name)
  groups = optax_gsm.structured.channel_groups(
      case.apply, case.variables, structured_cases.example_input(case))
  in_group = {m.path for g in groups.channels for m in g.members}
  in_group |= {p for b in groups.blocks for p in b.paths}
  reasons = dict(groups.unprunable)
  collections = optax_gsm._prunable.has_collections(case.variables)
  for path in optax_gsm._prunable.leaf_paths(case.variables):
    if path.endswith(("/kernel", "/embedding")):
      module = optax_gsm._prunable.module_path(path, collections)
      assert path in in_group or path in reasons or module in reasons, path


def test_attention_over_a_kernel_without_heads_is_unprunable():
  # Keys from a plain Dense (no head axis) meet the query's heads: the heads
  # cannot be removed from one side only.
  class _OneSided(nn.Module):
    @nn.compact
    def __call__(self, x):
      q = nn.DenseGeneral((2, 3), name="query")(x)
      k = nn.Dense(3, name="key")(x)
      logits = jnp.einsum("bqhd,bkd->bhqk", q, k)
      return nn.Dense(2, name="head")(logits.mean((2, 3)))

  model = _OneSided()
  x = jnp.ones((2, 5, 4))
  variables = model.init(jax.random.key(0), x)
  groups = optax_gsm.structured.channel_groups(model.apply, variables, x)
  reasons = dict(groups.unprunable)
  assert "query" in reasons and "key" in reasons


@pytest.mark.slow  # traces whole models
def test_macs_per_entry_for_flops_cost():
  _, groups = _trace("lenet5")
  # Conv_0 output 24 x 24 positions; Conv_1 8 x 8; dense layers once.
  assert groups.macs_per_entry == {
      "params/Conv_0/kernel": 576.0, "params/Conv_1/kernel": 64.0,
      "params/Dense_0/kernel": 1.0, "params/Dense_1/kernel": 1.0}


class _ScanBlock(nn.Module):
  hidden: int
  bias: bool

  @nn.compact
  def __call__(self, x, _):
    h = nn.relu(nn.Dense(self.hidden, use_bias=self.bias, name="up")(x))
    return x + nn.Dense(x.shape[-1], use_bias=self.bias, name="down")(h), None


class _ScanNet(nn.Module):
  """Three residual MLP layers stacked by nn.scan."""
  width: int = 8
  hidden: int = 16
  bias: bool = True

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.width, name="embed")(x)
    stack = nn.scan(_ScanBlock, variable_axes={"params": 0},
                    split_rngs={"params": True}, length=3)
    x, _ = stack(self.hidden, self.bias, name="layers")(x, None)
    return nn.Dense(2, name="head")(x)


@pytest.mark.parametrize("bias", [True, False])
def test_scan_stack_channel_is_one_structure_across_layers(bias):
  # Regression: the tracer inlined the scan body as if it ran once, and
  # read the layer axis of the stacked kernels as the channel axis.
  model, x = _ScanNet(bias=bias), jnp.ones((2, 4))
  variables = model.init(jax.random.key(0), x)
  groups = optax_gsm.structured.channel_groups(model.apply, variables, x)
  members, _ = _summary(groups)
  stacked = lambda name, axis, role: (f"params/layers/{name}/kernel", axis,
                                      role)
  biases = lambda name, axis: ({(f"params/layers/{name}/bias", axis, "out")}
                               if bias else set())
  assert members == {
      "embed": _dense("embed", "out", 1) | _dense("head", "in", 0)
               | {stacked("up", 1, "in"), stacked("down", 2, "out")}
               | biases("down", 1),
      "layers/up": {stacked("up", 2, "out"), stacked("down", 1, "in")}
                   | biases("up", 1)}
  # Each entry of a stacked kernel serves one layer: FLOPs of one layer.
  assert groups.macs_per_entry["params/layers/up/kernel"] == 1.0

  # Removing structures from the stack gives the smaller stack exactly.
  keep = optax_gsm.structured.StructureMask(
      channels=tuple(np.arange(g.size) % 3 != 1 for g in groups.channels),
      blocks=np.ones(len(groups.blocks), bool))
  small, widths = optax_gsm.structured.shrink(variables, groups, keep)
  small_model = _ScanNet(width=widths["embed"], hidden=widths["layers/up"],
                         bias=bias)
  masked = optax_gsm.structured.mask_structures(variables, groups, keep)
  np.testing.assert_allclose(small_model.apply(small, x),
                             model.apply(masked, x), rtol=1e-5, atol=1e-6)


class _WhileNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Dense(8, name="first")(x)
    loop = self.param("loop", nn.initializers.ones, (8, 8))
    x = jax.lax.while_loop(lambda c: c[1] < 3,
                           lambda c: (c[0] @ loop, c[1] + 1), (x, 0))[0]
    return nn.Dense(2, name="head")(x)


class _CondNet(nn.Module):
  @nn.compact
  def __call__(self, x, flag=True):
    x = nn.Dense(8, name="first")(x)
    x = jax.lax.cond(flag, lambda a: 2 * a, lambda a: a, x)
    return nn.Dense(2, name="head")(x)


@pytest.mark.parametrize("model,primitive", [(_WhileNet(), "while"),
                                             (_CondNet(), "cond")])
def test_control_flow_is_an_error_naming_it_or_unprunable(model, primitive):
  # Regression: any nested jaxpr whose input and output counts matched was
  # inlined, so a while_loop's condition was read as its body.
  x = jnp.ones((2, 4))
  variables = model.init(jax.random.key(0), x)
  inputs = (x,) if primitive == "while" else (x, jnp.asarray(True))
  with pytest.raises(NotImplementedError, match=f"op `{primitive}`"):
    optax_gsm.structured.channel_groups(model.apply, variables, *inputs)
  groups = optax_gsm.structured.channel_groups(
      model.apply, variables, *inputs, on_unknown="unprunable")
  assert groups.channels == ()
  assert ("first", f"op `{primitive}`") in groups.unprunable
  if primitive == "while":
    assert ("params/loop", "used inside `while`") in groups.unprunable


class _DropoutNet(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = nn.relu(nn.Dense(8, name="first")(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(2, name="head")(x)


def test_dropout_in_training_mode_is_named_as_the_reason():
  # Regression: reported as "a constant with its own values per channel".
  model, x = _DropoutNet(), jnp.ones((2, 4))
  variables = model.init(jax.random.key(0), x, train=False)
  apply = lambda v, x: model.apply(v, x, train=True,
                                   rngs={"dropout": jax.random.key(1)})
  groups = optax_gsm.structured.channel_groups(apply, variables, x)
  (reason,) = [r for name, r in groups.unprunable if name == "first"]
  assert "dropout in training mode" in reason
  inference = optax_gsm.structured.channel_groups(
      lambda v, x: model.apply(v, x, train=False), variables, x)
  assert [g.name for g in inference.channels] == ["first"]


class _PostNormStep(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    y = nn.Dense(x.shape[-1], name="mix")(nn.relu(x))
    return nn.LayerNorm(name="norm")(x + y), None


def test_layers_of_a_residual_scan_stack_are_blocks_and_post_norm_ones_not():
  # Pre-LN layers (every branch residual): with a row zeroed the layer is
  # the identity, so each is a block holding that row of every stacked leaf.
  case = structured_cases.case("gpt")
  groups = optax_gsm.structured.channel_groups(
      case.apply, case.variables, structured_cases.example_input(case))
  stacked = sorted(p for p in optax_gsm._prunable.leaf_paths(case.variables)
                   if p.startswith("params/layers/"))
  assert [(b.name, b.row) for b in groups.blocks] == [
      ("layers[0]", 0), ("layers[1]", 1), ("layers[2]", 2)]
  assert all(sorted(b.paths) == stacked for b in groups.blocks)

  # A post-LN layer normalises the sum: no row of it is the identity.
  class PostNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
      stack = nn.scan(_PostNormStep, variable_axes={"params": 0},
                      split_rngs={"params": True}, length=3)
      return nn.Dense(2, name="head")(stack(name="layers")(x, None)[0])

  model = PostNorm()
  x = jnp.ones((2, 6))
  variables = model.init(jax.random.key(0), x)
  groups = optax_gsm.structured.channel_groups(model.apply, variables, x)
  assert groups.blocks == ()


def test_a_per_head_constant_makes_heads_unprunable_a_broadcast_does_not():
  # ALiBi-like slopes, one per head, cannot follow a head out of the model;
  # a causal mask broadcast over the heads can.
  class _Attention(nn.Module):
    per_head: bool

    @nn.compact
    def __call__(self, x):
      q = nn.DenseGeneral((2, 3), name="query")(x)
      k = nn.DenseGeneral((2, 3), name="key")(x)
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
      if self.per_head:
        logits = logits * jnp.array([1.0, 0.5]).reshape(1, 2, 1, 1)
      else:
        causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))
        logits = jnp.where(causal[None, None], logits, -1e9)
      return nn.Dense(2, name="head")(logits.mean((2, 3)))

  x = jnp.ones((2, 5, 4))
  for per_head in (True, False):
    model = _Attention(per_head)
    variables = model.init(jax.random.key(0), x)
    groups = optax_gsm.structured.channel_groups(model.apply, variables, x)
    reasons = dict(groups.unprunable)
    if per_head:
      assert "own values per channel" in reasons["query"]
    else:
      assert "query" not in reasons


def test_rematerialised_layers_give_the_groups_of_plain_ones():
  # nn.remat wraps each layer's body in a checkpoint: the graph inlines it.
  def structures(name):
    case = structured_cases.case(name)
    groups = optax_gsm.structured.channel_groups(
        case.apply, case.variables, structured_cases.example_input(case))
    return ([(g.name, g.size, g.kind,
              [(m.path, m.axis, m.role) for m in g.members])
             for g in groups.channels],
            [(b.name, b.row, sorted(b.paths)) for b in groups.blocks],
            groups.unprunable, groups.macs_per_entry)

  plain, remat = structures("gpt"), structures("gpt_remat")
  assert remat == plain
  assert len(plain[0]) == 2 and len(plain[1]) == 3  # heads, neurons; layers


def _members(groups, name):
  group = next(g for g in groups.channels if g.name == name)
  return group, {(m.path.removeprefix("params/"), m.axis, m.role):
                 m.channel_of.tolist() for m in group.members}


@pytest.mark.parametrize("name", ["gqa", "gqa_repeat"])
def test_grouped_query_heads_are_a_key_value_head_with_its_query_heads(name):
  # 4 query heads over 2 key-value heads (queries reshaped per key-value
  # head, or keys and values repeated per query head): a structure is
  # key-value head j with query heads 2j and 2j + 1 and the out projection's
  # rows for them.
  _, groups = _trace(name)
  group, members = _members(groups, "attention/query")
  assert (group.kind, group.size) == ("heads", 2)
  pairs, singles = [0, 0, 1, 1], [0, 1]
  assert members == {
      **{(f"attention/{p}/{leaf}", axis, "out"): pairs
         for p in ["query"] for leaf, axis in (("kernel", 1), ("bias", 0))},
      **{(f"attention/{p}/{leaf}", axis, "out"): singles
         for p in ("key", "value")
         for leaf, axis in (("kernel", 1), ("bias", 0))},
      ("attention/out/kernel", 0, "in"): pairs}


@pytest.mark.parametrize("name", ["mqa", "mqa_repeat"])
def test_multi_query_heads_are_query_heads_and_the_shared_head_stays(name):
  _, groups = _trace(name)
  group, members = _members(groups, "attention/query")
  assert group.size == 4
  assert members[("attention/out/kernel", 0, "in")] == [0, 1, 2, 3]
  reasons = dict(groups.unprunable)
  assert "attention/key" in reasons and "attention/value" in reasons


def test_group_norm_groups_are_structures():
  # GroupNorm over groups of 2 channels: a structure is one norm group, its
  # 2 channels everywhere (conv output, norm scale and bias, next input).
  _, groups = _trace("groupnorm")
  group, members = _members(groups, "conv0")
  assert group.size == 4
  pairs = [0, 0, 1, 1, 2, 2, 3, 3]
  assert members == {("conv0/kernel", 3, "out"): pairs,
                     ("conv0/bias", 0, "out"): pairs,
                     ("conv0_norm/scale", 0, "out"): pairs,
                     ("conv0_norm/bias", 0, "out"): pairs,
                     ("conv1/kernel", 2, "in"): pairs}


def test_a_split_of_unaligned_channels_is_unprunable():
  # Two layers of 3 channels joined and split into groups of 2: the middle
  # group holds a channel of each, so neither layer's channels can go.
  class _Unaligned(nn.Module):
    @nn.compact
    def __call__(self, x):
      a, b = nn.Dense(3, name="a")(x), nn.Dense(3, name="b")(x)
      grouped = jnp.concatenate([a, b], -1).reshape(x.shape[0], 3, 2)
      y = grouped - grouped.mean(-1, keepdims=True)
      return nn.Dense(2, name="head")(y.reshape(x.shape[0], 6))

  model = _Unaligned()
  x = jnp.ones((2, 3))
  variables = model.init(jax.random.key(0), x)
  groups = optax_gsm.structured.channel_groups(model.apply, variables, x)
  reasons = dict(groups.unprunable)
  assert not groups.channels
  assert "unaligned" in reasons["a"] and "unaligned" in reasons["b"]
