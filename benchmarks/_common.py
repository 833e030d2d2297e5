"""Shared benchmark plumbing: machine facts, timing, tables, JSON records."""

import json
import os
import pathlib
import resource
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from examples.measure import machine_info, time_call

__all__ = ["RESULTS", "classification_loss", "count_minor_faults",
           "glibc_record_suffix", "machine_info", "print_table",
           "synthetic_batch", "time_call", "write_record"]

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def synthetic_batch(input_shape: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """Normal images of ``input_shape`` and labels in 0-9 (speed does not
  depend on the pixels)."""
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.standard_normal(input_shape), jnp.float32),
          jnp.asarray(rng.integers(0, 10, input_shape[0])))


def classification_loss(model, extra: dict, images: jax.Array,
                        labels: jax.Array) -> Callable[[Any], Any]:
  """``params -> (mean cross-entropy, updated extra collections)``; models
  with batch norm (``extra``) take ``train`` and update their statistics."""
  def loss(params):
    logits, new_extra = model.apply(
        {"params": params, **extra}, images, mutable=list(extra),
        **({"train": True} if extra else {}))
    return (optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            .mean(), new_extra)
  return loss


def count_minor_faults(fn: Callable[[], Any]
                       ) -> tuple[Callable[[], Any], list[int]]:
  """``fn`` wrapped to append the process's minor page faults during each
  call to the returned list (where XLA's CPU temporaries come from fresh
  memory, each 4 KiB page of them faults once per step)."""
  faults = []

  def counted():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    result = fn()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return result

  return counted, faults


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """Prints and returns a Markdown table."""
  cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
  lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |"
           for row in cells]
  lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
  text = "\n".join(lines)
  print(text, flush=True)
  return text


# GLIBC_TUNABLES settings that change how XLA's CPU temporaries are served,
# and the record-name suffix of each.
_GLIBC_SETTINGS = {"hugetlb=1": "hugetlb", "mmap_max=0": "no_mmap"}


def glibc_record_suffix() -> str:
  """``"_hugetlb"``, ``"_no_mmap"`` (or both) when ``GLIBC_TUNABLES`` asks
  glibc's malloc for huge pages or forbids it to map large blocks: XLA's CPU
  temporaries come from malloc, so such figures are recorded apart."""
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  return "".join(f"_{tag}" for setting, tag in _GLIBC_SETTINGS.items()
                 if setting in tunables)


def write_record(name: str, record: dict[str, Any]) -> pathlib.Path:
  """Writes ``record`` plus machine info as ``benchmarks/results/NAME.json``."""
  RESULTS.mkdir(parents=True, exist_ok=True)
  path = RESULTS / f"{name}.json"
  machine = {**machine_info(),
             "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}
  path.write_text(json.dumps({"machine": machine, **record}, indent=2))
  print(f"wrote {path}", flush=True)
  return path
