"""Structured GSM on a GPT-style character model: fewer heads and MLP
neurons in a scan-stacked transformer, with no fine-tuning.

A causal pre-LN transformer (``examples.models.CharTransformer``: width 128,
4 layers of 4 heads stacked by ``nn.scan``, MLP 512, 64-character context)
learns the source of Python's standard library (``examples.text_data``),
character by character, with AdamW (warm-up then cosine decay). Then, at
each FLOPs reduction asked for, from the dense model and for the same number
of steps:

1. structured GSM with AdamW (``structured_gsm_adamw(lr, groups, C,
   cost="flops", total_steps=T)``): heads (attention products included in
   their cost), MLP neurons and whole layers in one global ranking; every
   layer of the stack keeps the same heads and neurons, so the shrunk model
   is still a scan stack; `shrink`, no fine-tuning;
2. uniform L1 and, separately, L2 pruning (the same share of heads and of
   neurons, those with the smallest norm of their output weights removed)
   to the same FLOPs, shrunk, then fine-tuned with AdamW for T steps;
3. one-shot Taylor pruning (post-training, no fine-tuning, as LLM-Pruner
   scores structures): ``|sum g w|`` per structure with the gradient of 8
   training batches, the same global ranking per FLOP and budget.

Reported: test bits per character and next-character accuracy, the largest
difference between the shrunk and the masked model's logits, the FLOPs and
parameter reductions, and the CPU inference time of the dense and the GSM
model at batch 1 and 64, measured in the same run.

    python -m examples.char_gpt --reductions 2 4      # ~25 min on 2 cores
    python -m examples.char_gpt --reductions 2 4 --no-layers
    python -m examples.char_gpt --reductions 2 4 --block-saliency parts
    python -m examples.char_gpt --reductions 2 4 --no-layers --stream
    python -m examples.char_gpt --quick               # as the tests run it

With layers in the ranking, a whole layer's Taylor saliency (``|sum g w|``
over all its entries, which cancel) ranks every layer below every head and
neuron, so the budget keeps as many whole layers as fit with those heads
and neurons; on this model that costs little (within 0.02 bits of
``--no-layers``, which ranks heads and neurons alone, under LayerNorm, and
within 0.1 bits with ``--stream --norm rms``).
``--stream`` adds the residual stream's channels (embedding width) to the
ranking; the shrunk model's LayerNorms then normalise over the channels
kept, where the trained (masked) model's ran over all of them, zeros
included, so the shrunk model is not the trained one: the record gives
the bits per character of both. With ``--norm rms`` (RMSNorm, as Llama)
`shrink` rescales the norms' scales and the shrunk model is the trained
one.

Writes (to ``--out``) ``results/char_gpt/stdlib_gpt[_no_layers][_stream]``
``[_rms][_parts][_decay<d>][_no_floor|_floor<share>][_seed<n>]``
``.{json,md,png}``.
"""

import argparse
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_gsm
from examples import experiment
from examples.measure import (
  RESULTS,
  HelpFormatter,
  bar_offsets,
  machine_info,
  time_call,
)
from examples.models import NORMS, CharTransformer
from examples.structured_gsm import (
  UNIFORM_ORDERS,
  add_floor_argument,
  difference_text,
  floor_note,
  floor_stem,
  floors_record,
  shrink_difference,
  uniform_for,
)
from examples.text_data import VOCAB, load_corpus
from examples.training import Trainer

OUT = RESULTS / "char_gpt"
PEAK_LR = 3e-3
WEIGHT_DECAY = 0.01
CALIBRATION_BATCHES = 8


def parser(doc: str, out: pathlib.Path) -> argparse.ArgumentParser:
  """The model, corpus and budget arguments of every character-GPT run."""
  result = argparse.ArgumentParser(
      description=doc.split("\n\n")[0], formatter_class=HelpFormatter,
      epilog="\n\n".join(doc.split("\n\n")[1:]))
  result.add_argument("--epochs", type=int, default=10)
  result.add_argument("--steps-per-epoch", type=int, default=100)
  result.add_argument("--batch", type=int, default=32)
  result.add_argument("--context", type=int, default=64)
  result.add_argument("--width", type=int, default=128)
  result.add_argument("--depth", type=int, default=4)
  result.add_argument("--heads", type=int, default=4)
  result.add_argument("--mlp-width", type=int, default=512)
  result.add_argument(
      "--norm", choices=tuple(NORMS), default="layer",
      help="LayerNorm, or RMSNorm (as Llama): a stream shrunk under RMSNorm "
           "computes what the masked one does")
  result.add_argument("--seed", type=int, default=0)
  result.add_argument("--out", type=pathlib.Path, default=out)
  result.add_argument("--quick", action="store_true",
                      help="a tiny model, a few steps, as the tests run it")
  return result


