"""Trained Rank Pruning: train low-rank kernels, then split each in two.

Xu, Li, Zhang, Wen, Wang, Qi, Chen, Lin, Xiong, "Trained Rank Pruning for
Efficient Deep Neural Networks", arXiv 1812.02402 (IJCAI 2020 version
arXiv 2004.14566).

Each prunable kernel is viewed as a matrix ``M`` (the "scheme"):

- Dense ``(in, out)``: ``M`` is the kernel itself;
- Conv, Flax HWIO ``(kh, kw, in, out)``, ``scheme="channel"``:
  ``M = out x (in kh kw)`` (a filter per row);
- Conv, ``scheme="spatial"``: ``M = (in kh) x (out kw)``.

With ``M = U S V^T`` and ``r`` the smallest rank whose energy
``sum_{i<=r} s_i^2 / sum_i s_i^2`` reaches ``e``, TRP (1) adds the
nuclear-norm sub-gradient ``lambda U_r V_r^T`` to the gradient
(`add_nuclear_norm`), (2) every ``m`` steps replaces the kernel by its truncated
SVD ``U_r S_r V_r^T`` (`truncate_rank`, called by the training loop before
the forward pass, the paper's order), and (3) after training splits each
kernel into two thinner layers with no retraining (`low_rank_decompose`).
The SVDs have static shapes: singular values past ``r`` are masked, never
sliced, so everything runs under ``jit``.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from optax_gsm import _prunable, _validation
from optax_gsm.low_rank._lapack import limit_on_cpu

_SCHEMES = ("channel", "spatial")


def _check_scheme(scheme: str) -> None:
  if scheme not in _SCHEMES:
    raise ValueError(f"`scheme` must be one of {_SCHEMES}; got {scheme!r}.")


def _check_energy(energy: Any) -> None:
  _validation.check_range("energy", energy, low=0.0, high=1.0,
                          low_inclusive=False)


def _check_kernel(path: str, shape: tuple[int, ...]) -> None:
  if len(shape) not in (2, 4):
    raise ValueError(
        f"low-rank methods take Dense (in, out) or Conv (kh, kw, in, out) "
        f"kernels; {path!r} has shape {shape}: leave it out of `prunable`.")


def to_matrix(kernel: jax.Array, scheme: str) -> jax.Array:
  """The kernel's matrix view (see the module docstring)."""
  if kernel.ndim == 2:
    return kernel
  kh, kw, cin, cout = kernel.shape
  if scheme == "channel":  # out x (in kh kw)
    return jnp.transpose(kernel, (3, 2, 0, 1)).reshape(cout, cin * kh * kw)
  # (in kh) x (out kw)
  return jnp.transpose(kernel, (2, 0, 3, 1)).reshape(cin * kh, cout * kw)


def from_matrix(matrix: jax.Array, shape: tuple[int, ...],
                scheme: str) -> jax.Array:
  """Inverse of `to_matrix` for a kernel of ``shape``."""
  if len(shape) == 2:
    return matrix
  kh, kw, cin, cout = shape
  if scheme == "channel":
    return jnp.transpose(matrix.reshape(cout, cin, kh, kw), (2, 3, 1, 0))
  return jnp.transpose(matrix.reshape(cin, kh, cout, kw), (1, 3, 0, 2))


def energy_rank(singular_values: jax.Array, energy: Any) -> jax.Array:
  """The smallest r with ``sum_{i<r} s_i^2 >= energy * sum s_i^2`` (>= 1)."""
  squares = jnp.square(singular_values.astype(jnp.float32))
  cumulative = jnp.cumsum(squares)
  return jnp.maximum(1, jnp.sum(cumulative < energy * cumulative[-1]) + 1)


