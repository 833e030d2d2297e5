"""GSM's lossless default across step budgets: what the final prune costs.

The README's snippet (``gsm_sgd`` with a cosine schedule from 1e-2, C = 60,
momentum 0.99, Nesterov, weight decay 5e-4) on LeNet-300-100 and the full
MNIST, from scratch, for T steps of 128, T over the budgets. Variants:

  zero       the default, ``gsm_sgd(..., total_steps=T)``: the active set
             frozen at 20% of T, passive weights shrunk to exactly zero by
             60% of T (``zero_passive_at``)
  zero@F     the same, zero by F * T
  decay      the freeze and the critical passive decay alone, passive weights
             never shrunk (``zero_passive_at`` off: what `gsm` in your own
             chain does with `lossless_settings`)
  paper      the paper's recipe (no ``total_steps``)

Each run records the test accuracy before and after `prune`, the largest
removed ``|w|``, the removed share of ``sum |w|`` and its wall time.

    python -m examples.lossless_budget                  # ~15 minutes on 2 cores
    python -m examples.lossless_budget --budgets 300 1200 --seeds 0
    python -m examples.lossless_budget --quick          # as the tests run it
"""

import pathlib
import time

import numpy as np
import optax

import optax_gsm
from examples import experiment
from examples.experiment import Setup, parser, save
from examples.measure import RESULTS, machine_info

RATIO = 60.0
PEAK_LR = 1e-2
MOMENTUM = 0.99
WEIGHT_DECAY = 5e-4
EVALUATIONS = 10


def optimizer(variant: str, steps: int) -> optax.GradientTransformation:
  """The GSM optimizer of ``variant`` for a budget of ``steps``."""
  schedule = optax.cosine_decay_schedule(PEAK_LR, steps)
  common = dict(momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
  if variant == "paper":
    return optax_gsm.gsm_sgd(schedule, RATIO, **common)
  if variant == "decay":
    settings = optax_gsm.lossless_settings(
        schedule, steps, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return optax_gsm.gsm_sgd(
        schedule, RATIO, freeze_mask_at=settings.freeze_mask_at,
        passive_weight_decay=settings.passive_weight_decay, **common)
  if variant == "zero":
    return optax_gsm.gsm_sgd(schedule, RATIO, total_steps=steps, **common)
  if variant.startswith("zero@"):
    zero_at = round(float(variant.removeprefix("zero@")) * steps)
    return optax_gsm.gsm_sgd(schedule, RATIO, total_steps=steps,
                             zero_passive_at=zero_at, **common)
  raise ValueError(f"unknown variant {variant!r}")


def run(setup: Setup, variant: str, steps: int, seed: int) -> dict:
  setup.args.steps_per_epoch = max(steps // EVALUATIONS, 1)
  setup.args.seed = seed
  model = setup.model()
  trainer = setup.trainer(model)
  params = setup.init(model)["params"]
  epochs = steps // setup.args.steps_per_epoch
  start = time.perf_counter()
  params, opt_state, _ = trainer.train(
      params, optimizer(variant, epochs * setup.args.steps_per_epoch), epochs,
      desc=f"{variant}, {steps} steps, seed {seed}", evaluations=1)
  readiness = optax_gsm.prune_readiness(params, opt_state=opt_state)
  pruned, _ = optax_gsm.prune(params, opt_state=opt_state)
  result = {
      "variant": variant, "budget": steps,
      "steps": epochs * setup.args.steps_per_epoch, "seed": seed,
      "accuracy_before_prune": trainer.accuracy(params),
      "accuracy_after_prune": trainer.accuracy(pruned),
      "largest_removed": readiness.largest_removed,
      "removed_mass_fraction": readiness.removed_mass_fraction,
      "wall_seconds": time.perf_counter() - start}
  print(f"{variant}, {steps} steps, seed {seed}: "
        f"{result['accuracy_before_prune']:.2%} -> "
        f"{result['accuracy_after_prune']:.2%} after the prune", flush=True)
  return result


def markdown(record) -> str:
  runs = record["runs"]
  budgets = sorted({r["budget"] for r in runs})
  variants = list(dict.fromkeys(r["variant"] for r in runs))
  lines = [f"# The final prune across budgets: {record['model']} at "
           f"{record['compression_ratio']:g}x", "",
           "Test accuracy before -> after `prune`, mean over seeds (and the "
           "largest drop at the prune among them); cosine from "
           f"{record['peak_lr']:g}, momentum {record['momentum']}, batch "
           f"{record['batch']}, from scratch.", "",
           "| variant | " + " | ".join(f"{b} steps" for b in budgets) + " |",
           "|---" * (len(budgets) + 1) + "|"]
  for variant in variants:
    cells = []
    for budget in budgets:
      cell = [r for r in runs if r["variant"] == variant and r["budget"] == budget]
      if not cell:
        cells.append("")
        continue
      before = np.mean([r["accuracy_before_prune"] for r in cell])
      after = np.mean([r["accuracy_after_prune"] for r in cell])
      drop = max(r["accuracy_before_prune"] - r["accuracy_after_prune"]
                 for r in cell)
      cells.append(f"{before:.2%} -> {after:.2%} (drop {100 * drop:.2f}, "
                   f"{len(cell)} seeds)")
    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(record, path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  runs = record["runs"]
  figure, axis = plt.subplots(figsize=(6, 4))
  for variant in dict.fromkeys(r["variant"] for r in runs):
    budgets = sorted({r["budget"] for r in runs if r["variant"] == variant})
    for key, style in (("accuracy_after_prune", "-o"),
                       ("accuracy_before_prune", ":")):
      values = [np.mean([r[key] for r in runs if r["variant"] == variant
                         and r["budget"] == b]) for b in budgets]
      axis.plot(budgets, values, style, label=f"{variant}"
                + (" (before the prune)" if "before" in key else ""))
  axis.set_xscale("log")
  axis.set_xlabel("GSM steps")
  axis.set_ylabel("test accuracy")
  axis.set_title(f"{record['model']} at {record['compression_ratio']:g}x: "
                 "the final prune across budgets")
  axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def main(argv=None):
  arguments = parser(__doc__, model="lenet300")
  arguments.add_argument("--budgets", type=int, nargs="+",
                         default=[300, 600, 1200, 3000, 7500])
  arguments.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  arguments.add_argument("--variants", nargs="+",
                         default=["zero", "zero@0.8", "decay", "paper"])
  arguments.add_argument("--out", type=str, default=str(RESULTS / "lossless_budget"),
                         help="directory for the JSON, Markdown and plot")
  args = arguments.parse_args(argv)
  if args.quick:
    args.budgets, args.seeds = [30], [0]
    args.max_train, args.max_test = 1024, 2000
    args.variants = ["zero", "decay"]
  setup = Setup(args)
  record = {"model": setup.model_name, "compression_ratio": RATIO,
            "peak_lr": PEAK_LR, "momentum": MOMENTUM, "batch": args.batch,
            "command": experiment.command("examples.lossless_budget", argv),
            "machine": machine_info(), "runs": []}
  stem = f"mnist_{setup.model_name}_{RATIO:g}x{'_quick' if args.quick else ''}"
  out = pathlib.Path(args.out)
  for budget in args.budgets:
    for seed in args.seeds:
      for variant in args.variants:
        record["runs"].append(run(setup, variant, budget, seed))
        save(record, markdown(record), out, stem)
  plot(record, out / f"{stem}.png")
  print(markdown(record))
  return record


if __name__ == "__main__":
  main()
