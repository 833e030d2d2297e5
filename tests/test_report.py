"""`sparsity_report` counts non-zeros right, as data and as a table."""

import json

import jax.numpy as jnp
import numpy as np

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


def test_bytes_match_what_save_sparse_writes(tmp_path):
  rng = np.random.default_rng(0)
  kernel = np.where(rng.uniform(size=(300, 100)) < 0.02,
                    rng.normal(size=(300, 100)), 0).astype(np.float32)
  params = {"dense": {"kernel": kernel, "bias": np.ones(100, np.float32)}}
  report = optax_gsm.sparsity_report(params)
  by_path = {leaf.path: leaf for leaf in report.leaves}
  assert by_path["dense/kernel"].dense_bytes == 120_000
  assert by_path["dense/bias"].stored_bytes == 400  # dense: sparse is larger
  # 2% density: values (4 B each) plus a few bits of offset per value.
  nonzero = int(np.count_nonzero(kernel))
  assert 4 * nonzero < by_path["dense/kernel"].stored_bytes < 5 * nonzero
  written = optax_gsm.export.save_sparse(tmp_path / "p.gsm", params)
  assert report.stored_bytes < written < report.stored_bytes + 1024  # header
  assert report.storage_ratio == report.dense_bytes / report.stored_bytes
  assert "stored by save_sparse" in str(report)
