"""Unique ID generation, measured against its peers in one run.

1. IDs per second from one thread: our generator, uuid.uuid4() and the
   `snowflake-id` package (which takes no lock), beside the 4,096,000 IDs/s
   ceiling that 12 bits of sequence allow one worker.
2. Four threads sharing one generator vs four generators, one per thread.
3. Worker ids leased from a private etcd (started in out/ for the run): ids/s
   with a live lease against a fixed worker id, how long acquiring a lease
   takes, and how long a killed holder's id takes to pass to a waiter.
4. The B-tree claim: 1,000,000 rows into SQLite keyed by Snowflake ids,
   uuid4 strings and random integers; plots it to out/btree_inserts.png
   (with --save-images, to images/btree_inserts.png, the README's picture).

Each target prints PASS or FAIL; the run ends with `targets: N of M met` and
exits 1 when any target was missed.

    python UniqueIdGeneration/bench.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import btree_experiment
import IdGenerator
import LocalEtcd
import WorkerIdLease
from id_arguments import bounded, floored
from snowflake import SnowflakeGenerator

CEILING = (IdGenerator.MAX_SEQUENCE + 1) * 1000  # 4,096,000 ids/s per worker
HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"  # the tracked pictures the README shows: only --save-images
OUT = HERE / "out"  # git-ignored: every run's plots

TARGET_VS_UUID4 = 3.0
TARGET_VS_PACKAGE = 0.8
TARGET_BTREE = 10.0
TARGET_LEASED = 0.95  # ids/s with a live lease, as a share of a fixed worker id's
LEASE_TTL = 10  # seconds, the default a service would use
TAKEOVER_TTL = 3  # seconds: a short lease, so three takeovers fit in the run
TAKEOVER_SLACK = 1.0  # etcd sweeps expired leases every 0.5 s; a waiter polls every 0.5 s
ACQUISITIONS = 20
LEASE_ROUNDS_PER_ROUND = 4  # the lease comparison runs 4x the rounds with 1/4 the ids each
TAKEOVERS = 3

PACKAGE = f"snowflake-id {version('snowflake-id')} (no lock)"  # the pin in requirements.txt


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {load:.2f}"
    )


def ids_per_second(make: Callable[[], object | None], count: int) -> float:
    """The same loop for every generator: count only real ids (the package
    returns None when its sequence runs out or its clock goes back)."""
    got = 0
    started = time.perf_counter()
    while got < count:
        if make() is not None:
            got += 1
    return count / (time.perf_counter() - started)


def one_thread(rounds: int, count: int) -> dict[str, float]:
    peers = {
        "IdGenerator (ours, locked)": lambda: IdGenerator.IdGenerator(1).next_id,
        PACKAGE: lambda: SnowflakeGenerator(1).__next__,
        "uuid.uuid4()": lambda: uuid.uuid4,
    }
    samples: dict[str, list[float]] = {name: [] for name in peers}
    for _ in range(rounds):  # interleaved, so a noisy moment hits every peer alike
        for name, factory in peers.items():
            samples[name].append(ids_per_second(factory(), count))
    return {name: statistics.median(values) for name, values in samples.items()}


def four_threads(count_per_thread: int) -> dict[str, float]:
    def run(generators: list[IdGenerator.IdGenerator]) -> float:
        minted: list[list[int]] = [[] for _ in generators]

        def work(generator: IdGenerator.IdGenerator, out: list[int]) -> None:
            next_id = generator.next_id
            for _ in range(count_per_thread):
                out.append(next_id())

        threads = [
            threading.Thread(target=work, args=(g, out))
            for g, out in zip(generators, minted, strict=True)
        ]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        every = [i for out in minted for i in out]
        assert len(set(every)) == len(every), "duplicate ids: the bench is wrong"
        return len(every) / elapsed

    shared = IdGenerator.IdGenerator(1)
    return {
        "4 threads, one shared generator": run([shared] * 4),
        "4 threads, 4 generators (workers 1-4)": run(
            [IdGenerator.IdGenerator(w) for w in range(1, 5)]
        ),
    }


def leased_vs_fixed(etcd_url: str, rounds: int, count: int) -> tuple[float, float, float]:
    """Ids/s of a generator on a live lease and of one on a fixed worker id:
    (median leased, median fixed, median of the leased/fixed ratios of rounds
    run back to back). Pairing the rounds cancels load that drifts over the run.
    """
    with WorkerIdLease.WorkerIdLease(etcd_url, ttl=LEASE_TTL) as lease:
        makers = {
            "leased": lambda: IdGenerator.IdGenerator(lease=lease).next_id,
            "fixed": lambda: IdGenerator.IdGenerator(1).next_id,
        }
        samples: dict[str, list[float]] = {name: [] for name in makers}
        for n in range(LEASE_ROUNDS_PER_ROUND * rounds):  # short rounds, interleaved,
            for name in sorted(makers, reverse=n % 2 == 1):  # each going first half the time
                samples[name].append(ids_per_second(makers[name](), count))
    ratios = [a / b for a, b in zip(samples["leased"], samples["fixed"], strict=True)]
    return (
        statistics.median(samples["leased"]),
        statistics.median(samples["fixed"]),
        statistics.median(ratios),
    )


def acquisition_ms(etcd_url: str) -> list[float]:
    """Acquire (grant, read the taken ids, create-if-absent) and release, timed."""
    times = []
    for _ in range(ACQUISITIONS):
        lease = WorkerIdLease.WorkerIdLease(etcd_url, ttl=LEASE_TTL)
        started = time.perf_counter()
        lease.acquire()
        times.append((time.perf_counter() - started) * 1000)
        lease.release()
    return times


def takeover_seconds(etcd_url: str) -> list[float]:
    """A holder process is SIGKILLed; seconds until a waiter holds its id."""
    times = []
    for _ in range(TAKEOVERS):
        holder = subprocess.Popen(
            [
                sys.executable, str(HERE / "WorkerIdLease.py"), "--etcd", etcd_url,
                "--ttl", str(TAKEOVER_TTL), "--worker-ids", "1", "--quiet", "--wait", "30",
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        gateway = WorkerIdLease.EtcdGateway(etcd_url)
        deadline = time.monotonic() + 30
        while not gateway.prefix(WorkerIdLease.PREFIX) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(TAKEOVER_TTL / 2)  # somewhere between two of its renewals
        waiter = WorkerIdLease.WorkerIdLease(etcd_url, ttl=TAKEOVER_TTL, worker_ids=range(1))
        holder.kill()
        killed = time.perf_counter()
        holder.wait()
        waiter.acquire(timeout=30)
        times.append(time.perf_counter() - killed)
        waiter.release()
    return times


def btree(rows: int) -> list[btree_experiment.BtreeResult]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in btree_experiment.KINDS:

            def progress(done: int, kind: str = kind) -> None:
                if sys.stdout.isatty():  # one updating line; nothing in a log file
                    print(f"\r  {kind:<9} {done:>9,} / {rows:,} rows", end="", flush=True)

            results.append(
                btree_experiment.insert_rows(
                    kind, rows, Path(tmp) / f"{kind}.db", progress=progress
                )
            )
            if sys.stdout.isatty():
                print()  # end the progress line
    return results


class Targets:
    """Each target as a PASS/FAIL line; `report()` closes with `targets: N of M met`."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.met = 0

    def check(self, ok: bool, claim: str) -> None:
        self.met += ok
        self.lines.append(f"  {'PASS' if ok else 'FAIL'}  {claim}")

    def report(self, headline: str) -> int:
        print("\nTargets")
        print("\n".join(self.lines))
        print(f"\nheadline: {headline}")
        print(f"targets: {self.met} of {len(self.lines)} met")
        return 0 if self.met == len(self.lines) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=bounded(int, 1, 100), default=5, help="rounds per peer, median taken (5)"
    )
    parser.add_argument(
        "--ids", type=bounded(int, 1, 100_000_000), default=1_000_000, help="ids per round"
    )
    parser.add_argument(
        "--rows", type=bounded(int, 1, 10_000_000), default=1_000_000, help="rows per B-tree run"
    )
    parser.add_argument("--skip-btree", action="store_true", help="only the generator benches")
    parser.add_argument(
        "--save-images",
        action="store_true",
        help=f"write the plot to {IMAGES.relative_to(HERE.parent)}/ (the README's) "
        f"instead of {OUT.relative_to(HERE.parent)}/",
    )
    args = parser.parse_args(argv)
    if args.rows % btree_experiment.BATCH_ROWS:
        parser.error(f"--rows must be a multiple of {btree_experiment.BATCH_ROWS:,}")
    targets = Targets()

    print(f"Machine: {machine()}")
    print(f"\n1. IDs/s from one thread (median of {args.rounds} rounds of {args.ids:,})")
    rates = one_thread(args.rounds, args.ids)
    ours = rates["IdGenerator (ours, locked)"]
    print(f"  {'generator':<30} {'IDs/s':>11}  {'ours is':>7}  {'of ceiling':>10}")
    for name, rate in rates.items():
        print(f"  {name:<30} {rate:>11,.0f}  {ours / rate:>6.2f}x  {rate / CEILING:>10.0%}")
    print(f"  {'ceiling: 4,096 ids/ms/worker':<30} {CEILING:>11,}")
    vs_uuid = ours / rates["uuid.uuid4()"]
    vs_package = ours / rates[PACKAGE]
    targets.check(
        vs_uuid >= TARGET_VS_UUID4, f"one thread >= {TARGET_VS_UUID4}x uuid4: {floored(vs_uuid)}x"
    )
    targets.check(
        vs_package >= TARGET_VS_PACKAGE,
        f"one thread >= {TARGET_VS_PACKAGE}x snowflake-id: {floored(vs_package)}x "
        f"({ours / CEILING:.0%} of the ceiling)",
    )

    print(f"\n2. Four threads ({args.ids // 4:,} ids each)")
    for name, rate in four_threads(max(1, args.ids // 4)).items():
        print(f"  {name:<40} {rate:>11,.0f} IDs/s")

    headline = f"one thread mints {ours:,.0f} ids/s, {vs_package:.2f}x snowflake-id"

    print("\n3. Worker ids leased from etcd (a private etcd 3.4 on 127.0.0.1, data in out/)")
    etcd_dir = OUT / "bench-etcd"
    shutil.rmtree(etcd_dir, ignore_errors=True)
    try:
        with LocalEtcd.LocalEtcd(etcd_dir) as etcd:
            lease_ids = max(1, args.ids // LEASE_ROUNDS_PER_ROUND)
            leased, fixed, share = leased_vs_fixed(etcd.url, args.rounds, lease_ids)
            acquired = acquisition_ms(etcd.url)
            takeovers = takeover_seconds(etcd.url)
    except LocalEtcd.EtcdNotInstalledError as err:
        print(f"  {err}")
        targets.check(False, f"the lease rows need etcd: {err}")
    else:
        print(
            f"  medians of {LEASE_ROUNDS_PER_ROUND * args.rounds} interleaved rounds "
            f"of {lease_ids:,} ids each:"
        )
        print(f"  {'IdGenerator, fixed worker id':<40} {fixed:>11,.0f} IDs/s")
        print(f"  {f'IdGenerator, live {LEASE_TTL} s etcd lease':<40} {leased:>11,.0f} IDs/s")
        print(f"  {'leased / fixed, median of paired rounds':<40} {share:>11.2f}x")
        print(
            f"  lease acquisition (grant + read + create-if-absent), {ACQUISITIONS} times: "
            f"median {statistics.median(acquired):.1f} ms, max {max(acquired):.1f} ms"
        )
        print(
            f"  takeover after the holder is SIGKILLed, {TAKEOVER_TTL} s TTL, {TAKEOVERS} times: "
            + ", ".join(f"{t:.2f} s" for t in takeovers)
        )
        targets.check(
            share >= TARGET_LEASED,
            f"ids/s with a live lease >= {TARGET_LEASED}x a fixed worker id: {floored(share)}x",
        )
        targets.check(
            max(takeovers) <= TAKEOVER_TTL + TAKEOVER_SLACK,
            f"a killed holder's id passes on within the TTL + {TAKEOVER_SLACK:g} s "
            f"({TAKEOVER_TTL + TAKEOVER_SLACK:g} s): slowest {max(takeovers):.2f} s",
        )
        headline += f", {share:.2f}x of that with a live etcd lease"

    if not args.skip_btree:
        print(f"\n4. The B-tree claim: {args.rows:,} rows into SQLite per key kind")
        print(
            f"  settings: on-disk file, WAL, synchronous=NORMAL, "
            f"cache_size {btree_experiment.CACHE_KIB:,} KiB (SQLite's default), "
            f"a commit every {btree_experiment.ROWS_PER_TRANSACTION:,} rows"
        )
        results = btree(args.rows)
        header = "  ".join(f"{(i + 1) * 100}k" for i in range(len(results[0].batch_seconds)))
        print(f"  seconds per 100,000-row batch: {header}")
        for r in results:
            print(f"  {r.kind:<9} " + " ".join(f"{s:5.2f}" for s in r.batch_seconds))
        print(
            f"\n  {'key':<9} {'total s':>8} {'rows/s':>9} {'pages':>8} {'MB':>5} "
            f"{'pages/commit':>12} {'vs snowflake':>12}"
        )
        for r in results:
            print(
                f"  {r.kind:<9} {r.seconds:>8.1f} {r.rows_per_second:>9,.0f} {r.pages:>8,} "
                f"{r.file_bytes / 1e6:>5.0f} {r.pages_per_commit:>12,} "
                f"{r.seconds / results[0].seconds:>11.1f}x"
            )
        print(
            f"  (pages/commit: pages one more {btree_experiment.ROWS_PER_TRANSACTION:,}-row "
            f"commit wrote to the WAL once the table was full)"
        )
        btree_ratio = results[1].seconds / results[0].seconds
        plot = (IMAGES if args.save_images else OUT) / "btree_inserts.png"
        btree_experiment.plot(results, plot)
        print(f"  plot: {plot}")
        targets.check(
            btree_ratio >= TARGET_BTREE,
            f"{args.rows:,} Snowflake-keyed inserts >= {TARGET_BTREE:.0f}x faster than "
            f"uuid4-keyed: {floored(btree_ratio, 1)}x",
        )
        headline += f"; Snowflake keys insert {btree_ratio:.1f}x faster than uuid4 into SQLite"
    return targets.report(headline)


if __name__ == "__main__":
    sys.exit(main())
