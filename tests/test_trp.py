"""Trained Rank Pruning: the sub-gradient, the projection, the split."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import optax_gsm
from optax_gsm.low_rank import _trp


def _numpy_view(kernel, scheme):
  if kernel.ndim == 2:
    return kernel
  kh, kw, cin, cout = kernel.shape
  if scheme == "channel":
    return np.stack([kernel[..., o].transpose(2, 0, 1).ravel()
                     for o in range(cout)])
  out = np.zeros((cin * kh, cout * kw))
  for i in range(cin):
    for h in range(kh):
      for o in range(cout):
        for w in range(kw):
          out[i * kh + h, o * kw + w] = kernel[h, w, i, o]
  return out


def _numpy_rank(s, energy):
  fractions = np.cumsum(s ** 2) / np.sum(s ** 2)
  return int(np.argmax(fractions >= energy - 1e-7)) + 1


KERNELS = [("dense", (12, 7), "channel"), ("conv", (3, 3, 4, 6), "channel"),
           ("conv", (3, 2, 4, 6), "spatial")]


@pytest.mark.parametrize("name,shape,scheme", KERNELS)
def test_matrix_views_match_the_paper_layouts(name, shape, scheme):
  kernel = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  view = _trp.to_matrix(jnp.asarray(kernel), scheme)
  np.testing.assert_array_equal(view, _numpy_view(kernel, scheme))
  np.testing.assert_array_equal(_trp.from_matrix(view, shape, scheme), kernel)


@pytest.mark.parametrize("name,shape,scheme", KERNELS)
def test_nuclear_subgradient_matches_numpy_svd(name, shape, scheme):
  kernel = np.random.default_rng(1).normal(size=shape).astype(np.float32)
  u, s, vt = np.linalg.svd(_numpy_view(kernel, scheme).astype(np.float64),
                           full_matrices=False)
  r = _numpy_rank(s, 0.7)
  expected = u[:, :r] @ vt[:r]
  got = _trp.to_matrix(_trp.nuclear_subgradient(jnp.asarray(kernel), 0.7,
                                                scheme), scheme)
  np.testing.assert_allclose(got, expected, atol=2e-5)


def _params():
  rng = np.random.default_rng(2)
  return {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 6)),
                                         jnp.float32),
                   "bias": jnp.zeros(6)},
          "dense": {"kernel": jnp.asarray(rng.normal(size=(24, 10)),
                                          jnp.float32),
                    "bias": jnp.zeros(10)}}


@pytest.mark.parametrize("jit", [False, True])
def test_nuclear_norm_adds_the_term_every_few_steps(jit):
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optax_gsm.low_rank.add_nuclear_norm(3e-2, energy=0.8, every=2)
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  first, state = update(grads, state, params)
  second, state = update(grads, state, params)
  for name in ("conv", "dense"):
    term = _trp.nuclear_subgradient(params[name]["kernel"], 0.8, "channel")
    np.testing.assert_allclose(first[name]["kernel"], 1.0 + 3e-2 * term,
                               atol=1e-6)
    np.testing.assert_array_equal(second[name]["kernel"], 1.0)
    np.testing.assert_array_equal(first[name]["bias"], 1.0)  # not a kernel


def test_nuclear_norm_chains_with_sgd():
  params = _params()
  tx = optax.chain(optax_gsm.low_rank.add_nuclear_norm(1e-2),
                   optax.sgd(0.1, momentum=0.9))
  state = tx.init(params)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  # With zero loss gradient the step descends the nuclear norm alone.
  before = jnp.linalg.norm(_trp.to_matrix(params["dense"]["kernel"],
                                          "channel"), "nuc")
  after = jnp.linalg.norm(optax.apply_updates(params, updates)["dense"][
      "kernel"], "nuc")
  assert after < before


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_low_rank_project_keeps_the_energy_asked_for(scheme):
  params = _params()
  projected = optax_gsm.low_rank.truncate_rank(params, energy=0.8, scheme=scheme)
  for name in ("conv", "dense"):
    view = np.asarray(_trp.to_matrix(params[name]["kernel"], scheme))
    s = np.linalg.svd(view, compute_uv=False)
    r = _numpy_rank(s, 0.8)
    new = np.asarray(_trp.to_matrix(projected[name]["kernel"], scheme))
    assert np.linalg.matrix_rank(new, tol=1e-4) == r
    assert np.sum(new ** 2) / np.sum(view ** 2) >= 0.8 - 1e-5
  np.testing.assert_array_equal(projected["dense"]["bias"],
                                params["dense"]["bias"])
  jitted = jax.jit(lambda p: optax_gsm.low_rank.truncate_rank(p, energy=0.8,
                                                        scheme=scheme))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               jitted, projected)


def _conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, strides, padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _factorised(x, factors, scheme, padding):
  (ph, pw) = padding
  if factors.first.ndim == 2:
    return x @ factors.first @ factors.second
  if scheme == "channel":
    return _conv(_conv(x, factors.first, (1, 1), [ph, pw]), factors.second,
                 (1, 1), [(0, 0), (0, 0)])
  return _conv(_conv(x, factors.first, (1, 1), [ph, (0, 0)]), factors.second,
               (1, 1), [(0, 0), pw])


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("full", [True, False])
def test_decomposed_layers_compute_the_truncated_kernel(scheme, full):
  params = _params()
  energy = 1.0 if full else 0.7
  factors, ranks = optax_gsm.low_rank.low_rank_decompose(params, energy=energy,
                                                scheme=scheme)
  assert set(ranks) == {"conv/kernel", "dense/kernel"}
  x = 0.2 * jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
  padding = ((1, 1), (1, 1))
  conv = params["conv"]["kernel"]
  reference = conv if full else _trp.truncated(conv, energy, scheme)
  np.testing.assert_allclose(
      _factorised(x, factors["conv/kernel"], scheme, padding),
      _conv(x, reference, (1, 1), list(padding)), atol=1e-5)
  dense = params["dense"]["kernel"]
  reference = dense if full else _trp.truncated(dense, energy, scheme)
  xd = 0.2 * jax.random.normal(jax.random.key(1), (3, 24))
  np.testing.assert_allclose(_factorised(xd, factors["dense/kernel"], scheme,
                                         padding), xd @ reference, atol=1e-5)
  info = factors["dense/kernel"]
  assert info.params_before == 240
  assert info.params_after == info.rank * (24 + 10)


def test_threshold_rank_counts_relative_singular_values():
  kernel = jnp.asarray(np.diag([10.0, 5.0, 0.4, 0.1]), jnp.float32)
  factors, ranks = optax_gsm.low_rank.low_rank_decompose({"kernel": kernel},
                                                threshold=0.05)
  assert ranks == {"kernel": 2}
  assert factors["kernel"].first.shape == (4, 2)


def test_bad_arguments_are_clear_errors():
  params = _params()
  with pytest.raises(ValueError, match="`energy` must be in"):
    optax_gsm.low_rank.truncate_rank(params, energy=0.0)
  with pytest.raises(ValueError, match="`threshold` must be in"):
    optax_gsm.low_rank.low_rank_decompose(params, threshold=1.5)
  with pytest.raises(ValueError, match="`strength` must be in"):
    optax_gsm.low_rank.add_nuclear_norm(-1.0)
  with pytest.raises(ValueError, match="`scheme` must be one of"):
    optax_gsm.low_rank.add_nuclear_norm(1e-3, scheme="rows")
  with pytest.raises(ValueError, match="'w/kernel' has shape \\(2, 3, 4\\)"):
    optax_gsm.low_rank.truncate_rank({"w": {"kernel": jnp.ones((2, 3, 4))}})
  with pytest.raises(ValueError, match="needs the params"):
    tx = optax_gsm.low_rank.add_nuclear_norm(1e-3)
    tx.update(params, tx.init(params))


def test_projection_in_the_chain_lands_on_the_projection_plus_the_step():
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optax.chain(optax.sgd(0.1),
                   optax_gsm.low_rank.low_rank_projection(energy=0.8, every=2))
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  after = optax.apply_updates(params, updates)
  projected = optax_gsm.low_rank.truncate_rank(params, energy=0.8)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b - 0.1, atol=1e-5),
               after, projected)
  updates, state = tx.update(grads, state, after)  # step 1: no projection
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.1, atol=1e-7)


def test_fixed_ranks_project_to_exactly_those_ranks():
  params = _params()
  projected = optax_gsm.low_rank.truncate_rank(params, ranks={"dense/kernel": 2})
  assert np.linalg.matrix_rank(np.asarray(projected["dense"]["kernel"]),
                               tol=1e-4) == 2
  np.testing.assert_array_equal(projected["conv"]["kernel"],
                                params["conv"]["kernel"])
  with pytest.raises(ValueError, match="names no prunable kernel"):
    optax_gsm.low_rank.truncate_rank(params, ranks={"head/kernel": 2})


@pytest.mark.parametrize("make", [
    lambda: optax_gsm.low_rank.add_nuclear_norm(1e-2, every=100),
    lambda: optax_gsm.low_rank.low_rank_projection(every=100)])
def test_every_m_runs_the_svd_only_on_its_steps(make):
  # Regression: `jnp.where` computed the SVD on every step, whatever m was.
  tx = make()
  params = _params()
  jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params), params)
  top_level = {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}
  assert "eigh" not in top_level and "cond" in top_level
  assert "eigh" in str(jaxpr)  # inside the branch
  # Step 0 adds the term, step 1 adds nothing.
  zeros = jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  first, state = tx.update(zeros, state, params)
  second, _ = tx.update(zeros, state, params)
  assert any(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(first))
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(second))


def _lapack_threads() -> int:
  from optax_gsm.low_rank import _lapack
  return max(c.num_threads
             for c in _lapack._lapack_blas_pools().lib_controllers)


@pytest.mark.parametrize("make", [
    lambda **k: optax_gsm.low_rank.add_nuclear_norm(1e-2, **k),
    lambda **k: optax_gsm.low_rank.low_rank_projection(**k)])
def test_building_on_cpu_sets_the_lapack_threads(make):
  before = optax_gsm.low_rank.limit_lapack_threads(2)
  try:
    make(lapack_threads=None)  # leaves the process alone
    assert _lapack_threads() == 2
    make()
    assert _lapack_threads() == 1
    with pytest.raises(ValueError, match="`lapack_threads` must be an int"):
      make(lapack_threads=0)
  finally:
    optax_gsm.low_rank.limit_lapack_threads(before)


def test_limit_lapack_threads_returns_what_it_replaced():
  before = optax_gsm.low_rank.limit_lapack_threads(3)
  try:
    assert optax_gsm.low_rank.limit_lapack_threads(1) == 3
    assert _lapack_threads() == 1
    with pytest.raises(ValueError, match="`threads` must be an int >= 1"):
      optax_gsm.low_rank.limit_lapack_threads(0)
  finally:
    optax_gsm.low_rank.limit_lapack_threads(before)
