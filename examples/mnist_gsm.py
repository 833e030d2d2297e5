"""GSM on real MNIST, end to end: dense training, GSM, the final prune,
magnitude-pruning baselines and lottery tickets (Ding et al., 2019, Sec. 4).

For one model and one or more compression ratios:

1. train the dense model (the official schedule: lr 3e-2, 5 warm-up epochs,
   x0.1 at epochs 40/80/120/160 of 200, momentum 0.9, weight decay 5e-4);
2. GSM-train from it (lr 1e-2, 5 warm-up, x0.1 at 160/200/240 of 280,
   momentum 0.99 Nesterov, Taylor saliency), then the final global magnitude
   prune, no fine-tuning; in the variants asked for:
   - ``paper``: exactly the above;
   - ``freeze``: ``gsm(freeze_mask_at=...)`` at ``--freeze-at`` of the GSM
     steps (default 0.2, long before the first learning-rate drop): the
     active set is frozen to the Q largest ``|w|`` (what the final prune will
     keep), so every weight the prune removes decays at the full learning
     rate for the many steps left;
   - ``ramp``: compression ramped geometrically from 1x to C over the first
     quarter of the GSM steps, then as ``paper``;
3. baselines on the same data and budget: one-shot global magnitude pruning
   of the dense model, without and with fine-tuning (Han et al. 2015,
   ``--magnitude-rounds`` rounds of prune + fine-tune);
4. lottery tickets: the GSM mask and the one-shot magnitude mask, each
   applied to the dense model's initialisation and retrained with the mask
   fixed (the dense schedule).

Budgets are counted in optimizer steps: an epoch is 60000 / 256 = 234 steps
whatever the training-set size. ``--epoch-scale`` shortens every schedule
proportionally. Writes ``benchmarks/results/mnist_<model>_<ratio>x.json``,
a Markdown table beside it and a PNG of the per-layer density GSM chose.

    python examples/mnist_gsm.py --model lenet300 --ratios 60
    python examples/mnist_gsm.py --model lenet5 --ratios 125 300 --epoch-scale 0.05
    python examples/mnist_gsm.py --quick      # a few hundred steps, as the tests run it
"""

import argparse
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from mnist_data import load_mnist
from mnist_models import MODELS
from tqdm import tqdm

import optax_gsm

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "results"
BATCH = 256
OFFICIAL_STEPS_PER_EPOCH = 60000 // BATCH  # 234
DENSE = dict(lr=3e-2, epochs=200, milestones=(40, 80, 120, 160), momentum=0.9)
GSM = dict(lr=1e-2, epochs=280, milestones=(160, 200, 240), momentum=0.99)
WARMUP_EPOCHS = 5
WEIGHT_DECAY = 5e-4
VARIANTS = ("paper", "freeze", "ramp")


