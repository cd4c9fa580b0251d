"""Runtime threads of a compiled model: the default rule and the torch setting.

Threads are part of what a latency figure means: on a small machine a thread pool's wake-up cost
swamps kernels of tens of microseconds. The count comes from ``CompileOptions.threads``, else
``Target.threads``, else the backend's default rule:

* batch 1 (latency): 1 thread;
* larger batches: the eager backend uses every core; the TVM backend measures the dense build of
  the module once at 1 thread and at every core, keeps the faster and records the choice in its
  cache folder (``threads.json``, keyed by target and workload) so the next compile reuses it.

Every ``CompiledModel`` and ``Measurement`` records the count it ran with. The TVM runtime pool
is configured in ``compilers.tvm.runtime``; ONNX Runtime sessions use
``intra_op_num_threads = inter_op_num_threads = threads``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["all_cores", "default_threads", "torch_threads"]


def all_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_threads(example_input: torch.Tensor) -> int | None:
    """1 for a batch of one; None (the backend decides) otherwise."""
    return 1 if example_input.dim() == 0 or example_input.shape[0] == 1 else None


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(n)``; the previous count is restored."""
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
