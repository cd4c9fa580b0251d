"""Compression passes applied to a task's subnetwork after training (TSN, DESIGN.md §2).

The same functions serve the pipeline's TSN stage and, later, the search's trial objective, so
there is one implementation of every pass.
"""

from pipeline.compress._patterns import Pattern, group_ids, prune_step
from pipeline.compress._tsn import (
    CompressContext,
    CompressResult,
    LayerResult,
    finetune_own,
    layer_snapshot,
    prune,
    quantize,
    summarize,
)

__all__ = [
    "CompressContext",
    "CompressResult",
    "LayerResult",
    "Pattern",
    "finetune_own",
    "group_ids",
    "layer_snapshot",
    "prune",
    "prune_step",
    "quantize",
    "summarize",
]
