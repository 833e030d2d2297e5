"""Why structured GSM collapses on short budgets: ablations on one dense model.

Trains the dense model once, then runs structured GSM to ``--reduction``
fewer FLOPs in several variants, each from the same dense weights on the
same batches for the same number of steps, and uniform L1-norm filter
pruning + fine-tuning on that budget as the reference. Per variant: the
trained (= shrunk) accuracy with batch statistics recomputed after training,
and with the running averages training left (the two differ where
structures ramped to zero faster than the averages follow), the FLOPs
reduction reached, the blocks removed and the share of channels each group
kept, with a plot of the latter.

Variants (``--variants``; the default is every one):

  default        ``structured_gsm_sgd(..., total_steps=T)`` as shipped
                 (``min_kept_share="auto"``: half the uniform width on the
                 main path, within half of what the ranking chooses)
  no_floor       a group may keep a single channel (``min_kept_share=None``,
                 the default before the floor)
  floor25        every channel group keeps at least 25% of its channels
                 (``min_kept_share=0.25``)
  floor_half     every group, bypassed ones too, keeps at least half the
                 width that uniform pruning to C keeps
                 (``min_kept_share=0.5 / sqrt(C)``: 0.18 at 8x, 0.25 at 4x)
  magnitude      the L2 norm of each structure as its saliency throughout
  parts          a block's saliency as the sum of its parts'
  zero40         removed structures shrunk to zero by 40% of T (not 60%)
  early          frozen at 10% of T, zero by 30%
  average90      each structure ranked by its saliency averaged over the
                 refreshes (``saliency_decay=0.9``, about 10 batches)
  average99      the same over about 100 batches (``saliency_decay=0.99``)
  momentum99     momentum 0.99 (the paper's), not the examples' 0.9
  ramp           the FLOPs target reached gradually: 1x at step 0 to the
                 full reduction at the freeze (20% of T)
  channels       channels alone: no residual block can go

``--no-blocks`` takes the blocks out of every variant's ranking (the
structured guide's advice for transformers).

    python -m examples.structured_ablation --model resnet20 --epochs 5 --batch 64
    python -m examples.structured_ablation --model vit --no-blocks \
        --variants default early average90 average99 --no-baseline
    python -m examples.structured_ablation --quick       # as the tests run it

A variant whose options cannot reach ``--reduction`` (a floor that keeps
more than the budget) is recorded with the reason and the run goes on.
``--resume`` keeps the variants (and the baseline) the record already has
and runs those of ``--variants``, again where the record has them.

Writes (to ``--out``) ``mnist_<model>[_no_blocks][_seed<n>]_<C>x.json``,
a Markdown table and a PNG of the channels each variant kept.
"""

import json
import pathlib

import numpy as np
import optax

from examples import experiment, structured_gsm
from examples.measure import RESULTS, bar_offsets

OUT = RESULTS / "structured_ablation"

# Each variant's options for `structured_gsm_sgd`, from the step budget T
# and the FLOPs reduction C, with a description for the records.
VARIANTS = {
    "default": lambda steps, c: {},
    "no_floor": lambda steps, c: {"min_kept_share": None},
    "floor25": lambda steps, c: {"min_kept_share": 0.25},
    "floor_half": lambda steps, c: {"min_kept_share": 0.5 / float(np.sqrt(c))},
    "magnitude": lambda steps, c: {"saliency": "magnitude"},
    "parts": lambda steps, c: {"block_saliency": "parts"},
    "zero40": lambda steps, c: {"zero_passive_at": round(0.4 * steps)},
    "early": lambda steps, c: {"freeze_mask_at": round(0.1 * steps),
                               "zero_passive_at": round(0.3 * steps)},
    "average90": lambda steps, c: {"saliency_decay": 0.9},
    "average99": lambda steps, c: {"saliency_decay": 0.99},
    "momentum99": lambda steps, c: {"momentum": 0.99},
    "ramp": lambda steps, c: {"compression_ratio": optax.linear_schedule(
        1.0, c, round(0.2 * steps))},
    "channels": lambda steps, c: {},
}
# Variants on other structures than the traced ones.
STRUCTURES = {
    "channels": lambda groups: groups.without([b.name for b in groups.blocks]),
}


