"""Measuring on remote devices through a TVM RPC tracker.

A device farm is a tracker plus one RPC server per device, registered under a key (one key per
device kind). Every remote call runs under a per-call timeout; failures are classified into
:class:`RunTimedOut` (retry), :class:`DeviceLost` (reconnect, retry) and :class:`BuildFailed`
(the library does not load: no retry), with a bounded number of attempts.
"""

from __future__ import annotations

import concurrent.futures
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import BuildFailed, CompilerError, DeviceLost, RunTimedOut
from ..targets import Target
from ._api import load, rpc_tracker_class

__all__ = ["LoopbackFarm", "call_with_retries", "classify", "connect", "start_loopback"]

logger = logging.getLogger(__name__)
R = TypeVar("R")


def connect(target: Target, session_timeout_s: float = 60.0):  # noqa: ANN201 - RPCSession
    """Ask the tracker for a session on a device registered under ``target.rpc_key``."""
    api = load()
    port = target.rpc_port
    if port is None:  # Target rejects an rpc target without one; this narrows the Optional
        raise ValueError(f"target {target.name!r} has no rpc_port to reach a tracker at.")
    try:  # fail fast: tvm's connect_tracker retries a dead address for a minute
        socket.create_connection((target.rpc_host, int(port)), timeout=5).close()
    except OSError as exc:
        raise DeviceLost(
            f"a device with key {target.rpc_key!r} must be reachable through the tracker at "
            f"{target.rpc_host}:{target.rpc_port}, but the tracker did not answer: {exc}"
        ) from exc
    try:
        tracker = api.rpc.connect_tracker(target.rpc_host, int(port))
        return tracker.request(
            target.rpc_key, priority=1, session_timeout=int(session_timeout_s)
        )
    except Exception as exc:
        raise DeviceLost(
            f"a device with key {target.rpc_key!r} must be reachable through the tracker at "
            f"{target.rpc_host}:{target.rpc_port}, but the request failed: {exc}"
        ) from exc


def classify(exc: BaseException) -> CompilerError:
    """Map an exception from a remote call to the compilers error hierarchy."""
    if isinstance(exc, CompilerError):
        return exc
    text = str(exc).lower()
    if isinstance(exc, TimeoutError | concurrent.futures.TimeoutError) or "timeout" in text:
        return RunTimedOut(f"the remote run did not finish in time: {exc}")
    if "cannot find" in text or "load_module" in text or "undefined symbol" in text:
        return BuildFailed(f"the library could not be loaded on the device: {exc}")
    return DeviceLost(f"the remote session failed: {type(exc).__name__}: {exc}")


def call_with_retries(
    fn: Callable[[], R],
    *,
    timeout_s: float,
    retries: int = 2,
    on_retry: Callable[[CompilerError], None] | None = None,
) -> R:
    """Run ``fn`` with a wall-clock limit; retry timeouts and lost devices ``retries`` times."""
    last: CompilerError | None = None
    for attempt in range(retries + 1):
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            return pool.submit(fn).result(timeout=timeout_s)
        except BaseException as exc:  # noqa: BLE001 - classified below
            last = classify(exc)
            if isinstance(last, BuildFailed):
                raise last from exc
            logger.warning("remote call failed (attempt %d/%d): %s", attempt + 1, retries + 1,
                           last)
            if on_retry is not None and attempt < retries:
                on_retry(last)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    assert last is not None
    raise last


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LoopbackFarm:
    """A tracker and one server on 127.0.0.1 (tests, local development)."""

    tracker: Any
    server: Any
    key: str

    @property
    def port(self) -> int:
        return int(self.tracker.port)

    def target(self, name: str = "loopback") -> Target:
        return Target.rpc("127.0.0.1", self.port, self.key, name=name)

    def close(self) -> None:
        self.server.terminate()
        self.tracker.terminate()


def start_loopback(key: str = "loopback", wait_s: float = 20.0) -> LoopbackFarm:
    """Start a tracker + server bound to 127.0.0.1 only; waits until the server registered."""
    api = load()
    Tracker = rpc_tracker_class()  # noqa: N806 - a class
    port = _free_port()
    tracker = Tracker(host="127.0.0.1", port=port, port_end=port + 50,
                                      silent=True)
    server = api.rpc.Server(
        host="127.0.0.1", port=_free_port(), port_end=65535, key=key,
        tracker_addr=("127.0.0.1", tracker.port), silent=True,
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        summary = api.rpc.connect_tracker("127.0.0.1", tracker.port).summary()
        if any(q.get("free", 0) for k, q in summary.get("queue_info", {}).items() if k == key):
            return LoopbackFarm(tracker, server, key)
        time.sleep(0.2)
    server.terminate()
    tracker.terminate()
    raise DeviceLost(f"loopback server with key {key!r} did not register within {wait_s}s.")
