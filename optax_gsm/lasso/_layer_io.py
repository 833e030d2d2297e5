"""What each layer of a model reads and writes, on real inputs.

Post-training methods that reconstruct feature maps (LASSO channel pruning)
need, for a Dense or Conv layer, its input activation and its raw output
(before the bias) on sample inputs, from the original model and from a
partly pruned copy with the same shapes. `Program` flattens the jaxpr of
``apply_fn(variables, *inputs)`` once (``jit`` and ``custom_jvp``/``vjp``
calls inlined, as `channel_groups` sees the model) and evaluates it on any
variables of the same structure, keeping the values asked for.

It also finds, for a layer's output, the residual add it feeds: the chain
of element-wise ops with parameters alone (bias, inference batch norm) up to
an ``add`` with another activation, the shortcut. Along that chain the
layer's output ``z`` becomes ``a * z + b`` per element, so a shortcut that
changed by ``d`` is compensated by changing ``z`` by ``d / a``.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from optax_gsm.structured import _channel_groups

# Calls whose body is the op itself; loops and conditionals stay opaque.
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call",
                    "custom_jvp_call", "custom_vjp_call",
                    "custom_vjp_call_jaxpr", "checkpoint", "remat"})
_AFFINE = frozenset({"add", "sub", "mul", "div", "convert_element_type",
                     "copy", "copy_p"})


@dataclasses.dataclass
class Op:
  """One equation of the flattened program; values are integer ids."""
  primitive: Any
  params: dict
  inputs: list[int]
  outputs: list[int]

  @property
  def name(self) -> str:
    return self.primitive.name


@dataclasses.dataclass(frozen=True)
class Layer:
  """One use of a kernel leaf by a Dense (``dot_general``) or Conv.

  ``op`` indexes `Program.ops`; ``activation`` is the id of its input,
  ``output`` of its raw output.
  """
  leaf: int
  op: int
  activation: int
  output: int


class Program:
  """The flattened jaxpr of ``apply_fn(variables, *inputs)``."""

  def __init__(self, apply_fn: Callable[..., Any],
               variables: chex.ArrayTree, inputs: Sequence[Any]):
    closed = jax.make_jaxpr(lambda v, xs: apply_fn(v, *xs))(variables,
                                                            tuple(inputs))
    self.treedef = jax.tree.structure(variables)
    self.ops: list[Op] = []
    self.constants: dict[int, Any] = {}
    self._count = 0
    invars = [self._new() for _ in closed.jaxpr.invars]
    num_leaves = self.treedef.num_leaves
    self.leaf_ids = invars[:num_leaves]
    self.input_ids = invars[num_leaves:]
    consts = []
    for c in closed.consts:
      consts.append(self._constant(c))
    self.outputs = self._add(closed.jaxpr, invars, consts)
    self.users: dict[int, list[int]] = {}
    for index, op in enumerate(self.ops):
      for i in op.inputs:
        self.users.setdefault(i, []).append(index)
    # The op after which each value is read no more (run frees it there).
    self.last_use: dict[int, int] = {}
    for index, op in enumerate(self.ops):
      for i in op.inputs:
        self.last_use[i] = index
    # Activations: values that depend on the inputs.
    self.active = set(self.input_ids)
    for op in self.ops:
      if any(i in self.active for i in op.inputs):
        self.active.update(op.outputs)

  def _new(self) -> int:
    self._count += 1
    return self._count - 1

  def _constant(self, value) -> int:
    index = self._new()
    self.constants[index] = value
    return index

  def _add(self, jaxpr, inputs: list[int], consts: list[int]) -> list[int]:
    env = dict(zip(jaxpr.invars, inputs))
    env.update(zip(jaxpr.constvars, consts))

    def read(var):
      if isinstance(var, jex_core.Literal):
        return self._constant(var.val)
      return env[var]

    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      inner = (_channel_groups.inner_jaxpr(eqn) if eqn.primitive.name in _CALLS
               else None)
      if inner is not None:
        body, body_consts = inner
        outs = self._add(body, ins, [self._constant(c) for c in body_consts])
      else:
        outs = [self._new() for _ in eqn.outvars]
        self.ops.append(Op(eqn.primitive, dict(eqn.params), ins, outs))
      env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]

  def run(self, variables: chex.ArrayTree, inputs: Sequence[Any],
          keep: set[int], replace: dict[int, Any] | None = None
          ) -> dict[int, Any]:
    """Evaluates the program; returns the values of the ids in ``keep``.

    ``replace`` sets values (by id) instead of computing them.
    """
    env = dict(self.constants)
    env.update(zip(self.leaf_ids, jax.tree.leaves(variables)))
    env.update(zip(self.input_ids, inputs))
    replace = replace or {}
    env.update(replace)
    for index, op in enumerate(self.ops):
      if all(o in replace for o in op.outputs):
        continue
      values = [env[i] for i in op.inputs]
      outs = op.primitive.bind(*values, **op.params)
      if not op.primitive.multiple_results:
        outs = [outs]
      env.update(zip(op.outputs, outs))
      # Free what nothing reads any more: activations of every layer of a
      # large batch would not fit otherwise.
      for i in op.inputs:
        if self.last_use.get(i) == index and i not in keep and (
            i not in self.constants):
          env.pop(i, None)
    return {i: env[i] for i in keep}

  def layers(self, leaf: int) -> list[Layer]:
    """The Dense and Conv ops that read leaf ``leaf`` (through dtype
    conversions) as their kernel."""
    views = {self.leaf_ids[leaf]}
    found = []
    for index, op in enumerate(self.ops):
      if op.name in ("convert_element_type", "copy", "copy_p") and (
          op.inputs[0] in views):
        views.update(op.outputs)
      elif op.name in ("conv_general_dilated", "dot_general") and (
          op.inputs[1] in views and op.inputs[0] in self.active):
        found.append(Layer(leaf, index, op.inputs[0], op.outputs[0]))
    return found

  def shortcut(self, output: int) -> tuple[list[int], int, int] | None:
    """``(chain, chain_end, shortcut)`` when ``output`` reaches a residual
    add through element-wise ops with parameters alone: ``chain`` lists the
    op indices, ``chain_end`` the id added to the ``shortcut`` id; None when
    it does not."""
    chain, current = [], output
    while True:
      users = self.users.get(current, [])
      if len(users) != 1:
        return None
      op = self.ops[users[0]]
      others = [i for i in op.inputs if i != current]
      if op.name not in _AFFINE or len(op.outputs) != 1:
        return None
      active = [i for i in others if i in self.active]
      if active:
        if op.name == "add" and len(active) == 1:
          return chain, current, active[0]
        return None
      chain.append(users[0])
      current = op.outputs[0]

  def slope(self, chain: list[int], values: dict[int, Any], start: int,
            start_value: jax.Array) -> jax.Array:
    """``a`` of the affine chain ``z -> a * z + b`` (element-wise), from
    its values at ``start_value`` and ``start_value + 1``; ``values`` holds
    the chain's parameter operands."""
    def through(z):
      env = dict(values)
      env[start] = z
      for index in chain:
        op = self.ops[index]
        out = op.primitive.bind(*[env[i] for i in op.inputs], **op.params)
        env[op.outputs[0]] = out
        last = op.outputs[0]
      return env[last] if chain else z
    return through(start_value + 1) - through(start_value)

  def chain_operands(self, chain: list[int]) -> set[int]:
    """The parameter ids the chain's ops read."""
    return {i for index in chain for i in self.ops[index].inputs
            if i not in self.active}


