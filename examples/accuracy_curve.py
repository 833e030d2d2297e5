"""Accuracy against compression ratio, from the records of `mnist_gsm`.

Reads every ``mnist_<model>_<ratio>x*.json`` under ``--records`` (one
directory per seed, as written by ``python -m examples.mnist_gsm
--output-dir <records>/seed<k>``) and tabulates and plots, per ratio, the
test accuracy after the final prune of each method on the same budget: GSM
(each variant run), gradual magnitude pruning, one-shot magnitude pruning,
magnitude pruning with fine-tuning and the lottery tickets (retrained from
the dense initialisation on the dense schedule); the mean and the spread
over seeds, every run's command inputs (seed, steps, wall time) in the
JSON, and the paper's points on the plot.

    python -m examples.accuracy_curve --model lenet300 \\
        --records benchmarks/results/gradual

Writes ``<records>/mnist_<model>_curve.{json,md,png}``.
"""

import argparse
import json
import pathlib
import re

import numpy as np

from examples import mnist_gsm
from examples.measure import RESULTS, HelpFormatter

# Ding et al. 2019, Table 1 (test accuracy after pruning, compression).
PAPER_POINTS = {
    "lenet300": [("GSM (paper)", 60.0, 0.9818),
                 ("Han et al. (paper)", 12.1, 0.9841),
                 ("DNS (paper)", 55.6, 0.9801)],
    "lenet5": [("GSM (paper)", 125.0, 0.9922), ("GSM (paper)", 300.0, 0.9906),
               ("Han et al. (paper)", 11.9, 0.9923),
               ("DNS (paper)", 107.7, 0.9909)],
}


def runs_of(record: dict) -> dict:
  """Method name -> (accuracy, steps, wall seconds) of one record."""
  runs = {}
  for gsm in record.get("gsm", []):
    runs[f"GSM {mnist_gsm.gsm_label(gsm)}"] = (
        gsm["accuracy_after_prune"], gsm["steps"], gsm["wall_seconds"])
  if "gradual_magnitude" in record:
    gmp = record["gradual_magnitude"]
    runs["gradual magnitude"] = (gmp["accuracy"], gmp["steps"],
                                 gmp["wall_seconds"])
  if "magnitude" in record:
    mag = record["magnitude"]
    runs["magnitude one-shot"] = (mag["one_shot_accuracy"], 0, 0.0)
    runs["magnitude + fine-tuning"] = (mag["fine_tuned_accuracy"],
                                       mag["steps"], mag["wall_seconds"])
  for name, ticket in record.get("lottery_tickets", {}).items():
    # The GSM mask is that of the first variant the record ran.
    runs[f"lottery ticket, {name} mask"] = (
        ticket["accuracy"], ticket["steps"], ticket["wall_seconds"])
  return runs


def collect(records: pathlib.Path, model: str) -> list[dict]:
  """Every run of every record, in path order; a second run of one method,
  ratio, budget and seed (a record that repeats a configuration) is marked
  ``repeat`` and kept out of the table's seed statistics."""
  pattern = re.compile(rf"mnist_{model}_([0-9.]+)x(_quick|_scale[0-9.]+)?\.json$")
  rows, seen = [], set()
  for path in sorted(records.rglob(f"mnist_{model}_*x*.json")):
    match = pattern.search(path.name)
    if not match:
      continue
    record = json.loads(path.read_text())
    scale = record["epoch_scale"]
    budget = "" if scale == 1.0 else f", {scale:g} of the budget"
    for method, (accuracy, steps, wall) in runs_of(record).items():
      key = (method + budget, record["compression_ratio"], record["seed"])
      rows.append({"repeat": key in seen, "ratio": record["compression_ratio"],
                   "method": method + budget, "base_method": method,
                   "seed": record["seed"], "accuracy": accuracy,
                   "steps": steps, "wall_seconds": wall,
                   "dense": record["dense"]["accuracy"],
                   "epoch_scale": record["epoch_scale"],
                   "file": str(path.relative_to(records)),
                   # Records written before the command was kept have none;
                   # README gives the command per records folder.
                   "command": record.get("command")})
      seen.add(key)
  return rows


def counted(rows: list[dict]) -> list[dict]:
  """The rows that count as seeds: the first run of each configuration."""
  return [row for row in rows if not row["repeat"]]


def summary(rows: list[dict], key: str = "method") -> dict:
  """(row[key], ratio) -> accuracies over seeds."""
  table = {}
  for row in rows:
    table.setdefault((row[key], row["ratio"]), []).append(row["accuracy"])
  return table


