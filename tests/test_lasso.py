"""LASSO channel pruning (He et al. 2017): the solver against scikit-learn,
the channel search, exact recovery of a known subset, reconstruction that
improves with kept channels, residual networks (linen and NNX) and errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import optax_gsm
from optax_gsm.lasso import _lasso


def _lasso_problem(seed, rows=60, size=7):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(rows, size))
  y = z[:, :3] @ np.array([1.5, -2.0, 0.7]) + 0.3 * rng.normal(size=rows)
  return z, y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("penalty", [0.0, 0.05, 0.3, 1.0])
def test_lasso_matches_scikit_learn(seed, penalty):
  sklearn = pytest.importorskip("sklearn.linear_model")
  z, y = _lasso_problem(seed)
  reference = sklearn.Lasso(alpha=penalty, fit_intercept=False, tol=1e-12,
                            max_iter=100_000).fit(z, y).coef_ if penalty else (
                                np.linalg.lstsq(z, y, rcond=None)[0])
  gram = jnp.asarray(z.T @ z / len(z), jnp.float32)
  correlation = jnp.asarray(z.T @ y / len(z), jnp.float32)
  found = _lasso.lasso(gram, correlation, jnp.float32(penalty),
                       jnp.zeros(7, jnp.float32))
  np.testing.assert_allclose(found, reference, atol=2e-4)
  np.testing.assert_array_equal(np.asarray(found) != 0, reference != 0)


def test_lasso_jit_and_no_jit_agree():
  z, y = _lasso_problem(3)
  args = (jnp.asarray(z.T @ z / 60, jnp.float32),
          jnp.asarray(z.T @ y / 60, jnp.float32), jnp.float32(0.1),
          jnp.zeros(7, jnp.float32))
  with jax.disable_jit():
    eager = _lasso.lasso(*args)
  np.testing.assert_allclose(_lasso.lasso(*args), eager, atol=1e-6)


@pytest.mark.parametrize("count", [1, 2, 4, 6])
@pytest.mark.parametrize("tolerance", [0.0, 0.5])
def test_select_channels_count_within_window(count, tolerance):
  z, y = _lasso_problem(4, size=12)
  z = z + 0.2 * np.random.default_rng(5).normal(size=z.shape)
  kept, penalty = _lasso.select_channels(
      jnp.asarray(z.T @ z / 60, jnp.float32),
      jnp.asarray(z.T @ y / 60, jnp.float32), count, tolerance)
  assert count <= kept.sum() <= int((1 + tolerance) * count)
  assert penalty > 0


def _subset_problem(seed, size=6, window=4, outputs=5, rows=400,
                    subset=(1, 3, 4)):
  """A layer whose output is made by ``subset``'s channels exactly."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(rows, size * window))
  matrix = rng.normal(size=(size * window, outputs))
  channel = np.repeat(np.arange(size), window)
  within = np.isin(channel, subset)
  target = x[:, within] @ matrix[within]
  return _lasso._Problem(jnp.asarray(x, jnp.float32),
                         jnp.asarray(matrix, jnp.float32),
                         jnp.asarray(target, jnp.float32), channel,
                         lambda m: m)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_the_subset_that_makes_the_output_and_reconstructs_it(seed):
  problem = _subset_problem(seed)
  z, y = _lasso._regressors(problem, 6)
  z = z.reshape(-1, 6)
  kept, _ = _lasso.select_channels(z.T @ z / len(z), z.T @ y.reshape(-1)
                                   / len(z), 3, 0.0)
  np.testing.assert_array_equal(np.flatnonzero(kept), [1, 3, 4])
  kernel, error, norm = _lasso._refit(problem, kept)
  assert error / norm < 1e-8
  np.testing.assert_array_equal(np.asarray(kernel)[~np.isin(
      problem.channel, [1, 3, 4])], 0)


def test_regressors_sum_to_the_layer_output():
  problem = _subset_problem(7)
  problem = problem._replace(channel=np.where(
      np.arange(24) < 4, -1, problem.channel))  # one channel outside
  z, y = _lasso._regressors(problem, 6)
  full = problem.rows @ problem.matrix
  outside = problem.rows[:, :4] @ problem.matrix[:4]
  np.testing.assert_allclose(z.sum(-1) + outside, full, atol=1e-4)
  np.testing.assert_allclose(y, problem.target - outside, atol=1e-4)


