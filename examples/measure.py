"""What every script shares outside training: machine facts, timing, where
outputs go and how help reads.

The benchmarks build on the examples (their models), never the reverse, so
these live here.
"""

import argparse
import datetime
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

# Where the examples write, relative to the working directory (git ignores
# it); the records kept in git came from the same commands with
# `--out benchmarks/results/<method>`.
RESULTS = pathlib.Path("results")


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
  """Keeps the docstring's examples on their own lines; shows defaults."""


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


def bar_offsets(count: int, span: float = 0.8) -> tuple[float, np.ndarray]:
  """The width of ``count`` bars side by side within ``span`` of one x
  position, and each bar's offset from it (centred)."""
  width = span / count
  return width, width * (np.arange(count) - (count - 1) / 2)


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
