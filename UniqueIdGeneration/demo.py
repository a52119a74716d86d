"""Unique ID generation, the guided run: mint, check, decode, break, lease, shard, measure.

python UniqueIdGeneration/demo.py                  # about 20-25 s; starts its own etcd
python UniqueIdGeneration/demo.py --save-images    # also redraws images/lease_pause.png
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import BlogService
import break_it
import btree_experiment
import IdGenerator
import LocalEtcd
import WorkerIdLease

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"  # git-ignored: this run's databases, etcd data and plots
IMAGES = HERE / "images"  # the README's pictures: only with --save-images

THREADS = 8
IDS_PER_THREAD = 12_500
PROCESSES = 4
IDS_PER_PROCESS = 50_000
RACE_IDS_PER_THREAD = 10_000  # break_it.py's race runs 20,000; the naive one loses either way
BTREE_ROWS = 100_000  # the bench runs 1,000,000; this is the short version
BTREE_BATCH_ROWS = 20_000  # timed in batches of this many rows
LEASE_TTL = 2  # seconds: etcd's shortest, so a pause past it is quick to show
LEASE_MARGIN = 0.5  # seconds
AFTER_TAKEOVER = 0.5  # seconds A stays frozen after B took its id: B mints meanwhile


def strictly_increasing(ids: list[int]) -> bool:
    return all(a < b for a, b in zip(ids, ids[1:], strict=False))


def mint_in_process(worker_id: int) -> list[int]:
    generator = IdGenerator.IdGenerator(worker_id)
    return [generator.next_id() for _ in range(IDS_PER_PROCESS)]


def threads_share_one_generator() -> tuple[int, int, bool]:
    generator = IdGenerator.IdGenerator(worker_id=1)
    minted: list[list[int]] = [[] for _ in range(THREADS)]

    def work(out: list[int]) -> None:
        for _ in range(IDS_PER_THREAD):
            out.append(generator.next_id())

    workers = [threading.Thread(target=work, args=(out,)) for out in minted]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    every = [i for out in minted for i in out]
    return len(every), len(every) - len(set(every)), all(map(strictly_increasing, minted))


def processes_with_own_worker_ids() -> tuple[int, int, bool, list[int]]:
    with multiprocessing.Pool(PROCESSES) as pool:
        per_process = pool.map(mint_in_process, range(1, PROCESSES + 1))
    every = [i for ids in per_process for i in ids]
    samples = [ids[0] for ids in per_process]
    return (
        len(every),
        len(every) - len(set(every)),
        all(map(strictly_increasing, per_process)),
        samples,
    )


# -- leased worker ids: real processes against a private etcd ----------------------


class LeaseWorker:
    """WorkerIdLease.py in its own process: it leases an id and mints with it."""

    started: list[LeaseWorker] = []  # every one, so that any exit of the demo ends them

    def __init__(self, name: str, etcd_url: str, record: Path, space: int):
        LeaseWorker.started.append(self)
        self.name, self.record = name, record
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [
                sys.executable, str(HERE / "WorkerIdLease.py"), "--etcd", etcd_url,
                "--ttl", str(LEASE_TTL), "--margin", str(LEASE_MARGIN),
                "--worker-ids", str(space), "--wait", "60", "--rate", "1000",
                "--record", str(record),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def wait_for(self, text: str, count: int = 1, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.lines) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return True

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def ask_to_stop(self) -> None:
        """SIGTERM: it stops minting, lets its id go a safety margin later, and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> dict:
        """Ask it to stop, wait until it has; the record it wrote."""
        self.ask_to_stop()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            return json.loads(self.record.read_text())
        except (OSError, ValueError):
            return {"ids": [], "holds": []}


def id_wall_ms(snowflake: int) -> int:
    return IdGenerator.epoch_ms(IdGenerator.EPOCH) + (snowflake >> IdGenerator.TIMESTAMP_SHIFT)


