"""Structured GSM: structure saliency, the budgeted ranking, the update."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optax_gsm
from optax_gsm.structured import _groups, _ranking
from tests import structured_cases


@pytest.fixture(scope="module")
def mlp():
  case = structured_cases.case("mlp")
  x = jax.random.normal(jax.random.key(0), (8, 784))
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  params = case.variables["params"]
  loss = lambda p: jnp.mean((case.apply({"params": p}, x) - 1.0) ** 2)
  return groups, params, loss


def _numpy_scores(params, grads, kind):
  """Channel scores of LeNet-300-100's two groups, written out."""
  p = jax.tree.map(np.asarray, params)
  g = jax.tree.map(np.asarray, grads)
  scores = []
  for layer, following in (("Dense_0", "Dense_1"), ("Dense_1", "Dense_2")):
    if kind == "taylor":
      total = ((g[layer]["kernel"] * p[layer]["kernel"]).sum(0)
               + g[layer]["bias"] * p[layer]["bias"]
               + (g[following]["kernel"] * p[following]["kernel"]).sum(1))
      scores.append(np.abs(total))
    else:
      scores.append(np.sqrt((p[layer]["kernel"] ** 2).sum(0)
                            + p[layer]["bias"] ** 2
                            + (p[following]["kernel"] ** 2).sum(1)))
  return np.concatenate(scores)


@pytest.mark.parametrize("kind", ["taylor", "magnitude"])
def test_structure_scores_match_numpy(mlp, kind):
  groups, params, loss = mlp
  params = jax.tree.map(lambda w: w + 0.01, params)  # non-zero biases
  grads = jax.grad(loss)(params)
  scores = _ranking.structure_scores(_groups.resolve(groups, params),
                                        grads, params, kind)
  np.testing.assert_allclose(scores, _numpy_scores(params, grads, kind),
                             rtol=1e-5, atol=1e-7)


def test_cost_per_structure_counts_member_entries(mlp):
  groups, params, _ = mlp
  costs = optax_gsm.structured.cost_per_structure(groups, params)
  # Dense_0 channel: 784 kernel + 1 bias + 100 next-layer weights.
  np.testing.assert_array_equal(costs[:300], 784 + 1 + 100)
  np.testing.assert_array_equal(costs[300:], 300 + 1 + 10)
  flops = optax_gsm.structured.cost_per_structure(groups, params, "flops")
  np.testing.assert_array_equal(flops[:300], 784 + 100)  # biases: no MACs


def _numpy_select(scores, costs, sizes, budget, kept_cost, floors=None):
  """The documented rule, written as a scan: rank by score per cost (each
  group's ``floors`` best channels first), keep the longest prefix within
  budget, then fill (`_numpy_fill`)."""
  kept, order = _numpy_prefix(scores, costs, sizes, budget, kept_cost, floors)
  for _ in range(_ranking.FILL_ROUNDS):
    kept = _numpy_fill(kept, order, budget, kept_cost)
  return kept


def _numpy_fill(kept, order, budget, kept_cost):
  """One fill round: of the structures whose own addition fits in what is
  left, in ranking order, the longest run that fits together."""
  left = budget - kept_cost(kept)
  fits = []
  for i in order:
    alone = kept.copy()
    alone[i] = True
    if not kept[i] and kept_cost(alone) - kept_cost(kept) <= left:
      fits.append(i)
  for count in range(len(fits), 0, -1):
    grown = kept.copy()
    grown[fits[:count]] = True
    if kept_cost(grown) <= budget:
      return grown
  return kept


