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
"""

import math
from typing import NamedTuple

import numpy as np
import optax

from optax_gsm import _validation

_DEFAULT_FREEZE_FRACTION = 0.2


class LosslessSettings(NamedTuple):
  """What `lossless_settings` derives; pass both to `gsm` or `gsm_sgd`."""
  freeze_mask_at: int
  passive_weight_decay: float


def lossless_settings(
    learning_rate: optax.ScalarOrSchedule,
    total_steps: int,
    *,
    momentum: float,
    weight_decay: float = 0.0,
    freeze_fraction: float = _DEFAULT_FREEZE_FRACTION,
) -> LosslessSettings:
  """``freeze_mask_at`` and ``passive_weight_decay`` for a step budget.

  .. math::
    t_f = \\mathrm{round}(f T), \\qquad
    \\eta_p = \\max\\Big(\\eta, \\frac{(1 - \\sqrt{\\beta})^2}
                                    {\\max_{t_f \\le t < T} \\alpha_t}\\Big)

  (module docstring: why these). ``gsm_sgd(..., total_steps=T)`` calls this;
  call it yourself to use `gsm` in your own chain.

  Args:
    learning_rate: the constant ``alpha`` or the schedule ``step -> alpha``
      of the GSM steps (steps of the GSM transformation: inner steps under
      ``optax.MultiSteps``).
    total_steps: T >= 1, the number of GSM steps the run will make.
    momentum: beta in [0, 1).
    weight_decay: eta >= 0 of active weights; passive ones never decay less.
    freeze_fraction: f in (0, 1), the fraction of the steps before the
      freeze.

  Returns:
    `LosslessSettings` ``(freeze_mask_at, passive_weight_decay)``.

  Example::

    schedule = optax.piecewise_constant_schedule(1e-2, {30_000: 0.1})
    freeze, passive = optax_gsm.lossless_settings(schedule, 50_000,
                                                  momentum=0.99)
    # freeze = 10_000, passive = (1 - 0.99 ** 0.5) ** 2 / 1e-2 = 2.5e-3
  """
  total_steps = _validation.check_int("total_steps", total_steps, low=1)
  _validation.check_range("momentum", momentum, low=0.0, high=1.0,
                          high_inclusive=False)
  _validation.check_range("weight_decay", weight_decay, low=0.0)
  _validation.check_range("freeze_fraction", freeze_fraction, low=0.0,
                          high=1.0, low_inclusive=False, high_inclusive=False)
  freeze = min(round(freeze_fraction * total_steps), total_steps - 1)
  if callable(learning_rate):
    # Every remaining step, vectorised: optax schedules take arrays, and a
    # step schedule's peak may sit anywhere in the interval.
    rates = np.asarray(learning_rate(np.arange(freeze, total_steps)))
    peak = float(np.max(rates)) if rates.size else math.nan
  else:
    _validation.check_range("learning_rate", learning_rate, low=0.0)
    peak = float(learning_rate)
  if not peak > 0.0 or not math.isfinite(peak):
    raise ValueError(
        "`learning_rate` must be positive and finite somewhere in steps "
        f"[{freeze}, {total_steps}) after the freeze; its largest value there "
        f"is {peak!r}.")
  critical = (1.0 - math.sqrt(momentum)) ** 2 / peak
  return LosslessSettings(freeze_mask_at=freeze,
                          passive_weight_decay=max(float(weight_decay),
                                                   critical))
