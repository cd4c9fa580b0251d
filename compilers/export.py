"""Deployable bundles: one folder per (device, task): library, ONNX model and manifest.

``<root>/<target name>/task-<k>/``: ``model.so`` (TVM library; cross-linked for aarch64),
``model.onnx`` (for other runtimes) and ``manifest.json`` (task, target, TVM version, the caller's
store hash, the runtime threads, the numerics check and, where the target can run here or over
RPC, the measured latency with its spread).

Both files come from one prepared graph: ``apply_transforms`` with the same transforms, the library
from its kernel form and the ONNX model from its reference form (same layer shapes; block-sparse
layers dense-masked, int8 weights dequantized, so the ONNX model computes what the library does).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._base import CompileOptions
from .errors import TargetUnavailable
from .measure import measure
from .targets import Target
from .transforms import apply_transforms
from .tvm import LIBRARY_NAME, TVMCompiler, load, quiet_vm_serialization, set_threads

__all__ = ["Bundle", "export_bundle", "export_onnx", "load_bundle", "MANIFEST", "ONNX_NAME"]

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"
ONNX_NAME = "model.onnx"
BUNDLE_VERSION = 1


def export_onnx(module: nn.Module, example_input: torch.Tensor, path: Path,
                opset: int | None = None) -> None:
    """``module`` as an ONNX file (input ``input``, output ``logits``), as bundles ship it.

    ``opset``: the ONNX opset to write (None: the exporter's default, 20 with torch 2.13; runtimes
    built on older ONNX, e.g. DeepSparse 1.8, need <= 19).
    """
    # The TorchScript exporter: the dynamo one needs `onnxscript`, which taskpack does not ship.
    # torch 2.13 warns that it is deprecated on every call, and its internals warn about
    # their own deprecated helpers: DeprecationWarnings only, from this one call.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (example_input,), str(path), dynamo=False,
            input_names=["input"], output_names=["logits"], opset_version=opset,
        )


def export_bundle(
    module: nn.Module,
    example_input: torch.Tensor,
    target: Target,
    root: str | Path,
    *,
    task: int,
    store_hash: str,
    transforms: tuple[str, ...] = ("shrink", "block_sparse"),
    tune_trials: int = 0,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    compiler: TVMCompiler | None = None,
) -> Path:
    """Compile ``module`` for ``target`` and write its bundle; returns the bundle folder."""
    folder = Path(root) / target.name / f"task-{task}"
    folder.mkdir(parents=True, exist_ok=True)
    compiler = compiler or TVMCompiler()
    options = CompileOptions(transforms=tuple(transforms), tune_trials=tune_trials,
                             cache_dir=None if cache_dir is None else Path(cache_dir),
                             threads=threads)
    compiled = compiler.compile(module, example_input, target, options)
    files = compiled.export(folder)
    onnx_module = apply_transforms(module, options.transforms, kernels=False)
    export_onnx(onnx_module, example_input, folder / ONNX_NAME)
    files["onnx"] = ONNX_NAME
    latency = None
    if target.kind != "aarch64":
        latency = measure(compiled, example_input).to_dict()
    manifest = {
        "bundle_version": BUNDLE_VERSION,
        "task": task,
        "target": target.to_dict(),
        "tvm_target": compiled.notes.get("tvm_target"),
        "tvm_version": load().version,
        "store_hash": store_hash,
        "input_shape": list(example_input.shape),
        "input_dtype": str(example_input.dtype).removeprefix("torch."),
        "transforms": list(compiled.transforms),
        "tuned": compiled.tuned,
        "tuning_db_hash": compiled.tuning_db_hash,
        "threads": compiled.threads,
        "files": files,
        "numerics": compiled.numerics.to_dict() if compiled.numerics else None,
        "numerics_note": None if compiled.numerics else "not run: export-only target",
        "latency": latency,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    logger.info("wrote bundle %s", folder)
    return folder


@dataclass
class Bundle:
    """A bundle loaded back from disk; ``run`` executes the TVM library on the host CPU."""

    path: Path
    manifest: dict[str, Any]
    _vm: Any = None

    def run(self, x: torch.Tensor) -> torch.Tensor:
        api = load()
        if self.manifest["target"]["kind"] == "aarch64":
            raise TargetUnavailable(
                f"bundle {self.path} was built for aarch64 and cannot run on this host."
            )
        if self._vm is None:
            with quiet_vm_serialization():
                lib = api.tvm.runtime.load_module(
                    str(self.path / self.manifest["files"]["library"]))
                self._vm = api.relax.VirtualMachine(lib, api.tvm.cpu(0))
        set_threads(int(self.manifest.get("threads") or 1))
        arr = api.tvm.runtime.tensor(np.ascontiguousarray(x.detach().cpu().numpy()))
        out = self._vm["main"](arr)
        if not hasattr(out, "numpy"):
            out = out[0]
        return torch.from_numpy(out.numpy().copy())

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), **asdict(self)}


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle folder written by :func:`export_bundle`."""
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"a bundle folder must contain {MANIFEST}, but {folder} does not.")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("bundle_version") != BUNDLE_VERSION:
        raise ValueError(
            f"bundle_version must be {BUNDLE_VERSION}, but got {manifest.get('bundle_version')!r}."
        )
    if manifest["files"].get("library") != LIBRARY_NAME:
        raise ValueError(
            f"manifest must name the library {LIBRARY_NAME}, but got {manifest['files']}."
        )
    return Bundle(folder, manifest)
