"""Structured GSM against its baselines over step budgets, FLOPs reductions
and seeds: where it wins, ties or loses.

For each seed and step budget T: the dense model trained for T steps, then
from it, for each FLOPs reduction, on the same T steps and batches:

- ``gsm``: structured GSM (`structured_gsm_sgd`, ``cost="flops"``, the
  lossless default), batch statistics recomputed, shrunk; no fine-tuning;
- ``l1``: uniform L1-norm filter pruning + fine-tuning (Li et al., 2017);
- ``taylor``: global Taylor pruning + fine-tuning (Molchanov et al., 2019:
  channels and blocks of the whole model in one ranking per FLOP, from the
  gradient of a few batches, so widths differ per layer);
- ``csgd``: C-SGD to the widths of the uniform baseline, then the merge.

Each cell is GSM's accuracy against the best baseline, with the seed noise:
the largest difference between two seeds of one method in that cell. GSM
wins when it is ahead by more than the noise, ties within it, loses
otherwise.

    python -m examples.structured_grid --model lenet5
    python -m examples.structured_grid --model resnet20 --batch 64 \\
        --budgets 500 --reductions 2 4 8
    python -m examples.structured_grid --quick       # as the tests run it

``--resume`` keeps what the record already has and runs the rest: missing
cells, and methods of ``--methods`` missing from a cell; ``--rerun gsm``
runs GSM again in every cell it reaches (after a change to the method).
Writes (to ``--out``) ``mnist_<model>.json``, a Markdown table per
reduction and a PNG of accuracy against the budget.
"""

import argparse
import json
import pathlib

import numpy as np

from examples import csgd, experiment, structured_gsm
from examples.measure import RESULTS

OUT = RESULTS / "structured_grid"
METHODS = {"gsm": "structured GSM", "l1": "L1 uniform + FT",
           "taylor": "global Taylor + FT", "csgd": "C-SGD"}
# The accuracy each method's stage reports for its final (small) model.
ACCURACY = {"gsm": "accuracy_shrunk", "l1": "accuracy_fine_tuned",
            "taylor": "accuracy_fine_tuned", "csgd": "accuracy_merged"}


def cell(setup, trainer, groups, params, batch_stats, reduction, methods):
  """Every method from one dense model to ``reduction`` fewer FLOPs."""
  uniform = structured_gsm.uniform_for(groups, params, reduction)
  stages = {
      "gsm": lambda: structured_gsm.gsm_stage(
          setup, trainer, groups, params, batch_stats, reduction,
          min_kept_share=setup.args.min_kept_share)[0],
      "l1": lambda: structured_gsm.fine_tune_stage(
          setup, groups, params, batch_stats, uniform, f"L1 {reduction}x"),
      "taylor": lambda: structured_gsm.taylor_stage(
          setup, trainer, groups, params, batch_stats, reduction),
      # C-SGD merges channels, not blocks.
      "csgd": lambda: csgd.csgd_stage(
          setup, trainer, groups.without([b.name for b in groups.blocks]),
          params, batch_stats, widths={
              g.name: int(np.sum(k))
              for g, k in zip(groups.channels, uniform.channels)})[0],
  }
  results = {}
  for method in methods:
    record = stages[method]()
    results[method] = {"accuracy": record[ACCURACY[method]],
                       "flops_reduction": record["flops_reduction"],
                       "wall_seconds": record["wall_seconds"],
                       "blocks_removed": record.get("blocks_removed", []),
                       **({k: record[k] for k in ("min_kept_share",
                                                  "min_kept_channels")}
                          if method == "gsm" else {})}
  return results


def verdicts(record) -> list[dict]:
  """Per (reduction, budget): every method's accuracies over the seeds, and
  GSM against the best baseline with the seed noise."""
  rows = []
  for reduction in record["reductions"]:
    for budget in record["budgets"]:
      cells = [c for c in record["cells"]
               if c["reduction"] == reduction and c["budget"] == budget]
      if not cells:
        continue
      accuracy = {m: [c["methods"][m]["accuracy"] for c in cells]
                  for m in record["methods"]
                  if all(m in c["methods"] for c in cells)}
      # The seed noise of the methods GSM is measured against (and of the
      # dense model): GSM's own spread is its result, not noise, or a
      # collapse on one seed would count as a tie.
      noise = max((max(a) - min(a) for m, a in accuracy.items()
                   if m != "gsm"), default=0.0)
      dense = [c["dense"]["accuracy"] for c in cells]
      noise = max(noise, max(dense) - min(dense))
      # A method run again (--rerun) starts from the dense model trained
      # again, which another process need not reproduce bit for bit.
      redone = max((abs(r["dense_accuracy"] - c["dense"]["accuracy"])
                    for c in cells for r in c["methods"].values()
                    if "dense_accuracy" in r), default=0.0)
      row = {"reduction": reduction, "budget": budget,
             "seeds": [c["seed"] for c in cells],
             "dense": dense,
             "accuracy": accuracy, "noise": noise, "dense_redone": redone,
             "flops": {m: [c["methods"][m]["flops_reduction"]
                           for c in cells] for m in accuracy}}
      baselines = {m: float(np.mean(a)) for m, a in accuracy.items()
                   if m != "gsm"}
      if "gsm" in accuracy and baselines:
        best = max(baselines, key=baselines.get)
        margin = float(np.mean(accuracy["gsm"])) - baselines[best]
        row.update(best=best, margin=margin, verdict=(
            "win" if margin > noise else "tie" if margin >= -noise
            else "loss"))
      rows.append(row)
  return rows


