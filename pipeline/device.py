"""Where training runs: the device, its threads, precision and determinism (docs/training.md).

``train.device: auto`` picks CUDA when PyTorch sees a GPU, else the CPU. The model, the method's
masks and scores, the task's data and the optimizer state live on that device for the whole run;
the store is host memory, so tensors cross exactly twice per task: into the store at commit
(``pipeline.stages.commit_task``) and back when the method reads the store (``Method.
from_store``). Evaluation of a committed task moves the rebuilt weights to the input's device.
"""

from __future__ import annotations

import contextlib
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
    if dev.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; it must be set before first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(dev.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
