"""One source of truth: prune, report and mask read GSM's own state, also
inside multi_transform, masked, inject_hyperparams and MultiSteps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_gsm


class TextClassifier(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(64, 16)(tokens).mean(1)
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(8)(x)


def setup_multi_transform(num_steps=3):
  model = TextClassifier()
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (8, 5)))
  labels = jnp.arange(8) % 8
  params = model.init(jax.random.PRNGKey(0), tokens)["params"]
  labels_tree = jax.tree_util.tree_map_with_path(
      lambda path, _: "adam" if "Embed" in str(path) else "gsm", params)
  tx = optax.multi_transform(
      {"gsm": optax_gsm.gsm_sgd(0.1, 10.0, momentum=0.9),
       "adam": optax.adam(1e-3)}, labels_tree)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, tokens), labels).mean())(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(num_steps):
    params, state = step(params, state)
  return params, state


@pytest.mark.slow
def test_prune_after_multi_transform_ranks_what_gsm_ranked():
  params, state = setup_multi_transform()
  num_gsm = 16 * 32 + 32 * 8
  pruned, mask = optax_gsm.prune(params, opt_state=state)
  kept = [int(mask[name]["kernel"].sum()) for name in ("Dense_0", "Dense_1")]
  assert sum(kept) == num_gsm // 10
  assert all(k > 0 for k in kept)  # regression: 0/512 and 0/256 were kept
  np.testing.assert_array_equal(pruned["Embed_0"]["embedding"],
                                params["Embed_0"]["embedding"])
  # The kept entries are the global |w| top-Q over the GSM kernels only.
  gsm_only = {k: v for k, v in params.items() if k != "Embed_0"}
  _, expected = optax_gsm.prune(gsm_only, 10.0)
  for name in ("Dense_0", "Dense_1"):
    np.testing.assert_array_equal(mask[name]["kernel"],
                                  expected[name]["kernel"])
  report = optax_gsm.sparsity_report(pruned, opt_state=state)
  assert report.prunable_size == num_gsm
  assert report.prunable_nonzero == num_gsm // 10


def test_two_gsm_groups_each_keep_their_own_q_and_merge_masks():
  params = {"a": {"kernel": jnp.asarray(np.random.default_rng(0).normal(
      size=(10, 10)), jnp.float32)},
            "b": {"kernel": jnp.asarray(np.random.default_rng(1).normal(
                size=(20, 10)), jnp.float32)}}
  tx = optax.multi_transform({"one": optax_gsm.gsm(4.0), "two":
                              optax_gsm.gsm(20.0)}, {"a": "one", "b": "two"})
  state = tx.init(params)
  _, state = tx.update(params, state, params)
  with pytest.raises(KeyError):  # optax refuses several masks ...
    optax.tree_utils.tree_get(state, "mask")
  mask = optax_gsm.active_mask(state, params)  # ... this merges them
  assert int(mask["a"]["kernel"].sum()) == 25
  assert int(mask["b"]["kernel"].sum()) == 10
  _, kept = optax_gsm.prune(params, opt_state=state)
  assert int(kept["a"]["kernel"].sum()) == 25
  assert int(kept["b"]["kernel"].sum()) == 10


def test_state_found_under_inject_hyperparams_and_multi_steps():
  params = {"w": jnp.arange(1.0, 101.0).reshape(10, 10)}
  for tx in (optax.inject_hyperparams(optax_gsm.gsm_sgd)(
      learning_rate=0.1, compression_ratio=5.0),
             optax.MultiSteps(optax_gsm.gsm_sgd(0.1, 5.0), 2)):
    state = tx.init(params)
    for _ in range(2):
      _, state = tx.update(params, state, params)
    _, mask = optax_gsm.prune(params, opt_state=state)
    assert int(mask["w"].sum()) == 20
    assert bool(mask["w"].ravel()[-20:].all())


def test_bad_uses_are_clear_errors():
  params = {"w": jnp.ones((4, 4))}
  with pytest.raises(ValueError, match="holds no GSMState"):
    optax_gsm.prune(params, opt_state=optax.sgd(0.1).init(params))
  state = optax_gsm.gsm(2.0).init(params)
  with pytest.raises(ValueError, match="not both"):
    optax_gsm.prune(params, 2.0, opt_state=state)
  with pytest.raises(ValueError, match="not made for these `params`"):
    optax_gsm.prune({"v": jnp.ones((4, 4))}, opt_state=state)
  with pytest.raises(ValueError, match="not a schedule"):
    optax_gsm.prune(params, optax.linear_schedule(1.0, 4.0, 10))


@pytest.mark.slow
def test_nnx_optimizer_state_drives_the_prune():
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.emb = nnx.Embed(20, 8, rngs=rngs)
      self.hidden = nnx.Linear(8, 32, rngs=rngs)
      self.bn = nnx.BatchNorm(32, rngs=rngs)
      self.out = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, tokens):
      x = self.hidden(self.emb(tokens).mean(1))
      return self.out(nnx.relu(self.bn(x)))

  model = Net(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax_gsm.gsm_sgd(0.1, 8.0), wrt=nnx.Param)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 20, (16, 3)))
  labels = jnp.arange(16) % 4

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(
        m(tokens), labels).mean())(model)
    optimizer.update(model, grads)

  for _ in range(3):
    step(model, optimizer)
  state = nnx.as_pure(optimizer.opt_state)
  params = nnx.state(model, nnx.Param)
  pruned, mask = optax_gsm.prune(params, opt_state=state)
  q = (20 * 8 + 8 * 32 + 32 * 4) // 8
  report = optax_gsm.sparsity_report(pruned, opt_state=state)
  assert report.prunable_nonzero == q
  assert {leaf.path for leaf in report.leaves if leaf.prunable} == {
      "emb/embedding", "hidden/kernel", "out/kernel"}
  nnx.update(model, pruned)  # the pruned state goes straight back in
  assert int(jnp.count_nonzero(model.hidden.kernel[...])) == int(
      mask["hidden"]["kernel"][...].sum())
