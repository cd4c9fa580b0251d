"""Deployable bundles: one folder per (device, task): libraries, ONNX model and manifest.

``<root>/<target name>/task-<k>/``: ``model-b<B>.so`` (a TVM library per declared batch size B;
cross-linked for aarch64), ``model.onnx`` (any batch: its first axis is the symbolic ``batch``),
the caller's extra files (e.g. ``permutation.npy``) and ``manifest.json``: entry function, input
and output names, shapes, dtypes and meaning, the declared batch sizes, task, target, TVM
version, the caller's store hash, the runtime threads, the numerics checks and, where the target
can run here or over RPC, the measured latency per batch size with its spread and whether it
converged.

Why one library per batch size rather than a symbolic batch: TVM 0.27's torch importer does turn
a dynamic ``torch.export`` dimension into a symbolic Relax shape, but MetaSchedule tunes static
shapes only and the hand-written block-sparse kernels are tiled for a fixed batch
(``kernels.bsr.kernel_tiling``), so a symbolic batch would give an untuned, untiled build
(10-60x slower, docs/compilers.md). Each library's ``main`` takes exactly its batch.

Every file comes from one prepared graph: ``apply_transforms`` with the same transforms, the
libraries from its kernel form and the ONNX model from its reference form (same layer shapes;
block-sparse layers dense-masked, int8 weights dequantized, so the ONNX model computes what the
libraries do).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
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

__all__ = ["Bundle", "export_bundle", "export_onnx", "library_name", "load_bundle", "MANIFEST",
           "ONNX_NAME"]

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"
ONNX_NAME = "model.onnx"
ENTRY_FUNCTION = "main"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
BUNDLE_VERSION = 2


def library_name(batch: int) -> str:
    """The library file of one declared batch size: ``model-b8.so``."""
    return f"model-b{batch}.so"


class _BatchStatsNorm(nn.Module):
    """A BatchNorm that normalizes with the batch's statistics (no running statistics), written
    out as mean / variance ops: the ONNX exporter's BatchNormalization in training mode needs a
    fixed batch, these ops take any batch and compute the same numbers."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps = bn.eps
        self.weight = None if bn.weight is None else nn.Parameter(bn.weight.detach().clone())
        self.bias = None if bn.bias is None else nn.Parameter(bn.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dims, keepdim=True)
        y = (x - mean) / torch.sqrt(var + self.eps)
        shape = [1, -1, *([1] * (x.dim() - 2))]
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y


def _explicit_batch_stats(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm that has no running statistics as a ``_BatchStatsNorm``
    (a copy when there is one; ``module`` itself otherwise)."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None
               for m in module.modules()):
        return module
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and child.running_mean is None:
                setattr(parent, name, _BatchStatsNorm(child))
    return module


