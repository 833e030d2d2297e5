"""The one jaxpr graph of a model, shared by every method that reads a model.

`trace` runs ``jax.make_jaxpr`` on ``apply_fn(variables, *inputs)`` once
and flattens it into a list of equations over integer value ids, which
`optax_gsm.structured.channel_groups` (channel labels), the FLOP count,
LASSO's layer inputs and outputs and Path-SGD's ``kappa`` all walk. What it
does with nested jaxprs is explicit:

- calls (`CALL_BODIES`: ``jit``, ``closed_call``, ``custom_jvp_call``,
  ``custom_vjp_call``, ``remat``/``checkpoint``) are inlined: their body is
  the op itself;
- ``scan`` is unrolled: iteration ``i`` reads row ``i`` of every scanned
  input (``slice`` + ``squeeze`` along the leading axis) and the stacked
  outputs are rebuilt (``broadcast_in_dim`` + ``concatenate``), so a scan
  over layers (``nn.scan``, ``nnx.scan``) reads as a stack of layers whose
  parameters are rows of the stacked leaves (`Graph.scanned` lists them,
  `Graph.steps` the equations of each iteration);
- ``while`` and ``cond`` stay opaque equations (a loop of unknown length, a
  branch chosen at run time): a walker that meets one names it in its error.
  Any other primitive with a nested jaxpr is opaque too.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import numpy as np
from jax import lax
from jax.extend import core as jex_core

# The parameter holding the body of each call primitive that is inlined.
CALL_BODIES = {
    "jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat2": "jaxpr", "checkpoint": "jaxpr",
}
# Control flow a walker cannot follow; kept as single opaque equations.
OPAQUE_CONTROL_FLOW = frozenset({"while", "cond"})


@dataclasses.dataclass
class Eqn:
  """One equation of the flattened graph; values are integer ids."""
  primitive: Any
  params: dict
  inputs: list[int]
  outputs: list[int]

  @property
  def name(self) -> str:
    return self.primitive.name

  def bind(self, values: Sequence[Any]) -> list[Any]:
    """Evaluates the equation on ``values`` (one per input)."""
    out = self.primitive.bind(*values, **self.params)
    return list(out) if self.primitive.multiple_results else [out]


@dataclasses.dataclass(frozen=True)
class ScannedLeaf:
  """A variable leaf that an unrolled ``scan`` reads row by row."""
  leaf: int
  length: int


@dataclasses.dataclass(frozen=True)
class ScanStep:
  """One iteration of an unrolled ``scan``: a layer of a stack.

  Attributes:
    leaves: the variable leaves the scan reads row by row.
    row: the iteration (the row of each of those leaves it reads).
    eqns: the indices of its equations: its row reads, then its body.
    row_reads: per row read (a ``slice`` equation's index), the leaf.
  """
  leaves: tuple[int, ...]
  row: int
  eqns: range
  row_reads: dict[int, int]


@dataclasses.dataclass
class Graph:
  """A model's flattened jaxpr.

  Attributes:
    eqns: the equations in execution order.
    shapes: the shape of every value, by id.
    constants: the value of every constant id (closed-over arrays and
      literals).
    leaf_ids: the id of each variable leaf (``jax.tree.leaves`` order).
    input_ids: the ids of the flattened inputs.
    outputs: the ids of the flattened outputs.
    scanned: the variable leaves read row by row by an unrolled ``scan``.
    steps: every iteration of every unrolled ``scan``.
  """
  eqns: list[Eqn] = dataclasses.field(default_factory=list)
  shapes: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
  constants: dict[int, Any] = dataclasses.field(default_factory=dict)
  leaf_ids: list[int] = dataclasses.field(default_factory=list)
  input_ids: list[int] = dataclasses.field(default_factory=list)
  outputs: list[int] = dataclasses.field(default_factory=list)
  scanned: list[ScannedLeaf] = dataclasses.field(default_factory=list)
  steps: list[ScanStep] = dataclasses.field(default_factory=list)

  def new(self, shape: Sequence[int]) -> int:
    self.shapes.append(tuple(shape))
    return len(self.shapes) - 1

  def constant(self, value: Any) -> int:
    index = self.new(np.shape(value))
    self.constants[index] = value
    return index

  def emit(self, primitive: Any, inputs: list[int], params: dict,
           shapes: Sequence[Sequence[int]]) -> list[int]:
    outputs = [self.new(s) for s in shapes]
    self.eqns.append(Eqn(primitive, params, inputs, outputs))
    return outputs

  def add(self, jaxpr: Any, inputs: list[int], consts: list[int]
          ) -> list[int]:
    """Appends ``jaxpr`` (inputs and constants bound to ids); returns the
    ids of its outputs."""
    env = dict(zip(jaxpr.invars, inputs))
    env.update(zip(jaxpr.constvars, consts))

    def read(var):
      if isinstance(var, jex_core.Literal):
        return self.constant(var.val)
      return env[var]

    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      name = eqn.primitive.name
      if name in CALL_BODIES:
        outs = self._inline(eqn.params[CALL_BODIES[name]], ins)
      elif name == "scan":
        outs = self._unroll(eqn.params, ins,
                            [v.aval.shape for v in eqn.outvars])
      else:
        outs = self.emit(eqn.primitive, ins, dict(eqn.params),
                         [v.aval.shape for v in eqn.outvars])
      env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]

  def _inline(self, body: Any, ins: list[int]) -> list[int]:
    if isinstance(body, jex_core.ClosedJaxpr):
      return self.add(body.jaxpr, ins,
                      [self.constant(c) for c in body.consts])
    return self.add(body, ins, [])

  def _unroll(self, params: dict, ins: list[int],
              out_shapes: list[tuple[int, ...]]) -> list[int]:
    body, length = params["jaxpr"], params["length"]
    num_consts, num_carry = params["num_consts"], params["num_carry"]
    consts, carry = ins[:num_consts], ins[num_consts:num_consts + num_carry]
    xs = ins[num_consts + num_carry:]
    leaf_of = {index: leaf for leaf, index in enumerate(self.leaf_ids)}
    self.scanned.extend(ScannedLeaf(leaf_of[x], length) for x in xs
                        if x in leaf_of)
    order = range(length - 1, -1, -1) if params["reverse"] else range(length)
    ys_per_step: dict[int, list[int]] = {}
    stacked_leaves = tuple(leaf_of[x] for x in xs if x in leaf_of)
    for i in order:
      start = len(self.eqns)
      rows = [self._row(x, i) for x in xs]
      row_reads = {start + 2 * k: leaf_of[x] for k, x in enumerate(xs)
                   if x in leaf_of}  # each row read is a slice + squeeze
      outs = self._inline(body, consts + carry + rows)
      self.steps.append(ScanStep(stacked_leaves, i,
                                 range(start, len(self.eqns)), row_reads))
      carry, ys = outs[:num_carry], outs[num_carry:]
      ys_per_step[i] = ys
    stacked = []
    for k, shape in enumerate(out_shapes[num_carry:]):
      parts = [self._expand(ys_per_step[i][k]) for i in range(length)]
      stacked.append(parts[0] if length == 1 else self.emit(
          lax.concatenate_p, parts, {"dimension": 0}, [shape])[0])
    return carry + stacked

  def _row(self, x: int, i: int) -> int:
    """Row ``i`` of ``x`` along its leading axis, as ``x[i]``."""
    shape = self.shapes[x]
    (sliced,) = self.emit(
        lax.slice_p, [x], {"start_indices": (i,) + (0,) * (len(shape) - 1),
                           "limit_indices": (i + 1,) + tuple(shape[1:]),
                           "strides": None}, [(1,) + tuple(shape[1:])])
    return self.emit(lax.squeeze_p, [sliced], {"dimensions": (0,)},
                     [shape[1:]])[0]

  def _expand(self, y: int) -> int:
    shape = self.shapes[y]
    return self.emit(
        lax.broadcast_in_dim_p, [y],
        {"shape": (1,) + tuple(shape),
         "broadcast_dimensions": tuple(range(1, len(shape) + 1)),
         "sharding": None}, [(1,) + tuple(shape)])[0]

  def producers(self) -> dict[int, int]:
    """The equation index that computes each value id."""
    return {o: i for i, e in enumerate(self.eqns) for o in e.outputs}

  def consumers(self) -> dict[int, list[int]]:
    """The indices of the equations that read each value id."""
    users: dict[int, list[int]] = {}
    for index, eqn in enumerate(self.eqns):
      for i in eqn.inputs:
        users.setdefault(i, []).append(index)
    return users


def trace(apply_fn: Callable[..., Any], variables: chex.ArrayTree,
          inputs: Sequence[Any], kwargs: dict | None = None) -> Graph:
  """The flattened graph of ``apply_fn(variables, *inputs, **kwargs)``.

  ``kwargs`` are constants of the trace (``train=False``).
  """
  kwargs = kwargs or {}
  closed = jax.make_jaxpr(lambda v, xs: apply_fn(v, *xs, **kwargs))(
      variables, tuple(inputs))
  graph = Graph()
  invars = [graph.new(v.aval.shape) for v in closed.jaxpr.invars]
  num_leaves = len(jax.tree.leaves(variables))
  graph.leaf_ids = invars[:num_leaves]
  graph.input_ids = invars[num_leaves:]
  consts = [graph.constant(c) for c in closed.consts]
  graph.outputs = graph.add(closed.jaxpr, invars, consts)
  return graph


def evaluate(graph: Graph, variables: chex.ArrayTree, inputs: Sequence[Any],
             keep: set[int], replace: dict[int, Any] | None = None
             ) -> dict[int, Any]:
  """Runs the graph on ``variables`` and ``inputs`` (the flattened leaves
  of what it was traced with); returns the values of the ids in ``keep``.

  ``replace`` sets values (by id) instead of computing them. Values nothing
  reads any more are freed as it goes: the activations of every layer of a
  large batch would not fit otherwise.
  """
  last_use = {i: index for index, eqn in enumerate(graph.eqns)
              for i in eqn.inputs}
  env = dict(graph.constants)
  env.update(zip(graph.leaf_ids, jax.tree.leaves(variables)))
  env.update(zip(graph.input_ids, jax.tree.leaves(inputs)))
  replace = replace or {}
  env.update(replace)
  for index, eqn in enumerate(graph.eqns):
    if all(o in replace for o in eqn.outputs):
      continue
    env.update(zip(eqn.outputs, eqn.bind([env[i] for i in eqn.inputs])))
    for i in eqn.inputs:
      if last_use.get(i) == index and i not in keep and (
          i not in graph.constants):
        env.pop(i, None)
  return {i: env[i] for i in keep}