def _sparse_consumer(kind):
  """A two-layer model whose second layer reads only channels 1, 3, 4."""
  if kind == "dense":
    model = nn.Sequential([nn.Dense(6), nn.relu, nn.Dense(3)])
    x = jax.random.normal(jax.random.key(1), (300, 5))
    consumer = "layers_2"
  else:
    model = nn.Sequential([nn.Conv(6, (3, 3)), nn.relu, nn.Conv(3, (3, 3))])
    x = jax.random.normal(jax.random.key(1), (40, 6, 6, 2))
    consumer = "layers_2"
  variables = model.init(jax.random.key(0), x[:1])
  kernel = variables["params"][consumer]["kernel"]
  unused = ~np.isin(np.arange(6), [1, 3, 4])
  kernel = kernel.at[..., unused, :].set(0.0)
  variables = jax.tree.map(lambda v: v, variables)
  variables["params"][consumer]["kernel"] = kernel
  return model, variables, x


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_end_to_end_recovers_the_subset_exactly(kind):
  model, variables, x = _sparse_consumer(kind)
  groups = optax_gsm.structured.channel_groups(model.apply, variables, x[:1])
  small, report = optax_gsm.lasso.prune_channels(
      model.apply, variables, groups, x, widths={"layers_0": 3},
      lasso_tolerance=0.0)
  widths = report.widths
  assert widths == {"layers_0": 3}
  np.testing.assert_array_equal(np.flatnonzero(report.keep.channels[0]),
                                [1, 3, 4])
  assert report.layers[0].relative_error < 1e-4
  small_model = model.clone(layers=[
      type(layer)(3, *([layer.kernel_size] if kind == "conv" else []))
      if i == 0 else layer for i, layer in enumerate(model.layers)])
  np.testing.assert_allclose(small_model.apply(small, x[:8]),
                             model.apply(variables, x[:8]), atol=1e-4)


@pytest.mark.slow
def test_reconstruction_error_falls_with_kept_channels():
  model = nn.Sequential([nn.Dense(12), nn.relu, nn.Dense(6), nn.relu,
                         nn.Dense(3)])
  x = jax.random.normal(jax.random.key(1), (400, 8))
  variables = model.init(jax.random.key(0), x[:1])
  groups = optax_gsm.structured.channel_groups(model.apply, variables, x[:1])
  errors = []
  for width in range(1, 13):
    _, report = optax_gsm.lasso.prune_channels(
        model.apply, variables, groups, x, widths={"layers_0": width},
        lasso_tolerance=0.0)
    errors.append(report.layers[0].relative_error)
  assert np.all(np.diff(errors) <= 1e-4), errors
  assert errors[-1] < 1e-4 < errors[0]


def _resnet():
  cases = pytest.importorskip("tests.structured_cases", exc_type=ImportError)
  return cases.linen_case("resnet")


@pytest.mark.slow
def test_residual_network_everything_kept_is_the_same_model():
  case = _resnet()
  x = jax.random.normal(jax.random.key(2), (160, 8, 8, 3))
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x[:1])
  small, report = optax_gsm.lasso.prune_channels(
      case.apply, case.variables, groups, x, keep=1.0)
  widths = report.widths
  assert len(report.layers) == 6  # the inner channels of the 6 blocks
  assert {name for name, _ in report.skipped} == {
      "conv", "stage1_block0/shortcut_conv", "stage2_block0/shortcut_conv"}
  np.testing.assert_allclose(case.rebuild(widths)(small, x),
                             case.apply(case.variables, x), rtol=1e-3,
                             atol=1e-3)


@pytest.mark.slow
def test_residual_network_reconstruction_beats_removal_alone():
  case = _resnet()
  x = jax.random.normal(jax.random.key(2), (100, 8, 8, 3))
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x[:1])
  small, report = optax_gsm.lasso.prune_channels(
      case.apply, case.variables, groups, x, keep=0.5, lasso_tolerance=0.0)
  widths = report.widths
  assert all(layer.channels_after == layer.channels_before // 2
             for layer in report.layers)
  reference = case.apply(case.variables, x)
  reconstructed = case.rebuild(widths)(small, x)
  removed = case.apply(optax_gsm.structured.mask_structures(case.variables, groups,
                                                 report.keep), x)
  error = lambda y: float(jnp.linalg.norm(y - reference))
  assert error(reconstructed) < 0.5 * error(removed)


