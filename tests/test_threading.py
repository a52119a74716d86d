"""Threading/: same answers whichever way the work runs (and whichever way its data is
sent), exact counts under contention, the lost update provoked in lockstep and in
bursts, deadlocks detected by thread id without hanging, the convoy measurement
cleaning up after itself, a demo that never claims a lesson its run contradicts, and
command lines that refuse bad input cleanly. No timing is asserted anywhere."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import psutil
import pytest
from conftest import ROOT, load_module, run_script

workloads = load_module("Threading", "workloads")
server_module = load_module("Threading", "slow_server")
MultiThreading = load_module("Threading", "MultiThreading")
MultiProcessing = load_module("Threading", "MultiProcessing")
race = load_module("Threading", "race")
deadlock = load_module("Threading", "deadlock")
convoy = load_module("Threading", "convoy")
payload_sweep = load_module("Threading", "payload_sweep")
lesson_checks = load_module("Threading", "lesson_checks")
compare_runs = load_module("Threading", "compare_runs")

SMALL_WINDOW = 2_000  # numbers per cpu task: enough to find primes, quick to count
FAST_DELAY = 0.01  # seconds the test server waits per request

RUNNERS = {
    "threading.Thread": MultiThreading.run_with_threads,
    "ThreadPoolExecutor": MultiThreading.run_with_thread_pool,
    "multiprocessing.Process": MultiProcessing.run_with_processes,
    "ProcessPoolExecutor": MultiProcessing.run_with_process_pool,
}
SCRIPTS = [
    "Threading/slow_server.py",
    "Threading/MultiThreading.py",
    "Threading/MultiProcessing.py",
    "Threading/race.py",
    "Threading/deadlock.py",
    "Threading/convoy.py",
    "Threading/payload_sweep.py",
    "Threading/demo.py",
    "Threading/bench.py",
]
FORK_ONLY = pytest.mark.skipif(
    multiprocessing.get_start_method() != "fork",
    reason="injects a fault by patching the parent, which only forked children inherit",
)


@pytest.fixture(scope="module")
def slow_server():
    with server_module.SlowServer(delay=FAST_DELAY) as server:
        yield server


def sieve_count(first: int, stop: int) -> int:
    """Primes in [first, stop), by the sieve of Eratosthenes: an independent check."""
    is_prime = bytearray([1]) * stop
    is_prime[0:2] = b"\x00\x00"
    for n in range(2, int(stop**0.5) + 1):
        if is_prime[n]:
            is_prime[n * n :: n] = bytearray(len(range(n * n, stop, n)))
    return sum(is_prime[first:stop])


# --- the workloads ----------------------------------------------------------------


def test_counting_primes_agrees_with_a_sieve():
    for window in range(4):
        first = workloads.CPU_FIRST_NUMBER + window * SMALL_WINDOW
        assert workloads.count_primes(window, SMALL_WINDOW) == sieve_count(
            first, first + SMALL_WINDOW
        )
    assert [n for n in range(30) if workloads.is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]


def test_slow_server_answers_the_square_and_survives_garbage(slow_server):
    with socket.create_connection(slow_server.address, timeout=5) as sock:
        sock.sendall(b"not a number\n")
        assert sock.makefile("rb").readline().startswith(b"error")
    with socket.create_connection(slow_server.address, timeout=5) as sock:
        sock.close()  # a client that leaves without asking
    assert workloads.ask_slow_server(slow_server.address, 12) == 144


def test_slow_server_script_answers_many_questions_on_one_connection(start_server):
    server = start_server("Threading/slow_server.py", "--delay", "0")
    assert server.url.startswith("tcp://127.0.0.1:")
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        replies = sock.makefile("rb")
        for question in (3, -4, 10**30):
            sock.sendall(f"{question}\n".encode())
            assert int(replies.readline()) == question * question
        sock.sendall(b"5\n6\n7")  # several questions in one packet, the last one cut in two
        sock.sendall(b"0\n")
        assert [int(replies.readline()) for _ in range(3)] == [25, 36, 4900]
        sock.sendall(b"1" * 100 + b"\n")  # too long for one request: refused, not misread
        assert replies.readline().startswith(b"error")
    assert workloads.ask_slow_server((server.host, server.port), 7) == 49  # still serving


def test_slow_server_closes_a_silent_connection_and_refuses_a_flood():
    with server_module.SlowServer(delay=0, idle_timeout=0.2, max_connections=4) as server:
        silent = socket.create_connection(server.address, timeout=10)
        assert silent.recv(1) == b""  # closed by the server, not left holding a thread
        silent.close()
        held = [socket.create_connection(server.address, timeout=10) for _ in range(4)]
        try:
            held[0].sendall(b"5\n")  # each held connection has its thread and is served
            assert held[0].recv(16) == b"25\n"
            extra = socket.create_connection(server.address, timeout=10)
            assert extra.recv(1) == b""  # over the limit: closed at once
            extra.close()
        finally:
            for sock in held:
                sock.close()
        # Slots are given back when connections end: a new client is served again.
        answered = False
        for _ in range(50):
            try:
                answered = workloads.ask_slow_server(server.address, 6) == 36
                break
            except ConnectionError:  # a slot not yet freed: the server closed us
                time.sleep(0.05)
        assert answered


def closed_by_peer(sock: socket.socket, wait: float) -> bool:
    """True once the other side has closed `sock` (waits up to `wait` seconds for it)."""
    if not select.select([sock], [], [], wait)[0]:
        return False
    try:
        return sock.recv(1) == b""
    except OSError:  # reset: closed too
        return True


def test_slow_server_closes_a_client_that_drips_its_request_a_byte_at_a_time():
    # Slowloris: a byte every 0.1 s is inside a 0.3 s socket timeout, so a timeout
    # per recv() alone let this client keep its thread (and one of the server's
    # slots) for ever. Each whole line is due within the timeout instead.
    with server_module.SlowServer(delay=0, idle_timeout=0.3, max_connections=4) as server:
        with socket.create_connection(server.address, timeout=10) as sock:
            closed = False
            for _ in range(40):  # 40 bytes: shorter than a too-long line, ~4 s of dripping
                try:
                    sock.sendall(b"1")
                except OSError:
                    closed = True
                if closed or closed_by_peer(sock, 0.1):
                    closed = True
                    break
            assert closed
        assert workloads.ask_slow_server(server.address, 9) == 81  # everyone else is served


def test_io_tasks_without_a_server_address_are_refused():
    with pytest.raises(ValueError, match="SlowServer"):
        workloads.make_tasks("io", 3)
    with pytest.raises(ValueError, match="unknown kind"):
        workloads.make_tasks("gpu", 3)


# --- same answers, whichever way the work runs --------------------------------------


@pytest.mark.parametrize("kind", workloads.KINDS)
@pytest.mark.parametrize("runner", RUNNERS)
def test_every_runner_returns_the_sequential_answers_in_task_order(kind, runner, slow_server):
    tasks = workloads.make_tasks(kind, 12, address=slow_server.address, size=SMALL_WINDOW)
    expected = workloads.run_sequentially(tasks)
    if kind == "io":
        assert expected == [n * n for n in range(12)]
    for workers in (1, 3, 20):  # fewer, some, more workers than tasks
        assert RUNNERS[runner](tasks, workers) == expected


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_failing_task_raises_in_the_caller(runner):
    tasks = workloads.make_tasks("cpu", 3, size=SMALL_WINDOW) + [workloads.Task("gpu", 0)]
    with pytest.raises((ValueError, MultiProcessing.TaskFailed), match="unknown kind"):
        RUNNERS[runner](tasks, 2)


@FORK_ONLY
def test_a_child_that_dies_raises_worker_died_instead_of_hanging(monkeypatch):
    def crash(task):
        import os

        os._exit(3)

    monkeypatch.setattr(MultiProcessing, "do_task", crash)
    tasks = workloads.make_tasks("cpu", 4, size=SMALL_WINDOW)
    with pytest.raises(MultiProcessing.WorkerDied, match="exit code 3"):
        MultiProcessing.run_with_processes(tasks, 2)


@FORK_ONLY
def test_a_dead_child_is_noticed_while_the_others_keep_answering(monkeypatch):
    # Before, a death was looked for only when no answer came for 0.5 s: with
    # the other child answering steadily, it surfaced after all its work was done.
    def crash_or_answer(task):
        if task.index == 0:
            os._exit(3)
        time.sleep(0.02)
        return task.index

    answers_read = []
    next_answer = MultiProcessing._next_answer

    def counting(done, children):
        answers_read.append(next_answer(done, children))
        return answers_read[-1]

    monkeypatch.setattr(MultiProcessing, "do_task", crash_or_answer)
    monkeypatch.setattr(MultiProcessing, "_next_answer", counting)
    tasks = workloads.make_tasks("cpu", 400, size=SMALL_WINDOW)
    with pytest.raises(MultiProcessing.WorkerDied, match="exit code 3"):
        MultiProcessing.run_with_processes(tasks, 2)
    assert len(answers_read) < 200  # long before the other child's 399 answers


@pytest.mark.parametrize(
    "failure",
    [
        MultiProcessing.WorkerDied("children died before answering every task: worker-1"),
        BrokenProcessPool("A process in the process pool was terminated abruptly"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
)
def test_the_scripts_report_a_failed_run_in_one_line_not_a_traceback(failure, capsys):
    def fail(tasks, workers):
        raise failure

    args = argparse.Namespace(kind="cpu", tasks=2, workers=2, delay=0.0)
    assert compare_runs.compare(args, {"a runner": fail}) == 1
    out = capsys.readouterr().out
    assert f"FAILED: {type(failure).__name__}: {failure}" in out.splitlines()


ORPHAN_PARENT = """
import sys, time
sys.path.insert(0, sys.argv[1])
import payload_sweep, slow_server
with slow_server.SlowServer(0), payload_sweep.started_pools() as pools:
    pools.processes.submit(abs, 1).result()
    print("ready", flush=True)
    time.sleep(60)
