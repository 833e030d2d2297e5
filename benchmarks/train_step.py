"""Full training-step time: GSM vs plain momentum SGD on real architectures.

LeNet-5 (Caffe variant, 28x28x1, batch 256) and ResNet-20 / ResNet-56
(CIFAR-sized 32x32x3, batch 64, BatchNorm), synthetic data (speed does not
depend on the pixels). Each step is forward + backward + optimizer update,
jitted; reports the GSM overhead in percent over momentum SGD.

A training step's time moves by 5-15% from round to round on a shared CPU,
more than the overhead to resolve, so the two optimizers are timed in
interleaved rounds (the overhead: the median over rounds, with its range),
and the optimizer update is also timed alone on the model's parameter tree
(GSM update minus momentum-SGD update, over the momentum-SGD step): an
estimate of the overhead with far less noise, since the forward and backward
passes are the same for both. It also reports the seconds to lower and
compile each whole training step (what a user waits for before training).

    python -m benchmarks.train_step
    python -m benchmarks.train_step --quick     # LeNet-5 only, for the tests
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_gsm
from benchmarks._common import (
  classification_loss,
  glibc_record_suffix,
  print_table,
  synthetic_batch,
  time_call,
  write_record,
)
from examples.models import CifarResNet, LeNet5

MODELS = {
    "lenet5": (LeNet5, (256, 28, 28, 1), 125.0),
    "resnet20": (lambda: CifarResNet(20), (64, 32, 32, 3), 10.0),
    "resnet56": (lambda: CifarResNet(56), (64, 32, 32, 3), 10.0),
}


def optimizers(compression_ratio):
  return {
      "momentum_sgd": optax.chain(optax.add_decayed_weights(5e-4),
                                  optax.trace(0.9),
                                  optax.scale_by_learning_rate(0.01)),
      "gsm": optax_gsm.gsm_sgd(0.01, compression_ratio, momentum=0.98,
                               weight_decay=5e-4),
  }


def step_timer(model, input_shape, tx):
  """A timer of one jitted training step with ``tx``, and the seconds it
  took to lower and compile the step."""
  images, labels = synthetic_batch(input_shape)
  variables = model.init(jax.random.PRNGKey(0), images)
  params = variables["params"]
  extra = {k: v for k, v in variables.items() if k != "params"}
  opt_state = tx.init(params)

  @jax.jit
  def step(params, extra, opt_state):
    grads, new_extra = jax.grad(
        classification_loss(model, extra, images, labels), has_aux=True)(
            params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_extra, opt_state

  start = time.perf_counter()
  compiled = step.lower(params, extra, opt_state).compile()
  compile_seconds = time.perf_counter() - start
  return (lambda: time_call(
      lambda: jax.block_until_ready(compiled(params, extra, opt_state))),
          compile_seconds)


def update_seconds(model, input_shape, tx) -> float:
  """One jitted ``update + apply_updates`` alone on the model's params."""
  images, _ = synthetic_batch(input_shape)
  params = model.init(jax.random.PRNGKey(0), images)["params"]
  grads = jax.tree.map(lambda w: jnp.full_like(w, 1e-3), params)
  opt_state = tx.init(params)

  @jax.jit
  def update(params, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return time_call(lambda: jax.block_until_ready(update(params, opt_state)),
                   warmup=5, min_repeats=20, max_repeats=100)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS),
                      choices=list(MODELS))
  parser.add_argument("--rounds", type=int, default=5,
                      help="interleaved timing rounds per model")
  parser.add_argument("--quick", action="store_true",
                      help="LeNet-5 only, one round, no JSON")
  args = parser.parse_args(argv)
  names = ["lenet5"] if args.quick else args.models
  rounds = 1 if args.quick else args.rounds
  rows, records = [], []
  for name in names:
    build, input_shape, ratio = MODELS[name]
    model = build()
    txs = optimizers(ratio)
    timers, compiles = {}, {}
    for opt, tx in txs.items():
      timers[opt], compiles[opt] = step_timer(model, input_shape, tx)
    times = {opt: [] for opt in txs}
    for round_index in range(rounds):
      for opt, timer in timers.items():
        times[opt].append(timer())
      print(f"{name} round {round_index}: " + ", ".join(
          f"{opt} {t[-1] * 1e3:.1f} ms" for opt, t in times.items()),
            flush=True)
    overheads = [g / s - 1.0 for g, s in zip(times["gsm"],
                                             times["momentum_sgd"])]
    updates = {opt: update_seconds(model, input_shape, tx)
               for opt, tx in txs.items()}
    sgd_step = float(np.median(times["momentum_sgd"]))
    update_overhead = (updates["gsm"] - updates["momentum_sgd"]) / sgd_step
    params = model.init(jax.random.PRNGKey(0), jnp.zeros(input_shape))["params"]
    num_params = sum(x.size for x in jax.tree.leaves(params))
    records.append({
        "model": name, "batch": input_shape[0], "num_params": num_params,
        "compression_ratio": ratio, "rounds": rounds,
        "momentum_sgd_seconds": times["momentum_sgd"],
        "gsm_seconds": times["gsm"],
        "gsm_overhead": float(np.median(overheads)),
        "gsm_overhead_range": [min(overheads), max(overheads)],
        "update_seconds": updates,
        "step_compile_seconds": compiles,
        "update_overhead_of_step": update_overhead})
    rows.append([name, f"{num_params:,}", input_shape[0],
                 f"{sgd_step * 1e3:.1f}",
                 f"{float(np.median(times['gsm'])) * 1e3:.1f}",
                 f"{np.median(overheads):+.1%} ({min(overheads):+.1%} .. "
                 f"{max(overheads):+.1%})",
                 f"{updates['momentum_sgd'] * 1e3:.2f} / "
                 f"{updates['gsm'] * 1e3:.2f}",
                 f"{update_overhead:+.1%}",
                 f"{compiles['momentum_sgd']:.1f} / {compiles['gsm']:.1f}"])
  table = print_table(["model", "params", "batch", "momentum SGD ms/step",
                       "GSM ms/step", "GSM overhead (range over rounds)",
                       "update alone ms, SGD / GSM",
                       "update difference / SGD step",
                       "step compile s, SGD / GSM"], rows)
  if not args.quick:
    write_record("train_step" + glibc_record_suffix(),
                 {"results": records, "table": table})
  return records


if __name__ == "__main__":
  main()
