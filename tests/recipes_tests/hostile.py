"""A fixed corpus of hostile and careless recipes (issue 14): each must be rejected by
``taskpack validate`` with one line and exit code 2. Shared by the tests and
benchmarks/reliability.py, with the helpers that run ``validate`` in-process and check its answer.

Each corpus entry: (id, recipe bytes, text the one-line error must contain).
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

from pipeline.cli import main

BASE = "name: h\nbenchmark: {tasks: 2}\nmodel: {hidden: [8]}\ntracking: {enabled: false}\n"
PER_CALL_S = 5.0  # validate takes milliseconds; seconds would mean a hang in the making
_FOLDER: list[Path] = []  # where validate_in_process writes its file (Hypothesis reruns a lot)


def warm_up(folder: Path) -> None:
    _FOLDER[:] = [folder]
    # the first validate imports torch (target backends are looked up in the compiler registry)
    validate_in_process(BASE.encode(), [])


def validate_in_process(doc: bytes, overrides: list[str]) -> tuple[int, list[str], float]:
    """``taskpack validate`` of ``doc`` through the CLI's main: (exit code, stderr lines, s)."""
    path = _FOLDER[0] / "r.yaml"
    path.write_bytes(doc)
    # --set=VALUE: a value starting with "-" would otherwise read as an option (a usage error)
    argv = ["validate", str(path)] + [f"--set={o}" for o in overrides]
    err, out = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, err.getvalue().splitlines(), time.perf_counter() - start


def check(rc: int, lines: list[str], seconds: float) -> None:
    """Exit 0 with nothing on stderr, or exit 2 with one short ``error:`` line; in bounded time."""
    assert seconds < PER_CALL_S, f"validate took {seconds:.1f} s"
    assert rc in (0, 2), (rc, lines)
    if rc == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        assert len(lines[0]) < 2000, lines[0][:200]
    else:
        assert lines == []

_BOMB = b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
    b"%s: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]\n"
    % ((chr(98 + i).encode(),) * 2 + (chr(97 + i).encode(),) * 10) for i in range(8)
) + b"name: *i\n"