def describe(options: dict) -> dict:
  """``options`` as the record keeps them: schedules by name."""
  return {k: ("schedule" if callable(v) else v) for k, v in options.items()}


def markdown(record) -> str:
  lines = [f"# Structured GSM ablations: {record['model']} at "
           f"{record['reduction']:g}x fewer FLOPs", "",
           f"Dense {record['dense']['accuracy']:.4f} after "
           f"{record['dense']['steps']} steps; each variant then has "
           f"{record['steps']} steps of {record['batch']} from the dense "
           f"model, on the same batches. "
           f"{_commands_line(record)}", "",
           "| variant | options | accuracy (trained = shrunk) | with the "
           "running BN averages | FLOPs reduction | blocks removed | "
           "smallest group kept | wall s |",
           "|---" * 8 + "|"]
  for run in record["runs"]:
    if "infeasible" in run:
      lines.append(f"| {run['variant']} | `{run['options']}` | infeasible: "
                   f"{run['infeasible']} | | | | | |")
      continue
    running = run.get("accuracy_running_stats")
    lines.append(
        f"| {run['variant']} | `{run['options']}`"
        f"{_floor_suffix(run)} | "
        f"{run['accuracy_shrunk']:.4f} | "
        f"{'-' if running is None else f'{running:.4f}'} | "
        f"{run['flops_reduction']:.2f}x | "
        f"{len(run['blocks_removed'])} of {record['blocks']} | "
        f"{min(run['kept_fraction']):.3f} | {run['wall_seconds']:.0f} |")
  l1 = record.get("l1")
  if l1:
    lines.append(f"| L1 uniform + fine-tune | | {l1['accuracy_fine_tuned']:.4f}"
                 f" | | {l1['flops_reduction']:.2f}x | 0 | "
                 f"{min(l1['kept_fraction']):.3f} | |")
  return "\n".join(lines) + "\n"


def _floor_suffix(run) -> str:
  """A default run from before `min_kept_share="auto"` had no floor, and
  one from before the bypassed groups were spared floored them too."""
  if "min_kept_share" in run["options"]:
    return ""
  if "min_kept_share" not in run:
    return " (no floor: before 'auto')"
  if "min_kept_channels" not in run:
    return " (auto floor on every group)"
  return ""


def _commands_line(record) -> str:
  """The record's command, and those of the variants it kept (--resume)."""
  earlier = [c for c in dict.fromkeys(r.get("command") for r in
                                      record["runs"])
             if c and c != record["command"]]
  return (f"Command: `{record['command']}`."
          + (" Variants kept from earlier runs: "
             + "; ".join(f"`{c}`" for c in earlier) + "."
             if earlier else ""))


