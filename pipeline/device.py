"""Where training runs: the device, its threads, precision and determinism (docs/training.md).

``train.device: auto`` picks CUDA when PyTorch sees a GPU, else the CPU. The model, the method's
masks and scores, the task's data and the optimizer state live on that device for the whole run;
the store is host memory, so tensors cross exactly twice per task: into the store at commit
(``pipeline.stages.commit_task``) and back when the method reads the store (``Method.
from_store``). Evaluation of a committed task moves the rebuilt weights to the input's device.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass

import torch

from compilers.threads import all_cores
from pipeline.errors import InputError
from pipeline.models import kernel_name
from pipeline.recipe import TrainConfig

__all__ = ["TrainDevice", "apply_settings", "resolve_device"]


@dataclass(frozen=True)
class TrainDevice:
    """The resolved training device and the numeric settings that go with it."""

    device: torch.device
    threads: int
    bf16: bool
    deterministic: bool

    @classmethod
    def host(cls) -> TrainDevice:
        """The CPU with the process's current threads, fp32 (a session built by hand)."""
        return cls(torch.device("cpu"), torch.get_num_threads(), False, False)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision: bf16 autocast when asked, else fp32 (a no-op)."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def describe(self) -> str:
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            return f"cuda ({name}){', bf16' if self.bf16 else ''}"
        return (f"cpu, {self.threads} thread(s){', bf16' if self.bf16 else ''}, "
                f"{kernel_name()} masked-training kernels")


def resolve_device(cfg: TrainConfig) -> TrainDevice:
    """``train.device`` as a concrete device; a CUDA recipe on a machine without one is an input
    error (one line), not a crash in the first step."""
    want = cfg.device
    has_cuda = torch.cuda.is_available()
    if want == "cuda" and not has_cuda:
        raise InputError("train.device is cuda but PyTorch sees no GPU here "
                         f"(torch {torch.__version__}); use device: auto or cpu")
    kind = "cuda" if want == "cuda" or (want == "auto" and has_cuda) else "cpu"
    threads = cfg.threads or all_cores()
    return TrainDevice(torch.device(kind), threads, cfg.precision == "bf16", cfg.deterministic)


def apply_settings(dev: TrainDevice) -> None:
    """Set the process-wide numeric settings of ``dev`` (a run owns its process).

    fp32 means fp32: TF32 matmuls and convolutions are off on CUDA (they would round inputs to
    10 mantissa bits and change every committed accuracy between GPU generations); cuDNN's
    autotuner stays off, so a process picks the same convolution algorithms as the last one.
    """
    torch.set_num_threads(dev.threads)
    if dev.device.type == "cpu":
        keep_freed_memory()
    if dev.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; it must be set before first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(dev.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc refuses more on 64-bit


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks up to 32 MB for reuse instead of returning them to the OS.

    A training step allocates and frees tensors the size of a layer's weight (16 MB for
    2000x2000) several times; by default glibc maps the second one of a size fresh each time
    and frees it back, so every step pays a page fault per 4 KB and the kernel's zeroing
    (measured here: two 4M-float products took 7-20 ms instead of 3.7 ms). The process keeps
    its peak memory instead. Returns whether the allocator took the settings (not glibc: no).
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    return bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok)