def apply_quick(args: argparse.Namespace) -> None:
  if args.quick:
    args.epochs, args.steps_per_epoch, args.batch = 2, 5, 8
    args.context, args.width, args.mlp_width, args.depth = 16, 32, 64, 2


def parse_args(argv=None) -> argparse.Namespace:
  parser_ = parser(__doc__, OUT)
  parser_.add_argument("--reductions", type=float, nargs="+", default=[2, 4])
  parser_.add_argument(
      "--no-layers", action="store_true",
      help="rank heads and neurons only: no whole layer of the stack leaves")
  parser_.add_argument(
      "--block-saliency", choices=("total", "parts"), default="total",
      help="a layer's saliency: of all its entries, or the sum of its parts'")
  parser_.add_argument(
      "--stream", action="store_true",
      help="rank the residual stream's channels too (`through_norms=True`):"
           " the shrunk model's LayerNorms then run over fewer channels, not"
           " the masked model's (RMSNorms are rescaled: exact)")
  parser_.add_argument(
      "--saliency-decay", type=float, default=None,
      help="rank by each structure's saliency averaged over the refreshes "
           "(structured GSM's `saliency_decay`); None: the current batch's")
  add_floor_argument(parser_)
  args = parser_.parse_args(argv)
  apply_quick(args)
  if args.quick:
    args.reductions = args.reductions[:1]
  return args


def adamw(steps: int) -> optax.GradientTransformation:
  return optax.adamw(experiment.schedule(PEAK_LR, steps),
                     weight_decay=WEIGHT_DECAY)


def quality(trainer: Trainer, params) -> dict:
  loss = trainer.test_loss(params)
  return {"bits_per_char": loss / math.log(2),
          "accuracy": trainer.accuracy(params)}


def _shrunk(args, groups, params, keep, corpus):
  small, widths = optax_gsm.structured.shrink({"params": params}, groups,
                                              keep)
  model = model_for(args, widths)
  return small["params"], widths, model, trainer_for(args, model, corpus)


def model_for(args, widths=None) -> CharTransformer:
  return CharTransformer(vocab=VOCAB, width=args.width, depth=args.depth,
                         heads=args.heads, mlp_width=args.mlp_width,
                         context=args.context, norm=args.norm,
                         widths=widths or {})


def trainer_for(args, model, corpus) -> Trainer:
  return Trainer(model, corpus.train, corpus.test,
                 steps_per_epoch=args.steps_per_epoch,
                 batch_size=args.batch, seed=args.seed)


def _kept(groups, keep) -> dict:
  """Heads and neurons kept (every layer the same), and layers kept."""
  kept = {g.name: int(np.sum(k)) for g, k in zip(groups.channels,
                                                 keep.channels)}
  if groups.blocks:
    kept["layers"] = int(np.sum(keep.blocks))
  return kept


def _reductions(groups, params, keep) -> dict:
  flops = optax_gsm.structured.model_cost(groups, params, keep, "flops")
  count = optax_gsm.structured.model_cost(groups, params, keep)
  return {"flops_reduction": flops[0] / flops[1],
          "params_reduction": count[0] / count[1]}


