"""The test harness every concept's tests share.

- `ServerProcess` / the `start_server` fixture: start a folder's server script as
  a real subprocess on `--port 0`, wait (bounded) for its `Listening on <url>`
  line, and stop it at teardown (SIGTERM, then SIGKILL if it lingers).
- `run_script`: run a folder's script to completion and capture its output.
- `load_module`: import a module from a concept folder by its plain name, the
  same way the folder's own scripts import each other.
- The real engines production uses, each a private instance on free loopback
  ports with its files in `tmp_path`, always stopped at teardown:
  `redis_server`, `redis_cluster`, `postgres_server`, `etcd_server`. One place
  starts each of them (`Engine`); `make setup` installs their binaries.
"""

from __future__ import annotations

import importlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
LISTENING = "Listening on "
STARTUP_TIMEOUT = 30.0  # seconds a server may take to print its Listening line
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL at teardown


def script_path(script: str) -> Path:
    """`"WebSockets/Server.py"` -> its absolute path, checked to exist."""
    path = ROOT / script
    if not path.is_file():
        raise FileNotFoundError(f"no script {script} in {ROOT}")
    return path


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: unbuffered, so its lines arrive as printed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.update(extra or {})
    return env


class ServerProcess:
    """A server script running as a subprocess, with the URL it announced.

    Its combined stdout/stderr is drained by a thread into `output`, so a
    chatty server never blocks on a full pipe and a failing test can show
    what the server said.
    """

    def __init__(
        self,
        script: str,
        *args: str,
        port: int = 0,
        env: dict[str, str] | None = None,
        timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.script = script
        self.args = args
        self.output: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        self.proc = subprocess.Popen(
            [sys.executable, str(script_path(script)), "--port", str(port), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=child_env(env),
            start_new_session=True,  # its own process group: teardown reaches its children
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            exited = self.proc.poll() is not None
            if exited or time.monotonic() > deadline:
                why = (
                    f"exited with {self.proc.returncode}"
                    if exited
                    else f"printed no '{LISTENING}' line within {timeout:.0f} s"
                )
                self.stop()
                raise RuntimeError(f"{script} {why}; its output:\n{self.text}")

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if not self._listening.is_set() and line.startswith(LISTENING):
                self.url = line[len(LISTENING) :].strip()
                self._listening.set()

    @property
    def text(self) -> str:
        return "".join(self.output)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 0

    def wait_for_output(self, needle: str, timeout: float = 10.0) -> bool:
        """Wait (bounded) until the server has printed `needle`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text:
                return True
            time.sleep(0.02)
        return needle in self.text

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signum)

    def kill(self) -> None:
        """Crash it: SIGKILL, no chance to clean up (for fault-injection tests)."""
        self.signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=STOP_TIMEOUT)

    def stop(self) -> int:
        """Stop it politely (SIGTERM), then by force; return its exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()
        else:
            # The leader is gone; make sure nothing it started lingers.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reader.join(timeout=STOP_TIMEOUT)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def start_server() -> Iterator:
    """Factory: `start_server("SimpleCDN/origin_server.py", "--latency-ms", "0")`.

    Returns a running `ServerProcess`; every server started through it is
    stopped when the test ends, whether it passed or not.
    """
    started: list[ServerProcess] = []

    def _start(script: str, *args: str, **kwargs) -> ServerProcess:
        server = ServerProcess(script, *args, **kwargs)
        started.append(server)
        return server

    yield _start
    for server in reversed(started):
        server.stop()


def run_script(
    script: str, *args: str, timeout: float = 60.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a folder's script to completion; its output is captured as text."""
    return subprocess.run(
        [sys.executable, str(script_path(script)), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env=child_env(),
    )


def load_module(folder: str, name: str) -> ModuleType:
    """Import `name` from a concept folder, as its own scripts would (`import IdGenerator`).

    Module names are unique across the repository, so every folder can sit on
    `sys.path` in one test process without shadowing another.
    """
    path = str(ROOT / folder)
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(name)


# ---------------------------------------------------------------------------
# Real engines: Redis, a Redis Cluster, PostgreSQL, etcd.
#
# Each runs as a private process group on free 127.0.0.1 ports with its files
# under the test's tmp_path, so tests never share state and can crash, pause or
# restart an engine at will. Servers that refuse root (PostgreSQL) run as an
# unprivileged user when the suite runs as root, as CI does.

ENGINE_READY_TIMEOUT = 30.0  # seconds an engine may take to answer its first request
UNPRIVILEGED_USER = "nobody"  # who runs servers that refuse root
REDIS_CLUSTER_BUS_OFFSET = 10_000  # a cluster node also listens on port + 10000


def free_port(bus_offset: int = 0) -> int:
    """A port free on 127.0.0.1 right now (and `port + bus_offset` too, if asked).

    Another process may take it before the caller binds it; `Engine` retries
    a start that fails for that reason.
    """
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not bus_offset:
            return port
        if port + bus_offset <= 65535:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + bus_offset))
                    return port
                except OSError:
                    continue


def engine_binary(name: str, *globs: str) -> str:
    """The path of an engine's binary: on PATH, else the newest match of `globs` under /.

    Without it, a clear skip; in CI a failure, since `make setup` installs
    every engine with apt and a missing one is a broken set-up.
    """
    found = shutil.which(name)
    if not found:
        matches = sorted(p for g in globs for p in Path("/").glob(g) if os.access(p, os.X_OK))
        found = str(matches[-1]) if matches else None
    if found:
        return found
    message = f"{name} is not installed: run `make setup` (it installs it with apt-get)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


UNPRIVILEGED_TMP = Path(tempfile.gettempdir()) / "engines-run-unprivileged"


def unprivileged_dir(link: Path) -> tuple[Path, dict]:
    """A new directory that UNPRIVILEGED_USER owns and can reach; Popen kwargs to run as them.

    Not root: `link` itself, and no kwargs. As root (CI): pytest's temporary
    root is root's and 0700 (and pytest resets it to 0700 at every run), so
    that user could not reach anything under tmp_path. The directory is then
    made under a shared, world-searchable folder in /tmp instead, owned by the
    user, and `link` (in tmp_path) points at it, so its files still sit beside
    the test's others. `remove_unprivileged_dir(link)` deletes it.
    """
    if os.geteuid() != 0:
        link.mkdir(parents=True)
        return link, {}
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    UNPRIVILEGED_TMP.mkdir(exist_ok=True)
    UNPRIVILEGED_TMP.chmod(0o711)  # others may pass through, not list
    real = Path(tempfile.mkdtemp(prefix=f"{link.name}-", dir=UNPRIVILEGED_TMP))
    os.chown(real, user.pw_uid, user.pw_gid)
    link.symlink_to(real, target_is_directory=True)
    return real, {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def give_to_unprivileged(path: Path) -> None:
    """Make UNPRIVILEGED_USER own everything under `path` (as root; else nothing to do)."""
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), user.pw_uid, user.pw_gid)


def remove_unprivileged_dir(link: Path) -> None:
    if link.is_symlink():
        shutil.rmtree(link.resolve(), ignore_errors=True)


class Engine:
    """One engine process: started, crashed, paused, restarted and stopped on demand.

    `command(port)` builds the command line for a port; `ready()` answers True
    once the engine serves requests. A start that dies at once (its port was
    taken in the meantime) is retried on a new port, unless the port is fixed
    because the engine is being restarted on its own data.
    """

    def __init__(
        self,
        name: str,
        command: Callable[[], list[str]],
        ready: Callable[[], bool],
        log: Path,
        stop_signal: int = signal.SIGTERM,
        popen_kwargs: dict | None = None,
    ) -> None:
        self.name = name
        self._command = command
        self._ready = ready
        self.log = log
        self._stop_signal = stop_signal
        self._popen_kwargs = popen_kwargs or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the engine (again) and wait, bounded, until it serves."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already runs"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group: kill() reaches every child
                **self._popen_kwargs,
            )
        deadline = time.monotonic() + ENGINE_READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail}")
            try:
                if self._ready():
                    return
            except Exception:  # not up yet: connection refused, loading, ...
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"{self.name} did not serve within {ENGINE_READY_TIMEOUT:.0f} s:\n{self.tail}"
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def tail(self) -> str:
        """The last lines the engine logged (for failure messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except FileNotFoundError:
            return "(no log)"

    def _signal_group(self, signum: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """Crash it: SIGKILL to the whole process group, no chance to flush or clean up."""
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def pause(self) -> None:
        """Freeze it (SIGSTOP), as a long GC pause or a stalled VM would."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def stop(self) -> None:
        """Stop it cleanly (its own shutdown signal), by force if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGCONT)  # a paused engine cannot shut down
            self._signal_group(self._stop_signal)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT * 2)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # also reaps anything left in the group


def start_engine(make: Callable[[], Engine], attempts: int = 3) -> Engine:
    """Build and start an engine on fresh free ports, retrying if a port was taken."""
    for attempt in range(1, attempts + 1):
        engine = make()
        try:
            engine.start()
            return engine
        except RuntimeError:
            engine.kill()
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Every engine a test started; all are stopped when it ends, pass or fail."""
    started: list[Engine] = []
    yield started
    for engine in reversed(started):
        engine.stop()