def _numpy_prefix(scores, costs, sizes, budget, kept_cost, floors):
  ratio = np.where(costs > 0, scores / np.maximum(costs, 1e-30), np.inf)
  ratio = np.minimum(ratio, np.finfo(np.float32).max)
  forced, start = np.zeros(len(ratio), bool), 0
  for size, floor in zip(sizes, floors or [1] * len(sizes)):
    best = np.argsort(-ratio[start:start + size], kind="stable")[:floor]
    forced[start + best] = True
    start += size
  order = sorted(range(len(ratio)),
                 key=lambda i: (not forced[i], -ratio[i], i))
  length = int(forced.sum())
  while length < len(order):
    kept = np.zeros(len(ratio), bool)
    kept[order[:length + 1]] = True
    if kept_cost(kept) > budget:
      break
    length += 1
  kept = np.zeros(len(ratio), bool)
  kept[order[:length]] = True
  if length == len(order) or order[length] < sum(sizes):
    return kept, order
  # A block overflowed: keep it, and as many of the prefix's channels as fit.
  is_block = np.arange(len(ratio)) >= sum(sizes)
  rank = np.argsort(order)
  for count in range(length, int(forced.sum()) - 1, -1):
    trial = (kept | (rank == length)) & (is_block | (rank < count))
    if kept_cost(trial) <= budget:
      return trial, order
  return kept, order


def _brute_added_costs(kept_cost):
  """What each structure alone adds, by one kept cost per structure."""
  def added(kept):
    alone = jnp.logical_or(kept[None], jnp.eye(kept.shape[0], dtype=bool))
    return jax.vmap(kept_cost)(alone) - kept_cost(kept)
  return added


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(st.data())
def test_selection_is_the_budgeted_prefix_of_the_ranking_then_fill(data):
  sizes = tuple(data.draw(st.lists(st.integers(1, 6), min_size=1,
                                   max_size=3)))
  count = sum(sizes) + data.draw(st.integers(0, 2))
  scores = np.asarray(data.draw(st.lists(
      st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]), min_size=count,
      max_size=count)), np.float32)
  costs = np.asarray(data.draw(st.lists(
      st.sampled_from([1.0, 2.0, 4.0]), min_size=count, max_size=count)),
      np.float32)
  budget = float(data.draw(st.integers(0, int(costs.sum()))))
  # Overlapping structures: a kept cost that is not a plain sum.
  shared = data.draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))  # exact sums
  kept_cost = lambda kept: (kept * costs).sum() - shared * kept[0] * kept[-1]
  floors = tuple(data.draw(st.integers(1, size)) for size in sizes)
  kept = _ranking.select_structures(
      jnp.asarray(scores), costs, sizes, budget, kept_cost,
      _brute_added_costs(kept_cost), floors)
  flat = np.concatenate([np.asarray(k) for k in kept.channels]
                        + [np.asarray(kept.blocks)])
  np.testing.assert_array_equal(flat, _numpy_select(
      scores, costs, sizes, budget,
      lambda kept: kept_cost(kept.astype(np.float32)), floors))


@pytest.mark.parametrize("name", ["lenet5", "resnet", "gqa", "nnx_scan"])
def test_kept_and_added_costs_match_the_masks(name):
  # One pass over the params against one kept cost per structure: blocks
  # (whole leaves and stack rows), heads, channels, FLOPs and params.
  case = structured_cases.case(name)
  groups = optax_gsm.structured.channel_groups(
      case.apply, case.variables, structured_cases.example_input(case))
  params = case.variables
  keep = structured_cases.random_keep(groups, seed=3)
  flat = jnp.asarray(np.concatenate(list(keep.channels) + [keep.blocks]))
  for cost in ("flops", "params"):
    plan = _ranking.plan(groups, params, cost)
    kept_cost = _ranking.kept_cost_fn(plan)
    # Counted per axis, what the masks count entry by entry (on the host in
    # float64, as the budget check counts).
    exact = optax_gsm.structured.model_cost(groups, params, keep, cost)[1]
    np.testing.assert_allclose(kept_cost(flat), exact, rtol=1e-6)
    np.testing.assert_allclose(_groups.kept_cost(
        plan.resolved.layout, plan.unit_costs, np.asarray(flat), np), exact,
        rtol=1e-12)
    added = _ranking.added_costs_fn(plan)(flat)
    brute = _brute_added_costs(kept_cost)(flat)
    np.testing.assert_allclose(np.where(flat, 0, added),
                               np.where(flat, 0, brute), rtol=1e-6)
    assert np.all(np.where(flat, 0, added) <= plan.costs)


