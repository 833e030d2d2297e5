"""The whole family at training speed: one jitted training step per method.

Every optimizer of the library on the same model, against momentum SGD with
weight decay (the floor) measured in the same run: unstructured GSM (its
ranking refreshed every step, as the paper does, and every 10 steps),
structured GSM (channels and blocks, ``cost="flops"``), N:M GSM, GSM with
density bounds, C-SGD, TRP (nuclear norm + projection at their default
``every``), Path-SGD (where the model is a plain ReLU network: its ``kappa``
is derived from the model and refuses batch norm, max-pooling and
attention) and fine-tuning under a fixed mask. TRP runs twice: as built
(its decompositions' LAPACK on one thread, ``lapack_threads=1``) and with
LAPACK's threads as the process had them (``trp_lapack_threads_default``).

Per method and model: the time of a whole training step (forward, backward,
update; parameters and optimizer state donated, as in training) in
interleaved rounds, its ratio to momentum SGD's in the same round (the
median over rounds), the update alone on the model's parameters (the
median call: a step without a refresh for ``gsm_mask_every_10``), the
seconds to lower and compile the whole step (the median of interleaved
rounds, and its ratio to SGD's likewise), and the optimizer state's bytes.
Models: ResNet-20 (CIFAR-sized, batch norm), a small ViT on MNIST shapes and
a 784-1000-1000-10 MLP (the Path-SGD paper's kind of network).
Synthetic data: speed does not depend on the pixels.

    python -m benchmarks.family_step
    python -m benchmarks.family_step --quick     # the MLP, one round, no JSON
"""

import argparse
import contextlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_gsm
from benchmarks._common import (
  RESULTS,
  classification_loss,
  print_table,
  synthetic_batch,
  time_call,
  write_record,
)
from examples.measure import bar_offsets
from examples.models import CifarResNet, Mlp, VisionTransformer

LR = 0.01
DECAY = 5e-4
TOTAL_STEPS = 10_000
MODELS = {
    "resnet20": (lambda: CifarResNet(20), (64, 32, 32, 3)),
    "vit": (VisionTransformer, (128, 28, 28, 1)),
    "mlp": (Mlp, (256, 28, 28, 1)),
}
# Targets of the step time over momentum SGD's (ratio - 1).
TARGETS = {"gsm": 0.05, "gsm_mask_every_10": 0.05, "structured_gsm": 0.05,
           "n_of_m_gsm": 0.05,
           "gsm_density_bounds": 0.05, "centripetal_sgd": 0.05,
           "fine_tuning_mask": 0.05, "trp": 0.10,
           "trp_lapack_threads_default": 0.10, "path_sgd": 0.5}


def _momentum_sgd() -> optax.GradientTransformation:
  return optax.chain(optax.add_decayed_weights(DECAY), optax.trace(0.9),
                     optax.scale_by_learning_rate(LR))


def _input_axis_multiple_of(params, m: int):
  """The default prunable kernels whose input axis (-2) N:M can group (a
  first conv on 3 input channels cannot be 2:4)."""
  return jax.tree.map(lambda w, f: bool(f) and w.shape[-2] % m == 0, params,
                      optax_gsm.default_prunable(params))


def _trp(matrices, lapack_threads: int | None
         ) -> optax.GradientTransformation:
  return optax.chain(
      optax_gsm.low_rank.add_nuclear_norm(1e-4, prunable=matrices,
                                          lapack_threads=lapack_threads),
      _momentum_sgd(),
      optax_gsm.low_rank.low_rank_projection(prunable=matrices,
                                             lapack_threads=lapack_threads))


@contextlib.contextmanager
def _lapack_threads(threads: int | None):
  """LAPACK's threads set to ``threads`` inside (None: left as they are)."""
  before = (None if threads is None else
            optax_gsm.low_rank.limit_lapack_threads(threads))
  try:
    yield
  finally:
    if before is not None:
      optax_gsm.low_rank.limit_lapack_threads(before)