# --- Redis -----------------------------------------------------------------


class RedisInstance(Engine):
    """A private redis-server: `.port`, `.url`, `.dir`; `kill/stop/start/pause/resume`."""

    def __init__(self, directory: Path, port: int, extra_args: tuple[str, ...]) -> None:
        import redis  # the client: pinned in requirements.txt

        self.port = port
        self.dir = directory
        self.url = f"redis://127.0.0.1:{port}"
        binary = engine_binary("redis-server")
        directory.mkdir(parents=True, exist_ok=True)
        client = redis.Redis(port=port, socket_timeout=1)
        command = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--save", "",  # no snapshots unless a test asks (extra args win)
            "--appendonly", "no",
            *extra_args,
        ]  # fmt: skip
        super().__init__(
            f"redis-server :{port}", lambda: command, lambda: client.ping(), directory / "log"
        )

    def client(self, **kwargs):
        import redis

        return redis.Redis(port=self.port, **kwargs)


@pytest.fixture
def redis_server(tmp_path, engines) -> Callable[..., RedisInstance]:
    """Factory: `redis_server()` or `redis_server("--maxmemory", "10mb")` -> a running Redis.

    Each call starts another private redis-server (no persistence unless the
    extra arguments ask for it); all are stopped at teardown.
    """

    def _start(*extra_args: str, bus_offset: int = 0) -> RedisInstance:
        def make() -> RedisInstance:
            port = free_port(bus_offset)
            return RedisInstance(tmp_path / f"redis-{port}", port, extra_args)

        instance = start_engine(make)
        engines.append(instance)
        return instance

    return _start