def test_a_layer_at_the_budget_edge_is_kept_in_place_of_channels():
  # A layer's cost counts its entries in kept heads and neurons, so a layer
  # ranked below every channel enters the prefix with all of them at once:
  # at C = 4 no layer of 3 would fit, and the prefix alone would keep none.
  case = structured_cases.case("nnx_scan")
  x = structured_cases.example_input(case)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  params = case.variables
  assert [b.name for b in groups.blocks] == [
      "layers[0]", "layers[1]", "layers[2]"]
  plan = _ranking.plan(groups, params, "flops")
  channels = sum(plan.resolved.sizes)
  scores = jnp.concatenate([jnp.ones([channels]), jnp.zeros([3])])
  budget = plan.total / 4
  kept_cost = _ranking.kept_cost_fn(plan)
  prefix = np.arange(len(plan.costs)) < channels
  assert kept_cost(jnp.asarray(prefix | (np.arange(len(prefix)) == channels))
                   ) > budget
  keep = jax.jit(lambda s: _ranking.select(plan, s, budget))(scores)
  flat = np.concatenate(list(keep.channels) + [keep.blocks])
  np.testing.assert_array_equal(keep.blocks, [True, False, False])
  cost = float(kept_cost(jnp.asarray(flat)))
  assert cost <= budget
  # Within one channel of the budget: the lowest-ranked channels went.
  assert budget - cost <= plan.costs[:channels].max()
  np.testing.assert_array_equal(flat, _numpy_select(
      np.asarray(scores), plan.costs, plan.resolved.sizes, budget,
      lambda kept: float(kept_cost(jnp.asarray(kept)))))


def _steps(tx, params, loss, count, jit):
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  for _ in range(count):
    grads = jax.grad(loss)(params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_update_matches_a_numpy_reference(mlp):
  groups, params, loss = mlp
  beta, decay, passive, lr = 0.9, 1e-3, 5e-2, 0.1
  tx = optax_gsm.structured.structured_gsm_sgd(lr, groups, 3.0, momentum=beta,
                         weight_decay=decay, passive_weight_decay=passive,
                         unprunable_weight_decay=1e-4)
  state = tx.init(params)
  momentum = jax.tree.map(np.zeros_like, params)
  costs = optax_gsm.structured.cost_per_structure(groups, params)
  total = sum(np.size(w) for w in jax.tree.leaves(params))

  def kept_cost(flat):
    keep = optax_gsm.structured.StructureMask((flat[:300], flat[300:]),
                                   np.zeros(0, bool))
    return optax_gsm.structured.model_cost(groups, params, keep)[1]

  for _ in range(3):
    grads = jax.grad(loss)(params)
    keep = _numpy_select(_numpy_scores(params, grads, "taylor"), costs,
                         (300, 100), total / 3.0, kept_cost)
    mask = _groups.entry_masks(
        _groups.resolve(groups, params), optax_gsm.structured.StructureMask(
            (keep[:300], keep[300:]), np.zeros(0, bool)), params)
    expected = {}
    for layer in params:
      expected[layer] = {}
      for name in params[layer]:
        w, g = np.asarray(params[layer][name]), np.asarray(grads[layer][name])
        active_decay = decay if name == "kernel" else 1e-4
        touched = layer != "Dense_2" or name == "kernel"
        m = np.asarray(mask[layer][name]) if touched else True
        direction = np.where(m, g + active_decay * w, passive * w)
        momentum[layer][name] = beta * momentum[layer][name] + direction
        expected[layer][name] = w - lr * momentum[layer][name]
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5,
                                                         atol=1e-7),
                 params, expected)


@pytest.mark.slow
@pytest.mark.parametrize("name,cost", [("resnet", "params"),
                                       ("resnet", "flops"), ("vit", "flops"),
                                       ("gpt", "flops")])
