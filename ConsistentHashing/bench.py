"""Benchmark: our ring against the uhashring package, the alternatives, balance and memory.

Everything is measured in this one run, on this machine:
1. lookups per second: our ring against uhashring 2.5 (same 160 virtual nodes,
   uhashring's default md5 hash), then every strategy in strategies.py;
2. the cost of adding and removing a node on a 1,000-node ring;
3. memory per virtual node;
4. balance (busiest/mean, std/mean) at 100 nodes and 1,000,000 keys for
   several virtual-node counts, plotted to out/balance_vs_vnodes.png
   (`--save-images`: to images/, the README's copy);
then a PASS or FAIL line per target, a `headline:` line and `targets: N of M
met`; the exit status is 1 when any target is missed.

    python ConsistentHashing/bench.py            # 25 s idle, about a minute on busy cores
    python ConsistentHashing/bench.py --quick    # fewer keys and rounds
"""

from __future__ import annotations

import argparse
import bisect
import gc
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

import simulate_resharding as experiment
from ConsistentHashRing import DEFAULT_VNODES, ConsistentHashRing
from strategies import (
    DEFAULT_BALANCE_FACTOR,
    BoundedLoadHashing,
    JumpHashing,
    ModuloHashing,
    RendezvousHashing,
)
from uhashring import HashRing

# The targets of the issue.
SPEEDUP_TARGET = 3.0  # get_node lookups/s over uhashring's, same 160 virtual nodes
BALANCE_TARGET_VNODES = 256
BALANCE_TARGET = 1.20  # busiest/mean at 100 nodes, 1,000,000 keys, V = 256
BOUNDED_TARGET = DEFAULT_BALANCE_FACTOR  # bounded loads busiest/mean, at every V

LOOKUP_NODES = 100
CHURN_NODES = 1000  # ring size for the add/remove cost
BALANCE_NODES = 100
BALANCE_VNODES = (1, 10, 100, 256, 1000)
MAX_KEYS = 10_000_000  # --keys ceiling: about 1 GiB of keys and placements


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average {load}"
    )


def heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


def rate(lookup: Callable[[str], object], keys: Sequence[str]) -> float:
    """Lookups per second over `keys`. The loop runs in C (deque(map())), so the
    harness adds as little as possible to what is measured, for every contender."""
    started = time.perf_counter()
    deque(map(lookup, keys), maxlen=0)
    return len(keys) / (time.perf_counter() - started)


