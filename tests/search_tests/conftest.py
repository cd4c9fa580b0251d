"""A throwaway PostgreSQL cluster for the distributed-search tests.

Debian's ``postgresql`` package (``make setup`` installs it) puts ``initdb`` and ``pg_ctl`` in
``/usr/lib/postgresql/<version>/bin``. The cluster listens on a unix socket only, in its own
temporary folder, with trust authentication; as root it runs as the ``postgres`` user (PostgreSQL
refuses to run as root). Tests that use it skip, saying why, only when no server is installed.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The socket folder of a fresh cluster (one per test session)."""
    bindir = _bin_dir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql; `make setup` "
                    "installs it as root)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="tp-pg-", dir="/tmp"))  # short: socket path limit
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "server.log"),
            "-o", f"-k {folder} -c listen_addresses='' -c fsync=off -c max_connections=200",
            "start")
    except subprocess.CalledProcessError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"the throwaway PostgreSQL did not start: "
                           f"{e.stderr.decode(errors='replace')}") from None
    try:
        yield str(folder)
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str, request: pytest.FixtureRequest) -> str:
    """``postgresql://postgres@/<db>?host=<socket dir>``: a new, empty database per test."""
    import psycopg

    name = "t_" + re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:50]
    with psycopg.connect(f"postgresql://postgres@/postgres?host={postgres_server}",
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@/{name}?host={postgres_server}"