def test_members_move_together_and_budget_holds(name, cost):
  case = structured_cases.case(name)
  x = structured_cases.example_input(case, 1)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  params = case.variables["params"]
  loss = lambda p: jnp.mean(case.apply({**case.variables, "params": p}, x)
                            ** 2)
  tx = optax_gsm.structured.structured_gsm_sgd(0.05, groups, 2.0, cost=cost)
  _, state = _steps(tx, params, loss, 2, jit=True)
  gsm_state = state[0][0]
  masks = _groups.entry_masks(_groups.resolve(groups, params),
                              gsm_state.kept, params)
  jax.tree.map(np.testing.assert_array_equal, gsm_state.mask, masks)
  before, after = optax_gsm.structured.model_cost(groups, params, gsm_state.kept,
                                           cost)
  assert after <= before / 2.0  # the shrunk model's exact cost
  flat = np.concatenate([np.asarray(k) for k in gsm_state.kept.channels]
                        + [np.asarray(gsm_state.kept.blocks)])
  assert 0 < flat.sum() < len(flat)


@pytest.mark.slow  # ~7 s: compiles the structured update twice; CI runs it
def test_jit_and_no_jit_agree(mlp):
  groups, params, loss = mlp
  tx = optax_gsm.structured.structured_gsm_sgd(0.1, groups, 4.0, momentum=0.9,
                         weight_decay=1e-3)
  jitted, jit_state = _steps(tx, params, loss, 3, jit=True)
  plain, plain_state = _steps(tx, params, loss, 3, jit=False)
  jax.tree.map(np.testing.assert_array_equal, jit_state[0][0].kept,
               plain_state[0][0].kept)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               jitted, plain)


def test_freeze_keeps_the_saliency_choice(mlp):
  groups, params, loss = mlp
  tx = optax_gsm.structured.structured_gsm_sgd(0.1, groups, 4.0,
                                               freeze_mask_at=1)
  at_freeze, _ = _steps(tx, params, loss, 1, jit=True)
  _, state_two = _steps(tx, params, loss, 2, jit=True)
  _, state_four = _steps(tx, params, loss, 4, jit=True)
  # At the freeze step the kept set is the one-shot Taylor choice on the
  # params and gradients of that step, and it stays.
  _, taylor = optax_gsm.structured.prune_structures(
      at_freeze, groups, 4.0, saliency="taylor",
      grads=jax.grad(loss)(at_freeze))
  for state in (state_two, state_four):
    jax.tree.map(np.testing.assert_array_equal, state[0][0].kept, taylor)


def test_a_dead_unit_with_large_weights_is_not_kept_at_the_freeze(mlp):
  # A ReLU unit that never fires has no gradient, so no Taylor saliency,
  # whatever its weights: kept alone in a layer, it would cut the model off.
  groups, params, loss = mlp
  dead = {**params,
          "Dense_0": {"kernel": params["Dense_0"]["kernel"].at[:, 0].mul(10),
                      "bias": params["Dense_0"]["bias"].at[0].set(-1e3)},
          "Dense_1": {**params["Dense_1"],
                      "kernel": params["Dense_1"]["kernel"].at[0].mul(10)}}
  assert not np.any(np.asarray(jax.grad(loss)(dead)["Dense_0"]["bias"][0]))
  tx = optax_gsm.structured.structured_gsm_sgd(0.1, groups, 4.0,
                                               freeze_mask_at=0)
  _, state = _steps(tx, dead, loss, 1, jit=True)
  assert not state[0][0].kept.channels[0][0]
  _, magnitude = optax_gsm.structured.prune_structures(dead, groups, 4.0)
  assert magnitude.channels[0][0]  # the largest unit: kept by magnitude