class _NnxNet(nnx.Module):
  def __init__(self, width=8, *, rngs):
    self.conv1 = nnx.Conv(2, width, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(width, rngs=rngs)
    self.conv2 = nnx.Conv(width, 6, (3, 3), rngs=rngs)
    self.head = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    return self.head(nnx.relu(self.conv2(x)).mean((1, 2)))


@pytest.mark.slow
def test_nnx_model():
  model = _NnxNet(rngs=nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)
  apply = lambda s, x: nnx.merge(graphdef, s)(x)
  x = jax.random.normal(jax.random.key(1), (40, 6, 6, 2))
  groups = optax_gsm.structured.channel_groups(apply, state, x[:1])
  small, report = optax_gsm.lasso.prune_channels(
      apply, state, groups, x, widths={"conv1": 4}, lasso_tolerance=0.0)
  widths = report.widths
  assert widths["conv1"] == 4 and report.layers[0].channels_after == 4
  small_model = _NnxNet(4, rngs=nnx.Rngs(0))
  small_model.eval()
  small_graphdef, _ = nnx.split(small_model)
  out = nnx.merge(small_graphdef, small)(x)
  assert out.shape == (40, 3) and bool(jnp.all(jnp.isfinite(out)))
  assert report.layers[0].relative_error < 1.0


def _dense_case(inputs=50):
  model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
  x = jax.random.normal(jax.random.key(1), (inputs, 5))
  variables = model.init(jax.random.key(0), x[:1])
  return model, variables, x, optax_gsm.structured.channel_groups(model.apply,
                                                       variables, x[:1])


@pytest.mark.parametrize("keep", [0.0, -0.5, 1.5])
def test_keep_outside_range(keep):
  model, variables, x, groups = _dense_case()
  with pytest.raises(ValueError, match="keep"):
    optax_gsm.lasso.prune_channels(model.apply, variables, groups, x,
                                  keep=keep)


@pytest.mark.parametrize("widths, match", [
    ({"nope": 2}, "not channel groups"), ({"layers_0": 0}, "widths"),
    ({"layers_0": 9}, "1 to 8")])
def test_bad_widths(widths, match):
  model, variables, x, groups = _dense_case()
  with pytest.raises(ValueError, match=match):
    optax_gsm.lasso.prune_channels(model.apply, variables, groups, x,
                                  widths=widths)


def test_keep_and_widths_exclusive():
  model, variables, x, groups = _dense_case()
  with pytest.raises(ValueError, match="exactly one"):
    optax_gsm.lasso.prune_channels(model.apply, variables, groups, x)
  with pytest.raises(ValueError, match="exactly one"):
    optax_gsm.lasso.prune_channels(model.apply, variables, groups, x,
                                  keep=0.5, widths={"layers_0": 2})


def test_too_few_samples():
  model, variables, x, groups = _dense_case(inputs=4)
  with pytest.raises(ValueError, match="Too few samples.*samples_per_input"):
    optax_gsm.lasso.prune_channels(model.apply, variables, groups, x,
                                  keep=1.0)


@pytest.mark.slow
def test_residual_stream_cannot_be_named():
  case = _resnet()
  x = jax.random.normal(jax.random.key(2), (8, 8, 8, 3))
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables, x[:1])
  with pytest.raises(ValueError, match="residual stream"):
    optax_gsm.lasso.prune_channels(case.apply, case.variables, groups, x,
                                  widths={"conv": 4})


def test_layers_stacked_by_scan_are_a_clear_error():
  def apply(params, x):
    layer = lambda h, w: (jax.nn.relu(h @ w), None)
    return jax.lax.scan(layer, x, params["kernel"])[0]

  params = {"kernel": jnp.ones((3, 4, 4))}
  groups = optax_gsm.structured.Groups(channels=(), blocks=(), unprunable=())
  with pytest.raises(NotImplementedError, match="stacked by `scan`"):
    optax_gsm.lasso.prune_channels(apply, params, groups, jnp.ones((8, 4)),
                                   keep=0.5)


@pytest.mark.slow
def test_transformer_mlp_neurons_pruned_heads_skipped_with_the_reason():
  cases = pytest.importorskip("tests.structured_cases", exc_type=ImportError)
  case = cases.case("vit")
  x = jax.random.normal(jax.random.key(5), (64, 784))
  groups = optax_gsm.structured.channel_groups(case.apply, case.variables,
                                               x[:1])
  small, report = optax_gsm.lasso.prune_channels(
      case.apply, case.variables, groups, x, keep=0.5, lasso_tolerance=0.0)
  assert [layer.group for layer in report.layers] == ["layer0/mlp_in",
                                                      "layer1/mlp_in"]
  skipped = dict(report.skipped)
  assert "attention heads" in skipped["layer0/attention/query"]
  reference = case.apply(case.variables, x)
  error = lambda y: float(jnp.linalg.norm(y - reference))
  removed = case.apply(optax_gsm.structured.mask_structures(
      case.variables, groups, report.keep), x)
  assert error(case.rebuild(report.widths)(small, x)) < 0.7 * error(removed)
