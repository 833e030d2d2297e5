"""Structured GSM on real MNIST: fewer channels and blocks, a model that is
really smaller and faster, against uniform L1-norm filter pruning.

For LeNet-5 or a ResNet-20-style network (batch norm, projection
shortcuts, 3 stages), at each FLOPs reduction asked for:

1. train the dense model (momentum SGD, cosine schedule);
2. trace its structures once (`optax_gsm.structured.channel_groups`);
3. structured GSM from the dense model (``structured_gsm_sgd(lr, groups,
   ratio, cost="flops", total_steps=T)``: channels and residual blocks in one
   global ranking by Taylor saliency per FLOP), then `shrink`: the
   accuracy of the trained model, of the masked model and of the shrunk
   model (the last two must be equal);
4. the baseline on the same data and step budget: uniform per-layer
   L1-norm filter pruning (Li et al., ICLR 2017: in every channel group
   the same share of channels, the smallest sum of ``|w|`` of their filters
   removed) to the same FLOPs, shrunk, then fine-tuned for T steps; with
   ``--baselines`` also (or instead) uniform L2-norm pruning (``l2``) and
   global Taylor pruning (``taylor``: one ranking by saliency per FLOP, its
   one-shot accuracy before fine-tuning recorded too);
5. CPU inference time of the dense and the GSM-shrunk model at batch 1 and
   256, measured in the same run.

GSM's ``compression_ratio`` is the FLOPs reduction itself (the kept
model's multiply-adds are counted exactly); the baseline's uniform share is
found by bisection; the table reports the reduction each reached.

``--n-of-m 2 4`` instead trains LeNet-300-100 with 2:4 GSM
(``n_of_m_gsm_sgd(lr, (2, 4))``) against 2:4 magnitude pruning of the
dense model plus fine-tuning with the pattern fixed, on the same budget.

    python -m examples.structured_gsm --model resnet20 --reductions 2 4
    python -m examples.structured_gsm --model lenet5 --reductions 2 4
    python -m examples.structured_gsm --n-of-m 2 4
    python -m examples.structured_gsm --model vit --no-blocks \
        --baselines l1 l2 taylor    # heads and neurons; three baselines
    python -m examples.structured_gsm --model vit --stream \
        --reductions 4      # heads, neurons, branches and the stream
    python -m examples.structured_gsm --quick     # as the tests run it

``--stream`` ranks a transformer's residual stream (the ViT's patch
embedding width, through every LayerNorm) with the rest; the shrunk
model's LayerNorms then average over the channels kept, where the trained
(masked) model's averaged over all of them, zeros included: the table
gives both accuracies. With ``--norm rms`` (RMSNorms, as Llama) `shrink`
rescales the norms' scales and the shrunk model is the trained one.

Writes (to ``--out``) ``results/structured/mnist_<model>[_no_blocks]``
``[_stream][_decay<d>][_no_floor|_floor<share>][_seed<n>].json``, a
Markdown table and a PNG of the channels each method kept beside it.
"""

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_gsm
from examples import experiment
from examples.measure import RESULTS, bar_offsets, time_call
from examples.training import predict

OUT = RESULTS / "structured"
CALIBRATION_STEPS = 30  # bisection steps of the baseline's uniform share
# The baselines `--baselines` can run, by their key in a record's run.
BASELINES = {"l1": "L1 uniform", "l2": "L2 uniform", "taylor": "global Taylor"}
# The uniform baselines' record keys and the norm each ranks by.
UNIFORM_ORDERS = {"l1": 1, "l2": 2}


def norm_keep(groups, params, counts, order: int = 1):
  """Per group, the ``counts[i]`` channels whose output filters have the
  largest norm: L1 (``order=1``, the sum of |w|, Li et al.) or L2
  (``order=2``, over all of a channel's filters together; a head's query,
  key and value slices are one filter)."""
  leaves = dict(zip(_paths(params), jax.tree.leaves(params)))
  channels = []
  for group, count in zip(groups.channels, counts):
    # The sum of |w|^order ranks channels as the norm does.
    norms = np.zeros(group.size)
    for member in group.members:
      leaf = leaves.get(member.path.partition("/")[2])
      if member.role == "out" and leaf is not None and (
          member.path.endswith("kernel")):
        moved = np.moveaxis(np.abs(np.asarray(leaf)) ** order, member.axis, 0)
        norms += moved.reshape(moved.shape[0], -1).sum(1)
    kept = np.zeros(group.size, bool)
    kept[np.argsort(-norms, kind="stable")[:count]] = True
    channels.append(kept)
  return optax_gsm.structured.StructureMask(tuple(channels),
                                 np.ones(len(groups.blocks), bool))