def test_total_steps_leaves_removed_structures_exactly_zero(mlp):
  groups, params, loss = mlp
  tx = optax_gsm.structured.structured_gsm_sgd(0.1, groups, 4.0, total_steps=10)
  trained, state = _steps(tx, params, loss, 10, jit=True)
  keep = optax_gsm.structured.kept_structures(state)
  assert not all(np.all(k) for k in keep.channels)
  # The masked model is the trained one: shrinking it loses nothing.
  masked = optax_gsm.structured.mask_structures({"params": trained}, groups, keep)
  jax.tree.map(np.testing.assert_array_equal, masked["params"], trained)


def test_inject_hyperparams_traces_the_ratio(mlp):
  groups, params, loss = mlp
  tx = optax.inject_hyperparams(optax_gsm.structured.structured_gsm_sgd)(
      learning_rate=0.1, groups=groups, compression_ratio=4.0)
  injected, state = _steps(tx, params, loss, 1, jit=True)
  plain, plain_state = _steps(
      optax_gsm.structured.structured_gsm_sgd(0.1, groups, 4.0), params, loss,
      1, jit=True)
  jax.tree.map(np.testing.assert_array_equal,
               optax_gsm.structured.kept_structures(state),
               optax_gsm.structured.kept_structures(plain_state))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               injected, plain)


@pytest.mark.slow  # traces and shrinks a whole LeNet-5
def test_structure_cost_is_the_shrunk_models_size():
  case = structured_cases.case("lenet5")
  x = jnp.ones(case.input_shape)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  keep = structured_cases.random_keep(groups, 3)
  before, after = optax_gsm.structured.model_cost(groups, case.variables["params"],
                                           keep)
  small, _ = optax_gsm.structured.shrink(case.variables, groups, keep)
  assert before == sum(np.size(w) for w in jax.tree.leaves(
      case.variables["params"]))
  assert after == sum(np.size(w) for w in jax.tree.leaves(small["params"]))


@pytest.mark.parametrize("decay", [None, 0.0, 0.9])
def test_averaged_saliency_ranks_by_more_than_the_last_batch(decay):
  import flax.linen as nn
  model = nn.Sequential([nn.Dense(2), nn.relu, nn.Dense(1)])
  x = jnp.ones((1, 3))
  params = jax.tree.map(jnp.ones_like, model.init(jax.random.key(0), x))
  groups = optax_gsm.structured.channel_groups(model.apply, params, x)
  # Each hidden unit costs 5 of the 11 parameters: 1.8x keeps one of two.
  tx = optax_gsm.structured.structured_gsm(groups, 1.8,
                                           saliency_decay=decay)
  state = tx.init(params)
  square = np.zeros(2)
  # With all weights 1, a unit's Taylor saliency is the sum of its
  # gradients: unit 0 leads by far on the first batch, unit 1 a little on
  # the second.
  for first_kernel_row in ([10.0, 1.0], [1.0, 2.0]):
    grads = jax.tree.map(jnp.zeros_like, params)
    grads["params"]["layers_0"]["kernel"] = grads["params"]["layers_0"][
        "kernel"].at[0].set(jnp.asarray(first_kernel_row))
    _, state = tx.update(grads, state, params)
    square = (decay or 0.0) * square + (1 - (decay or 0.0)) * np.square(
        first_kernel_row)
  gsm_state = state[0]
  np.testing.assert_allclose(gsm_state.saliency_square, square, rtol=1e-6)
  kept = optax_gsm.structured.kept_structures(state).channels[0]
  np.testing.assert_array_equal(kept, [True, False] if decay else
                                [False, True])


@pytest.mark.parametrize("name,bypassed", [
    ("resnet", {"stage0_block0/conv1", "stage0_block1/conv1",
                "stage1_block1/conv1", "stage2_block1/conv1"}),
    ("vit", {"layer0/attention/query", "layer0/mlp_in",
             "layer1/attention/query", "layer1/mlp_in"})])