def optimizers(model, variables, images
               ) -> dict[str, optax.GradientTransformation | str]:
  """Each method at its defaults on ``model``, or why it does not apply."""
  params = variables["params"]
  # TRP views Dense and Conv kernels as matrices; attention's are 3-D.
  matrices = jax.tree.map(lambda w, f: bool(f) and w.ndim in (2, 4), params,
                          optax_gsm.default_prunable(params))
  train = {"train": False} if len(variables) > 1 else {}
  apply = lambda v, x: model.apply(v, x, **train)
  groups = optax_gsm.structured.channel_groups(apply, variables, images)
  methods = {
      "momentum_sgd": _momentum_sgd(),
      "gsm": optax_gsm.gsm_sgd(LR, 10.0, total_steps=TOTAL_STEPS,
                               weight_decay=DECAY),
      # The ranking refreshed every 10 steps, not every step (the paper's):
      # what the selection costs where the step is small.
      "gsm_mask_every_10": optax_gsm.gsm_sgd(
          LR, 10.0, total_steps=TOTAL_STEPS, weight_decay=DECAY,
          mask_update_every=10),
      "structured_gsm": optax_gsm.structured.structured_gsm_sgd(
          LR, groups, 4.0, total_steps=TOTAL_STEPS, cost="flops",
          weight_decay=DECAY),
      "n_of_m_gsm": optax_gsm.n_of_m_gsm_sgd(
          LR, (2, 4), total_steps=TOTAL_STEPS, weight_decay=DECAY,
          prunable=_input_axis_multiple_of(params, 4)),
      "gsm_density_bounds": optax_gsm.gsm_sgd(
          LR, 10.0, total_steps=TOTAL_STEPS, weight_decay=DECAY,
          min_density=0.02, max_density=0.5),
      "centripetal_sgd": optax_gsm.centripetal.centripetal_sgd(
          LR, optax_gsm.centripetal.cluster_channels(variables, groups,
                                                     ratio=2.0),
          weight_decay=DECAY),
      "trp": _trp(matrices, lapack_threads=1),
      "trp_lapack_threads_default": _trp(matrices, lapack_threads=None),
      "fine_tuning_mask": optax.chain(
          _momentum_sgd(),
          optax_gsm.freeze_pruned(optax_gsm.magnitude_mask(params, 10.0))),
  }
  extra = {k: v for k, v in variables.items() if k != "params"}
  path_apply = lambda p, x: model.apply({"params": p, **extra}, x, **train)
  try:  # kappa is traced at the first update: trace it here to ask
    jax.eval_shape(optax_gsm.path_norm.path_kappa(path_apply, images), params)
    methods["path_sgd"] = optax_gsm.path_norm.path_sgd(
        LR, apply_fn=path_apply, example_input=images)
  except NotImplementedError as error:  # an op with no path-norm form
    reason = str(error).removeprefix("path_kappa: ").split(" (")[0]
    methods["path_sgd"] = f"n/a: {reason}"
  return methods


def step_timer(model, variables, batch, tx, steps_per_call: int
               ) -> tuple[Callable[[], float], Callable[[], float], float,
                          int]:
  """A timer of ``steps_per_call`` donated training steps with ``tx`` (it
  returns seconds a step), a timer of lowering and compiling the step
  afresh (seconds), the seconds of the first compile, and the optimizer
  state's bytes."""
  images, labels = batch
  params = variables["params"]
  extra = {k: v for k, v in variables.items() if k != "params"}

  opt_state = tx.init(params)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(opt_state))

  def compile_step():
    # A new function each time: jit caches by function, so that compiling
    # the same one again would time a cache hit.
    def step(params, extra, opt_state):
      grads, new_extra = jax.grad(
          classification_loss(model, extra, images, labels),
          has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), new_extra, opt_state

    return jax.jit(step, donate_argnums=(0, 1, 2)).lower(
        params, extra, opt_state).compile()

  def compile_seconds():
    start = time.perf_counter()
    compile_step()
    return time.perf_counter() - start

  first_compile = time.perf_counter()
  compiled = compile_step()
  first_compile = time.perf_counter() - first_compile
  carry = [jax.tree.map(jnp.copy, (params, extra, opt_state))]

  def run():
    begin = time.perf_counter()
    for _ in range(steps_per_call):
      carry[0] = compiled(*carry[0])
    jax.block_until_ready(carry[0])
    return (time.perf_counter() - begin) / steps_per_call

  run()  # warm-up
  return run, compile_seconds, first_compile, state_bytes


