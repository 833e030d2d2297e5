"""Counting what pruning left: per-leaf and global non-zeros."""

import dataclasses
from typing import Any

import chex
import jax
import numpy as np

from optax_gsm import _prunable


@dataclasses.dataclass(frozen=True)
class LeafSparsity:
  """Non-zero count of one parameter."""
  path: str
  shape: tuple[int, ...]
  size: int
  nonzero: int
  prunable: bool

  @property
  def density(self) -> float:
    """Fraction of entries that are non-zero."""
    return self.nonzero / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class SparsityReport:
  """Non-zero counts of a whole model; ``str()`` gives a readable table."""
  leaves: tuple[LeafSparsity, ...]

  @property
  def size(self) -> int:
    return sum(leaf.size for leaf in self.leaves)

  @property
  def nonzero(self) -> int:
    return sum(leaf.nonzero for leaf in self.leaves)

  @property
  def prunable_size(self) -> int:
    return sum(leaf.size for leaf in self.leaves if leaf.prunable)

  @property
  def prunable_nonzero(self) -> int:
    return sum(leaf.nonzero for leaf in self.leaves if leaf.prunable)

  @property
  def compression_ratio(self) -> float:
    """Prunable entries per non-zero prunable entry (C = N / Q)."""
    nonzero = self.prunable_nonzero
    return self.prunable_size / nonzero if nonzero else float("inf")

  @property
  def sparsity(self) -> float:
    """Fraction of prunable entries that are zero."""
    return 1.0 - self.prunable_nonzero / self.prunable_size

  def to_dict(self) -> dict[str, Any]:
    """Plain types only, ready for ``json.dumps``."""
    return {
        "leaves": [dict(dataclasses.asdict(leaf), shape=list(leaf.shape),
                        density=leaf.density) for leaf in self.leaves],
        "size": self.size, "nonzero": self.nonzero,
        "prunable_size": self.prunable_size,
        "prunable_nonzero": self.prunable_nonzero,
        "compression_ratio": self.compression_ratio,
        "sparsity": self.sparsity,
    }

  def __str__(self) -> str:
    header = ("parameter", "shape", "prunable", "non-zero", "size", "density")
    rows = [(leaf.path, "x".join(map(str, leaf.shape)) or "scalar",
             "yes" if leaf.prunable else "no", str(leaf.nonzero),
             str(leaf.size), f"{leaf.density:.2%}") for leaf in self.leaves]
    rows.append(("total prunable", "", "", str(self.prunable_nonzero),
                 str(self.prunable_size),
                 f"{self.prunable_nonzero / self.prunable_size:.2%}"))
    rows.append(("total", "", "", str(self.nonzero), str(self.size),
                 f"{self.nonzero / self.size:.2%}"))
    widths = [max(len(row[i]) for row in [header, *rows])
              for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"compression ratio of prunable parameters: "
                 f"{self.compression_ratio:.1f}x")
    return "\n".join(lines)


def sparsity_report(params: chex.ArrayTree, *,
                    prunable: _prunable.Prunable = None) -> SparsityReport:
  """Counts the non-zero entries of every leaf and of the whole model.

  Pass pruned params (from `prune`) to see what is left, or a mask (e.g.
  ``optax.tree_utils.tree_get(opt_state, "mask")``) to count active entries.

  Args:
    params: pytree of arrays (bool masks count True as non-zero).
    prunable: which leaves count as prunable, as in `gsm`.

  Returns:
    A `SparsityReport`; ``print`` it for a table, ``to_dict()`` for JSON.
  """
  flags = _prunable.resolve_prunable(prunable, params, check_dtypes=False)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return SparsityReport(leaves=tuple(
      LeafSparsity(path=jax.tree_util.keystr(path),
                   shape=tuple(np.shape(leaf)), size=int(np.size(leaf)),
                   nonzero=int(np.count_nonzero(np.asarray(leaf))),
                   prunable=flag)
      for (path, leaf), flag in zip(leaves, flags)))