def gsm_stage(args, corpus, trainer, groups, dense, reduction, steps):
  tx = optax_gsm.structured.structured_gsm_adamw(
      experiment.schedule(PEAK_LR, steps), groups, reduction, cost="flops",
      total_steps=steps, weight_decay=WEIGHT_DECAY,
      block_saliency=args.block_saliency, saliency_decay=args.saliency_decay,
      min_kept_share=args.min_kept_share)
  trained, opt_state, timing = trainer.train(
      dense, tx, args.epochs, desc=f"structured GSM {reduction}x")
  keep = optax_gsm.structured.kept_structures(opt_state)
  masked = optax_gsm.structured.mask_structures({"params": trained}, groups,
                                                keep)["params"]
  small, widths, model, small_trainer = _shrunk(args, groups, trained, keep,
                                                corpus)
  difference = shrink_difference(
      model.apply, trainer.model.apply, {"params": trained}, groups, keep,
      corpus.test[0][:16])
  record = {**floors_record(groups, dense, reduction, args.min_kept_share),
            "trained": quality(trainer, trained),
            "masked": quality(trainer, masked),
            "shrunk": quality(small_trainer, small),
            "shrunk_minus_masked_max_logit": difference["float32"],
            "shrunk_minus_masked_max_logit_float64": difference["float64"],
            "kept": _kept(groups, keep), "widths": widths,
            **_reductions(groups, trained, keep), **timing}
  print(f"GSM {reduction}x: {record['trained']['bits_per_char']:.3f} bits "
        f"trained, {record['shrunk']['bits_per_char']:.3f} shrunk (logits "
        f"within {difference_text(**difference)}), {record['kept']}",
        flush=True)
  return record, small, model


def uniform_stage(args, corpus, groups, dense, reduction, steps, order):
  """Uniform L``order``-norm pruning, then fine-tuning with AdamW."""
  keep = uniform_for(groups, dense, reduction, order)
  small, _, _, trainer = _shrunk(args, groups, dense, keep, corpus)
  pruned = quality(trainer, small)
  tuned, _, timing = trainer.train(small, adamw(steps), args.epochs,
                                   desc=f"L{order} {reduction}x")
  record = {"pruned": pruned, "fine_tuned": quality(trainer, tuned),
            "kept": _kept(groups, keep),
            **_reductions(groups, dense, keep), **timing}
  print(f"L{order} {reduction}x: {pruned['bits_per_char']:.3f} bits pruned, "
        f"{record['fine_tuned']['bits_per_char']:.3f} fine-tuned", flush=True)
  return record


def taylor_stage(args, corpus, trainer, groups, dense, reduction):
  """One-shot: the gradient of a few training batches, no fine-tuning."""
  grads = trainer.gradient(dense, num_batches=CALIBRATION_BATCHES)
  _, keep = optax_gsm.structured.prune_structures(
      dense, groups, reduction, cost="flops", saliency="taylor",
      grads=grads)
  small, _, _, small_trainer = _shrunk(args, groups, dense, keep, corpus)
  record = {"pruned": quality(small_trainer, small),
            "kept": _kept(groups, keep), **_reductions(groups, dense, keep)}
  print(f"Taylor one-shot {reduction}x: "
        f"{record['pruned']['bits_per_char']:.3f} bits", flush=True)
  return record


def inference_times(args, corpus, dense_model, dense, small_model, small):
  times = {}
  for name, model, params in (("dense", dense_model, dense),
                              ("shrunk", small_model, small)):
    apply = jax.jit(lambda p, x, model=model: model.apply({"params": p}, x))
    for batch in (1, 64):
      x = jnp.asarray(corpus.test[0][:batch])
      times[f"{name}_batch{batch}_ms"] = 1e3 * time_call(
          lambda apply=apply, p=params, x=x: jax.block_until_ready(
              apply(p, x)), budget_s=0.2 if args.quick else 2.0)
  for batch in (1, 64):
    times[f"speedup_batch{batch}"] = (times[f"dense_batch{batch}_ms"]
                                      / times[f"shrunk_batch{batch}_ms"])
  return times


def corpus_line(description: dict) -> str:
  return (f"{description['source']} of Python {description['python']} "
          f"({description['files']} files, {description['characters']:,} "
          f"characters, sha256 {description['sha256']}), windows of "
          f"{description['context']}: {description['train_windows']:,} train, "
          f"{description['test_windows']:,} test")


