"""Unstructured GSM against gradual magnitude pruning on a ResNet with batch
norm: the form of the paper's ResNet-56 claim (CIFAR-10, 93.80% at 10x from
94.05%), on MNIST at a reduced budget.

For the ResNet-20-style network (``examples/models.py``: batch norm,
projection shortcuts) and each compression ratio asked for:

1. train the dense model (momentum SGD, warm-up + cosine);
2. from it, on the same budget, schedule and momentum:
   - GSM, the library's lossless default (``gsm_sgd(..., total_steps=...)``),
     then the final global magnitude prune, no fine-tuning;
   - gradual magnitude pruning (Zhu & Gupta 2017,
     ``examples/gradual_magnitude.py``): global, cubic ramp over the first
     half of the steps, the mask updated every epoch;
3. test accuracy after the prune and the per-layer density each method
   chose (plotted against uniform 1/C).

Batch-norm scales and biases are not pruned by either method (the library's
``default_prunable``: kernels only).

    python -m examples.resnet_unstructured --ratios 10 20 --batch 64 \\
        --epochs 10 --steps-per-epoch 100
    python -m examples.resnet_unstructured --quick      # as the tests run it

Writes (to ``--out``) ``results/gradual/resnet/mnist_<model>.{json,md,png}``.
"""

import pathlib

import optax

import optax_gsm
from examples import experiment
from examples.gradual_magnitude import gradual_magnitude_pruning
from examples.measure import RESULTS
from examples.mnist_gsm import layer_densities

OUT = RESULTS / "gradual" / "resnet"
DENSITY_FLOOR = 1e-4


def gsm_stage(setup, trainer, params, batch_stats, ratio):
  tx = optax_gsm.gsm_sgd(setup.schedule, ratio, total_steps=setup.steps,
                         momentum=experiment.MOMENTUM,
                         weight_decay=experiment.WEIGHT_DECAY)
  trained, opt_state, timing = trainer.train(
      params, tx, setup.args.epochs, batch_stats=batch_stats,
      desc=f"GSM {ratio:g}x")
  stats = trainer.batch_stats
  pruned, mask = optax_gsm.prune(trained, opt_state=opt_state)
  return {"accuracy_before_prune": trainer.accuracy(trained, stats),
          "accuracy": trainer.accuracy(pruned, stats),
          **kept(pruned), "layer_density": layer_densities(mask), **timing}


def gradual_stage(setup, trainer, params, batch_stats, ratio):
  tx = gradual_optimizer(setup, ratio)
  trained, _, timing = trainer.train(
      params, tx, setup.args.epochs, batch_stats=batch_stats,
      desc=f"gradual magnitude {ratio:g}x")
  # The pruned weights are exact zeros: the nonzeros are the mask.
  return {"accuracy": trainer.accuracy(trained, trainer.batch_stats),
          **kept(trained), "layer_density": layer_densities(trained),
          **timing}


def kept(params) -> dict:
  report = optax_gsm.sparsity_report(params)
  return {"nonzero": report.prunable_nonzero, "prunable": report.prunable_size}


def gradual_optimizer(setup, ratio) -> optax.GradientTransformation:
  """The dense stage's optimizer, then the pruning step (it must be last:
  it returns the update that zeroes the pruned weights)."""
  return optax.chain(
      setup.sgd(),
      gradual_magnitude_pruning(
          ratio, ramp_steps=max(1, setup.steps // 2),
          update_every=setup.args.steps_per_epoch, scope="global"))


def markdown(record) -> str:
  lines = [f"# Unstructured GSM vs gradual magnitude pruning: "
           f"{record['model']} on MNIST", "",
           f"Dense: {record['dense']['accuracy']:.4f} "
           f"({record['dense']['steps']} steps of {record['batch']}); each "
           f"method then {record['steps']} steps from it, same schedule and "
           f"momentum. Seed {record['seed']}. Machine: "
           f"{record['machine']['cpu']}, {record['machine']['cpu_count']} "
           "cores.", "",
           "| ratio | GSM before prune | GSM after prune | gradual magnitude "
           "| GSM s | gradual s |", "|---" * 6 + "|"]
  for run in record["runs"]:
    g, m = run["gsm"], run["gradual_magnitude"]
    lines.append(f"| {run['ratio']:g}x | {g['accuracy_before_prune']:.4f} | "
                 f"{g['accuracy']:.4f} | {m['accuracy']:.4f} | "
                 f"{g['wall_seconds']:.0f} | {m['wall_seconds']:.0f} |")
  return "\n".join(lines) + "\n"


def plot_densities(record, path: pathlib.Path) -> None:
  """Per-layer density of each method's final mask, one panel per ratio."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  runs = record["runs"]
  fig, axes = plt.subplots(len(runs), 1, figsize=(9, 3 * len(runs)),
                           squeeze=False)
  for ax, run in zip(axes[:, 0], runs):
    names = list(run["gsm"]["layer_density"])
    for method, style in (("gsm", "o-"), ("gradual_magnitude", "s--")):
      # An emptied layer (density 0) is drawn at the axis floor.
      ax.plot(range(len(names)),
              [max(run[method]["layer_density"][n], DENSITY_FLOOR)
               for n in names], style, ms=3, label=method.replace("_", " "))
    ax.axhline(1 / run["ratio"], color="k", lw=0.8, ls=":",
               label="uniform 1/C")
    ax.set_yscale("log")
    ax.set_ylabel("density")
    ax.set_title(f"{record['model']} at {run['ratio']:g}x", fontsize=9)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace("/kernel", "") for n in names],
                       rotation=90, fontsize=6)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  parser = experiment.parser(__doc__, model="resnet20", batch=64)
  parser.add_argument("--ratios", type=float, nargs="+", default=[10, 20])
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  args = parser.parse_args(argv)
  if args.model != "resnet20":
    parser.error("--model: this comparison is for the ResNet (resnet20)")
  experiment.apply_quick(args)
  if args.quick:
    args.ratios = args.ratios[:1]
  setup = experiment.Setup(args)
  _, trainer, params, batch_stats, dense = experiment.dense_stage(setup)
  record = {**setup.record(dense), "seed": args.seed, "runs": []}
  stem = setup.stem
  for ratio in args.ratios:
    run = {"ratio": ratio,
           "gsm": gsm_stage(setup, trainer, params, batch_stats, ratio)}
    print(f"GSM {ratio:g}x: {run['gsm']['accuracy']:.4f}", flush=True)
    run["gradual_magnitude"] = gradual_stage(setup, trainer, params,
                                             batch_stats, ratio)
    print(f"gradual magnitude {ratio:g}x: "
          f"{run['gradual_magnitude']['accuracy']:.4f}", flush=True)
    record["runs"].append(run)
    experiment.save(record, markdown(record), args.out, stem)
    plot_densities(record, args.out / f"{stem}_density.png")
  print(markdown(record))
  return record


if __name__ == "__main__":
  main()