CORPUS: list[tuple[str, bytes, str]] = [
    ("name-dotdot", b"name: '..'\n", "name: must match"),
    ("name-dot", b"name: .\n", "name: must match"),
    ("name-slash", b"name: a/b\n", "name: must match"),
    ("name-absolute", b"name: /etc\n", "name: must match"),
    ("name-nul", b'name: "a\\0b"\n', "name: must match"),
    ("name-1mb", b"name: " + b"x" * 1_000_000 + b"\n", "name: "),
    ("name-newline", b'name: "a\\nb"\n', "name: must match"),
    ("output-dir-file", b"name: x\noutput_dir: /dev/null\n", "output_dir: must be a directory"),
    ("output-dir-under-file", b"name: x\noutput_dir: /dev/null/runs\n",
     "output_dir: must be a directory"),
    ("output-dir-nul", b'name: x\noutput_dir: "a\\0b"\n', "output_dir: paths must not contain"),
    ("binary", bytes(range(256)) * 4, "must be UTF-8 text"),
    ("latin1", "name: caf\u00e9\n".encode("latin-1"), "must be UTF-8 text, found byte 0xe9"),
    ("utf16", "name: x\n".encode("utf-16"), "must be UTF-8 text"),
    ("deep-flow", b"name: x\ndescription: " + b"[" * 5000 + b"]" * 5000 + b"\n",
     "nesting must be at most"),
    ("deep-block", b"name: x\n" + b"".join(b"  " * i + b"k%d:\n" % i for i in range(200)),
     "nesting must be at most"),
    ("huge-int", b"name: x\ntrain: {epochs: " + b"9" * 5000 + b"}\n", "integers must be at most"),
    ("alias-bomb", _BOMB, "values with aliases expanded"),
    ("alias-cycle", b"name: x\ndescription: &a [*a]\n", "must not refer to a structure"),
    ("alias-as-string", b"big: &b [" + b", ".join([b"abcdefgh"] * 2000) + b"]\n"
     b"name: x\ndescription: *b\n", "description: must be a string"),
    ("lr-inf", b"name: x\ntrain: {lr: .inf}\n", "train.lr: must be a finite number"),
    ("lr-nan", b"name: x\ntrain: {lr: .nan}\n", "train.lr: must be a finite number"),
    ("lr-bool", b"name: x\ntrain: {lr: true}\n", "train.lr: must be a number, got True"),
    ("lr-huge", b"name: x\ntrain: {lr: 1.0e300}\n", "train.lr: must be <= 10"),
    ("epochs-huge", b"name: x\ntrain: {epochs: 100000000000}\n", "train.epochs: must be <="),
    ("epochs-null", b"name: x\ntrain: {epochs: null}\n", "train.epochs: must not be null"),
    ("epochs-float", b"name: x\ntrain: {epochs: 2.5}\n", "train.epochs: must be an integer"),
    ("epochs-string", b"name: x\ntrain: {epochs: '3'}\n", "train.epochs: must be an integer"),
    ("threads-1e18", b"name: x\ntrain: {threads: 1000000000000000000}\n",
     "train.threads: must be <= 1024"),
    ("batch-1e18", b"name: x\ntrain: {batch_size: 1000000000000000000}\n",
     "train.batch_size: must be <="),
    ("tasks-1e18", b"name: x\nbenchmark: {tasks: 1000000000000000000}\n",
     "benchmark.tasks: must be <="),
    ("trials-1e18", b"name: x\nsearch: {trials: 1000000000000000000}\n",
     "search.trials: must be <="),
    ("seed-negative", b"name: x\ntrain: {seed: -1}\n", "train.seed: must be >= 0"),
    ("bool-as-int", b"name: x\nsearch: {trials: true}\n", "search.trials: must be an integer"),
    ("int-as-bool", b"name: x\nsearch: {enabled: 1}\n", "search.enabled: must be true or false"),
    ("duplicate-section", b"name: x\ntrain: {lr: 0.1}\ntrain: {epochs: 2}\n",
     "key 'train' must appear once"),
    ("duplicate-field", b"name: x\ntrain: {lr: 0.1, lr: 0.2}\n", "key 'lr' must appear once"),
    ("bool-key", b"name: x\non: 1\n", "mapping keys must be strings"),
    ("storage-nonsense", b"name: x\nsearch: {storage: 'nonsense://x'}\n",
     "search.storage: must be sqlite:///path"),
    ("storage-memory", b"name: x\nsearch: {storage: 'sqlite:///:memory:'}\n",
     "search.storage: must be sqlite:///path"),
    ("storage-bad-port", b"name: x\nsearch: {storage: 'postgresql://h:99999999/db'}\n",
     "search.storage: must be sqlite:///path"),
    ("binary-tag", b"name: x\ndescription: !!binary aGVsbG8=\n", "tag tag:yaml.org,2002:binary"),
    ("python-tag", b"name: !!python/object:os.system x\n", "malformed YAML"),
    ("multi-document", b"name: x\n---\nname: y\n", "malformed YAML"),
    ("pattern-huge", b"name: x\ncompression: {default: {pattern: 'block(" + b"9" * 5000
     + b",1)'}}\n", "compression.default.pattern: "),
    ("too-many-errors", b"name: x\n" + b"".join(b"k%d: 1\n" % i for i in range(5000)),
     "more error(s)"),
    ("target-name-slash", b"name: x\ntargets: [{name: ../t}]\n", "targets.0.name: must match"),
    ("hidden-huge", b"name: x\nmodel: {hidden: [1000000000]}\n", "model.hidden.0: must be <="),
    ("base-60", b"name: x\ntrain: {epochs: 1:30}\n", "train.epochs: must be an integer"),
    ("octal", b"name: x\ntrain: {epochs: 010}\n", "train.epochs: must be an integer, got '010'"),
    ("tracking-uri", b"name: x\ntracking: {uri: 'nonsense://x'}\n", "tracking.uri: must be"),
    ("regex-nested", b"name: x\ncompression: {rules: [{match: '" + b"(" * 510 + b")" * 510
     + b"'}]}\n", "compression.rules.0.match: not a valid regular expression"),
    ("regex-repeat", b"name: x\ncompression: {rules: [{match: 'a{99999999999}'}]}\n",
     "not a valid regular expression"),
    ("regex-warning", b"name: x\nsearch: {space: [{match: '[[a]'}]}\n",
     "search.space.0: match is not a valid regular expression"),
    ("list-as-recipe", b"- a\n- b\n", "a recipe must be a YAML mapping"),
    ("empty", b"", "the file is empty"),
    ("scalar", b"42\n", "a recipe must be a YAML mapping"),
]
