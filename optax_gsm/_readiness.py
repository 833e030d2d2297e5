"""What the final prune would remove, before you make it.

GSM's prune is lossless only when the weights it removes have decayed to
(nearly) zero. `prune_readiness` says how far a run is from that: per
prunable leaf, the largest ``|w|`` the prune would remove against the
smallest it keeps, the share of ``sum |w|`` removed, and, with the optimizer
state, how many kept weights were in the active set of the last step (a
weight kept but passive was still decaying).
"""

import dataclasses
from typing import Any

import chex
import jax
import numpy as np

from optax_gsm import (
    _compression_ratio,
    _optimizer_state,
    _prunable,
    _pruning,
    _report,
    _validation,
)


@dataclasses.dataclass(frozen=True)
class LeafReadiness:
  """What the prune does to one prunable leaf."""
  path: str
  size: int
  kept: int
  largest_removed: float  # max |w| removed (0 when nothing is removed)
  smallest_kept: float  # min |w| kept (inf when nothing is kept)
  removed_mass: float  # sum |w| removed
  total_mass: float  # sum |w|
  kept_active: int | None  # kept entries active at the last step


@dataclasses.dataclass(frozen=True)
class PruneReadiness:
  """`prune_readiness`'s answer; ``str()`` is a table."""
  leaves: tuple[LeafReadiness, ...]

  @property
  def kept(self) -> int:
    return sum(leaf.kept for leaf in self.leaves)

  @property
  def largest_removed(self) -> float:
    return max((leaf.largest_removed for leaf in self.leaves), default=0.0)

  @property
  def smallest_kept(self) -> float:
    return min((leaf.smallest_kept for leaf in self.leaves), default=np.inf)

  @property
  def removed_mass_fraction(self) -> float:
    """``sum |w|`` removed over ``sum |w|`` of all prunable leaves."""
    total = sum(leaf.total_mass for leaf in self.leaves)
    return sum(leaf.removed_mass for leaf in self.leaves) / total if total else 0.0

  def lossless(self, tolerance: float = 1e-3) -> bool:
    """Pass/fail for a training loop: True when the prune removes at most
    ``tolerance`` of ``sum |w|`` (the `gsm_sgd` family's default removes
    exact zeros: 0; a removed share of 8% cost 0.02 points on MNIST, 66% cost
    4)."""
    _validation.check_range("tolerance", tolerance, low=0.0, high=1.0)
    return self.removed_mass_fraction <= tolerance

  @property
  def kept_active_fraction(self) -> float | None:
    """Kept weights that were active at the last step (None: no state)."""
    if any(leaf.kept_active is None for leaf in self.leaves):
      return None
    return sum(leaf.kept_active for leaf in self.leaves) / max(self.kept, 1)

  def to_dict(self) -> dict[str, Any]:
    """Plain types only, ready for ``json.dumps``."""
    return {"leaves": [dataclasses.asdict(leaf) for leaf in self.leaves],
            "kept": self.kept, "largest_removed": self.largest_removed,
            "smallest_kept": self.smallest_kept,
            "removed_mass_fraction": self.removed_mass_fraction,
            "kept_active_fraction": self.kept_active_fraction}

  def __str__(self) -> str:
    header = ("parameter", "kept", "size", "max removed |w|",
              "min kept |w|", "removed mass", "kept & active")
    def active(kept_active, kept):
      return "-" if kept_active is None else f"{kept_active / max(kept, 1):.1%}"
    rows = [(leaf.path, str(leaf.kept), str(leaf.size),
             f"{leaf.largest_removed:.3g}", f"{leaf.smallest_kept:.3g}",
             f"{leaf.removed_mass / leaf.total_mass if leaf.total_mass else 0:.2%}",
             active(leaf.kept_active, leaf.kept)) for leaf in self.leaves]
    fraction = self.kept_active_fraction
    rows.append(("total", str(self.kept),
                 str(sum(leaf.size for leaf in self.leaves)),
                 f"{self.largest_removed:.3g}", f"{self.smallest_kept:.3g}",
                 f"{self.removed_mass_fraction:.2%}",
                 "-" if fraction is None else f"{fraction:.1%}"))
    verdict = ("lossless: the prune removes at most 0.1% of sum |w|"
               if self.lossless() else
               "NOT lossless: the prune removes more than 0.1% of sum |w|")
    return "\n".join([*_report.format_table(header, rows, left_columns=1),
                      verdict])


def prune_readiness(
    params: chex.ArrayTree,
    compression_ratio: _compression_ratio.RatioOrSchedule | None = None,
    *,
    sparsity: _compression_ratio.RatioOrSchedule | None = None,
    prunable: _prunable.Prunable = None,
    opt_state: chex.ArrayTree | None = None,
) -> PruneReadiness:
  """What `prune` with the same arguments would remove, leaf by leaf.

  ``readiness.lossless()`` is the pass/fail a training loop can check. A
  prune is lossless in practice when the removed share of ``sum |w|``
  (``removed_mass_fraction``) is near 0 and ``largest_removed`` is far below
  the typical kept weight (MNIST LeNet-300-100 at 60x, a tenth of the
  official budget: 1.4e-5 and 0.00% for the lossless default, 0.1 and tens of
  percent for the paper's recipe, which lost 14 points). ``smallest_kept``
  can itself be tiny: a kept weight may be near zero. Host-side: call it
  outside ``jit``.

  Args:
    params: the current parameters.
    compression_ratio: as in `prune`.
    sparsity: as in `prune`.
    prunable: as in `prune`.
    opt_state: as in `prune`; also gives ``kept_active``, the kept entries
      active at the last step.

  Returns:
    A `PruneReadiness`: ``print`` it, or ``to_dict()`` for JSON.
  """
  ranking_list = _pruning.rankings(params, compression_ratio, sparsity,
                                   prunable, opt_state)
  kept_mask = _pruning.ranking_masks(params, ranking_list)
  active = (None if opt_state is None else
            jax.tree.leaves(_optimizer_state.active_mask(opt_state, params)))
  flags = _optimizer_state.covered_flags(ranking_list)
  leaves = []
  for i, ((path, w), flag) in enumerate(zip(
      jax.tree_util.tree_leaves_with_path(params), flags)):
    if not flag:
      continue
    magnitude = np.abs(np.asarray(w, np.float64))
    kept = np.asarray(kept_mask[i])
    leaves.append(LeafReadiness(
        path=_prunable.path_string(path), size=int(magnitude.size),
        kept=int(kept.sum()),
        largest_removed=float(magnitude[~kept].max(initial=0.0)),
        smallest_kept=float(magnitude[kept].min(initial=np.inf)),
        removed_mass=float(magnitude[~kept].sum()),
        total_mass=float(magnitude.sum()),
        kept_active=(None if active is None
                     else int((kept & np.asarray(active[i])).sum()))))
  return PruneReadiness(leaves=tuple(leaves))
