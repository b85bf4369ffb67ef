"""A throwaway PostgreSQL server for the tests, started from Debian's binaries.

``initdb`` and ``postgres`` refuse to run as root, so as root the server runs as the unprivileged
``postgres`` user Debian's package creates (through ``runuser``), in a data directory that user owns. The
server listens on 127.0.0.1 only, every connection needs the generated password (scram-sha-256; no
``trust``), and it is stopped and its directory removed when the session ends.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ("MISSING_BINARIES", "PostgresServer", "find_binaries", "postgres_server")

MISSING_BINARIES = (
    "PostgreSQL's initdb and pg_ctl were not found on PATH or under /usr/lib/postgresql/*/bin; "
    "install the Debian package 'postgresql' (apt-get install postgresql) to run these tests"
)


def find_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or ``None``."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(directory, "initdb").is_file() and Path(directory, "pg_ctl").is_file():
            return Path(directory)
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class PostgresServer:
    """A running server: connect as ``user`` with ``password`` to 127.0.0.1:``port``."""

    bindir: Path
    datadir: Path
    port: int
    user: str
    password: str
    as_user: tuple[str, ...]
    """The command prefix that runs a program as the server's OS user (empty when not root)."""

    def dsn(self, dbname: str = "postgres", *, password: str | None = None) -> str:
        """A ``postgresql://`` URL of database ``dbname``."""
        secret = self.password if password is None else password
        return f"postgresql://{self.user}:{secret}@127.0.0.1:{self.port}/{dbname}"

    def pg_ctl(self, *args: str) -> None:
        """Run ``pg_ctl`` on this server's data directory."""
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        """Start (or restart after ``stop``) the server and wait until it accepts connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.datadir} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self.pg_ctl("start", "-w", "-t", "60", "-l", str(self.datadir / "server.log"), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode="immediate"`` kills it as a crash would)."""
        self.pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (from ``template0``) and return its URL."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.dsn(name)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a throwaway server; stop it and remove its files at exit.

    Raises:
        FileNotFoundError: the binaries are missing (message: ``MISSING_BINARIES``).
        PermissionError: running as root without a ``postgres`` OS user to run the server as.
    """
    bindir = find_binaries()
    if bindir is None:
        raise FileNotFoundError(MISSING_BINARIES)
    as_user: tuple[str, ...] = ()
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            msg = "running as root and there is no 'postgres' OS user to run the PostgreSQL server as"
            raise PermissionError(msg) from None
        as_user = ("runuser", "-u", "postgres", "--")
    root = Path(tempfile.mkdtemp(prefix="stageflow-pg-"))
    datadir = root / "data"
    datadir.mkdir()
    password = secrets.token_urlsafe(24)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n", encoding="utf-8")
    if owner is not None:
        for path in (root, datadir, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    os.chmod(root, 0o700)
    os.chmod(datadir, 0o700)
    os.chmod(pwfile, 0o600)
    server = PostgresServer(bindir, datadir, _free_port(), "stageflow", password, as_user)
    try:
        subprocess.run(
            [
                *as_user,
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                server.user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        pwfile.unlink()
        for attempt in range(3):
            try:
                server.start()
                break
            except subprocess.CalledProcessError:
                # the free port can be taken between probing and binding it: try another one
                if attempt == 2:
                    raise
                server = dataclasses.replace(server, port=_free_port())
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield server
    finally:
        try:
            server.stop("immediate")
        except subprocess.SubprocessError:
            pass
        shutil.rmtree(root, ignore_errors=True)
