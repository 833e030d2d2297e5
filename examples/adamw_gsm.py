"""GSM with AdamW against GSM with momentum SGD, on a small ViT and MNIST.

Transformers are trained with AdamW. A pre-LN ViT (4x4 patches, width 64,
4 layers of 4 heads, ``examples.models.VisionTransformer``) from scratch on
the full MNIST for T steps of 128, warm-up then cosine decay, four runs on
the same batches:

  AdamW             dense, ``optax.adamw`` (peak 1e-3, decay 1e-4)
  GSM AdamW         ``optax_gsm.gsm_adamw(..., total_steps=T)``, the same
                    schedule and decay, at C = 10
  momentum SGD      dense, momentum 0.9 (peak 0.05, decay 1e-4)
  GSM momentum      ``optax_gsm.gsm_sgd(..., total_steps=T)``, the same, C = 10
  GM AdamW          AdamW, then gradual magnitude pruning (Zhu & Gupta
  GM momentum       2018: one global ranking by |w|, the cubic ramp from
                    T/10 to T/2, the mask refreshed every T/50 steps), C = 10

Each GSM run records the test accuracy before and after `prune` (exactly
what the lossless default promises to keep) and what the prune removed.

    python -m examples.adamw_gsm                     # ~12 minutes on 2 cores
    python -m examples.adamw_gsm --quick             # as the tests run it

Writes (to ``--out``) ``results/adamw/mnist_vit.{json,md}``.
"""

import pathlib
import time

import optax

import optax_gsm
from examples import experiment
from examples.experiment import Setup, parser, save
from examples.gradual_magnitude import gradual_magnitude_pruning
from examples.measure import RESULTS, machine_info

OUT = RESULTS / "adamw"
RATIO = 10.0
WEIGHT_DECAY = 1e-4
PEAK_LR = {"adamw": 1e-3, "momentum": 0.05}


def gradual(steps: int) -> optax.GradientTransformation:
  """The baseline's pruning step, last in the chain (it returns the update
  that zeroes the pruned weights)."""
  return gradual_magnitude_pruning(
      RATIO, begin_step=steps // 10, ramp_steps=max(1, steps * 4 // 10),
      update_every=max(1, steps // 50), scope="global")


def optimizers(steps: int) -> dict[str, optax.GradientTransformation]:
  adam_lr = experiment.schedule(PEAK_LR["adamw"], steps)
  sgd_lr = experiment.schedule(PEAK_LR["momentum"], steps)
  adamw = optax.adamw(adam_lr, weight_decay=WEIGHT_DECAY)
  momentum = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY),
                         optax.sgd(sgd_lr, momentum=0.9))
  return {
      "AdamW": adamw,
      "GSM AdamW": optax_gsm.gsm_adamw(adam_lr, RATIO, total_steps=steps,
                                       weight_decay=WEIGHT_DECAY),
      "momentum SGD": momentum,
      "GSM momentum": optax_gsm.gsm_sgd(sgd_lr, RATIO, total_steps=steps,
                                        momentum=0.9,
                                        weight_decay=WEIGHT_DECAY),
      "GM AdamW": optax.chain(adamw, gradual(steps)),
      "GM momentum": optax.chain(momentum, gradual(steps)),
  }


def run(setup: Setup, name: str, tx: optax.GradientTransformation) -> dict:
  model = setup.model()
  trainer = setup.trainer(model)
  start = time.perf_counter()
  params, opt_state, timing = trainer.train(
      setup.init(model)["params"], tx, setup.args.epochs, desc=name)
  result = {"optimizer": name, "accuracy": trainer.accuracy(params),
            "wall_seconds": time.perf_counter() - start,
            "seconds_per_step": timing["seconds_per_step"]}
  if name.startswith("GM"):
    result["compression"] = optax_gsm.sparsity_report(
        params).compression_ratio
  if name.startswith("GSM"):
    readiness = optax_gsm.prune_readiness(params, opt_state=opt_state)
    pruned, _ = optax_gsm.prune(params, opt_state=opt_state)
    result.update(accuracy_after_prune=trainer.accuracy(pruned),
                  compression=optax_gsm.sparsity_report(
                      pruned).compression_ratio,
                  largest_removed=readiness.largest_removed,
                  removed_mass_fraction=readiness.removed_mass_fraction)
  print(f"{name}: {result['accuracy']:.2%}" + (
      f" -> {result['accuracy_after_prune']:.2%} after the prune"
      if "accuracy_after_prune" in result else ""), flush=True)
  return result


def markdown(record) -> str:
  lines = [f"# GSM with AdamW and with momentum: {record['model']} on MNIST",
           "", f"{record['steps']} steps of {record['batch']} from scratch, "
           f"C = {record['compression_ratio']:g} for GSM; `{record['command']}`.",
           "", "| optimizer | test accuracy | after `prune` | largest removed "
           "abs(w) | compression | s/step |", "|---|---|---|---|---|---|"]
  for r in record["runs"]:
    after = (f"{r['accuracy_after_prune']:.2%}" if "accuracy_after_prune" in r
             else "dense" if "compression" not in r else "")
    largest = (f"{r['largest_removed']:.1e}" if "largest_removed" in r
               else "")
    compression = f"{r['compression']:.2f}x" if "compression" in r else ""
    lines.append(f"| {r['optimizer']} | {r['accuracy']:.2%} | {after} | "
                 f"{largest} | {compression} | {r['seconds_per_step']:.3f} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  arguments = parser(__doc__, model="vit", epochs=10, steps_per_epoch=100)
  arguments.add_argument("--out", type=str, default=str(OUT),
                         help="directory for the JSON and Markdown")
  args = arguments.parse_args(argv)
  experiment.apply_quick(args)
  setup = Setup(args)
  record = {"model": setup.model_name, "compression_ratio": RATIO,
            "steps": setup.steps, "batch": args.batch,
            "command": experiment.command("examples.adamw_gsm", argv),
            "machine": machine_info(), "runs": []}
  stem = setup.stem
  out = pathlib.Path(args.out)
  for name, tx in optimizers(setup.steps).items():
    record["runs"].append(run(setup, name, tx))
    save(record, markdown(record), out, stem)
  print(markdown(record))
  return record


if __name__ == "__main__":
  main()
