"""Self-contained bundles: export from a store alone, manifest, batch sizes, README, MLflow.

One tiny real run (2 Permuted-MNIST tasks, MLP 784-32-32) tracked in a throwaway MLflow sqlite
database; its store is copied alone into an empty folder and exported from there.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.data import build_stream
from pipeline.data._seeding import rng_for
from pipeline.recipe import load_recipe
from pipeline.runner import run_recipe
from pipeline.store import PackedStore
from pipeline.tracking import build_tracker

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.tvm]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("bundles")
    recipe = load_recipe(REPO / "recipes/quickstart.yaml", [
        "benchmark.train_limit=600", "benchmark.test_limit=200", "train.epochs=1",
        "benchmark.tasks=2", "model.hidden=[32, 32]", "search.enabled=false",
        f"tracking.uri=sqlite:///{tmp / 'mlruns/mlflow.db'}",
        f"tracking.artifact_location={tmp / 'mlruns/artifacts'}",
        f"output_dir={tmp / 'runs'}", "targets=[{name: host, backend: tvm}]"])
    result = run_recipe(recipe, tracker=build_tracker(recipe.tracking))
    alone = tmp / "elsewhere" / "store.tpk"  # no recipe.yaml, no results.json beside it
    alone.parent.mkdir()
    shutil.copy(result.store_path, alone)
    out = tmp / "mlruns" / "exports"
    rc = main(["export", str(alone), "--all-tasks", "--target", "host", "--out", str(out)])
    return recipe, result, alone, out, rc


def test_a_copied_store_exports_alone_with_a_full_manifest(exported) -> None:  # noqa: ANN001
    recipe, result, alone, out, rc = exported
    assert rc == 0
    store = PackedStore.open(alone)
    assert store.section_names()[:2] == ["model", "spec"]
    m = json.loads((out / "host/task-1/manifest.json").read_text())
    assert m["bundle_version"] == 2 and m["entry_function"] == "main"
    assert m["task"] == 1 and m["task_name"] == "pmnist-1" and m["num_classes"] == 10
    assert m["inputs"] == [{"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32",
                            "meaning": m["inputs"][0]["meaning"]}]
    assert m["outputs"][0]["name"] == "logits" and m["outputs"][0]["shape"] == ["batch", 10]
    assert m["batch_sizes"] == [1, 8]
    assert m["files"]["libraries"] == {"1": "model-b1.so", "8": "model-b8.so"}
    assert set(m["latency_by_batch"]) == {"1", "8"} and isinstance(m["latency_converged"], bool)
    assert m["spec_source"] == "store spec"
    # committed validation accuracy from the store (no results.json beside the copy)
    assert m["accuracy"]["val_committed"] == store.task_meta(1)["acc_val_quantized"]
    steps = m["preprocessing"]["steps"]
    assert [s["op"] for s in steps] == ["scale", "permute_pixels"]
    perm = np.load(out / "host/task-1" / steps[1]["permutation"])
    assert np.array_equal(perm, rng_for(0, "permutation", 1).permutation(784))


def test_manifest_preprocessing_on_raw_images_gives_the_committed_accuracy(exported) -> None:  # noqa: ANN001
    """Raw uint8 test images through the manifest's steps, then ONNX Runtime at batch 8 and
    at an odd batch: the accuracy the run measured from the store at commit."""
    import onnxruntime as ort

    recipe, result, _, out, _ = exported
    from pipeline.data._cache import load_cached
    from pipeline.data._types import split_indices

    folder = out / "host/task-1"
    m = json.loads((folder / "manifest.json").read_text())
    raw = load_cached("mnist", recipe.benchmark.cache_dir)
    stream = build_stream(recipe.benchmark)
    _, _, idx = split_indices(len(raw.train_y), len(raw.test_y), stream._policy, 1)
    images, labels = raw.test_x[idx], raw.test_y[idx]
    x = images.astype(np.float32) / m["preprocessing"]["steps"][0]["divide_by"]
    x = x.reshape(len(x), -1)[:, np.load(folder / "permutation.npy")].reshape(x.shape)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    n = len(x) - len(x) % 8
    logits = np.concatenate([sess.run(None, {"input": x[i:i + 8]})[0] for i in range(0, n, 8)]
                            + [sess.run(None, {"input": x[n:]})[0]])
    acc = 100.0 * float((logits.argmax(1) == labels).mean())
    assert acc == pytest.approx(result.matrix.rows[1][1], abs=1e-6)


def test_tvm_libraries_match_onnx_at_each_declared_batch(exported) -> None:  # noqa: ANN001
    import onnxruntime as ort

    from compilers import load_bundle

    folder = exported[3] / "host/task-0"
    bundle = load_bundle(folder)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 8):
        x = torch.rand(batch, 1, 28, 28)
        want = sess.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(bundle.run(x).numpy(), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"batch must be one of the bundle's batch_sizes"):
        bundle.run(torch.rand(3, 1, 28, 28))


def test_readme_example_runs_on_an_exported_bundle(exported) -> None:  # noqa: ANN001
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Run a bundle without taskpack"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None and len(code.group(1).strip().splitlines()) <= 10
    cwd = exported[3].parent.parent  # the README's path: mlruns/exports/host/task-0
    # -I: isolated from PYTHONPATH and the repository (the example needs no taskpack)
    proc = subprocess.run([sys.executable, "-I", "-c", code.group(1)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    err, *_ = proc.stdout.split()
    assert float(err) < 1e-4


def test_exports_are_logged_to_the_task_run_and_registered(exported) -> None:  # noqa: ANN001
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.exports import quiet_pyfunc

    recipe = exported[0]
    client = MlflowClient(recipe.tracking.uri)
    exp = client.get_experiment_by_name(recipe.tracking.experiment)
    task_run = client.search_runs([exp.experiment_id],
                                  filter_string="tags.`taskpack.task` = '1'")[0]
    assert task_run.info.status == "FINISHED"
    assert "export/host/latency_ms_b8" in task_run.data.metrics
    listed = {a.path for a in client.list_artifacts(task_run.info.run_id, "exports/host/task-1")}
    assert {"exports/host/task-1/manifest.json", "exports/host/task-1/model.onnx",
            "exports/host/task-1/model-b8.so"} <= listed
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(recipe.tracking.uri)
    try:
        x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
        from compilers import load_bundle

        bundle = load_bundle(exported[3] / "host/task-1")
        padded = np.concatenate([x, np.zeros((3, 1, 28, 28), np.float32)])
        want = bundle.run(torch.from_numpy(padded)).numpy()[:5]
        for runtime in ("onnx", "tvm"):  # TVM: the 5 rows padded to the batch-8 library
            with quiet_pyfunc():
                model = mlflow.pyfunc.load_model("models:/quickstart-host-task-1/1",
                                                 model_config={"runtime": runtime})
            got = model.predict(x)
            assert got.shape == (5, 10)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    finally:
        mlflow.set_tracking_uri(previous)


def test_old_store_without_spec_needs_a_recipe(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "old.tpk"
    PackedStore.create(store, {"fc": (4, 8)}, "mlp-test", 32)  # no spec: as before the section
    assert main(["export", str(store), "--all-tasks", "--target", "host"]) == 2
    assert "carries no spec" in capsys.readouterr().err
