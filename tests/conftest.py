"""The test harness every concept's tests share.

- `ServerProcess` / the `start_server` fixture: start a folder's server script as
  a real subprocess on `--port 0`, wait (bounded) for its `Listening on <url>`
  line, and stop it at teardown (SIGTERM, then SIGKILL if it lingers).
- `run_script`: run a folder's script to completion and capture its output.
- `load_module`: import a module from a concept folder by its plain name, the
  same way the folder's own scripts import each other.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
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
