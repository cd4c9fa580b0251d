"""Named compile targets.

A :class:`Target` is plain data (no TVM objects) so recipes, caches and manifests can hash and
serialize it; the TVM backend turns it into a ``tvm.target.Target`` when it compiles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from typing import Literal

from .errors import TargetUnavailable

__all__ = ["TargetKind", "Target", "device_fingerprint", "cross_compiler_path"]

TargetKind = Literal["host", "aarch64", "cuda", "rpc"]

# Debian's cross compiler (package gcc-aarch64-linux-gnu); used to link aarch64 libraries.
AARCH64_CC = "aarch64-linux-gnu-gcc"
AARCH64_TRIPLE = "aarch64-linux-gnu"


@dataclass(frozen=True)
class Target:
    """A device to compile for.

    ``kind`` picks the code generator: ``host`` (LLVM for this CPU; ``mcpu`` detected when None),
    ``aarch64`` (LLVM cross-compiled, linked with ``aarch64-linux-gnu-gcc``; export only unless
    reached over RPC), ``cuda`` and ``rpc`` (a device behind a TVM RPC tracker, identified by
    ``rpc_key``; ``remote_arch`` says which code to generate for it). ``threads`` is how many
    threads a compiled model runs with (None: ``compilers.threads``' default rule); it does not
    change the generated code, so it is not part of :meth:`key`.
    """

    name: str
    kind: TargetKind = "host"
    mcpu: str | None = None
    num_cores: int | None = None
    rpc_host: str | None = None
    rpc_port: int | None = None
    rpc_key: str | None = None
    remote_arch: Literal["host", "aarch64"] = "host"
    extra: dict[str, str] = field(default_factory=dict)
    threads: int | None = None  # runtime threads of compiled models; None: the default rule

    def __post_init__(self) -> None:
        if self.kind not in ("host", "aarch64", "cuda", "rpc"):
            raise ValueError(
                f"`kind` must be one of host|aarch64|cuda|rpc, but got {self.kind!r}."
            )
        if self.kind == "rpc" and not (self.rpc_host and self.rpc_port and self.rpc_key):
            raise ValueError(
                "an rpc target needs `rpc_host`, `rpc_port` and `rpc_key`, but got "
                f"(rpc_host={self.rpc_host!r}, rpc_port={self.rpc_port!r}, "
                f"rpc_key={self.rpc_key!r})."
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"`threads >= 1` must hold (or None), but got {self.threads}.")

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def host(cls, name: str = "host", mcpu: str | None = None,
             threads: int | None = None) -> Target:
        return cls(name=name, kind="host", mcpu=mcpu, num_cores=os.cpu_count(), threads=threads)

    @classmethod
    def aarch64(cls, name: str = "aarch64", mcpu: str = "cortex-a72") -> Target:
        return cls(name=name, kind="aarch64", mcpu=mcpu)

    @classmethod
    def cuda(cls, name: str = "cuda") -> Target:
        return cls(name=name, kind="cuda")

    @classmethod
    def rpc(
        cls,
        host: str,
        port: int,
        key: str,
        *,
        name: str | None = None,
        remote_arch: Literal["host", "aarch64"] = "host",
        mcpu: str | None = None,
    ) -> Target:
        return cls(
            name=name or f"rpc:{key}",
            kind="rpc",
            rpc_host=host,
            rpc_port=port,
            rpc_key=key,
            remote_arch=remote_arch,
            mcpu=mcpu,
        )

    # ---- properties ----------------------------------------------------------------------
    @property
    def arch(self) -> Literal["host", "aarch64", "cuda"]:
        """The instruction set the code is generated for."""
        if self.kind == "rpc":
            return self.remote_arch
        return self.kind

    @property
    def runs_locally(self) -> bool:
        """Whether compiled code can run in this process (host CPU or a local GPU)."""
        return self.kind in ("host", "cuda")

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Stable short hash of the code-generation settings (not of the RPC address)."""
        codegen = {"arch": self.arch, "mcpu": self.mcpu, "extra": sorted(self.extra.items())}
        return hashlib.sha256(json.dumps(codegen, sort_keys=True).encode()).hexdigest()[:16]


def cross_compiler_path(target: Target) -> str | None:
    """Path of the C compiler that links libraries for ``target``; None means the host's."""
    if target.arch != "aarch64":
        return None
    path = shutil.which(AARCH64_CC)
    if path is None:
        raise TargetUnavailable(
            f"target {target.name!r} needs the cross compiler `{AARCH64_CC}` on PATH, but it "
            "was not found; install Debian's `gcc-aarch64-linux-gnu`."
        )
    return path


def device_fingerprint() -> str:
    """A readable id of the measuring machine: CPU model, cores, OS and Python machine."""
    model = platform.processor() or "unknown-cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} | {os.cpu_count()} cores | {platform.system()} {platform.machine()}"
