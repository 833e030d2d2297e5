"""Counting what pruning left: per-leaf and global non-zeros."""

import dataclasses
from typing import Any

import chex
import jax
import numpy as np

from optax_gsm import _optimizer_state, _prunable
from optax_gsm.export import _sparse_file


@dataclasses.dataclass(frozen=True)
class LeafSparsity:
  """Non-zero count of one parameter."""
  path: str
  shape: tuple[int, ...]
  size: int
  nonzero: int
  prunable: bool
  dense_bytes: int  # as an array
  stored_bytes: int  # what `save_sparse` stores (data, header excluded)

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
  def dense_bytes(self) -> int:
    return sum(leaf.dense_bytes for leaf in self.leaves)

  @property
  def stored_bytes(self) -> int:
    return sum(leaf.stored_bytes for leaf in self.leaves)

  @property
  def storage_ratio(self) -> float:
    """Dense bytes over the bytes `save_sparse` stores."""
    return self.dense_bytes / max(self.stored_bytes, 1)

  @property
  def compression_ratio(self) -> float:
    """Prunable entries per non-zero prunable entry (C = N / Q)."""
    nonzero = self.prunable_nonzero
    return self.prunable_size / nonzero if nonzero else float("inf")

  @property
  def sparsity(self) -> float:
    """Fraction of prunable entries that are zero (0 with none prunable)."""
    if not self.prunable_size:
      return 0.0
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
        "dense_bytes": self.dense_bytes, "stored_bytes": self.stored_bytes,
        "storage_ratio": self.storage_ratio,
    }

  def __str__(self) -> str:
    header = ("parameter", "shape", "prunable", "non-zero", "size", "density",
              "bytes", "stored")
    rows = [(leaf.path, "x".join(map(str, leaf.shape)) or "scalar",
             "yes" if leaf.prunable else "no", str(leaf.nonzero),
             str(leaf.size), f"{leaf.density:.2%}", str(leaf.dense_bytes),
             str(leaf.stored_bytes)) for leaf in self.leaves]
    prunable = [leaf for leaf in self.leaves if leaf.prunable]
    rows.append(("total prunable", "", "", str(self.prunable_nonzero),
                 str(self.prunable_size), _percent(self.prunable_nonzero,
                                                   self.prunable_size),
                 str(sum(leaf.dense_bytes for leaf in prunable)),
                 str(sum(leaf.stored_bytes for leaf in prunable))))
    rows.append(("total", "", "", str(self.nonzero), str(self.size),
                 _percent(self.nonzero, self.size), str(self.dense_bytes),
                 str(self.stored_bytes)))
    lines = format_table(header, rows, left_columns=3)
    if self.prunable_size:
      lines.append(f"compression ratio of prunable parameters: "
                   f"{self.compression_ratio:.1f}x")
    else:
      lines.append("no prunable parameters")
    lines.append(f"stored by save_sparse: {self.stored_bytes} of "
                 f"{self.dense_bytes} bytes ({self.storage_ratio:.1f}x smaller)")
    return "\n".join(lines)


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]], *,
                 left_columns: int) -> list[str]:
  """Lines of an aligned text table: the first ``left_columns`` columns
  left-aligned, the rest right-aligned, a rule under the header."""
  widths = [max(len(row[i]) for row in [header, *rows])
            for i in range(len(header))]
  lines = ["  ".join(cell.ljust(w) if i < left_columns else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(row, widths)))
           for row in [header, *rows]]
  lines.insert(1, "-" * len(lines[0]))
  return lines


def _percent(part: int, whole: int) -> str:
  return f"{part / whole:.2%}" if whole else "-"


def sparsity_report(params: chex.ArrayTree, *,
                    prunable: _prunable.Prunable = None,
                    opt_state: chex.ArrayTree | None = None) -> SparsityReport:
  """Counts the non-zero entries and the bytes of every leaf and in total.

  Bytes: as dense arrays, and as `save_sparse` stores them (values plus
  compressed indices; the file adds a small header).

  Pass pruned params (from `prune`) to see what is left, or a mask (e.g.
  `active_mask`) to count active entries. Runs on the host: call it outside
  ``jit``.

  Args:
    params: pytree of arrays (bool masks count True as non-zero).
    prunable: which leaves count as prunable, as in `gsm`. A tree with none
      is reported with no prunable total.
    opt_state: instead of ``prunable``, the optimizer state: the leaves any
      GSM transformation in it ranks count as prunable.

  Returns:
    A `SparsityReport`; ``print`` it for a table, ``to_dict()`` for JSON.
  """
  leaves = jax.tree_util.tree_leaves_with_path(params)
  if any(isinstance(leaf, jax.core.Tracer) for _, leaf in leaves):
    raise TypeError(
        "sparsity_report counts on the host and cannot run under jit or "
        "another transformation: call it on concrete arrays, outside the "
        "jitted step.")
  if opt_state is not None:
    if prunable is not None:
      raise ValueError("Give either `opt_state` or `prunable`, not both.")
    flags = _optimizer_state.covered_flags(
        _optimizer_state.state_rankings(opt_state, params))
  else:
    flags = _prunable.resolve_prunable(prunable, params, check_dtypes=False,
                                       require_any=False)
  def leaf_sparsity(path, leaf, flag):
    array = np.asarray(leaf)  # one device-to-host copy per leaf
    return LeafSparsity(path=_prunable.path_string(path),
                        shape=array.shape, size=int(array.size),
                        nonzero=int(np.count_nonzero(array)), prunable=flag,
                        dense_bytes=int(array.nbytes),
                        stored_bytes=_sparse_file.stored_leaf_bytes(array))

  return SparsityReport(leaves=tuple(
      leaf_sparsity(path, leaf, flag)
      for (path, leaf), flag in zip(leaves, flags)))
