"""The search's compressor passes the Compressor contract (tests/pipeline_tests).

Latency comes from a deterministic function of the compiled module passed as ``latency_fn``
(fewer nonzero weights = faster), so the contract runs in seconds; the end-to-end search test
measures real TVM builds.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from pipeline.compress import Compressor
from search import Latency, SearchCompressor
from tests.pipeline_tests.test_compressor_contract import CompressorContract


def nonzeros_latency(module: nn.Module, example: torch.Tensor) -> Latency:
    ws = [m.weight for m in module.modules() if isinstance(m, nn.Linear)]
    ms = 0.01 + sum(int((w != 0).sum()) for w in ws) / sum(w.numel() for w in ws)
    return Latency(ms, ms * 1.1)


class TestSearchCompressor(CompressorContract):
    extra: ClassVar[dict] = {"search": {
        "enabled": True, "trials": 3, "sampler": "random",
        "space": [{"match": ".*", "sparsity": [0.3, 0.6], "sparsity_step": 0.3,
                   "patterns": ["unstructured"], "bits": [8]}],
        "constraints": {"max_acc_drop": None},
        "selection": {"policy": "min_latency_within_acc_drop", "value": 100.0}}}

    def make(self, recipe) -> Compressor:  # noqa: ANN001
        return SearchCompressor(recipe, latency_fn=nonzeros_latency)


class TestSearchCompressorCLNP(TestSearchCompressor):  # "CLNP + search"
    method: ClassVar[dict] = {"kind": "clnp", "margin": 2.0, "threshold_step": 0.05}


class TestSearchCompressorNISPA(TestSearchCompressor):  # "NISPA + search"
    method: ClassVar[dict] = {"kind": "nispa", "density": 0.3, "phase_epochs": 1, "k": 4}
