"""Running a Flax linen model whose kernels are low-rank factor pairs.

``optax_gsm.low_rank.low_rank_decompose`` splits each kernel into ``first`` and
``second``; `factorised_params` puts ``{"first": ..., "second": ...}`` in
place of each kernel, and `apply_low_rank` runs ``model.apply`` with them:
an ``nn.Dense`` computes ``(x @ first) @ second + bias``, an ``nn.Conv``
(the "channel" scheme) a convolution with ``first`` (the layer's own
strides and padding) then a 1x1 convolution with ``second``, plus bias.
Everything else runs as usual.

    factors, ranks = optax_gsm.low_rank.low_rank_decompose(params, prunable=...)
    logits = apply_low_rank(model, {"params": factorised_params(params,
                                                                factors)}, x)
"""

import flax.linen as nn
import jax
from jax import lax


def factorised_params(params, factors):
  """``params`` with each decomposed kernel replaced by its factor pair."""
  def swap(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if name in factors:
      return {"first": factors[name].first, "second": factors[name].second}
    return leaf
  return jax.tree_util.tree_map_with_path(swap, params)


def _conv(module, x, kernel, strides, padding):
  return lax.conv_general_dilated(
      x, kernel, strides, padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _low_rank_layer(next_fun, args, kwargs, context):
  module = context.module
  if context.method_name != "__call__" or not isinstance(
      module, (nn.Dense, nn.Conv)):
    return next_fun(*args, **kwargs)
  kernel = module.get_variable("params", "kernel")
  if not isinstance(kernel, dict):
    return next_fun(*args, **kwargs)
  (x,) = args
  if isinstance(module, nn.Dense):
    y = x @ kernel["first"] @ kernel["second"]
  else:
    strides = module.strides or (1,) * (x.ndim - 2)
    if isinstance(strides, int):
      strides = (strides,) * (x.ndim - 2)
    padding = module.padding
    if not isinstance(padding, str):
      raise NotImplementedError("apply_low_rank: string padding only.")
    y = _conv(module, x, kernel["first"], tuple(strides), padding)
    y = _conv(module, y, kernel["second"], (1,) * (x.ndim - 2), "VALID")
  if module.use_bias:
    y = y + module.get_variable("params", "bias")
  return y


def apply_low_rank(model: nn.Module, variables, *args, **kwargs):
  """``model.apply`` with factor pairs in place of kernels."""
  with nn.intercept_methods(_low_rank_layer):
    return model.apply(variables, *args, **kwargs)


if __name__ == "__main__":
  raise SystemExit("examples.low_rank_inference is a module, not a script: "
                   "linen inference on factor pairs, which `examples.low_rank` runs.")
