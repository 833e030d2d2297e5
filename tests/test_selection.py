"""Exactness of the global top-Q selection against a NumPy reference."""

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_gsm
from optax_gsm import _selection


def reference_mask(leaves, q):
  """Top-q by (score desc, position asc); non-finite lowest; -0 == +0."""
  flat = np.concatenate([np.asarray(x, np.float32).ravel() for x in leaves])
  finite = np.isfinite(flat)
  order_key = np.where(finite, flat, -np.inf).astype(np.float64)
  order_key = np.where(order_key == 0, 0.0, order_key)  # -0.0 -> 0.0
  # Non-finite below every finite value, including -inf scores themselves.
  rank_class = np.where(finite, 0, 1)
  order = np.lexsort((np.arange(flat.size), -order_key, rank_class))
  mask = np.zeros(flat.size, bool)
  mask[order[:q]] = True
  out, start = [], 0
  for x in leaves:
    out.append(mask[start:start + np.size(x)].reshape(np.shape(x)))
    start += np.size(x)
  return out


def assert_matches_reference(leaves, q):
  expected = reference_mask(leaves, q)
  got = jax.jit(optax_gsm.top_q_mask)(leaves, q)
  assert sum(int(np.sum(m)) for m in got) == q
  for e, g in zip(expected, got):
    np.testing.assert_array_equal(np.asarray(g), e)


DISTRIBUTIONS = {
    "taylor_like": lambda rng, n: np.abs(rng.normal(size=n) * rng.normal(size=n)),
    "heavy_ties": lambda rng, n: rng.integers(0, 4, n).astype(np.float64),
    "all_zeros": lambda rng, n: np.zeros(n),
    "one_outlier": lambda rng, n: np.where(np.arange(n) == n // 2, 1e30,
                                           rng.uniform(size=n)),
    "denormals": lambda rng, n: rng.integers(0, 50, n) * 1e-45,
    "signed_zeros": lambda rng, n: np.where(rng.uniform(size=n) < 0.5, -0.0, 0.0),
    "negative": lambda rng, n: rng.normal(size=n),
    "non_finite": lambda rng, n: np.where(
        rng.uniform(size=n) < 0.2,
        rng.choice([np.nan, np.inf, -np.inf], n), rng.uniform(size=n)),
    "half_zeros": lambda rng, n: np.where(rng.uniform(size=n) < 0.5, 0.0,
                                          rng.uniform(size=n)),
}


