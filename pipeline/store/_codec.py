"""A task's sections: validate a ``TaskCommit`` and encode it; decode sections back to arrays.

Encoding and decoding live side by side so they cannot drift apart; the store decodes what it is
about to write before writing it, so a fresh store and a reopened one hold identical state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.errors import StoreError
from pipeline.store._bits import pack_codes, unpack_codes
from pipeline.store._codebook import codes_for_values
from pipeline.store._format import canonical_json, parse_json_section
from pipeline.store._masks import decode_layer_mask, encode_layer_mask
from pipeline.store._tensors import check_entry, dtype_name, tensor_to_bytes

ALLOWED_BITS = (1, 2, 3, 4, 6, 8, 16, 32)
TASK_PARTS = ("meta", "masks", "codes", "codebooks", "tensors")


@dataclass(frozen=True)
class LayerCommit:
    """One layer of a task: its mask, its own positions and their values.

    ``bits`` is the width of the own codes: with ``bits < 16`` a ``codebook`` (float32, at most
    ``2**bits`` entries) is required and every own value must be one of its entries bit for bit;
    ``bits == 16`` stores indices into a codebook when one is given, else the values as IEEE fp16
    (they must be exactly representable); ``bits == 32`` stores the raw fp32 bit patterns and takes
    no codebook. ``values`` is read at ``own`` positions only.
    """

    mask: torch.Tensor
    own: torch.Tensor
    bits: int
    values: torch.Tensor
    codebook: torch.Tensor | None = None


@dataclass(frozen=True)
class TaskCommit:
    """Everything a task adds to the store; ``task`` must equal ``store.num_tasks``."""

    task: int
    layers: dict[str, LayerCommit]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, str | int | float | bool] = field(default_factory=dict)


@dataclass
class LayerState:
    """A committed task's layer, decoded: packed bitmaps keep memory at N/8 bytes per task."""

    mask: np.ndarray
    own: np.ndarray
    values: np.ndarray
    bits: int
    kind: str
    k: int
    count: int
    own_count: int
    split: int
    nbytes: dict[str, int]


@dataclass
class TaskState:
    task: int
    meta: dict[str, str | int | float | bool]
    layers: dict[str, LayerState]
    tensors: list[dict]
    union_count: int = 0


def _bool_array(t: object, shape: tuple[int, ...], what: str) -> np.ndarray:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.bool or tuple(t.shape) != shape:
        found = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise StoreError(f"{what} must be a bool tensor of shape {shape}, found {found}")
    return t.detach().to("cpu").reshape(-1).numpy().copy()


def _encode_values(lc: LayerCommit, vals: np.ndarray, what: str) -> tuple[str, bytes, bytes, int]:
    """(kind, code bytes, codebook bytes, k) for the own values ``vals`` (flat float32)."""
    b = lc.bits
    if b == 32:
        if lc.codebook is not None:
            raise StoreError(f"{what}: bits=32 stores raw fp32 and must have no codebook")
        return "fp32", vals.astype("<f4").tobytes(), b"", 0
    if b == 16 and lc.codebook is None:
        half = vals.astype(np.float16)
        if not np.array_equal(half.astype(np.float32).view(np.uint32), vals.view(np.uint32)):
            raise StoreError(
                f"{what}: bits=16 without a codebook stores fp16, so own values must be exactly "
                "representable in fp16, found some that are not"
            )
        return "fp16", half.astype("<f2").tobytes(), b"", 0
    cb = lc.codebook
    if vals.size == 0:  # nothing decodes through it: a codebook would be dead bytes
        return "index", b"", b"", 0
    if cb is None:
        raise StoreError(f"{what}: bits={b} needs a codebook, found none")
    if not isinstance(cb, torch.Tensor) or cb.dtype != torch.float32 or cb.dim() != 1:
        raise StoreError(f"{what}: the codebook must be a 1-D float32 tensor, found {cb!r:.60}")
    cbn = cb.detach().to("cpu").numpy()
    if not 1 <= cbn.size <= 1 << b or not np.isfinite(cbn).all():
        raise StoreError(
            f"{what}: the codebook must hold 1..{1 << b} finite entries, found {cbn.size} entries"
        )
    codes = codes_for_values(vals, cbn, what)
    return "index", pack_codes(codes, b), cbn.astype("<f4").tobytes(), int(cbn.size)