def test_auto_floor_spares_the_groups_a_shortcut_bypasses(name, bypassed):
  # The inner channels of identity-shortcut branches, not the stream or a
  # projection block's, which cut the network at width zero.
  case = structured_cases.case(name)
  groups = optax_gsm.structured.channel_groups(
      case.apply, case.variables, structured_cases.example_input(case))
  assert {g.name for g in groups.channels if g.bypassed} == bypassed
  # Still marked once the blocks are no longer ranked.
  groups = groups.without([b.name for b in groups.blocks])
  assert {g.name for g in groups.channels if g.bypassed} == bypassed
  params = case.variables["params"]
  floors = _ranking.plan(groups, params, "flops", "auto", 2.0).floors
  assert [f == 1 for f in floors] == [g.bypassed for g in groups.channels]
  assert optax_gsm.structured.min_kept_channels(
      groups, params, 2.0, cost="flops") == dict(
          zip([g.name for g in groups.channels], floors))
  with pytest.raises(ValueError, match="compression_ratio"):
    optax_gsm.structured.min_kept_channels(groups, params, 0.5)
  # A share the user gives holds for every group.
  assert min(_ranking.plan(groups, params, "flops", 0.5, 2.0).floors) > 1


def test_a_position_in_two_structures_is_a_clear_error(mlp):
  groups, params, _ = mlp
  first = groups.channels[0]
  # A hand-written group claiming the first layer's outputs again.
  twice = dataclasses.replace(groups, channels=groups.channels + (
      dataclasses.replace(first, name="again"),))
  with pytest.raises(ValueError, match="'Dense_0/bias' along axis 0 is in "
                     f"'{first.name}' and in 'again'"):
    optax_gsm.structured.structured_gsm(twice, 2.0).init(params)


def test_bad_arguments_are_clear_errors(mlp):
  groups, params, _ = mlp
  with pytest.raises(ValueError, match="compression_ratio.*channels every "
                     "group keeps"):
    optax_gsm.structured.structured_gsm(groups, 1000.0).init(params)
  # 2x fits one channel per group, not half of them (and the rest).
  optax_gsm.structured.structured_gsm(groups, 2.0).init(params)
  with pytest.raises(ValueError, match="most it can be is"):
    optax_gsm.structured.structured_gsm(
        groups, 2.0, min_kept_share=0.6).init(params)
  with pytest.raises(ValueError, match="`min_kept_share`"):
    optax_gsm.structured.structured_gsm(groups, 2.0, min_kept_share=1.5)
  injected = optax.inject_hyperparams(optax_gsm.structured.structured_gsm_sgd)
  with pytest.raises(TypeError, match="static_args=\\('min_kept_share',\\)"):
    jax.jit(injected(0.1, groups, 2.0, min_kept_share=0.1).init)(params)
  jax.jit(optax.inject_hyperparams(
      optax_gsm.structured.structured_gsm_sgd, static_args=("min_kept_share",))(
          0.1, groups, 2.0, min_kept_share=0.1).init)(params)
  for decay in (-0.1, 1.0):
    with pytest.raises(ValueError, match="`saliency_decay`"):
      optax_gsm.structured.structured_gsm_adamw(0.1, groups, 2.0,
                                                saliency_decay=decay)
  with pytest.raises(TypeError, match="static_args=\\('saliency_decay',\\)"):
    jax.jit(injected(0.1, groups, 2.0, saliency_decay=0.9).init)(params)
  with pytest.raises(ValueError, match="`cost` must be one of"):
    optax_gsm.structured.structured_gsm(groups, 2.0, cost="latency")
  with pytest.raises(ValueError, match="`saliency` of structures"):
    optax_gsm.structured.structured_gsm(groups, 2.0, saliency="random")
  with pytest.raises(ValueError, match="not of these variables"):
    optax_gsm.structured.structured_gsm(groups, 2.0).init({"other": jnp.ones((3, 3))})


def test_active_mask_reads_a_structured_state(mlp):
  groups, params, loss = mlp
  tx = optax_gsm.structured.structured_gsm_sgd(0.1, groups, 4.0)
  _, state = _steps(tx, params, loss, 1, jit=True)
  mask = optax_gsm.active_mask(state, params)
  jax.tree.map(np.testing.assert_array_equal, mask, state[0][0].mask)
  assert not bool(mask["Dense_0"]["kernel"].all())


