"""Reliability under hostile input and crashes (issue 14): every figure re-measured in this run.

1. Bad recipes: a fixed corpus of hostile recipes (tests/recipes_tests/hostile.py) plus seeded
   random mutations of the shipped recipes and random ``--set`` overrides, each through
   ``taskpack validate`` in-process. Clean = exit 0, or exit 2 with exactly one ``error:`` line,
   no traceback, within 5 s.
2. Corrupt stores: a small real store (a tiny recipe run on MNIST, 3 tasks) damaged every way
   below, plus checksum-valid stores with impossible content; each through ``taskpack inspect``.
   Clean = exit 2 with one line.
3. kill -9: the same run killed with SIGKILL at random moments (every other one while a commit's
   temp file exists), then re-run: the store must be byte-identical to an uninterrupted run's,
   and no temp file may be left.

    python benchmarks/reliability.py                 # about 3-5 minutes on 2 cores
    python benchmarks/reliability.py --kills 10 --mutations 2000
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.cli import main  # noqa: E402
from pipeline.store import SLEEP_ENV, PackedStore  # noqa: E402
from pipeline.store._format import HEADER_SIZE, parse_file  # noqa: E402
from tests.pipeline_tests.store_damage import (  # noqa: E402
    CONTENT_DAMAGE,
    NAN,
    rewrite_sections,
    small_store,
)
from tests.recipes_tests.hostile import CORPUS  # noqa: E402

TINY = ["benchmark.tasks=3", "benchmark.train_limit=1000", "benchmark.test_limit=300",
        "benchmark.val_fraction=0.05", "train.epochs=1", "train.batch_size=32", "train.threads=1",
        "model.hidden=[64, 64]", "method.kind=tsn", "method.prune.steps=4",
        "compression.default.sparsity=0.3", "compression.default.bits=8",
        "search.enabled=false", "tracking.enabled=false"]
HOSTILE_VALUES = [".inf", "-.inf", ".nan", "true", "null", "1e400", "9" * 5000, "-1", "0",
                  "1000000000000000000", "[" * 40 + "]" * 40, "*nowhere", "&a [*a]", "..", "/",
                  '"a\\0b"', "!!binary aGk=", "{a: 1, a: 2}", "nonsense://x", "2020-01-01",
                  "'" + "x" * 5000 + "'", "[1, 2", "~", "0x7fffffffffffffff", "1:2:3", "yes"]
PUNCTUATION = "{}[]:,&*!|>-'\"#%@`\n\t "


class Tally:
    def __init__(self) -> None:
        self.tried = self.clean = self.accepted = 0
        self.bad: list[str] = []

    def add(self, what: str, argv: list[str], expect_reject: bool = False) -> None:
        err, out = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                rc = main(argv)
        except BaseException as exc:  # noqa: BLE001 -- counting escapes is the point
            rc, err = -1, io.StringIO(f"{type(exc).__name__}: {exc!s:.200}")
        seconds = time.perf_counter() - start
        lines = err.getvalue().splitlines()
        self.tried += 1
        one_line = len(lines) == 1 and lines[0].startswith("error: ")
        if rc == 2 and one_line and seconds < 5:
            self.clean += 1
        elif rc == 0 and not expect_reject and seconds < 5:
            self.accepted += 1
        else:
            self.bad.append(f"{what}: exit {rc}, {len(lines)} line(s), {seconds:.1f} s: "
                            f"{' | '.join(lines)[:300]}")


# ------------------------------------------------------------------------------ 1. bad recipes
def mutate(text: str, rng: random.Random) -> bytes:
    lines = text.splitlines(keepends=True)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        i = rng.randrange(len(lines))
        if op == 0 and ":" in lines[i]:  # a hostile value for a key
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {rng.choice(HOSTILE_VALUES)}\n"
        elif op == 1:
            lines.insert(i, lines[i])  # a duplicated line: a duplicate key, mostly
        elif op == 2 and len(lines) > 1:
            del lines[i]
        elif op == 3:
            pos = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:pos] + rng.choice(PUNCTUATION) + lines[i][pos:]
        elif op == 4:
            lines[i] = " " * rng.randint(1, 6) + lines[i]
        elif op == 5:
            lines = lines[: i + 1]
    data = bytearray("".join(lines).encode())
    if rng.random() < 0.1 and data:  # a flipped byte: often not UTF-8 any more
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def bad_recipes(folder: Path, mutations: int, overrides: int, seed: int) -> dict[str, Tally]:
    rng = random.Random(seed)
    corpus, generated, sets = Tally(), Tally(), Tally()
    for name, doc, _ in CORPUS:
        path = folder / f"{name}.yaml"
        path.write_bytes(doc)
        corpus.add(name, ["validate", str(path)], expect_reject=True)
    shipped = [p.read_text() for p in sorted((REPO / "recipes").glob("*.yaml"))]
    for i in range(mutations):
        path = folder / f"mut-{i}.yaml"
        path.write_bytes(mutate(rng.choice(shipped), rng))
        generated.add(path.name, ["validate", str(path)])
    base = REPO / "recipes/split-fmnist.yaml"
    keys = ["name", "train.lr", "train.epochs", "train.threads", "train.batch_size",
            "benchmark.tasks", "benchmark.seed", "search.trials", "search.storage", "output_dir",
            "model.hidden", "model.hidden.0", "targets.0.name", "method.kind", "method.density",
            "compression.default.pattern", "store.path", "tracking.uri", "train"]
    for i in range(overrides):
        argv = ["validate", str(base)]
        for _ in range(rng.randint(1, 3)):
            argv.append(f"--set={rng.choice(keys)}={rng.choice(HOSTILE_VALUES)}")
        sets.add(f"overrides-{i} {argv[2:]}", argv)
    return {"fixed hostile corpus (issue 14)": corpus,
            f"mutated shipped recipes (seed {seed})": generated,
            f"random --set overrides (seed {seed})": sets}


# ---------------------------------------------------------------------------- 2. corrupt stores
def store_damage(store: Path, folder: Path, extra_files: list[Path]) -> dict[str, Tally]:
    data = store.read_bytes()
    sections = parse_file(data, str(store))
    table = sections[-1].offset + sections[-1].length
    cases: dict[str, list[tuple[str, bytes]]] = {"byte flips": [], "truncations": [],
                                                  "appends": [], "other formats": []}

    def flip(at: int) -> bytes:
        b = bytearray(data)
        b[at] ^= 0x01
        return bytes(b)

    for s in sections:
        if s.length:
            for at in sorted({s.offset, s.offset + s.length // 2, s.offset + s.length - 1}):
                cases["byte flips"].append((f"{s.name}@{at}", flip(at)))
    cases["byte flips"] += [(f"header@{at}", flip(at)) for at in range(HEADER_SIZE)]
    cases["byte flips"] += [(f"table@{at}", flip(at))
                            for at in range(table, len(data), max(1, (len(data) - table) // 6))]
    for keep in sorted({0, 1, 8, 39, 40, 41, len(data) // 4, len(data) // 2,
                        3 * len(data) // 4, table, len(data) - 1}):
        cases["truncations"].append((f"first {keep} bytes", data[:keep]))
    cases["appends"] += [("+1 NUL", data + b"\0"), ("+1 KiB", data + os.urandom(1024)),
                         ("+itself", data + data)]
    cases["other formats"] += [("empty", b""), ("json", b"{}"), ("magic only", data[:8]),
                               ("gzip of the store", gzip.compress(data)),
                               ("random 4 KiB", random.Random(0).randbytes(4096)),
                               ("png", b"\x89PNG\r\n\x1a\n" + bytes(64))]
    cases["other formats"] += [(p.name, p.read_bytes()) for p in extra_files]
    out: dict[str, Tally] = {}
    for kind, items in cases.items():
        tally = out[kind] = Tally()
        for i, (what, blob) in enumerate(items):
            path = folder / f"{kind.replace(' ', '-')}-{i}.tpk"
            path.write_bytes(blob)
            tally.add(f"{kind}: {what}", ["inspect", str(path)], expect_reject=True)
    content = out["impossible content, checksums valid"] = Tally()
    for name, (patch, _) in CONTENT_DAMAGE.items():
        path = small_store(folder / f"content-{name}.tpk")
        rewrite_sections(path, patch)
        content.add(name, ["inspect", str(path)], expect_reject=True)
    for s in sections:  # the real store: a NaN in each task's first codebook entry
        if s.name.endswith("/codebooks") and s.length >= 4:
            path = folder / f"nan-{s.name.replace('/', '-')}.tpk"
            path.write_bytes(data)
            rewrite_sections(path, {s.name: lambda b: NAN + b[4:]})
            content.add(f"NaN in {s.name}", ["inspect", str(path)], expect_reject=True)
    return out


# ------------------------------------------------------------------------------------ 3. kill -9
def run_cli(out: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "pipeline.cli", "run", str(REPO / "recipes/quickstart.yaml")]
    for s in [*TINY, f"output_dir={out}"]:
        args.append(f"--set={s}")
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def finish(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}): {err.decode()[-2000:]}")


def kill_cycles(folder: Path, kills: int, seed: int, log: Callable[[str], None]
                ) -> tuple[Path, float, list[dict]]:
    rng = random.Random(seed)
    start = time.perf_counter()
    finish(run_cli(folder / "reference"), "the reference run")
    took = time.perf_counter() - start
    reference = folder / "reference" / "quickstart" / "store.tpk"
    log(f"reference run: {took:.0f} s, store {reference.stat().st_size} bytes")
    rows = []
    for i in range(kills):
        out = folder / f"kill-{i}"
        run_dir = out / "quickstart"
        during_commit = i % 2 == 1
        proc = run_cli(out, {SLEEP_ENV: "2"} if during_commit else None)
        if during_commit:  # in the commit of task k: its pre-commit state and temp file exist
            k = (i // 2) % 3
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                if (run_dir / f"state-{k + 1}.npz").exists() and list(
                        run_dir.glob(".store.tpk.*.tmp")):
                    break
                time.sleep(0.05)
        else:  # anywhere in the run: start-up, training, evaluation, a commit
            time.sleep(rng.uniform(0.2, 1.0) * took)
        temp_at_kill = bool(list(run_dir.glob(".store.tpk.*.tmp")))
        alive = proc.poll() is None
        if alive:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        store = run_dir / "store.tpk"
        committed = PackedStore.open(store).num_tasks if store.exists() else 0
        finish(run_cli(out), f"re-run {i}")
        row = {"killed": alive, "during_commit": alive and temp_at_kill, "committed": committed,
               "identical": store.read_bytes() == reference.read_bytes(),
               "temp_left": len(list(run_dir.glob(".*.tmp")))}
        log(f"kill {i}: {row}")
        rows.append(row)
    return reference, took, rows


def table(title: str, tallies: dict[str, Tally]) -> list[str]:
    lines = [f"\n{title}\n", "| input | tried | rejected cleanly (exit 2, one line) | "
             "accepted (valid) | traceback / hang / other |", "|---|---:|---:|---:|---:|"]
    for name, t in tallies.items():
        lines.append(f"| {name} | {t.tried} | {t.clean} | {t.accepted} | {len(t.bad)} |")
    return lines


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutations", type=int, default=600, help="mutated shipped recipes")
    ap.add_argument("--overrides", type=int, default=300, help="random --set override sets")
    ap.add_argument("--kills", type=int, default=8, help="kill -9 cycles")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    print(f"# commit {commit}, {os.cpu_count()} cores, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="taskpack-reliability-") as tmp:
        folder = Path(tmp)
        (folder / "recipes").mkdir()
        recipes = bad_recipes(folder / "recipes", args.mutations, args.overrides, args.seed)
        reference, took, rows = kill_cycles(folder / "runs", args.kills, args.seed,
                                            lambda s: print(f"# {s}", flush=True))
        (folder / "stores").mkdir()
        extra = [reference.parent / "recipe.yaml", *sorted(reference.parent.glob("state-*.npz"))]
        stores = store_damage(reference, folder / "stores", extra[:2])
    out = table("Bad recipes through `taskpack validate`", recipes)
    out += table(f"Damaged stores through `taskpack inspect` (real store: a {took:.0f} s run "
                 "of 3 tasks)", stores)
    killed = [r for r in rows if r["killed"]]
    out += ["\nkill -9 during a run, then the same command again\n",
            "| cycles | killed before the end | of them during a commit | tasks committed "
            "before each kill | re-run store byte-identical to an uninterrupted run | temp "
            "files left after the re-run |",
            "|---:|---:|---:|---|---:|---:|",
            f"| {len(rows)} | {len(killed)} | {sum(r['during_commit'] for r in rows)} | "
            f"{', '.join(str(r['committed']) for r in rows)} | "
            f"{sum(r['identical'] for r in rows)} of {len(rows)} | "
            f"{sum(r['temp_left'] for r in rows)} |"]
    print("\n".join(out))
    bad = [b for t in [*recipes.values(), *stores.values()] for b in t.bad]
    for b in bad[:20]:
        print(f"# NOT CLEAN: {b}")
    if bad or not all(r["identical"] and not r["temp_left"] for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main_()
