"""Start, kill and restart the three services as real processes (for demo.py and bench.py).

Each service runs as its own `python <script> --port ...` subprocess with its
own SQLite file in a working directory (demo.py and bench.py use the
git-ignored out/). A restarted service comes back on the same port with the
same file, which is what a crashed server does after a reboot, and what lets
the others reach it again at the address they know.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"  # git-ignored; demo.py and bench.py keep their databases here
DATABASES = ("inventory.db", "delivery.db", "coordinator.db")
STARTUP_TIMEOUT = 20.0  # s for a service to print its Listening line
HTTP_TIMEOUT = 15.0  # s for one request from the demo or bench
LISTENING = "Listening on "


def fresh_workdir(directory: Path) -> Path:
    """Create `directory` and delete the databases an earlier run left there: a fresh start."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in DATABASES:
        for suffix in ("", "-wal", "-shm"):
            (directory / (name + suffix)).unlink(missing_ok=True)
    return directory


class ServiceDown(RuntimeError):
    """A service did not start, or stopped answering."""


class Service:
    """One running service script; its output is kept in `lines`."""

    def __init__(self, script: str, args: list[str]) -> None:
        self.script = script
        self.args = args
        self.port = 0
        self.url = ""
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / self.script), "--port", str(self.port), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        listening = threading.Event()

        def drain() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.startswith(LISTENING):
                    self.url = line[len(LISTENING) :].strip()
                    listening.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not listening.wait(0.02):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise ServiceDown(f"{self.script} did not start:\n" + "\n".join(self.lines))
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def wait_for_line(self, start: str, timeout: float = HTTP_TIMEOUT) -> bool:
        """Wait (bounded) until the service has printed a line starting with `start`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(start) for line in self.lines):
                return True
            time.sleep(0.02)
        return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float = HTTP_TIMEOUT) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up (a power cut only if it runs with --volatile-cache)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str) -> dict:
        try:
            return requests.get(self.url + path, timeout=HTTP_TIMEOUT).json()
        except (requests.RequestException, ValueError) as err:
            raise ServiceDown(f"{self.script}: GET {path} failed: {err}") from None

    def post(self, path: str, body: dict) -> dict:
        try:
            return requests.post(self.url + path, json=body, timeout=HTTP_TIMEOUT).json()
        except (requests.RequestException, ValueError) as err:
            raise ServiceDown(f"{self.script}: POST {path} failed: {err}") from None


class Cluster:
    """Inventory, delivery and a coordinator (2PC, or the sequential baseline)."""

    def __init__(
        self,
        workdir: Path,
        stock: str,
        riders: int,
        participant_args: tuple[str, ...] = (),
        coordinator_args: tuple[str, ...] = (),
        coordinator_script: str = "Coordinator.py",
        inventory_dsn: str | None = None,
    ) -> None:
        self.workdir = workdir
        # Inventory keeps its stock in SQLite, or in PostgreSQL when given a DSN.
        store = ["--store", "postgres", "--dsn", inventory_dsn] if inventory_dsn else None
        self.inventory = Service(
            "InventoryService.py",
            [
                *(store or ["--db", str(workdir / "inventory.db")]),
                "--stock",
                stock,
                *participant_args,
            ],
        )
        self.delivery = Service(
            "DeliveryService.py",
            ["--db", str(workdir / "delivery.db"), "--riders", str(riders), *participant_args],
        )
        self.coordinator_script = coordinator_script
        self.coordinator_args = coordinator_args
        self.coordinator: Service | None = None

    def start(self) -> Cluster:
        self.inventory.start()
        self.delivery.start()
        args = ["--inventory", self.inventory.url, "--delivery", self.delivery.url]
        if self.coordinator_script == "Coordinator.py":  # the baseline keeps no log
            args += ["--db", str(self.workdir / "coordinator.db")]
        self.coordinator = Service(self.coordinator_script, [*args, *self.coordinator_args]).start()
        return self

    @property
    def services(self) -> dict[str, Service]:
        assert self.coordinator is not None
        return {
            "coordinator": self.coordinator,
            "inventory": self.inventory,
            "delivery": self.delivery,
        }

    def stop(self) -> None:
        """Coordinator first (if it got started), then the participants."""
        for service in (self.coordinator, self.inventory, self.delivery):
            if service is not None:
                service.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def order(self, item: str, quantity: int, address: str = "1 Example Street") -> dict:
        """Place one order; a coordinator that dies mid-order gives {"error": ...}."""
        assert self.coordinator is not None
        try:
            reply = requests.post(
                self.coordinator.url + "/orders",
                json={"item": item, "quantity": quantity, "address": address},
                timeout=HTTP_TIMEOUT,
            )
            return reply.json()
        except (requests.RequestException, ValueError) as err:
            return {"error": f"no answer from the coordinator ({type(err).__name__})"}

    def fsyncs_and_messages(self) -> tuple[int, int]:
        stats = [s.get("/stats") for s in self.services.values()]
        return sum(s["forced_writes"] for s in stats), sum(s["messages"] for s in stats)

    def transactions(self, participant: str) -> dict[str, dict]:
        service = self.services[participant]
        return {t["txid"]: t for t in service.get("/transactions")["transactions"]}

    def wait_until_settled(self, timeout: float = 20.0) -> bool:
        """Wait until no transaction is PREPARED anywhere; False if that did not happen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(
                self.services[p].get("/transactions?state=PREPARED")["transactions"]
                for p in ("inventory", "delivery")
            ):
                return True
            time.sleep(0.05)
        return False

    def half_done(self) -> list[str]:
        """Orders committed by exactly one participant: the inconsistency 2PC exists to prevent."""
        inventory, delivery = self.transactions("inventory"), self.transactions("delivery")
        return sorted(
            txid
            for txid in set(inventory) | set(delivery)
            if (inventory.get(txid, {}).get("state") == "COMMITTED")
            != (delivery.get(txid, {}).get("state") == "COMMITTED")
        )
