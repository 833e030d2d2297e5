"""to_bcoo: the BCOO forward computes what the dense pruned model does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse

import optax_gsm

models = pytest.importorskip("examples.models")
sparse_inference = pytest.importorskip("examples.sparse_inference")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["LeNet300100", "LeNet5"])
def test_bcoo_forward_equals_dense_pruned_forward(name):
  model = getattr(models, name)()
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 28, 28, 1))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  pruned, mask = optax_gsm.prune(params, 60.0)
  converted = optax_gsm.export.to_bcoo(params, mask)
  dense_kernels = [p for p in jax.tree.leaves(
      converted, is_leaf=lambda v: isinstance(v, sparse.BCOO))
                   if isinstance(p, sparse.BCOO)]
  assert dense_kernels and all(k.nse == int(jnp.count_nonzero(k.todense()))
                               for k in dense_kernels)
  expected = model.apply({"params": pruned}, x)
  got = jax.jit(lambda p, x: sparse_inference.apply_with_bcoo(
      model, {"params": p}, x))(converted, x)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # Convolution kernels stay dense arrays.
  if name == "LeNet5":
    assert not isinstance(converted["Conv_0"]["kernel"], sparse.BCOO)