def minted_after_losing(records: dict[str, dict]) -> int:
    """Ids minted on a worker id after another process had acquired it since."""
    holds = sorted(
        (hold["acquired_wall_ns"] // 1_000_000, hold["worker_id"], name)
        for name, record in records.items()
        for hold in record["holds"]
    )
    strays = 0
    for name, record in records.items():
        for snowflake in record["ids"]:
            worker, at = IdGenerator.decode(snowflake).worker_id, id_wall_ms(snowflake)
            newest = [who for ms, w, who in holds if w == worker and ms <= at]
            strays += newest[-1] != name
    return strays


def duplicates(records: dict[str, dict]) -> int:
    every = [i for record in records.values() for i in record["ids"]]
    return len(every) - len(set(every))


def two_processes_ask(etcd_url: str, out: Path) -> dict:
    """Two processes each ask for the lowest free worker id."""
    first = LeaseWorker("A", etcd_url, out / "ask-a.json", space=32)
    first.wait_for("holding worker id")
    second = LeaseWorker("B", etcd_url, out / "ask-b.json", space=32)
    second.wait_for("holding worker id")
    keys = WorkerIdLease.EtcdGateway(etcd_url).prefix(WorkerIdLease.PREFIX)
    time.sleep(0.3)
    first.ask_to_stop()  # both at once: each keeps its id a margin after its last one
    second.ask_to_stop()
    records = {"A": first.stop(), "B": second.stop()}
    return {
        "workers": {n: [h["worker_id"] for h in r["holds"]] for n, r in records.items()},
        "keys": sorted(keys),
        "ids": sum(len(r["ids"]) for r in records.values()),
        "duplicates": duplicates(records),
    }


def paused_holder(etcd_url: str, out: Path) -> dict:
    """A holds the only worker id; B waits. A is frozen until its lease has
    expired and B has taken the id, A wakes and must stop; when B lets go, A
    re-acquires and goes on."""
    started_ns = time.time_ns()
    a = LeaseWorker("A", etcd_url, out / "pause-a.json", space=1)
    a.wait_for("holding worker id")
    b = LeaseWorker("B", etcd_url, out / "pause-b.json", space=1)
    b.wait_for("no free worker id yet")  # B has asked etcd, been refused, and polls
    a.proc.send_signal(signal.SIGSTOP)
    frozen = [time.time_ns()]
    # The next seconds are spent waiting for etcd: load the plotting library meanwhile.
    threading.Thread(target=load_matplotlib, daemon=True).start()
    print(
        f"  A holds worker 0; B waits. A frozen (SIGSTOP) until B has held worker 0 "
        f"for {AFTER_TAKEOVER} s ...",
        flush=True,
    )
    took_over = b.wait_for("holding worker id", timeout=LEASE_TTL + 10)
    time.sleep(AFTER_TAKEOVER)
    a.proc.send_signal(signal.SIGCONT)
    frozen.append(time.time_ns())
    stopped = a.wait_for("minting stopped")
    time.sleep(0.3)  # both run: A mints nothing while B holds the id
    records = {"B": b.stop()}
    reacquired = a.wait_for("holding worker id", count=2)
    time.sleep(0.3)
    records["A"] = a.stop()
    return {
        "records": records,
        "started_ns": started_ns,
        "frozen_ns": frozen,
        "took_over": took_over,
        "stopped": stopped,
        "reacquired": reacquired,
        "strays": minted_after_losing(records),
        "duplicates": duplicates(records),
    }


def load_matplotlib() -> None:
    """Import matplotlib for drawing into files (about a second of CPU)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def plot_pause(result: dict, path: Path) -> None:
    """Each process's ids over time (one dot per 20th id), coloured by hold."""
    load_matplotlib()  # at once if paused_holder's thread has done it (or waits for it)
    import matplotlib.pyplot as plt

    start_ms = result["started_ns"] / 1e6
    fig, ax = plt.subplots(figsize=(8, 2.8))
    rows = {"A": 1, "B": 0}
    for name, record in result["records"].items():
        holds = sorted(h["acquired_wall_ns"] / 1e6 for h in record["holds"])
        for n, since in enumerate(holds):
            until = holds[n + 1] if n + 1 < len(holds) else float("inf")
            xs = [
                (id_wall_ms(i) - start_ms) / 1000
                for i in record["ids"][::20]
                if int(since) <= id_wall_ms(i) < until
            ]
            ax.scatter(xs, [rows[name]] * len(xs), s=4, label=f"{name}, hold {n + 1}")
    low, high = ((t / 1e6 - start_ms) / 1000 for t in result["frozen_ns"])
    ax.axvspan(low, high, ymin=0.55, ymax=0.95, color="grey", alpha=0.25)
    ax.text((low + high) / 2, 1.3, "A frozen (SIGSTOP)", ha="center", fontsize=9)
    ax.set_yticks([0, 1], ["B", "A"])
    ax.set_ylim(-0.6, 1.6)
    ax.set_xlabel("seconds (the time inside each id)")
    ax.set_title(f"One worker id, two processes, a {LEASE_TTL} s lease: ids never overlap")
    ax.legend(loc="lower right", fontsize=8, markerscale=3, ncol=3)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- a logical shard moves while the blog is busy -------------------------------------


def live_shard_move(db_dir: Path) -> dict:
    """Two writers and two readers keep going while one logical shard moves to a
    new database; then every post is looked up by id and counted on disk."""
    shutil.rmtree(db_dir, ignore_errors=True)
    authors = ["ada", "grace", "linus", "barbara", "ken", "margaret", "dennis", "frances"]
    with BlogService.BlogService(db_dir, databases=2) as blog:
        created = [blog.create_post(a, f"Notes by {a}", "...") for a in authors * 50]
        shard = created[0].shard
        stop, misses, reads = threading.Event(), [], [0]

        def write(n: int) -> None:
            while not stop.is_set():
                created.append(blog.create_post(authors[n % 8], f"during {n}", "..."))
                n += 2

        def read() -> None:
            while not stop.is_set():
                for post in list(created)[-200:]:
                    try:
                        blog.get_post(post.id)
                    except BlogService.PostNotFoundError:
                        misses.append(post.id)
                    reads[0] += 1

        threads = [threading.Thread(target=write, args=(n,)) for n in (0, 1)]
        threads += [threading.Thread(target=read) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        report = blog.move_shard(shard, "db-02")
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        copies: dict[int, int] = {}
        for name in blog.databases:
            database = blog.database(name)
            with database.lock:
                for (post_id,) in database.db.execute("SELECT id FROM posts"):
                    copies[post_id] = copies.get(post_id, 0) + 1
        found = sum(1 for post in created if blog.get_post(post.id).id == post.id)
    return {
        "report": report,
        "posts": len(created),
        "moved_posts": sum(1 for p in created if p.shard == shard),
        "reads": reads[0],
        "misses": len(misses),
        "found": found,
        "stored_once": sum(1 for n in copies.values() if n == 1),
        "stored": len(copies),
    }


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--save-images",
        action="store_true",
        help="draw the pause timeline into images/ (the README's) instead of out/ "
        "(bench.py --save-images draws images/btree_inserts.png)",
    )
    args = parser.parse_args(argv)
    failures = []

    print(
        f"Epoch {IdGenerator.EPOCH:%Y-%m-%d}; the 41-bit timestamp runs out "
        f"{IdGenerator.IDS_RUN_OUT:%Y-%m-%d %H:%M} UTC"
    )
    print(f"\n1. {THREADS} threads share one generator")
    count, dups, ordered = threads_share_one_generator()
    print(f"  {count:,} ids, {dups} duplicates, each thread's ids strictly increasing: {ordered}")
    if dups or not ordered:
        failures.append("threads got duplicate or out-of-order ids")

    print(f"\n2. {PROCESSES} processes, each its own worker id")
    pcount, pdups, pordered, samples = processes_with_own_worker_ids()
    print(
        f"  {pcount:,} ids, {pdups} duplicates, each process's ids strictly increasing: {pordered}"
    )
    if pdups or not pordered:
        failures.append("processes got duplicate or out-of-order ids")

    print("\n3. What an id says about itself (the first id of each process)")
    rows = []
    for snowflake in samples:
        parts = IdGenerator.decode(snowflake)
        rows.append(
            [snowflake, f"{parts.timestamp:%H:%M:%S.%f}"[:-3], parts.worker_id, parts.sequence]
        )
    print_table(["id", "time (UTC)", "worker", "sequence"], rows)

    print("\n4. Break it (python UniqueIdGeneration/break_it.py has the details)")
    shared = break_it.shared_worker_id()
    burst = break_it.sequence_exhausted()
    race = break_it.shared_without_lock(per_thread=RACE_IDS_PER_THREAD)
    order = break_it.sort_order()
    print_table(
        ["experiment", "naive / wrong", "ours / right"],
        [
            [
                "two generators, same worker id",
                f"{shared['duplicates_same_worker']:,} dups",
                f"{shared['duplicates_distinct_workers']} dups",
            ],
            [
                "10,000 ids in one clock ms",
                f"{burst['naive_duplicates']:,} dups",
                f"{burst['ours_duplicates']} dups",
            ],
            [
                "8 threads, one generator",
                f"{race['naive_duplicates']:,} dups",
                f"{race['ours_duplicates']} dups",
            ],
            [
                "neighbours in creation order",
                f"uuid4 {order['uuid4']:.0%}",
                f"{order['snowflake']:.0%}",
            ],
        ],
    )
    # The thread race is left out of "the failure showed": whether the naive
    # generator loses it depends on the scheduler. The other two always fail.
    showed_failure = shared["duplicates_same_worker"] and burst["naive_duplicates"]
    if not showed_failure or burst["ours_duplicates"] or race["ours_duplicates"]:
        failures.append("the break-it experiments did not show the failure and the fix")

    print("\n5. Worker ids leased from etcd (a private etcd, started for this run)")
    etcd_dir = OUT / "demo-etcd"
    shutil.rmtree(etcd_dir, ignore_errors=True)
    ask = pause = None
    try:
        with LocalEtcd.LocalEtcd(etcd_dir) as etcd:
            ask = two_processes_ask(etcd.url, etcd_dir)
            got = {name: ", ".join(map(str, ws)) for name, ws in ask["workers"].items()}
            print(
                f"  process A asked for the lowest free worker id and got {got['A']}; "
                f"B asked next and got {got['B']} (etcd's create-if-absent refused it 0)"
            )
            print(f"  etcd keys while both ran: {', '.join(ask['keys'])}")
            print(f"  {ask['ids']:,} ids from the two, {ask['duplicates']} duplicates")
            if ask["workers"] != {"A": [0], "B": [1]} or ask["duplicates"]:
                failures.append("two processes did not get two different worker ids")

            print(f"\n6. A holder frozen past its {LEASE_TTL} s lease (SIGSTOP, then SIGCONT)")
            pause = paused_holder(etcd.url, etcd_dir)
    except LocalEtcd.EtcdNotInstalledError as err:
        print(f"  skipped: {err}")
        failures.append(str(err))
    finally:
        for worker in LeaseWorker.started:
            worker.kill()  # only those a failure or Ctrl+C left running
    if pause is not None:
        start = pause["started_ns"]
        rows = []
        for name in ("A", "B"):
            for hold in pause["records"][name]["holds"]:
                rows.append(
                    [name, hold["worker_id"], f"{(hold['acquired_wall_ns'] - start) / 1e9:.2f}"]
                )
        rows.sort(key=lambda row: float(row[2]))
        print_table(["process", "worker id", "acquired at (s)"], rows)
        low, high = ((t - start) / 1e9 for t in pause["frozen_ns"])
        print(
            f"  A frozen from {low:.2f} s to {high:.2f} s. B took worker 0 meanwhile: "
            f"{pause['took_over']}.\n  A woke past its deadline and stopped minting: "
            f"{pause['stopped']}. A re-acquired it once B let go: {pause['reacquired']}."
        )
        print(
            f"  ids minted on worker 0 after another process had taken it: {pause['strays']}; "
            f"duplicates: {pause['duplicates']}"
        )
        plot = (IMAGES if args.save_images else OUT) / "lease_pause.png"
        plot_pause(pause, plot)
        print(f"  plot: {plot}")
        if not (pause["took_over"] and pause["stopped"] and pause["reacquired"]):
            failures.append("the paused holder's id was not taken over and re-acquired")
        if pause["strays"] or pause["duplicates"]:
            failures.append("a paused holder minted after losing its worker id")

    print("\n7. BlogService: 32 logical shards on 2 databases; one moves to a third, live")
    move = live_shard_move(OUT / "demo-blog")
    r = move["report"]
    print(
        f"  logical shard {r.shard}: {r.copied:,} rows copied from {r.source} to {r.target}, "
        f"{r.caught_up} caught up during a {r.switch_ms:.1f} ms switch, "
        f"{r.deleted:,} deleted from {r.source}"
    )
    print(
        f"  meanwhile: {move['posts']:,} posts written in all ({move['moved_posts']:,} to the "
        f"moving shard), {move['reads']:,} reads by id, {move['misses']} of them missed"
    )
    print(
        f"  afterwards: {move['found']:,} of {move['posts']:,} posts found by id; "
        f"{move['stored_once']:,} of {move['stored']:,} stored exactly once"
    )
    if (
        move["misses"]
        or move["found"] != move["posts"]
        or move["stored_once"] != move["stored"]
        or move["stored"] != move["posts"]
    ):
        failures.append("the live shard move lost, hid or duplicated a post")

    print(f"\n8. The B-tree claim, short version: {BTREE_ROWS:,} rows into SQLite per key kind")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in btree_experiment.KINDS:
            print(f"  inserting with {kind} keys ...", flush=True)
            db_path = Path(tmp) / f"{kind}.db"
            results.append(
                btree_experiment.insert_rows(kind, BTREE_ROWS, db_path, BTREE_BATCH_ROWS)
            )
    fastest = results[0]
    print_table(
        [
            "primary key",
            "rows/s",
            f"last {BTREE_BATCH_ROWS // 1000}k rows (s)",
            f"pages per {btree_experiment.ROWS_PER_TRANSACTION:,}-row commit",
            "MB",
        ],
        [
            [
                r.kind,
                f"{r.rows_per_second:,.0f}",
                f"{r.batch_seconds[-1]:.2f}",
                f"{r.pages_per_commit:,}",
                f"{r.file_bytes / 1e6:.0f}",
            ]
            for r in results
        ],
    )
    ratio = fastest.rows_per_second / results[1].rows_per_second
    if ratio <= 1:
        failures.append("Snowflake keys did not insert faster than uuid4 keys")

    total, total_dups = count + pcount, dups + pdups
    seen = (
        f"{total:,} ids from {THREADS} threads and {PROCESSES} processes had "
        f"{total_dups} duplicates (a shared worker id gave "
        f"{shared['duplicates_same_worker']:,})"
    )
    if pause is not None:
        seen += (
            f"; a holder frozen past its {LEASE_TTL} s etcd lease minted "
            f"{pause['strays']} ids after its worker id passed on "
            f"({pause['duplicates']} duplicates)"
        )
    seen += (
        f"; a live move of logical shard {r.shard} lost {move['posts'] - move['found']} of "
        f"{move['posts']:,} posts; Snowflake keys inserted {ratio:.1f}x faster than uuid4 keys "
        f"into SQLite ({BTREE_ROWS:,} rows)"
    )
    if failures:
        print(f"\nLesson not shown: {'; '.join(failures)}. Seen: {seen}")
        return 1
    print(f"\nLesson: {seen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