@pytest.mark.parametrize("fraction", [0.0, 0.01, 1 / 60, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("distribution", sorted(DISTRIBUTIONS))
def test_matches_numpy_reference(distribution, fraction):
  rng = np.random.default_rng(0)
  sizes = [(3, 5), (2, 3, 4, 5), (7,), (400, 30)]
  total = sum(int(np.prod(s)) for s in sizes)
  flat = DISTRIBUTIONS[distribution](rng, total).astype(np.float32)
  leaves, start = [], 0
  for shape in sizes:
    leaves.append(flat[start:start + int(np.prod(shape))].reshape(shape))
    start += int(np.prod(shape))
  assert_matches_reference(leaves, int(fraction * total))

def test_ties_broken_by_leaf_then_position():
  scores = {"a": jnp.ones((2, 2)), "b": jnp.ones(3)}
  mask = optax_gsm.top_q_mask(scores, 5)
  np.testing.assert_array_equal(mask["a"], np.ones((2, 2), bool))
  np.testing.assert_array_equal(mask["b"], [True, False, False])

def test_ties_across_interleaved_leaves_of_equal_shape():
  # Leaves of one shape are tie-broken together (one search per shape):
  # every cut point, in every leaf, must still follow leaf order.
  rng = np.random.default_rng(3)
  shapes = [(3, 4), (5,), (3, 4), (2,), (3, 4), (5,)]
  leaves = [rng.integers(0, 3, s).astype(np.float32) for s in shapes]
  select = jax.jit(optax_gsm.top_q_mask)
  for q in range(sum(x.size for x in leaves) + 1):
    expected = reference_mask(leaves, q)
    for e, g in zip(expected, select(leaves, q)):
      np.testing.assert_array_equal(np.asarray(g), e, err_msg=f"q={q}")

def test_traced_q_and_jit_agree_with_eager():
  scores = [jnp.asarray(np.random.default_rng(1).uniform(size=(50, 20)))]
  jitted = jax.jit(optax_gsm.top_q_mask)
  for q in [0, 1, 17, 999, 1000]:
    chex.assert_trees_all_equal(jitted(scores, jnp.int32(q)),
                                optax_gsm.top_q_mask(scores, q))

def test_q_is_clipped():
  scores = [jnp.arange(10.0)]
  assert int(optax_gsm.top_q_mask(scores, -3)[0].sum()) == 0
  assert int(optax_gsm.top_q_mask(scores, 99)[0].sum()) == 10

def test_kth_largest():
  rng = np.random.default_rng(2)
  leaves = [rng.uniform(size=(30, 7)).astype(np.float32),
            rng.uniform(size=11).astype(np.float32)]
  flat = np.sort(np.concatenate([x.ravel() for x in leaves]))[::-1]
  for k in [1, 5, 100, flat.size]:
    assert float(jax.jit(optax_gsm.kth_largest)(leaves, k)) == flat[k - 1]
  assert float(optax_gsm.kth_largest(leaves, 0)) == np.inf

def test_deterministic_across_runs():
  rng = np.random.default_rng(3)
  leaves = [rng.integers(0, 3, (64, 64)).astype(np.float32)]
  first = jax.jit(optax_gsm.top_q_mask)(leaves, 1000)
  for _ in range(3):
    chex.assert_trees_all_equal(jax.jit(optax_gsm.top_q_mask)(leaves, 1000),
                                first)

def test_few_probes_on_smooth_scores():
  rng = np.random.default_rng(4)
  scores = [np.abs(rng.normal(size=200_000) * rng.normal(size=200_000))
            .astype(np.float32)]
  selection = jax.jit(optax_gsm.select_top)(scores, 200_000 // 60)
  # Plain bisection over the float bits would need 31 counting passes.
  assert int(selection.num_passes) <= 8

def test_ordered_key_is_monotone():
  values = np.array([-np.inf, -3.0, -1e-45, -0.0, 0.0, 1.4e-45, 2.8e-45, 1e-38,
                     1.0, 3.4e38], np.float32)
  keys = np.asarray(_selection.ordered_key(jnp.asarray(values)))
  assert keys[0] == np.iinfo(np.int32).min  # non-finite lowest
  assert keys[3] == keys[4]  # -0.0 ranks as +0.0
  assert np.all(np.diff(np.delete(keys, 3)[1:]) > 0)

def test_rejects_empty():
  with pytest.raises(ValueError, match="no leaves"):
    optax_gsm.top_q_mask({}, 1)


# Values are drawn, shapes come from a fixed set: each new shape would compile
# the selection again (seconds), for no new behaviour.
SHAPE_SETS = (
    [(7,)],
    [(3, 5), (1,), (2, 2, 4)],
    [(9, 9), (0,), (4, 1, 3), (6,)],
    [(3, 4), (5,), (3, 4), (2,), (3, 4)],
)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    shapes=st.sampled_from(SHAPE_SETS),
    q_fraction=st.floats(0.0, 1.0),
    palette=st.sampled_from(["continuous", "few_values", "zeros"]),
    seed=st.integers(0, 2**16),
)
@pytest.mark.slow
def test_exact_q_property(shapes, q_fraction, palette, seed):
  rng = np.random.default_rng(seed)
  leaves = []
  for shape in shapes:
    if palette == "continuous":
      x = rng.lognormal(0, 4, shape)
    elif palette == "few_values":
      x = rng.integers(0, 3, shape).astype(np.float64)
    else:
      x = np.zeros(shape)
    leaves.append(x.astype(np.float32))
  total = sum(x.size for x in leaves)
  assert_matches_reference(leaves, int(round(q_fraction * total)))


@pytest.mark.parametrize("q", [1, 777, 38_550, 77_099])
def test_ties_cut_deep_inside_a_large_leaf(q):
  # Three values over 77,100 entries: the cut falls among tens of thousands
  # of ties, so the cut search narrows a wide bracket over many steps.
  rng = np.random.default_rng(q)
  leaves = [rng.integers(0, 3, (300, 257)).astype(np.float32),
            rng.integers(0, 3, (5, 3, 2)).astype(np.float32)]
  assert_matches_reference(leaves, q)


def test_selection_needs_no_temporary_beyond_the_keys():
  # XLA's CPU backend materialises an int32 copy of a bool operand that a
  # single-operand reduction counts; every count of the selection (the tie
  # counts and the tie-break's per-axis counts included) is a variadic one,
  # and the tie-break's row selection an `any`, which counts nothing, so the
  # only parameter-sized temporary is the int32 key buffer.
  scores = [jnp.ones((256, 256)), jnp.ones((128, 256))]
  total = sum(s.size for s in scores)
  compiled = jax.jit(optax_gsm.select_top).lower(scores, 100).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp <= 4 * total * 1.1, (temp, 4 * total)
