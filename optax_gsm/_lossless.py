"""Hyper-parameters that make GSM's final prune lossless on a given budget.

The paper's recipe keeps re-selecting the active set until the last step and
decays passive weights at the ordinary rate; on MNIST the final magnitude
prune then costs 2.4 points (LeNet-300-100, 60x, the official schedule) to
40 points (LeNet-5, 300x, a tenth of it). Two changes make it lossless:

1. Freeze the active set early (``freeze_mask_at``) to the magnitude top-Q,
   which is exactly what the final prune keeps, so every weight the prune
   removes decays for all the remaining steps. Early enough that most of the
   steps at a high learning rate remain: 20% of the GSM steps.
2. Decay the passive weights as fast as they can go without oscillating
   (``passive_weight_decay``). With learning rate ``alpha``, momentum
   ``beta`` and no gradient, ``w <- w - alpha z, z <- beta z + eta w`` is
   critically damped at ``alpha eta = (1 - sqrt(beta))**2``, where the weight
   shrinks by ``sqrt(beta)`` a step: at ``beta = 0.99`` an e-fold every 200
   steps instead of the paper's 2,000 (``alpha = 1e-2, eta = 5e-4``). Taken
   at the largest learning rate after the freeze, every later step is at or
   below critical damping, so passive weights never overshoot.

Decay through the momentum cannot go faster than ``sqrt(beta)`` a step and
slows as the learning rate falls, so on short budgets (a few hundred to a few
thousand steps at ``beta = 0.99``) the passive weights are still large at the
prune: LeNet-300-100 at 60x, 1,200 steps of a cosine schedule, lost 4 points
at the prune with 66% of ``sum |w|`` removed. Hence a third setting, which the
`gsm_sgd` family applies after the learning rate:

3. Shrink the passive weights to exactly zero (``zero_passive_at``): from the
   freeze on, each passive weight is scaled by ``r(t+1) / r(t)`` a step on top
   of its update, with ``r(t) = ((t_z - t) / (t_z - t_f))**3`` from 1 at the
   freeze to 0 at ``t_z``, the cubic of gradual magnitude pruning, and held
   at zero after. The shrink does not depend on the learning rate or the
   momentum, the active weights have the steps after ``t_z`` to recover, and
   the final prune removes exact zeros: it changes nothing, at every budget.
"""

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_gsm import _validation

_DEFAULT_FREEZE_FRACTION = 0.2


class LosslessSettings(NamedTuple):
  """What `lossless_settings` derives. The `gsm_sgd` family takes all three;
  `gsm` in your own chain takes the first two (its passive weights then only
  decay: see ``passive_residual``)."""
  freeze_mask_at: int
  passive_weight_decay: float
  zero_passive_at: int
  passive_residual: float


