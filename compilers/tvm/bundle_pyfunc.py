"""An MLflow pyfunc model that serves a taskpack bundle with ONNX Runtime or TVM.

Logged as MLflow "model from code" (``mlflow.pyfunc.log_model(python_model=<this file>)``): MLflow
copies this file into the model, so loading and serving it (``mlflow models serve``) needs
numpy, mlflow and onnxruntime (or apache-tvm), never taskpack. It therefore imports nothing from
taskpack. The bundle folder is the model's ``bundle`` artifact.

``model_config={"runtime": "onnx"}`` (default) runs ``model.onnx`` at any batch;
``{"runtime": "tvm"}`` runs the TVM libraries, which take only their declared batch sizes: a batch
is cut into chunks of the largest declared size and the last chunk is padded with zeros to the
smallest declared size that holds it (the padding rows are dropped from the output).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

RUNTIMES = ("onnx", "tvm")


class BundleModel(PythonModel):
    """``predict(float32 [batch, C, H, W]) -> float32 [batch, classes]`` (the task's logits)."""

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts["bundle"])
        self.manifest = json.loads((folder / "manifest.json").read_text())
        self.runtime = str((context.model_config or {}).get("runtime", "onnx"))
        if self.runtime not in RUNTIMES:
            raise ValueError(f"model_config runtime must be one of {RUNTIMES}, "
                             f"but got {self.runtime!r}.")
        threads = int(self.manifest.get("threads") or 1)
        if self.runtime == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = threads
            self.session = ort.InferenceSession(str(folder / self.manifest["files"]["onnx"]),
                                                opts, providers=["CPUExecutionProvider"])
            return
        import tvm
        from tvm import relax

        tvm.get_global_func("runtime.config_threadpool")(1, threads)
        self.vms = {int(b): relax.VirtualMachine(tvm.runtime.load_module(str(folder / name)),
                                                 tvm.cpu())
                    for b, name in self.manifest["files"]["libraries"].items()}

    # model_input: np.ndarray is a hint MLflow takes as "no schema from hints" (the logged
    # signature, a float32 tensor of the bundle's shape, is the schema).
    def predict(self, context: Any, model_input: np.ndarray,
                params: dict | None = None) -> np.ndarray:
        name = self.manifest["inputs"][0]["name"]
        if isinstance(model_input, dict):  # MLflow hands a named tensor input over as a dict
            model_input = model_input[name]
        x = np.ascontiguousarray(np.asarray(model_input, dtype=np.float32))
        if self.runtime == "onnx":
            return self.session.run(None, {name: x})[0]
        return np.concatenate([self._tvm(chunk) for chunk in
                               np.array_split(x, range(max(self.vms), len(x), max(self.vms)))
                               if len(chunk)])

    def _tvm(self, chunk: np.ndarray) -> np.ndarray:
        import tvm

        batch = min(b for b in self.vms if b >= len(chunk))
        padded = np.zeros((batch, *chunk.shape[1:]), np.float32)
        padded[: len(chunk)] = chunk
        out = self.vms[batch][self.manifest["entry_function"]](tvm.runtime.tensor(padded))
        return (out if hasattr(out, "numpy") else out[0]).numpy()[: len(chunk)]


mlflow.models.set_model(BundleModel())
