"""A real, throw-away PostgreSQL server for the tests that need one.

``scripts/ensure_postgres.sh`` (run by ``scripts/test.sh``) installs Debian's server
package when it is absent; the tests never install anything. The ``postgres_url``
fixture makes an ``initdb`` data folder in a temporary directory, starts the server on
a free port of 127.0.0.1 (no other address), creates a user with a password and a
database, yields the URL, and stops the server and removes the folder at the end.

When the server binaries or the Python driver are missing, the tests that use the
fixture fail (not skip) with what to run. ``scripts/bench_workers.py`` starts its
server with :func:`temporary_postgres` from here too.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_HOW_TO_INSTALL = "run 'bash scripts/ensure_postgres.sh' (it runs 'apt-get install -y postgresql' on Debian)"


@dataclass(frozen=True)
class PostgresServer:
    """A running test server: ``url`` has the password; never print it unmasked."""

    host: str
    port: int
    user: str
    password: str
    database: str

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def url_with(self, *, password: str | None = None, port: int | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql+psycopg2://{self.user}:{pw}@{self.host}:{port or self.port}/{self.database}"


def find_postgres_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: Debian's newest, else PATH, else pg_config."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")],
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").is_file():
            return Path(out)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresUnavailable(RuntimeError):
    """The server binaries, the driver or the 'postgres' user are missing."""


def _as_postgres(argv: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as the 'postgres' system user."""
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root, but 'runuser' is missing to start PostgreSQL as the postgres user")
    return [runuser, "-u", "postgres", "--", *argv]


def _run(argv: list[str], what: str, timeout: float = 60) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@contextlib.contextmanager
def temporary_postgres() -> Iterator[PostgresServer]:
    """Start a throw-away PostgreSQL server on 127.0.0.1; stop it and delete its files on exit.

    Raises
    ------
    PostgresUnavailable
        The driver, the server binaries or (as root) the 'postgres' user are missing.
    """
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("the PostgreSQL tests need the driver psycopg2: pip install psycopg2-binary") from None
    bindir = find_postgres_bindir()
    if bindir is None:
        raise PostgresUnavailable(f"PostgreSQL server binaries (initdb, pg_ctl) not found; {_HOW_TO_INSTALL}")
    owner = None
    if os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                f"running as root but there is no 'postgres' system user to run the server; {_HOW_TO_INSTALL}"
            ) from None

    # Not under pytest's tmp_path: its parent folder is private to root, and the server
    # runs as 'postgres'.
    root = Path(tempfile.mkdtemp(prefix="ciss_pg_"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
        os.chown(data, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    server = PostgresServer(
        host="127.0.0.1", port=port, user="ciss_tester", password="pw-" + secrets.token_hex(8), database="ciss_studies"
    )
    log = root / "server.log"
    try:
        # Local (socket) connections are trusted so that we can create the user; every
        # TCP connection must give the password.
        _run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                           "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"]), "initdb")
        # fsync off: a throw-away server need not survive a power cut, and tests run faster.
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c fsync=off"
        _run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                           "start"]), "pg_ctl start", timeout=90)
        psql = shutil.which("psql", path=str(bindir)) or shutil.which("psql") or "psql"
        for statement in (
            f"CREATE ROLE {server.user} LOGIN PASSWORD '{server.password}'",
            f"CREATE DATABASE {server.database} OWNER {server.user}",
        ):
            _run([psql, "-h", str(root), "-p", str(port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                  "-q", "-c", statement], "creating the test user and database")
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60, check=False)
        for _ in range(20):  # the server may take a moment to let go of its files
            shutil.rmtree(root, ignore_errors=True)
            if not root.exists():
                break
            time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1 for this test session (see the module docstring)."""
    try:
        manager = temporary_postgres()
        server = manager.__enter__()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        manager.__exit__(None, None, None)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL (with its password) of the session's PostgreSQL server."""
    return postgres_server.url
