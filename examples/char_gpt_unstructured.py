"""Unstructured GSM against gradual magnitude pruning on the character GPT.

The dense model of ``examples.char_gpt`` (the same corpus, scan-stacked
CharTransformer, AdamW schedule and seed), then, from it and for the same
T steps, C times fewer non-zero kernel and embedding weights:

  GSM AdamW     ``optax_gsm.gsm_adamw(lr, C, total_steps=T)``: one global
                top-Q over all prunable leaves, then `prune`
  GM AdamW      AdamW, then Zhu & Gupta's gradual magnitude pruning (2018):
                one global ranking by |w|, the cubic ramp over the first
                half of T, the mask refreshed every T/20 steps; the pruned
                weights stay zero
  GSM momentum  ``optax_gsm.gsm_sgd(..., momentum=0.9, total_steps=T)``,
                peak ``--momentum-lr``: does GSM on a transformer need
                AdamW?
  GM momentum   momentum SGD (the same schedule), then the same gradual
                magnitude pruning

Reported: test bits per character and next-character accuracy, the
compression reached, the share of each leaf each method kept (a plot).

    python -m examples.char_gpt_unstructured             # ~20 min on 2 cores
    python -m examples.char_gpt_unstructured --quick     # as the tests run it

Writes (to ``--out``) ``results/char_gpt_unstructured/stdlib_gpt_<C>x``
``[_rms][_seed<n>].{json,md,png}``.
"""

import time

import numpy as np
import optax

import optax_gsm
from examples import char_gpt, experiment
from examples.gradual_magnitude import gradual_magnitude_pruning
from examples.measure import RESULTS, bar_offsets, machine_info

OUT = RESULTS / "char_gpt_unstructured"
# Momentum SGD's peak learning rate from the AdamW-trained dense model: the
# best of 0.02-0.5 continuing the dense model for 300 steps (0.2 is worse,
# 0.5 diverges).
MOMENTUM_LR = 0.1