def update_seconds(params, tx) -> float:
  """One jitted, donated ``update + apply_updates`` on ``params``."""
  # An argument, not a constant: XLA would fold the update into constants.
  grads = jax.tree.map(lambda w: jnp.full_like(w, 1e-3), params)

  def update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  donated = jax.jit(update, donate_argnums=(0, 1))
  carry = [(jax.tree.map(jnp.copy, params), tx.init(params))]

  def call():
    carry[0] = donated(*carry[0], grads)
    jax.block_until_ready(carry[0])

  return time_call(call, warmup=3, min_repeats=20, max_repeats=200)


def measure(name: str, rounds: int, steps_per_call: int,
            compile_rounds: int, process_lapack_threads: int | None) -> dict:
  build, input_shape = MODELS[name]
  model = build()
  batch = synthetic_batch(input_shape)
  variables = model.init(jax.random.PRNGKey(0), batch[0])
  methods = optimizers(model, variables, batch[0])
  runnable = {m: tx for m, tx in methods.items() if not isinstance(tx, str)}
  threads = {"trp_lapack_threads_default": process_lapack_threads}
  timers, compilers, first_compiles, state_bytes = {}, {}, {}, {}
  for method, tx in runnable.items():
    (timers[method], compilers[method], first_compiles[method],
     state_bytes[method]) = step_timer(model, variables, batch, tx,
                                       steps_per_call)
  # Compile times vary by a third from one compile to the next on a busy
  # machine: interleaved rounds, as the step times. Without rounds (--quick)
  # the first compile, whose tracing nothing was cached for, stands in.
  compiles = {method: [] if compile_rounds else [first_compiles[method]]
              for method in runnable}
  for round_index in range(compile_rounds):
    for method, compiler in compilers.items():
      compiles[method].append(compiler())
    print(f"{name} compile round {round_index}: " + ", ".join(
        f"{m} {c[-1]:.1f}" for m, c in compiles.items()) + " s", flush=True)
  times = {method: [] for method in runnable}
  for round_index in range(rounds):
    for method, timer in timers.items():
      with _lapack_threads(threads.get(method)):
        times[method].append(timer())
    print(f"{name} round {round_index}: " + ", ".join(
        f"{m} {t[-1] * 1e3:.1f}" for m, t in times.items()) + " ms",
          flush=True)
  updates = {}
  for method, tx in runnable.items():
    with _lapack_threads(threads.get(method)):
      updates[method] = update_seconds(variables["params"], tx)
  sgd = times["momentum_sgd"]
  results = {}
  for method in methods:
    if method not in runnable:
      results[method] = {"skipped": methods[method]}
      continue
    ratios = [t / s for t, s in zip(times[method], sgd)]
    results[method] = {
        "step_seconds": times[method],
        "step_ratio": float(np.median(ratios)),
        "step_ratio_range": [min(ratios), max(ratios)],
        "update_seconds": updates[method],
        "update_of_sgd_step": (updates[method] - updates["momentum_sgd"])
                              / float(np.median(sgd)),
        "compile_seconds": float(np.median(compiles[method])),
        "compile_seconds_all": compiles[method],
        "compile_ratio": float(np.median(
            [c / s for c, s in zip(compiles[method],
                                   compiles["momentum_sgd"])])),
        "state_bytes": state_bytes[method],
        "target": TARGETS.get(method)}
  num_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  return {"model": name, "batch": input_shape[0], "num_params": num_params,
          "num_leaves": len(jax.tree.leaves(variables["params"])),
          "rounds": rounds, "steps_per_call": steps_per_call,
          "compile_rounds": compile_rounds,
          "methods": results}