def markdown(record) -> str:
  methods = record["methods"]
  lines = [f"# Structured GSM against its baselines: {record['model']}", "",
           f"{_commands(record)} Batch {record['batch']}; "
           f"machine: {record['machine']['cpu']}, "
           f"{record['machine']['cpu_count']} cores. Each cell: mean over "
           "the seeds (the half-range after ±) and the FLOPs reduction "
           "reached (in brackets); every method from the same "
           "dense model on the same budget as the dense stage. Noise: the "
           "largest difference between two seeds of the dense model or of "
           "one baseline in the cell (GSM's own spread is not noise).", ""]
  rows = verdicts(record)
  for reduction in record["reductions"]:
    lines += [f"## {reduction:g}x fewer FLOPs", "",
              "| steps | seeds | dense | " + " | ".join(
                  METHODS[m] for m in methods)
              + " | GSM - best baseline | noise | GSM |",
              "|---" * (len(methods) + 6) + "|"]
    for row in rows:
      if row["reduction"] != reduction:
        continue
      cells = [f"{_mean(row['accuracy'][m])} "
               f"({np.mean(row['flops'][m]):.2f}x)"
               if m in row["accuracy"] else "-" for m in methods]
      verdict = (f"{100 * row['margin']:+.2f} pt vs {METHODS[row['best']]} | "
                 f"{100 * row['noise']:.2f} pt | {row['verdict']}"
                 if "margin" in row else "| | ")
      lines.append(f"| {row['budget']} | {len(row['seeds'])} | "
                   f"{_mean(row['dense'])} | " + " | ".join(cells)
                   + f" | {verdict} |")
    lines.append("")
  redone = max((r["dense_redone"] for r in rows), default=0.0)
  if redone:
    lines += [f"A method run again (`--rerun`) started from the dense "
              f"model trained again, in another process: its accuracy "
              f"differs from the dense column's by up to "
              f"{100 * redone:.2f} pt.", ""]
  floors = {}
  for c in record["cells"]:
    if "gsm" in c["methods"]:
      floors.setdefault(structured_gsm.floor_text(c["methods"]["gsm"]),
                        set()).add(c["budget"])
  if floors:
    lines += ["Structured GSM's floor (`min_kept_share`): " + "; ".join(
        f"{floor} ({', '.join(str(b) for b in sorted(budgets))} steps)"
        for floor, budgets in floors.items()) + ".", ""]
  counts = {v: sum(r.get("verdict") == v for r in rows)
            for v in ("win", "tie", "loss")}
  lines.append(f"GSM against the best baseline: {counts['win']} wins, "
               f"{counts['tie']} ties, {counts['loss']} losses of "
               f"{len(rows)} cells.")
  return "\n".join(lines) + "\n"


def _commands(record) -> str:
  """The commands that ran the record's cells (each cell keeps those that
  ran its methods; a record from before that, its last command)."""
  commands = list(dict.fromkeys(
      c for cell in record["cells"] for c in cell.get("commands", [])))
  commands = commands or [record["command"]]
  return ("Command" + "s" * (len(commands) > 1) + ": "
          + "; ".join(f"`{c}`" for c in commands) + ".")


def _mean(values) -> str:
  spread = (max(values) - min(values)) / 2
  return f"{np.mean(values):.4f}" + (f" ±{spread:.4f}" if len(values) > 1
                                     else "")


