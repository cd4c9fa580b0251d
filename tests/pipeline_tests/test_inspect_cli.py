"""`taskpack inspect` and bad store files: one clear line and exit code 2, nothing overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.store import LayerCommit, PackedStore, TaskCommit


def _store(path: Path) -> Path:
    store = PackedStore.create(path, {"fc": (4, 8)}, "mlp-test", 32)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0] = True
    values = torch.zeros(4, 8)
    values[0] = torch.tensor([0.5, -0.5, 0.5, 0.25, -0.25, 0.5, 0.25, -0.5])
    store.commit(TaskCommit(0, {"fc": LayerCommit(mask, mask, 2, values,
                                                  torch.tensor([-0.5, -0.25, 0.25, 0.5]))},
                            {"heads.0.weight": torch.ones(3, 4)}, {"name": "t0"}))
    return path


def test_inspect_prints_tasks_layers_and_bytes(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = _store(tmp_path / "s.tpk")
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "1 tasks, 32 positions" in text and "fc" in text
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["file_size"] == path.stat().st_size
    assert sum(data["bytes"].values()) == path.stat().st_size


@pytest.mark.parametrize("damage", ["truncate", "flip", "version"])
def test_damaged_store_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         damage: str) -> None:
    path = _store(tmp_path / "s.tpk")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data[8] = 99  # the version field follows the 8-byte magic
    path.write_bytes(bytes(data))
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert path.read_bytes() == bytes(data)  # nothing overwritten


def test_store_of_another_model_and_unknown_task(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.errors import StoreError

    path = _store(tmp_path / "s.tpk")
    with pytest.raises(StoreError, match="mlp-test"):
        PackedStore.open(path, expect_fingerprint="mlp-other")
    with pytest.raises(StoreError, match="task id must be in 0..0"):
        PackedStore.open(path).materialize(3)
    # a recipe pointing at a store built for another model: exit 2 before any training
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: other\nstore: {{path: {path}}}\ntracking: {{enabled: false}}\n"
                      f"output_dir: {tmp_path / 'runs'}\nbenchmark: {{tasks: 1}}\n")
    assert main(["run", str(recipe)]) == 2
    assert "store was built for model 'mlp-test'" in capsys.readouterr().err


def test_a_reader_that_goes_away_is_not_a_traceback() -> None:
    """`taskpack inspect STORE | head -1`: the closed pipe ends the command quietly (exit 141,
    as a tool killed by SIGPIPE), with nothing on stderr."""
    import subprocess
    import sys

    store = Path(__file__).parent / "fixtures" / "store_v1.tpk"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "inspect", str(store)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None
    proc.stdout.close()  # the reader leaves before the first line (imports take seconds)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err.decode() == "", err.decode()