CLUSTER_NODE_ARGS = (
    "--cluster-enabled", "yes",
    "--cluster-config-file", "nodes.conf",
    "--cluster-node-timeout", "2000",
)  # fmt: skip


class RedisCluster:
    """A local Redis Cluster of `masters` nodes (no replicas) that share the 16,384 slots."""

    def __init__(self, start_node: Callable[[], RedisInstance], masters: int) -> None:
        self._start_node = start_node
        self.nodes = [start_node() for _ in range(masters)]
        created = subprocess.run(
            [
                engine_binary("redis-cli"),
                "--cluster", "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas", "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}"
            )
        self.wait_until_ok()

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    def wait_until_ok(self, timeout: float = ENGINE_READY_TIMEOUT) -> None:
        """Wait until every node reports `cluster_state:ok`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [node.client().cluster("info") for node in self.nodes]  # parsed to dicts
            if all(info.get("cluster_state") == "ok" for info in infos):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def add_node(self) -> RedisInstance:
        """Start one more cluster-enabled, empty node; joining it is the caller's job."""
        return self._start_node()


@pytest.fixture
def redis_cluster(redis_server) -> Callable[..., RedisCluster]:
    """Factory: `redis_cluster(masters=3)` -> a running local Redis Cluster.

    Its nodes are ordinary `redis_server` instances started with cluster mode
    on (so they are stopped at teardown like any other).
    """

    def _start(masters: int = 3) -> RedisCluster:
        return RedisCluster(
            lambda: redis_server(*CLUSTER_NODE_ARGS, bus_offset=REDIS_CLUSTER_BUS_OFFSET), masters
        )

    return _start


# --- PostgreSQL ------------------------------------------------------------

POSTGRES_BIN_GLOB = "usr/lib/postgresql/*/bin/"
POSTGRES_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",  # TCP only: tmp_path is too long for a socket path
    "max_prepared_transactions": "64",  # PREPARE TRANSACTION is off (0) by default
    "max_connections": "60",
    "shared_buffers": "16MB",
    "fsync": "on",  # a crash test must lose only what PostgreSQL itself would lose
}


