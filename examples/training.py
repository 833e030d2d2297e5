"""The training loop every example shares: Flax ``TrainState``, a plain jitted
step with the data passed as arguments, epochs of shuffled batches, timing.
Models with batch norm (``batch_stats``, a ``train`` argument) train on
batch statistics and are evaluated on the running averages.

The training set is an argument of the jitted step, not a constant it closes
over: closed over, the whole of MNIST (~188 MB) was embedded in every
compiled program and compiling a GSM step took 15.6 s instead of 9.7 s.
"""

import functools
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

import optax_gsm

_EVAL_CHUNK = 2000


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the batch statistics (None without batch norm)."""
  batch_stats: Any = None


def variables_of(params, batch_stats):
  if batch_stats is None:
    return {"params": params}
  return {"params": params, "batch_stats": batch_stats}


def cross_entropy(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def predict(apply_fn, params, batch_stats, x):
  """Logits in inference mode (running batch statistics)."""
  if batch_stats is None:
    return apply_fn({"params": params}, x)
  return apply_fn(variables_of(params, batch_stats), x, train=False)


@jax.jit
def train_step(state: TrainState, train_x, train_y, indices, mask=None):
  """One optimizer step on ``train_x[indices]``; ``mask`` keeps zeros zero."""
  x, y = train_x[indices], train_y[indices]

  def loss(params):
    if state.batch_stats is None:
      return cross_entropy(state.apply_fn({"params": params}, x), y), None
    logits, updated = state.apply_fn(
        variables_of(params, state.batch_stats), x, train=True,
        mutable=["batch_stats"])
    return cross_entropy(logits, y), updated["batch_stats"]

  grads, batch_stats = jax.grad(loss, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
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
    self._correct = jax.jit(lambda params, batch_stats, x, y: jnp.sum(
        jnp.argmax(predict(model.apply, params, batch_stats, x), -1) == y))
    self._loss_sum = jax.jit(lambda params, batch_stats, x, y: jnp.sum(
        optax.softmax_cross_entropy_with_integer_labels(
            predict(model.apply, params, batch_stats, x), y)))
    self.batch_stats = None  # of the model last trained, if it has BN

    def batch_loss(params, batch_stats, x, y):
      if batch_stats is None:
        return cross_entropy(model.apply({"params": params}, x), y)
      logits, _ = model.apply(variables_of(params, batch_stats), x,
                              train=True, mutable=["batch_stats"])
      return cross_entropy(logits, y)
    self._gradient = jax.jit(jax.grad(batch_loss))

  def _test_sum(self, per_chunk, params, batch_stats) -> float:
    # In chunks: a transformer's attention over the whole test set at once
    # takes gigabytes.
    n = self.test_y.shape[0]
    return sum(float(per_chunk(params, batch_stats,
                               self.test_x[i:i + _EVAL_CHUNK],
                               self.test_y[i:i + _EVAL_CHUNK]))
               for i in range(0, n, _EVAL_CHUNK))

  def accuracy(self, params, batch_stats=None) -> float:
    """The share of test labels predicted (every position of a sequence)."""
    return self._test_sum(self._correct, params,
                          batch_stats) / self.test_y.size

  def test_loss(self, params, batch_stats=None) -> float:
    """The mean cross-entropy (nats) per test label."""
    return self._test_sum(self._loss_sum, params,
                          batch_stats) / self.test_y.size

  def recalibrated_batch_stats(self, params, batch_stats, *,
                               num_batches: int = 20):
    """Batch statistics recomputed for ``params`` on training batches
    (`optax_gsm.structured.recalibrate_batch_stats`): running averages lag
    behind weights that moved, and a merge or a prune assumes them fresh."""
    size = min(self.batch_size, self.train_y.shape[0])
    batches = [self.train_x[i * size:(i + 1) * size]
               for i in range(min(num_batches,
                                  self.train_y.shape[0] // size))]
    variables = optax_gsm.structured.recalibrate_batch_stats(
        functools.partial(self.model.apply, train=True,
                          mutable=["batch_stats"]),
        variables_of(params, batch_stats), batches)
    return variables["batch_stats"]

  def gradient(self, params, batch_stats=None, *, num_batches: int = 10):
    """The mean loss gradient over the first ``num_batches`` training
    batches, batch norm on batch statistics as in training: what one-shot
    Taylor saliency ranks by."""
    size = min(self.batch_size, self.train_y.shape[0])
    count = max(1, min(num_batches, self.train_y.shape[0] // size))
    total = None
    for i in range(count):
      rows = slice(i * size, (i + 1) * size)
      grads = self._gradient(params, batch_stats, self.train_x[rows],
                             self.train_y[rows])
      total = grads if total is None else jax.tree.map(jnp.add, total, grads)
    return jax.tree.map(lambda g: g / count, total)

  def _epoch_batches(self, rng):
    n = self.train_y.shape[0]
    per_epoch = self.steps_per_epoch * self.batch_size
    order = np.concatenate([rng.permutation(n)
                            for _ in range(math.ceil(per_epoch / n))])
    return jnp.asarray(order[:per_epoch].reshape(self.steps_per_epoch,
                                                 self.batch_size))

  def train(self, params, tx, epochs, *, mask=None, desc="train",
            on_evaluate: Callable[[Any, Any], None] | None = None,
            batch_stats=None, evaluations: int = 5):
    """Trains ``epochs`` epochs from ``params`` (and ``batch_stats``).

    Returns (params, opt_state, timing): ``timing`` has the wall time of the
    stage and the seconds per step after the first (compiling) epoch.
    ``on_evaluate(params, opt_state)`` runs at the ``evaluations`` evenly
    spaced evaluation points. The trained batch statistics are left in
    ``self.batch_stats``.
    """
    state = TrainState.create(apply_fn=self.model.apply, params=params,
                              tx=tx, batch_stats=batch_stats)
    # Each stage shuffles from its own stream: its batches do not depend on
    # which stages ran before it (say, a dense model loaded from a file).
    rng = np.random.default_rng([self.seed, zlib.crc32(desc.encode())])
    start = first = time.perf_counter()
    # A line a stage, as well as the bar: the bar is off when the output is
    # not a terminal, and the first epoch's compilation can take minutes.
    print(f"{desc}: {epochs} epochs of {self.steps_per_epoch} steps "
          "(the first compiles the step)", flush=True)
    bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False,
               disable=None)
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
        print(f"{desc}: first epoch done in {start - first:.1f} s",
              flush=True)
      if (i + 1) % max(epochs // evaluations, 1) == 0 or i + 1 == epochs:
        accuracy = self.accuracy(state.params, state.batch_stats)
        bar.set_postfix(test_acc=f"{accuracy:.4f}")
        if on_evaluate is not None:
          on_evaluate(state.params, state.opt_state)
    end = time.perf_counter()
    print(f"{desc}: {epochs} epochs in {end - first:.1f} s", flush=True)
    self.batch_stats = state.batch_stats
    steps = max(epochs - 1, 1) * self.steps_per_epoch
    return state.params, state.opt_state, {
        "seconds_per_step": (end - start) / steps,
        "wall_seconds": end - first}