def layer_matrices(program: Program, layer: Layer, activation: jax.Array,
                   kernel: jax.Array) -> tuple[jax.Array, jax.Array,
                                               Callable[[jax.Array],
                                                        jax.Array], Any]:
  """A layer as a matrix product ``rows @ matrix``.

  Returns ``(rows, matrix, unflatten, in_index)``: ``rows`` has one row per
  output position (batch and spatial axes, in the output's order) and one
  column per kernel input entry; ``matrix`` is the kernel as (entries,
  output features); ``unflatten`` turns such a matrix back into the
  kernel's shape; ``in_index[e]`` is the position of entry ``e`` along the
  kernel's input-feature axis.
  """
  op = program.ops[layer.op]
  if op.name == "dot_general":
    (lhs_c, rhs_c), (lhs_b, rhs_b) = op.params["dimension_numbers"]
    if lhs_b or len(lhs_c) != 1 or kernel.ndim != 2:
      raise NotImplementedError(
          "LASSO channel pruning handles Dense layers with 2-d kernels and "
          f"one contracted axis; got dimension numbers "
          f"{op.params['dimension_numbers']} on a {kernel.ndim}-d kernel.")
    rows = jnp.moveaxis(activation, lhs_c[0], -1)
    rows = rows.reshape(-1, rows.shape[-1])
    in_axis = rhs_c[0]
    matrix = jnp.moveaxis(kernel, in_axis, 0)
    shape = matrix.shape
    return (rows, matrix,
            lambda m: jnp.moveaxis(m.reshape(shape), 0, in_axis),
            np.arange(shape[0]))
  numbers = op.params["dimension_numbers"]
  if op.params["feature_group_count"] != 1 or (
      op.params["batch_group_count"] != 1):
    raise NotImplementedError(
        "LASSO channel pruning handles convolutions without feature or "
        "batch groups.")
  rhs_spec, out_spec = numbers.rhs_spec, numbers.out_spec
  window = tuple(kernel.shape[a] for a in rhs_spec[2:])
  patches = jax.lax.conv_general_dilated_patches(
      activation, window, op.params["window_strides"], op.params["padding"],
      lhs_dilation=op.params["lhs_dilation"],
      rhs_dilation=op.params["rhs_dilation"],
      dimension_numbers=numbers,
      precision=jax.lax.Precision.HIGHEST)
  # Patch features: input channel major, then the window in the kernel's
  # spatial axis order.
  order = (out_spec[0], *out_spec[2:], out_spec[1])
  rows = jnp.transpose(patches, order).reshape(-1, patches.shape[out_spec[1]])
  perm = (rhs_spec[1], *rhs_spec[2:], rhs_spec[0])
  moved = jnp.transpose(kernel, perm)
  matrix = moved.reshape(-1, moved.shape[-1])
  inverse = np.argsort(perm)
  return (rows, matrix,
          lambda m: jnp.transpose(m.reshape(moved.shape), inverse),
          np.repeat(np.arange(moved.shape[0]), int(np.prod(window))))


def output_rows(program: Program, layer: Layer,
                output: jax.Array) -> jax.Array:
  """A layer's output as (positions, features), rows as `layer_matrices`."""
  op = program.ops[layer.op]
  if op.name == "dot_general":
    return output.reshape(-1, output.shape[-1])
  out_spec = op.params["dimension_numbers"].out_spec
  order = (out_spec[0], *out_spec[2:], out_spec[1])
  return jnp.transpose(output, order).reshape(-1, output.shape[out_spec[1]])