def markdown(record) -> str:
  dense = record["dense"]
  lines = [
      "# Structured GSM on a character-level GPT (Python's standard library)",
      "", f"Model: {record['model']}. Corpus: {corpus_line(record['corpus'])}.",
      "",
      f"Dense (AdamW, {record['steps']} steps of {record['batch']}): "
      f"{dense['bits_per_char']:.3f} bits per character, next-character "
      f"accuracy {dense['accuracy']:.4f}. Ranked: "
      f"{record.get('structures', 'heads, MLP neurons and layers')}. "
      f"Each method then has "
      f"{record['steps']} steps from the dense model (Taylor: none). "
      f"Machine: {record['machine']['cpu']}, "
      f"{record['machine']['cpu_count']} cores."
      + (f" `{record['command']}`" if "command" in record else "") + " "
      + floor_note([run["gsm"] for run in record["runs"]]), "",
      "| FLOPs target | method | FLOPs reduction | params reduction | "
      "bits/char before | bits/char after | accuracy after | kept | "
      "speed-up b=1 | speed-up b=64 |", "|---" * 10 + "|"]
  for run in record["runs"]:
    g, taylor, t = run["gsm"], run["taylor"], run["inference"]
    kept = lambda r: ", ".join(f"{k.split('/')[-1]} {v}"
                               for k, v in r["kept"].items())
    lines += [
        f"| {run['reduction']}x | structured GSM (no fine-tuning) | "
        f"{g['flops_reduction']:.2f}x | {g['params_reduction']:.2f}x | "
        f"{g['trained']['bits_per_char']:.3f} (trained) | "
        f"{g['shrunk']['bits_per_char']:.3f} (shrunk) | "
        f"{g['shrunk']['accuracy']:.4f} | {kept(g)} | "
        f"{t['speedup_batch1']:.2f}x | {t['speedup_batch64']:.2f}x |"]
    lines += [
        f"| {run['reduction']}x | L{order} uniform + fine-tuning | "
        f"{b['flops_reduction']:.2f}x | {b['params_reduction']:.2f}x | "
        f"{b['pruned']['bits_per_char']:.3f} (pruned) | "
        f"{b['fine_tuned']['bits_per_char']:.3f} (fine-tuned) | "
        f"{b['fine_tuned']['accuracy']:.4f} | {kept(b)} | | |"
        for key, order in UNIFORM_ORDERS.items() if key in run
        for b in (run[key],)]
    lines += [
        f"| {run['reduction']}x | Taylor one-shot | "
        f"{taylor['flops_reduction']:.2f}x | "
        f"{taylor['params_reduction']:.2f}x | | "
        f"{taylor['pruned']['bits_per_char']:.3f} (pruned) | "
        f"{taylor['pruned']['accuracy']:.4f} | {kept(taylor)} | | |"]
  lines += ["", "Shrunk minus masked GSM model, largest logit difference: "
            + "; ".join(f"{run['reduction']}x " + difference_text(
                run["gsm"]["shrunk_minus_masked_max_logit"],
                run["gsm"].get("shrunk_minus_masked_max_logit_float64"))
                        for run in record["runs"]),
            "", "Inference (ms, dense / shrunk): " + "; ".join(
                f"{run['reduction']}x: b=1 "
                f"{run['inference']['dense_batch1_ms']:.2f} / "
                f"{run['inference']['shrunk_batch1_ms']:.2f}, b=64 "
                f"{run['inference']['dense_batch64_ms']:.1f} / "
                f"{run['inference']['shrunk_batch64_ms']:.1f}"
                for run in record["runs"])]
  return "\n".join(lines) + "\n"


