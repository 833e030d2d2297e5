"""Structured pruning: channels and residual blocks, learned by GSM.

`channel_groups` traces a model and finds its structures (`Groups`): each
Dense/Conv output channel with every entry that belongs to it, and residual
blocks that can be removed whole. `structured_gsm` ranks them all together
by saliency per unit cost (params or FLOPs) under one budget; `shrink`
hands back the smaller model's variables and widths.
"""

from optax_gsm.structured._batch_stats import recalibrate_batch_stats
from optax_gsm.structured._channel_groups import channel_groups
from optax_gsm.structured._groups import (
  Block,
  ChannelGroup,
  Groups,
  Member,
  StructureMask,
  mask_structures,
)
from optax_gsm.structured._ranking import (
  cost_per_structure,
  min_kept_channels,
  model_cost,
  prune_structures,
)
from optax_gsm.structured._shrink import shrink
from optax_gsm.structured._structured_gsm import (
  StructuredGSMState,
  kept_structures,
  scale_by_structured_gsm_adam,
  structured_gsm,
  structured_gsm_adamw,
  structured_gsm_sgd,
)

__all__ = (
    "Block",
    "ChannelGroup",
    "Groups",
    "Member",
    "StructureMask",
    "StructuredGSMState",
    "channel_groups",
    "cost_per_structure",
    "kept_structures",
    "mask_structures",
    "min_kept_channels",
    "model_cost",
    "prune_structures",
    "recalibrate_batch_stats",
    "scale_by_structured_gsm_adam",
    "shrink",
    "structured_gsm",
    "structured_gsm_adamw",
    "structured_gsm_sgd",
)
