"""LASSO channel pruning (He et al., ICCV 2017) on MNIST, against L1-norm
filter pruning of the same channels and structured GSM at the same FLOPs.

For LeNet-5 or the ResNet-20-style network (batch norm, projection
shortcuts), at each FLOPs reduction asked for:

1. train the dense model (momentum SGD, cosine schedule);
2. the widths: one share of the channels kept in every group LASSO pruning
   can remove (`optax_gsm.lasso.prunable_groups`: not the residual streams), found
   by bisection to reach the reduction;
3. ``lasso.prune_channels`` on ``--samples`` unlabeled training images (10
   positions each): accuracy with no fine-tuning, then after
   ``--fine-tune-steps`` of momentum SGD (cosine from a tenth of the peak
   learning rate);
4. the baseline with the same widths: L1-norm filter pruning (Li et al.,
   ICLR 2017: the channels whose producing filters have the largest sum of
   ``|w|``), no reconstruction, with and without the same fine-tuning;
5. ``--with-gsm``: structured GSM to the same FLOPs on the full budget
   (``examples/structured_gsm.py``), no fine-tuning;
6. CPU inference time of the dense and of each shrunk model, in this run.

    python -m examples.lasso_channel --model lenet5 --with-gsm
    python -m examples.lasso_channel --model resnet20 --batch 64 \\
        --epochs 10 --steps-per-epoch 100
    python -m examples.lasso_channel --quick      # as the tests run it

Writes (to ``--out``) ``results/lasso/mnist_<model>.{json,md}``.
"""

import pathlib

import jax.numpy as jnp
import numpy as np
import optax

import optax_gsm
from examples import experiment, structured_gsm
from examples.measure import RESULTS

OUT = RESULTS / "lasso"


def widths_for(groups, params, prunable, reduction):
  """``{group: channels}``: the same share in every prunable group, the
  largest that reaches the FLOPs reduction."""
  def counts(share):
    return [max(1, round(share * g.size)) if g.name in prunable else g.size
            for g in groups.channels]

  def keep_for(share):
    return optax_gsm.structured.StructureMask(
        tuple(np.arange(g.size) < c
              for g, c in zip(groups.channels, counts(share))),
        np.ones(len(groups.blocks), bool))

  share = structured_gsm.share_for(groups, params, reduction, keep_for)
  return {g.name: c for g, c in zip(groups.channels, counts(share))
          if g.name in prunable}


def fine_tune(setup, small, widths, desc):
  """``(accuracy before, accuracy after, timing)`` of the shrunk model."""
  trainer = setup.trainer(setup.model(widths))
  before = trainer.accuracy(small["params"], small.get("batch_stats"))
  steps = setup.args.fine_tune_steps
  tx = optax.chain(
      optax.add_decayed_weights(experiment.WEIGHT_DECAY),
      optax.sgd(optax.cosine_decay_schedule(setup.peak_lr / 10, steps),
                momentum=experiment.MOMENTUM))
  trainer.steps_per_epoch = steps
  tuned, _, timing = trainer.train(small["params"], tx, 1,
                                   batch_stats=small.get("batch_stats"),
                                   desc=desc)
  return before, trainer.accuracy(tuned, trainer.batch_stats), timing


def lasso_stage(setup, apply, groups, variables, widths, inputs, reduction):
  small, report = optax_gsm.lasso.prune_channels(
      apply, variables, groups, inputs, widths=widths, lasso_tolerance=0.0,
      seed=setup.args.seed, verbose=True)
  small_widths = report.widths
  print(report.table(), flush=True)
  before, after = optax_gsm.structured.model_cost(groups, variables["params"],
                                           report.keep, "flops")
  pruned, tuned, timing = fine_tune(setup, small, small_widths,
                                    f"LASSO {reduction}x fine-tune")
  record = {
      "flops_reduction": before / after, "widths": small_widths,
      "accuracy_pruned": pruned, "accuracy_fine_tuned": tuned,
      "prune_seconds": sum(layer.seconds for layer in report.layers),
      "layers": [layer._asdict() for layer in report.layers],
      "skipped": [list(s) for s in report.skipped],
      "fine_tune_seconds_per_step": timing["seconds_per_step"]}
  print(f"LASSO {reduction}x: pruned {pruned:.4f}, fine-tuned {tuned:.4f} "
        f"at {record['flops_reduction']:.2f}x FLOPs", flush=True)
  return record, small, small_widths


