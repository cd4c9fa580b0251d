"""ONNX files of bundles take any batch, BatchNorm with batch statistics included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from compilers.export import export_onnx

from .conftest import tiny_cnn


def test_batch_statistics_norms_export_for_any_batch(tmp_path: Path) -> None:
    """Stateless norms (no running statistics) normalize with each batch's statistics: the ONNX
    model must do the same at batches other than the one it was exported with."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = nn.Sequential(*tiny_cnn()[:5], nn.Linear(64, 8),
                          nn.BatchNorm1d(8, track_running_stats=False), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[6].weight.uniform_(0.5, 2)
        model[6].bias.uniform_(-1, 1)
    export_onnx(model, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (3, 7):
        x = torch.randn(batch, 1, 8, 8)
        got = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert model[1].running_mean is None  # the module itself is left as it was