@pytest.fixture(scope="session")
def postgres_template(tmp_path_factory) -> Iterator[Path]:
    """An initdb'ed data directory, made once per test process and copied for each test."""
    initdb = engine_binary("initdb", POSTGRES_BIN_GLOB + "initdb")
    link = tmp_path_factory.mktemp("postgres") / "template"
    home, as_user = unprivileged_dir(link)
    template = home / "data"
    made = subprocess.run(
        [initdb, "-D", str(template), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        capture_output=True,
        text=True,
        timeout=120,
        **as_user,
    )
    if made.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{made.stdout}{made.stderr}")
    yield template
    remove_unprivileged_dir(link)


class PostgresInstance(Engine):
    """A private PostgreSQL cluster: `.dsn`, `.port`, `.data_dir`; `kill/stop/start/pause/resume`.

    `kill()` SIGKILLs the postmaster and every backend at once: a crash, after
    which `start()` runs crash recovery on the same data directory and port.
    """

    def __init__(self, data_dir: Path, port: int, as_user: dict) -> None:
        import psycopg

        self.port = port
        self.data_dir = data_dir
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        binary = engine_binary("postgres", POSTGRES_BIN_GLOB + "postgres")
        settings = [
            arg for key, value in POSTGRES_SETTINGS.items() for arg in ("-c", f"{key}={value}")
        ]
        command = [binary, "-D", str(data_dir), "-p", str(port), *settings]

        def ready() -> bool:
            with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)

        super().__init__(
            f"postgres :{port}",
            lambda: command,
            ready,
            data_dir.parent / "postgres.log",
            stop_signal=signal.SIGINT,  # PostgreSQL's "fast" shutdown
            popen_kwargs=as_user,
        )

    def connect(self, **kwargs):
        import psycopg

        return psycopg.connect(self.dsn, **kwargs)


@pytest.fixture
def postgres_server(tmp_path, postgres_template, engines) -> Iterator[PostgresInstance]:
    """A running private PostgreSQL 15 cluster for this test (superuser `postgres`, trust auth)."""
    homes: list[Path] = []

    def make() -> PostgresInstance:
        port = free_port()
        link = tmp_path / f"postgres-{port}"
        home, as_user = unprivileged_dir(link)
        homes.append(link)
        shutil.copytree(postgres_template, home / "data", symlinks=True)
        give_to_unprivileged(home)
        return PostgresInstance(home / "data", port, as_user)

    instance = start_engine(make)
    engines.append(instance)
    yield instance
    instance.stop()
    for link in homes:
        remove_unprivileged_dir(link)


# --- etcd ------------------------------------------------------------------


class EtcdInstance(Engine):
    """A private single-member etcd: `.url` (client URL; v3 JSON gateway at `.url + "/v3/..."`)."""

    def __init__(self, data_dir: Path, client_port: int, peer_port: int) -> None:
        import requests

        self.port = client_port
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        command = [
            engine_binary("etcd"),
            "--name", "test",
            "--data-dir", str(data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip

        def ready() -> bool:
            return requests.get(self.url + "/health", timeout=2).json().get("health") == "true"

        data_dir.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(
            f"etcd :{client_port}", lambda: command, ready, data_dir.parent / "etcd.log"
        )


@pytest.fixture
def etcd_server(tmp_path, engines) -> EtcdInstance:
    """A running private etcd (3.4, one member) for this test, its data in tmp_path."""

    def make() -> EtcdInstance:
        client_port, peer_port = free_port(), free_port()
        return EtcdInstance(tmp_path / f"etcd-{client_port}" / "data", client_port, peer_port)

    instance = start_engine(make)
    engines.append(instance)
    return instance