def test_init_under_eval_shape_and_map_params(mlp):
  groups, params, _ = mlp
  tx = optax_gsm.structured.structured_gsm_sgd(0.1, groups, 4.0)
  state = tx.init(params)
  abstract = jax.eval_shape(tx.init, params)
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  # What users map over an optimizer state: each params-like tree (the
  # momentum and the mask, which shard like the params), nothing else.
  marked = optax.tree.map_params(tx, lambda w: "param", state,
                                 transform_non_params=lambda _: "other")
  assert set(jax.tree.leaves(marked[0][1].trace)) == {"param"}
  assert set(jax.tree.leaves(marked[0][0].mask)) == {"param"}
  assert marked[0][0].count == "other"


@pytest.mark.parametrize("jit", [True, False])
def test_structured_adamw_matches_a_numpy_reference(mlp, jit):
  # Adam's moments of the gradient masked to the kept structures (the masks
  # the state reports), then AdamW's decoupled decay and the learning rate.
  groups, params, loss = mlp
  lr, b1, b2, eps, decay = 1e-2, 0.9, 0.99, 1e-8, 1e-3
  tx = optax_gsm.structured.structured_gsm_adamw(
      lr, groups, 4.0, b1=b1, b2=b2, eps=eps, weight_decay=decay)
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  expected = jax.tree.map(np.asarray, params)
  first = jax.tree.map(np.zeros_like, expected)
  second = jax.tree.map(np.zeros_like, expected)
  for t in range(1, 4):
    grads = jax.grad(loss)(params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    masks = optax_gsm.structured._structured_gsm.structured_states(
        state)[0].mask
    direction = jax.tree.map(lambda g, m: np.where(m, g, 0.0), grads, masks)
    first = jax.tree.map(lambda m, d: b1 * m + (1 - b1) * d, first,
                         direction)
    second = jax.tree.map(lambda v, d: b2 * v + (1 - b2) * d * d, second,
                          direction)
    expected = jax.tree.map(
        lambda w, m, v, t=t: w - lr * (m / (1 - b1 ** t) / (
            np.sqrt(v / (1 - b2 ** t)) + eps) + decay * w),
        expected, first, second)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5,
                                                         atol=2e-7),
                 params, expected)


def test_structured_adamw_lossless_on_a_transformer():
  # Heads, MLP neurons and branches of a ViT under one FLOPs budget; with
  # total_steps the removed structures end exactly zero, so the shrunk
  # model is the trained one.
  case = structured_cases.case("vit")
  x = structured_cases.example_input(case, 2)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  loss = lambda p: jnp.mean((case.apply({"params": p}, x) - 1.0) ** 2)
  tx = optax_gsm.structured.structured_gsm_adamw(
      1e-3, groups, 2.0, cost="flops", total_steps=10)
  params, state = _steps(tx, case.variables["params"], loss, 10, jit=True)
  keep = optax_gsm.structured.kept_structures(state)
  kinds = [g.kind for g in groups.channels]
  assert "heads" in kinds
  before, after = optax_gsm.structured.model_cost(groups, params, keep,
                                                  "flops")
  assert after <= before / 2.0
  variables = {"params": params}
  small, widths = optax_gsm.structured.shrink(variables, groups, keep)
  np.testing.assert_allclose(case.rebuild(widths)(small, x),
                             case.apply(variables, x), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet", "gpt"])
def test_block_saliency_of_parts_does_not_cancel(name):
  # The sum of the parts' |sum g w| is at least the block's |sum g w|
  # (triangle inequality); channel scores do not change.
  case = structured_cases.case(name)
  x = structured_cases.example_input(case, 3)
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x)
  params = case.variables["params"]
  loss = lambda p: jnp.mean(case.apply({**case.variables, "params": p}, x)
                            ** 2)
  resolved = _groups.resolve(groups, params)
  grads = jax.grad(loss)(params)
  total = _ranking.structure_scores(resolved, grads, params, "taylor")
  parts = jax.jit(lambda g, p: _ranking.structure_scores(
      resolved, g, p, "taylor", "parts"))(grads, params)
  channels = sum(g.size for g in groups.channels)
  np.testing.assert_allclose(parts[:channels], total[:channels], rtol=1e-5)
  assert len(groups.blocks) > 0
  assert np.all(np.asarray(parts[channels:])
                >= np.asarray(total[channels:]) * (1 - 1e-5))
  assert np.any(np.asarray(parts[channels:]) > 1.5 * np.asarray(
      total[channels:]))
  with pytest.raises(ValueError, match="block_saliency"):
    optax_gsm.structured.structured_gsm(groups, 2.0, block_saliency="sum")


