"""Continual-learning task streams over MNIST-family and local image data sets (docs/recipes.md).

``build_stream(cfg.benchmark)`` returns a lazy ``Stream``; ``stream.load(i)`` builds task ``i``
with its train / val (carved from train) / test splits. ``fetch`` fills the data cache with the
data sets that can be fetched here (MNIST, Fashion-MNIST); everything else is read from
``benchmark.data_dir``. ``pipeline.data.testing`` writes tiny fake data sets in the real layouts.
"""

from pipeline.data._cache import DATASETS_FETCHABLE, default_cache_dir
from pipeline.data._fetch import fetch
from pipeline.data._streams import build_stream
from pipeline.data._types import Split, Stream, Task

__all__ = [
    "DATASETS_FETCHABLE",
    "Split",
    "Stream",
    "Task",
    "build_stream",
    "default_cache_dir",
    "fetch",
]
