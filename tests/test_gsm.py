"""`gsm` and `gsm_sgd` against a NumPy transcription of the official code."""

import functools
import re

import chex
import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_gsm

COMPRESSION = 10.0


def init_params(seed=0):
  """A small conv + dense pytree: two prunable kernels, two biases."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return {
      "conv": {"kernel": 0.3 * jax.random.normal(k1, (3, 3, 1, 4)),
               "bias": jnp.zeros(4)},
      "dense": {"kernel": 0.2 * jax.random.normal(k2, (64, 10)),
                "bias": jnp.zeros(10)},
  }


def loss_fn(params, batch):
  images, labels = batch
  x = jax.lax.conv_general_dilated(
      images.astype(params["conv"]["kernel"].dtype), params["conv"]["kernel"],
      (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["conv"]["bias"]
  x = jax.nn.relu(x).reshape(images.shape[0], -1)
  logits = x @ params["dense"]["kernel"] + params["dense"]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def batches(num_steps, seed=0):
  rng = np.random.default_rng(seed)
  return [(jnp.asarray(rng.normal(size=(8, 6, 6, 1)), jnp.float32),
           jnp.asarray(rng.integers(0, 10, 8)))
          for _ in range(num_steps)]


GRAD = jax.jit(jax.grad(loss_fn))
NUM_PRUNABLE = 3 * 3 * 4 + 64 * 10
Q = int(NUM_PRUNABLE // COMPRESSION)


def numpy_gsm_reference(params, data, *, lr, momentum, weight_decay,
                        bias_weight_decay, nesterov):
  """The official GSM step in NumPy: global |g*w| top-Q mask over the
  kernels, masked gradient, then torch.optim.SGD with weight decay."""
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  buffers = jax.tree.map(np.zeros_like, params)
  masks_seen = []
  for batch in data:
    grads = jax.tree.map(np.asarray, GRAD(params, batch))
    kernels = [("conv", "kernel"), ("dense", "kernel")]
    metric = np.concatenate([np.abs(grads[a][b] * params[a][b]).ravel()
                             for a, b in kernels])
    keep = np.zeros(metric.size, bool)
    keep[np.argsort(-metric, kind="stable")[:Q]] = True
    start = 0
    for a, b in kernels:
      size = params[a][b].size
      grads[a][b] = grads[a][b] * keep[start:start + size].reshape(
          params[a][b].shape)
      start += size
    masks_seen.append(keep)
    for a in params:
      for b in params[a]:
        decay = weight_decay if b == "kernel" else bias_weight_decay
        d_p = grads[a][b] + decay * params[a][b]
        buffers[a][b] = momentum * buffers[a][b] + d_p
        d_p = d_p + momentum * buffers[a][b] if nesterov else buffers[a][b]
        params[a][b] = params[a][b] - lr * d_p
  return params, masks_seen


def run_optax(tx, params, data, jit=True):
  state = tx.init(params)

  def step(params, state, batch):
    updates, state = tx.update(GRAD(params, batch), state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step) if jit else step
  masks = []
  for batch in data:
    params, state = step(params, state, batch)
    masks.append(optax.tree_utils.tree_get(state, "mask"))
  return params, state, masks


@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_numpy_transcription_of_official_code(nesterov):
  data = batches(30)
  hyper = dict(lr=0.05, momentum=0.9, weight_decay=5e-3, nesterov=nesterov)
  expected, _ = numpy_gsm_reference(init_params(), data,
                                    bias_weight_decay=1e-3, **hyper)
  tx = optax_gsm.gsm_sgd(
      hyper["lr"], COMPRESSION, momentum=hyper["momentum"],
      nesterov=nesterov, weight_decay=hyper["weight_decay"],
      unprunable_weight_decay=1e-3)
  got, _, _ = run_optax(tx, init_params(), data)
  chex.assert_trees_all_close(got, expected, rtol=2e-4, atol=2e-6)

def test_exactly_q_active_every_step():
  _, _, masks = run_optax(optax_gsm.gsm_sgd(0.05, COMPRESSION),
                          init_params(), batches(10))
  for mask in masks:
    assert int(mask["conv"]["kernel"].sum() + mask["dense"]["kernel"].sum()
               ) == Q
    assert bool(mask["conv"]["bias"].all() and mask["dense"]["bias"].all())

def test_ties_from_zero_gradients_still_give_exactly_q():
  tx = optax_gsm.gsm(sparsity=0.5)
  params = {"w": jnp.ones((10, 10))}
  state = tx.init(params)
  grads = {"w": jnp.zeros((10, 10)).at[0, :3].set(1.0)}
  _, state = tx.update(grads, state, params)
  mask = state[0].mask["w"]
  assert int(mask.sum()) == 50
  assert bool(mask[0, :3].all())  # the three non-zero scores first
  np.testing.assert_array_equal(mask.ravel()[3:50], True)  # then by position

def test_passive_weights_get_decay_only():
  tx = optax_gsm.gsm(compression_ratio=4.0, momentum=0.0, weight_decay=0.1)
  params = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}
  grads = {"w": jnp.full((2, 4), 10.0)}
  updates, state = tx.update(grads, tx.init(params), params)
  expected = np.where(state[0].mask["w"], 10.0, 0.0) + 0.1 * params["w"]
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-6)
  # Taylor saliency |g w| with equal g ranks by |w|: the two largest.
  np.testing.assert_array_equal(state[0].mask["w"].ravel(),
                                [False] * 6 + [True] * 2)

def test_passive_weight_decay_shrinks_only_passive_weights():
  params = {"w": jnp.linspace(0.5, 1.0, 16).reshape(4, 4)}
  grads = {"w": jnp.zeros((4, 4))}

  def train(**kwargs):
    tx = optax_gsm.gsm_sgd(1e-2, 4.0, momentum=0.99, weight_decay=5e-4,
                           saliency="magnitude", **kwargs)
    def step(_, carry):
      w, state = carry
      updates, state = tx.update(grads, state, w)
      return optax.apply_updates(w, updates), state

    w, state = jax.jit(lambda: jax.lax.fori_loop(
        0, 300, step, (params, tx.init(params))))()
    return w["w"], state[0][0].mask["w"]

  paper, mask = train()
  fast, fast_mask = train(passive_weight_decay=2.5e-3)
  np.testing.assert_array_equal(mask, fast_mask)
  np.testing.assert_allclose(fast[mask], paper[mask], rtol=1e-6)
  # The paper's decay leaves them near 0.87x (5e-4 a step); critical
  # damping brings them below 0.6x in the same 300 steps.
  ratio = fast[~mask] / params["w"][~mask]
  assert np.all(np.abs(ratio) < 0.6)
  assert np.all(paper[~mask] / params["w"][~mask] > 0.85)

@pytest.mark.slow
def test_jit_and_no_jit_agree():
  tx = optax_gsm.gsm_sgd(0.05, COMPRESSION, nesterov=True,
                         weight_decay=1e-3, freeze_mask_at=2)
  data = batches(4)
  jitted, jit_state, jit_masks = run_optax(tx, init_params(), data, jit=True)
  eager, eager_state, eager_masks = run_optax(tx, init_params(), data,
                                              jit=False)
  chex.assert_trees_all_close(jitted, eager, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_equal(jit_masks, eager_masks)
  chex.assert_trees_all_equal(jit_state[0][0].num_active,
                              eager_state[0][0].num_active)

def test_update_compiles_once():
  # As Optax's own optimizer tests check: the state keeps its structure,
  # shapes and dtypes, so a jitted update never retraces.
  tx = optax_gsm.gsm_sgd(optax.cosine_decay_schedule(0.05, 10), COMPRESSION,
                         mask_update_every=2, freeze_mask_at=3)
  params = init_params()
  update = jax.jit(chex.assert_max_traces(tx.update, n=1))
  state = tx.init(params)
  for batch in batches(5):
    updates, state = update(GRAD(params, batch), state, params)
    params = optax.apply_updates(params, updates)

def test_state_holds_each_ranked_leaf_position():
  params = {"a": {"bias": jnp.zeros(3), "kernel": jnp.ones((2, 3))},
            "b": {"bias": jnp.zeros(4), "kernel": jnp.ones((3, 4))}}
  state = optax_gsm.gsm(COMPRESSION).init(params)
  positions = jax.tree.map(int, state[0].position)
  assert positions == {"a": {"bias": -1, "kernel": 0},
                       "b": {"bias": -1, "kernel": 1}}

def test_state_has_three_arrays_per_param_leaf():
  # Every state leaf is an output of the jitted update, and XLA's compile
  # time grows with their number: the per-leaf ranking facts are packed
  # into one array per leaf, beside the mask and the momentum.
  params = init_params()
  state = optax_gsm.gsm(COMPRESSION, min_density=0.01).init(params)
  num_leaves = len(jax.tree.leaves(params))
  assert len(jax.tree.leaves(state)) == 3 * num_leaves + 3
  ranked = jax.tree.leaves(state[0].prunable)
  assert sum(map(bool, ranked)) == 2 and len(ranked) == num_leaves
  for low, high, size, flag in zip(
      jax.tree.leaves(state[0].min_active),
      jax.tree.leaves(state[0].max_active),
      [w.size for w in jax.tree.leaves(params)], ranked):
    assert int(high) == size and (int(low) == 0) != bool(flag)

def test_compiled_kernels_grow_with_layouts_not_leaves():
  # XLA compiles each distinct fused kernel anew (tens of ms on CPU): the
  # update of 24 equal layers must reuse the kernels of 8, not add its own
  # per leaf (per-leaf constant positions in the masks added 15 here).
  def distinct_kernels(num_layers):
    params = {f"layer{i}": {"kernel": jnp.ones((16, 16)),
                            "bias": jnp.zeros(16)}
              for i in range(num_layers)}
    tx = optax_gsm.gsm_sgd(0.1, COMPRESSION, weight_decay=5e-4)
    text = jax.jit(tx.update).lower(params, tx.init(params),
                                    params).compile().as_text()
    bodies = set()
    for block in text.split("\n\n"):
      if block.startswith("%fused"):
        body = re.sub(r", metadata=\{[^}]*\}", "",
                      block.split("\n", 1)[1])
        bodies.add(re.sub(r"%[\w.\-]+", "%x", body))
    return len(bodies)

  assert distinct_kernels(24) - distinct_kernels(8) <= 4

def test_update_without_params_is_a_clear_error():
  tx = optax_gsm.gsm(COMPRESSION)
  params = init_params()
  with pytest.raises(ValueError, match="needs the params"):
    tx.update(params, tx.init(params))

@pytest.mark.slow
def test_composes_with_clip_by_global_norm():
  tx = optax.chain(optax.clip_by_global_norm(0.1),
                   optax_gsm.gsm(COMPRESSION),
                   optax.scale_by_learning_rate(0.1))
  params = init_params()
  grads = GRAD(params, batches(1)[0])
  updates, state = tx.update(grads, tx.init(params), params)
  clipped = optax.clip_by_global_norm(0.1).update(grads, None)[0]
  direct, _ = optax_gsm.gsm(COMPRESSION).update(
      clipped, optax_gsm.gsm(COMPRESSION).init(params), params)
  chex.assert_trees_all_close(updates, jax.tree.map(lambda u: -0.1 * u, direct),
                              rtol=1e-6)
  mask = optax.tree_utils.tree_get(state, "mask")
  assert int(mask["dense"]["kernel"].sum() + mask["conv"]["kernel"].sum()) == Q

@pytest.mark.slow
def test_inject_hyperparams_matches_constant():
  data = batches(5)
  plain, _, plain_masks = run_optax(
      optax_gsm.gsm_sgd(0.05, COMPRESSION, momentum=0.9), init_params(), data)
  injected_tx = optax.inject_hyperparams(optax_gsm.gsm_sgd)(
      learning_rate=0.05, compression_ratio=COMPRESSION, momentum=0.9)
  injected, state, masks = run_optax(injected_tx, init_params(), data)
  chex.assert_trees_all_close(injected, plain, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_equal(masks, plain_masks)
  # The ratio is a traced value here: change it between steps.
  state.hyperparams["compression_ratio"] = jnp.asarray(20.0)
  _, state = jax.jit(injected_tx.update)(
      GRAD(injected, data[0]), state, injected)
  mask = optax.tree_utils.tree_get(state, "mask")
  assert int(mask["conv"]["kernel"].sum() + mask["dense"]["kernel"].sum()
             ) == NUM_PRUNABLE // 20

def test_multi_steps_applies_gsm_to_the_mean_gradient():
  data = batches(2)
  params = init_params()
  tx = optax.MultiSteps(optax_gsm.gsm_sgd(0.05, COMPRESSION), 2)
  state = tx.init(params)
  total = jax.tree.map(jnp.zeros_like, params)
  for batch in data:
    grads = GRAD(params, batch)
    total = jax.tree.map(jnp.add, total, grads)
    updates, state = jax.jit(tx.update)(grads, state, params)
  # One GSM step on the mean of the two gradients, from the same params.
  single = optax_gsm.gsm_sgd(0.05, COMPRESSION)
  expected, expected_state = single.update(
      jax.tree.map(lambda g: g / 2, total), single.init(params), params)
  chex.assert_trees_all_close(updates, expected, rtol=1e-6, atol=1e-8)
  inner = state.inner_opt_state[0][0]
  assert int(inner.count) == 1
  chex.assert_trees_all_equal(inner.mask, expected_state[0][0].mask)

def test_schedule_ramps_compression():
  ramp = optax.linear_schedule(1.0, COMPRESSION, transition_steps=4)
  _, _, masks = run_optax(optax_gsm.gsm_sgd(0.05, ramp), init_params(),
                          batches(6))
  active = [int(m["conv"]["kernel"].sum() + m["dense"]["kernel"].sum())
            for m in masks]
  expected = [optax_gsm.num_active(NUM_PRUNABLE, float(ramp(i)))
              for i in range(6)]
  assert active == expected
  assert active[0] == NUM_PRUNABLE and active[-1] == Q

def test_mask_update_every_refreshes_to_that_steps_top_q():
  tx = optax_gsm.gsm_sgd(0.05, COMPRESSION, mask_update_every=3)
  params = init_params()
  state = tx.init(params)
  masks, expected = [], []
  for i, batch in enumerate(batches(6)):
    grads = GRAD(params, batch)
    if i % 3 == 0:  # the top-Q of this step's |g w| over the kernels
      scores = optax_gsm.taylor_saliency(grads, params)
      expected.append(optax_gsm.top_q_mask(
          {name: {"kernel": scores[name]["kernel"]}
           for name in ("conv", "dense")}, Q))
    else:  # the previous mask, kept
      expected.append(masks[-1])
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
    masks.append(optax.tree_utils.tree_get(state, "mask"))
  for got, want in zip(masks, expected):
    for name in ("conv", "dense"):
      np.testing.assert_array_equal(got[name]["kernel"], want[name]["kernel"])
  assert not np.array_equal(masks[0]["dense"]["kernel"],
                            masks[3]["dense"]["kernel"])

def test_freeze_mask_at_fixes_the_magnitude_top_q():
  data = batches(6)
  tx = optax_gsm.gsm_sgd(0.05, COMPRESSION, freeze_mask_at=3)
  params = init_params()
  state = tx.init(params)
  masks = []
  for i, batch in enumerate(data):
    if i == 3:
      expected = optax_gsm.magnitude_mask(params, COMPRESSION)
    updates, state = jax.jit(tx.update)(GRAD(params, batch), state, params)
    params = optax.apply_updates(params, updates)
    masks.append(optax.tree_utils.tree_get(state, "mask"))
  chex.assert_trees_all_equal(masks[3], expected, masks[4], masks[5])
  assert not all(bool(jnp.array_equal(a, b)) for a, b in zip(
      jax.tree.leaves(masks[2]), jax.tree.leaves(masks[3])))
  for mask in masks:
    assert int(mask["conv"]["kernel"].sum() + mask["dense"]["kernel"].sum()
               ) == Q

def test_negative_freeze_step_is_an_error():
  with pytest.raises(ValueError, match="`freeze_mask_at`"):
    optax_gsm.gsm(COMPRESSION, freeze_mask_at=-1)

@pytest.mark.parametrize("param_dtype,momentum_dtype", [
    ("float32", None), ("bfloat16", None), ("bfloat16", "float32"),
    ("float16", "float32")])
def test_dtypes(param_dtype, momentum_dtype):
  params = jax.tree.map(lambda x: x.astype(param_dtype), init_params())
  tx = optax_gsm.gsm_sgd(0.05, COMPRESSION, momentum_dtype=momentum_dtype)
  new_params, state, masks = run_optax(
      tx, params, batches(3))
  chex.assert_trees_all_equal_dtypes(new_params, params)
  expected_momentum_dtype = momentum_dtype or param_dtype
  for leaf in jax.tree.leaves(optax.tree_utils.tree_get(state, "trace")):
    assert leaf.dtype == jnp.dtype(expected_momentum_dtype)
  for mask in masks:
    assert int(mask["conv"]["kernel"].sum() + mask["dense"]["kernel"].sum()
               ) == Q

def test_magnitude_and_custom_saliency():
  params = {"w": jnp.arange(12.0).reshape(3, 4) - 6.0}
  grads = jax.tree.map(jnp.ones_like, params)
  for saliency in ["magnitude",
                   lambda g, p: jax.tree.map(lambda w: jnp.abs(w), p)]:
    tx = optax_gsm.gsm(4.0, saliency=saliency)
    _, state = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(
        state[0].mask["w"].ravel(), np.abs(params["w"].ravel()) >= 5.0)


@pytest.mark.slow
def test_linen_training_loop():
  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(32)(x))
      return nn.Dense(10)(x)

  model = MLP()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, 20)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 16))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  tx = optax_gsm.gsm_sgd(0.1, 8.0, momentum=0.9, weight_decay=1e-4)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  losses = []
  for _ in range(20):
    params, opt_state, value = step(params, opt_state)
    losses.append(float(value))
  assert losses[-1] < losses[0]
  mask = optax.tree_utils.tree_get(opt_state, "mask")
  report = optax_gsm.sparsity_report(mask)
  assert report.prunable_nonzero == (20 * 32 + 32 * 10) // 8
  pruned, _ = optax_gsm.prune(params, 8.0)
  assert optax_gsm.sparsity_report(pruned).prunable_nonzero == 120


@pytest.mark.slow  # trains an NNX model
def test_nnx_optimizer():
  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.hidden = nnx.Linear(20, 32, rngs=rngs)
      self.out = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
      return self.out(nnx.relu(self.hidden(x)))

  model = MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax_gsm.gsm_sgd(0.1, 8.0), wrt=nnx.Param)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, 20)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 16))

  @nnx.jit
  def step(model, optimizer):
    def loss(model):
      return optax.softmax_cross_entropy_with_integer_labels(
          model(x), y).mean()
    value, grads = nnx.value_and_grad(loss)(model)
    optimizer.update(model, grads)
    return value

  losses = [float(step(model, optimizer)) for _ in range(10)]
  assert losses[-1] < losses[0]
  mask = optax.tree_utils.tree_get(nnx.as_pure(optimizer.opt_state),
                                   "mask")
  assert optax_gsm.sparsity_report(mask).prunable_nonzero == 120


BETA, ETA, ETA_OTHER = 0.9, 1e-2, 1e-3
# Shapes from a fixed set (rank >= 2 leaves are prunable), hyper-parameters
# traced: one compilation per shape set and Nesterov flag, not per example.
SHAPE_SETS = (
    [(4, 5)],
    [(3, 4), (4,), (2, 3, 3)],
    [(6, 6), (1, 6), (5,), (2, 2, 2)],
)


@functools.partial(jax.jit, static_argnames="nesterov")
def traced_gsm_update(grads, params, momentum_in, ratio, passive_weight_decay,
                      nesterov):
  tx = optax_gsm.gsm(ratio, momentum=BETA, nesterov=nesterov, weight_decay=ETA,
                     passive_weight_decay=passive_weight_decay,
                     unprunable_weight_decay=ETA_OTHER)
  ranking, trace = tx.init(params)
  state = (ranking, trace._replace(trace=momentum_in))
  return tx.update(grads, state, params)


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(
    shapes=st.sampled_from(SHAPE_SETS),
    ratio=st.sampled_from([1.0, 2.0, 3.7, 10.0, 19.5]),
    grad_kind=st.sampled_from(["normal", "ties", "zeros", "outlier"]),
    nesterov=st.booleans(),
    passive_weight_decay=st.sampled_from([ETA, 0.0, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_update_equations_property(shapes, ratio, grad_kind, nesterov,
                                   passive_weight_decay, seed):
  rng = np.random.default_rng(seed)
  params = [rng.normal(size=s).astype(np.float32) for s in shapes]
  momentum_in = [rng.normal(size=s).astype(np.float32) for s in shapes]
  if grad_kind == "normal":
    grads = [rng.normal(size=s) for s in shapes]
  elif grad_kind == "ties":
    grads = [rng.integers(-1, 2, s) * 1.0 for s in shapes]
  elif grad_kind == "zeros":
    grads = [np.zeros(s) for s in shapes]
  else:
    grads = [np.where(rng.uniform(size=s) < 0.1, 1e20, 1e-3) for s in shapes]
  grads = [g.astype(np.float32) for g in grads]
  flags = [len(s) >= 2 for s in shapes]
  num_prunable = sum(int(np.prod(s)) for s, f in zip(shapes, flags) if f)
  q = optax_gsm.num_active(num_prunable, ratio)

  updates, new_state = traced_gsm_update(
      grads, params, momentum_in, ratio, passive_weight_decay, nesterov)

  masks = new_state[0].mask
  assert sum(int(m.sum()) for m, f in zip(masks, flags) if f) == q
  for g, w, z, m, f, u, new_z in zip(grads, params, momentum_in, masks, flags,
                                     updates, new_state[1].trace):
    m = np.asarray(m)
    if not f:
      assert m.all()
    direction = (np.where(m, g + ETA * w, passive_weight_decay * w) if f
                 else g + ETA_OTHER * w)
    expected_z = BETA * z + direction
    np.testing.assert_allclose(new_z, expected_z, rtol=1e-5, atol=1e-5)
    expected_u = direction + BETA * expected_z if nesterov else expected_z
    np.testing.assert_allclose(u, expected_u, rtol=1e-5, atol=1e-5)
  # The active set is the top-q by |g w| over prunable leaves only.
  scores = [np.abs(g * w) for g, w, f in zip(grads, params, flags) if f]
  selected = np.concatenate([np.asarray(m).ravel()
                             for m, f in zip(masks, flags) if f])
  flat = np.concatenate([s.ravel() for s in scores])
  assert flat[selected].min(initial=np.inf) >= flat[~selected].max(
      initial=-np.inf)