def encode_task(
    c: TaskCommit,
    layers: dict[str, tuple[int, ...]],
    union: dict[str, np.ndarray],
    used: dict[str, np.ndarray],
    budget: int,
) -> list[tuple[str, bytes]]:
    """Validate ``c`` against the store state (M_{t-1}, used bits) and encode its 5 sections."""
    t = c.task
    if not isinstance(c.layers, dict) or set(c.layers) != set(layers):
        got = set(c.layers) if isinstance(c.layers, dict) else set()
        raise StoreError(
            f"task {t} must give every store layer, found missing {sorted(set(layers) - got)} "
            f"and unknown {sorted(got - set(layers))}"
        )
    masks, codes, books = bytearray(), bytearray(), bytearray()
    layer_meta = []
    for name, shape in layers.items():
        what = f"task {t} layer '{name}'"
        lc = c.layers[name]
        if not isinstance(lc, LayerCommit):
            raise StoreError(f"{what} must be a LayerCommit, found {type(lc).__name__}")
        if lc.bits not in ALLOWED_BITS or lc.bits > budget:
            raise StoreError(
                f"{what}: bits must be one of {ALLOWED_BITS} and <= the budget {budget}, "
                f"found {lc.bits}"
            )
        mask = _bool_array(lc.mask, shape, f"{what} mask")
        own = _bool_array(lc.own, shape, f"{what} own")
        if (own & ~mask).any():
            raise StoreError(
                f"{what}: own must be a subset of mask, found "
                f"{int(np.count_nonzero(own & ~mask))} own positions outside it"
            )
        u = union[name]
        shared_out = mask & ~own & ~u
        if shared_out.any():
            raise StoreError(
                f"{what}: shared positions must hold an earlier task's code (lie in M_{t - 1}), "
                f"found {int(np.count_nonzero(shared_out))} that do not"
            )
        splittable = (budget - used[name].astype(np.int64)) >= lc.bits
        full = own & u & ~splittable
        if full.any():
            raise StoreError(
                f"{what}: an own code needs {lc.bits} free bits of the {budget}-bit budget, found "
                f"{int(np.count_nonzero(full))} own positions without them"
            )
        v = lc.values
        if not isinstance(v, torch.Tensor) or v.dtype != torch.float32 or tuple(v.shape) != shape:
            raise StoreError(f"{what}: values must be a float32 tensor of shape {shape}")
        vals = v.detach().to("cpu").reshape(-1).numpy()[own]
        kind, code_bytes, book_bytes, k = _encode_values(lc, vals, what)
        mask_bytes = encode_layer_mask(mask, own, u, splittable)
        entry = {
            "name": name,
            "bits": lc.bits,
            "kind": kind,
            "k": k,
            "count": int(np.count_nonzero(mask)),
            "own": int(vals.size),
            "split": int(np.count_nonzero(own & u)),
        }
        for key, buf, payload in (
            ("mask", masks, mask_bytes),
            ("codes", codes, code_bytes),
            ("codebook", books, book_bytes),
        ):
            entry[key] = [len(buf), len(payload)]
            buf += payload
        layer_meta.append(entry)
    tensors, tensor_meta = _encode_tensors(c, layers)
    meta = _check_meta(c)
    head = {"task": t, "meta": meta, "layers": layer_meta, "tensors": tensor_meta}
    parts = [canonical_json(head), bytes(masks), bytes(codes), bytes(books), tensors]
    return [(f"task/{t}/{p}", payload) for p, payload in zip(TASK_PARTS, parts, strict=True)]


def _encode_tensors(c: TaskCommit, layers: dict) -> tuple[bytes, list[dict]]:
    out, meta = bytearray(), []
    if not isinstance(c.tensors, dict):
        raise StoreError(
            f"task {c.task}: tensors must be a dict, found {type(c.tensors).__name__}"
        )
    for name, tensor in c.tensors.items():
        what = f"task {c.task} tensor '{name}'"
        if not isinstance(name, str) or not name or name in layers:
            raise StoreError(f"{what}: names must be non-empty and differ from layer names")
        if not isinstance(tensor, torch.Tensor):
            raise StoreError(f"{what} must be a torch.Tensor, found {type(tensor).__name__}")
        dt = dtype_name(tensor, what)
        payload = tensor_to_bytes(tensor)
        meta.append(
            {
                "name": name,
                "dtype": dt,
                "shape": list(tensor.shape),
                "offset": len(out),
                "length": len(payload),
            }
        )
        out += payload
    return bytes(out), meta


def _check_meta(c: TaskCommit) -> dict:
    if not isinstance(c.meta, dict):
        raise StoreError(f"task {c.task} meta must be a dict, found {type(c.meta).__name__}")
    for key, value in c.meta.items():
        ok_value = isinstance(value, str | int | float | bool) and not (
            isinstance(value, float) and not math.isfinite(value)
        )
        if not isinstance(key, str) or not ok_value:
            raise StoreError(
                f"task {c.task} meta: entries must be str -> str/int/float/bool (finite), "
                f"found {key!r}: {value!r}"
            )
    return dict(c.meta)


def _ranges(spans: list[tuple[int, int]], total: int, what: str) -> None:
    """(offset, length) spans must tile their section exactly (so bytes add up in the report)."""
    pos = 0
    for off, length in spans:
        if off != pos or length < 0:
            raise StoreError(f"{what}: byte ranges must tile the section, found [{off}, {length}]")
        pos += length
    if pos != total:
        raise StoreError(f"{what}: byte ranges must cover {total} bytes, found {pos}")


