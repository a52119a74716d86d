"""The two kinds of work the Threading folder measures: computing and waiting.

A CPU-bound task counts primes in a window of numbers (pure Python, so it holds
the GIL the whole time). An I/O-bound task asks a slow local server a question
and blocks on the socket until the answer comes back (and blocking releases the
GIL). README.md, "Two kinds of work", explains why the difference decides
everything.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

# CPU-bound work: count primes in windows of CPU_WINDOW numbers starting high up,
# so every window costs about the same (trial division up to sqrt(n) barely grows
# between 1,000,000 and 1,500,000). One window takes ~60 ms on a 2020s core.
CPU_FIRST_NUMBER = 1_000_000
CPU_WINDOW = 30_000

# I/O-bound work: each request waits IO_DELAY seconds inside the server, the way
# a query waits on a database. The client sees that time as a blocking socket read.
IO_DELAY = 0.1
IO_TIMEOUT = 10.0  # seconds a client waits for a reply before giving up

KINDS = ("cpu", "io")


class RunFailed(RuntimeError):
    """A way of running the tasks failed part-way: a worker died, or a task raised."""


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
    """`count` tasks of one kind; io tasks need the `address` of a running slow server."""
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


# --- I/O-bound: asking the slow server (slow_server.py) -----------------------------


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
