"""``benchmarks/methods.py``: the quick table runs end to end, and ``--resume`` goes on from the
committed tasks of an earlier run with every column kept (the real store, no mocks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _table(tmp_path: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "benchmarks/methods.py", "--table", "A", "--quick", "--methods", "wsn",
           "--streams", "split_mnist", "--seeds", "0", "--no-latency",
           "--set", f"output_dir={tmp_path}", "--set", "train.threads=1", *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [line for line in proc.stdout.splitlines() if line.startswith("| split_mnist | wsn")]


def test_a_quick_table_and_its_resume_give_the_same_row(tmp_path: Path) -> None:
    first = _table(tmp_path)
    assert len(first) == 2  # printed when done, and again in the closing table
    again = _table(tmp_path, "--resume")  # both tasks committed: nothing is trained again
    assert again == first  # ACC, BWT, bytes, train seconds and examples seen all kept
    cells = [c.strip() for c in first[0].strip("|").split("|")]
    assert float(cells[2]) > 50 and cells[3] == "0.00"  # ACC (%), BWT
    assert cells[-3] != "-" and int(cells[-2].replace(",", "")) > 0  # train s, examples seen


def test_an_unknown_method_is_one_line_and_exit_2() -> None:
    proc = subprocess.run([sys.executable, "benchmarks/methods.py", "--table", "A", "--methods",
                           "nope"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout.strip().splitlines()[-1].startswith("error: unknown method(s) ['nope']")