def test_every_group_keeps_its_floor_whatever_the_ranking(mlp):
  groups, params, loss = mlp
  # Only the first layer's kernel has a gradient: the second layer's
  # channels all rank last: without a floor it keeps its best one and the
  # few the budget's remainder fills.
  grads = jax.tree.map(jnp.zeros_like, params)
  grads["Dense_0"]["kernel"] = jnp.ones_like(grads["Dense_0"]["kernel"])
  assert _ranking.floors((300, 100), 0.1) == (30, 10)
  kept = {}
  for share in (0.0, 0.1):
    tx = optax_gsm.structured.structured_gsm(groups, 6.0, min_kept_share=share)
    _, state = jax.jit(tx.update)(grads, tx.init(params), params)
    keep = optax_gsm.structured.kept_structures(state)
    kept[share] = [int(k.sum()) for k in keep.channels]
    before, after = optax_gsm.structured.model_cost(groups, params, keep)
    assert after <= before / 6
  assert kept[0.0][1] < 10 <= kept[0.1][1]
  assert kept[0.1][0] < kept[0.0][0]  # the floor is paid for by the budget


def test_auto_floor_is_half_the_uniform_width_within_half_the_budget(mlp):
  groups, params, _ = mlp
  sizes = (300, 100)
  # C = 1: half of every group (150 + 50 channels) costs under half the
  # model, and is the floor as it stands.
  assert _ranking.plan(groups, params, "params", "auto", 1.0).floors == (
      150, 50)
  # C = 6: 0.5 / sqrt(6) of each group (62 and 21 channels: 784 * 62
  # weights) is over half of what the ranking chooses; the floor is lowered
  # until it fits, and a share 0.01 larger would not.
  plan = _ranking.plan(groups, params, "params", "auto", 6.0)
  least = _ranking.minimum_cost(_ranking.plan(groups, params, "params", None))
  limit = least + 0.5 * (plan.total / 6.0 - least)
  assert _ranking.minimum_cost(plan) <= limit
  share = plan.floors[0] / 300
  assert share < 0.5 / np.sqrt(6.0)
  wider = plan._replace(floors=_ranking.floors(sizes, share + 0.01))
  assert _ranking.minimum_cost(wider) > limit
  # A schedule's final C is unknown when the optimizer is built: one channel.
  assert _ranking.plan(groups, params, "params", "auto", None).floors == (1, 1)
  assert _ranking.constant_ratio(lambda step: 6.0, None) is None
  assert _ranking.constant_ratio(None, 0.75) == 4.0
  # The default holds in training: every group keeps its floor.
  grads = jax.tree.map(jnp.zeros_like, params)
  grads["Dense_0"]["kernel"] = jnp.ones_like(grads["Dense_0"]["kernel"])
  tx = optax_gsm.structured.structured_gsm(groups, 6.0)
  _, state = jax.jit(tx.update)(grads, tx.init(params), params)
  kept = optax_gsm.structured.kept_structures(state).channels
  assert [int(k.sum()) >= f for k, f in zip(kept, plan.floors)] == [True] * 2
  with pytest.raises(ValueError, match="`min_kept_share` must be 'auto'"):
    optax_gsm.structured.structured_gsm(groups, 6.0, min_kept_share="half")
