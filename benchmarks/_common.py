"""Shared benchmark plumbing: machine facts, timing, tables, JSON records."""

import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
  """What the figures were measured on."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f
               if line.startswith("model name")]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  device = jax.devices()[0]
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "platform": platform.platform(),
      "python": platform.python_version(),
      "cpu": cpu,
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "device": getattr(device, "device_kind", str(device)),
      "device_count": jax.device_count(),
  }


def time_call(fn: Callable[[], Any], *, min_repeats: int = 3,
              max_repeats: int = 20, budget_s: float = 2.0,
              warmup: int = 1) -> float:
  """Median wall time of ``fn()`` in seconds (after ``warmup`` calls).

  ``fn`` must block until its result is ready.
  """
  for _ in range(warmup):
    fn()
  times = []
  start = time.perf_counter()
  while len(times) < max_repeats and (
      len(times) < min_repeats or time.perf_counter() - start < budget_s):
    begin = time.perf_counter()
    fn()
    times.append(time.perf_counter() - begin)
  return statistics.median(times)


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
