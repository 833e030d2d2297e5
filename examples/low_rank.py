"""Trained Rank Pruning on MNIST: low-rank layers with no fine-tuning,
against the truncated SVD of the dense model at the same ranks.

For LeNet-300-100 or LeNet-5 (every kernel but the classifier):

1. train the dense model;
2. TRP from it for the same number of steps: momentum SGD with the
   nuclear-norm sub-gradient (``optax_gsm.low_rank.add_nuclear_norm``, lambda 3e-4) and
   the energy-0.9 projection every 5 steps (``low_rank_projection``), then
   ``low_rank_decompose`` (singular values below 5% of the largest
   dropped) and the factorised model run as two thin layers per kernel
   (``examples/low_rank_inference.py``), no fine-tuning;
3. the baselines at the same ranks: the dense model's truncated SVD, as is
   and fine-tuned for the same number of steps at fixed ranks.

    python -m examples.low_rank --model lenet300
    python -m examples.low_rank --model lenet5
    python -m examples.low_rank --quick      # as the tests run it

Writes (to ``--out``) ``results/low_rank/mnist_<model>.{json,md}``.
"""

import pathlib

import jax
import jax.numpy as jnp
import optax

import optax_gsm
from examples import experiment
from examples.low_rank_inference import apply_low_rank, factorised_params
from examples.measure import RESULTS

OUT = RESULTS / "low_rank"
# Every kernel but the classifier, as in the paper.
DECOMPOSED = {"lenet300": ["Dense_0/kernel", "Dense_1/kernel"],
              "lenet5": ["Conv_0/kernel", "Conv_1/kernel", "Dense_0/kernel"]}
STRENGTH = 3e-4
ENERGY = 0.9
PROJECT_EVERY = 5
THRESHOLD = 0.05


def factorised_accuracy(setup, model, params, factors) -> float:
  apply = jax.jit(lambda p, x: apply_low_rank(model, {"params": p}, x))
  logits = apply(factorised_params(params, factors),
                 jnp.asarray(setup.test[0]))
  return float(jnp.mean(jnp.argmax(logits, -1) == setup.test[1]))


def counts(factors, positions) -> dict:
  """Params and multiply-adds (per example) of the decomposed kernels."""
  out = {"params_before": 0, "params_after": 0, "macs_before": 0.0,
         "macs_after": 0.0}
  for path, f in factors.items():
    where = positions[f"params/{path}"]
    out["params_before"] += f.params_before
    out["params_after"] += f.params_after
    out["macs_before"] += f.params_before * where
    out["macs_after"] += f.params_after * where
  return out


def markdown(record) -> str:
  c = record["counts"]
  # The first records were written before the settings were: their defaults.
  energy = record.get("energy", ENERGY)
  strength = record.get("strength", STRENGTH)
  lines = [f"# Trained Rank Pruning on MNIST: {record['model']}", "",
           f"Dense: {record['dense']['accuracy']:.4f} "
           f"({record['dense']['steps']} steps); every method then "
           f"{record['steps']} steps; TRP energy {energy}, lambda "
           f"{strength}. Ranks {record['ranks']}: decomposed "
           f"kernels {c['params_before']} -> {c['params_after']} params "
           f"({c['params_before'] / c['params_after']:.2f}x), "
           f"{c['macs_before']:.0f} -> {c['macs_after']:.0f} multiply-adds "
           f"per example ({c['macs_before'] / c['macs_after']:.2f}x). "
           f"Machine: {record['machine']['cpu']}, "
           f"{record['machine']['cpu_count']} cores.", "",
           "| method | accuracy |", "|---|---|"]
  for name, value in record["accuracy"].items():
    lines.append(f"| {name} | {value:.4f} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = experiment.parser(__doc__, model="lenet300", steps_per_epoch=150)
  parser.add_argument("--energy", type=float, default=ENERGY,
                      help="energy kept by the projection and sub-gradient")
  parser.add_argument("--strength", type=float, default=STRENGTH,
                      help="nuclear-norm lambda")
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  args = parser.parse_args(argv)
  experiment.apply_quick(args)
  if args.model not in DECOMPOSED:
    parser.error("--model must be lenet300 or lenet5")
  setup = experiment.Setup(args)
  model, trainer, dense, _, dense_record = experiment.dense_stage(setup)
  kernels = DECOMPOSED[args.model]
  trp = optax.chain(
      optax_gsm.low_rank.add_nuclear_norm(args.strength, energy=args.energy,
                             prunable=kernels),
      setup.sgd(),
      optax_gsm.low_rank.low_rank_projection(energy=args.energy, every=PROJECT_EVERY,
                                    prunable=kernels))
  trained, _, timing = trainer.train(dense, trp, args.epochs, desc="TRP")
  factors, ranks = optax_gsm.low_rank.low_rank_decompose(
      trained, threshold=THRESHOLD, prunable=kernels)
  truncated = optax_gsm.low_rank.truncate_rank(dense, prunable=kernels,
                                         ranks=ranks)
  tuned, _, tune_timing = trainer.train(
      truncated, optax.chain(setup.sgd(), optax_gsm.low_rank.low_rank_projection(
          prunable=kernels, ranks=ranks)), args.epochs,
      desc="truncated SVD + fine-tuning")
  positions = optax_gsm.structured.channel_groups(
      lambda v, x: model.apply(v, x), {"params": dense},
      jnp.asarray(setup.train[0][:1]),
      on_unknown="unprunable").macs_per_entry
  record = {**setup.record(dense_record), "ranks": ranks,
            "energy": args.energy, "strength": args.strength,
            "counts": counts(factors, positions),
            "accuracy": {
                "TRP, trained (full matrices)": trainer.accuracy(trained),
                "TRP, decomposed, no fine-tuning": factorised_accuracy(
                    setup, model, trained, factors),
                "dense, truncated SVD at the same ranks": trainer.accuracy(
                    truncated),
                "dense, truncated SVD + fine-tuning (same steps)":
                    trainer.accuracy(tuned)},
            "trp_seconds_per_step": timing["seconds_per_step"],
            "fine_tune_seconds_per_step": tune_timing["seconds_per_step"]}
  suffix = "" if args.energy == ENERGY else f"_energy{args.energy}"
  experiment.save(record, markdown(record), args.out,
                  f"mnist_{args.model}{suffix}{'_quick' if args.quick else ''}")
  print(markdown(record))
  return record


if __name__ == "__main__":
  main()
