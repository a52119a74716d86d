"""A private, single-member etcd for demo.py and bench.py: free ports, its own data
directory, stopped afterwards. (The tests start theirs with conftest's etcd_server.)"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

READY_TIMEOUT = 30.0  # seconds etcd may take to answer /health
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL


class EtcdNotInstalledError(RuntimeError):
    """No etcd binary on PATH."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalEtcd:
    """etcd on 127.0.0.1 with its data in `directory`; crash, pause, restart at will."""

    def __init__(self, directory: Path):
        binary = shutil.which("etcd")
        if binary is None:
            raise EtcdNotInstalledError(
                "etcd is not installed: run `make setup` (it installs etcd-server with apt-get)"
            )
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        client, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{client}"
        self.command = [
            binary,
            "--name", "local",
            "--data-dir", str(self.directory / "data"),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"local=http://127.0.0.1:{peer}",
            "--log-level", "warn",
            "--logger", "zap",
        ]  # fmt: skip
        self.proc: subprocess.Popen | None = None

    def start(self) -> LocalEtcd:
        """Start (or restart, same data and ports) and wait until it answers."""
        with open(self.directory / "etcd.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl+C in the terminal is ours to handle
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with {self.proc.returncode}; see {self.directory / 'etcd.log'}"
                )
            try:
                if requests.get(f"{self.url}/health", timeout=1).json().get("health") == "true":
                    return self
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"etcd did not answer within {READY_TIMEOUT:.0f} s")

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        """Crash it (SIGKILL)."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGCONT)  # a paused etcd cannot shut down
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> LocalEtcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
