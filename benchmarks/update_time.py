"""Optimizer update time and memory vs parameter count: GSM and the alternatives.

For each total size N (split over four dense layers and their biases), times
one jitted ``update + apply_updates`` of:

- ``momentum_sgd``: ``add_decayed_weights -> trace -> scale``, the floor;
- ``gsm``: ``optax_gsm.gsm_sgd`` at compression 60x (exact Q every step);
- ``top_k``: the same GSM step with the threshold from ``jax.lax.top_k`` over
  the concatenated scores (static Q);
- ``argsort``: the same with a full sort of the concatenated scores, as the
  official code's ``torch.topk``-free alternatives do;

and reports each as a ratio to the floor, GSM's counting passes, the
optimizer-state bytes and XLA's temporary bytes for the update. The params
and state buffers are donated (updated in place); ``momentum_sgd`` and
``gsm`` are also timed with fresh output buffers each step (no donation),
each against the floor with the same buffer handling.

On CPU, XLA's temporaries (GSM's int32 key buffer) come from glibc's
malloc, and a large one is mapped and page-faulted in anew at every step
(the table's minor faults per step); either of

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483648:glibc.malloc.arena_max=1

(transparent huge pages for malloc; or every block from one heap that keeps
freed memory) removes that cost. The record notes the setting, and its name
says which (``update_time_hugetlb.json``, ``update_time_no_mmap.json``).

Per size it also runs 20 GSM steps with a fresh random gradient each step
(the params drift as under SGD) and reports the mean counting passes per
step, and the compile time of one jitted update of 10, 100 and 500 dense
layers (64x64 kernels; separate leaves, and 500 stacked into one leaf per
kind as ``nn.scan`` makes them) for GSM and momentum SGD.

    python -m benchmarks.update_time               # 1e5 .. 1e8
    python -m benchmarks.update_time --quick       # small sizes, for the tests
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_gsm
from benchmarks._common import (
  count_minor_faults,
  glibc_record_suffix,
  print_table,
  time_call,
  write_record,
)

COMPRESSION = 60.0
FRESH = " (fresh buffers)"  # the undonated rows' method suffix
LAYER_FRACTIONS = (0.5, 0.3, 0.15, 0.05)


def make_params(total: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  params = {}
  for i, fraction in enumerate(LAYER_FRACTIONS):
    cols = 256
    rows = max(1, int(total * fraction) // cols)
    params[f"layer{i}"] = {
        "kernel": jnp.asarray(rng.standard_normal((rows, cols), np.float32)),
        "bias": jnp.zeros(cols, jnp.float32)}
  return params


def kernel_scores(grads, params):
  """``|g * w|`` of the prunable leaves, in leaf order."""
  flags = jax.tree.leaves(optax_gsm.default_prunable(params))
  return [jnp.abs(g * w) for g, w, f in zip(
      jax.tree.leaves(grads), jax.tree.leaves(params), flags) if f]


def threshold_gsm(threshold_fn):
  """GSM step whose mask is ``score >= threshold_fn(concatenated, Q)``."""
  def update(grads, state, params):
    flags = optax_gsm.default_prunable(params)
    scores = kernel_scores(grads, params)
    q = optax_gsm.num_active(sum(s.size for s in scores), COMPRESSION)
    threshold = threshold_fn(jnp.concatenate([s.ravel() for s in scores]), q)
    decayed = jax.tree.map(
        lambda g, w, f: (jnp.where(jnp.abs(g * w) >= threshold, g, 0)
                         + 5e-4 * w) if f else g, grads, params, flags)
    momentum = jax.tree.map(lambda z, d: 0.9 * z + d, state, decayed)
    return jax.tree.map(lambda z: -0.1 * z, momentum), momentum
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params), update)


def passes_along_a_run(params, steps=20, seed=2):
  """Mean counting passes per step over ``steps`` GSM steps with a fresh
  gradient each (the params drift as under SGD)."""
  rng = np.random.default_rng(seed)
  tx = METHODS["gsm"]()
  state = tx.init(params)
  update = jax.jit(tx.update)
  select = jax.jit(optax_gsm.select_top)
  passes = []
  for _ in range(steps):
    grads = jax.tree.map(lambda w: jnp.asarray(
        rng.standard_normal(w.shape, np.float32)), params)
    scores = kernel_scores(grads, params)
    q = optax_gsm.num_active(sum(s.size for s in scores), COMPRESSION)
    passes.append(int(select(scores, q).num_passes))
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return float(np.mean(passes))


def compile_seconds(num_layers: int, stacked: bool = False) -> dict:
  """Seconds to compile one jitted update of ``num_layers`` dense layers
  (64x64 kernel and bias): separate leaves, or ``stacked`` into one leaf per
  kind as ``nn.scan`` / ``nnx.vmap`` layers are."""
  if stacked:
    params = {"layers": {"kernel": jnp.ones((num_layers, 64, 64)),
                         "bias": jnp.zeros((num_layers, 64))}}
  else:
    params = {f"layer{i}": {"kernel": jnp.ones((64, 64)),
                            "bias": jnp.zeros(64)}
              for i in range(num_layers)}
  result = {}
  for method in ("momentum_sgd", "gsm"):
    tx = METHODS[method]()
    state = tx.init(params)
    start = time.perf_counter()
    jax.jit(tx.update).lower(params, state, params).compile()
    result[method] = time.perf_counter() - start
  return result


METHODS = {
    "momentum_sgd": lambda: optax.chain(
        optax.add_decayed_weights(5e-4), optax.trace(0.9),
        optax.scale_by_learning_rate(0.1)),
    "gsm": lambda: optax_gsm.gsm_sgd(0.1, COMPRESSION, weight_decay=5e-4),
    "top_k": lambda: threshold_gsm(lambda flat, q: jax.lax.top_k(flat, q)[0][-1]),
    "argsort": lambda: threshold_gsm(
        lambda flat, q: flat[jnp.argsort(-flat)[q - 1]]),
}


def measure(method: str, params, grads, donate: bool = True) -> dict:
  """One step's median time; ``donate``: params and state buffers donated
  (updated in place, as training loops that donate run), else every step
  writes fresh output buffers."""
  tx = METHODS[method]()
  state = tx.init(params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
  memory = jitted.lower(params, state, grads).compile().memory_analysis()
  # Each step's output fed to the next, as in training.
  carry = [jax.tree.map(jnp.copy, params), state]

  def one_step():
    carry[:] = jitted(carry[0], carry[1], grads)
    jax.block_until_ready(carry)

  # The steady state: with glibc.malloc.hugetlb=1 the allocator takes ~20
  # steps to settle on how it serves XLA's temporaries (measured at 10M: GSM
  # steps 1-20 ran 36-43 ms, later ones 17-20 ms). The sort-based
  # alternatives, 100x slower, keep the short default.
  steady = dict(warmup=25, min_repeats=30, max_repeats=60, budget_s=3.0)
  timing = steady if method in ("momentum_sgd", "gsm") else dict(warmup=1)
  counted_step, faults = count_minor_faults(one_step)
  seconds = time_call(counted_step, **timing)
  result = {
      "seconds": seconds,
      "minor_faults_per_step": float(np.median(faults[timing["warmup"]:])),
      "state_bytes": sum(x.nbytes for x in jax.tree.leaves(state)),
      "update_temp_bytes": getattr(memory, "temp_size_in_bytes", None),
  }
  if method == "gsm" and donate:  # once per size: the fresh-buffer row shares it
    scores = kernel_scores(grads, params)
    q = optax_gsm.num_active(sum(s.size for s in scores), COMPRESSION)
    result["counting_passes"] = int(
        jax.jit(optax_gsm.select_top)(scores, q).num_passes)
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=float, nargs="+",
                      default=[1e5, 1e6, 1e7, 1e8])
  parser.add_argument("--max-alternative-size", type=float, default=1e8,
                      help="skip top_k/argsort above this size (they are slow)")
  parser.add_argument("--quick", action="store_true",
                      help="sizes 1e4 and 1e5, no JSON")
  args = parser.parse_args(argv)
  sizes = [1e4, 1e5] if args.quick else args.sizes

  rows, records = [], []
  for size in sizes:
    params = make_params(int(size))
    grads = make_params(int(size), seed=1)
    total = sum(x.size for x in jax.tree.leaves(params))
    results = {}
    for method in METHODS:
      if method in ("top_k", "argsort") and size > args.max_alternative_size:
        continue
      results[method] = measure(method, params, grads)
      print(f"N={total:,} {method}: {results[method]['seconds'] * 1e3:.2f} ms",
            flush=True)
    for method in ("momentum_sgd", "gsm"):
      results[method + FRESH] = measure(method, params, grads, donate=False)
    results["gsm"]["mean_passes_along_a_run"] = passes_along_a_run(
        params, steps=5 if args.quick else 20)
    for method, result in results.items():
      # Against the floor with the same buffer handling.
      floor = results["momentum_sgd" + (FRESH if FRESH in method else "")]
      result["donated"] = FRESH not in method
      result["ratio_to_momentum_sgd"] = result["seconds"] / floor["seconds"]
      records.append({"num_params": total, "method": method, **result})
      passes = (f"{result['mean_passes_along_a_run']:.1f}"
                if method == "gsm" else "")
      rows.append([f"{total:,}", method, f"{result['seconds'] * 1e3:.2f}",
                   f"{result['ratio_to_momentum_sgd']:.2f}x", passes,
                   f"{result['state_bytes'] / 2**20:.1f}",
                   f"{(result['update_temp_bytes'] or 0) / 2**20:.1f}",
                   f"{result['minor_faults_per_step']:.0f}"])
  table = print_table(
      ["params", "method", "ms/update", "vs momentum SGD",
       "passes per step (20-step run)", "state MiB", "update temp MiB",
       "minor faults/step"], rows)
  layer_counts = [10] if args.quick else [10, 100, 500]
  compiles = {str(n): compile_seconds(n) for n in layer_counts}
  compiles[f"{layer_counts[-1]} stacked"] = compile_seconds(
      layer_counts[-1], stacked=True)
  compile_table = print_table(
      ["layers (kernels)", "momentum SGD compile s", "gsm_sgd compile s",
       "ratio"],
      [[n, f"{c['momentum_sgd']:.2f}", f"{c['gsm']:.2f}",
        f"{c['gsm'] / c['momentum_sgd']:.1f}x"]
       for n, c in compiles.items()])
  if not args.quick:
    write_record("update_time" + glibc_record_suffix(), {
        "compression_ratio": COMPRESSION, "results": records, "table": table,
        "compile_seconds": compiles, "compile_table": compile_table})
  return records


if __name__ == "__main__":
  main()
