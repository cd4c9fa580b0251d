"""``PackedStore``: one file holding every task's subnetwork, with zero forgetting by construction.

The file is only ever replaced whole (temp file + fsync + ``os.replace`` + directory fsync), and a
commit copies the bytes of earlier tasks' sections unchanged, so nothing a committed task reads can
change. In memory the store keeps the file bytes plus, per task and layer, the decoded mask/own
bitmaps (packed, N/8 bytes) and own values; the running M_t, used bits and latest values are
derived by replaying tasks in order, exactly as "shared" is defined: the latest earlier own code.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import PipelineError, StoreError
from pipeline.store._base import BASE_BITS, base_size, decode_base, encode_base
from pipeline.store._codec import (
    TASK_PARTS,
    TaskCommit,
    TaskState,
    apply_task,
    decode_task,
    encode_task,
)
from pipeline.store._format import (
    HEADER_SIZE,
    Section,
    build_file,
    canonical_json,
    file_version,
    parse_file,
    parse_json_section,
)
from pipeline.store._report import StoreReport, build_report
from pipeline.store._tensors import tensor_from_bytes
from pipeline.store._write import write_store_file

# Sections between 'model' and the tasks, each optional, in this order. 'spec' (written by
# create()): what rebuilding and exporting a task needs without the run's recipe (a JSON object the
# caller builds: pipeline/store_spec.py); stores written before it have none. 'base' (written by
# set_base() before task 0): the fixed backbone every task reads (format version 2).
OPTIONAL_HEAD_SECTIONS = ("spec", "base")


class PackedStore:
    """A packed weight store file; build with :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, data: bytes, sections: list[Section]) -> None:
        # Private: use create()/open(), which validate `data` before it gets here.
        self._path = path
        self._set_file(data, sections)
        model = parse_json_section(self._section("model"), "model")
        try:
            self._fingerprint = str(model["fingerprint"])
            self._budget = int(model["bit_budget"])
            self._layers = {str(n): tuple(int(s) for s in shape) for n, shape in model["layers"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"section 'model' must hold the v1 fields, found {exc!r}") from None
        if any(min(shape, default=0) < 0 for shape in self._layers.values()):
            raise StoreError(f"section 'model' must hold shapes >= 0, found {self._layers}")
        names = [s.name for s in sections]
        head = ["model"] + [n for n in OPTIONAL_HEAD_SECTIONS if n in self._index]
        self._base: dict[str, np.ndarray] | None = None
        if "base" in head:
            if file_version(data) < 2:
                raise StoreError("a 'base' section needs store format version 2 or later, "
                                 f"found version {file_version(data)}")
            self._base = decode_base(self._section("base"), self._layers)
        self._reset_state()
        n_tasks = (len(names) - len(head)) // len(TASK_PARTS)
        expect = head + [f"task/{t}/{p}" for t in range(n_tasks) for p in TASK_PARTS]
        if names != expect:
            raise StoreError(f"sections must be {expect[:7]}..., found {names[:7]}...")
        self._spec = parse_json_section(self._section("spec"), "spec") if "spec" in head else None
        for t in range(n_tasks):
            state = decode_task(
                t, self._task_parts(t), self._layers, self._union, self._used, self._budget
            )
            apply_task(state, self._layers, self._union, self._used, self._current, self._budget)
            self._tasks.append(state)

    def _reset_state(self) -> None:
        """The running state before task 0: M_{-1}, used bits and latest values are empty, or,
        with a base, every position holds the base's value and its sign bit."""
        self._tasks: list[TaskState] = []
        self._union = {n: np.zeros(math.prod(s), bool) for n, s in self._layers.items()}
        self._used = {n: np.zeros(math.prod(s), np.uint8) for n, s in self._layers.items()}
        self._current = {n: np.zeros(math.prod(s), np.float32) for n, s in self._layers.items()}
        if self._base is not None:
            for n, values in self._base.items():
                self._union[n][:] = True
                self._used[n][:] = BASE_BITS
                self._current[n][:] = values

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        layers: dict[str, tuple[int, ...]],
        model_fingerprint: str,
        bit_budget: int = 32,
        *,
        overwrite: bool = False,
        spec: dict | None = None,
    ) -> PackedStore:
        """Write an empty store for a model with these prunable ``layers`` (name -> shape).

        ``spec`` (a JSON object) is kept in a ``spec`` section and read back by :meth:`spec`.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise StoreError(
                f"store file {path} must not exist yet (pass overwrite=True), found it"
            )
        if not isinstance(bit_budget, int) or not 1 <= bit_budget <= 64:
            raise StoreError(f"bit_budget must be an int in 1..64, found {bit_budget!r}")
        if not isinstance(model_fingerprint, str) or not model_fingerprint:
            raise StoreError("model_fingerprint must be a non-empty string, found an empty one")
        for name, shape in layers.items():
            ok = (
                isinstance(name, str)
                and name
                and all(isinstance(s, int) and s >= 0 for s in shape)
            )
            if not ok:
                raise StoreError(f"layers must map names to shapes of ints >= 0, found {name!r}")
        model = {
            "format": "taskpack-store",
            "fingerprint": model_fingerprint,
            "bit_budget": bit_budget,
            "layers": [[name, list(shape)] for name, shape in layers.items()],
        }
        head = [("model", canonical_json(model))]
        if spec is not None:
            if not isinstance(spec, dict):
                raise StoreError(f"spec must be a JSON object, found {type(spec).__name__}")
            try:
                head.append(("spec", canonical_json(spec)))
            except (TypeError, ValueError) as exc:
                raise StoreError(f"spec must be JSON-serializable, found {exc}") from None
        data, sections = build_file(b"", [], head)
        write_store_file(path, data)
        return cls(path, data, sections)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], expect_fingerprint: str | None = None
    ) -> PackedStore:
        """Open and fully validate a store (header, version, every checksum, every stream)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"store file {path} must be readable, found {exc.strerror}") from None
        store = cls(path, data, parse_file(data, str(path)))
        if expect_fingerprint is not None and expect_fingerprint != store._fingerprint:
            raise StoreError(
                f"store was built for model {store._fingerprint!r}, this recipe builds "
                f"{expect_fingerprint!r}"
            )
        return store

    def set_base(self, weights: dict[str, torch.Tensor]) -> None:
        """Write the fixed backbone every task reads and none owns (``weights``: name -> a
        signed-constant float32 tensor per store layer), before the first task. Every position
        then holds the base's value (it is in M_{-1}) and its sign takes ``BASE_BITS`` of the
        position's budget; a task that only masks the base commits no own codes."""
        if self._base is not None or self.num_tasks:
            raise StoreError(f"a base can only be set on a store with no base and no tasks, "
                             f"found {'a base' if self._base is not None else 'tasks'}")
        payload = encode_base(weights, self._layers)
        prefix = memoryview(self._data)[
            HEADER_SIZE : self._sections[-1].offset + self._sections[-1].length
        ]
        data, sections = build_file(prefix, self._sections, [("base", payload)])
        self._check_unchanged_on_disk()
        write_store_file(self._path, data)
        self._set_file(data, sections)
        self._base = decode_base(self._section("base"), self._layers)
        self._reset_state()

    # ------------------------------------------------------------------------------- properties
    @property
    def has_base(self) -> bool:
        """Whether the store holds a fixed backbone (a ``base`` section)."""
        return self._base is not None

    def base_weights(self) -> dict[str, torch.Tensor] | None:
        """The base's dense fp32 weights per layer, or None when the store has no base."""
        if self._base is None:
            return None
        return {n: torch.from_numpy(v.reshape(self._layers[n]).copy())
                for n, v in self._base.items()}

    @property
    def path(self) -> Path:
        return self._path

    @property
    def num_tasks(self) -> int:
        return len(self._tasks)

    @property
    def layers(self) -> dict[str, tuple[int, ...]]:
        return dict(self._layers)

    @property
    def bit_budget(self) -> int:
        return self._budget

    @property
    def model_fingerprint(self) -> str:
        return self._fingerprint

    # ----------------------------------------------------------------------------------- commit
    def commit(self, c: TaskCommit) -> None:
        """Validate and append task ``c.task``; the file is replaced atomically or not at all."""
        if not isinstance(c, TaskCommit) or c.task != self.num_tasks:
            found = c.task if isinstance(c, TaskCommit) else type(c).__name__
            raise StoreError(f"the next task to commit must be {self.num_tasks}, found {found}")
        new = encode_task(c, self._layers, self._union, self._used, self._budget)
        prefix = memoryview(self._data)[
            HEADER_SIZE : self._sections[-1].offset + self._sections[-1].length
        ]
        data, sections = build_file(prefix, self._sections, new)
        # Decode what is about to be written: the in-memory state is then the reopened state.
        parts = {p.split("/")[-1]: memoryview(b) for p, b in new}
        state = decode_task(c.task, parts, self._layers, self._union, self._used, self._budget)
        self._check_roundtrip(c, state)
        self._check_unchanged_on_disk()
        write_store_file(self._path, data)
        self._set_file(data, sections)
        apply_task(state, self._layers, self._union, self._used, self._current, self._budget)
        self._tasks.append(state)

    def encoded_size(self, c: TaskCommit) -> int:
        """Bytes the task's sections would add to the file, without writing anything.

        (The section table grows by a few dozen bytes more; that is metadata.)
        """
        new = encode_task(c, self._layers, self._union, self._used, self._budget)
        return sum(len(b) for _, b in new)

    def _check_roundtrip(self, c: TaskCommit, state: TaskState) -> None:
        for name, lc in c.layers.items():
            ls = state.layers[name]
            own = lc.own.detach().cpu().reshape(-1).numpy()
            want = lc.values.detach().cpu().reshape(-1).numpy()[own].view(np.uint32)
            if not np.array_equal(ls.values.view(np.uint32), want):
                raise PipelineError(f"task {c.task} layer '{name}': decoded values differ (bug)")

    def _check_unchanged_on_disk(self) -> None:
        """Refuse to overwrite a file another writer replaced since we read it."""
        try:
            with open(self._path, "rb") as f:
                head = f.read(HEADER_SIZE)
                size = os.fstat(f.fileno()).st_size
        except OSError as exc:
            raise StoreError(f"store file {self._path} must exist, found {exc.strerror}") from None
        if head != self._data[:HEADER_SIZE] or size != len(self._data):
            raise StoreError(
                f"store file {self._path} must be unchanged since it was opened, found it "
                "rewritten by someone else: open it again"
            )

    # ---------------------------------------------------------------------------------- reading
    def _set_file(self, data: bytes, sections: list[Section]) -> None:
        self._data = data
        self._sections = sections
        self._index = {s.name: s for s in sections}

    def _section(self, name: str) -> memoryview:
        s = self._index.get(name)
        if s is None:
            raise StoreError(f"section '{name}' must exist, found none")
        return memoryview(self._data)[s.offset : s.offset + s.length]

    def _task_parts(self, t: int) -> dict[str, memoryview]:
        return {p: self._section(f"task/{t}/{p}") for p in TASK_PARTS}

    def section_names(self) -> list[str]:
        """Names of the file's sections in file order (for inspection and tests)."""
        return [s.name for s in self._sections]

    def section_bytes(self, name: str) -> bytes:
        """The exact bytes of one section as stored in the file."""
        return bytes(self._section(name))

    def _check_task(self, task: int) -> None:
        if not isinstance(task, int) or not 0 <= task < self.num_tasks:
            raise StoreError(
                f"task id must be in 0..{self.num_tasks - 1} (the store holds {self.num_tasks} "
                f"tasks), found {task!r}"
            )

    def materialize(self, task: int) -> dict[str, torch.Tensor]:
        """Dense fp32 weights of ``task`` per layer (zero outside its mask) + its extra tensors."""
        self._check_task(task)
        out: dict[str, torch.Tensor] = {}
        for name, shape in self._layers.items():
            n = math.prod(shape)
            # value of the latest code of tasks < task (the base's where none wrote one)
            latest = np.zeros(n, np.float32) if self._base is None else self._base[name].copy()
            for s in range(task):
                ls = self._tasks[s].layers[name]
                if ls.own_count:
                    latest[np.unpackbits(ls.own, count=n).astype(bool)] = ls.values
            ls = self._tasks[task].layers[name]
            mask = np.unpackbits(ls.mask, count=n).astype(bool)
            dense = np.where(mask, latest, np.float32(0))
            dense[np.unpackbits(ls.own, count=n).astype(bool)] = ls.values
            out[name] = torch.from_numpy(dense.reshape(shape))
        blob = self._section(f"task/{task}/tensors")
        for e in self._tasks[task].tensors:
            raw = blob[e["offset"] : e["offset"] + e["length"]]
            out[e["name"]] = tensor_from_bytes(raw, e["dtype"], e["shape"])
        return out

    def task_masks(self, task: int) -> dict[str, torch.Tensor]:
        """m_task per layer (bool): the positions the task reads, shared or own."""
        self._check_task(task)
        return {
            name: torch.from_numpy(
                np.unpackbits(self._tasks[task].layers[name].mask, count=math.prod(shape))
                .astype(bool).reshape(shape))
            for name, shape in self._layers.items()
        }

    def union_mask(self, upto: int | None = None) -> dict[str, torch.Tensor]:
        """M_upto: positions holding a code of any task <= ``upto`` (all tasks when None).

        ``upto=-1`` gives M_{-1} (what task 0 sees): all False, or all True with a base.
        """
        if upto is None or upto == self.num_tasks - 1:
            return {
                n: torch.from_numpy(u.reshape(self._layers[n]).copy())
                for n, u in self._union.items()
            }
        if upto != -1:
            self._check_task(upto)
        out = {}
        for name, shape in self._layers.items():
            n = math.prod(shape)
            acc = np.full((n + 7) // 8, 0 if self._base is None else 255, np.uint8)
            for s in range(upto + 1):
                acc |= self._tasks[s].layers[name].own
            out[name] = torch.from_numpy(np.unpackbits(acc, count=n).astype(bool).reshape(shape))
        return out

    def used_bits(self) -> dict[str, torch.Tensor]:
        """Bits used per position (int32); ``bit_budget - used`` is what a split may take."""
        return {
            n: torch.from_numpy(u.astype(np.int32).reshape(self._layers[n]))
            for n, u in self._used.items()
        }

    def current_values(self) -> dict[str, torch.Tensor]:
        """Per position the value of the latest code (0 where none): what a new task shares."""
        return {
            n: torch.from_numpy(v.reshape(self._layers[n]).copy())
            for n, v in self._current.items()
        }

    def spec(self) -> dict | None:
        """The ``spec`` section written by :meth:`create` (a copy), or None when it has none."""
        return None if self._spec is None else json.loads(json.dumps(self._spec))

    def task_meta(self, task: int) -> dict[str, str | int | float | bool]:
        self._check_task(task)
        return dict(self._tasks[task].meta)

    def report(self) -> StoreReport:
        """Bytes per task/layer/component; they add up exactly to the file size."""
        lengths = {s.name: s.length for s in self._sections}
        return build_report(
            path=str(self._path),
            fingerprint=self._fingerprint,
            budget=self._budget,
            layers=self._layers,
            tasks=self._tasks,
            lengths=lengths,
            file_size=len(self._data),
            base_bytes=base_size(self._layers) if self._base is not None else 0,
        )

    def __repr__(self) -> str:
        return (
            f"PackedStore({str(self._path)!r}, tasks={self.num_tasks}, layers={len(self._layers)})"
        )
