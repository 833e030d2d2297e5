"""GSM across processes: two processes with jax.distributed (localhost
coordinator, 4 CPU devices each, parameters sharded over all 8) compute the
same mask and parameters as one process."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

WORKER = pathlib.Path(__file__).with_name("multiprocess_worker.py")


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  out = tmp_path / "result.npz"
  port = free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  workers = [subprocess.Popen(
      [sys.executable, str(WORKER), str(i), str(port), str(out)], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
  logs = [w.communicate(timeout=300)[0] for w in workers]
  assert all(w.returncode == 0 for w in workers), "\n".join(logs)

  sys.path.insert(0, str(WORKER.parent))
  try:
    import multiprocess_worker as worker
  finally:
    sys.path.pop(0)
  params, grads = worker.problem()
  tx = worker.optimizer()
  state = tx.init(params)
  for g in grads:
    updates, state = jax.jit(tx.update)(g, state, params)
    params = optax.apply_updates(params, updates)
  expected = {"params": params, "mask": state[0][0].mask}
  got = np.load(out)
  for path, leaf in jax.tree_util.tree_leaves_with_path(expected):
    key = jax.tree_util.keystr(path)
    if "mask" in key:
      np.testing.assert_array_equal(got[key], leaf, err_msg=key)
    else:
      np.testing.assert_allclose(got[key], leaf, rtol=1e-6, atol=1e-7,
                                 err_msg=key)
  assert int(sum(got[k].sum() for k in got if "mask" in k and "kernel" in k)
             ) == (256 * 64 + 128 * 32) // 20