def export_onnx(module: nn.Module, example_input: torch.Tensor, path: Path,
                opset: int | None = None) -> None:
    """``module`` as an ONNX file (input ``input``, output ``logits``, a symbolic ``batch``), as
    bundles ship it.

    ``opset``: the ONNX opset to write (None: the exporter's default, 20 with torch 2.13; runtimes
    built on older ONNX, e.g. DeepSparse 1.8, need <= 19).
    """
    # The TorchScript exporter: the dynamo one needs `onnxscript`, which taskpack does not ship.
    # torch 2.13 warns that it is deprecated on every call, and its internals warn about
    # their own deprecated helpers: DeprecationWarnings only, from this one call.
    # BatchNorm with batch statistics (stateless norms) goes out as explicit mean / variance
    # ops, which take any batch (see _BatchStatsNorm).
    module = _explicit_batch_stats(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (example_input,), str(path), dynamo=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


def _onnx_check(module: nn.Module, path: Path, x: torch.Tensor, threads: int) -> dict[str, Any]:
    """ONNX Runtime on ``x`` against the module it was exported from (max relative error)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {INPUT_NAME: x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    err = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
    return {"runtime": f"onnxruntime {ort.__version__}", "batch": int(x.shape[0]),
            "max_rel_err": err, "passed": err < 1e-4}


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
    batch_sizes: Sequence[int] = (1,),
    info: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Compile ``module`` for ``target`` at each of ``batch_sizes`` and write its bundle.

    ``example_input`` gives the per-example shape (its batch is ignored). ``info`` is merged
    into the manifest (task name, meaning of input and output, preprocessing, accuracy...);
    ``extra_files`` are written beside the libraries and listed under ``files``. Returns the
    bundle folder.
    """
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch_sizes must hold integers >= 1, but got {list(batch_sizes)}.")
    folder = Path(root) / target.name / f"task-{task}"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("model-b*.so"):  # a re-export with other batch sizes
        old.unlink()
    compiler = compiler or TVMCompiler()
    gen = torch.Generator().manual_seed(0)
    libraries: dict[str, str] = {}
    latency: dict[str, Any] = {}
    compiled = None
    for batch in sizes:
        x = torch.randn(batch, *example_input.shape[1:], generator=gen)
        options = CompileOptions(transforms=tuple(transforms), tune_trials=tune_trials,
                                 cache_dir=None if cache_dir is None else Path(cache_dir),
                                 threads=threads)
        built = compiler.compile(module, x, target, options)
        compiled = compiled or built  # the smallest batch describes the bundle
        built.export(folder)
        os.replace(folder / LIBRARY_NAME, folder / library_name(batch))
        libraries[str(batch)] = library_name(batch)
        if target.kind != "aarch64":
            latency[str(batch)] = measure(built, x).to_dict() | {"numerics": (
                built.numerics.to_dict() if built.numerics else None)}
    assert compiled is not None  # sizes is not empty
    onnx_module = apply_transforms(module, tuple(transforms), kernels=False)
    x_first = torch.randn(sizes[0], *example_input.shape[1:], generator=gen)
    export_onnx(onnx_module, x_first, folder / ONNX_NAME)
    x_last = torch.randn(max(sizes[-1], 2), *example_input.shape[1:], generator=gen)
    onnx_numerics = _onnx_check(onnx_module, folder / ONNX_NAME, x_last, compiled.threads)
    with torch.no_grad():
        out_shape = list(onnx_module(x_first).shape[1:])
    files: dict[str, Any] = {"libraries": libraries, "onnx": ONNX_NAME}
    for name, data in (extra_files or {}).items():
        (folder / name).write_bytes(data)
        files[name.rsplit(".", 1)[0]] = name
    first = latency.get(str(sizes[0]))
    manifest = {
        "bundle_version": BUNDLE_VERSION,
        "task": task,
        "entry_function": ENTRY_FUNCTION,
        "batch_sizes": sizes,
        "batch_note": "model.onnx takes any batch; each TVM library model-b<B>.so takes exactly "
                      "batch B (MetaSchedule and the block-sparse kernels are specialised per "
                      "batch): pad or split other batches",
        "inputs": [{"name": INPUT_NAME, "shape": ["batch", *example_input.shape[1:]],
                    "dtype": str(example_input.dtype).removeprefix("torch.")}],
        "outputs": [{"name": OUTPUT_NAME, "shape": ["batch", *out_shape], "dtype": "float32"}],
        "target": target.to_dict(),
        "tvm_target": compiled.notes.get("tvm_target"),
        "tvm_version": load().version,
        "store_hash": store_hash,
        "input_shape": [sizes[0], *example_input.shape[1:]],
        "input_dtype": str(example_input.dtype).removeprefix("torch."),
        "transforms": list(compiled.transforms),
        "tuned": compiled.tuned,
        "tuning_db_hash": compiled.tuning_db_hash,
        "threads": compiled.threads,
        "files": files,
        "numerics": compiled.numerics.to_dict() if compiled.numerics else None,
        "numerics_note": None if compiled.numerics else "not run: export-only target",
        "onnx_numerics": onnx_numerics,
        "latency": None if first is None else {k: v for k, v in first.items() if k != "numerics"},
        "latency_by_batch": latency or None,
        "latency_converged": None if not latency else all(m["converged"]
                                                          for m in latency.values()),
    }
    for key, value in (info or {}).items():
        if key in ("inputs", "outputs"):  # meaning and other notes, per input/output
            for entry, extra in zip(manifest[key], value, strict=True):
                entry.update(extra)
        else:
            manifest[key] = value
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    logger.info("wrote bundle %s", folder)
    return folder


@dataclass
class Bundle:
    """A bundle loaded back from disk; ``run`` executes its TVM library on the host CPU."""

    path: Path
    manifest: dict[str, Any]
    _vms: dict[int, Any] = field(default_factory=dict)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x``, whose batch must be one of the declared ``batch_sizes``."""
        api = load()
        if self.manifest["target"]["kind"] == "aarch64":
            raise TargetUnavailable(
                f"bundle {self.path} was built for aarch64 and cannot run on this host."
            )
        batch = int(x.shape[0])
        library = self.manifest["files"]["libraries"].get(str(batch))
        if library is None:
            raise ValueError(f"the batch must be one of the bundle's batch_sizes "
                             f"{self.manifest['batch_sizes']}, but got {batch}.")
        if batch not in self._vms:
            with quiet_vm_serialization():
                lib = api.tvm.runtime.load_module(str(self.path / library))
                self._vms[batch] = api.relax.VirtualMachine(lib, api.tvm.cpu(0))
        set_threads(int(self.manifest.get("threads") or 1))
        arr = api.tvm.runtime.tensor(np.ascontiguousarray(x.detach().cpu().numpy()))
        out = self._vms[batch][self.manifest["entry_function"]](arr)
        if not hasattr(out, "numpy"):
            out = out[0]
        return torch.from_numpy(out.numpy().copy())

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "manifest": self.manifest}


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
    libraries = manifest.get("files", {}).get("libraries")
    if not isinstance(libraries, dict) or sorted(map(int, libraries)) != manifest["batch_sizes"]:
        raise ValueError(
            f"manifest must name one library per batch size {manifest.get('batch_sizes')}, but "
            f"got {manifest.get('files')}."
        )
    return Bundle(folder, manifest)