"""


def test_children_end_when_their_parent_is_killed_instead_of_running_for_ever():
    # kill -9 of a script left its slow server listening and its pool's workers
    # (and the shared memory their resource tracker would have unlinked) for ever.
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_PARENT, str(ROOT / "Threading")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout.readline() == "ready\n"
        children = psutil.Process(parent.pid).children(recursive=True)
        assert len(children) >= 3  # the server, two workers (and the resource tracker)
    finally:
        parent.kill()
        parent.wait(timeout=10)
    gone, alive = psutil.wait_procs(children, timeout=30)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    for child in alive:  # do not leave them behind even when the test fails
        child.kill()
    assert alive == []


# --- the lost update ----------------------------------------------------------------


def test_unlocked_account_loses_deposits_and_the_loss_is_counted_exactly():
    account = race.Account()
    result = race.deposit_concurrently(account, threads=8, deposits_each=200)
    assert result.deposits == 1_600
    assert result.balance == account.balance
    assert 0 < result.lost == 1_600 - account.balance


@pytest.mark.parametrize("threads", [2, 16, 64])
def test_locked_account_is_exact_under_many_threads(threads):
    account = race.LockedAccount()
    result = race.deposit_concurrently(account, threads=threads, deposits_each=100)
    assert account.balance == threads * 100
    assert result.lost == 0


# --- the deadlock -------------------------------------------------------------------


def test_opposite_lock_order_deadlock_is_reported_and_both_transfers_finish():
    run = deadlock.run_transfers(ordered=False, timeout=0.1)
    # One deadlock, unless a victim's retry happens to recreate it on a busy machine:
    # then each one found must still be the real two-thread cycle.
    assert run.deadlocks
    for found in run.deadlocks:
        assert {w.thread for w in found.cycle} == {"transfer alice->bob", "transfer bob->alice"}
        assert found.victim in {w.ident for w in found.cycle}
        for waiter in found.cycle:  # each holds one account and waits for the other
            assert len(waiter.holds) == 1 and waiter.waits_for not in waiter.holds
        assert any("holds alice and waits for bob" in line for line in found.describe())
    assert run.completed == 2
    assert run.balances == {"alice": 80, "bob": 120}


def test_global_lock_order_never_deadlocks():
    for _ in range(20):
        run = deadlock.run_transfers(ordered=True, timeout=0.1)
        assert run.deadlocks == []
        assert run.completed == 2
        assert run.balances == {"alice": 80, "bob": 120}


def hold_lock(monitor, name: str, release: threading.Event) -> threading.Thread:
    """A thread that takes `name` and keeps it, running (not waiting), until `release`."""
    taken = threading.Event()

    def holder() -> None:
        assert monitor.acquire(name)
        taken.set()
        release.wait(timeout=10)
        monitor.release(name)

    thread = threading.Thread(target=holder, name="holder", daemon=True)
    thread.start()
    assert taken.wait(timeout=5)
    return thread


def test_a_slow_holder_is_waited_for_not_reported_as_deadlock():
    monitor = deadlock.LockMonitor(["a"], timeout=0.02)
    release = threading.Event()
    holder = hold_lock(monitor, "a", release)
    threading.Timer(0.3, release.set).start()  # many timeouts pass before it lets go
    assert monitor.acquire("a") is True
    monitor.release("a")
    holder.join(timeout=5)
    assert monitor.deadlocks == []


def test_threads_that_share_a_name_are_told_apart_and_no_false_deadlock_is_reported():
    # Two threads both called "worker": one holds a and b, the other waits for b.
    # There is no cycle; keyed by name, the detector saw "worker waits for b, held
    # by worker" and made the waiting thread a victim.
    monitor = deadlock.LockMonitor(["a", "b"], timeout=0.02)
    taken, release = threading.Event(), threading.Event()

    def hold_both() -> None:
        assert monitor.acquire("a") and monitor.acquire("b")
        taken.set()
        release.wait(timeout=10)
        monitor.release("b")
        monitor.release("a")

    got: list[bool] = []

    def wait_for_b() -> None:
        got.append(monitor.acquire("b"))
        if got[-1]:
            monitor.release("b")

    holder = threading.Thread(target=hold_both, name="worker", daemon=True)
    holder.start()
    assert taken.wait(timeout=5)
    waiter = threading.Thread(target=wait_for_b, name="worker", daemon=True)
    waiter.start()
    threading.Timer(0.3, release.set).start()  # the waiter times out many times first
    waiter.join(timeout=10)
    holder.join(timeout=10)
    assert got == [True]
    assert monitor.deadlocks == []


def test_a_deadlock_between_threads_that_share_a_name_is_still_found_and_told_apart():
    monitor = deadlock.LockMonitor(["a", "b"], timeout=0.05)
    both_hold_one = threading.Barrier(2)
    outcome: list[bool] = []

    def take(first: str, second: str) -> None:
        assert monitor.acquire(first)
        both_hold_one.wait(timeout=5)
        got_second = monitor.acquire(second)
        outcome.append(got_second)
        if got_second:
            monitor.release(second)
        monitor.release(first)

    threads = [
        threading.Thread(target=take, args=pair, name="worker", daemon=True)
        for pair in (("a", "b"), ("b", "a"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(outcome) == [False, True]  # one victim backed off, the other went on
    (found,) = monitor.deadlocks
    assert len({waiter.ident for waiter in found.cycle}) == 2
    described = "\n".join(found.describe())
    assert described.count("worker [") == 4, described  # each named with its thread id


def test_releasing_a_lock_this_thread_does_not_hold_is_refused():
    monitor = deadlock.LockMonitor(["a"])
    with pytest.raises(RuntimeError, match="does not hold"):
        monitor.release("a")
    release = threading.Event()
    holder = hold_lock(monitor, "a", release)
    try:
        with pytest.raises(RuntimeError, match="does not hold"):
            monitor.release("a")  # held, but by the holder thread, not by this one
    finally:
        release.set()
        holder.join(timeout=5)


def test_a_transfer_that_waits_too_long_lets_go_of_its_first_lock(monkeypatch):
    monkeypatch.setattr(deadlock, "MAX_WAIT", 0.2)
    monitor = deadlock.LockMonitor(["alice", "bob"], timeout=0.05)
    accounts = {"alice": 100, "bob": 100}
    release = threading.Event()
    holder = hold_lock(monitor, "bob", release)  # slow, not deadlocked: it waits for nothing
    try:
        with pytest.raises(deadlock.LockWaitTooLong):
            deadlock.transfer(monitor, accounts, "alice", "bob", 30, ordered=False)
        assert "alice" not in monitor.holder  # it let go of the lock it had taken
        assert monitor.acquire("alice")  # and anyone can take it now
        monitor.release("alice")
        assert accounts == {"alice": 100, "bob": 100}
    finally:
        release.set()
        holder.join(timeout=5)


def test_a_transfer_to_the_same_account_is_refused():
    monitor = deadlock.LockMonitor(["alice"])
    with pytest.raises(ValueError, match="two different accounts"):
        deadlock.transfer(monitor, {"alice": 100}, "alice", "alice", 5, ordered=True)


def test_a_lock_held_too_long_raises_instead_of_hanging(monkeypatch):
    monkeypatch.setattr(deadlock, "MAX_WAIT", 0.2)
    monitor = deadlock.LockMonitor(["a"], timeout=0.05)
    release = threading.Event()
    holder = hold_lock(monitor, "a", release)
    try:
        with pytest.raises(deadlock.LockWaitTooLong, match="waited"):
            monitor.acquire("a")
        assert monitor.waiting == {}
    finally:
        release.set()
        holder.join(timeout=5)


# --- the convoy effect ----------------------------------------------------------------


def test_round_trips_on_one_connection_get_every_answer_and_stop_at_the_budget(slow_server):
    assert len(convoy.round_trips(slow_server.address, 5)) == 5
    assert len(convoy.round_trips(slow_server.address, 1000, budget=0.0)) == 1


def test_round_trips_report_a_server_that_hangs_up_instead_of_misreading_it():
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def hang_up() -> None:
            connection, _ = listener.accept()
            connection.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        with pytest.raises(ConnectionError):  # b"" is not an answer (nor is a reset)
            convoy.round_trips(listener.getsockname(), 3)
        thread.join(timeout=5)


def threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_convoy_measure_puts_the_switch_interval_back_and_stops_its_threads(slow_server):
    before = sys.getswitchinterval()
    row = convoy.measure(slow_server.address, cpu_threads=2, trips=3, switch_interval=0.001)
    assert (row.cpu_threads, row.switch_interval, len(row.latencies)) == (2, 0.001, 3)
    assert sys.getswitchinterval() == before
    assert threads_named("cpu-") == []


def test_convoy_measure_cleans_up_when_the_server_is_gone():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        address = unused.getsockname()  # bound, never listening: connections are refused
        before = sys.getswitchinterval()
        with pytest.raises(ConnectionRefusedError):
            convoy.measure(address, cpu_threads=2, trips=3, switch_interval=0.001, cpu_processes=1)
    assert sys.getswitchinterval() == before
    assert threads_named("cpu-") == []
    assert computing_children() == []


def computing_children() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("cpu-")]


def test_convoy_measure_beside_a_computing_process_stops_it(slow_server):
    row = convoy.measure(slow_server.address, cpu_threads=0, trips=3, cpu_processes=2)
    assert (row.beside, len(row.latencies)) == ("2 processes", 3)
    assert computing_children() == []  # joined, not left computing


def test_convoy_script_prints_a_row_per_thread_count_and_interval_and_the_control():
    args = ("--trips", "3", "--cpu-threads", "0,1", "--switch-intervals", "0.005,0.001")
    result = run_script("Threading/convoy.py", *args, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(r"^\s*([\d.]+) ms\s+(\w+(?: \w+)?)\s+3\s", result.stdout, re.M)
    assert rows == [
        *[
            (interval, beside)
            for interval in ("5.00", "1.00")
            for beside in ("nothing", "1 thread", "1 process")
        ]
    ], result.stdout


# --- the price of sending data to processes ------------------------------------------


@pytest.fixture(scope="module")
def pools():
    with payload_sweep.started_pools() as started:
        yield started


@pytest.mark.parametrize("size", [1, 4097, 3 * 1024 * 1024])
def test_every_way_of_sending_the_block_gives_the_right_answers(size, pools):
    run = payload_sweep.measure(size, pools)  # raises WrongAnswers if any answer differs
    assert run.size == size
    assert set(run.seconds) == {"threads", "processes", "shared memory"}


def test_a_block_too_big_for_dev_shm_is_refused_instead_of_a_bus_error(monkeypatch, pools):
    # A segment is created sparse; filling it past what /dev/shm holds (64 MB in a
    # default Docker container) killed the sweep with SIGBUS and orphaned its pool.
    monkeypatch.setattr(payload_sweep, "shared_memory_free", lambda: 4096)
    with pytest.raises(OSError, match="does not fit in /dev/shm"):
        payload_sweep.run_shared_memory(payload_sweep.make_block(8192), pools)


def test_the_answer_depends_on_every_page_of_the_block():
    block = payload_sweep.make_block(5 * payload_sweep.PAGE)
    assert payload_sweep.page_sum(block) != payload_sweep.page_sum(bytes(len(block)))
    damaged = block[: -payload_sweep.PAGE] + bytes(payload_sweep.PAGE)  # last page lost
    assert payload_sweep.page_sum(block) != payload_sweep.page_sum(damaged)


def test_payload_sweep_script_shares_memory_without_resource_tracker_warnings():
    # Children started before the resource tracker would each run their own,
    # which warns about "leaked" blocks at exit (and may unlink them early).
    result = run_script("Threading/payload_sweep.py", "--sizes", "1KB,2MB", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\s+1 KB\s", result.stdout, re.M)
    assert re.search(r"^\s+2 MB\s", result.stdout, re.M)
    assert "resource_tracker" not in result.stderr and "leaked" not in result.stderr


@pytest.mark.parametrize(
    ("text", "size"), [("1", 1), ("64KB", 65536), ("16mb", 16 * 1024 * 1024), (" 2 MB ", 2097152)]
)
def test_payload_sizes_are_read_with_their_units(text, size):
    assert payload_sweep.parse_size(text) == size


# --- the command lines --------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_explains_itself_with_help(script):
    result = run_script(script, "--help", timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


COUNT_OPTIONS = [  # options that take a count from 1 up: 0, -1 and words are refused
    ("Threading/MultiThreading.py", "--workers"),
    ("Threading/MultiProcessing.py", "--workers"),
    ("Threading/MultiThreading.py", "--tasks"),
    ("Threading/bench.py", "--workers"),
    ("Threading/bench.py", "--repeats"),
    ("Threading/race.py", "--threads"),
]
BAD_ARGUMENTS = [
    *((script, option, value) for script, option in COUNT_OPTIONS for value in ("0", "-1", "abc")),
    ("Threading/deadlock.py", "--timeout", "0"),
    ("Threading/deadlock.py", "--timeout", "nan"),
    ("Threading/deadlock.py", "--timeout", "abc"),
    ("Threading/slow_server.py", "--delay", "-1"),
    ("Threading/slow_server.py", "--delay", "nan"),
    ("Threading/slow_server.py", "--port", "65536"),
    ("Threading/slow_server.py", "--port", "-1"),
    ("Threading/MultiThreading.py", "--delay", "inf"),
    ("Threading/bench.py", "--workers", "1,,2"),
    ("Threading/MultiProcessing.py", "--workers", "65"),  # 65 interpreters: refused
    ("Threading/MultiThreading.py", "--tasks", "10001"),
    ("Threading/convoy.py", "--trips", "0"),
    ("Threading/convoy.py", "--cpu-threads", "17"),
    ("Threading/convoy.py", "--cpu-threads", "-1"),
    ("Threading/convoy.py", "--switch-intervals", "0"),
    ("Threading/convoy.py", "--switch-intervals", "nan"),
    ("Threading/payload_sweep.py", "--sizes", "0"),
    ("Threading/payload_sweep.py", "--sizes", "257MB"),
    ("Threading/payload_sweep.py", "--sizes", "1GB"),
    ("Threading/payload_sweep.py", "--sizes", "1KB,lots"),
]


@pytest.mark.parametrize(("script", "option", "value"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_a_message_not_a_traceback(script, option, value):
    result = run_script(script, option, value, timeout=30)
    assert result.returncode == 2
    assert f"argument {option}" in result.stderr
    assert value in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("script", "args", "says"),
    [
        ("Threading/MultiThreading.py", ("--kind", "cpu", "--tasks", "5000"), "one after another"),
        (
            "Threading/MultiProcessing.py",
            ("--kind", "io", "--tasks", "200", "--delay", "1"),
            "one after another",
        ),
        ("Threading/payload_sweep.py", ("--sizes", "256MB,255MB", "--repeats", "9"), "in all"),
        ("Threading/convoy.py", ("--cpu-threads", "1,2,3,4,5,6,7,8,9"), "at most 8 values"),
    ],
)
def test_scripts_refuse_runs_that_would_take_many_minutes(script, args, says):
    result = run_script(script, *args, timeout=30)
    assert result.returncode == 2
    assert says in result.stderr and "Traceback" not in result.stderr


def test_demo_refuses_to_save_the_readme_pictures_from_a_quick_run():
    result = run_script("Threading/demo.py", "--quick", "--save-images", timeout=30)
    assert result.returncode == 2
    assert "full runs" in result.stderr


def test_multithreading_script_compares_three_ways_with_the_same_answers():
    args = ("--kind", "io", "--tasks", "6", "--workers", "6", "--delay", str(FAST_DELAY))
    result = run_script("Threading/MultiThreading.py", *args, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("same as sequential") == 3


def test_multiprocessing_script_compares_three_ways_with_the_same_answers():
    args = ("--kind", "cpu", "--tasks", "4", "--workers", "2")
    result = run_script("Threading/MultiProcessing.py", *args, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("same as sequential") == 3


def race_row(stdout: str, between: str, account: str) -> tuple[int, int, int]:
    """(deposits per run, runs with loss, runs) from one row of race.py's table."""
    row = re.search(
        rf"^{re.escape(between)}\s+{account}\s+([\d,]+)\s+(\d+) of (\d+)\s", stdout, re.M
    )
    assert row, stdout
    return int(row[1].replace(",", "")), int(row[2]), int(row[3])


