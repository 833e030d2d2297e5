"""What each layer of a model reads and writes, on real inputs.

Post-training methods that reconstruct feature maps (LASSO channel pruning)
need, for a Dense or Conv layer, its input activation and its raw output
(before the bias) on sample inputs, from the original model and from a
partly pruned copy with the same shapes. `Program` traces
``apply_fn(variables, *inputs)`` once into the graph `channel_groups` reads
too (`optax_gsm._graph`) and evaluates it on any variables of the same
structure, keeping the values asked for.

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

from optax_gsm import _graph

_AFFINE = frozenset({"add", "sub", "mul", "div", "convert_element_type",
                     "copy", "copy_p"})


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
  """The graph of ``apply_fn(variables, *inputs)`` (`optax_gsm._graph`),
  with what LASSO asks of it."""

  def __init__(self, apply_fn: Callable[..., Any],
               variables: chex.ArrayTree, inputs: Sequence[Any]):
    self.graph = _graph.trace(apply_fn, variables, inputs)
    if self.graph.scanned:
      raise NotImplementedError(
          "LASSO channel pruning reconstructs one layer at a time; layers "
          "stacked by `scan` (nn.scan, nnx.scan) share their leaves across "
          "the stack. Unstack them, or prune them with structured GSM.")
    self.ops = self.graph.eqns
    self.leaf_ids = self.graph.leaf_ids
    self.outputs = self.graph.outputs
    self.users = self.graph.consumers()
    # Activations: values that depend on the inputs.
    self.active = set(self.graph.input_ids)
    for op in self.ops:
      if any(i in self.active for i in op.inputs):
        self.active.update(op.outputs)

  def run(self, variables: chex.ArrayTree, inputs: Sequence[Any],
          keep: set[int], replace: dict[int, Any] | None = None
          ) -> dict[int, Any]:
    """Evaluates the program; returns the values of the ids in ``keep``.

    ``replace`` sets values (by id) instead of computing them.
    """
    return _graph.evaluate(self.graph, variables, inputs, keep, replace)

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
        (env[op.outputs[0]],) = op.bind([env[i] for i in op.inputs])
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
