"""Prune a Flax MLP to 1/10 of its weights while it trains, with no fine-tuning.

Real data: scikit-learn's 8x8 handwritten digits (1,797 images). The flow is
the library's whole story: train with `optax_gsm.gsm_sgd` given the step
budget (its lossless default), check `optax_gsm.prune_readiness`, then
`optax_gsm.prune` and `optax_gsm.sparsity_report`.

    python -m examples.quickstart            # about a minute on a laptop CPU
    python -m examples.quickstart --quick    # a few seconds, as the tests run it
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import optax_gsm


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(300)(x))
    x = nn.relu(nn.Dense(100)(x))
    return nn.Dense(10)(x)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--compression-ratio", type=float, default=10.0)
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--quick", action="store_true", help="300 steps")
  args = parser.parse_args(argv)
  steps = 300 if args.quick else args.steps

  digits = load_digits()
  images = (digits.data / 16.0).astype(np.float32)
  labels = digits.target
  order = np.random.default_rng(0).permutation(len(labels))
  train, test = order[:1500], order[1500:]

  model = MLP()
  params = model.init(jax.random.PRNGKey(0), images[:1])["params"]
  # total_steps: freeze the active set at 20% of the steps and decay the
  # rest at critical damping, so the final prune removes only ~zeros.
  tx = optax_gsm.gsm_sgd(
      optax.cosine_decay_schedule(0.05, steps), args.compression_ratio,
      total_steps=steps, momentum=0.99, nesterov=True, weight_decay=5e-4)
  opt_state = tx.init(params)

  def loss_fn(params, x, y):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def accuracy(params):
    logits = model.apply({"params": params}, images[test])
    return float(jnp.mean(jnp.argmax(logits, -1) == labels[test]))

  rng = np.random.default_rng(1)
  start = time.perf_counter()
  for i in range(steps):
    batch = rng.choice(train, 64)
    params, opt_state, loss = step(params, opt_state, images[batch],
                                   labels[batch])
    if (i + 1) % max(steps // 10, 1) == 0:
      print(f"step {i + 1:5d}/{steps}  loss {float(loss):.4f}  "
            f"test accuracy {accuracy(params):.2%}", flush=True)
  print(f"trained in {time.perf_counter() - start:.1f} s")

  print(optax_gsm.prune_readiness(params, opt_state=opt_state))
  pruned, _ = optax_gsm.prune(params, opt_state=opt_state)
  print(optax_gsm.sparsity_report(pruned))
  print(f"test accuracy: before the final prune {accuracy(params):.2%}, "
        f"after it {accuracy(pruned):.2%} (no fine-tuning)")
  return accuracy(params), accuracy(pruned)


if __name__ == "__main__":
  main()
