"""Compression of a task after training: the ``Compressor`` interface, the recipe-plan
compressor, and TSN's passes (pruning, own-weight fine-tuning, adaptive quantization).

The passes serve both compressors (the plan here, the search in ``search/``), so there is one
implementation of every pass.
"""

from pipeline.compress._base import Compressed, Compressor
from pipeline.compress._patterns import Pattern, group_ids, prune_step
from pipeline.compress._plan import PlanCompressor
from pipeline.compress._task import (
    host_commit,
    layers_on_held_positions,
    load_task_tensors,
    task_tensors,
    trained_layers,
)
from pipeline.compress._tsn import (
    CompressContext,
    LayerResult,
    finetune_own,
    layer_snapshot,
    prune,
    quantize,
    summarize,
)

__all__ = [
    "CompressContext",
    "Compressed",
    "Compressor",
    "host_commit",
    "LayerResult",
    "Pattern",
    "PlanCompressor",
    "finetune_own",
    "group_ids",
    "layer_snapshot",
    "layers_on_held_positions",
    "load_task_tensors",
    "prune",
    "prune_step",
    "quantize",
    "summarize",
    "task_tensors",
    "trained_layers",
]
