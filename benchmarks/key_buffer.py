"""Experiment: does GSM's int32 key buffer, kept in a donated buffer, pay?

On CPU, XLA takes an update's temporaries from glibc's malloc. GSM's key
buffer (4 bytes a ranked entry, 38 MiB at 10M parameters) is one such
temporary; above glibc's 32 MiB mmap ceiling it is mapped and page-faulted
in anew at every step, and below it whether it faults depends on glibc's
adaptive thresholds. This script times a GSM step (Taylor saliency, the
library's exact selection, the masked momentum step, buffers donated) in
two forms that differ only in where the keys live:

- ``temporary``: as in `optax_gsm.gsm` (an XLA temporary);
- ``donated keys``: the keys are an output written over a donated int32
  buffer of the same shape, fed back at the next step (as an optimizer-state
  field would be), so they land in memory that is already mapped;

against momentum SGD in the same run, in rounds (glibc's state drifts), with
the minor page faults per step. Not part of the library: the buffer would cost
4 bytes a parameter of resident state.

    python -m benchmarks.key_buffer            # 10M parameters
    python -m benchmarks.key_buffer --quick    # 1e5, no JSON
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import optax_gsm
from benchmarks._common import (
  count_minor_faults,
  glibc_record_suffix,
  print_table,
  time_call,
  write_record,
)
from benchmarks.update_time import COMPRESSION, make_params
from optax_gsm import _selection


def _gsm_step(kernels, grads, momenta):
  """One GSM step over the kernels; returns (kernels, masks, momenta, keys)."""
  keys = [_selection.ordered_key(jnp.abs(g * w))
          for g, w in zip(grads, kernels)]
  q = jnp.int32(optax_gsm.num_active(sum(k.size for k in kernels),
                                     COMPRESSION))
  masks, _ = _selection.select_keys(
      keys, q, _selection.leaf_positions(len(keys)))
  momenta = [0.9 * z + jnp.where(m, g, 0.0) + 5e-4 * w
             for z, m, g, w in zip(momenta, masks, grads, kernels)]
  return [w - 0.1 * z for w, z in zip(kernels, momenta)], masks, momenta, keys


def _temporary(kernels, grads, masks, momenta):
  return _gsm_step(kernels, grads, momenta)[:3]


def _donated_keys(kernels, grads, masks, momenta, keys):
  return _gsm_step(kernels, grads, momenta)


def _momentum_sgd(kernels, grads, masks, momenta):
  momenta = [0.9 * z + g + 5e-4 * w for z, g, w in zip(momenta, grads, kernels)]
  return [w - 0.1 * z for w, z in zip(kernels, momenta)], masks, momenta


FORMS = {"momentum_sgd": (_momentum_sgd, False),
         "gsm, keys temporary": (_temporary, False),
         "gsm, keys donated": (_donated_keys, True)}


def time_form(name, kernels, grads, steps, warmup=25):
  """Median ms per step, median minor page faults per step, XLA temp MiB."""
  fn, with_keys = FORMS[name]
  args = [[w + 0 for w in kernels], grads,
          [jnp.ones(w.shape, bool) for w in kernels],
          [jnp.zeros_like(w) for w in kernels]]
  if with_keys:
    args.append([jnp.zeros(w.shape, jnp.int32) for w in kernels])
  donated = (0, 2, 3, 4) if with_keys else (0, 2, 3)
  jitted = jax.jit(fn, donate_argnums=donated)
  temp = jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes
  carry = list(jax.block_until_ready(jitted(*args)))

  def one_step():
    carry[:] = jax.block_until_ready(jitted(carry[0], grads, *carry[1:]))

  # The warm-up lets glibc's allocator settle (update_time.py).
  counted_step, faults = count_minor_faults(one_step)
  seconds = time_call(counted_step, warmup=warmup, min_repeats=steps,
                      max_repeats=steps)
  return 1e3 * seconds, float(np.median(faults[warmup:])), temp / 2**20


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=float, default=1e7)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  size, rounds, steps = ((1e5, 1, 5) if args.quick
                         else (args.size, args.rounds, args.steps))
  kernels = [w for w in jax.tree.leaves(make_params(int(size))) if w.ndim == 2]
  rng = np.random.default_rng(1)
  grads = [jnp.asarray(rng.standard_normal(w.shape, np.float32))
           for w in kernels]
  records, rows = [], []
  for round_index in range(rounds):
    for name in FORMS:
      ms, faults, temp = time_form(name, kernels, grads, steps)
      records.append({"round": round_index, "form": name, "ms": ms,
                      "minor_faults_per_step": faults, "temp_mib": temp})
      floor = next(r["ms"] for r in records[::-1]
                   if r["form"] == "momentum_sgd")
      rows.append([round_index, name, f"{ms:.2f}", f"{ms / floor:.2f}x",
                   f"{faults:.0f}", f"{temp:.1f}"])
  table = print_table(["round", "form", "ms/step", "vs momentum SGD",
                       "minor faults/step", "XLA temp MiB"], rows)
  if not args.quick:
    write_record("key_buffer" + glibc_record_suffix(), {
        "num_params": sum(w.size for w in kernels), "steps": steps,
        "results": records, "table": table})
  return records


if __name__ == "__main__":
  main()