class Trainer:
  """Jitted epochs of ``steps_per_epoch`` batches, for any optimizer."""

  def __init__(self, model, data, steps_per_epoch, seed):
    self.model = model
    self.steps_per_epoch = steps_per_epoch
    normalise = lambda x: (x.astype(np.float32) / 255.0 - 0.1307) / 0.3081
    self.train_x = jnp.asarray(normalise(data.train_images))
    self.train_y = jnp.asarray(data.train_labels)
    self.test_x = jnp.asarray(normalise(data.test_images))
    self.test_y = jnp.asarray(data.test_labels)
    self.rng = np.random.default_rng(seed)

  def loss(self, params, x, y):
    logits = self.model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def _epoch_fn(self, tx, masked):
    def step(carry, indices):
      params, opt_state, mask = carry
      x, y = self.train_x[indices], self.train_y[indices]
      grads = jax.grad(self.loss)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      if masked:  # pruned weights stay exactly zero
        params = jax.tree.map(lambda w, m: w * m, params, mask)
      return (params, opt_state, mask), None

    @jax.jit
    def epoch(params, opt_state, mask, batches):
      (params, opt_state, _), _ = jax.lax.scan(step, (params, opt_state, mask),
                                               batches)
      return params, opt_state
    return epoch

  def batches(self):
    n = self.train_y.shape[0]
    order = np.concatenate([self.rng.permutation(n) for _ in range(
        math.ceil(self.steps_per_epoch * BATCH / n))])
    return jnp.asarray(order[:self.steps_per_epoch * BATCH].reshape(
        self.steps_per_epoch, BATCH))

  def train(self, params, tx, epochs, *, opt_state=None, mask=None,
            desc="train"):
    """Returns (params, opt_state, seconds per step)."""
    # Every stage trains with its own optimizer: nothing to reuse.
    epoch = self._epoch_fn(tx, mask is not None)
    opt_state = tx.init(params) if opt_state is None else opt_state
    mask = mask if mask is not None else jax.tree.map(
        lambda w: jnp.ones((), w.dtype), params)
    start = None
    bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False,
               disable=None)  # no bar when output is not a terminal
    for i in bar:
      params, opt_state = epoch(params, opt_state, mask, self.batches())
      jax.block_until_ready(params)
      if i == 0:
        start = time.perf_counter()  # excludes compilation
      if (i + 1) % max(epochs // 5, 1) == 0 or i + 1 == epochs:
        bar.set_postfix(test_acc=f"{self.accuracy(params):.4f}")
    steps = max(epochs - 1, 1) * self.steps_per_epoch
    return params, opt_state, (time.perf_counter() - start) / steps

  def accuracy(self, params):
    logits = self.model.apply({"params": params}, self.test_x)
    return float(jnp.mean(jnp.argmax(logits, -1) == self.test_y))


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


def masked_sgd(schedule, momentum):
  return optax.chain(optax.add_decayed_weights(WEIGHT_DECAY),
                     optax.trace(momentum),
                     optax.scale_by_learning_rate(schedule))


def layer_densities(mask):
  report = optax_gsm.sparsity_report(mask)
  return {leaf.path: leaf.density for leaf in report.leaves if leaf.prunable}


def prunable_leaves(tree):
  flags = jax.tree.leaves(optax_gsm.default_prunable(tree))
  return [np.asarray(x) for x, f in zip(jax.tree.leaves(tree), flags) if f]


def mask_overlap(a, b):
  """Fraction of a's kept prunable entries that b keeps too."""
  a_leaves, b_leaves = prunable_leaves(a), prunable_leaves(b)
  both = sum(int(np.sum(x & y)) for x, y in zip(a_leaves, b_leaves))
  return both / max(sum(int(np.sum(x)) for x in a_leaves), 1)


def run_gsm(trainer, dense_params, ratio, variant, steps_per_epoch,
            epoch_scale, freeze_at):
  """One GSM variant from the dense model; returns its record."""
  epochs = epochs_of(GSM, epoch_scale)
  schedule = lr_schedule(GSM, steps_per_epoch, epoch_scale)
  compression = ratio
  if variant == "ramp":
    ramp_steps = max(1, epochs * steps_per_epoch // 4)
    compression = lambda step: ratio ** jnp.minimum(step / ramp_steps, 1.0)
  freeze_step = (round(epochs * freeze_at) * steps_per_epoch
                 if variant == "freeze" else None)
  tx = optax_gsm.gsm_sgd(schedule, compression, momentum=GSM["momentum"],
                         nesterov=True, weight_decay=WEIGHT_DECAY,
                         freeze_mask_at=freeze_step)
  params, opt_state, seconds = trainer.train(
      dense_params, tx, epochs, desc=f"GSM {variant} {ratio:g}x")
  gsm_mask = optax.tree_utils.tree_get(opt_state, "mask")
  record = {"variant": variant, "epochs": epochs,
            "steps": epochs * steps_per_epoch, "seconds_per_step": seconds}
  if variant == "freeze":
    record["freeze_at"] = freeze_at
    record["freeze_step"] = freeze_step
  pruned, kept = optax_gsm.prune(params, ratio)
  passive = [np.abs(w)[~m] for w, m in zip(prunable_leaves(params),
                                            prunable_leaves(kept))]
  record.update(
      accuracy_before_prune=trainer.accuracy(params),
      accuracy_after_prune=trainer.accuracy(pruned),
      final_mask_overlap=mask_overlap(kept, gsm_mask),
      largest_pruned_weight=float(max(p.max(initial=0.0) for p in passive)),
      layer_density=layer_densities(kept),
      nonzero=optax_gsm.sparsity_report(pruned).prunable_nonzero)
  return record, kept


def run_magnitude(trainer, dense_params, ratio, rounds, steps_per_epoch,
                  epoch_scale):
  """Han et al.: prune by |w| in ``rounds`` geometric steps, fine-tuning
  after each, on the GSM budget. Returns (one-shot acc, fine-tuned acc)."""
  one_shot, _ = optax_gsm.prune(dense_params, ratio)
  one_shot_accuracy = trainer.accuracy(one_shot)
  epochs = epochs_of(GSM, epoch_scale)
  params = dense_params
  seconds = 0.0
  for r in range(1, rounds + 1):
    params, mask = optax_gsm.prune(params, ratio ** (r / rounds))
    tx = masked_sgd(lr_schedule(GSM, steps_per_epoch, epoch_scale / rounds),
                    DENSE["momentum"])
    params, _, seconds = trainer.train(
        params, tx, max(1, epochs // rounds), mask=mask,
        desc=f"magnitude FT {ratio:g}x round {r}")
  return {"one_shot_accuracy": one_shot_accuracy,
          "fine_tuned_accuracy": trainer.accuracy(params),
          "rounds": rounds, "seconds_per_step": seconds,
          "layer_density": layer_densities(mask)}


def run_ticket(trainer, init_params, mask, steps_per_epoch, epoch_scale, desc):
  ticket = jax.tree.map(lambda w, m: w * m, init_params, mask)
  tx = masked_sgd(lr_schedule(DENSE, steps_per_epoch, epoch_scale),
                  DENSE["momentum"])
  params, _, seconds = trainer.train(ticket, tx, epochs_of(DENSE, epoch_scale),
                                     mask=mask, desc=desc)
  return {"accuracy": trainer.accuracy(params), "seconds_per_step": seconds}


def markdown(record):
  ratio = record["compression_ratio"]
  lines = [f"### {record['model']} at {ratio:g}x ({record['data_source']}, "
           f"{record['train_size']}/{record['test_size']}, epoch scale "
           f"{record['epoch_scale']:g})", "",
           "| run | steps | top-1 before prune | top-1 after prune | s/step |",
           "|---|---|---|---|---|",
           f"| dense | {record['dense']['steps']} | "
           f"{record['dense']['accuracy']:.2%} | | "
           f"{record['dense']['seconds_per_step']:.4f} |"]
  for gsm in record["gsm"]:
    label = gsm["variant"] + (f"@{gsm['freeze_at']:g}" if "freeze_at" in gsm
                              else "")
    lines.append(
        f"| GSM {label} | {gsm['steps']} | "
        f"{gsm['accuracy_before_prune']:.2%} | "
        f"{gsm['accuracy_after_prune']:.2%} | {gsm['seconds_per_step']:.4f} |")
  if "magnitude" in record:
    mag = record["magnitude"]
    lines.append(f"| magnitude one-shot | 0 | | {mag['one_shot_accuracy']:.2%} | |")
    lines.append(f"| magnitude + fine-tune ({mag['rounds']} rounds) | "
                 f"{record['gsm'][0]['steps']} | | "
                 f"{mag['fine_tuned_accuracy']:.2%} | "
                 f"{mag['seconds_per_step']:.4f} |")
  for name, ticket in record.get("lottery_tickets", {}).items():
    lines.append(f"| lottery ticket: {name} mask | {record['dense']['steps']} | "
                 f"| {ticket['accuracy']:.2%} | {ticket['seconds_per_step']:.4f} |")
  return "\n".join(lines) + "\n"


def plot_densities(record, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  densities = record["gsm"][0]["layer_density"]
  names = list(densities)
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.bar(range(len(names)), [densities[n] for n in names],
         label=f"GSM ({record['gsm'][0]['variant']})")
  ax.axhline(1 / record["compression_ratio"], color="k", ls="--",
             label="uniform 1/C")
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels([n.replace("['", "").replace("']", "/").rstrip("/")
                      for n in names], rotation=20, fontsize=8)
  ax.set_yscale("log")
  ax.set_ylabel("density (kept / size)")
  ax.set_title(f"{record['model']} at {record['compression_ratio']:g}x")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="\n\n".join(__doc__.split("\n\n")[1:]))
  parser.add_argument("--model", choices=list(MODELS), default="lenet300")
  parser.add_argument("--ratios", type=float, nargs="+", default=[60.0])
  parser.add_argument("--variants", nargs="+", choices=VARIANTS,
                      default=list(VARIANTS))
  parser.add_argument("--epoch-scale", type=float, default=1.0,
                      help="fraction of the official epochs (1.0 = 200 + 280)")
  parser.add_argument("--freeze-at", type=float, default=0.2,
                      help="fraction of the GSM steps after which the "
                      "`freeze` variant fixes the active set")
  parser.add_argument("--magnitude-rounds", type=int, default=3)
  parser.add_argument("--skip-baselines", action="store_true")
  parser.add_argument("--skip-lottery", action="store_true")
  parser.add_argument("--data-dir", default=None,
                      help="directory with the MNIST IDX files (or $MNIST_DIR)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output-dir", type=pathlib.Path, default=RESULTS)
  parser.add_argument("--quick", action="store_true",
                      help="10-step epochs, scale 0.05: a smoke test")
  args = parser.parse_args(argv)
  if not 0.0 < args.freeze_at < 1.0:
    parser.error(f"--freeze-at must be in (0, 1); got {args.freeze_at}")
  steps_per_epoch = 10 if args.quick else OFFICIAL_STEPS_PER_EPOCH
  epoch_scale = 0.05 if args.quick else args.epoch_scale

  data = load_mnist(args.data_dir)
  print(f"MNIST from {data.source}: {len(data.train_labels)} train, "
        f"{len(data.test_labels)} test", flush=True)
  model = MODELS[args.model]()
  trainer = Trainer(model, data, steps_per_epoch, args.seed)
  init_params = model.init(jax.random.PRNGKey(args.seed),
                           trainer.train_x[:1])["params"]
  dense_tx = masked_sgd(lr_schedule(DENSE, steps_per_epoch, epoch_scale),
                        DENSE["momentum"])
  dense_epochs = epochs_of(DENSE, epoch_scale)
  dense_params, _, dense_seconds = trainer.train(init_params, dense_tx,
                                                 dense_epochs, desc="dense")
  dense = {"accuracy": trainer.accuracy(dense_params),
           "steps": dense_epochs * steps_per_epoch,
           "seconds_per_step": dense_seconds}
  print(f"dense: {dense['accuracy']:.2%}", flush=True)

  records = []
  for ratio in args.ratios:
    record = {"model": args.model, "compression_ratio": ratio,
              "data_source": data.source,
              "train_size": int(len(data.train_labels)),
              "test_size": int(len(data.test_labels)),
              "epoch_scale": epoch_scale, "steps_per_epoch": steps_per_epoch,
              "seed": args.seed, "dense": dense, "gsm": []}
    masks = {}
    for variant in args.variants:
      gsm_record, kept = run_gsm(trainer, dense_params, ratio, variant,
                                 steps_per_epoch, epoch_scale, args.freeze_at)
      record["gsm"].append(gsm_record)
      masks.setdefault("GSM", kept)
      print(f"GSM {variant} {ratio:g}x: {gsm_record['accuracy_before_prune']:.2%}"
            f" before, {gsm_record['accuracy_after_prune']:.2%} after the "
            "final prune", flush=True)
    if not args.skip_baselines:
      record["magnitude"] = run_magnitude(
          trainer, dense_params, ratio, args.magnitude_rounds, steps_per_epoch,
          epoch_scale)
      print(f"magnitude {ratio:g}x: one-shot "
            f"{record['magnitude']['one_shot_accuracy']:.2%}, fine-tuned "
            f"{record['magnitude']['fine_tuned_accuracy']:.2%}", flush=True)
    if not args.skip_lottery:
      masks["magnitude"] = optax_gsm.magnitude_mask(dense_params, ratio)
      record["lottery_tickets"] = {
          name: run_ticket(trainer, init_params, mask, steps_per_epoch,
                           epoch_scale, f"ticket {name} {ratio:g}x")
          for name, mask in masks.items()}
      print("lottery tickets: " + ", ".join(
          f"{n} {t['accuracy']:.2%}"
          for n, t in record["lottery_tickets"].items()), flush=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"mnist_{args.model}_{ratio:g}x" + ("_quick" if args.quick else "")
    (args.output_dir / f"{stem}.json").write_text(json.dumps(record, indent=2))
    (args.output_dir / f"{stem}.md").write_text(markdown(record))
    plot_densities(record, args.output_dir / f"{stem}_density.png")
    print(markdown(record), flush=True)
    records.append(record)
  return records


if __name__ == "__main__":
  main()
