"""The convoy effect: a thread that waits on I/O queues for the GIL behind threads that compute.

One thread asks a server a question and waits for the answer, over and over:
a web handler talking to its database. Alone, each round trip takes about as
long as the server needs. Beside threads that compute in pure Python, the
answer arrives just as fast, but the waiting thread cannot run until it gets
the GIL back, and a computing thread lets go of it only when asked, after the
switch interval (`sys.getswitchinterval()`, 5 ms by default). With several
computing threads the waiter may lose the hand-over to another of them and wait
again. A smaller switch interval shortens the queue, at the cost of more
switching. The control row computes in a process instead, with a GIL of its own:
it keeps a core just as busy, and the round trips barely notice, so the cost
beside threads is the shared GIL, not a lack of cores. README.md, "The convoy
effect", explains the run.

    python Threading/convoy.py --cpu-threads 0,1,2,4 --switch-intervals 0.005,0.0005
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event

import command_line
import parent_watch
import workloads
from slow_server import SlowServer

SERVER_DELAY = 0.001  # the server answers in 1 ms, like a quick database query
DEFAULT_TRIPS = 100
MAX_TRIPS = 10_000
DEFAULT_CPU_THREADS = (0, 1, 2, 4)
MAX_CPU_THREADS = 16
DEFAULT_INTERVALS = (0.005, 0.0005)  # CPython's default, and a tenth of it
MIN_INTERVAL, MAX_INTERVAL = 0.000_01, 0.1  # seconds
TIME_BUDGET = 5.0  # seconds of round trips per row at most: a long convoy stops early
SPIN_WINDOW = 2_000  # numbers per prime count in a computing thread: ~4 ms of Python


def round_trips(address: tuple[str, int], count: int, budget: float = TIME_BUDGET) -> list[float]:
    """Ask the slow server `count` questions on one connection; each round trip's seconds.

    Stops early, with fewer times, once `budget` seconds have passed.
    """
    latencies: list[float] = []
    give_up = time.monotonic() + budget
    with socket.create_connection(address, timeout=workloads.IO_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # send each line at once
        with sock.makefile("rb") as replies:
            for question in range(count):
                started = time.perf_counter()
                sock.sendall(f"{question}\n".encode())
                reply = replies.readline()  # the wait: GIL released, then wanted back
                latencies.append(time.perf_counter() - started)
                if reply != f"{question * question}\n".encode():  # also b"": it hung up
                    raise ConnectionError(f"server answered {reply!r} to {question}")
                if time.monotonic() > give_up:
                    break
    return latencies


def compute_until(stop: threading.Event, running: threading.Barrier) -> None:
    """A CPU-bound thread: count primes, holding the GIL but when asked, until `stop`."""
    running.wait()
    window = 0
    while not stop.is_set():
        workloads.count_primes(window % 100, SPIN_WINDOW)
        window += 1


def compute_in_process(stop: Event, running: Event, parent_pid: int) -> None:
    """The control: the same computing in a child process, which has a GIL of its own."""
    parent_watch.exit_with_parent(parent_pid)  # never left computing by a killed parent
    running.set()
    window = 0
    while not stop.is_set():
        workloads.count_primes(window % 100, SPIN_WINDOW)
        window += 1


@dataclass(frozen=True)
class Convoy:
    """Round-trip latencies measured beside `cpu_threads` computing threads (or, for the
    control row, beside `cpu_processes` computing processes)."""

    cpu_threads: int
    switch_interval: float  # seconds
    latencies: list[float]  # seconds, one per round trip
    cpu_processes: int = 0

    @property
    def beside(self) -> str:
        """What computed beside the round trips, in words: "nothing", "2 threads", ..."""
        if self.cpu_processes:
            return f"{self.cpu_processes} process" + "es" * (self.cpu_processes != 1)
        if self.cpu_threads:
            return f"{self.cpu_threads} thread" + "s" * (self.cpu_threads != 1)
        return "nothing"

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p90(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(0.9 * (len(ordered) - 1))]


def measure(
    address: tuple[str, int],
    cpu_threads: int,
    trips: int,
    switch_interval: float | None = None,
    budget: float = TIME_BUDGET,
    cpu_processes: int = 0,
) -> Convoy:
    """Time `trips` round trips while `cpu_threads` threads (and `cpu_processes` child
    processes) compute, at `switch_interval`.

    The switch interval belongs to the whole interpreter: it is set for the
    measurement and put back afterwards, whatever happens; the threads and the
    processes are stopped whatever happens too.
    """
    previous = sys.getswitchinterval()
    stop = threading.Event()
    running = threading.Barrier(cpu_threads + 1)  # the round trips start once all compute
    computers = [
        threading.Thread(target=compute_until, args=(stop, running), name=f"cpu-{i}", daemon=True)
        for i in range(cpu_threads)
    ]
    process_stop = multiprocessing.Event()
    process_running = [multiprocessing.Event() for _ in range(cpu_processes)]
    processes = [
        multiprocessing.Process(
            target=compute_in_process,
            args=(process_stop, started, os.getpid()),
            name=f"cpu-process-{i}",
        )
        for i, started in enumerate(process_running)
    ]
    try:
        if switch_interval is not None:
            sys.setswitchinterval(switch_interval)
        for process in processes:  # before the threads: forking a process with threads is unsafe
            process.start()
        for started in process_running:
            started.wait(timeout=workloads.IO_TIMEOUT)
        for thread in computers:
            thread.start()
        running.wait(timeout=workloads.IO_TIMEOUT)
        latencies = round_trips(address, trips, budget)
        interval = sys.getswitchinterval()
    finally:
        stop.set()
        process_stop.set()
        for thread in computers:
            thread.join(timeout=workloads.IO_TIMEOUT)
        for process in processes:
            process.join(timeout=workloads.IO_TIMEOUT)
            if process.is_alive():
                process.kill()
                process.join()
        sys.setswitchinterval(previous)
    return Convoy(cpu_threads, interval, latencies, cpu_processes)


def print_header(indent: str = "") -> None:
    print(
        f"{indent}{'switch interval':<16}{'computing beside':<18}{'trips':>5}{'median':>10}"
        f"{'p90':>10}{'x alone':>9}"
    )


def print_row(row: Convoy, alone: Convoy, indent: str = "") -> None:
    print(
        f"{indent}{row.switch_interval * 1000:>5.2f} ms{'':<8}{row.beside:<18}"
        f"{len(row.latencies):>5}{row.median * 1000:>7.2f} ms{row.p90 * 1000:>7.2f} ms"
        f"{row.median / alone.median:>8.1f}x"
    )


def run_table(
    cpu_threads: tuple[int, ...],
    intervals: tuple[float, ...],
    trips: int,
    budget: float = TIME_BUDGET,
    indent: str = "",
) -> dict[float, list[Convoy]]:
    """Measure and print, at each interval, one row per thread count, then the control:
    one computing process instead of a thread. 0 threads always comes first, as the
    baseline each row is compared with. Starts and stops its own server."""
    print_header(indent)
    rows: dict[float, list[Convoy]] = {}
    with SlowServer(SERVER_DELAY) as server:
        for interval in intervals:
            rows[interval] = []
            for count in sorted({0, *cpu_threads}):
                rows[interval].append(measure(server.address, count, trips, interval, budget))
                print_row(rows[interval][-1], rows[interval][0], indent)
            control = measure(server.address, 0, trips, interval, budget, cpu_processes=1)
            rows[interval].append(control)
            print_row(control, rows[interval][0], indent)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time round trips to a local server that answers in 1 ms, alone, "
        "beside threads that compute, and beside a process that computes (the control), "
        "at one or more GIL switch intervals."
    )
    parser.add_argument(
        "--cpu-threads",
        type=command_line.comma_list(command_line.bounded_int(MAX_CPU_THREADS, lower=0)),
        default=DEFAULT_CPU_THREADS,
        help="comma-separated counts of computing threads (default: 0,1,2,4)",
    )
    parser.add_argument(
        "--trips",
        type=command_line.bounded_int(MAX_TRIPS),
        default=DEFAULT_TRIPS,
        help=f"round trips per row, stopped after {TIME_BUDGET:.0f} s (default: {DEFAULT_TRIPS})",
    )
    parser.add_argument(
        "--switch-intervals",
        type=command_line.comma_list(command_line.bounded_seconds(MIN_INTERVAL, MAX_INTERVAL)),
        default=DEFAULT_INTERVALS,
        help="comma-separated switch intervals in seconds (default: 0.005,0.0005)",
    )
    args = parser.parse_args(argv)

    print(
        f"Round trips to a server that answers in {SERVER_DELAY * 1000:g} ms, beside threads "
        "counting primes, then beside a process doing the same (the control); median and "
        "90th percentile"
    )
    try:
        run_table(args.cpu_threads, tuple(sorted(args.switch_intervals, reverse=True)), args.trips)
    except OSError as failure:  # the server gone or silent: ConnectionError, TimeoutError
        print(f"FAILED: the round trips stopped: {type(failure).__name__}: {failure}")
        return 1
    except KeyboardInterrupt:
        print("Interrupted.")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
