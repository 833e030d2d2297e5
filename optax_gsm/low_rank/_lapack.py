"""The thread pool of the LAPACK that JAX's CPU linear algebra calls.

On CPU, ``jnp.linalg.eigh`` runs as a custom call into SciPy's LAPACK, whose
OpenBLAS keeps its own worker threads. After each call they spin, waiting
for more work, on the cores XLA's next operations need: with TRP's
decompositions in a training step, the step ran 1.2-1.4x slower than
momentum SGD's on ResNet-20 and a small ViT (``benchmarks/family_step.py``),
though the decompositions themselves took 1-2% of it. With one thread the
spinning stops.
"""

import functools
import pathlib

import jax
from threadpoolctl import ThreadpoolController

from optax_gsm import _validation


@functools.cache
def _lapack_blas_pools() -> ThreadpoolController:
  """The BLAS libraries behind SciPy's LAPACK: those SciPy's wheel ships
  (``scipy.libs``), or, where SciPy links a shared BLAS (conda, a system
  build), every BLAS of the process, NumPy's included. Found once: loading
  SciPy's LAPACK first loads its BLAS, and scanning the process's libraries
  takes milliseconds at every TRP build otherwise."""
  import scipy
  import scipy.linalg.cython_lapack  # noqa: F401  (loads its BLAS)
  controller = ThreadpoolController().select(user_api="blas")
  package = pathlib.Path(scipy.__file__).resolve().parent
  bundled = (package, package.with_name("scipy.libs"),
             package.with_name(".dylibs"))
  own = [c.filepath for c in controller.lib_controllers
         if any(pathlib.Path(c.filepath).resolve().is_relative_to(d)
                for d in bundled)]
  return controller.select(filepath=own) if own else controller


def limit_lapack_threads(threads: int = 1) -> int | None:
  """Sets the threads of the BLAS behind JAX's CPU LAPACK calls.

  JAX computes ``eigh``, ``svd``, ``lstsq`` and the like on CPU with SciPy's
  LAPACK, whose OpenBLAS threads spin after each call on the cores XLA's
  next operations need. `add_nuclear_norm` and `low_rank_projection` call
  this (``lapack_threads=1``) when built on a CPU backend; call it yourself
  around `truncate_rank` in a training loop. It changes the process:
  SciPy's own LAPACK and BLAS calls use ``threads`` too (and, where SciPy
  and NumPy share one BLAS, NumPy's).

  Args:
    threads: int >= 1.

  Returns:
    The number of threads the pools had before (the largest), or None
    where no BLAS pool is found.

  Example:
    >>> import optax_gsm
    >>> before = optax_gsm.low_rank.limit_lapack_threads(1)
    >>> _ = optax_gsm.low_rank.limit_lapack_threads(before or 1)  # restore
  """
  threads = _validation.check_int("threads", threads, low=1)
  pools = _lapack_blas_pools()
  if not pools.lib_controllers:
    return None
  before = max(c.num_threads for c in pools.lib_controllers)
  pools.limit(limits=threads)
  return before


def limit_on_cpu(lapack_threads: int | None) -> None:
  """What the TRP transformations do when built: `limit_lapack_threads`
  on a CPU backend, unless ``lapack_threads`` is None."""
  if lapack_threads is None:
    return
  lapack_threads = _validation.check_int("lapack_threads", lapack_threads,
                                         low=1)
  if jax.default_backend() == "cpu":
    limit_lapack_threads(lapack_threads)
