r"""Centripetal SGD on MNIST: merge clusters of identical filters, lossless,
against structured GSM and L1-norm filter pruning at the same FLOPs.

For LeNet-5 or the ResNet-20-style network (batch norm, projection
shortcuts), at each channel ratio asked for (2: half the channels of every
group, 4: a quarter):

1. train the dense model;
2. C-SGD from it (``cluster_channels`` by k-means, ``centripetal_sgd``), then
   ``merge_clusters``: accuracy before and after the merge (lossless when
   the clusters have converged: ``cluster_spread``), and the FLOPs the
   merged model saves;
3. on the same budget and to the same FLOPs: structured GSM (no
   fine-tuning) and uniform L1-norm filter pruning + fine-tuning
   (``examples/structured_gsm.py``);
4. CPU inference time of the dense and the merged model.

The centripetal strength is set at critical damping for the peak learning
rate, ``(1 - sqrt(momentum))**2 / lr`` (the official 3e-3 is for hundreds
of epochs; here clusters must meet within one budget).

    python -m examples.csgd --model lenet5 --ratios 2 4
    python -m examples.csgd --model resnet20 --ratios 2 4 --batch 64 \
        --epochs 10 --steps-per-epoch 50 --vector-factor 1
    python -m examples.csgd --quick            # as the tests run it

Writes (to ``--out``) ``results/csgd/mnist_<model>.{json,md}``.
"""

import math
import pathlib

import numpy as np

import optax_gsm
from examples import experiment, structured_gsm
from examples.measure import RESULTS

OUT = RESULTS / "csgd"


def csgd_stage(setup, trainer, groups, params, batch_stats, ratio=None, *,
               widths=None):
  """C-SGD from the dense model to every group's ``size / ratio`` channels,
  or to ``widths`` (per group name), then the merge."""
  variables = setup.variables(params, batch_stats)
  clusters = optax_gsm.centripetal.cluster_channels(variables, groups,
                                                    ratio=ratio, widths=widths)
  strength = (1 - math.sqrt(experiment.MOMENTUM)) ** 2 / setup.peak_lr
  tx = optax_gsm.centripetal.centripetal_sgd(setup.schedule, clusters,
                          centripetal_strength=strength,
                          vector_factor=setup.args.vector_factor,
                          weight_decay=experiment.WEIGHT_DECAY,
                          momentum=experiment.MOMENTUM)
  trained, _, timing = trainer.train(params, tx, setup.args.epochs,
                                     batch_stats=batch_stats,
                                     desc=f"C-SGD {_target(ratio, widths)}")
  stats = trainer.batch_stats
  if stats is not None:  # the merge assumes the statistics of the final model
    stats = trainer.recalibrated_batch_stats(trained, stats)
  full = setup.variables(trained, stats)
  small, widths = optax_gsm.centripetal.merge_clusters(full, groups, clusters)
  merged = setup.trainer(setup.model(widths))
  first = []
  for assignment in clusters.assignments:
    kept = np.zeros(len(assignment), bool)
    kept[np.unique(assignment, return_index=True)[1]] = True
    first.append(kept)
  keep = optax_gsm.structured.StructureMask(tuple(first),
                                 np.ones(len(groups.blocks), bool))
  before, after = optax_gsm.structured.model_cost(groups, trained, keep, "flops")
  record = {
      "centripetal_strength": strength,
      "vector_factor": setup.args.vector_factor,
      "accuracy_before_merge": trainer.accuracy(trained, stats),
      "accuracy_merged": merged.accuracy(small["params"],
                                         small.get("batch_stats")),
      "largest_spread": max(optax_gsm.centripetal.cluster_spread(
          setup.variables(trained, stats), clusters).values()),
      "flops_reduction": before / after, "widths": widths, **timing}
  print(f"C-SGD {_target(ratio, widths)}: "
        f"{record['accuracy_before_merge']:.4f} -> "
        f"merged {record['accuracy_merged']:.4f} at "
        f"{record['flops_reduction']:.2f}x FLOPs, spread "
        f"{record['largest_spread']:.2e}", flush=True)
  return record, small, widths


def _target(ratio, widths) -> str:
  return f"1/{ratio:g}" if widths is None else f"to {sum(widths.values())} channels"


def markdown(record) -> str:
  lines = [f"# C-SGD on MNIST: {record['model']}", "",
           f"Dense: {record['dense']['accuracy']:.4f} "
           f"({record['dense']['steps']} steps); every method then "
           f"{record['steps']} steps. Machine: {record['machine']['cpu']}, "
           f"{record['machine']['cpu_count']} cores. "
           + structured_gsm.floor_note([run["gsm"] for run in record["runs"]]),
           "",
           "| channels | FLOPs reduction | C-SGD before merge | C-SGD merged | "
           "largest spread | structured GSM (same FLOPs) | L1 + fine-tuning "
           "| merged speed-up b=1 / 256 |", "|---" * 8 + "|"]
  for run in record["runs"]:
    c, g, l1, t = run["csgd"], run["gsm"], run["l1"], run["inference"]
    lines.append(
        f"| 1/{run['ratio']:g} | {c['flops_reduction']:.2f}x | "
        f"{c['accuracy_before_merge']:.4f} | {c['accuracy_merged']:.4f} | "
        f"{c['largest_spread']:.1e} | {g['accuracy_shrunk']:.4f} "
        f"({g['flops_reduction']:.2f}x) | {l1['accuracy_fine_tuned']:.4f} "
        f"({l1['flops_reduction']:.2f}x) | {t['speedup_batch1']:.2f}x / "
        f"{t['speedup_batch256']:.2f}x |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = experiment.parser(__doc__, model="lenet5", steps_per_epoch=150)
  parser.add_argument("--ratios", type=float, nargs="+", default=[2, 4])
  parser.add_argument("--vector-factor", type=float, default=0.1,
                      help="share of the centripetal strength for bias and "
                      "norm parameters (official: 0.1)")
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  args = parser.parse_args(argv)
  experiment.apply_quick(args)
  if args.quick:
    args.ratios = args.ratios[:1]
  setup = experiment.Setup(args)
  model, trainer, params, batch_stats, dense = experiment.dense_stage(setup)
  variables = setup.variables(params, batch_stats)
  groups = setup.groups(model, variables)
  # C-SGD merges channels, not blocks: the comparison keeps blocks too.
  channel_groups = groups.without([b.name for b in groups.blocks])
  record = {**setup.record(dense), "runs": []}
  stem = setup.stem
  for ratio in args.ratios:
    csgd, small, widths = csgd_stage(setup, trainer, channel_groups, params,
                                     batch_stats, ratio)
    reduction = csgd["flops_reduction"]
    gsm, _, _ = structured_gsm.gsm_stage(setup, trainer, groups, params,
                                         batch_stats, reduction)
    run = {"ratio": ratio, "csgd": csgd, "gsm": gsm,
           "l1": structured_gsm.uniform_stage(setup, channel_groups, params,
                                            batch_stats, reduction),
           "inference": structured_gsm.inference_times(
               setup, variables, small, widths, 0.2 if args.quick else 2.0)}
    record["runs"].append(run)
    experiment.save(record, markdown(record), args.out, stem)
  print(markdown(record))
  return record


if __name__ == "__main__":
  main()
