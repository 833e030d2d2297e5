"""Does a shrunk model run faster, and do round widths matter?

For the widths structured GSM chose on MNIST
(``benchmarks/results/structured/mnist_<model>.json``, from
``examples.structured_gsm``), CPU inference time at batch 1 and 256 of the
dense model and of the shrunk model as it comes, and with every width
rounded up to a multiple of 4 and of 8 (what ``optax_gsm.structured.shrink(...,
round_to=k)`` gives), jitted, in one run, as ratios to the dense model: every
model is timed once a round, in interleaved rounds, and a ratio is the median
over rounds of the two times of one round. Timing needs only the shapes: the
params are a fresh initialisation.

    python -m benchmarks.width_rounding
    python -m benchmarks.width_rounding --quick   # LeNet-5 only, no JSON
"""

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import RESULTS, print_table, time_call, write_record
from examples.models import CifarResNet, LeNet5

MODELS = {"lenet5": (lambda widths: LeNet5(widths=widths), (784,), {}),
          "resnet20": (lambda widths: CifarResNet(20, widths=widths),
                       (28, 28, 1), {"train": False})}
ROUNDINGS = (1, 4, 8)


def rounded(widths, full, multiple):
  """Each width up to a multiple (at most the full width); 0 stays 0."""
  return {k: (v if v == 0 else min(full.get(k, v),
                                   math.ceil(v / multiple) * multiple))
          for k, v in widths.items()}


def full_widths(variables) -> dict:
  """The dense model's width per module path (its kernel's last axis)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      variables["params"])[0]:
    names = [str(getattr(k, "key", k)) for k in path]
    if names[-1] == "kernel":
      out["/".join(names[:-1])] = leaf.shape[-1]
  return out


def timer(build, shape, kwargs, widths, batch_sizes, budget):
  """The model's variables, and a function timing it at each batch size."""
  model = build(widths)
  variables = model.init(jax.random.key(0), jnp.ones((1, *shape)), **kwargs)
  apply = jax.jit(lambda v, x: model.apply(v, x, **kwargs))
  inputs = {batch: jnp.ones((batch, *shape)) for batch in batch_sizes}

  def times():
    return {batch: time_call(
        lambda x=x: jax.block_until_ready(apply(variables, x)),
        budget_s=budget) for batch, x in inputs.items()}

  times()  # compile
  return variables, times


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="\n\n".join(__doc__.split("\n\n")[1:]))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  names = ["lenet5"] if args.quick else list(MODELS)
  budget, rounds = (0.2, 1) if args.quick else (1.0, args.rounds)
  rows, records = [], []
  for name in names:
    build, shape, kwargs = MODELS[name]
    path = RESULTS / "structured" / f"mnist_{name}.json"
    runs = json.loads(path.read_text())["runs"]
    dense_variables, dense_timer = timer(build, shape, kwargs, {}, (1, 256),
                                         budget)
    full = full_widths(dense_variables)
    variants = [(run["reduction"], multiple,
                 rounded(run["gsm"]["widths"], full, multiple))
                for run in runs for multiple in ROUNDINGS]
    timers = [timer(build, shape, kwargs, widths, (1, 256), budget)[1]
              for _, _, widths in variants]
    dense, shrunk = [], [[] for _ in variants]
    for _ in range(rounds):
      dense.append(dense_timer())
      for times, variant_timer in zip(shrunk, timers):
        times.append(variant_timer())
    for (reduction, multiple, widths), times in zip(variants, shrunk):
      speedup = {batch: float(np.median([d[batch] / t[batch]
                                         for d, t in zip(dense, times)]))
                 for batch in (1, 256)}
      median = lambda runs, batch: float(np.median([r[batch] for r in runs]))
      records.append({
          "model": name, "reduction": reduction, "round_to": multiple,
          "widths": widths, "rounds": rounds,
          "dense_seconds": {b: median(dense, b) for b in (1, 256)},
          "shrunk_seconds": {b: median(times, b) for b in (1, 256)},
          "speedup": speedup})
      rows.append([name, f"{reduction:g}x", multiple,
                   f"{median(dense, 1) * 1e3:.3f} / {median(times, 1) * 1e3:.3f}",
                   f"{speedup[1]:.2f}x",
                   f"{median(dense, 256) * 1e3:.2f} / "
                   f"{median(times, 256) * 1e3:.2f}",
                   f"{speedup[256]:.2f}x"])
  print_table(["model", "FLOPs target", "round_to", "b=1 ms dense / shrunk",
               "speed-up", "b=256 ms dense / shrunk", "speed-up"], rows)
  if not args.quick:
    write_record("width_rounding", {"results": records})
  return records


if __name__ == "__main__":
  main()
