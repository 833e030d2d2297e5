"""One process of tests/test_multiprocess.py: GSM steps with the parameters
sharded over the 8 CPU devices of two processes (4 each)."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def problem():
  import numpy as np
  rng = np.random.default_rng(0)
  params = {"a": {"kernel": rng.normal(size=(256, 64)).astype(np.float32),
                  "bias": np.zeros(64, np.float32)},
            "b": {"kernel": rng.normal(size=(128, 32)).astype(np.float32)}}
  grads = [jax.tree.map(lambda x, s=s: (np.roll(x, s, 0) * 0.1).astype(
      np.float32), params) for s in (1, 5, 9)]
  return params, grads


def optimizer():
  import optax_gsm
  return optax_gsm.gsm_sgd(0.1, 20.0, momentum=0.9, weight_decay=1e-3)


def main(process_id: int, port: int, out: str):
  jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                             num_processes=2, process_id=process_id)
  import numpy as np
  import optax
  from jax.experimental import multihost_utils
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  assert jax.device_count() == 8 and jax.local_device_count() == 4
  sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)),
                           P("data"))
  as_global = lambda x: jax.make_array_from_callback(
      x.shape, sharding, lambda index: x[index])
  params, grads = problem()
  params = jax.tree.map(as_global, params)
  tx = optimizer()
  state = jax.jit(tx.init)(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for g in grads:
    params, state = step(params, state, jax.tree.map(as_global, g))
  gathered = multihost_utils.process_allgather(
      {"params": params, "mask": state[0][0].mask}, tiled=True)
  if process_id == 0:
    flat = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
            jax.tree_util.tree_leaves_with_path(gathered)}
    np.savez(out, **flat)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