def markdown(model: str, rows: list[dict]) -> str:
  repeats = [row for row in rows if row["repeat"]]
  rows = counted(rows)
  table = summary(rows)
  ratios = sorted({r for _, r in table})
  methods = sorted({m for m, _ in table})
  dense = sorted({(row["epoch_scale"], row["seed"], row["dense"])
                  for row in rows})
  lines = [f"# Accuracy after the final prune vs compression: {model}", "",
           "Dense models: " + ", ".join(
               f"budget {scale:g}, seed {s}: {d:.2%}"
               for scale, s, d in dense) + ".", "",
           "| method | " + " | ".join(f"{r:g}x" for r in ratios) + " |",
           "|---" * (len(ratios) + 1) + "|"]
  for method in methods:
    cells = []
    for ratio in ratios:
      values = table.get((method, ratio))
      if not values:
        cells.append("")
      elif len(values) == 1:
        cells.append(f"{values[0]:.2%}")
      else:
        cells.append(f"{np.mean(values):.2%} ({min(values):.2%}-"
                     f"{max(values):.2%}, {len(values)} seeds)")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  if repeats:
    lines += ["", "Repeated runs (same configuration and seed; not counted "
              "as seeds): " + "; ".join(
                  f"{row['method']} {row['ratio']:g}x seed {row['seed']}: "
                  f"{row['accuracy']:.2%} ({row['file']})" for row in repeats)
              + "."]
  return "\n".join(lines) + "\n"


def plot(model: str, rows: list[dict], path: pathlib.Path) -> None:
  """One panel per budget; a method keeps its colour across panels; the
  paper's points (its official budget) on the largest budget's panel."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = counted(rows)
  budgets = sorted({row["epoch_scale"] for row in rows}, reverse=True)
  methods = sorted({row["base_method"] for row in rows}
                   - {"magnitude one-shot"})  # far below; in the table
  colours = dict(zip(methods, plt.get_cmap("tab10").colors * 2))
  fig, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 4.5),
                           squeeze=False)
  for ax, budget in zip(axes[0], budgets):
    table = summary([r for r in rows if r["epoch_scale"] == budget],
                    key="base_method")
    for method in methods:
      ratios = sorted(r for m, r in table if m == method)
      if len(ratios) < 2:
        continue  # a recipe tried at one ratio: in the table
      values = [100 * np.asarray(table[(method, r)]) for r in ratios]
      means = [v.mean() for v in values]
      ax.errorbar(ratios, means,
                  yerr=[[m - v.min() for m, v in zip(means, values)],
                        [v.max() - m for m, v in zip(means, values)]],
                  marker="o", capsize=3, color=colours[method], label=method)
    if budget == budgets[0]:
      for (name, points), marker in zip(_paper_points(model).items(),
                                        ("*", "P", "X", "D")):
        ax.scatter(*zip(*points), marker=marker, s=110, zorder=5,
                   color="black", label=name + (
                       "" if budget == 1.0 else ", official budget"))
    ax.set_xscale("log")
    ticks = sorted({r["ratio"] for r in rows})
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(bottom=max(ax.get_ylim()[0], 88.0))
    ax.set_xlabel("compression ratio (weights / kept weights)")
    ax.set_ylabel("test accuracy after the final prune (%)")
    ax.set_title(f"{model} on MNIST, " + (
        "the official budget" if budget == 1.0
        else f"{budget:g} of the official budget"))
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _paper_points(model: str) -> dict:
  """Source -> [(ratio, accuracy %)] of the paper's Table 1."""
  paper = {}
  for name, ratio, accuracy in PAPER_POINTS.get(model, []):
    paper.setdefault(name, []).append((ratio, 100 * accuracy))
  return paper


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=HelpFormatter)
  parser.add_argument("--model", default="lenet300")
  parser.add_argument("--records", type=pathlib.Path,
                      default=RESULTS / "gradual")
  args = parser.parse_args(argv)
  rows = collect(args.records, args.model)
  if not rows:
    parser.error(f"no mnist_{args.model}_<ratio>x records under "
                 f"{args.records}")
  text = markdown(args.model, rows)
  stem = args.records / f"mnist_{args.model}_curve"
  stem.with_suffix(".json").write_text(json.dumps(rows, indent=2))
  stem.with_suffix(".md").write_text(text)
  plot(args.model, rows, stem.with_suffix(".png"))
  print(text)
  return rows


if __name__ == "__main__":
  main()
