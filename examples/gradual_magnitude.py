"""Gradual magnitude pruning (Zhu & Gupta, *To prune, or not to prune*,
2017): the baseline users pick today (jaxpruner's and TF-MOT's
``PolynomialDecay``), as an Optax transformation for the examples.

The sparsity ramps cubically from ``s_i`` to ``s_f`` over ``ramp_steps``
starting at ``begin_step``::

  s_t = s_f + (s_i - s_f) (1 - (t - t_0) / ramp_steps) ** power

and every ``update_every`` steps of the ramp (and at its end) the mask is
recomputed: the ``(1 - s_t) N`` weights of largest ``|w|`` (globally over the
prunable leaves, or per leaf with ``scope="layer"``) stay, the rest are set
to zero and kept there. Put it last in the chain: it turns the update into
``w_new * mask - w``, so that ``optax.apply_updates`` lands on the masked
weights.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_gsm


class GradualMagnitudeState(NamedTuple):
  count: jax.Array
  mask: Any


def polynomial_sparsity(final_sparsity: float, begin_step: int,
                        ramp_steps: int, initial_sparsity: float = 0.0,
                        power: float = 3.0):
  """Zhu & Gupta's schedule: sparsity at step t (before, during, after)."""
  def sparsity(step):
    progress = jnp.clip((step - begin_step) / max(1, ramp_steps), 0.0, 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (
        1.0 - progress) ** power
  return sparsity


def gradual_magnitude_pruning(
    compression_ratio: float, *, ramp_steps: int, begin_step: int = 0,
    update_every: int = 1, power: float = 3.0, scope: str = "global",
) -> optax.GradientTransformation:
  """Prunes to ``1 / compression_ratio`` of the prunable weights gradually.

  Args:
    compression_ratio: C >= 1 at the end of the ramp.
    ramp_steps: length of the cubic ramp, in steps.
    begin_step: first step of the ramp.
    update_every: steps between mask updates during the ramp.
    power: the schedule's exponent (3: Zhu & Gupta).
    scope: ``"global"`` (one ranking over all prunable leaves) or
      ``"layer"`` (each leaf to the same sparsity, as Zhu & Gupta).
  """
  if compression_ratio < 1:
    raise ValueError(f"`compression_ratio` must be >= 1; got "
                     f"{compression_ratio}.")
  if scope not in ("global", "layer"):
    raise ValueError(f"`scope` must be 'global' or 'layer'; got {scope!r}.")
  sparsity = polynomial_sparsity(1.0 - 1.0 / compression_ratio, begin_step,
                                 ramp_steps, power=power)

  def init_fn(params):
    return GradualMagnitudeState(
        jnp.zeros([], jnp.int32),
        jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params))

  def new_mask(weights, step):
    flags = jax.tree.leaves(optax_gsm.default_prunable(weights))
    leaves, treedef = jax.tree.flatten(weights)
    ranked = [jnp.abs(w) for w, f in zip(leaves, flags) if f]
    keep = 1.0 - sparsity(step)
    if scope == "global":
      q = jnp.round(keep * sum(np.size(w) for w in ranked)).astype(jnp.int32)
      chosen = iter(optax_gsm.top_q_mask(ranked, q))
    else:
      chosen = iter([optax_gsm.top_q_mask(
          w, jnp.round(keep * np.size(w)).astype(jnp.int32)) for w in ranked])
    return treedef.unflatten([next(chosen) if f else jnp.ones(w.shape, bool)
                              for w, f in zip(leaves, flags)])

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("gradual_magnitude_pruning needs the params.")
    step = state.count
    weights = optax.apply_updates(params, updates)
    in_ramp = (step >= begin_step) & (step <= begin_step + ramp_steps)
    refresh = in_ramp & (((step - begin_step) % update_every == 0)
                         | (step == begin_step + ramp_steps))
    mask = jax.lax.cond(refresh, lambda: new_mask(weights, step),
                        lambda: state.mask)
    masked = jax.tree.map(lambda w, m, p: jnp.where(m, w, 0.0) - p,
                          weights, mask, params)
    return masked, GradualMagnitudeState(optax.safe_increment(step), mask)

  return optax.GradientTransformation(init_fn, update_fn)


if __name__ == "__main__":
  raise SystemExit("examples.gradual_magnitude is a module, not a script: "
                   "the gradual magnitude pruning baseline, which "
                   "`examples.mnist_gsm` and `examples.resnet_unstructured` "
                   "run.")
