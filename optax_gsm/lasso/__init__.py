"""LASSO channel pruning (He et al., ICCV 2017), after training.

`prune_channels` selects each layer's channels by LASSO regression on
sampled feature maps and refits the next layer by least squares;
`prunable_groups` says which channel groups it can prune.
"""

from optax_gsm.lasso._lasso import (
    LassoLayer,
    LassoReport,
    prunable_groups,
    prune_channels,
)

__all__ = ("LassoLayer", "LassoReport", "prunable_groups", "prune_channels")
