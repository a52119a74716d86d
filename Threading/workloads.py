"""The two kinds of work the Threading folder measures: computing and waiting.

A CPU-bound task counts primes in a window of numbers (pure Python, so it holds
the GIL the whole time). An I/O-bound task asks a slow local server a question
and blocks on the socket until the answer comes back (and blocking releases the
GIL). README.md, "Two kinds of work", explains why the difference decides
everything.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import socket
import socketserver
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

# CPU-bound work: count primes in windows of CPU_WINDOW numbers starting high up,
# so every window costs about the same (trial division up to sqrt(n) barely grows
# between 1,000,000 and 1,500,000). One window takes ~60 ms on a 2020s core.
CPU_FIRST_NUMBER = 1_000_000
CPU_WINDOW = 30_000

# I/O-bound work: each request waits IO_DELAY seconds inside the server, the way
# a query waits on a database. The client sees that time as a blocking socket read.
IO_DELAY = 0.1
IO_TIMEOUT = 10.0  # seconds a client waits for a reply before giving up
SERVER_STARTUP_TIMEOUT = 10.0  # seconds the slow server may take to start
SERVER_BACKLOG = 128  # pending connections the server accepts at once (32 clients arrive together)
MAX_REQUEST_BYTES = 64  # a request is one short line: the task's number

KINDS = ("cpu", "io")


class ServerStartError(RuntimeError):
    """The slow server did not report its port in time."""


@dataclass(frozen=True)
class Task:
    """One unit of work: small and picklable, so a process pool can send it to a child."""

    kind: str  # "cpu" or "io"
    index: int  # cpu: which window of numbers; io: the question asked
    size: int = CPU_WINDOW  # cpu: how many numbers the window holds
    address: tuple[str, int] | None = None  # io: where the slow server listens


def make_tasks(
    kind: str, count: int, *, address: tuple[str, int] | None = None, size: int = CPU_WINDOW
) -> list[Task]:
    """`count` tasks of one kind; io tasks need the `address` of a running SlowServer."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "io" and address is None:
        raise ValueError("io tasks need the address of a running SlowServer")
    return [Task(kind, index, size, address) for index in range(count)]


def do_task(task: Task) -> int:
    """Run one task and return its answer. A top-level function, so it pickles."""
    if task.kind == "cpu":
        return count_primes(task.index, task.size)
    if task.kind == "io" and task.address is not None:
        return ask_slow_server(task.address, task.index)
    raise ValueError(f"cannot run {task}: unknown kind or missing server address")


def run_sequentially(tasks: list[Task]) -> list[int]:
    """The baseline every speed-up is measured against: one task after another."""
    return [do_task(task) for task in tasks]


def timed(run: Callable[..., list[int]], *args: object) -> tuple[float, list[int]]:
    """Call `run(*args)`; return its wall time in seconds and its answers."""
    started = time.perf_counter()
    answers = run(*args)
    return time.perf_counter() - started, answers


def bounded_int(upper: int) -> Callable[[str], int]:
    """An argparse type: a whole number from 1 to `upper`, with a message that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not 1 <= value <= upper:
            raise argparse.ArgumentTypeError(f"must be between 1 and {upper}, got {value}")
        return value

    return parse


# --- CPU-bound: counting primes ---------------------------------------------------


def is_prime(n: int) -> bool:
    """Trial division by odd numbers up to sqrt(n): slow on purpose, and all Python."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True


def count_primes(window: int, size: int = CPU_WINDOW) -> int:
    """How many primes lie in the `window`-th block of `size` numbers."""
    first = CPU_FIRST_NUMBER + window * size
    return sum(1 for n in range(first, first + size) if is_prime(n))


# --- I/O-bound: a slow server and its client ----------------------------------------


def ask_slow_server(address: tuple[str, int], question: int) -> int:
    """Send `question` to the slow server; block until it answers (question squared)."""
    with socket.create_connection(address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(f"{question}\n".encode())
        with sock.makefile("rb") as replies:
            reply = replies.readline()  # the wait: the thread sleeps in recv(), GIL released
    try:
        return int(reply)
    except ValueError:
        raise ConnectionError(f"slow server at {address} replied {reply!r}") from None


class _SlowHandler(socketserver.StreamRequestHandler):
    """One connection: read a number, wait the server's delay, answer its square."""

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST_BYTES)
        try:
            question = int(line)
        except ValueError:
            self.wfile.write(b"error: send one integer per line\n")
            return
        time.sleep(self.server.delay)  # type: ignore[attr-defined]
        self.wfile.write(f"{question * question}\n".encode())


class _SlowTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True  # a stuck connection never keeps the server alive
    allow_reuse_address = True
    request_queue_size = SERVER_BACKLOG

    def __init__(self, host: str, delay: float) -> None:
        super().__init__((host, 0), _SlowHandler)  # port 0: the OS picks a free port
        self.delay = delay


def _serve(host: str, delay: float, report_port: Connection) -> None:
    """Child-process entry point: bind, tell the parent the port, serve until terminated."""
    with _SlowTCPServer(host, delay) as server:
        report_port.send(server.server_address[1])
        report_port.close()
        server.serve_forever()


