"""Path-SGD: steepest descent in the geometry of the path regulariser.

Neyshabur, Salakhutdinov, Srebro, "Path-SGD: Path-Normalized Optimization
in Deep Neural Networks", NIPS 2015, https://arxiv.org/abs/1506.02617.

A ReLU network computes the same function when a hidden unit's incoming
weights are scaled by ``c > 0`` and its outgoing weights by ``1/c``; plain
SGD's step is not invariant to that, Path-SGD's is. Its update is diagonal:

.. math::
  w_e \\leftarrow w_e - \\eta \\frac{g_e}{\\kappa_e(w)}, \\qquad
  \\kappa_e(w) = \\frac{\\partial}{\\partial V_e}
    \\sum \\mathrm{linear\\_net}(V, \\mathbf{1}) \\Big|_{V = w^2}

where ``linear_net`` is the network with every weight squared, no
nonlinearity and an all-ones input: ``kappa_e`` is the sum over all
input-output paths through edge ``e`` of the product of the other edges'
squared weights (``gamma_in(u) * gamma_out(v)`` for ``e = u -> v``).

Biases (unverified in the paper; decided here) are edges from a unit that
always outputs 1: they are squared like weights, their paths count in
``kappa`` of every weight after them, and a bias's ``kappa`` is the
``gamma_out`` of its unit. With this choice the update stays invariant when
the rescaled unit's bias is scaled with its incoming weights.

`path_kappa` derives ``linear_net`` from the model itself: it traces the
apply function, substitutes ``w**2`` for every parameter and ones for the
input, makes ReLU (``max(x, 0)``) the identity, squares constant scalings
(average pooling's ``1/k``), and sums over conv positions as the conv does
(weight sharing). Ops that break path semantics (batch norm's
normalisation, max pooling, products of activations, other nonlinearities)
are an error naming the op: pass your own ``kappa_fn`` for such models.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax import lax

from optax_gsm import _graph, _validation

KappaFn = Callable[[chex.ArrayTree], chex.ArrayTree]

# Linear in the activation: evaluated as they are, on squared weights.
_LINEAR = frozenset("""
add add_any dot_general conv_general_dilated reshape broadcast_in_dim
transpose squeeze expand_dims reduce_sum reduce_window_sum convert_element_type
concatenate pad slice copy copy_p
""".split())
_SCALINGS = frozenset({"mul", "div"})


class _Value(NamedTuple):
  value: Any
  kind: str  # "const", "param" or "act"


def _is_zero(v: _Value) -> bool:
  return v.kind == "const" and jnp.ndim(v.value) == 0 and (
      float(v.value) == 0.0)


def _combine_kind(values) -> str:
  kinds = {v.kind for v in values}
  return "act" if "act" in kinds else "param" if "param" in kinds else "const"


def _evaluate(graph: _graph.Graph, inputs: list[_Value]) -> list[_Value]:
  """The linear net: the graph with path semantics, on ``inputs`` (squared
  params, then the all-ones input)."""
  env = {i: _Value(c, "const") for i, c in graph.constants.items()}
  env.update(zip(graph.leaf_ids + graph.input_ids, inputs))
  for eqn in graph.eqns:
    ins = [env[i] for i in eqn.inputs]
    name = eqn.name
    if all(v.kind == "const" for v in ins):
      outs = [_Value(o, "const") for o in eqn.bind([v.value for v in ins])]
    elif name == "max" and len(ins) == 2 and any(_is_zero(v) for v in ins):
      (kept,) = [v for v in ins if not _is_zero(v)]  # ReLU: the identity
      outs = [kept]
    elif name in _LINEAR:
      kind = _combine_kind(ins)
      outs = [_Value(o, kind) for o in eqn.bind([v.value for v in ins])]
    elif name in _SCALINGS and ins[1].kind == "const" and (
        name == "div" or ins[0].kind != "const"):
      # Constant coefficients are path weights too: squared.
      out = eqn.bind([ins[0].value, jnp.square(ins[1].value)])
      outs = [_Value(o, ins[0].kind) for o in out]
    elif name == "mul" and ins[0].kind == "const":
      out = eqn.bind([jnp.square(ins[0].value), ins[1].value])
      outs = [_Value(o, ins[1].kind) for o in out]
    else:
      raise NotImplementedError(
          f"path_kappa: op `{name}` breaks path semantics (batch norm, max "
          "pooling, products of activations, nonlinearities other than ReLU "
          "and control flow other than `scan` have no path-norm form); pass "
          "`kappa_fn=` instead.")
    env.update(zip(eqn.outputs, outs))
  return [env[i] for i in graph.outputs]


def _eps(eps: float | None, kappa: jax.Array) -> Any:
  return jnp.finfo(jnp.result_type(kappa)).tiny if eps is None else eps


def path_kappa(apply_fn: Callable[[chex.ArrayTree, jax.Array], Any],
               example_input: jax.Array) -> KappaFn:
  """``kappa(params)``: Path-SGD's per-weight normaliser, from the model.

  Example::

    >>> import jax, jax.numpy as jnp, optax_gsm
    >>> apply = lambda p, x: jax.nn.relu(x @ p["w1"]) @ p["w2"]
    >>> params = {"w1": jnp.full((2, 3), 2.0), "w2": jnp.ones((3, 1))}
    >>> kappa = optax_gsm.path_norm.path_kappa(apply, jnp.ones((1, 2)))(params)
    >>> kappa["w2"].ravel().tolist()   # each hidden unit: 2 inputs * 2**2
    [8.0, 8.0, 8.0]

  Args:
    apply_fn: ``(params, x) -> outputs`` (e.g. ``lambda p, x:
      model.apply({"params": p}, x)``), in inference mode.
    example_input: one input batch (only its shape and dtype matter; the
      linear net runs on one all-ones example).

  Returns:
    A function of the params returning ``kappa`` with their structure.
  """
  ones = jnp.ones((1,) + tuple(jnp.shape(example_input))[1:],
                  jnp.result_type(example_input))

  def kappa(params):
    leaves, treedef = jax.tree.flatten(params)
    graph = _graph.trace(apply_fn, params, (ones,))

    def total(squared):
      inputs = [_Value(v, "param") for v in squared] + [
          _Value(x, "act") for x in jax.tree.leaves(ones)]
      outs = _evaluate(graph, inputs)
      return sum(jnp.sum(o.value) for o in outs)

    squared = [jnp.square(w) for w in leaves]  # in the params' own dtype
    return treedef.unflatten(jax.grad(total)(squared))

  return kappa


class ScaleByPathNormState(NamedTuple):
  """State of `scale_by_path_norm` with ``kappa_every > 1``.

  Attributes:
    count: int32, the number of updates so far.
    kappa: the normaliser of the last refresh, like the params.
  """
  count: jax.Array
  kappa: chex.ArrayTree


def _checked_kappa(kappa_fn: KappaFn, params: chex.ArrayTree
                   ) -> chex.ArrayTree:
  kappa = kappa_fn(params)
  if jax.tree.structure(kappa) != jax.tree.structure(params):
    raise ValueError("`kappa_fn` must return a tree like the params.")
  return kappa


def scale_by_path_norm(kappa_fn: KappaFn | None = None, *,
                       apply_fn: Callable[..., Any] | None = None,
                       example_input: jax.Array | None = None,
                       eps: float | None = None,
                       kappa_every: int = 1) -> optax.GradientTransformation:
  r"""Divides each gradient by its path normaliser: ``g / (kappa(w) + eps)``.

  Chain with ``optax.scale_by_learning_rate`` (or use `path_sgd`).

  ``kappa`` is a forward and a backward pass through a second network, as
  dear as a training step of a small model. ``kappa_every = k > 1`` computes
  it on steps ``0, k, 2k, ...`` and keeps it in the state between them
  (``+1`` float a parameter). The update stays exactly invariant to
  rescaling: two rescaled copies of a network have rescaled ``kappa`` at
  every refresh, so their steps stay rescaled copies in between; only the
  geometry is ``k - 1`` steps old.

  Args:
    kappa_fn: ``params -> kappa`` (same structure); or None to derive it
      from ``apply_fn`` and ``example_input`` with `path_kappa`.
    apply_fn: ``(params, x) -> outputs``, when ``kappa_fn`` is None.
    example_input: an input batch, when ``kappa_fn`` is None.
    eps: None (the default: the dtype's smallest normal number, which only
      keeps ``0 / 0`` out), or a float > 0 added to ``kappa``. A larger
      ``eps`` breaks the rescaling invariance wherever ``kappa`` is as small
      as it (a unit scaled by 0.01 has ``kappa`` near 1e-6).
    kappa_every: k >= 1, refresh ``kappa`` every k steps (1: every step,
      as in the paper).

  Returns:
    An ``optax.GradientTransformation`` that needs ``params``. Its ``init``
    traces ``kappa``, so a model with no path-norm form fails there, naming
    the op.
  """
  if eps is not None:
    _validation.check_range("eps", eps, low=0.0, low_inclusive=False)
  kappa_every = _validation.check_int("kappa_every", kappa_every, low=1)
  if kappa_fn is None:
    if apply_fn is None or example_input is None:
      raise ValueError("Give `kappa_fn`, or `apply_fn` and `example_input` "
                       "to derive it from the model.")
    kappa_fn = path_kappa(apply_fn, example_input)

  def init_fn(params):
    if kappa_every == 1:
      jax.eval_shape(functools.partial(_checked_kappa, kappa_fn), params)
      return optax.EmptyState()
    return ScaleByPathNormState(count=jnp.zeros([], jnp.int32),
                                kappa=_checked_kappa(kappa_fn, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_path_norm needs the params: call "
                       "`update(grads, opt_state, params)`.")
    if kappa_every == 1:
      kappa = _checked_kappa(kappa_fn, params)
    else:
      kappa = lax.cond(state.count % kappa_every == 0,
                       functools.partial(_checked_kappa, kappa_fn),
                       lambda _: state.kappa, params)
      state = ScaleByPathNormState(optax.safe_increment(state.count), kappa)
    return jax.tree.map(
        lambda g, k: (g / (k + _eps(eps, k))).astype(g.dtype), updates,
        kappa), state

  return optax.GradientTransformation(init_fn, update_fn)


def path_sgd(learning_rate: optax.ScalarOrSchedule, *,
             kappa_fn: KappaFn | None = None,
             apply_fn: Callable[..., Any] | None = None,
             example_input: jax.Array | None = None,
             eps: float | None = None,
             kappa_every: int = 1) -> optax.GradientTransformation:
  r"""Path-SGD: ``w <- w - lr * g / kappa(w)`` (Neyshabur et al., 2015).

  `scale_by_path_norm` chained with ``optax.scale_by_learning_rate``.

  Args:
    learning_rate: the step size, or a schedule.
    kappa_fn: see `scale_by_path_norm`.
    apply_fn: see `scale_by_path_norm`.
    example_input: see `scale_by_path_norm`.
    eps: see `scale_by_path_norm`.
    kappa_every: see `scale_by_path_norm`.

  Returns:
    An ``optax.GradientTransformation``.
  """
  return optax.chain(
      scale_by_path_norm(kappa_fn, apply_fn=apply_fn,
                         example_input=example_input, eps=eps,
                         kappa_every=kappa_every),
      optax.scale_by_learning_rate(learning_rate))