def lossless_settings(
    learning_rate: optax.ScalarOrSchedule,
    total_steps: int,
    *,
    momentum: float,
    weight_decay: float = 0.0,
    freeze_fraction: float = _DEFAULT_FREEZE_FRACTION,
    zero_fraction: float | None = None,
) -> LosslessSettings:
  """``freeze_mask_at`` and ``passive_weight_decay`` for a step budget.

  .. math::
    t_f = \\mathrm{round}(f T), \\qquad
    \\eta_p = \\max\\Big(\\eta, \\frac{(1 - \\sqrt{\\beta})^2}
                                    {\\max_{t_f \\le t < T} \\alpha_t}\\Big)

  and ``t_z = round(z T)``, the step from which passive weights are exactly
  zero (module docstring: why these). ``gsm_sgd(..., total_steps=T)`` calls
  this; call it yourself to use `gsm` in your own chain, where the passive
  weights only decay: ``passive_residual`` is then the factor by which the
  decay alone shrinks a passive weight from the freeze to step T (with no
  gradient). The prune is lossless in practice when it is below about 1e-3;
  above it, train longer or use `gsm_sgd`.

  Args:
    learning_rate: the constant ``alpha`` or the schedule ``step -> alpha``
      of the GSM steps (steps of the GSM transformation: inner steps under
      ``optax.MultiSteps``).
    total_steps: T >= 1, the number of GSM steps the run will make.
    momentum: beta in [0, 1).
    weight_decay: eta >= 0 of active weights; passive ones never decay less.
    freeze_fraction: f in (0, 1), the fraction of the steps before the
      freeze.
    zero_fraction: z in (f, 1], the fraction of the steps by which passive
      weights reach exactly zero (the `gsm_sgd` family); None: halfway from
      the freeze to the end, ``(1 + f) / 2`` (0.6).

  Returns:
    `LosslessSettings` ``(freeze_mask_at, passive_weight_decay,
    zero_passive_at, passive_residual)``.

  Example::

    schedule = optax.piecewise_constant_schedule(1e-2, {30_000: 0.1})
    settings = optax_gsm.lossless_settings(schedule, 50_000, momentum=0.99)
    # freeze_mask_at = 10_000, zero_passive_at = 30_000,
    # passive_weight_decay = (1 - 0.99 ** 0.5) ** 2 / 1e-2 = 2.5e-3
    tx = optax.chain(
        optax_gsm.gsm(60.0, momentum=0.99,
                      freeze_mask_at=settings.freeze_mask_at,
                      passive_weight_decay=settings.passive_weight_decay),
        optax.scale_by_learning_rate(schedule))
    assert settings.passive_residual < 1e-3  # decay alone suffices here
  """
  total_steps = _validation.check_int("total_steps", total_steps, low=1)
  _validation.check_range("momentum", momentum, low=0.0, high=1.0,
                          high_inclusive=False)
  _validation.check_range("weight_decay", weight_decay, low=0.0)
  _validation.check_range("freeze_fraction", freeze_fraction, low=0.0,
                          high=1.0, low_inclusive=False, high_inclusive=False)
  if zero_fraction is None:
    zero_fraction = (1.0 + freeze_fraction) / 2
  _validation.check_range("zero_fraction", zero_fraction, low=freeze_fraction,
                          high=1.0, low_inclusive=False)
  freeze = min(round(freeze_fraction * total_steps), total_steps - 1)
  zero_at = min(max(round(zero_fraction * total_steps), freeze + 1), total_steps)
  if callable(learning_rate):
    # Every remaining step, vectorised: optax schedules take arrays, and a
    # step schedule's peak may sit anywhere in the interval.
    rates = np.asarray(learning_rate(np.arange(freeze, total_steps)),
                       np.float64).reshape(-1)
  else:
    _validation.check_range("learning_rate", learning_rate, low=0.0)
    rates = np.full(total_steps - freeze, float(learning_rate))
  peak = float(np.max(rates)) if rates.size else math.nan
  if not peak > 0.0 or not math.isfinite(peak):
    raise ValueError(
        "`learning_rate` must be positive and finite somewhere in steps "
        f"[{freeze}, {total_steps}) after the freeze; its largest value there "
        f"is {peak!r}.")
  passive = max(float(weight_decay), (1.0 - math.sqrt(momentum)) ** 2 / peak)
  return LosslessSettings(
      freeze_mask_at=freeze, passive_weight_decay=passive,
      zero_passive_at=zero_at,
      passive_residual=_decay_residual(rates, momentum, passive))


def _decay_residual(rates: np.ndarray, momentum: float, decay: float) -> float:
  """``|w_T / w_0|`` of a weight with no gradient under momentum SGD with
  decay: ``z <- beta z + eta w, w <- w - alpha_t z`` from ``z = 0``."""
  w, z = 1.0, 0.0
  for rate in rates.tolist():
    z = momentum * z + decay * w
    w -= rate * z
    if abs(w) < 1e-12 and abs(z) < 1e-12:  # gone: long budgets stop early
      break
  return abs(w)


def passive_scale(step: jax.Array, freeze_mask_at: chex.Numeric,
                  zero_passive_at: chex.Numeric) -> jax.Array:
  """``r(step + 1) / r(step)``: what a passive weight is scaled by at this
  step (module docstring), 0 from ``zero_passive_at`` on."""
  def ramp(t):
    left = jnp.clip((zero_passive_at - t) / (zero_passive_at - freeze_mask_at),
                    0.0, 1.0)
    return jnp.where(t < freeze_mask_at, 1.0, left ** 3)
  now, after = ramp(step), ramp(step + 1)
  return jnp.where(now > 0, after / jnp.where(now > 0, now, 1.0), 0.0)