def plot(record, path) -> None:
  """Heads and MLP neurons each method kept (every layer the same)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  runs = record["runs"]
  figure, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.4),
                              squeeze=False)
  sizes = record["group_sizes"]
  names = list(sizes)
  positions = np.arange(len(names))
  for axis, run in zip(axes[0], runs):
    methods = [(label, method) for label, method in (
        ("structured GSM", "gsm"), ("L1 uniform", "l1"), ("L2 uniform", "l2"),
        ("Taylor one-shot", "taylor")) if method in run]
    width, offsets = bar_offsets(len(methods))
    for offset, (label, method) in zip(offsets, methods):
      shares = [run[method]["kept"][n] / sizes[n] for n in names]
      axis.bar(positions + offset, shares, width, label=label)
    axis.set_xticks(positions, [
        f"{n.removeprefix('layers/').removesuffix('/query')}\n({sizes[n]})"
        for n in names], fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("share kept (every layer)")
    layers = [f"{label.removeprefix('structured ').split()[0]} "
              f"{run[method]['kept']['layers']}"
              for label, method in methods if "layers" in run[method]["kept"]]
    axis.set_title(f"{run['reduction']}x fewer FLOPs"
                   + (f"; layers kept: {', '.join(layers)}" if layers else ""),
                   fontsize=9)
    axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def dense_stage(args):
  """The corpus, the model, its trainer, the dense params trained with
  AdamW from the seed, and their record."""
  corpus = load_corpus(args.context, max_test_windows=16 if args.quick
                       else 1024)
  model = model_for(args)
  trainer = trainer_for(args, model, corpus)
  params = model.init(jax.random.key(args.seed),
                      jnp.asarray(corpus.train[0][:1]))["params"]
  dense, _, timing = trainer.train(
      params, adamw(args.epochs * args.steps_per_epoch), args.epochs,
      desc="dense")
  record = {**quality(trainer, dense), **timing}
  print(f"dense: {record['bits_per_char']:.3f} bits per character",
        flush=True)
  return corpus, model, trainer, dense, record


def model_line(args) -> str:
  return (f"CharTransformer(width={args.width}, depth={args.depth}, "
          f"heads={args.heads}, mlp_width={args.mlp_width}, "
          f"context={args.context}"
          f"{', norm=rms' if args.norm == 'rms' else ''}), nn.scan stack")


def main(argv=None) -> dict:
  args = parse_args(argv)
  steps = args.epochs * args.steps_per_epoch
  corpus, model, trainer, dense, dense_record = dense_stage(args)
  groups = optax_gsm.structured.channel_groups(
      model.apply, {"params": dense}, jnp.asarray(corpus.train[0][:1]),
      through_norms=args.stream)
  if args.no_layers:
    groups = groups.without([b.name for b in groups.blocks])
  stem = (f"stdlib_gpt{'_no_layers' if args.no_layers else ''}"
          f"{'_stream' if args.stream else ''}"
          f"{'_rms' if args.norm == 'rms' else ''}"
          f"{'_parts' if args.block_saliency == 'parts' else ''}"
          + (f"_decay{args.saliency_decay:g}"
             if args.saliency_decay is not None else "")
          + floor_stem(args.min_kept_share)
          + f"{f'_seed{args.seed}' if args.seed else ''}"
          f"{'_quick' if args.quick else ''}")
  record = {
      "command": experiment.command("examples.char_gpt", argv),
      "model": model_line(args),
      "corpus": corpus.description, "steps": steps, "batch": args.batch,
      "seed": args.seed, "peak_lr": PEAK_LR, "weight_decay": WEIGHT_DECAY,
      "structures": (("heads and MLP neurons" if args.no_layers
                      else "heads, MLP neurons and layers"
                      + (" (a layer's saliency: the sum of its parts')"
                         if args.block_saliency == "parts" else ""))
                     + (", the residual stream" if args.stream else "")
                     + (f"; saliency averaged over the refreshes "
                        f"(saliency_decay={args.saliency_decay})"
                        if args.saliency_decay is not None else "")),
      "machine": machine_info(),
      "dense": dense_record,
      "group_sizes": {g.name: g.size for g in groups.channels},
      "unprunable": [list(u) for u in groups.unprunable], "runs": []}
  for reduction in args.reductions:
    gsm, small, small_model = gsm_stage(args, corpus, trainer, groups, dense,
                                        reduction, steps)
    record["runs"].append({
        "reduction": reduction, "gsm": gsm,
        **{key: uniform_stage(args, corpus, groups, dense, reduction, steps,
                              order) for key, order in UNIFORM_ORDERS.items()},
        "taylor": taylor_stage(args, corpus, trainer, groups, dense,
                               reduction),
        "inference": inference_times(args, corpus, model, dense, small_model,
                                     small)})
    experiment.save(record, markdown(record), args.out, stem)
  plot(record, args.out / f"{stem}.png")
  print(markdown(record))
  return record


if __name__ == "__main__":
  main()