def plot(record, path) -> None:
  """What each feasible variant and the L1 baseline kept; nothing is
  written when there is neither."""
  runs = [r for r in record["runs"] if "infeasible" not in r]
  if not runs and not record.get("l1"):
    print("no feasible variant and no baseline: nothing to plot", flush=True)
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = record["groups"]
  figure, axis = plt.subplots(figsize=(10, 4))
  width, offsets = bar_offsets(len(runs) + bool(record.get("l1")))
  positions = np.arange(len(names))
  # Distinct hues first (tab20's even entries), then their light shades:
  # more variants than the default cycle's ten colours.
  colours = [plt.colormaps["tab20"](i) for i in (*range(0, 20, 2),
                                                 *range(1, 20, 2))]
  for offset, run, colour in zip(offsets, runs, colours):
    inside = np.array([any(structured_gsm.group_in_block(n, b)
                           for b in run["blocks_removed"]) for n in names])
    kept = np.where(inside, 0.0, run["kept_fraction"])
    axis.bar(positions + offset, kept, width, color=colour,
             label=f"{run['variant']} ({run['accuracy_shrunk']:.1%})")
  if record.get("l1"):
    axis.bar(positions + offsets[-1], record["l1"]["kept_fraction"],
             width, color="black", label="L1 uniform "
             f"({record['l1']['accuracy_fine_tuned']:.1%} fine-tuned)")
  axis.set_xticks(positions, names, rotation=45, ha="right", fontsize=7)
  axis.set_ylabel("channels kept (0: in a removed block)")
  axis.set_title(f"{record['model']}, {record['reduction']:g}x fewer FLOPs, "
                 f"{record['steps']} steps", fontsize=9)
  axis.legend(fontsize=6, ncol=2)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def main(argv=None):
  parser = experiment.parser(__doc__, model="resnet20", epochs=5, batch=64)
  parser.add_argument("--reduction", type=float, default=4.0)
  parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                      default=list(VARIANTS))
  parser.add_argument("--no-baseline", action="store_true",
                      help="skip uniform L1 + fine-tuning")
  parser.add_argument(
      "--no-blocks", action="store_true",
      help="rank channels (heads, neurons) only in every variant")
  parser.add_argument("--resume", action="store_true",
                      help="keep the variants the record already has")
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  args = parser.parse_args(argv)
  experiment.apply_quick(args)
  if args.quick and args.variants == list(VARIANTS):
    args.variants = args.variants[:2]  # unless chosen
  setup = experiment.Setup(args)
  model, trainer, params, batch_stats, dense = experiment.dense_stage(setup)
  groups = setup.groups(model, setup.variables(params, batch_stats))
  if args.no_blocks:
    groups = groups.without([b.name for b in groups.blocks])
  record = {**setup.record(dense), "reduction": args.reduction,
            "command": experiment.command("examples.structured_ablation",
                                          argv),
            "groups": [g.name for g in groups.channels],
            "blocks": len(groups.blocks), "runs": []}
  stem = (f"{setup.stem_for('_no_blocks' if args.no_blocks else '')}_"
          f"{args.reduction:g}x")
  earlier, baseline = (earlier_runs(args.out / f"{stem}.json", record)
                       if args.resume else ({}, None))
  if args.no_baseline and baseline:
    record["l1"] = baseline
  record["runs"] = [run for variant, run in earlier.items()
                    if variant not in args.variants]
  for variant in args.variants:
    options = VARIANTS[variant](setup.steps, args.reduction)
    structures = STRUCTURES.get(variant, lambda g: g)(groups)
    run = {"variant": variant, "options": describe(options),
           "command": record["command"]}
    try:
      result, _, _ = structured_gsm.gsm_stage(
          setup, trainer, structures, params, batch_stats, args.reduction,
          **options)
    except ValueError as error:
      if "`compression_ratio`" not in str(error):
        raise
      print(f"{variant}: infeasible: {error}", flush=True)
      result = {"infeasible": str(error)}
    # ``result`` carries the stage's training time (``wall_seconds``).
    record["runs"] = in_variant_order(record["runs"] + [{**run, **result}])
    experiment.save(record, markdown(record), args.out, stem)
  if not args.no_baseline:
    record["l1"] = structured_gsm.uniform_stage(setup, groups, params, batch_stats,
                                                args.reduction)
    experiment.save(record, markdown(record), args.out, stem)
  plot(record, args.out / f"{stem}_channels.png")
  print(markdown(record))
  return record


def earlier_runs(path: pathlib.Path, record: dict) -> tuple[dict, dict | None]:
  """The runs of the record at ``path`` by variant, and its L1 baseline,
  checked to come from the same dense model and budget."""
  if not path.exists():
    return {}, None
  earlier = json.loads(path.read_text())
  for key in ("model", "reduction", "steps", "batch", "groups"):
    if earlier.get(key) != record.get(key):
      raise SystemExit(f"--resume: {path} has {key}={earlier.get(key)!r}, "
                       f"this run {record.get(key)!r}: not the same "
                       "experiment.")
  runs = {run["variant"]: {"command": earlier["command"], **run}
          for run in earlier["runs"]}
  return runs, earlier.get("l1")


def in_variant_order(runs: list) -> list:
  return sorted(runs, key=lambda run: list(VARIANTS).index(run["variant"]))


if __name__ == "__main__":
  main()
