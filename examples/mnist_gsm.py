r"""GSM on real MNIST, end to end: dense training, GSM, the final prune,
magnitude-pruning baselines and lottery tickets (Ding et al., 2019, Sec. 4).

For one model and one or more compression ratios:

1. train the dense model (the official schedule: lr 3e-2, 5 warm-up epochs,
   x0.1 at epochs 40/80/120/160 of 200, momentum 0.9, weight decay 5e-4);
2. GSM-train from it (lr 1e-2, 5 warm-up, x0.1 at 160/200/240 of 280,
   momentum 0.99 Nesterov, Taylor saliency), then the final global magnitude
   prune, no fine-tuning; in the variants asked for:
   - ``lossless``: ``gsm_sgd(..., total_steps=...)``, the library's
     lossless default: ``freeze_mask_at`` at 20% of the GSM steps and
     ``passive_weight_decay`` at critical damping, both derived from the
     budget and the schedule by ``optax_gsm.lossless_settings``;
   - ``paper``: exactly the above;
   - ``freeze``: ``gsm(freeze_mask_at=...)`` at ``--freeze-at`` of the GSM
     steps (default 0.2, long before the first learning-rate drop): the
     active set is frozen to the Q largest ``|w|`` (what the final prune will
     keep), so every weight the prune removes decays at the full learning
     rate for the many steps left;
   - ``freeze-decay``: ``freeze`` plus ``gsm(passive_weight_decay=...)`` at
     critical damping, ``(1 - sqrt(0.99))**2 / 1e-2`` = 2.5e-3: passive
     weights shrink e-fold every 200 steps instead of every 2,000, for
     budgets too short for ``freeze`` alone;
   - ``ramp``: compression ramped geometrically from 1x to C over the first
     quarter of the GSM steps, then as ``paper``;
3. baselines on the same data and budget: one-shot global magnitude pruning
   of the dense model, without and with fine-tuning (Han et al. 2015,
   ``--magnitude-rounds`` rounds of prune + fine-tune); gradual magnitude
   pruning (Zhu & Gupta 2017, ``examples/gradual_magnitude.py``) from the
   dense model on the GSM schedule with momentum 0.9: cubic ramp over
   ``--gmp-ramp`` of the steps, the mask updated every ``--gmp-every``
   epochs, ``--gmp-scope`` global or per layer (``--baselines`` picks
   which of the two run; both by default);
4. lottery tickets: the GSM mask and the one-shot magnitude mask, each
   applied to the dense model's initialisation and retrained with the mask
   fixed (the dense schedule).

Each GSM variant's pruned parameters are saved with ``optax_gsm.export.save_sparse``
as ``<stem>_<variant>.gsm`` (a few KB) beside the records.

Budgets are counted in optimizer steps: an epoch is 60000 / 256 = 234 steps
whatever the training-set size. ``--epoch-scale`` shortens every schedule
proportionally. Writes (to ``--output-dir``) ``results/mnist_<model>_<ratio>x.json``,
a Markdown table beside it and a PNG of the per-layer density GSM chose.

    python -m examples.mnist_gsm --model lenet300 --ratios 60
    python -m examples.mnist_gsm --model lenet5 --ratios 125 300 --epoch-scale 0.05
    python -m examples.mnist_gsm --quick      # a few hundred steps, as the tests run it

Results stay after every stage, so a stopped run keeps what it measured.
``--dense-checkpoint FILE`` trains the dense model once and reuses it, for
instance to run two ratios side by side, one process per core (on a 2-core
CPU this gives 1.5x the throughput of one process using both):

    python -m examples.mnist_gsm --model lenet5 --ratios 125 --epoch-scale 0.1 \
        --dense-checkpoint dense.msgpack --skip-baselines --skip-lottery \
        --variants paper          # trains and saves the dense model
    taskset -c 0 python -m examples.mnist_gsm --model lenet5 --ratios 125 \
        --epoch-scale 0.1 --dense-checkpoint dense.msgpack &
    taskset -c 1 python -m examples.mnist_gsm --model lenet5 --ratios 300 \
        --epoch-scale 0.1 --dense-checkpoint dense.msgpack
"""

