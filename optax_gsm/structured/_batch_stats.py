"""Recomputing batch-norm statistics after a prune.

Pruning changes every activation downstream, but the running means and
variances of batch norm still describe the dense model: on MNIST a pruned
CNN with batch norm lost 5 points (linen) to 29 points (NNX) until its
statistics were recomputed, after which it matched the dense model. This
recomputes them from forward passes over training batches, as
``torch.optim.swa_utils.update_bn`` does: the plain mean over batches of each
batch's statistics, no parameter touched.

Running statistics of Flax's ``BatchNorm`` (linen and NNX) are updated as
``new = m * old + (1 - m) * batch``. From one batch applied to two chosen
``old`` values (zeros and ones) this reads off ``m`` for every entry, then
``batch = new(old=0) / (1 - m)`` for every batch: one forward pass a batch,
and no knowledge of the layers' momenta.
"""

from collections.abc import Callable, Iterable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

ApplyFn = Callable[[chex.ArrayTree, Any], tuple[Any, chex.ArrayTree]]


def recalibrate_batch_stats(
    apply_fn: ApplyFn,
    variables: chex.ArrayTree,
    batches: Iterable[Any],
    *,
    collection: str = "batch_stats",
) -> chex.ArrayTree:
  """``variables`` with ``variables[collection]`` recomputed from ``batches``.

  Each entry becomes the mean over the batches of that batch's statistic
  (mean or variance of the batch, as the layer computes it in training).

  Linen::

    recalibrated = optax_gsm.structured.recalibrate_batch_stats(
        functools.partial(model.apply, train=True, mutable=["batch_stats"]),
        {"params": pruned, "batch_stats": variables["batch_stats"]},
        (x for x, _ in train_batches))

  NNX (``nnx.split`` into params and batch statistics, ``nnx.merge`` in
  ``apply_fn``)::

    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    def apply_fn(variables, x):
      model = nnx.merge(graphdef, variables["params"], variables["batch_stats"])
      model.train()
      model(x)
      return None, {"batch_stats": nnx.state(model, nnx.BatchStat)}

    new = optax_gsm.structured.recalibrate_batch_stats(
        apply_fn, {"params": params, "batch_stats": stats}, batches)
    nnx.update(model, new["batch_stats"])

  Args:
    apply_fn: ``(variables, batch) -> (outputs, mutated)`` running the model
      in training mode, ``mutated[collection]`` the updated statistics
      (exactly what linen's ``apply(..., mutable=[collection])`` returns).
      It is jitted here.
    variables: the model's variables, a dict holding ``collection``.
    batches: an iterable of at least one batch (a few hundred examples or
      more: the statistics are averaged over them).
    collection: the key of the running statistics in ``variables``.

  Returns:
    A copy of ``variables`` with new statistics; nothing else changes.

  Raises:
    ValueError: no ``collection`` in ``variables``, no batch, or a
      statistic that ``apply_fn`` does not update.
  """
  if not isinstance(variables, dict) or collection not in variables:
    keys = list(variables) if isinstance(variables, dict) else type(variables)
    raise ValueError(f"`variables` has no {collection!r} collection to "
                     f"recalibrate; it has {keys}.")
  stats = variables[collection]

  @jax.jit
  def updated_stats(old_stats, batch):
    _, mutated = apply_fn({**variables, collection: old_stats}, batch)
    if collection not in mutated:
      raise ValueError(f"`apply_fn` must return (outputs, mutated) with "
                       f"mutated[{collection!r}]; got keys {list(mutated)}.")
    return mutated[collection]

  zeros = jax.tree.map(jnp.zeros_like, stats)
  total, count, keep_fraction = None, 0, None
  for batch in batches:
    from_zero = updated_stats(zeros, batch)
    if keep_fraction is None:
      # new(1) - new(0) = m, the fraction of the old statistic kept.
      from_one = updated_stats(jax.tree.map(jnp.ones_like, stats), batch)
      keep_fraction = jax.tree.map(lambda a, b: np.asarray(a - b, np.float64),
                                   from_one, from_zero)
      if any(np.any(np.abs(1.0 - m) < 1e-6)
             for m in jax.tree.leaves(keep_fraction)):
        raise ValueError(
            f"`apply_fn` leaves some {collection!r} entries unchanged (or "
            "keeps them with momentum 1): run it in training mode.")
    batch_stats = jax.tree.map(
        lambda new, m: np.asarray(new, np.float64) / (1.0 - m),
        from_zero, keep_fraction)
    total = batch_stats if total is None else jax.tree.map(
        np.add, total, batch_stats)
    count += 1
  if not count:
    raise ValueError("`batches` is empty: give at least one batch.")
  new_stats = jax.tree.map(
      lambda t, old: jnp.asarray(t / count, jnp.result_type(old)), total,
      stats)
  return {**variables, collection: new_stats}