def _small_side_spectrum(matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Singular values (descending) and singular vectors of the matrix's
  smaller side: the right ones of a tall matrix, the left ones of a wide
  one, as the columns of a square matrix.

  From the eigendecomposition of the Gram matrix on that side, which XLA's
  CPU backend computes 2-12x faster than the SVD at the kernel sizes of a
  convnet or an MLP (TRP needs one every step). Squaring the matrix costs
  accuracy only in the singular vectors of the smallest singular values,
  which TRP's energy ranks leave out.
  """
  tall = matrix.shape[0] >= matrix.shape[1]
  gram = (matrix.T @ matrix if tall else matrix @ matrix.T)
  eigenvalues, vectors = jnp.linalg.eigh(gram)
  singular = jnp.sqrt(jnp.maximum(eigenvalues[::-1], 0.0))
  return singular, vectors[:, ::-1]


def _weighted_projection(matrix: jax.Array, vectors: jax.Array,
                         weights: jax.Array) -> jax.Array:
  """``M V diag(weights) V^T`` for a tall matrix, ``V diag(weights) V^T M``
  for a wide one (``V`` from `_small_side_spectrum`)."""
  side = (vectors * weights) @ vectors.T
  return matrix @ side if matrix.shape[0] >= matrix.shape[1] else side @ matrix


def _kernels(params: chex.ArrayTree, prunable):
  """Flags of the kernels TRP acts on (checked ranks) and their paths."""
  flags = _prunable.resolve_prunable(prunable, params)
  paths = [_prunable.path_string(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(params)[0]]
  for flag, path, leaf in zip(flags, paths, jax.tree.leaves(params)):
    if flag:
      _check_kernel(path, np.shape(leaf))
  return flags, paths


def _map_kernels_or_zero(fn, params, flags):
  leaves, treedef = jax.tree.flatten(params)
  return treedef.unflatten([fn(w) if f else jnp.zeros_like(w)
                            for w, f in zip(leaves, flags)])


def _added_every(name, every, prunable, state_type, term):
  """Adds ``term(params)`` to the updates on steps ``0, every, 2 every, ...``
  (a ``count`` state); what `add_nuclear_norm` and `low_rank_projection`
  share."""

  def init_fn(params):
    _kernels(params, prunable)
    return state_type(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(f"{name} needs the params: call "
                       "`update(grads, opt_state, params)`.")
    add = lambda u: jax.tree.map(lambda ui, ti: ui + ti.astype(ui.dtype), u,
                                 term(params))
    if isinstance(every, int) and every == 1:
      updates = add(updates)
    else:  # a branch, so the SVDs run only on the steps that use them
      updates = lax.cond(state.count % every == 0, add, lambda u: u, updates)
    return updates, state_type(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def nuclear_subgradient(kernel: jax.Array, energy: Any,
                        scheme: str) -> jax.Array:
  """``U_r V_r^T`` of the kernel's matrix view, back in the kernel's shape."""
  matrix = to_matrix(kernel, scheme).astype(jnp.float32)
  s, vectors = _small_side_spectrum(matrix)
  keep = jnp.arange(s.shape[0]) < energy_rank(s, energy)
  # U_r V_r^T = M V_r S_r^-1 V_r^T (tall), U_r S_r^-1 U_r^T M (wide).
  inverse = jnp.where(keep & (s > 0), 1.0 / jnp.where(s > 0, s, 1.0), 0.0)
  return from_matrix(_weighted_projection(matrix, vectors, inverse),
                     kernel.shape, scheme).astype(kernel.dtype)


def truncated(kernel: jax.Array, energy: Any, scheme: str,
              rank: int | None = None) -> jax.Array:
  """``U_r S_r V_r^T`` of the kernel's matrix view, in the kernel's shape;
  ``r`` the energy rank, or ``rank`` when given."""
  matrix = to_matrix(kernel, scheme).astype(jnp.float32)
  s, vectors = _small_side_spectrum(matrix)
  r = energy_rank(s, energy) if rank is None else rank
  keep = (jnp.arange(s.shape[0]) < r).astype(jnp.float32)
  return from_matrix(_weighted_projection(matrix, vectors, keep),
                     kernel.shape, scheme).astype(kernel.dtype)


class NuclearNormState(NamedTuple):
  """State of `add_nuclear_norm`: the number of updates so far."""
  count: jax.Array


def add_nuclear_norm(strength: jax.typing.ArrayLike, *, energy: float = 0.9,
                 scheme: str = "channel", every: int = 1,
                 prunable: _prunable.Prunable = None,
                 lapack_threads: int | None = 1
                 ) -> optax.GradientTransformation:
  r"""Adds TRP's nuclear-norm sub-gradient to each prunable kernel's gradient.

  .. math::
    g \leftarrow g + \lambda U_r V_r^\top

  on steps ``0, every, 2 every, ...``, where ``U_r V_r^T`` is the
  sub-gradient of the nuclear norm restricted to the energy-``e`` rank of
  the kernel's matrix view (Xu et al., TRP). Put it before the optimizer:
  ``optax.chain(add_nuclear_norm(3e-4), optax.sgd(lr, momentum=0.9))``.

  Args:
    strength: lambda >= 0 (the official example: 3e-4).
    energy: e in (0, 1]: the rank kept by the sub-gradient.
    scheme: "channel" or "spatial" (conv kernels; see the module).
    every: int >= 1: add it every this many steps.
    prunable: which kernels (default: Flax kernels; each must be rank 2 or
      4). The paper leaves the last classifier out: pass e.g.
      ``"*/kernel"`` minus it as a pytree of bools.
    lapack_threads: on a CPU backend, the threads of the LAPACK that
      computes the decompositions, set when this is built
      (`limit_lapack_threads`: more threads spin between calls on the cores
      the training step needs); None leaves the process's setting.

  Returns:
    An ``optax.GradientTransformation`` that needs ``params``.
  """
  _validation.check_range("strength", strength, low=0.0)
  _check_energy(energy)
  _check_scheme(scheme)
  every = _validation.check_int("every", every, low=1)
  limit_on_cpu(lapack_threads)

  def term(params):
    flags, _ = _kernels(params, prunable)
    return _map_kernels_or_zero(
        lambda w: strength * nuclear_subgradient(w, energy, scheme), params,
        flags)

  return _added_every("add_nuclear_norm", every, prunable, NuclearNormState,
                      term)



def truncate_rank(params: chex.ArrayTree, *, energy: float = 0.9,
                     scheme: str = "channel",
                     prunable: _prunable.Prunable = None,
                     ranks: Mapping[str, int] | None = None
                     ) -> chex.ArrayTree:
  """TRP's projection: every prunable kernel replaced by its truncated SVD.

  The rank of each kernel is the smallest that keeps ``energy`` of its
  squared singular values. The paper applies it every ``m`` steps before
  the forward pass, then trains on the full matrices::

    for step in range(steps):
      if step % m == 0:
        params = optax_gsm.low_rank.truncate_rank(params, energy=0.9)
      params, opt_state = train_step(params, opt_state, batch)

  On CPU call `limit_lapack_threads` once before such a loop (the
  transformations do it themselves).

  Args:
    params: the params.
    energy: e in (0, 1].
    scheme: "channel" or "spatial".
    prunable: which kernels (default: Flax kernels).
    ranks: instead of ``energy``, a fixed rank per kernel path (as
      `low_rank_decompose` returns them): fine-tuning at fixed ranks.

  Returns:
    The params with projected kernels. Jit-compatible.
  """
  _check_energy(energy)
  _check_scheme(scheme)
  flags, paths = _kernels(params, prunable)
  leaves, treedef = jax.tree.flatten(params)
  if ranks is not None:
    unknown = set(ranks) - {p for p, f in zip(paths, flags) if f}
    if unknown:
      raise ValueError(f"`ranks` names no prunable kernel: {sorted(unknown)}.")
    flags = [f and p in ranks for f, p in zip(flags, paths)]
  return treedef.unflatten([
      truncated(w, energy, scheme, None if ranks is None else ranks[p])
      if f else w for w, f, p in zip(leaves, flags, paths)])


class LowRankProjectionState(NamedTuple):
  """State of `low_rank_projection`: the number of updates so far."""
  count: jax.Array


def low_rank_projection(*, energy: float = 0.9, scheme: str = "channel",
                        every: int = 1, prunable: _prunable.Prunable = None,
                        ranks: Mapping[str, int] | None = None,
                        lapack_threads: int | None = 1
                        ) -> optax.GradientTransformation:
  r"""TRP's projection inside the optimizer: adds ``P(W) - W`` every m steps.

  Put it LAST in the chain, after the learning rate: on steps ``0, m, 2m,
  ...`` the update ``u`` becomes ``u + P(W) - W``, so ``W <- P(W) + u``.
  The paper projects before the forward pass, so its gradient is taken at
  ``P(W)``; here the gradient ``u`` was taken at ``W`` (one step later to
  see the projection). For the paper's exact order call
  `truncate_rank` in the training loop instead.

  Args:
    energy: e in (0, 1].
    scheme: "channel" or "spatial".
    every: m >= 1.
    prunable: which kernels (default: Flax kernels).
    ranks: fixed ranks per kernel path instead of ``energy``.
    lapack_threads: as in `add_nuclear_norm`.

  Returns:
    An ``optax.GradientTransformation`` that needs ``params``.
  """
  _check_energy(energy)
  _check_scheme(scheme)
  every = _validation.check_int("every", every, low=1)
  limit_on_cpu(lapack_threads)

  def term(params):
    projected = truncate_rank(params, energy=energy, scheme=scheme,
                                 prunable=prunable, ranks=ranks)
    return jax.tree.map(lambda p, w: p - w, projected, params)

  return _added_every("low_rank_projection", every, prunable,
                      LowRankProjectionState, term)



class LowRankFactors(NamedTuple):
  """One kernel as two layers.

  Attributes:
    first: Dense ``(in, r)``; Conv "channel": ``(kh, kw, in, r)`` (stride and
      padding of the original); Conv "spatial": ``(kh, 1, in, r)`` (the
      vertical stride and padding).
    second: Dense ``(r, out)``; Conv "channel": ``(1, 1, r, out)``; Conv
      "spatial": ``(1, kw, r, out)`` (the horizontal stride and padding).
    rank: r.
    params_before: entries of the kernel.
    params_after: entries of both factors.
    macs_before: multiply-adds per output position of the kernel.
    macs_after: multiply-adds per output position of both factors.
  """
  first: jax.Array
  second: jax.Array
  rank: int
  params_before: int
  params_after: int
  macs_before: int
  macs_after: int


def _decompose(kernel: np.ndarray, rank: int, scheme: str) -> LowRankFactors:
  matrix = np.asarray(to_matrix(jnp.asarray(kernel), scheme), np.float64)
  u, s, vt = np.linalg.svd(matrix, full_matrices=False)
  left, right = u[:, :rank] * s[:rank], vt[:rank]
  dtype = kernel.dtype
  if kernel.ndim == 2:  # x @ (U S) @ V^T
    first, second = left, right
    macs_after = first.size + second.size
  elif scheme == "channel":  # M = out x (in kh kw) = (U S) V^T
    kh, kw, cin, cout = kernel.shape
    first = np.transpose(right.reshape(rank, cin, kh, kw), (2, 3, 1, 0))
    second = left.T.reshape(1, 1, rank, cout)
    macs_after = first.size + second.size
  else:  # M = (in kh) x (out kw) = (U S) V^T
    kh, kw, cin, cout = kernel.shape
    first = np.transpose(left.reshape(cin, kh, 1, rank), (1, 2, 0, 3))
    second = np.transpose(right.reshape(rank, cout, 1, kw), (2, 3, 0, 1))
    macs_after = first.size + second.size
  return LowRankFactors(
      first=jnp.asarray(first, dtype), second=jnp.asarray(second, dtype),
      rank=int(rank), params_before=int(kernel.size),
      params_after=int(first.size + second.size),
      macs_before=int(kernel.size), macs_after=int(macs_after))


def low_rank_decompose(params: chex.ArrayTree, *,
                       threshold: float | None = 0.05,
                       energy: float | None = None, scheme: str = "channel",
                       prunable: _prunable.Prunable = None
                       ) -> tuple[dict[str, LowRankFactors], dict[str, int]]:
  """Splits every prunable kernel into two thin factors (after TRP).

  The rank of a kernel is the number of singular values of its matrix view
  at least ``threshold`` times the largest (the official code drops those
  "below 0.05"; relative to the largest is our reading, unverified), or
  with ``energy`` the energy rank. A Dense becomes two Dense layers
  ``(in, r), (r, out)``; a Conv with "channel" a ``kh x kw`` conv with r
  filters then a 1x1 conv, with "spatial" a ``kh x 1`` conv then a
  ``1 x kw`` conv. The factorised layer computes the truncated SVD of the
  kernel (at full rank, the kernel itself). ``examples/low_rank.py``
  shows how to run the factorised model.

  MACs are per output position (for a conv, multiply by the output's
  height times width; for "spatial" the first factor's positions are
  those of the intermediate map, counted at the output's resolution here).

  Args:
    params: the trained params.
    threshold: relative singular-value threshold in (0, 1); exactly one of
      this and ``energy``.
    energy: e in (0, 1].
    scheme: "channel" or "spatial".
    prunable: which kernels (default: Flax kernels).

  Returns:
    ``(factors, ranks)``: per kernel path a `LowRankFactors`, and the rank
    of each.
  """
  _check_scheme(scheme)
  if energy is not None:
    threshold = None
  if (threshold is None) == (energy is None):
    raise ValueError("Give exactly one of `threshold` and `energy`.")
  if threshold is not None:
    _validation.check_range("threshold", threshold, low=0.0, high=1.0,
                            low_inclusive=False, high_inclusive=False)
  else:
    _check_energy(energy)
  flags, paths = _kernels(params, prunable)
  factors, ranks = {}, {}
  for flag, path, leaf in zip(flags, paths, jax.tree.leaves(params)):
    if not flag:
      continue
    kernel = np.asarray(leaf)
    s = np.linalg.svd(np.asarray(to_matrix(jnp.asarray(kernel), scheme),
                                 np.float64), compute_uv=False)
    if threshold is not None:
      rank = max(1, int(np.sum(s >= threshold * s[0])))
    else:
      rank = int(energy_rank(jnp.asarray(s), energy))
    factors[path] = _decompose(kernel, rank, scheme)
    ranks[path] = rank
  return factors, ranks


def full_rank(shape: tuple[int, ...], scheme: str) -> int:
  """The largest rank of a kernel's matrix view."""
  if len(shape) == 2:
    return min(shape)
  kh, kw, cin, cout = shape
  if scheme == "channel":
    return min(cout, cin * kh * kw)
  return min(cin * kh, cout * kw)

