"""Fine-tuning a pruned model without letting its zeros grow back.

GSM's final prune needs no fine-tuning, but users fine-tune anyway (another
task, another dataset, a few more epochs). Any optimizer then moves the
pruned zeros: plain gradients are non-zero there, and a resumed GSM state
ranks them again. `freeze_pruned`, chained last, zeroes the updates of pruned
entries, so they stay exactly zero whatever the optimizer before it does.
"""

import chex
import jax
import jax.numpy as jnp
import optax


def freeze_pruned(mask: chex.ArrayTree) -> optax.GradientTransformation:
  """Zeroes the updates wherever ``mask`` is False; chain it last.

  .. math::
    u \\leftarrow m \\odot u

  With ``params`` pruned by `prune` (zeros where ``mask`` is False), the
  pruned entries stay exactly 0 under ``optax.apply_updates``, for any
  optimizer before it (``adamw``'s decay included, since it is part of the
  update it zeroes).

  Example::

    pruned, mask = optax_gsm.prune(params, opt_state=opt_state)
    tx = optax.chain(optax.adamw(1e-4), optax_gsm.freeze_pruned(mask))

  Args:
    mask: pytree of bool arrays with the structure and shapes of the params
      (the ``mask`` that `prune` returns).

  Returns:
    A stateless ``optax.GradientTransformation``.
  """
  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    if jax.tree.structure(updates) != jax.tree.structure(mask):
      raise ValueError(
          "`mask` must have the structure of the params; got "
          f"{jax.tree.structure(mask)}, updates are "
          f"{jax.tree.structure(updates)}.")

    def keep(u, m):
      if jnp.shape(m) != jnp.shape(u):
        raise ValueError(f"`mask` leaf of shape {jnp.shape(m)} for an update "
                         f"of shape {jnp.shape(u)}.")
      return jnp.where(m, u, jnp.zeros_like(u))

    return jax.tree.map(keep, updates, mask), state

  return optax.GradientTransformation(init_fn, update_fn)
