"""Packed weight store: every task's subnetwork in one versioned, checksummed file.

A committed task's value at each position of each prunable layer is zero, shared (the latest code
an earlier task wrote there) or own (a new b-bit code in the position's free bits). The file
format is described in docs/store-format.md.
"""

from pipeline.store._codebook import fit_codebook
from pipeline.store._codec import ALLOWED_BITS, LayerCommit, TaskCommit
from pipeline.store._format import MAGIC as FORMAT_MAGIC
from pipeline.store._format import VERSION as FORMAT_VERSION
from pipeline.store._report import LayerReport, StoreReport, TaskReport, format_report
from pipeline.store._store import PackedStore
from pipeline.store._write import SLEEP_ENV

__all__ = [
    "ALLOWED_BITS",
    "FORMAT_MAGIC",
    "FORMAT_VERSION",
    "SLEEP_ENV",
    "LayerCommit",
    "LayerReport",
    "PackedStore",
    "StoreReport",
    "TaskCommit",
    "TaskReport",
    "fit_codebook",
    "format_report",
]
