"""Shared benchmark plumbing: machine facts, timing, tables, JSON records."""

import json
import os
import pathlib
import resource
from collections.abc import Callable, Sequence
from typing import Any

from examples.measure import machine_info, time_call

__all__ = ["RESULTS", "count_minor_faults", "glibc_record_suffix",
           "machine_info", "print_table", "time_call", "write_record"]

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


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