import argparse
import functools
import json
import math
import pathlib

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_gsm
from examples import experiment
from examples.gradual_magnitude import gradual_magnitude_pruning
from examples.measure import RESULTS, HelpFormatter, bar_offsets
from examples.mnist_data import load_mnist, normalise
from examples.models import MNIST_MODELS
from examples.training import Trainer

BATCH = 256
OFFICIAL_STEPS_PER_EPOCH = 60000 // BATCH  # 234
DENSE = dict(lr=3e-2, epochs=200, milestones=(40, 80, 120, 160), momentum=0.9)
GSM = dict(lr=1e-2, epochs=280, milestones=(160, 200, 240), momentum=0.99)
WARMUP_EPOCHS = 5
WEIGHT_DECAY = 5e-4
VARIANTS = ("lossless", "paper", "freeze", "freeze-decay", "ramp")


def passive_weight_decay_of(momentum: float) -> float:
  """Critical damping of a passive weight at the peak GSM learning rate: the
  fastest non-oscillating decay, sqrt(momentum) a step (see optax_gsm._gsm)."""
  return (1 - math.sqrt(momentum)) ** 2 / GSM["lr"]


def gsm_label(gsm: dict) -> str:
  """A GSM record's variant, with its freeze point and a non-default
  momentum."""
  label = gsm["variant"]
  if "freeze_at" in gsm:
    label += f"@{gsm['freeze_at']:g}"
  if gsm.get("momentum", GSM["momentum"]) != GSM["momentum"]:
    label += f", momentum {gsm['momentum']:g}"
  return label


def lr_schedule(stage, steps_per_epoch, epoch_scale):
  """Linear warm-up, then x0.1 at each milestone, in steps."""
  to_steps = lambda e: max(1, round(e * epoch_scale * steps_per_epoch))
  warmup = to_steps(WARMUP_EPOCHS)
  decay = optax.piecewise_constant_schedule(
      stage["lr"], {to_steps(m) - warmup: 0.1 for m in stage["milestones"]})
  return optax.join_schedules(
      [optax.linear_schedule(stage["lr"] / warmup, stage["lr"], warmup), decay],
      [warmup])


def epochs_of(stage, epoch_scale):
  return max(1, round(stage["epochs"] * epoch_scale))


# --baselines: one-shot magnitude pruning + fine-tuning, and gradual
# magnitude pruning.
BASELINES = ("magnitude", "gradual")


def masked_sgd(schedule, momentum):
  return optax.chain(optax.add_decayed_weights(WEIGHT_DECAY),
                     optax.trace(momentum),
                     optax.scale_by_learning_rate(schedule))


def layer_densities(mask):
  report = optax_gsm.sparsity_report(mask)
  return {leaf.path: leaf.density for leaf in report.leaves if leaf.prunable}


def print_readiness(trainer, desc):
  """What the final prune would remove now: printed at each evaluation."""
  def show(params, opt_state):
    ready = optax_gsm.prune_readiness(params, opt_state=opt_state)
    print(f"  {desc}: test {trainer.accuracy(params):.2%}; the prune would "
          f"remove max |w| {ready.largest_removed:.2e} (min kept "
          f"{ready.smallest_kept:.2e}), {ready.removed_mass_fraction:.2%} of "
          f"sum |w|; kept & active {ready.kept_active_fraction:.1%}",
          flush=True)
  return show


