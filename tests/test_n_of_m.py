"""N:M GSM: exactly n of every m consecutive input entries are active."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optax_gsm
from optax_gsm import _rules


def _numpy_n_of_m(scores, n, m):
  """Loop over every group of m along axis -2; ties to the earlier entry."""
  kept = np.zeros(scores.shape, bool)
  flat = scores.reshape(-1, scores.shape[-2], scores.shape[-1])
  out = kept.reshape(flat.shape)
  for b in range(flat.shape[0]):
    for col in range(flat.shape[2]):
      for start in range(0, flat.shape[1], m):
        group = flat[b, start:start + m, col]
        order = sorted(range(m), key=lambda i: (-group[i], i))
        for i in order[:n]:
          out[b, start + i, col] = True
  return out.reshape(scores.shape)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(st.data())
def test_mask_matches_numpy_with_ties(data):
  # m = 40: the sort, past the pairwise ranking's 32.
  n, m = data.draw(st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (4, 8),
                                    (5, 40)]))
  shape = (data.draw(st.integers(1, 2)), m * data.draw(st.integers(1, 3)),
           data.draw(st.integers(1, 3)))
  values = data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.0]),
                              min_size=int(np.prod(shape)),
                              max_size=int(np.prod(shape))))
  scores = np.asarray(values, np.float32).reshape(shape)
  np.testing.assert_array_equal(_rules.n_of_m_mask(jnp.asarray(scores), n, m),
                                _numpy_n_of_m(scores, n, m))


@pytest.mark.parametrize("n_of_m", [(2, 4), (3, 8), (7, 40)])
def test_mask_matches_numpy_on_a_conv_kernel_with_ties(n_of_m):
  # Both rankings: pairwise (m <= 32) and sorted (m = 40), on a 4-D kernel.
  n, m = n_of_m
  rng = np.random.default_rng(m)
  scores = rng.integers(0, 3, (3, 2, 2 * m, 5)).astype(np.float32)
  np.testing.assert_array_equal(
      jax.jit(_rules.n_of_m_mask, static_argnums=(1, 2))(
          jnp.asarray(scores), n, m),
      _numpy_n_of_m(scores, n, m))


def _model():
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(8, 6)),
                                            jnp.float32),
                      "bias": jnp.zeros(6)},
            "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 5)),
                                           jnp.float32)}}
  grads = jax.tree.map(lambda w: jnp.asarray(
      rng.normal(size=w.shape), jnp.float32), params)
  return params, grads


def _groups_of(mask, m):
  moved = np.moveaxis(np.asarray(mask), -2, -1)
  return moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m)).sum(-1)


@pytest.mark.parametrize("jit", [False, True])
def test_gsm_keeps_exactly_n_of_every_m(jit):
  params, grads = _model()
  tx = optax_gsm.n_of_m_gsm((2, 4), momentum=0.9)
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  _, state = update(grads, state, params)
  for name in ("dense", "conv"):
    mask = state[0].mask[name]["kernel"]
    np.testing.assert_array_equal(_groups_of(mask, 4), 2)
    scores = np.abs(np.asarray(grads[name]["kernel"])
                    * np.asarray(params[name]["kernel"]))
    np.testing.assert_array_equal(mask, _numpy_n_of_m(scores, 2, 4))
  assert bool(state[0].mask["dense"]["bias"].all())
  assert int(state[0].num_active) == (48 + 180) // 2


def test_prune_from_state_and_from_arguments_gives_the_pattern():
  params, grads = _model()
  tx = optax.chain(optax_gsm.n_of_m_gsm((1, 4)),
                   optax.scale_by_learning_rate(0.1))
  state = tx.init(params)
  _, state = tx.update(grads, state, params)
  pruned, mask = optax_gsm.prune(params, opt_state=state)
  for name in ("dense", "conv"):
    np.testing.assert_array_equal(_groups_of(mask[name]["kernel"], 4), 1)
    np.testing.assert_array_equal(
        mask[name]["kernel"],
        _numpy_n_of_m(np.abs(np.asarray(params[name]["kernel"])), 1, 4))
  _, direct = optax_gsm.prune(params, n_of_m=(1, 4))
  jax.tree.map(np.testing.assert_array_equal, direct, mask)
  assert int(np.count_nonzero(pruned["dense"]["kernel"])) == 12


def test_bad_n_of_m_is_a_clear_error():
  params, _ = _model()
  with pytest.raises(ValueError, match="multiple of 3; 'conv/kernel'"):
    optax_gsm.n_of_m_gsm((1, 3)).init(params)
  with pytest.raises(ValueError, match="1 <= n <= m"):
    optax_gsm.n_of_m_gsm((5, 4))
  with pytest.raises(ValueError, match="pair"):
    optax_gsm.n_of_m_gsm(2)
  with pytest.raises(ValueError, match="multiple of 8"):
    optax_gsm.prune(params, n_of_m=(2, 8))


def test_non_finite_scores_rank_lowest_as_in_the_global_ranking():
  # Regression: N:M ranked +inf highest while the global top-Q ranks every
  # non-finite score lowest.
  scores = jnp.asarray([[jnp.inf], [1.0], [jnp.nan], [2.0]])
  np.testing.assert_array_equal(_rules.n_of_m_mask(scores, 2, 4)[:, 0],
                                [False, True, False, True])
  flat = {"w": scores}
  np.testing.assert_array_equal(optax_gsm.top_q_mask(flat, 2)["w"][:, 0],
                                [False, True, False, True])