def table(records) -> str:
  rows = []
  for record in records:
    sgd = record["methods"]["momentum_sgd"]
    for method, r in record["methods"].items():
      if "skipped" in r:
        rows.append([record["model"], method, r["skipped"], "", "", "", "", ""])
        continue
      low, high = r["step_ratio_range"]
      target = r["target"]
      verdict = ("" if target is None else
                 " ok" if r["step_ratio"] - 1 <= target else
                 f" over {target:.0%}")
      rows.append([
          record["model"], method,
          f"{np.median(r['step_seconds']) * 1e3:.1f}",
          f"{r['step_ratio']:.3f}x ({low:.2f}-{high:.2f}){verdict}",
          f"{r['update_seconds'] * 1e3:.2f}",
          f"{r['update_of_sgd_step']:+.1%}",
          f"{r['compile_seconds']:.1f} ({r['compile_ratio']:.1f}x)",
          f"{r['state_bytes'] / sgd['state_bytes']:.2f}x"])
  return print_table(
      ["model", "method", "ms/step", "step vs momentum SGD (range), target",
       "update alone ms", "update - SGD's, of SGD's step",
       "step compile s (vs SGD)", "state bytes vs SGD"], rows)


def plot(records, path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  methods = [m for m in records[0]["methods"] if m != "momentum_sgd"]
  figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  width, offsets = bar_offsets(len(records))
  for offset, record in zip(offsets, records):
    x = np.arange(len(methods)) + offset
    for axis, key in zip(axes, ("step_ratio", "compile_ratio")):
      values = [record["methods"][m].get(key, np.nan) for m in methods]
      axis.bar(x, values, width, label=f"{record['model']} "
               f"({record['num_params']:,} params)")
  for axis, title in zip(axes, ("training step time / momentum SGD's",
                                "step compile time / momentum SGD's")):
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_xticks(np.arange(len(methods)), methods, rotation=40,
                    ha="right")
    axis.set_title(title)
    axis.legend(fontsize=8)
  axes[0].set_yscale("log")  # TRP on 1000-wide Dense kernels: ~18x
  axes[0].axhline(1.05, color="tab:red", linestyle="--", linewidth=0.8)
  axes[1].axhline(2.0, color="tab:red", linestyle="--", linewidth=0.8)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  print(f"wrote {path}", flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS),
                      choices=list(MODELS))
  parser.add_argument("--rounds", type=int, default=7,
                      help="interleaved timing rounds per model")
  parser.add_argument("--steps", type=int, default=4,
                      help="training steps timed together in a round")
  parser.add_argument("--compile-rounds", type=int, default=3,
                      help="interleaved rounds of compiling every step")
  parser.add_argument("--quick", action="store_true",
                      help="the MLP, one round of one step, the first "
                      "compile, no JSON")
  args = parser.parse_args(argv)
  names = ["mlp"] if args.quick else args.models
  rounds, steps, compile_rounds = ((1, 1, 0) if args.quick else
                                   (args.rounds, args.steps,
                                    args.compile_rounds))
  # LAPACK's threads before TRP sets them to one.
  process_lapack_threads = optax_gsm.low_rank.limit_lapack_threads(1)
  records = [measure(name, rounds, steps, compile_rounds,
                     process_lapack_threads)
             for name in names]
  text = table(records)
  if not args.quick:
    write_record("family_step", {
        "results": records, "table": text,
        "lapack_threads_default": process_lapack_threads})
    plot(records, RESULTS / "family_step.png")
  return records


if __name__ == "__main__":
  main()
