"""Path-SGD (Neyshabur et al., NIPS 2015): steepest descent in the path norm.

`path_kappa` derives the per-weight normaliser from the model's jaxpr;
`scale_by_path_norm` divides the gradient by it; `path_sgd` is the optimizer.
"""

from optax_gsm.path_norm._path_sgd import (
  ScaleByPathNormState,
  path_kappa,
  path_sgd,
  scale_by_path_norm,
)

__all__ = ("ScaleByPathNormState", "path_kappa", "path_sgd",
           "scale_by_path_norm")