class SlowServer:
    """A TCP server on 127.0.0.1 that answers every request after `delay` seconds.

    It stands for any slow dependency (a database, another service). It runs in a
    process of its own, like a real one would, so its threads never compete with
    the clients being measured for their interpreter's GIL, and the measuring
    process stays free of extra threads (forking a process that has threads is
    unsafe). Use it as a context manager; `address` is where it listens.
    """

    def __init__(self, delay: float = IO_DELAY, host: str = "127.0.0.1") -> None:
        self.delay = delay
        self.host = host
        self.address: tuple[str, int] = (host, 0)
        self._process: multiprocessing.Process | None = None

    def __enter__(self) -> SlowServer:
        receive_port, send_port = multiprocessing.Pipe(duplex=False)
        self._process = multiprocessing.Process(
            target=_serve, args=(self.host, self.delay, send_port), name="slow-server", daemon=True
        )
        self._process.start()
        send_port.close()  # the child holds its own copy
        try:
            port = receive_port.recv() if receive_port.poll(SERVER_STARTUP_TIMEOUT) else None
        except EOFError:  # the child exited before it could bind
            port = None
        finally:
            receive_port.close()
        if port is None:
            exit_code = self._process.exitcode
            self.__exit__()
            raise ServerStartError(
                f"the slow server on {self.host} reported no port within "
                f"{SERVER_STARTUP_TIMEOUT:.0f} s (exit code {exit_code})"
            )
        self.address = (self.host, port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(timeout=SERVER_STARTUP_TIMEOUT)
            self._process = None


# --- the machine the figures come from --------------------------------------------


def usable_cores() -> int:
    """Cores this process may run on (a container or taskset may allow fewer than exist)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gil_enabled() -> bool:
    """False only on a free-threaded build (3.13t and later) running without the GIL."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)  # exists from Python 3.13
    return True if is_gil_enabled is None else bool(is_gil_enabled())


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> str:
    """The 1-minute load average ("n/a" where the OS has none): how busy the cores were."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def machine_summary() -> str:
    """One line naming everything a reader needs to compare figures with their own."""
    return (
        f"{usable_cores()} cores ({cpu_model()}), Python {platform.python_version()} "
        f"({'GIL enabled' if gil_enabled() else 'free-threaded, GIL disabled'}), "
        f"{platform.system()} {platform.release()}, "
        f"process start method {multiprocessing.get_start_method()}, "
        f"load average {load_average()}"
    )


# --- shared by MultiThreading.py and MultiProcessing.py -----------------------------

MAX_WORKERS = 256  # a sanity limit: each process costs tens of MB, each thread a stack
MAX_TASKS = 10_000
DEFAULT_TASKS = {"cpu": 16, "io": 32}  # ~1 s of primes; 32 waits, as in the README
MAX_DELAY = 10.0


def delay_seconds(text: str) -> float:
    """An argparse type: seconds from 0 to MAX_DELAY."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value <= MAX_DELAY:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_DELAY:g} s, got {text}")
    return value


def argument_parser(
    description: str, default_kind: str, workers_are: str
) -> argparse.ArgumentParser:
    """The options both scripts take: --kind, --workers, --tasks, --delay."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--kind", choices=KINDS, default=default_kind, help=f"default: {default_kind}"
    )
    parser.add_argument(
        "--workers", type=bounded_int(MAX_WORKERS), default=4, help=f"{workers_are} (default: 4)"
    )
    parser.add_argument(
        "--tasks",
        type=bounded_int(MAX_TASKS),
        help=f"how many tasks (default: {DEFAULT_TASKS['cpu']} cpu, {DEFAULT_TASKS['io']} io)",
    )
    parser.add_argument(
        "--delay",
        type=delay_seconds,
        default=IO_DELAY,
        help=f"io: seconds the server waits before each answer (default: {IO_DELAY})",
    )
    return parser


def compare(args: argparse.Namespace, runners: dict[str, Callable[..., list[int]]]) -> int:
    """Run the tasks sequentially, then with each runner; print one table; 0 if answers agree."""
    count = args.tasks or DEFAULT_TASKS[args.kind]
    print(
        f"{count} {args.kind}-bound tasks, {args.workers} workers, "
        f"{usable_cores()} CPU cores, Python {platform.python_version()}"
    )
    with SlowServer(args.delay) as server:  # only io tasks talk to it
        tasks = make_tasks(args.kind, count, address=server.address)
        baseline, expected = timed(run_sequentially, tasks)
        rows = [("sequential", baseline, expected)]
        for name, run in runners.items():
            seconds, answers = timed(run, tasks, args.workers)
            rows.append((name, seconds, answers))

    width = max(len(name) for name, _, _ in rows)
    print(f"{'how':<{width}}  {'seconds':>7}  {'speed-up':>8}  answers")
    for name, seconds, answers in rows:
        same = "same as sequential" if answers == expected else "DIFFERENT from sequential"
        print(f"{name:<{width}}  {seconds:7.3f}  {baseline / seconds:7.2f}x  {same}")
    return 0 if all(answers == expected for _, _, answers in rows) else 1