def uniform_keep(groups, params, keep_fraction, order: int = 1):
  """`norm_keep` with the same share kept in every group."""
  return norm_keep(groups, params, [max(1, round(keep_fraction * g.size))
                                    for g in groups.channels], order)


def _paths(tree):
  return ["/".join(str(getattr(k, "key", k)) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def share_for(groups, params, reduction, keep_for):
  """The largest uniform share (bisection) whose `StructureMask`
  ``keep_for(share)`` still reaches the FLOPs reduction."""
  low, high = 0.0, 1.0
  for _ in range(CALIBRATION_STEPS):
    middle = (low + high) / 2
    before, after = optax_gsm.structured.model_cost(groups, params,
                                             keep_for(middle), "flops")
    low, high = (middle, high) if before / after > reduction else (
        low, middle)
  return low


def uniform_for(groups, params, reduction, order: int = 1):
  """Uniform norm pruning (`uniform_keep`) to the FLOPs reduction."""
  keep_for = lambda share: uniform_keep(groups, params, share, order)
  return keep_for(share_for(groups, params, reduction, keep_for))


def shrunk_accuracy(setup, variables, groups, keep):
  small, widths = optax_gsm.structured.shrink(variables, groups, keep)
  trainer = setup.trainer(setup.model(widths))
  return small, widths, trainer, trainer.accuracy(
      small["params"], small.get("batch_stats"))


def shrink_difference(apply_small, apply_masked, variables, groups, keep,
                      x) -> dict[str, float]:
  """The largest ``|shrunk - masked|`` output on ``x``, with both models
  made from ``variables`` in float32 (as deployed) and again in float64.

  In float32 the two differ by roundoff: the shrunk model sums fewer terms
  in another order, and stores the RMSNorm scales `shrink` rescales in
  float32 (about 1e-5 on logits of order 10). In float64 that roundoff
  falls by about nine orders of magnitude, so what remains above ~1e-12 is
  a real difference between the two models.
  """
  def largest(dtype) -> float:
    cast = lambda tree: jax.tree.map(
        lambda a: (jnp.asarray(a, dtype)
                   if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
                   else jnp.asarray(a)), tree)
    cast_variables = cast(variables)
    small, _ = optax_gsm.structured.shrink(cast_variables, groups, keep)
    masked = optax_gsm.structured.mask_structures(cast_variables, groups,
                                                  keep)
    return float(jnp.max(jnp.abs(apply_small(small, cast(x))
                                 - apply_masked(masked, cast(x)))))

  float32 = largest(jnp.float32)
  with jax.enable_x64(True):
    float64 = largest(jnp.float64)
  return {"float32": float32, "float64": float64}


def difference_text(float32: float, float64: float | None = None) -> str:
  """`shrink_difference`'s figures as a record's Markdown shows them (older
  records hold the float32 one only)."""
  return f"{float32:.1e}" + (f" ({float64:.1e} in float64)"
                             if float64 is not None else "")


def min_kept_share(text: str) -> float | str | None:
  """``--min-kept-share``: "auto" (the default floor), "none" (one channel
  a group) or a share in [0, 1]."""
  if text in ("auto", "none"):
    return None if text == "none" else text
  return float(text)


def add_floor_argument(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      "--min-kept-share", type=min_kept_share, default="auto",
      help="the channels every group keeps: 'auto' (structured GSM's "
           "default: half the uniform width on the main path), 'none' "
           "(one) or a share of every group")


def floor_stem(share: float | str | None) -> str:
  """The part of a record's file name that names a floor other than the
  default: ``_no_floor`` or ``_floor<share>``."""
  if share == "auto":
    return ""
  return "_no_floor" if share is None else f"_floor{share:g}"


def floor_text(gsm_record: dict) -> str:
  """The floor a structured GSM run kept, from its record: a record
  without one ran before `min_kept_share="auto"` became the default, and
  an "auto" one without ``min_kept_channels`` floored every group, the
  bypassed ones too."""
  if "min_kept_share" not in gsm_record:
    return "None (before 'auto')"
  share = gsm_record["min_kept_share"]
  if share != "auto":
    return str(share)
  if "min_kept_channels" not in gsm_record:
    return "auto (every group)"
  return "auto (the main path's groups)"


def floors_record(groups, params, reduction, min_kept_share) -> dict:
  """What a GSM record says of its floor: the share asked for and the
  channels each group kept whatever the ranking."""
  return {"min_kept_share": min_kept_share,
          "min_kept_channels": optax_gsm.structured.min_kept_channels(
              groups, params, reduction, cost="flops",
              min_kept_share=min_kept_share)}


def floor_note(gsm_records: list[dict]) -> str:
  """One sentence: the floors of these runs."""
  floors = dict.fromkeys(floor_text(r) for r in gsm_records)
  return ("Structured GSM's floor (`min_kept_share`): " + ", ".join(floors)
          + ".")


def gsm_stage(setup, trainer, groups, params, batch_stats, reduction,
              **options):
  """Structured GSM from the dense model to ``reduction`` fewer FLOPs;
  ``options`` go to `structured_gsm_sgd` (every variant trains on the same
  batches)."""
  # With cost="flops" the ratio is the FLOPs reduction itself: the kept
  # model's multiply-adds are counted exactly.
  ratio = reduction
  tx = optax_gsm.structured.structured_gsm_sgd(setup.schedule, groups, **{
      "compression_ratio": ratio, "cost": "flops",
      "total_steps": setup.steps, "momentum": experiment.MOMENTUM,
      "weight_decay": experiment.WEIGHT_DECAY, **options})
  trained, opt_state, timing = trainer.train(
      params, tx, setup.args.epochs, batch_stats=batch_stats,
      desc=f"structured GSM {reduction}x")
  # Running BN averages lag behind structures ramped to zero: recomputed
  # (forward passes only) before the model is evaluated or shrunk.
  running = trainer.batch_stats
  stats = (None if running is None
           else trainer.recalibrated_batch_stats(trained, running))
  keep = optax_gsm.structured.kept_structures(opt_state)
  variables = setup.variables(trained, stats)
  masked = optax_gsm.structured.mask_structures(variables, groups, keep)
  small, widths, small_trainer, small_accuracy = shrunk_accuracy(
      setup, variables, groups, keep)
  difference = shrink_difference(
      setup.inference_apply(small_trainer.model),
      setup.inference_apply(trainer.model), variables, groups, keep,
      setup.test[0][:64])
  before, after = optax_gsm.structured.model_cost(groups, trained, keep, "flops")
  params_before, params_after = optax_gsm.structured.model_cost(groups, trained,
                                                         keep)
  record = {
      "compression_ratio": ratio,
      **floors_record(groups, params, ratio,
                      options.get("min_kept_share", "auto")),
      "accuracy_trained": trainer.accuracy(trained, stats),
      "accuracy_running_stats": trainer.accuracy(trained, running),
      "accuracy_masked": trainer.accuracy(masked["params"],
                                          masked.get("batch_stats")),
      "accuracy_shrunk": small_accuracy,
      "shrunk_minus_masked_max_logit": difference["float32"],
      "shrunk_minus_masked_max_logit_float64": difference["float64"],
      "flops_reduction": before / after,
      "params_reduction": params_before / params_after,
      "widths": widths,
      "kept_fraction": [float(np.mean(k)) for k in keep.channels],
      "blocks_removed": [b.name for b, k in zip(groups.blocks, keep.blocks)
                         if not k],
      **timing}
  print(f"GSM {reduction}x: trained {record['accuracy_trained']:.4f} "
        f"masked {record['accuracy_masked']:.4f} shrunk "
        f"{small_accuracy:.4f} (logits within {difference_text(**difference)})"
        f" at {record['flops_reduction']:.2f}x FLOPs",
        flush=True)
  return record, small, widths


def fine_tune_stage(setup, groups, params, batch_stats, keep, desc):
  """The dense model shrunk to ``keep``, then fine-tuned for the budget."""
  variables = setup.variables(params, batch_stats)
  small, widths, trainer, pruned_accuracy = shrunk_accuracy(
      setup, variables, groups, keep)
  tuned, _, timing = trainer.train(
      small["params"], setup.sgd(), setup.args.epochs,
      batch_stats=small.get("batch_stats"), desc=desc)
  before, after = optax_gsm.structured.model_cost(groups, params, keep, "flops")
  record = {
      "accuracy_pruned": pruned_accuracy,
      "accuracy_fine_tuned": trainer.accuracy(tuned, trainer.batch_stats),
      "flops_reduction": before / after,
      "kept_fraction": [float(np.mean(k)) for k in keep.channels],
      "blocks_removed": [b.name for b, k in zip(groups.blocks, keep.blocks)
                         if not k],
      **timing}
  print(f"{desc}: pruned {pruned_accuracy:.4f} fine-tuned "
        f"{record['accuracy_fine_tuned']:.4f} at "
        f"{record['flops_reduction']:.2f}x FLOPs", flush=True)
  return record


def uniform_stage(setup, groups, params, batch_stats, reduction,
                  order: int = 1):
  """Uniform L1-norm (``order=1``) or L2-norm filter pruning to
  ``reduction`` fewer FLOPs, then fine-tuning."""
  return fine_tune_stage(setup, groups, params, batch_stats,
                         uniform_for(groups, params, reduction, order),
                         f"L{order} {reduction}x")


def taylor_stage(setup, trainer, groups, params, batch_stats, reduction):
  """Global Taylor pruning (Molchanov et al., CVPR 2019) to ``reduction``
  fewer FLOPs, then fine-tuning: channels and blocks of the whole model in
  one ranking by first-order Taylor saliency per FLOP on a few training
  batches, the budgeted rule of structured GSM applied once to the dense
  model (`prune_structures`), so widths differ per layer."""
  grads = trainer.gradient(params, batch_stats)
  _, keep = optax_gsm.structured.prune_structures(
      params, groups, reduction, cost="flops", saliency="taylor",
      grads=grads)
  return fine_tune_stage(setup, groups, params, batch_stats, keep,
                         f"global Taylor {reduction}x")


def inference_times(setup, variables, small, widths, repeats_budget):
  times = {}
  for name, model, model_variables in (
      ("dense", setup.model(), variables),
      ("shrunk", setup.model(widths), small)):
    apply = jax.jit(lambda v, x, model=model: predict(
        model.apply, v["params"], v.get("batch_stats"), x))
    for batch in (1, 256):
      x = jnp.asarray(setup.test[0][:batch])
      times[f"{name}_batch{batch}_ms"] = 1e3 * time_call(
          lambda apply=apply, v=model_variables, x=x: jax.block_until_ready(
              apply(v, x)), budget_s=repeats_budget)
  for batch in (1, 256):
    times[f"speedup_batch{batch}"] = (times[f"dense_batch{batch}_ms"]
                                      / times[f"shrunk_batch{batch}_ms"])
  return times


def n_of_m_stages(setup, trainer, params, n_of_m):
  """2:4 GSM against 2:4 magnitude pruning + fine-tuning, same budget."""
  tx = optax_gsm.n_of_m_gsm_sgd(setup.schedule, n_of_m,
                         total_steps=setup.steps,
                         momentum=experiment.MOMENTUM,
                         weight_decay=experiment.WEIGHT_DECAY)
  trained, opt_state, gsm_timing = trainer.train(
      params, tx, setup.args.epochs, desc=f"{n_of_m} GSM")
  pruned, _ = optax_gsm.prune(trained, opt_state=opt_state)
  one_shot, mask = optax_gsm.prune(params, n_of_m=n_of_m)
  tuned, _, tune_timing = trainer.train(
      one_shot, optax.chain(setup.sgd(), optax_gsm.freeze_pruned(mask)),
      setup.args.epochs, mask=mask, desc=f"{n_of_m} magnitude + fine-tune")
  record = {
      "n_of_m": list(n_of_m),
      "gsm_trained": trainer.accuracy(trained),
      "gsm_pruned": trainer.accuracy(pruned),
      "magnitude_one_shot": trainer.accuracy(one_shot),
      "magnitude_fine_tuned": trainer.accuracy(tuned),
      "gsm_seconds_per_step": gsm_timing["seconds_per_step"],
      "fine_tune_seconds_per_step": tune_timing["seconds_per_step"]}
  print(json.dumps(record), flush=True)
  return record


def markdown(record) -> str:
  lines = [f"# Structured pruning on MNIST: {record['model']}", "",
           f"Dense: {record['dense']['accuracy']:.4f} "
           f"({record['dense']['steps']} steps). Each method then has "
           f"{record['steps']} steps; machine: {record['machine']['cpu']}, "
           f"{record['machine']['cpu_count']} cores."
           + (f" Ranked: {record['ranked']}." if "ranked" in record else "")
           + (f" GSM's saliency averaged over its refreshes "
              f"(`saliency_decay={record['saliency_decay']}`)."
              if "saliency_decay" in record else "")
           + (f" `{record['command']}`" if "command" in record else "")
           + (" " + floor_note([run["gsm"] for run in record["runs"]])
              if record.get("runs") else ""), ""]
  if "n_of_m" in record:
    r = record["n_of_m"]
    lines += ["| 2:4 method | accuracy |", "|---|---|",
              f"| GSM n_of_m, trained | {r['gsm_trained']:.4f} |",
              f"| GSM n_of_m, pruned (no fine-tuning) | {r['gsm_pruned']:.4f} |",
              f"| magnitude 2:4, one-shot | {r['magnitude_one_shot']:.4f} |",
              f"| magnitude 2:4 + fine-tuning | {r['magnitude_fine_tuned']:.4f} |"]
    return "\n".join(lines) + "\n"
  lines += ["| FLOPs target | method | FLOPs reduction | params reduction | "
            "trained | masked | shrunk | blocks removed | speed-up b=1 | "
            "speed-up b=256 |", "|---" * 10 + "|"]
  for run in record["runs"]:
    g, t = run["gsm"], run["inference"]
    lines.append(
        f"| {run['reduction']}x | structured GSM | {g['flops_reduction']:.2f}x"
        f" | {g['params_reduction']:.2f}x | {g['accuracy_trained']:.4f} | "
        f"{g['accuracy_masked']:.4f} | {g['accuracy_shrunk']:.4f} | "
        f"{', '.join(g['blocks_removed']) or '-'} | "
        f"{t['speedup_batch1']:.2f}x | {t['speedup_batch256']:.2f}x |")
    for key, label in BASELINES.items():
      if key in run:
        b = run[key]
        lines.append(
            f"| {run['reduction']}x | {label} + fine-tune | "
            f"{b['flops_reduction']:.2f}x | | {b['accuracy_pruned']:.4f} "
            f"(pruned{', one-shot' if key == 'taylor' else ''}) | | "
            f"{b['accuracy_fine_tuned']:.4f} (fine-tuned) | "
            f"{', '.join(b.get('blocks_removed', [])) or '-'} | | |")
  lines += ["", "Inference (ms, dense / shrunk): " + "; ".join(
      f"{run['reduction']}x: b=1 {run['inference']['dense_batch1_ms']:.2f} / "
      f"{run['inference']['shrunk_batch1_ms']:.2f}, b=256 "
      f"{run['inference']['dense_batch256_ms']:.1f} / "
      f"{run['inference']['shrunk_batch256_ms']:.1f}"
      for run in record["runs"])]
  if all("shrunk_minus_masked_max_logit" in run["gsm"]
         for run in record["runs"]):
    lines += ["", "Shrunk minus masked GSM model, largest logit difference: "
              + "; ".join(f"{run['reduction']}x " + difference_text(
                  run["gsm"]["shrunk_minus_masked_max_logit"],
                  run["gsm"]["shrunk_minus_masked_max_logit_float64"])
                          for run in record["runs"])]
  return "\n".join(lines) + "\n"


def group_in_block(group: str, block: str) -> bool:
  """Whether a channel group (by name) lies in a block: ``stage1_block0``
  holds ``stage1_block0/conv1``; ``layer1/attention+attention_norm`` holds
  ``layer1/attention/query``."""
  base, _, modules = block.rpartition("/")
  return any(group == module or group.startswith(module + "/")
             for module in (f"{base}/{m}" if base else m
                            for m in modules.split("+")))


def plot(record, path):
  """Per channel group, the share of channels each method kept; groups
  inside a block GSM removed are drawn as removed (hatched, at 0)."""
  import textwrap

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = record["groups"]
  runs = record["runs"]
  figure, axes = plt.subplots(len(runs), 1, figsize=(10, 3.4 * len(runs)),
                              squeeze=False)
  positions = np.arange(len(names))
  for axis, run in zip(axes[:, 0], runs):
    removed = run["gsm"]["blocks_removed"]
    inside = np.array([any(group_in_block(n, b) for b in removed) for n in names])
    kept = np.where(inside, 0.0, run["gsm"]["kept_fraction"])
    baselines = [key for key in BASELINES if key in run]
    width, offsets = bar_offsets(1 + len(baselines))
    axis.bar(positions + offsets[0], kept, width, label="structured GSM")
    if inside.any():
      axis.bar(positions[inside] + offsets[0], np.full(inside.sum(), 1.0),
               width, fill=False, hatch="//", edgecolor="tab:blue",
               label="block removed by GSM")
    for offset, key in zip(offsets[1:], baselines):
      axis.bar(positions + offset, run[key]["kept_fraction"], width,
               label=BASELINES[key])
    axis.set_title("\n".join(textwrap.wrap(
        f"{record['model']}, {run['reduction']}x fewer FLOPs; blocks GSM "
        f"removed: {', '.join(removed) or 'none'}", 100)), fontsize=9)
    axis.set_ylabel("channels kept")
    axis.set_xticks(positions, names, rotation=45, ha="right", fontsize=7)
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def main(argv=None):
  parser = experiment.parser(__doc__, model="resnet20")
  parser.add_argument("--reductions", type=float, nargs="+", default=[2, 4])
  parser.add_argument("--n-of-m", type=int, nargs=2, default=None,
                      help="2:4 GSM on LeNet-300-100 instead")
  parser.add_argument(
      "--no-blocks", action="store_true",
      help="rank channels (heads, neurons) only: no residual branch leaves")
  parser.add_argument(
      "--baselines", nargs="+", choices=tuple(BASELINES), default=["l1"],
      help="l1 / l2: uniform L1- / L2-norm pruning; taylor: global Taylor "
           "pruning (its one-shot accuracy is recorded too); each then "
           "fine-tuned for the budget")
  parser.add_argument(
      "--stream", action="store_true",
      help="rank a transformer's residual stream too (through its norms)")
  parser.add_argument(
      "--saliency-decay", type=float, default=None,
      help="rank by each structure's saliency averaged over the refreshes "
           "(structured GSM's `saliency_decay`); None: the current batch's")
  add_floor_argument(parser)
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  args = parser.parse_args(argv)
  experiment.apply_quick(args)
  if args.quick:
    args.reductions = args.reductions[:1]
  if args.n_of_m:
    args.model = "lenet300"
  setup = experiment.Setup(args)
  suffix = "_quick" if args.quick else ""
  model, trainer, params, batch_stats, dense = experiment.dense_stage(setup)
  record = {**setup.record(dense),
            "command": experiment.command("examples.structured_gsm", argv),
            "runs": []}
  if args.n_of_m:
    record["n_of_m"] = n_of_m_stages(setup, trainer, params,
                                     tuple(args.n_of_m))
    experiment.save(record, markdown(record), args.out,
                    f"mnist_lenet300_{args.n_of_m[0]}of{args.n_of_m[1]}"
                    f"{suffix}")
    return record
  variables = setup.variables(params, batch_stats)
  groups = setup.groups(model, variables, through_norms=args.stream)
  decay = args.saliency_decay
  stem = setup.stem_for(("_no_blocks" if args.no_blocks else "")
                        + ("_stream" if args.stream else "")
                        + (f"_decay{decay:g}" if decay is not None else "")
                        + floor_stem(args.min_kept_share))
  if args.no_blocks:
    groups = groups.without([b.name for b in groups.blocks])
  if args.no_blocks or args.stream:
    record["ranked"] = ("channels, heads and neurons"
                        + ("" if args.no_blocks else ", branches")
                        + (", the residual stream" if args.stream else "")
                        + (" only (no branch leaves)" if args.no_blocks
                           else ""))
  if decay is not None:
    record["saliency_decay"] = decay
  record["groups"] = [g.name for g in groups.channels]
  for reduction in args.reductions:
    gsm_record, small, widths = gsm_stage(
        setup, trainer, groups, params, batch_stats, reduction,
        saliency_decay=decay, min_kept_share=args.min_kept_share)
    run = {"reduction": reduction, "gsm": gsm_record}
    for baseline in args.baselines:
      run[baseline] = (
          taylor_stage(setup, trainer, groups, params, batch_stats, reduction)
          if baseline == "taylor" else uniform_stage(
              setup, groups, params, batch_stats, reduction,
              order=UNIFORM_ORDERS[baseline]))
    run["inference"] = inference_times(setup, variables, small, widths,
                                       0.2 if args.quick else 2.0)
    record["runs"].append(run)
    experiment.save(record, markdown(record), args.out, stem)
  plot(record, args.out / f"{stem}_channels.png")
  print(markdown(record))
  return record


if __name__ == "__main__":
  main()
