"""The fused CPU kernels of masked training (``_kernels.c``), built and loaded with ctypes.

The library is compiled on first use with the system C compiler (``$CC``, else ``cc``) into
``~/.cache/taskpack/kernels/``, named by a hash of the source, the compiler and the CPU's
flags, so a copied home directory never runs code built for another CPU. A failed build logs
one warning and torch ops are used; ``TASKPACK_KERNELS=torch`` turns the kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("_kernels.c")
# -fopenmp: the kernels share PyTorch's libgomp thread pool (see run_jobs in _kernels.c)
_FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-fopenmp"]
_UNSET = object()
_LIB: object = _UNSET  # ctypes.CDLL, None (unavailable) or _UNSET (not tried yet)


def kernels_dir() -> Path:
    return Path.home() / ".cache" / "taskpack" / "kernels"


def _cpu_id() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def _build() -> ctypes.CDLL | None:
    cc = os.environ.get("CC", "cc")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("no C compiler (%s: %s): masked training uses torch ops (slower)", cc, exc)
        return None
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, version.encode(), _cpu_id().encode(),
                                     " ".join(_FLAGS).encode()])).hexdigest()[:16]
    lib = kernels_dir() / f"masked-{key}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        # build beside the target and rename: concurrent processes never load a half file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
        os.close(fd)
        try:
            done = subprocess.run([cc, *_FLAGS, "-o", tmp, str(_SOURCE)], capture_output=True,
                                  text=True, timeout=120)
            if done.returncode != 0:
                log.warning("building the masked-training kernels failed (%s): torch ops are "
                            "used (slower)", done.stderr.strip().splitlines()[-1:] or "?")
                return None
            os.replace(tmp, lib)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("building the masked-training kernels failed (%s): torch ops are "
                        "used (slower)", exc)
            return None
        finally:
            Path(tmp).unlink(missing_ok=True)
    try:
        cdll = ctypes.CDLL(str(lib))
    except OSError as exc:
        log.warning("loading %s failed (%s): torch ops are used (slower)", lib, exc)
        return None
    f32, i64, ptr, cint = ctypes.c_float, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    cdll.tp_kth_largest_abs.restype = f32
    cdll.tp_kth_largest_abs.argtypes = [ptr, i64, i64, cint]
    cdll.tp_masked_weight.restype = None
    cdll.tp_masked_weight.argtypes = [ptr, ptr, ptr, f32, ptr, i64, cint]
    cdll.tp_masked_grad.restype = None
    cdll.tp_masked_grad.argtypes = [ptr, ptr, ptr, ptr, ptr, f32, ptr, ptr, i64, cint]
    cdll.tp_kth_largest_abs_near.restype = f32
    cdll.tp_kth_largest_abs_near.argtypes = [ptr, i64, i64, f32, f32, cint]
    return cdll


def library() -> ctypes.CDLL | None:
    """The fused kernels, built on first use; None when they are off or unavailable."""
    global _LIB
    if os.environ.get("TASKPACK_KERNELS", "") == "torch":
        return None
    if _LIB is _UNSET:
        _LIB = _build()
    return _LIB  # type: ignore[return-value]


def kernel_name() -> str:
    """What masked training runs on the CPU: ``fused-c`` or ``torch`` (recorded per run)."""
    return "fused-c" if library() is not None else "torch"


def fusable(floats: list[torch.Tensor | None], bools: list[torch.Tensor | None]) -> bool:
    """Whether the kernels can take these tensors: on the CPU, contiguous, float32 where the C
    code reads floats and bool where it reads bytes (None: not passed)."""
    def ok(t: torch.Tensor | None, dtype: torch.dtype) -> bool:
        return t is None or (t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous())

    return (all(ok(t, torch.float32) for t in floats)
            and all(ok(t, torch.bool) for t in bools))


def ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def kth_largest_abs(s: torch.Tensor, k: int,
                    near: tuple[float, float] | None = None) -> float | None:
    """The exact k-th largest of ``|s|`` by the fused kernel; None when the kernel cannot take
    ``s`` (the caller uses torch), or, with ``near = (lo, hi)``, when the answer is not in
    [lo, hi] (the caller searches everything)."""
    lib = library()
    if lib is None or not fusable([s], []):
        return None
    if near is None:
        value = lib.tp_kth_largest_abs(s.data_ptr(), s.numel(), k, torch.get_num_threads())
    else:
        value = lib.tp_kth_largest_abs_near(s.data_ptr(), s.numel(), k, near[0], near[1],
                                            torch.get_num_threads())
    return None if value < 0 else value  # < 0: not in the band, or out of memory
