"""`sparsity_report` counts non-zeros right, as data and as a table."""

import json

import jax.numpy as jnp

import optax_gsm


def test_counts_per_leaf_and_totals():
  params = {"dense": {"kernel": jnp.zeros((4, 5)).at[0, :3].set(1.0),
                      "bias": jnp.array([0.0, 1.0, 2.0, 0.0, 0.0])},
            "conv": {"kernel": jnp.ones((2, 2, 1, 2))}}
  report = optax_gsm.sparsity_report(params)
  by_path = {leaf.path: leaf for leaf in report.leaves}
  assert by_path["dense/kernel"].nonzero == 3
  assert by_path["dense/kernel"].size == 20
  assert by_path["dense/bias"].nonzero == 2
  assert not by_path["dense/bias"].prunable
  assert report.prunable_size == 28 and report.prunable_nonzero == 11
  assert report.size == 33 and report.nonzero == 13
  assert abs(report.compression_ratio - 28 / 11) < 1e-12
  assert abs(report.sparsity - 17 / 28) < 1e-12
  data = json.loads(json.dumps(report.to_dict()))
  assert data["prunable_nonzero"] == 11 and len(data["leaves"]) == 3
  table = str(report)
  assert "dense/kernel" in table and "4x5" in table
  assert "2.5x" in table


def test_counts_a_mask():
  mask = {"w": jnp.array([[True, False], [False, False]])}
  assert optax_gsm.sparsity_report(mask).prunable_nonzero == 1