def interleaved_rates(
    contenders: dict[str, tuple[Callable[[str], object], Sequence[str]]], rounds: int
) -> dict[str, list[float]]:
    """Each round measures every contender once, in turn, so background load
    that comes and goes hits them all alike; the median of the rounds is reported."""
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for number in range(rounds):
        print(f"\r   round {number + 1}/{rounds}", end="", file=sys.stderr, flush=True)
        for name, (lookup, keys) in contenders.items():
            rates[name].append(rate(lookup, keys))
    print(file=sys.stderr)
    return rates


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def bench_lookups(keys: list[str], rounds: int) -> tuple[float, list[str]]:
    heading(
        f"1. Lookups per second: {LOOKUP_NODES} nodes, {DEFAULT_VNODES} virtual nodes each, "
        f"{len(keys):,} distinct keys, median of {rounds} rounds"
    )
    names = [f"node-{i:03d}" for i in range(LOOKUP_NODES)]
    ours = ConsistentHashRing(names, vnodes=DEFAULT_VNODES)
    # uhashring's defaults are already 160 vnodes and md5; both are spelled out.
    theirs = HashRing(nodes=names, vnodes=DEFAULT_VNODES, hash_fn=None)
    assert len(theirs.runtime._keys) == len(ours._positions) == LOOKUP_NODES * DEFAULT_VNODES
    bounded = BoundedLoadHashing(names)
    bounded.add_keys(keys)
    # Rendezvous scores every node per lookup and jump loops ~ln(N) times in
    # Python: fewer keys keep their rounds short (rates are per lookup anyway).
    few = keys[: max(1, len(keys) // 10)]
    contenders = {
        "our ring get_node": (ours.get_node, keys),
        f"uhashring {version('uhashring')} get_node": (theirs.get_node, keys),
        "our ring get_nodes(key, 3)": (lambda key: ours.get_nodes(key, 3), few),
        "modulo": (ModuloHashing(names).get_node, keys),
        "jump hash": (JumpHashing(names).get_node, few),
        "rendezvous (numpy, 100 nodes)": (RendezvousHashing(names).get_node, few),
        "bounded loads (keys already placed)": (bounded.get_node, keys),
    }
    rates = interleaved_rates(contenders, rounds)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    baseline = medians[f"uhashring {version('uhashring')} get_node"]
    rows = [
        [
            name,
            f"{medians[name]:,.0f}",
            f"{min(values):,.0f} - {max(values):,.0f}",
            f"{1e9 / medians[name]:,.0f}",
            f"{medians[name] / baseline:.2f}x",
        ]
        for name, values in rates.items()
    ]
    header = ["lookup", "median lookups/s", "range over rounds", "ns/lookup", "vs uhashring"]
    print(experiment.format_table(header, rows))
    speedup = medians["our ring get_node"] / baseline
    return speedup, [
        f"{verdict(speedup >= SPEEDUP_TARGET)}  get_node is {speedup:.2f}x uhashring's "
        f"lookups/s (target >= {SPEEDUP_TARGET:.0f}x)"
    ]


def median_seconds(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_membership(repeat: int) -> None:
    heading(
        f"2. Changing membership: a ring of {CHURN_NODES:,} nodes x {DEFAULT_VNODES} "
        f"virtual nodes ({CHURN_NODES * DEFAULT_VNODES:,} points), median of {repeat}"
    )
    names = [f"node-{i:04d}" for i in range(CHURN_NODES)]
    ours = ConsistentHashRing(names)
    theirs = HashRing(nodes=names, vnodes=DEFAULT_VNODES)

    def churn(ring: HashRing) -> float:
        # add then remove the same newcomer, so the ring is the same size each time
        return median_seconds(
            lambda: (ring.add_node("newcomer"), ring.remove_node("newcomer")), repeat
        )

    add_times, remove_times = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        ours.add_node("newcomer")
        middle = time.perf_counter()
        ours.remove_node("newcomer")
        add_times.append(middle - started)
        remove_times.append(time.perf_counter() - middle)
    rebuild = median_seconds(lambda: ConsistentHashRing(names), max(1, repeat // 3))
    rows = [
        ["our add_node (hash V points, bisect, one merge pass)", statistics.median(add_times)],
        ["our remove_node (bisect V points, one copy pass)", statistics.median(remove_times)],
        ["the textbook add: bisect.insort each of the V points", textbook_insort(ours, repeat)],
        ["rebuilding our whole ring from scratch", rebuild],
        ["uhashring add + remove (re-sorts every point each time)", churn(theirs)],
    ]
    print(
        experiment.format_table(
            ["operation", "milliseconds"], [[name, f"{1000 * s:.2f}"] for name, s in rows]
        )
    )


def textbook_insort(ring: ConsistentHashRing, repeat: int) -> float:
    """Time inserting a node's V points one by one with bisect.insort, on copies
    of our lists: every insert shifts the tail of both lists along by one."""
    points = sorted((ring._hash(f"newcomer#{i}"), "newcomer") for i in range(ring.vnodes))
    times = []
    for _ in range(repeat):
        positions, owners = list(ring._positions), list(ring._owners)
        started = time.perf_counter()
        for position, node in points:
            index = bisect.bisect_left(positions, position)
            positions.insert(index, position)
            owners.insert(index, node)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def traced_bytes(build: Callable[[], object]) -> tuple[int, object]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    built = build()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, built


def bench_memory() -> None:
    heading(f"3. Memory per virtual node ({CHURN_NODES:,} nodes x {DEFAULT_VNODES}, tracemalloc)")
    names = [f"node-{i:04d}" for i in range(CHURN_NODES)]
    points = CHURN_NODES * DEFAULT_VNODES
    ours, _ = traced_bytes(lambda: ConsistentHashRing(names))
    theirs, _ = traced_bytes(lambda: HashRing(nodes=names, vnodes=DEFAULT_VNODES))
    rows = [
        ["our ring (sorted int list + owner list)", f"{ours / points:.0f}", f"{ours / 2**20:.1f}"],
        [
            "uhashring (dict point -> node, sorted md5 list, per-node lists)",
            f"{theirs / points:.0f}",
            f"{theirs / 2**20:.1f}",
        ],
    ]
    print(experiment.format_table(["ring", "bytes per virtual node", "MiB in all"], rows))


def bench_balance(key_count: int, plot_dir: Path) -> tuple[dict[int, tuple], list[str]]:
    heading(
        f"4. Balance: {BALANCE_NODES} nodes, {key_count:,} keys "
        f"(mean {key_count // BALANCE_NODES:,} keys a node)"
    )
    keys = experiment.make_keys(key_count, random.Random(2024))
    names = [f"node-{i:03d}" for i in range(BALANCE_NODES)]
    results: dict[int, tuple] = {}
    rows = []
    for vnodes in BALANCE_VNODES:
        print(f"\r   {vnodes} virtual nodes ...", end="", file=sys.stderr, flush=True)
        ring = ConsistentHashRing(names, vnodes=vnodes)
        ring_loads = experiment.load_per_node(experiment.place(ring.get_node, keys), names)
        bounded = BoundedLoadHashing(names, vnodes=vnodes)
        started = time.perf_counter()
        bounded.add_keys(keys)
        placing = time.perf_counter() - started
        bounded_loads = list(bounded.loads.values())
        results[vnodes] = (*experiment.balance(ring_loads), *experiment.balance(bounded_loads))
        placement = bounded.placement  # a copy: take it once
        moved = sum(placement[key] != ring.get_node(key) for key in keys) / key_count
        rows.append(
            [
                str(vnodes),
                *(f"{x:.3f}" for x in results[vnodes]),
                experiment.percent(moved),
                f"{placing:.1f}",
            ]
        )
    print("\r" + " " * 40 + "\r", end="", file=sys.stderr)
    print(
        experiment.format_table(
            [
                "virtual nodes",
                "ring max/mean",
                "ring std/mean",
                "bounded max/mean",
                "bounded std/mean",
                "bounded: keys off their ring node",
                "bounded: s to place",
            ],
            rows,
        )
    )
    references = {}
    for label, strategy in (("jump hash", JumpHashing(names)), ("modulo", ModuloHashing(names))):
        loads = experiment.load_per_node(experiment.place(strategy.get_node, keys), names)
        references[label] = experiment.balance(loads)
        print(
            f"{label}: max/mean {references[label][0]:.3f}, std/mean {references[label][1]:.3f} "
            "(no virtual nodes; what is left is the noise of sampling keys)"
        )
    path = plot_balance(results, references, key_count, plot_dir)
    print(f"wrote {experiment.shown(path)}")
    ring_at_target = results[BALANCE_TARGET_VNODES][0]
    worst_bounded = max(result[2] for result in results.values())
    return results, [
        f"{verdict(ring_at_target <= BALANCE_TARGET)}  ring max/mean at V={BALANCE_TARGET_VNODES}: "
        f"{ring_at_target:.3f} (target <= {BALANCE_TARGET:.2f})",
        f"{verdict(worst_bounded <= BOUNDED_TARGET)}  bounded loads max/mean, worst over "
        f"V={', '.join(map(str, BALANCE_VNODES))}: {worst_bounded:.3f} "
        f"(target <= {BOUNDED_TARGET:.2f})",
    ]


def plot_balance(
    results: dict[int, tuple], references: dict[str, tuple], key_count: int, plot_dir: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vnodes = list(results)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(vnodes, [results[v][0] for v in vnodes], "o-", label="ring")
    left.plot(
        vnodes,
        [results[v][2] for v in vnodes],
        "s-",
        label=f"bounded loads (c = {DEFAULT_BALANCE_FACTOR})",
    )
    left.axhline(BALANCE_TARGET, color="grey", linestyle=":", label="target 1.20 at V = 256")
    left.axhline(references["jump hash"][0], color="green", linestyle="--", label="jump hash")
    left.set_ylabel("busiest node / mean")
    right.plot(vnodes, [results[v][1] for v in vnodes], "o-", label="ring")
    right.plot(vnodes, [1 / v**0.5 for v in vnodes], "k:", label="1 / sqrt(V)")
    right.plot(vnodes, [results[v][3] for v in vnodes], "s-", label="bounded loads")
    right.axhline(references["jump hash"][1], color="green", linestyle="--", label="jump hash")
    right.set_ylabel("standard deviation / mean")
    right.set_yscale("log")
    for axes in (left, right):
        axes.set_xscale("log")
        axes.set_xlabel("virtual nodes per node (V)")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(
        f"Balance of {key_count:,} keys on {BALANCE_NODES} nodes: more virtual nodes, "
        "smaller excess (about 1/sqrt(V))",
        fontsize=11,
    )
    figure.tight_layout()
    path = plot_dir / "balance_vs_vnodes.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def check_movement(keys: list[str]) -> list[str]:
    heading(f"5. Movement: 100 nodes, {len(keys):,} keys, remove 10 random nodes, then add 10")
    names = [f"node-{i:03d}" for i in range(100)]
    ring = ConsistentHashRing(names)
    before = experiment.place(ring.get_node, keys)
    removed = set(random.Random(5).sample(names, 10))
    for node in removed:
        ring.remove_node(node)
    middle = experiment.place(ring.get_node, keys)
    added = {f"new-{i}" for i in range(10)}
    for node in added:
        ring.add_node(node)
    after = experiment.place(ring.get_node, keys)
    strays = sum(before[key] not in removed for key in experiment.moved_keys(before, middle)) + sum(
        after[key] not in added for key in experiment.moved_keys(middle, after)
    )
    out = len(experiment.moved_keys(before, middle)) / len(keys)
    held = sum(node in removed for node in before.values()) / len(keys)
    print(
        f"removal moved {experiment.percent(out)} (exactly the removed nodes' "
        f"{experiment.percent(held)}); addition moved "
        f"{experiment.percent(len(experiment.moved_keys(middle, after)) / len(keys))}; "
        f"keys moved needlessly: {strays}"
    )
    return [f"{verdict(strays == 0)}  movement is minimal: {strays} keys moved needlessly"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer keys and rounds")
    parser.add_argument("--keys", type=int, help="keys for the balance section (default 1e6)")
    parser.add_argument(
        "--save-images",
        action="store_true",
        help="write the balance plot into images/, replacing the README's picture "
        "(default: the git-ignored out/)",
    )
    args = parser.parse_args(argv)
    if args.keys is not None and not BALANCE_NODES <= args.keys <= MAX_KEYS:
        parser.error(f"--keys must be between {BALANCE_NODES} and {MAX_KEYS:,}")
    balance_keys = args.keys or (200_000 if args.quick else 1_000_000)
    lookup_keys = experiment.make_keys(50_000 if args.quick else 200_000, random.Random(1))
    rounds = 3 if args.quick else 7

    print(f"Machine: {machine()}")
    print(f"uhashring {version('uhashring')}, mmh3 {version('mmh3')}, numpy {version('numpy')}")
    speedup, verdicts = bench_lookups(lookup_keys, rounds)
    bench_membership(repeat=5 if args.quick else 15)
    bench_memory()
    plot_dir = experiment.IMAGES if args.save_images else experiment.OUT
    _, balance_verdicts = bench_balance(balance_keys, plot_dir)
    verdicts += balance_verdicts
    verdicts += check_movement(lookup_keys)
    heading("Targets")
    for line in verdicts:
        print(line)
    met = sum(line.startswith("PASS") for line in verdicts)
    print(f"headline: get_node does {speedup:.2f}x uhashring's lookups per second")
    print(f"targets: {met} of {len(verdicts)} met")
    return 0 if met == len(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
