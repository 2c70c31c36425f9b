"""A throwaway PostgreSQL server on loopback for the PostgreSQL store's tests.

Debian's server binaries (`apt-get install postgresql`; scripts/dev installs them on CI) are run
with initdb/pg_ctl in a temp dir: trust authentication, loopback only, fsync off (the data dies
with the test session). PostgreSQL refuses to run as root, so under root (CI) the server runs as
`nobody`. Each test gets a database of its own (`PostgresServer.new_database`).

Without the binaries the tests skip with a reason, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "find_postgres_bin", "need_postgres"]


def find_postgres_bin() -> Path | None:
    """The directory with initdb and pg_ctl: Debian's newest major version, else the PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
        else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def need_postgres() -> Path:
    path = find_postgres_bin()
    if path is not None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            path = None
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must have PostgreSQL (scripts/dev installs it) and psycopg")
        pytest.skip("the PostgreSQL store tests need PostgreSQL's server binaries and psycopg")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        # Not under pytest's tmp dir: that one is 0700 root, and the server may run as nobody.
        self.root = Path(tempfile.mkdtemp(prefix="kimi-free-api-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "nobody", "nogroup")
            self._as = ["runuser", "-u", "nobody", "--"]
        self._count = 0

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL, cwd=self.root,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}\n{result.stderr}")

    def start(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-o", options, "-w", "-t", "30", "start",
        )

    def stop(self) -> None:
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        self._count += 1
        name = f"t{self._count}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)
