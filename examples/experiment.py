"""What the MNIST method comparisons share: arguments, data, the model
factory, the schedule, the dense stage and the records.

Every comparison trains a dense model for ``epochs * steps_per_epoch``
steps (momentum SGD, warm-up then cosine decay), then gives each method and
its baseline the same number of steps again, on the same data.
"""

import argparse
import json
import pathlib
import shlex
import sys

import jax
import jax.numpy as jnp
import optax

import optax_gsm
from examples.measure import HelpFormatter, machine_info
from examples.mnist_data import load_mnist, normalise
from examples.models import (
  CifarResNet,
  LeNet5,
  LeNet300100,
  Mlp,
  VisionTransformer,
)
from examples.training import Trainer, predict

# Peak learning rates (warm-up, cosine decay); LeNet-5 without batch norm
# diverges at 0.05.
LEARNING_RATES = {"lenet5": 0.02, "lenet300": 0.02, "resnet20": 0.05,
                  "mlp": 0.02, "vit": 0.05}
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
MODELS = {
    "lenet5": lambda args, widths: LeNet5(widths=widths),
    "resnet20": lambda args, widths: CifarResNet(args.depth, widths=widths),
    "lenet300": lambda args, widths: LeNet300100(widths=widths),
    "mlp": lambda args, widths: Mlp(),
    "vit": lambda args, widths: VisionTransformer(norm=args.norm,
                                                  widths=widths),
}


def parser(doc: str, **defaults) -> argparse.ArgumentParser:
  """A script's parser: its docstring's first paragraph as the description,
  the rest as the epilog, and `add_arguments` with ``defaults``."""
  result = argparse.ArgumentParser(
      description=doc.split("\n\n")[0], formatter_class=HelpFormatter,
      epilog="\n\n".join(doc.split("\n\n")[1:]))
  add_arguments(result, **defaults)
  return result


def add_arguments(parser: argparse.ArgumentParser, *, model: str,
                  epochs: int = 10, steps_per_epoch: int = 100,
                  batch: int = 128) -> None:
  """The budget and data arguments every comparison takes."""
  parser.add_argument("--model", choices=list(MODELS), default=model)
  parser.add_argument("--depth", type=int, default=20,
                      help="ResNet depth, 6n + 2")
  parser.add_argument("--norm", choices=("layer", "rms"), default="layer",
                      help="the ViT's norms: LayerNorm or RMSNorm")
  parser.add_argument("--epochs", type=int, default=epochs)
  parser.add_argument("--steps-per-epoch", type=int, default=steps_per_epoch)
  parser.add_argument("--batch", type=int, default=batch)
  parser.add_argument("--lr", type=float, default=None,
                      help="peak learning rate; None: each model's own")
  parser.add_argument("--max-train", type=int, default=None)
  parser.add_argument("--max-test", type=int, default=None,
                      help="evaluate on the first this many test images")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true",
                      help="a few steps on a little data, as the tests run it")


def apply_quick(args) -> None:
  """``--quick``: 2 epochs of 5 steps of 32 on 1,024 images, evaluated on
  2,000; ResNet-8."""
  if args.quick:
    args.epochs, args.steps_per_epoch, args.batch = 2, 5, 32
    args.max_train = args.max_train or 1024
    args.max_test = args.max_test or 2000
    args.depth = 8


def command(module: str, argv: list[str] | None) -> str:
  """The command line that ran ``module`` with ``argv`` (None: this
  process's own arguments), for a record."""
  return shlex.join(["python", "-m", module,
                     *(sys.argv[1:] if argv is None else argv)])


def model_name(args) -> str:
  """``resnet<depth>``, or the ``--model`` name (``vit_rms`` with
  RMSNorms)."""
  if args.model == "resnet20":
    return f"resnet{args.depth}"
  return args.model + ("_rms" if args.norm == "rms" else "")


def schedule(peak: float, steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(0.0, peak, max(1, steps // 20),
                                            steps)


class Setup:
  """Data, model factory and budget of one run."""

  def __init__(self, args):
    data = load_mnist()
    limit = args.max_train
    shape = (-1, 28, 28, 1) if args.model == "resnet20" else (-1, 784)
    self.train = (normalise(data.train_images[:limit]).reshape(shape),
                  data.train_labels[:limit])
    self.test = (normalise(data.test_images[:args.max_test]).reshape(shape),
                 data.test_labels[:args.max_test])
    self.args = args
    self.steps = args.epochs * args.steps_per_epoch
    self.inference_kwargs = ({"train": False} if args.model == "resnet20"
                             else {})
    self.peak_lr = args.lr or LEARNING_RATES[args.model]
    self.schedule = schedule(self.peak_lr, self.steps)

  @property
  def model_name(self) -> str:
    return model_name(self.args)

  @property
  def stem(self) -> str:
    return self.stem_for()

  def stem_for(self, variant: str = "") -> str:
    """The records' file stem: ``mnist_<model><variant>`` (``_seed<n>`` for
    a seed other than 0, ``_quick`` in quick mode)."""
    seed = f"_seed{self.args.seed}" if self.args.seed else ""
    return (f"mnist_{self.model_name}{variant}{seed}"
            f"{'_quick' if self.args.quick else ''}")

  def sgd(self) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(WEIGHT_DECAY),
                       optax.sgd(self.schedule, momentum=MOMENTUM))

  def model(self, widths=None):
    return MODELS[self.args.model](self.args, widths or {})

  def trainer(self, model):
    return Trainer(model, self.train, self.test,
                   steps_per_epoch=self.args.steps_per_epoch,
                   batch_size=self.args.batch, seed=self.args.seed)

  def variables(self, params, batch_stats):
    out = {"params": params}
    if batch_stats is not None:
      out["batch_stats"] = batch_stats
    return out

  @staticmethod
  def inference_apply(model):
    """``(variables, x) -> logits`` in inference mode (batch norm on running
    averages), as `channel_groups` and the post-training methods take."""
    return lambda v, x: predict(model.apply, v["params"], v.get("batch_stats"),
                                x)

  def groups(self, model, variables, through_norms: bool = False):
    """The model's structures, traced on one training image
    (``through_norms``: the residual stream too)."""
    return optax_gsm.structured.channel_groups(
        self.inference_apply(model), variables, jnp.asarray(self.train[0][:1]),
        through_norms=through_norms)

  def init(self, model, seed=None):
    return model.init(jax.random.key(self.args.seed if seed is None else seed),
                      jnp.asarray(self.train[0][:1]), **self.inference_kwargs)

  def record(self, dense) -> dict:
    return {"model": self.model_name, "dense": dense, "steps": self.steps,
            "batch": self.args.batch, "machine": machine_info()}


def dense_stage(setup: Setup):
  """Trains the dense model: (model, trainer, params, batch_stats, record)."""
  model = setup.model()
  trainer = setup.trainer(model)
  variables = setup.init(model)
  params, _, timing = trainer.train(
      variables["params"], setup.sgd(), setup.args.epochs,
      batch_stats=variables.get("batch_stats"), desc="dense")
  batch_stats = trainer.batch_stats
  accuracy = trainer.accuracy(params, batch_stats)
  print(f"dense: {accuracy:.4f}", flush=True)
  return model, trainer, params, batch_stats, {
      "accuracy": accuracy, "steps": setup.steps, **timing}


def save(record: dict, markdown: str, directory: pathlib.Path,
         stem: str) -> None:
  """JSON and Markdown, rewritten after every stage."""
  directory.mkdir(parents=True, exist_ok=True)
  (directory / f"{stem}.json").write_text(json.dumps(record, indent=2))
  (directory / f"{stem}.md").write_text(markdown)
