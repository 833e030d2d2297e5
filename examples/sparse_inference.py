"""Running a Flax linen model whose Dense kernels are BCOO matrices.

``optax_gsm.export.to_bcoo`` turns the pruned kernels into
``jax.experimental.sparse.BCOO``; ``apply_with_bcoo`` runs ``model.apply``
with them: every ``nn.Dense`` whose kernel is BCOO computes
``x @ kernel + bias`` sparsely, everything else runs as usual.

    sparse_params = optax_gsm.export.to_bcoo(pruned)
    logits = apply_with_bcoo(model, {"params": sparse_params}, images)
"""

import flax.linen as nn
from jax.experimental import sparse


def _sparse_dense(next_fun, args, kwargs, context):
  module = context.module
  if isinstance(module, nn.Dense) and context.method_name == "__call__":
    kernel = module.get_variable("params", "kernel")
    if isinstance(kernel, sparse.BCOO):
      (inputs,) = args
      batch_shape = inputs.shape[:-1]
      outputs = inputs.reshape(-1, inputs.shape[-1]) @ kernel
      outputs = outputs.reshape(*batch_shape, kernel.shape[-1])
      if module.use_bias:
        outputs = outputs + module.get_variable("params", "bias")
      return outputs
  return next_fun(*args, **kwargs)


def apply_with_bcoo(model: nn.Module, variables, *args, **kwargs):
  """``model.apply(variables, *args, **kwargs)`` with BCOO Dense kernels."""
  with nn.intercept_methods(_sparse_dense):
    return model.apply(variables, *args, **kwargs)


if __name__ == "__main__":
  raise SystemExit("examples.sparse_inference is a module, not a script: "
                   "linen inference on BCOO kernels, which "
                   "`benchmarks.inference` runs.")
