"""The training loop every example shares: Flax ``TrainState``, a plain jitted
step with the data passed as arguments, epochs of shuffled batches, timing.

The training set is an argument of the jitted step, not a constant it closes
over: closed over, the whole of MNIST (~188 MB) was embedded in every
compiled program and compiling a GSM step took 15.6 s instead of 9.7 s.
"""

import math
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm import tqdm


def cross_entropy(apply_fn, params, x, y):
  logits = apply_fn({"params": params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@jax.jit
def train_step(state: train_state.TrainState, train_x, train_y, indices,
               mask=None):
  """One optimizer step on ``train_x[indices]``; ``mask`` keeps zeros zero."""
  x, y = train_x[indices], train_y[indices]
  grads = jax.grad(lambda p: cross_entropy(state.apply_fn, p, x, y))(
      state.params)
  state = state.apply_gradients(grads=grads)
  if mask is not None:  # fixed-mask training: pruned weights stay exactly 0
    state = state.replace(params=jax.tree.map(
        lambda w, m: jnp.where(m, w, jnp.zeros_like(w)), state.params, mask))
  return state


class Trainer:
  """Epochs of ``steps_per_epoch`` jitted steps of ``batch_size``, any model
  and optimizer; accuracy on the test set."""

  def __init__(self, model, train, test, *, steps_per_epoch, batch_size,
               seed):
    self.model = model
    self.train_x, self.train_y = map(jnp.asarray, train)
    self.test_x, self.test_y = map(jnp.asarray, test)
    self.steps_per_epoch = steps_per_epoch
    self.batch_size = batch_size
    self.seed = seed
    self._accuracy = jax.jit(lambda params, x, y: jnp.mean(
        jnp.argmax(model.apply({"params": params}, x), -1) == y))

  def accuracy(self, params) -> float:
    return float(self._accuracy(params, self.test_x, self.test_y))

  def _epoch_batches(self, rng):
    n = self.train_y.shape[0]
    per_epoch = self.steps_per_epoch * self.batch_size
    order = np.concatenate([rng.permutation(n)
                            for _ in range(math.ceil(per_epoch / n))])
    return jnp.asarray(order[:per_epoch].reshape(self.steps_per_epoch,
                                                 self.batch_size))

  def train(self, params, tx, epochs, *, mask=None, desc="train",
            on_evaluate: Callable[[Any, Any], None] | None = None):
    """Trains ``epochs`` epochs from ``params``.

    Returns (params, opt_state, timing): ``timing`` has the wall time of the
    stage and the seconds per step after the first (compiling) epoch.
    ``on_evaluate(params, opt_state)`` runs at the five evaluation points.
    """
    state = train_state.TrainState.create(apply_fn=self.model.apply,
                                          params=params, tx=tx)
    # Each stage shuffles from its own stream: its batches do not depend on
    # which stages ran before it (say, a dense model loaded from a file).
    rng = np.random.default_rng([self.seed, zlib.crc32(desc.encode())])
    start = first = time.perf_counter()
    bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False,
               disable=None)  # no bar when output is not a terminal
    for i in bar:
      batches = self._epoch_batches(rng)
      # Steps driven from Python rather than a lax.scan over the epoch:
      # XLA's CPU backend ran LeNet-5's convolutions ~9x slower inside the
      # scan's while loop (0.6 s vs 0.065 s a step); dispatch is async.
      for index in range(self.steps_per_epoch):
        state = train_step(state, self.train_x, self.train_y, batches[index],
                           mask)
      jax.block_until_ready(state.params)
      if i == 0:
        start = time.perf_counter()  # excludes compilation
      if (i + 1) % max(epochs // 5, 1) == 0 or i + 1 == epochs:
        bar.set_postfix(test_acc=f"{self.accuracy(state.params):.4f}")
        if on_evaluate is not None:
          on_evaluate(state.params, state.opt_state)
    end = time.perf_counter()
    steps = max(epochs - 1, 1) * self.steps_per_epoch
    return state.params, state.opt_state, {
        "seconds_per_step": (end - start) / steps,
        "wall_seconds": end - first}