def run_gsm(trainer, dense_params, ratio, variant, epoch_scale, freeze_at,
            momentum=GSM["momentum"]):
  """One GSM variant from the dense model; returns its record."""
  steps_per_epoch = trainer.steps_per_epoch
  epochs = epochs_of(GSM, epoch_scale)
  schedule = lr_schedule(GSM, steps_per_epoch, epoch_scale)
  compression = ratio
  if variant == "ramp":
    ramp_steps = max(1, epochs * steps_per_epoch // 4)
    compression = lambda step: ratio ** jnp.minimum(step / ramp_steps, 1.0)
  freezes = variant in ("freeze", "freeze-decay")
  freeze_step = (round(epochs * freeze_at) * steps_per_epoch if freezes
                 else None)
  passive_weight_decay = (passive_weight_decay_of(momentum)
                          if variant == "freeze-decay" else None)
  total_steps = epochs * steps_per_epoch if variant == "lossless" else None
  tx = optax_gsm.gsm_sgd(schedule, compression, total_steps=total_steps,
                         momentum=momentum, nesterov=True,
                         weight_decay=WEIGHT_DECAY,
                         passive_weight_decay=passive_weight_decay,
                         freeze_mask_at=freeze_step)
  desc = f"GSM {variant} {ratio:g}x"
  params, opt_state, timing = trainer.train(
      dense_params, tx, epochs, desc=desc,
      on_evaluate=print_readiness(trainer, desc))
  record = {"variant": variant, "momentum": momentum, "epochs": epochs,
            "steps": epochs * steps_per_epoch, **timing}
  if total_steps is not None:
    record["lossless_settings"] = optax_gsm.lossless_settings(
        schedule, total_steps, momentum=momentum,
        weight_decay=WEIGHT_DECAY)._asdict()
  if freezes:
    record["freeze_at"] = freeze_at
    record["freeze_step"] = freeze_step
  if passive_weight_decay is not None:
    record["passive_weight_decay"] = passive_weight_decay
  ready = optax_gsm.prune_readiness(params, opt_state=opt_state)
  pruned, kept = optax_gsm.prune(params, opt_state=opt_state)
  record.update(
      accuracy_before_prune=trainer.accuracy(params),
      accuracy_after_prune=trainer.accuracy(pruned),
      final_mask_overlap=ready.kept_active_fraction,
      largest_pruned_weight=ready.largest_removed,
      layer_density=layer_densities(kept),
      nonzero=optax_gsm.sparsity_report(pruned).prunable_nonzero)
  return record, pruned, kept


def run_magnitude(trainer, dense_params, ratio, rounds, epoch_scale):
  """Han et al.: prune by |w| in ``rounds`` geometric steps, fine-tuning
  after each, on the GSM budget. Returns (one-shot acc, fine-tuned acc)."""
  one_shot, _ = optax_gsm.prune(dense_params, ratio)
  one_shot_accuracy = trainer.accuracy(one_shot)
  epochs = epochs_of(GSM, epoch_scale)
  params = dense_params
  wall_seconds = 0.0
  for r in range(1, rounds + 1):
    params, mask = optax_gsm.prune(params, ratio ** (r / rounds))
    tx = masked_sgd(lr_schedule(GSM, trainer.steps_per_epoch,
                                epoch_scale / rounds),
                    DENSE["momentum"])
    params, _, timing = trainer.train(
        params, tx, max(1, epochs // rounds), mask=mask,
        desc=f"magnitude FT {ratio:g}x round {r}")
    wall_seconds += timing["wall_seconds"]
  return {"one_shot_accuracy": one_shot_accuracy,
          "fine_tuned_accuracy": trainer.accuracy(params),
          "rounds": rounds, "steps": rounds * max(1, epochs // rounds)
          * trainer.steps_per_epoch, "seconds_per_step": timing["seconds_per_step"],
          "wall_seconds": wall_seconds,
          "layer_density": layer_densities(mask)}


def run_gradual(trainer, dense_params, ratio, epoch_scale, ramp, every,
                scope):
  """Zhu & Gupta's gradual magnitude pruning on the GSM budget."""
  epochs = epochs_of(GSM, epoch_scale)
  steps = epochs * trainer.steps_per_epoch
  tx = optax.chain(
      masked_sgd(lr_schedule(GSM, trainer.steps_per_epoch, epoch_scale),
                 DENSE["momentum"]),
      gradual_magnitude_pruning(
          ratio, ramp_steps=max(1, round(ramp * steps)),
          update_every=max(1, round(every * trainer.steps_per_epoch)),
          scope=scope))
  params, _, timing = trainer.train(dense_params, tx, epochs,
                                    desc=f"gradual magnitude {ratio:g}x")
  report = optax_gsm.sparsity_report(params)
  return {"accuracy": trainer.accuracy(params), "steps": steps,
          "ramp": ramp, "update_every_epochs": every, "scope": scope,
          "nonzero": report.prunable_nonzero,
          "layer_density": {leaf.path: leaf.density for leaf in report.leaves
                            if leaf.prunable}, **timing}


def dense_optimizer(steps_per_epoch, epoch_scale):
  """The dense schedule's momentum SGD: dense training and lottery tickets."""
  return masked_sgd(lr_schedule(DENSE, steps_per_epoch, epoch_scale),
                    DENSE["momentum"])


def run_ticket(trainer, init_params, mask, epoch_scale, desc):
  ticket = jax.tree.map(lambda w, m: w * m, init_params, mask)
  epochs = epochs_of(DENSE, epoch_scale)
  params, _, timing = trainer.train(
      ticket, dense_optimizer(trainer.steps_per_epoch, epoch_scale), epochs,
      mask=mask, desc=desc)
  return {"accuracy": trainer.accuracy(params),
          "steps": epochs * trainer.steps_per_epoch, **timing}


def markdown(record):
  """The record as a Markdown table; partial records give partial tables."""
  def row(run, stage, before="", after=""):
    # Records written before wall times were kept have none.
    wall = f"{stage['wall_seconds']:.0f}" if stage and "wall_seconds" in stage else ""
    timing = f"{stage['seconds_per_step']:.4f} | {wall}" if stage else " | "
    steps = stage.get("steps", "") if stage else ""
    return f"| {run} | {steps} | {before} | {after} | {timing} |"

  ratio = record["compression_ratio"]
  dense = record["dense"]
  lines = [f"### {record['model']} at {ratio:g}x ({record['data_source']}, "
           f"{record['train_size']}/{record['test_size']}, epoch scale "
           f"{record['epoch_scale']:g}, GSM "
           f"{record.get('gsm_epoch_scale', record['epoch_scale']):g})",
           "",
           "| run | steps | top-1 before prune | top-1 after prune | s/step "
           "| wall s |", "|---|---|---|---|---|---|",
           row("dense", dense, f"{dense['accuracy']:.2%}")]
  for gsm in record["gsm"]:
    lines.append(row(f"GSM {gsm_label(gsm)}", gsm,
                     f"{gsm['accuracy_before_prune']:.2%}",
                     f"{gsm['accuracy_after_prune']:.2%}"))
  if "magnitude" in record:
    mag = record["magnitude"]
    lines.append(row("magnitude one-shot", None,
                     after=f"{mag['one_shot_accuracy']:.2%}"))
    lines.append(row(f"magnitude + fine-tune ({mag['rounds']} rounds)", mag,
                     after=f"{mag['fine_tuned_accuracy']:.2%}"))
  if "gradual_magnitude" in record:
    gmp = record["gradual_magnitude"]
    lines.append(row(f"gradual magnitude ({gmp['scope']}, cubic ramp over "
                     f"{gmp['ramp']:g})", gmp, after=f"{gmp['accuracy']:.2%}"))
  for name, ticket in record.get("lottery_tickets", {}).items():
    lines.append(row(f"lottery ticket: {name} mask", ticket,
                     after=f"{ticket['accuracy']:.2%}"))
  return "\n".join(lines) + "\n"


def plot_densities(record, path):
  """Per-layer density of each GSM variant's final mask vs uniform 1/C."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(record["gsm"][0]["layer_density"])
  width, offsets = bar_offsets(len(record["gsm"]))
  positions = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for offset, gsm in zip(offsets, record["gsm"]):
    ax.bar(positions + offset, [gsm["layer_density"][n] for n in names],
           width, label=f"GSM {gsm['variant']}")
  ax.axhline(1 / record["compression_ratio"], color="k", ls="--",
             label="uniform 1/C")
  ax.set_xticks(positions, names, rotation=20, fontsize=8)
  ax.set_yscale("log")
  ax.set_ylabel("density (kept / size)")
  ax.set_title(f"{record['model']} at {record['compression_ratio']:g}x")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def train_dense(trainer, init_params, settings, checkpoint):
  """The dense stage, or its checkpoint when one with these settings exists.

  Returns (dense params, dense record)."""
  if checkpoint is not None and checkpoint.exists():
    saved = flax.serialization.msgpack_restore(checkpoint.read_bytes())
    if saved["settings"] != settings:
      raise ValueError(
          f"--dense-checkpoint {checkpoint} was trained with "
          f"{saved['settings']}, not {settings}: give another path")
    print(f"dense model loaded from {checkpoint}", flush=True)
    return (flax.serialization.from_state_dict(init_params, saved["params"]),
            saved["dense"])
  epoch_scale = settings["epoch_scale"]
  epochs = epochs_of(DENSE, epoch_scale)
  params, _, timing = trainer.train(
      init_params, dense_optimizer(trainer.steps_per_epoch, epoch_scale),
      epochs, desc="dense")
  dense = {"accuracy": trainer.accuracy(params),
           "steps": epochs * trainer.steps_per_epoch, **timing}
  if checkpoint is not None:
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(flax.serialization.msgpack_serialize(
        {"settings": settings, "dense": dense,
         "params": flax.serialization.to_state_dict(params)}))
  return params, dense


def save_record(record, directory, stem):
  """JSON and Markdown, rewritten after every stage so a stopped run keeps
  what it measured."""
  (directory / f"{stem}.json").write_text(json.dumps(record, indent=2))
  (directory / f"{stem}.md").write_text(markdown(record))


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=HelpFormatter,
      epilog="\n\n".join(__doc__.split("\n\n")[1:]))
  parser.add_argument("--model", choices=list(MNIST_MODELS), default="lenet300")
  parser.add_argument("--ratios", type=float, nargs="+", default=[60.0])
  parser.add_argument("--variants", nargs="+", choices=VARIANTS,
                      default=list(VARIANTS))
  parser.add_argument("--epoch-scale", type=float, default=1.0,
                      help="fraction of the official epochs (1.0 = 200 + 280)")
  parser.add_argument("--gsm-epoch-scale", type=float, default=None,
                      help="fraction of the official epochs for GSM and the "
                      "magnitude fine-tuning (default: --epoch-scale), to "
                      "vary their budget from one dense model")
  parser.add_argument("--freeze-at", type=float, default=0.2,
                      help="fraction of the GSM steps after which the "
                      "`freeze` variant fixes the active set")
  parser.add_argument("--gsm-momentum", type=float, default=GSM["momentum"],
                      help="GSM's momentum (the paper's 0.99 by default)")
  parser.add_argument("--magnitude-rounds", type=int, default=3)
  parser.add_argument("--gmp-ramp", type=float, default=0.5,
                      help="share of the GSM steps the gradual magnitude "
                      "pruning ramp takes")
  parser.add_argument("--gmp-every", type=float, default=1.0,
                      help="epochs between gradual magnitude mask updates")
  parser.add_argument("--gmp-scope", choices=["global", "layer"],
                      default="global")
  parser.add_argument("--skip-baselines", action="store_true")
  parser.add_argument("--baselines", nargs="+", default=list(BASELINES),
                      choices=list(BASELINES),
                      help="which baselines to run (unless --skip-baselines)")
  parser.add_argument("--skip-lottery", action="store_true")
  parser.add_argument("--data-dir", default=None,
                      help="directory with the MNIST IDX files (or $MNIST_DIR)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--dense-checkpoint", type=pathlib.Path, default=None,
                      help="file for the trained dense model: loaded when it "
                      "exists (and was trained with the same settings), "
                      "else written after dense training")
  parser.add_argument("--output-dir", type=pathlib.Path, default=RESULTS,
                      help="where the records, plots and models go")
  parser.add_argument("--quick", action="store_true",
                      help="10-step epochs, scale 0.05: a smoke test")
  parser.add_argument("--max-train", type=int, default=None,
                      help="train on the first N training images only (the "
                      "test set stays whole): for quick checks")
  args = parser.parse_args(argv)
  command = experiment.command("examples.mnist_gsm", argv)
  if not 0.0 <= args.gsm_momentum < 1.0:
    parser.error(f"--gsm-momentum must be in [0, 1); got {args.gsm_momentum}")
  if not 0.0 < args.freeze_at < 1.0:
    parser.error(f"--freeze-at must be in (0, 1); got {args.freeze_at}")
  for flag in ("epoch_scale", "gsm_epoch_scale"):
    value = getattr(args, flag)
    if value is not None and not value > 0.0:
      parser.error(f"--{flag.replace('_', '-')} must be > 0; got {value}")
  if args.max_train is not None and args.max_train < 1:
    parser.error(f"--max-train must be >= 1; got {args.max_train}")
  if not 0.0 < args.gmp_ramp <= 1.0:
    parser.error(f"--gmp-ramp must be in (0, 1]; got {args.gmp_ramp}")
  if not args.gmp_every > 0.0:
    parser.error(f"--gmp-every must be > 0; got {args.gmp_every}")
  if args.magnitude_rounds < 1:
    parser.error(f"--magnitude-rounds must be >= 1; got {args.magnitude_rounds}")
  steps_per_epoch = 10 if args.quick else OFFICIAL_STEPS_PER_EPOCH
  epoch_scale = 0.05 if args.quick else args.epoch_scale
  gsm_epoch_scale = args.gsm_epoch_scale or epoch_scale

  data = load_mnist(args.data_dir)
  print(f"MNIST from {data.source}: {len(data.train_labels)} train, "
        f"{len(data.test_labels)} test", flush=True)
  model = MNIST_MODELS[args.model]()
  train = slice(0, args.max_train)
  trainer = Trainer(model, (normalise(data.train_images[train]),
                            data.train_labels[train]),
                    (normalise(data.test_images), data.test_labels),
                    steps_per_epoch=steps_per_epoch, batch_size=BATCH,
                    seed=args.seed)
  init_params = model.init(jax.random.PRNGKey(args.seed),
                           trainer.train_x[:1])["params"]
  settings = {"model": args.model, "data_source": data.source,
              "train_size": int(len(data.train_labels[train])),
              "test_size": int(len(data.test_labels)),
              "epoch_scale": epoch_scale, "steps_per_epoch": steps_per_epoch,
              "seed": args.seed}
  dense_params, dense = train_dense(trainer, init_params, settings,
                                    args.dense_checkpoint)
  print(f"dense: {dense['accuracy']:.2%}", flush=True)

  records = []
  for ratio in args.ratios:
    record = {**settings, "command": command, "gsm_epoch_scale": gsm_epoch_scale,
              "compression_ratio": ratio, "dense": dense, "gsm": []}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"mnist_{args.model}_{ratio:g}x" + (
        "_quick" if args.quick else
        f"_scale{epoch_scale:g}" if epoch_scale != 1.0 else "") + (
        f"_gsm{gsm_epoch_scale:g}" if gsm_epoch_scale != epoch_scale else "")
    save = functools.partial(save_record, record, args.output_dir, stem)
    masks = {}
    for variant in args.variants:
      gsm_record, pruned, kept = run_gsm(trainer, dense_params, ratio,
                                         variant, gsm_epoch_scale,
                                         args.freeze_at, args.gsm_momentum)
      # The pruned model itself, compact (benchmarks/inference.py reads it).
      model_file = args.output_dir / f"{stem}_{variant}.gsm"
      gsm_record["model_file"] = model_file.name
      gsm_record["model_file_bytes"] = optax_gsm.export.save_sparse(model_file,
                                                             pruned)
      record["gsm"].append(gsm_record)
      save()
      masks.setdefault("GSM", kept)
      print(f"GSM {variant} {ratio:g}x: {gsm_record['accuracy_before_prune']:.2%}"
            f" before, {gsm_record['accuracy_after_prune']:.2%} after the "
            "final prune", flush=True)
    baselines = [] if args.skip_baselines else args.baselines
    if "magnitude" in baselines:
      record["magnitude"] = run_magnitude(
          trainer, dense_params, ratio, args.magnitude_rounds, gsm_epoch_scale)
      print(f"magnitude {ratio:g}x: one-shot "
            f"{record['magnitude']['one_shot_accuracy']:.2%}, fine-tuned "
            f"{record['magnitude']['fine_tuned_accuracy']:.2%}", flush=True)
      save()
    if "gradual" in baselines:
      record["gradual_magnitude"] = run_gradual(
          trainer, dense_params, ratio, gsm_epoch_scale, args.gmp_ramp,
          args.gmp_every, args.gmp_scope)
      print(f"gradual magnitude {ratio:g}x: "
            f"{record['gradual_magnitude']['accuracy']:.2%}", flush=True)
      save()
    if not args.skip_lottery:
      masks["magnitude"] = optax_gsm.magnitude_mask(dense_params, ratio)
      record["lottery_tickets"] = {}
      for name, mask in masks.items():
        record["lottery_tickets"][name] = run_ticket(
            trainer, init_params, mask, epoch_scale,
            f"ticket {name} {ratio:g}x")
        save()
      print("lottery tickets: " + ", ".join(
          f"{n} {t['accuracy']:.2%}"
          for n, t in record["lottery_tickets"].items()), flush=True)
    save()
    plot_densities(record, args.output_dir / f"{stem}_density.png")
    print(markdown(record), flush=True)
    records.append(record)
  return records


if __name__ == "__main__":
  main()
