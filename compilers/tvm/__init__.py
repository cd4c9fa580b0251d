"""The TVM backend: the only part of ``compilers`` that imports Apache TVM (through ``_api``).

Importing this package does not import TVM yet; the first build, kernel or runtime call does.

* ``backend``: :class:`TVMCompiler` (torch.export -> Relax -> MetaSchedule -> build), threads
* ``importer``: torch.export -> Relax with the custom ops lowered to the hand-written kernels
* ``kernels``: the hand-written TIR kernels (block-sparse linear and conv, CSR, int8)
* ``model``: :class:`TVMModel` (local, RPC or export-only runs)
* ``tuning`` / ``dense_schedule``: the persistent MetaSchedule database and the GEMV candidate
* ``rpc``: remote devices through a TVM RPC tracker
* ``runtime``: the runtime thread pool setting and the quiet executable save/load
"""

from __future__ import annotations

from ._api import available, load
from .backend import THREADS_FILE, TVMCompiler, to_tvm_target
from .importer import constant_bytes, hand_kernels, import_relax
from .model import LIBRARY_NAME, TVMModel
from .runtime import quiet_vm_serialization, set_threads
from .tuning import TuningDatabase

__all__ = [
    "LIBRARY_NAME", "THREADS_FILE", "TVMCompiler", "TVMModel", "TuningDatabase", "available",
    "constant_bytes", "hand_kernels", "import_relax", "load", "quiet_vm_serialization",
    "set_threads", "to_tvm_target",
]
