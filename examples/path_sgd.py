"""Path-SGD on MNIST: does the curve stay the same from an unbalanced start?

A 2-hidden-layer ReLU MLP (784-1000-1000-10) trained with Path-SGD
(``optax_gsm.path_norm.path_sgd``, kappa derived from the model), momentum SGD and
Adam, each from the default initialisation ("balanced") and from the same
function with its first layer scaled by c = 10 and the second by 1/c
("unbalanced"). Neyshabur et al. (NIPS 2015) claim Path-SGD's curve is the
same from both starts and SGD's is not; the table gives each optimizer's
test error at the end and the largest gap between its two curves.

    python -m examples.path_sgd
    python -m examples.path_sgd --quick       # as the tests run it

Writes (to ``--out``) ``results/path_sgd/mnist_mlp.{json,md,png}``.
"""

import pathlib

import jax
import jax.numpy as jnp
import optax

import optax_gsm
from examples import experiment
from examples.measure import RESULTS
from examples.models import Mlp

OUT = RESULTS / "path_sgd"
SCALE = 10.0
# Constant step sizes: Path-SGD as in the paper (no momentum), SGD with
# momentum 0.9, Adam's default.
LEARNING_RATES = {"path-sgd": 0.01, "sgd": 0.01, "adam": 1e-3}


def unbalanced(params, scale):
  """The same function: first layer (kernel and bias) x c, second / c."""
  params = jax.tree.map(lambda w: w, params)
  params["Dense_0"] = {k: v * scale for k, v in params["Dense_0"].items()}
  params["Dense_1"] = dict(params["Dense_1"],
                           kernel=params["Dense_1"]["kernel"] / scale)
  return params


def optimizers(model, example):
  apply = lambda p, x: model.apply({"params": p}, x)
  return {
      "path-sgd": optax_gsm.path_norm.path_sgd(LEARNING_RATES["path-sgd"],
                                     apply_fn=apply, example_input=example),
      "sgd": optax.sgd(LEARNING_RATES["sgd"], momentum=0.9),
      "adam": optax.adam(LEARNING_RATES["adam"]),
  }


def markdown(record) -> str:
  lines = ["# Path-SGD on MNIST: balanced vs unbalanced initialisation", "",
           f"MLP {record['hidden']}, {record['steps']} steps of "
           f"{record['batch']}, c = {record['scale']}; machine: "
           f"{record['machine']['cpu']}, {record['machine']['cpu_count']} "
           "cores.", "",
           "| optimizer | lr | test error, balanced | test error, unbalanced "
           "| largest gap between the curves |", "|---|---|---|---|---|"]
  for name, run in record["runs"].items():
    balanced, skewed = run["balanced"], run["unbalanced"]
    gap = max(abs(a - b) for a, b in zip(balanced, skewed))
    lines.append(f"| {name} | {run['lr']} | {balanced[-1]:.4f} | "
                 f"{skewed[-1]:.4f} | {gap:.4f} |")
  return "\n".join(lines) + "\n"


def plot(record, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  figure, axis = plt.subplots(figsize=(7, 4.5))
  for (name, run), color in zip(record["runs"].items(),
                                ("tab:red", "tab:blue", "tab:green")):
    axis.plot(record["eval_steps"], run["balanced"], color=color,
              label=f"{name}, balanced")
    axis.plot(record["eval_steps"], run["unbalanced"], color=color,
              linestyle="--", label=f"{name}, unbalanced (c={record['scale']})")
  axis.set_xlabel("step")
  axis.set_ylabel("test error")
  axis.set_yscale("log")
  axis.legend(fontsize=8)
  axis.set_title("Path-SGD is invariant to the rescaling; SGD and Adam are not")
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def main(argv=None):
  parser = experiment.parser(__doc__, model="mlp", epochs=20,
                           steps_per_epoch=100)
  parser.add_argument("--hidden", type=int, nargs="+", default=[1000, 1000])
  parser.add_argument("--scale", type=float, default=SCALE)
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  args = parser.parse_args(argv)
  experiment.apply_quick(args)
  if args.quick:
    args.hidden = [64, 64]
  args.model = "mlp"
  setup = experiment.Setup(args)
  model = Mlp(tuple(args.hidden))
  trainer = setup.trainer(model)
  params = model.init(jax.random.key(args.seed),
                      jnp.asarray(setup.train[0][:1]))["params"]
  starts = {"balanced": params, "unbalanced": unbalanced(params, args.scale)}
  example = jnp.asarray(setup.train[0][:1])
  record = {**setup.record(None), "hidden": args.hidden, "scale": args.scale,
            "eval_steps": [], "runs": {}}
  evaluations = min(args.epochs, 20)
  for name, tx in optimizers(model, example).items():
    run = {"lr": LEARNING_RATES[name]}
    for start, initial in starts.items():
      errors, steps = [], []

      def on_evaluate(p, _, errors=errors):
        errors.append(1.0 - trainer.accuracy(p))

      # One batch order for every run: the curves differ by the optimizer
      # and the start only.
      trainer.train(initial, tx, args.epochs, desc="mlp",
                    on_evaluate=on_evaluate, evaluations=evaluations)
      run[start] = errors
      steps = [args.steps_per_epoch * max(args.epochs // evaluations, 1)
               * (i + 1) for i in range(len(errors))]
      record["eval_steps"] = steps
      print(f"{name} {start}: final test error {errors[-1]:.4f}", flush=True)
    record["runs"][name] = run
    experiment.save(record, markdown(record), args.out,
                    f"mnist_mlp{'_quick' if args.quick else ''}")
  stem = f"mnist_mlp{'_quick' if args.quick else ''}"
  plot(record, args.out / f"{stem}.png")
  print(markdown(record))
  return record


if __name__ == "__main__":
  main()