def plot(record, path) -> None:
  """Accuracy against the step budget, a panel per FLOPs reduction: a line
  through each method's seed means, a dot per seed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = verdicts(record)
  reductions = record["reductions"]
  figure, axes = plt.subplots(1, len(reductions),
                              figsize=(4.2 * len(reductions), 3.6),
                              squeeze=False, sharey=True)
  for axis, reduction in zip(axes[0], reductions):
    mine = [r for r in rows if r["reduction"] == reduction]
    budgets = [r["budget"] for r in mine]
    for method in (m for m in record["methods"] if m in mine[0]["accuracy"]):
      means = [np.mean(r["accuracy"][method]) for r in mine]
      line, = axis.plot(budgets, means, marker="o", label=METHODS[method])
      for r in mine:
        axis.scatter([r["budget"]] * len(r["accuracy"][method]),
                     r["accuracy"][method], s=10, color=line.get_color(),
                     alpha=0.5)
    axis.plot(budgets, [np.mean(r["dense"]) for r in mine], "k--",
              label="dense")
    axis.set_xscale("log", base=2)
    axis.set_xticks(budgets, [str(b) for b in budgets])
    axis.set_xlabel("steps (dense, then each method)")
    axis.set_title(f"{record['model']}, {reduction:g}x fewer FLOPs",
                   fontsize=9)
  axes[0, 0].set_ylabel("test accuracy")
  axes[0, -1].legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def main(argv=None):
  parser = experiment.parser(__doc__, model="lenet5")
  parser.add_argument("--budgets", type=int, nargs="+",
                      default=[500, 1000, 2000],
                      help="steps of the dense stage and of each method; "
                      "multiples of --steps-per-epoch")
  parser.add_argument("--reductions", type=float, nargs="+",
                      default=[2, 4, 8])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                      default=list(METHODS))
  parser.add_argument("--vector-factor", type=float, default=0.1,
                      help="C-SGD's share of the centripetal strength for "
                      "bias and norm parameters")
  parser.add_argument("--resume", action="store_true",
                      help="keep the cells of an earlier record")
  parser.add_argument("--rerun", nargs="+", choices=list(METHODS),
                      default=[], help="with --resume: run these methods "
                      "again in the cells of --seeds x --budgets x "
                      "--reductions")
  structured_gsm.add_floor_argument(parser)
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  args = parser.parse_args(argv)
  experiment.apply_quick(args)
  if args.quick:
    args.budgets = [args.epochs * args.steps_per_epoch]
    args.reductions, args.seeds = args.reductions[:1], args.seeds[:1]
  for budget in args.budgets:
    if budget <= 0 or budget % args.steps_per_epoch:
      parser.error(f"--budgets must be positive multiples of "
                   f"--steps-per-epoch ({args.steps_per_epoch}); got {budget}")
  stem = (f"mnist_{experiment.model_name(args)}"
          f"{'_quick' if args.quick else ''}")
  path = args.out / f"{stem}.json"
  cells = (json.loads(path.read_text())["cells"]
           if args.resume and path.exists() else [])
  by_key = {(c["seed"], c["budget"], c["reduction"]): c for c in cells}

  def missing(seed, budget, reduction):
    found = by_key.get((seed, budget, reduction))
    if found is None:
      return list(args.methods)
    return [m for m in args.methods if m in args.rerun
            or m not in found["methods"]]

  this_command = experiment.command("examples.structured_grid", argv)
  record = None
  for seed in args.seeds:
    for budget in args.budgets:
      todo = [r for r in args.reductions if missing(seed, budget, r)]
      if not todo:
        continue
      setup = experiment.Setup(argparse.Namespace(
          **{**vars(args), "seed": seed,
             "epochs": budget // args.steps_per_epoch}))
      model, trainer, params, batch_stats, dense = experiment.dense_stage(
          setup)
      groups = setup.groups(model, setup.variables(params, batch_stats))
      for reduction in todo:
        methods = missing(seed, budget, reduction)
        key = (seed, budget, reduction)
        if key not in by_key:
          by_key[key] = {"seed": seed, "budget": budget,
                         "reduction": reduction, "dense": dense,
                         "methods": {}}
          cells.append(by_key[key])
        elif by_key[key]["dense"]["accuracy"] != dense["accuracy"]:
          print(f"note: the dense model of {key} scores "
                f"{dense['accuracy']}, the record's "
                f"{by_key[key]['dense']['accuracy']}", flush=True)
        commands = by_key[key].setdefault("commands", [])
        if this_command not in commands:
          commands.append(this_command)
        by_key[key]["methods"].update({
            method: {**result, "dense_accuracy": dense["accuracy"]}
            for method, result in cell(setup, trainer, groups, params,
                                       batch_stats, reduction,
                                       methods).items()})
        record = {
            **setup.record(dense),
            "command": this_command,
            "budgets": sorted({c["budget"] for c in cells}),
            "reductions": sorted({c["reduction"] for c in cells}),
            "seeds": sorted({c["seed"] for c in cells}),
            "methods": [m for m in METHODS
                        if any(m in c["methods"] for c in cells)],
            "cells": cells}
        del record["dense"], record["steps"]  # per cell
        experiment.save(record, markdown(record), args.out, stem)
  if record is None:
    print(f"{path}: every cell is already there")
    record = json.loads(path.read_text())
    experiment.save(record, markdown(record), args.out, stem)
  plot(record, args.out / f"{stem}.png")
  print(markdown(record))
  return record


if __name__ == "__main__":
  main()