def l1_stage(setup, groups, variables, widths, reduction):
  counts = [widths.get(g.name, g.size) for g in groups.channels]
  keep = structured_gsm.norm_keep(groups, variables["params"], counts)
  small, small_widths = optax_gsm.structured.shrink(variables, groups, keep)
  pruned, tuned, _ = fine_tune(setup, small, small_widths,
                               f"L1 {reduction}x fine-tune")
  print(f"L1 {reduction}x: pruned {pruned:.4f}, fine-tuned {tuned:.4f}",
        flush=True)
  return {"accuracy_pruned": pruned, "accuracy_fine_tuned": tuned}


def markdown(record) -> str:
  lines = [f"# LASSO channel pruning on MNIST: {record['model']}", "",
           f"Dense: {record['dense']['accuracy']:.4f} "
           f"({record['dense']['steps']} steps). LASSO on "
           f"{record['samples']} training images; fine-tuning "
           f"{record['fine_tune_steps']} steps of {record['batch']}. "
           f"Machine: {record['machine']['cpu']}, "
           f"{record['machine']['cpu_count']} cores.", "",
           "| FLOPs target | reached | LASSO, no fine-tuning | LASSO + "
           "fine-tuning | L1, no fine-tuning | L1 + fine-tuning | structured "
           "GSM (full budget) | LASSO time (s) | speed-up b=1 / 256 |",
           "|---" * 9 + "|"]
  for run in record["runs"]:
    la, l1, t = run["lasso"], run["l1"], run["inference"]
    gsm = run.get("gsm")
    gsm_text = (f"{gsm['accuracy_shrunk']:.4f} ({gsm['flops_reduction']:.2f}x)"
                if gsm else "-")
    lines.append(
        f"| {run['reduction']}x | {la['flops_reduction']:.2f}x | "
        f"{la['accuracy_pruned']:.4f} | {la['accuracy_fine_tuned']:.4f} | "
        f"{l1['accuracy_pruned']:.4f} | {l1['accuracy_fine_tuned']:.4f} | "
        f"{gsm_text} | {la['prune_seconds']:.1f} | "
        f"{t['speedup_batch1']:.2f}x / {t['speedup_batch256']:.2f}x |")
  lines += ["", "Per layer (relative reconstruction error on the sampled "
            "positions):", ""]
  for run in record["runs"]:
    lines.append(f"- {run['reduction']}x: " + ", ".join(
        f"{layer['group']} {layer['channels_before']}->"
        f"{layer['channels_after']} ({layer['relative_error']:.3f})"
        for layer in run["lasso"]["layers"]))
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = experiment.parser(__doc__, model="lenet5", steps_per_epoch=150)
  parser.add_argument("--reductions", type=float, nargs="+", default=[2, 4])
  parser.add_argument("--samples", type=int, default=1000,
                      help="unlabeled training images LASSO samples from")
  parser.add_argument("--fine-tune-steps", type=int, default=300)
  parser.add_argument("--with-gsm", action="store_true",
                      help="also structured GSM to the same FLOPs")
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  args = parser.parse_args(argv)
  experiment.apply_quick(args)
  if args.quick:
    args.reductions, args.fine_tune_steps = args.reductions[:1], 5
  setup = experiment.Setup(args)
  model, trainer, params, batch_stats, dense = experiment.dense_stage(setup)
  variables = setup.variables(params, batch_stats)
  apply = setup.inference_apply(model)
  groups = setup.groups(model, variables)
  prunable = set(optax_gsm.lasso.prunable_groups(groups))
  inputs = jnp.asarray(setup.train[0][:args.samples])
  record = {**setup.record(dense), "samples": args.samples,
            "fine_tune_steps": args.fine_tune_steps, "runs": []}
  stem = setup.stem
  for reduction in args.reductions:
    widths = widths_for(groups, params, prunable, reduction)
    lasso, small, small_widths = lasso_stage(setup, apply, groups, variables,
                                             widths, inputs, reduction)
    run = {"reduction": reduction, "lasso": lasso,
           "l1": l1_stage(setup, groups, variables, widths, reduction),
           "inference": structured_gsm.inference_times(
               setup, variables, small, small_widths,
               0.2 if args.quick else 2.0)}
    if args.with_gsm:
      run["gsm"], _, _ = structured_gsm.gsm_stage(
          setup, trainer, groups, params, batch_stats,
          lasso["flops_reduction"])
    record["runs"].append(run)
    experiment.save(record, markdown(record), args.out, stem)
  print(markdown(record))
  return record


if __name__ == "__main__":
  main()