def decode_task(
    t: int,
    parts: dict[str, memoryview],
    layers: dict[str, tuple[int, ...]],
    union: dict[str, np.ndarray],
    used: dict[str, np.ndarray],
    budget: int,
) -> TaskState:
    """Decode task ``t`` given M_{t-1} (``union``) and the used bits before it."""
    what = f"task {t}"
    try:
        head = parse_json_section(parts["meta"], f"task/{t}/meta")
        entries, tensors, meta = head["layers"], head["tensors"], head["meta"]
        if head["task"] != t or [e["name"] for e in entries] != list(layers):
            raise StoreError(f"{what}: meta must describe task {t} and the store's layers")
        if not isinstance(meta, dict):
            raise StoreError(f"{what}: meta must be a JSON object, found {type(meta).__name__}")
        for key, section in (("mask", "masks"), ("codes", "codes"), ("codebook", "codebooks")):
            spans = [(int(e[key][0]), int(e[key][1])) for e in entries]
            _ranges(spans, len(parts[section]), f"task/{t}/{section}")
        for e in tensors:
            check_entry(e, what)
        spans = [(int(e["offset"]), int(e["length"])) for e in tensors]
        _ranges(spans, len(parts["tensors"]), f"task/{t}/tensors")
        states = {}
        for e in entries:
            name = e["name"]
            states[name] = _decode_layer(e, parts, union[name], used[name], budget, what)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise StoreError(
            f"{what}: meta must hold the v1 fields, found a problem: {exc!r}"
        ) from None
    return TaskState(task=t, meta=meta, layers=states, tensors=tensors)


def _decode_layer(
    e: dict, parts: dict, union: np.ndarray, used: np.ndarray, budget: int, task_what: str
) -> LayerState:
    what = f"{task_what} layer '{e['name']}'"
    bits, kind, k = int(e["bits"]), e["kind"], int(e["k"])
    if bits not in ALLOWED_BITS or kind not in ("index", "fp16", "fp32"):
        raise StoreError(f"{what}: bits/kind must be valid, found {bits}/{kind!r}")
    splittable = (budget - used.astype(np.int64)) >= bits
    mo, ml = e["mask"]
    mask, own = decode_layer_mask(parts["masks"][mo : mo + ml], union, splittable, what)
    n_own = int(np.count_nonzero(own))
    found = (int(np.count_nonzero(mask)), n_own, int(np.count_nonzero(own & union)))
    if found != (e["count"], e["own"], e["split"]):
        raise StoreError(f"{what}: mask counts must match the meta, found {found}")
    co, cl = e["codes"]
    raw = parts["codes"][co : co + cl]
    if kind == "fp32":
        values = _raw_values(raw, n_own, "<f4", what)
    elif kind == "fp16":
        values = _raw_values(raw, n_own, "<f2", what).astype(np.float32)
    else:
        bo, bl = e["codebook"]
        if bl != 4 * k or k > 1 << bits:
            raise StoreError(f"{what}: codebook must take 4*k bytes with k <= 2^bits, found {bl}")
        book = np.frombuffer(parts["codebooks"][bo : bo + bl], dtype="<f4")
        if not np.isfinite(book).all():  # encode_task never writes one: the file is corrupt
            raise StoreError(f"{what}: codebook entries must be finite, found "
                             f"{int(np.count_nonzero(~np.isfinite(book)))} NaN/inf")
        codes = unpack_codes(raw, n_own, bits) if n_own else np.zeros(0, np.int64)
        if codes.size and int(codes.max()) >= k:
            raise StoreError(f"{what}: codes must be < codebook size {k}, found {codes.max()}")
        values = book[codes].astype(np.float32)
    nbytes = {"masks": ml, "codes": cl, "codebooks": e["codebook"][1]}
    return LayerState(
        mask=np.packbits(mask),
        own=np.packbits(own),
        values=values,
        bits=bits,
        kind=kind,
        k=k,
        count=found[0],
        own_count=n_own,
        split=found[2],
        nbytes=nbytes,
    )


def _raw_values(raw: memoryview, n: int, dtype: str, what: str) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    if len(raw) != n * size:
        raise StoreError(
            f"{what}: {n} {dtype} values must take {n * size} bytes, found {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).copy()


def apply_task(
    state: TaskState,
    layers: dict[str, tuple[int, ...]],
    union: dict,
    used: dict,
    current: dict,
    budget: int,
) -> None:
    """Advance the running state (M_t, used bits, latest values) past a decoded task."""
    total = 0
    for name, ls in state.layers.items():
        n = union[name].size
        own = np.unpackbits(ls.own, count=n).astype(bool)
        used[name][own] += ls.bits
        current[name][own] = ls.values
        union[name] |= own
        total += int(np.count_nonzero(union[name]))
        if n and int(used[name].max()) > budget:
            raise StoreError(f"task {state.task} layer '{name}': used bits must stay <= {budget}")
    state.union_count = total
