"""A model built by TVM: runs locally, on a remote device over RPC, or is export-only (aarch64).

Every run and timing first sets TVM's runtime pool to the model's ``threads`` (see ``runtime``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._base import CompiledModel
from ..errors import TargetUnavailable
from ..numerics import NumericsReport
from ..targets import cross_compiler_path
from ._api import load
from .rpc import call_with_retries, connect
from .runtime import quiet_vm_serialization, set_threads

__all__ = ["TVMModel", "LIBRARY_NAME"]

logger = logging.getLogger(__name__)
LIBRARY_NAME = "model.so"


@dataclass
class TVMModel(CompiledModel):
    executable: Any = None
    numerics: NumericsReport | None = None
    rpc_timeout_s: float = 60.0
    rpc_retries: int = 2
    _vm: Any = field(default=None, repr=False)
    _dev: Any = field(default=None, repr=False)
    _session: Any = field(default=None, repr=False)

    # ---- deployment ------------------------------------------------------------------------
    def export(self, folder: Path) -> dict[str, str]:
        """Write the compiled library (cross-linked for aarch64) to ``folder/model.so``."""
        folder.mkdir(parents=True, exist_ok=True)
        cc = cross_compiler_path(self.target)
        kwargs = {}
        if cc is not None:
            kwargs["fcompile"] = load().cc.cross_compiler(cc)
        with quiet_vm_serialization():
            self.executable.export_library(str(folder / LIBRARY_NAME), **kwargs)
        return {"library": LIBRARY_NAME}

    # ---- execution -------------------------------------------------------------------------
    def _connect(self) -> None:
        api = load()
        if self.target.kind == "aarch64":
            raise TargetUnavailable(
                f"target {self.target.name!r} is export-only here: to run it, register the "
                "device with a TVM RPC tracker and compile for an rpc target with "
                "remote_arch='aarch64'."
            )
        if self.target.kind == "rpc":
            with tempfile.TemporaryDirectory(prefix="taskpack-rpc-") as tmp:
                self.export(Path(tmp))
                library = (Path(tmp) / LIBRARY_NAME).read_bytes()
            session = connect(self.target, self.rpc_timeout_s)
            # The bytes, not the path: RPCSession.upload(path) never closes the file it reads.
            # It takes a bytearray (bytes would be taken for a path) and then needs `target`.
            session.upload(bytearray(library), target=LIBRARY_NAME)
            lib = session.load_module(LIBRARY_NAME)
            self._session, self._dev = session, session.cpu()
            self._vm = api.relax.VirtualMachine(lib, self._dev)
            return
        self._dev = api.tvm.cuda(0) if self.target.kind == "cuda" else api.tvm.cpu(0)
        self._vm = api.relax.VirtualMachine(self.executable, self._dev)

    def _reset(self, _err: object = None) -> None:
        self._vm = self._dev = self._session = None

    def _call(self, fn):  # noqa: ANN001, ANN202
        if self.target.kind != "rpc":
            if self._vm is None:
                self._connect()
            set_threads(self.threads)
            return fn()

        def attempt():  # noqa: ANN202
            if self._vm is None:
                self._connect()
            set_threads(self.threads, self._session)
            return fn()

        return call_with_retries(
            attempt, timeout_s=self.rpc_timeout_s, retries=self.rpc_retries, on_retry=self._reset
        )

    def _input(self, x: torch.Tensor):  # noqa: ANN202
        api = load()
        return api.tvm.runtime.tensor(np.ascontiguousarray(x.detach().cpu().numpy()), self._dev)

    def bind(self, x: torch.Tensor) -> Callable[[], Any]:
        """A zero-argument call running one inference on ``x``, for timing a Python call per
        inference (``benchmarks/latency.py``): ``x`` is converted to a TVM array once, the output
        stays a TVM array, the thread pool is set as for :meth:`run`. Local targets only."""
        if self.target.kind == "rpc":
            raise TargetUnavailable(
                f"bind() runs locally; target {self.target.name!r} is behind RPC (use measure()).")
        inp = self._call(lambda: self._input(x))  # connects, sets the pool
        main, threads = self._vm["main"], self.threads

        def call() -> Any:  # noqa: ANN401 - a TVM array
            set_threads(threads)
            return main(inp)

        return call

    def run(self, x: torch.Tensor) -> torch.Tensor:
        def go() -> torch.Tensor:
            out = self._vm["main"](self._input(x))
            if not hasattr(out, "numpy"):  # a tuple of outputs; taskpack models have one
                out = out[0]
            return torch.from_numpy(out.numpy().copy())

        return self._call(go)

    def time_per_run(self, x: torch.Tensor, number: int) -> float:
        def go() -> float:
            timer = self._vm.time_evaluator("main", self._dev, number=number, repeat=1)
            return float(timer(self._input(x)).mean)

        return self._call(go)