def test_race_script_counts_the_runs_that_lost_deposits():
    args = ("--threads", "4", "--deposits", "100", "--runs", "3", "--between", "sleep")
    result = run_script("Threading/race.py", *args, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert race_row(result.stdout, "time.sleep(0)", "no lock") == (400, 3, 3)
    assert race_row(result.stdout, "time.sleep(0)", "with Lock") == (400, 0, 3)


@pytest.mark.parametrize(
    "args",
    [
        ("--threads", "64", "--deposits", "1000000"),  # 640 million deposits: hours
        ("--between", "sleep", "--deposits", "20000", "--runs", "10"),
        ("--threads", "65"),
        ("--runs", "101"),
        ("--between", "sleep,sometimes"),
    ],
)
def test_race_script_refuses_runs_it_cannot_finish_with_a_clear_message(args):
    result = run_script("Threading/race.py", *args, timeout=30)
    assert result.returncode == 2
    assert "race.py: error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_race_that_outlasts_its_time_limit_is_reported_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setattr(race, "JOIN_TIMEOUT", 0.0)  # every run is "too slow"
    code = race.main(["--threads", "2", "--deposits", "200", "--runs", "1", "--between", "sleep"])
    assert code == 1
    assert "Stopped: the depositors did not finish" in capsys.readouterr().out


def test_the_race_with_a_plain_call_and_no_sleep_loses_deposits_in_bursts():
    # No sleep: the GIL changes hands only every 5 ms, and only sometimes inside
    # the read-to-write window; then a whole switch interval's deposits are lost.
    runs = race.race_runs(race.Account, "call", threads=8, deposits_each=50_000, runs=10)
    spread = race.Spread.of(runs)
    assert spread.runs == 10 and spread.runs_with_loss >= 1
    assert spread.high > spread.low  # uneven: the loss is not the same in every run
    assert [run.lost for run in runs] == [run.deposits - run.balance for run in runs]
    locked = race.race_runs(race.LockedAccount, "call", threads=8, deposits_each=20_000, runs=2)
    assert [run.lost for run in locked] == [0, 0]


def test_an_account_refuses_an_unknown_pause():
    with pytest.raises(ValueError, match="unknown pause"):
        race.Account("nap")


def test_race_script_with_one_thread_explains_why_nothing_was_lost():
    result = run_script("Threading/race.py", "--threads", "1", "--deposits", "50", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cannot race with itself" in result.stdout


def test_deadlock_script_reports_the_deadlock_and_exits():
    result = run_script("Threading/deadlock.py", "--timeout", "0.1", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("DEADLOCK detected") >= 1
    assert "2 of 2 transfers done" in result.stdout


# --- the demo's verdict ---------------------------------------------------------------


def cpu_part(processes: float, threads: float, cores: int = 2, gil: bool = True):
    return lesson_checks.cpu_part(processes, threads, 2, cores, gil, "0.50")


def test_the_cpu_lesson_is_claimed_only_when_processes_clearly_beat_sequential_and_threads():
    shown = cpu_part(processes=1.9, threads=0.97)
    assert shown.shown and shown.lesson.endswith(
        "1.90x in 2 processes but 0.97x in 2 threads (the GIL)"
    )
    for processes, threads, because in [
        (1.05, 1.11, "not 1.25x faster than threads"),  # the busy run
        (0.90, 0.70, "not 1.25x faster than sequential"),  # slower than sequential
        (1.95, 1.50, "which the GIL rules out"),  # sequential was slowed, not threads sped up
    ]:
        part = cpu_part(processes, threads)
        assert not part.shown, part.seen
        assert because in part.seen and f"{processes:.2f}x in 2 processes" in part.seen
    assert "one core cannot" in cpu_part(1.6, 0.8, cores=1).seen
    assert not cpu_part(1.6, 0.8, cores=1).shown
    assert cpu_part(1.8, 1.7, gil=False).shown  # free-threaded: threads compute in parallel
    assert not cpu_part(1.8, 0.9, gil=False).shown


def convoy_rows(alone: float, one: float, most: float, control: float, shorter: float):
    """rows as convoy.run_table returns them, one latency (in ms) per row."""

    def row(interval, threads, ms, processes=0):
        return convoy.Convoy(threads, interval, [ms / 1000], processes)

    return {
        0.005: [
            row(0.005, 0, alone),
            row(0.005, 1, one),
            row(0.005, 4, most),
            row(0.005, 0, control, 1),
        ],
        0.0005: [row(0.0005, 0, alone), row(0.0005, 1, shorter), row(0.0005, 0, control, 1)],
    }


def test_the_convoy_is_claimed_only_against_its_control_a_process_computing_beside():
    part = lesson_checks.convoy_part(convoy_rows(1.2, 6.6, 32.0, 1.3, 1.4))
    assert part.shown
    assert "took 6.6 ms beside 1 computing thread and 32.0 ms beside 4 threads" in part.lesson
    assert "but 1.3 ms beside 1 computing process" in part.lesson
    assert "0.5 ms switch interval, 1.4 ms" in part.lesson
    # As slow beside a process as beside a thread: the cores were short, not the GIL.
    busy = lesson_checks.convoy_part(convoy_rows(1.2, 6.6, 32.0, 6.0, 1.4))
    assert not busy.shown and "not the GIL" in busy.seen
    assert not lesson_checks.convoy_part(convoy_rows(1.2, 1.5, 3.0, 1.2, 1.4)).shown
    # A shorter interval that did not halve the round trip is not claimed to help.
    assert (
        "switch interval"
        not in lesson_checks.convoy_part(convoy_rows(1.2, 6.6, 32, 1.3, 5.0)).lesson
    )


def size_run(size: int, threads: float, processes: float, shared: float):
    return payload_sweep.SizeRun(
        size, {"threads": threads, "processes": processes, "shared memory": shared}
    )


def test_the_price_of_pickling_is_claimed_only_when_it_grows_with_the_data():
    small, large = 1024, 64 * 1024 * 1024
    shown = lesson_checks.payload_part(
        [size_run(small, 0.30, 0.22, 0.17), size_run(large, 0.33, 2.0, 0.48)]
    )
    assert shown.shown and "6.06x with 64 MB (2.00 s against 0.33 s: pickling)" in shown.lesson
    for runs, because in [
        ([size_run(small, 0.30, 0.22, 0.17), size_run(large, 0.98, 1.0, 0.5)], "not 1.25x slower"),
        ([size_run(small, 0.30, 0.60, 0.17), size_run(large, 0.50, 1.1, 0.5)], "did not grow"),
        ([size_run(small, 0.30, 0.22, 0.17), size_run(large, 0.33, 2.0, 1.9)], "shared memory"),
    ]:
        part = lesson_checks.payload_part(runs)
        assert not part.shown and because in part.seen, part.seen


def test_the_race_lesson_needs_loss_in_every_lockstep_run_some_call_run_and_no_locked_run():
    def results(*lost: int):
        return [race.RaceResult(8, 1000, 1000 - n, 0.1) for n in lost]

    races = {
        ("sleep", "no lock"): results(875, 875),
        ("sleep", "with Lock"): results(0),
        ("call", "no lock"): results(0, 300),
        ("call", "with Lock"): results(0),
    }
    assert lesson_checks.race_part(races).shown
    for key, lost, because in [
        (("call", "no lock"), results(0, 0), "lost nothing"),
        (("sleep", "no lock"), results(875, 0), "every run"),
        (("call", "with Lock"), results(1), "Lock did not protect"),
    ]:
        part = lesson_checks.race_part({**races, key: lost})
        assert not part.shown and because in part.seen, part.seen


def run_demo_on_one_core(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """demo.py --quick pinned to one core: processes cannot compute in parallel there."""
    one_core = min(os.sched_getaffinity(0))
    return subprocess.run(
        [sys.executable, str(ROOT / "Threading" / "demo.py"), "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=lambda: os.sched_setaffinity(0, {one_core}),
    )


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_demo_on_one_core_says_the_lesson_was_not_shown_instead_of_claiming_it(tmp_path):
    result = run_demo_on_one_core("--out", str(tmp_path))
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    assert not any(line.startswith("Lesson:") for line in lines), result.stdout
    assert lines[-1].startswith("Lesson not shown: on 1 core"), result.stdout
    assert "one core cannot run two processes at once" in lines[-1]
    for plot in ("speedup.png", "convoy_payload_race.png"):  # where they were told to go
        assert (tmp_path / plot).stat().st_size > 0
    for step in ("Step 4: the convoy effect", "Step 5: the price", "Step 6: Break it"):
        assert step in result.stdout
    assert "Traceback" not in result.stderr


def test_demo_refuses_a_plot_folder_it_cannot_write_before_measuring(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_script("Threading/demo.py", "--out", str(blocker / "plots"), timeout=30)
    assert result.returncode == 2
    assert "cannot write the plots" in result.stderr
    assert "Step 1" not in result.stdout


@pytest.mark.parametrize("empty", ["", "  "])
def test_demo_refuses_an_empty_plot_folder_instead_of_writing_into_the_current_one(empty, tmp_path):
    # Path("") is ".": an unset "$DIR" wrote both plots into the repository's root.
    result = subprocess.run(
        [sys.executable, str(ROOT / "Threading" / "demo.py"), "--out", empty],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stdout
    assert "argument --out: needs a folder name" in result.stderr
    assert "Step 1" not in result.stdout
    assert list(tmp_path.iterdir()) == []