def optimizers(ratio: float, steps: int,
               momentum_lr: float) -> dict[str, optax.GradientTransformation]:
  lr = experiment.schedule(char_gpt.PEAK_LR, steps)
  sgd_lr = experiment.schedule(momentum_lr, steps)
  # The pruning step last: it returns the update that zeroes the pruned.
  gradual = gradual_magnitude_pruning(
      ratio, ramp_steps=max(1, steps // 2), update_every=max(1, steps // 20),
      scope="global")
  momentum = optax.chain(optax.add_decayed_weights(experiment.WEIGHT_DECAY),
                         optax.sgd(sgd_lr, momentum=experiment.MOMENTUM))
  return {
      "GSM AdamW": optax_gsm.gsm_adamw(lr, ratio, total_steps=steps,
                                       weight_decay=char_gpt.WEIGHT_DECAY),
      "GM AdamW": optax.chain(char_gpt.adamw(steps), gradual),
      "GSM momentum": optax_gsm.gsm_sgd(
          sgd_lr, ratio, total_steps=steps, momentum=experiment.MOMENTUM,
          weight_decay=experiment.WEIGHT_DECAY),
      "GM momentum": optax.chain(momentum, gradual),
  }


def stage(trainer, dense, name: str, tx, epochs: int) -> dict:
  start = time.perf_counter()
  params, opt_state, timing = trainer.train(dense, tx, epochs, desc=name)
  result = {"method": name, **timing,
            "wall_seconds": time.perf_counter() - start}
  if name.startswith("GSM"):
    result["trained"] = char_gpt.quality(trainer, params)
    readiness = optax_gsm.prune_readiness(params, opt_state=opt_state)
    result["largest_removed"] = readiness.largest_removed
    params, _ = optax_gsm.prune(params, opt_state=opt_state)
  report = optax_gsm.sparsity_report(params)
  result.update(final=char_gpt.quality(trainer, params),
                compression=report.compression_ratio,
                leaf_density={leaf.path: leaf.density
                              for leaf in report.leaves if leaf.prunable})
  print(f"{name}: {result['final']['bits_per_char']:.3f} bits per character "
        f"at {result['compression']:.2f}x", flush=True)
  return result


def markdown(record) -> str:
  dense = record["dense"]
  lines = [
      f"# Unstructured GSM against gradual magnitude pruning: character GPT, "
      f"{record['compression_ratio']:g}x", "",
      f"Model: {record['model']}. Corpus: "
      f"{char_gpt.corpus_line(record['corpus'])}.", "",
      f"Dense (AdamW, {record['steps']} steps of {record['batch']}, seed "
      f"{record['seed']}): {dense['bits_per_char']:.3f} bits per character, "
      f"accuracy {dense['accuracy']:.4f}. Each method then has "
      f"{record['steps']} steps from the dense model on the same batches, "
      f"the AdamW ones with the dense stage's schedule, the momentum ones "
      f"with peak {record.get('momentum_lr', '-')}. "
      f"Machine: {record['machine']['cpu']}, "
      f"{record['machine']['cpu_count']} cores. `{record['command']}`", "",
      "| method | compression | bits/char | accuracy | before `prune` | "
      "largest removed abs(w) | s/step |", "|---|---|---|---|---|---|---|"]
  for run in record["runs"]:
    before = (f"{run['trained']['bits_per_char']:.3f}" if "trained" in run
              else "")
    largest = (f"{run['largest_removed']:.1e}" if "largest_removed" in run
               else "")
    lines.append(
        f"| {run['method']} | {run['compression']:.2f}x | "
        f"{run['final']['bits_per_char']:.3f} | "
        f"{run['final']['accuracy']:.4f} | {before} | {largest} | "
        f"{run['seconds_per_step']:.3f} |")
  return "\n".join(lines) + "\n"


def plot(record, path) -> None:
  """The share of each prunable leaf each method kept."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(record["runs"][0]["leaf_density"])
  positions = np.arange(len(names))
  figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(names)), 3.6))
  width, offsets = bar_offsets(len(record["runs"]))
  for offset, run in zip(offsets, record["runs"]):
    axis.bar(positions + offset, [run["leaf_density"][n] for n in names],
             width,
             label=f"{run['method']} ({run['final']['bits_per_char']:.3f} "
             "bits/char)")
  axis.set_xticks(positions, [n.removeprefix("params/") for n in names],
                  rotation=45, ha="right", fontsize=7)
  axis.set_ylabel("share kept")
  axis.set_title(f"character GPT at {record['compression_ratio']:g}x fewer "
                 "non-zero weights", fontsize=9)
  axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def main(argv=None) -> dict:
  arguments = char_gpt.parser(__doc__, OUT)
  arguments.add_argument("--ratio", type=float, default=10.0,
                         help="C: prunable weights over non-zero ones")
  arguments.add_argument("--momentum-lr", type=float, default=MOMENTUM_LR,
                         help="peak learning rate of the momentum methods")
  args = arguments.parse_args(argv)
  char_gpt.apply_quick(args)
  steps = args.epochs * args.steps_per_epoch
  corpus, _, trainer, dense, dense_record = char_gpt.dense_stage(args)
  record = {"model": char_gpt.model_line(args), "corpus": corpus.description,
            "compression_ratio": args.ratio, "steps": steps,
            "batch": args.batch, "seed": args.seed,
            "momentum_lr": args.momentum_lr,
            "command": experiment.command("examples.char_gpt_unstructured",
                                          argv),
            "machine": machine_info(), "dense": dense_record, "runs": []}
  stem = (f"stdlib_gpt_{args.ratio:g}x{'_rms' if args.norm == 'rms' else ''}"
          f"{f'_seed{args.seed}' if args.seed else ''}"
          f"{'_quick' if args.quick else ''}")
  for name, tx in optimizers(args.ratio, steps, args.momentum_lr).items():
    record["runs"].append(stage(trainer, dense, name, tx, args.epochs))
    experiment.save(record, markdown(record), args.out, stem)
  plot(record, args.out / f"{stem}.png")
  print(markdown(record))
  return record


if __name__ == "__main__":
  main()
