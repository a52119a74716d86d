"""Benchmark: our ring against uhashring, like for like, then the alternatives, balance and memory.

Everything is measured in this one run, on this machine:
1. single-key lookups per second: our ring and uhashring 2.5 each with its
   own default hash (mmh3 / md5), then both with the same hash (mmh3, then
   md5), both in ketama mode, and every strategy in strategies.py;
2. batch lookups, `get_nodes(keys)`: keys per second;
3. changing membership on a 1,000-node ring: our directory against the flat
   sorted lists this folder used before (which copy all N*V points on every
   change), a rebuild, and uhashring; and lookups on both layouts;
4. memory per virtual node;
5. balance (busiest/mean, std/mean) at 100 nodes and 1,000,000 keys for
   several virtual-node counts and every strategy, plotted to
   out/balance_vs_vnodes.png (`--save-images`: to images/, the README's copy);
6. movement: the ring moves exactly the keys it must;
then a PASS or FAIL line per target, a `headline:` line and `targets: N of M
met`; the exit status is 1 when any target is missed.

    python ConsistentHashing/bench.py            # about a minute idle, more on busy cores
    python ConsistentHashing/bench.py --quick    # fewer keys and rounds
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

import mmh3
import simulate_resharding as experiment
from ConsistentHashRing import DEFAULT_VNODES, MASK_32, ConsistentHashRing, KetamaRing
from strategies import (
    DEFAULT_BALANCE_FACTOR,
    BoundedLoadHashing,
    JumpHashing,
    MaglevHashing,
    ModuloHashing,
    RendezvousHashing,
    WeightedRendezvousHashing,
)
from uhashring import HashRing

# The targets of the issue.
SAME_HASH_TARGET = 2.0  # our get_node lookups/s over uhashring's, both with mmh3
BATCH_TARGET = 5_000_000  # get_nodes(keys): keys placed per second
LAYOUT_TARGET = 1.0  # the directory's lookups/s over the flat lists' (it must not be slower)
BALANCE_TARGET_VNODES = 256
BALANCE_TARGET = 1.20  # ring busiest/mean at 100 nodes, 1,000,000 keys, V = 256
BOUNDED_TARGET = DEFAULT_BALANCE_FACTOR  # bounded loads busiest/mean, at every V

LOOKUP_NODES = 100
BATCH_KEYS = 1_000_000
CHURN_NODES = 1000  # ring size for the add/remove cost
BALANCE_NODES = 100
BALANCE_VNODES = (1, 10, 100, 256, 1000)
MAX_KEYS = 10_000_000  # --keys ceiling: about 1 GiB of keys and placements
# --keys floor: 2,000 keys a node vary by 2.2% on their own; with fewer, the
# keys' noise rather than the ring would decide the balance targets.
MIN_KEYS = 200_000


def md5_hash(key: str | bytes) -> int:
    """uhashring's default hash, written out: md5 of str(key), hex, as an int.
    Our ring keeps its low 32 bits; uhashring uses all 128."""
    return int(hashlib.md5(str(key).encode("utf-8")).hexdigest(), 16)


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


def progress(text: str) -> None:
    """One line on stderr that updates in place, on a terminal only (piped: nothing)."""
    if sys.stderr.isatty():
        print(f"\r   {text}".ljust(40), end="", file=sys.stderr, flush=True)


def end_progress() -> None:
    if sys.stderr.isatty():
        print("\r" + " " * 40 + "\r", end="", file=sys.stderr, flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def rate(lookup: Callable[[str], object], keys: Sequence[str]) -> float:
    """Lookups per second over `keys`. The loop runs in C (deque(map())), so the
    harness adds as little as possible to what is measured, for every contender."""
    started = time.perf_counter()
    deque(map(lookup, keys), maxlen=0)
    return len(keys) / (time.perf_counter() - started)


def interleaved_rates(
    contenders: dict[str, tuple[Callable[[str], object], Sequence[str]]], rounds: int
) -> dict[str, float]:
    """Each round measures every contender once, in turn, so background load
    that comes and goes hits them all alike; the median of the rounds is reported."""
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for number in range(rounds):
        progress(f"round {number + 1}/{rounds}")
        for name, (lookup, keys) in contenders.items():
            rates[name].append(rate(lookup, keys))
    end_progress()
    return {name: statistics.median(values) for name, values in rates.items()}


class FlatRing:
    """The ring as this folder kept it before: two flat lists over all N*V points.

    A lookup bisects all the points; adding a node merges its points in with
    one pass of slice copies, which copies every one of the N*V entries.
    Built from a ConsistentHashRing, so both hold exactly the same points.
    """

    def __init__(self, ring: ConsistentHashRing) -> None:
        points = ring.points()
        self.positions = [position for position, _ in points]
        self.owners = [node for _, node in points] + [points[0][1]]

    def get_node(self, key: str) -> str:
        return self.owners[bisect_left(self.positions, mmh3.hash(key) & MASK_32)]

    def add_points(self, points: list[tuple[int, str]]) -> None:
        positions, owners = self.positions, self.owners[:-1]
        merged_positions: list[int] = []
        merged_owners: list[str] = []
        start = 0
        for position, node in sorted(points):
            i = bisect_left(positions, position, start)
            merged_positions += positions[start:i]
            merged_owners += owners[start:i]
            merged_positions.append(position)
            merged_owners.append(node)
            start = i
        merged_positions += positions[start:]
        merged_owners += owners[start:]
        self.positions = merged_positions
        self.owners = [*merged_owners, merged_owners[0]]


def bench_lookups(keys: list[str], rounds: int) -> tuple[dict[str, float], list[str]]:
    heading(
        f"1. Single-key lookups per second: {LOOKUP_NODES} nodes, {DEFAULT_VNODES} virtual "
        f"nodes each, {len(keys):,} distinct keys, median of {rounds} interleaved rounds"
    )
    names = [f"node-{i:03d}" for i in range(LOOKUP_NODES)]
    ring_mmh3 = ConsistentHashRing(names)
    ring_md5 = ConsistentHashRing(names, hash_function=md5_hash)
    theirs_md5 = HashRing(nodes=names, vnodes=DEFAULT_VNODES)  # its default hash: md5
    theirs_mmh3 = HashRing(nodes=names, vnodes=DEFAULT_VNODES, hash_fn=mmh3.hash)
    for ring in (theirs_md5, theirs_mmh3):
        assert len(ring.runtime._keys) == LOOKUP_NODES * DEFAULT_VNODES
    ketama = KetamaRing(names)
    theirs_ketama = HashRing(nodes=names, hash_fn="ketama")
    assert len(theirs_ketama.runtime._keys) == len(ketama.points()) == LOOKUP_NODES * 160
    bounded = BoundedLoadHashing(names)
    bounded.add_keys(keys)
    uh = f"uhashring {version('uhashring')}"
    # Rendezvous scores every node per lookup, jump and Maglev hash with a
    # 128-bit mmh3 and loop in Python: fewer keys keep their rounds short.
    few = keys[: max(1, len(keys) // 10)]
    contenders = {
        "ring, mmh3 (its default)": (ring_mmh3.get_node, keys),
        f"{uh}, md5 (its default)": (theirs_md5.get_node, keys),
        f"{uh}, mmh3": (theirs_mmh3.get_node, keys),
        "ring, md5": (ring_md5.get_node, keys),
        "KetamaRing (md5, libketama's points)": (ketama.get_node, keys),
        f"{uh}, ketama mode": (theirs_ketama.get_node, keys),
        "ring get_replicas(key, 3)": (lambda key: ring_mmh3.get_replicas(key, 3), few),
        "modulo": (ModuloHashing(names).get_node, keys),
        "jump hash": (JumpHashing(names).get_node, few),
        "rendezvous (numpy, 100 nodes)": (RendezvousHashing(names).get_node, few),
        "weighted rendezvous (numpy)": (WeightedRendezvousHashing(names).get_node, few),
        "Maglev (M = 65,537)": (MaglevHashing(names).get_node, keys),
        "bounded loads (keys already placed)": (bounded.get_node, keys),
    }
    medians = interleaved_rates(contenders, rounds)
    peer = {  # each row against uhashring with the same hash
        "ring, mmh3 (its default)": f"{uh}, mmh3",
        "ring, md5": f"{uh}, md5 (its default)",
        "KetamaRing (md5, libketama's points)": f"{uh}, ketama mode",
    }
    rows = []
    for name, median in medians.items():
        same = f"{median / medians[peer[name]]:.2f}x" if name in peer else ""
        rows.append(
            [
                name,
                f"{median:,.0f}",
                f"{1e9 / median:,.0f}",
                f"{median / medians[f'{uh}, md5 (its default)']:.2f}x",
                same,
            ]
        )
    header = [
        "lookup",
        "median lookups/s",
        "ns/lookup",
        "vs uhashring (its default md5)",
        "vs uhashring, same hash",
    ]
    print(experiment.format_table(header, rows))
    ratios = {
        "same hash (mmh3)": medians["ring, mmh3 (its default)"] / medians[f"{uh}, mmh3"],
        "same hash (md5)": medians["ring, md5"] / medians[f"{uh}, md5 (its default)"],
        "defaults": medians["ring, mmh3 (its default)"] / medians[f"{uh}, md5 (its default)"],
        "ketama": medians["KetamaRing (md5, libketama's points)"] / medians[f"{uh}, ketama mode"],
    }
    print(
        f"Like for like, the ring is {ratios['same hash (mmh3)']:.2f}x uhashring with mmh3 and "
        f"{ratios['same hash (md5)']:.2f}x with md5 (where hashing the key is most of the time);\n"
        f"each with its own default hash, {ratios['defaults']:.2f}x; in ketama mode, "
        f"{ratios['ketama']:.2f}x."
    )
    return ratios, [
        f"{verdict(ratios['same hash (mmh3)'] >= SAME_HASH_TARGET)}  get_node is "
        f"{ratios['same hash (mmh3)']:.2f}x uhashring's lookups/s with the same hash, mmh3 "
        f"(target >= {SAME_HASH_TARGET:.0f}x)"
    ]


def bench_batch(keys: list[str], rounds: int) -> tuple[float, list[str]]:
    heading(
        f"2. Batch lookups, get_nodes(keys): {len(keys):,} keys on {LOOKUP_NODES} nodes, "
        f"median of {rounds}"
    )
    names = [f"node-{i:03d}" for i in range(LOOKUP_NODES)]
    ring = ConsistentHashRing(names)
    assert ring.get_nodes(keys[:1000]) == [ring.get_node(key) for key in keys[:1000]]
    contenders: dict[str, Callable[[list[str]], object]] = {
        "ring get_nodes (numpy, arc table)": ring.get_nodes,
        "ring get_node in a list comprehension": lambda ks: [ring.get_node(k) for k in ks],
        "Maglev get_nodes": MaglevHashing(names).get_nodes,
        "jump get_nodes": JumpHashing(names).get_nodes,
        "rendezvous get_nodes (100 scores a key)": RendezvousHashing(names).get_nodes,
    }
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    few = keys[: len(keys) // 10]  # rendezvous and jump: 1/10 of the keys
    for number in range(rounds):
        progress(f"round {number + 1}/{rounds}")
        for name, lookup in contenders.items():
            batch = keys if name.startswith(("ring", "Maglev")) else few
            started = time.perf_counter()
            lookup(batch)
            rates[name].append(len(batch) / (time.perf_counter() - started))
    end_progress()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(
        experiment.format_table(
            ["lookup", "median keys/s"], [[name, f"{m:,.0f}"] for name, m in medians.items()]
        )
    )
    batch = medians["ring get_nodes (numpy, arc table)"]
    return batch, [
        f"{verdict(batch >= BATCH_TARGET)}  get_nodes(keys) places {batch / 1e6:.1f}M keys/s "
        f"(target >= {BATCH_TARGET / 1e6:.0f}M)"
    ]


def median_seconds(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_membership(keys: list[str], repeat: int, rounds: int) -> list[str]:
    heading(
        f"3. Changing membership: a ring of {CHURN_NODES:,} nodes x {DEFAULT_VNODES} "
        f"virtual nodes ({CHURN_NODES * DEFAULT_VNODES:,} points), median of {repeat}"
    )
    names = [f"node-{i:04d}" for i in range(CHURN_NODES)]
    ours = ConsistentHashRing(names)
    flat = FlatRing(ours)
    theirs = HashRing(nodes=names, vnodes=DEFAULT_VNODES)
    newcomer_points = ConsistentHashRing(["newcomer"]).points()

    add_times, remove_times = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        ours.add_node("newcomer")
        middle = time.perf_counter()
        ours.remove_node("newcomer")
        add_times.append(middle - started)
        remove_times.append(time.perf_counter() - middle)

    flat_times = []
    for _ in range(repeat):
        copy = FlatRing(ours)  # a fresh copy of the same points each time, not timed
        started = time.perf_counter()
        copy.add_points(newcomer_points)
        flat_times.append(time.perf_counter() - started)
    rebuild = median_seconds(lambda: ConsistentHashRing(names), max(1, repeat // 5))
    uhashring_churn = median_seconds(
        lambda: (theirs.add_node("newcomer"), theirs.remove_node("newcomer")), max(1, repeat // 3)
    )
    rows = [
        ["our add_node (V inserts into arcs of ~8 points)", statistics.median(add_times)],
        ["our remove_node", statistics.median(remove_times)],
        ["flat lists: add (one merge pass copies all N*V)", statistics.median(flat_times)],
        ["rebuilding our whole ring from scratch", rebuild],
        ["uhashring add + remove (re-sorts every point each time)", uhashring_churn],
    ]
    print(
        experiment.format_table(
            ["operation", "milliseconds"], [[name, f"{1000 * s:.3f}"] for name, s in rows]
        )
    )
    medians = interleaved_rates(
        {"directory": (ours.get_node, keys), "flat lists": (flat.get_node, keys)}, rounds
    )
    layout = medians["directory"] / medians["flat lists"]
    print(
        f"Lookups on this {CHURN_NODES:,}-node ring: directory {medians['directory']:,.0f}/s, "
        f"flat lists {medians['flat lists']:,.0f}/s ({layout:.2f}x)"
    )
    return [
        f"{verdict(layout >= LAYOUT_TARGET)}  lookups with the directory are {layout:.2f}x the "
        f"flat lists' while a change no longer copies all N*V points "
        f"(target >= {LAYOUT_TARGET:.1f}x)"
    ]


def traced_bytes(build: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    built = build()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del built
    return after - before


def bench_memory() -> None:
    heading(f"4. Memory per virtual node ({CHURN_NODES:,} nodes x {DEFAULT_VNODES}, tracemalloc)")
    names = [f"node-{i:04d}" for i in range(CHURN_NODES)]
    points = CHURN_NODES * DEFAULT_VNODES
    rows = []
    for label, build in (
        ("our ring (directory of arcs: sorted ints + owners)", lambda: ConsistentHashRing(names)),
        # (the ring it is built from is freed again; its position ints stay, in the lists)
        ("flat lists (this folder's previous layout)", lambda: FlatRing(ConsistentHashRing(names))),
        (
            "uhashring (dict point -> node, sorted list, per-node lists)",
            lambda: HashRing(nodes=names, vnodes=DEFAULT_VNODES),
        ),
    ):
        size = traced_bytes(build)
        rows.append([label, f"{size / points:.0f}", f"{size / 2**20:.1f}"])
    print(experiment.format_table(["ring", "bytes per virtual node", "MiB in all"], rows))


def balance_of(nodes: list[str], owners: list[str]) -> tuple[float, float]:
    counts = Counter(owners)
    return experiment.balance([counts[node] for node in nodes])


def bench_balance(key_count: int, plot_dir: Path) -> tuple[dict[int, tuple], list[str]]:
    heading(
        f"5. Balance: {BALANCE_NODES} nodes, {key_count:,} keys "
        f"(mean {key_count // BALANCE_NODES:,} keys a node)"
    )
    keys = experiment.make_keys(key_count, random.Random(2024))
    names = [f"node-{i:03d}" for i in range(BALANCE_NODES)]
    results: dict[int, tuple] = {}
    rows = []
    for vnodes in BALANCE_VNODES:
        progress(f"{vnodes} virtual nodes ...")
        ring = ConsistentHashRing(names, vnodes=vnodes)
        ring_owners = ring.get_nodes(keys)
        bounded = BoundedLoadHashing(names, vnodes=vnodes)
        started = time.perf_counter()
        bounded_owners = bounded.get_nodes(keys)
        placing = time.perf_counter() - started
        results[vnodes] = (*balance_of(names, ring_owners), *balance_of(names, bounded_owners))
        moved = sum(a != b for a, b in zip(ring_owners, bounded_owners, strict=True)) / key_count
        rows.append(
            [
                str(vnodes),
                *(f"{x:.3f}" for x in results[vnodes]),
                experiment.percent(moved),
                f"{placing:.1f}",
            ]
        )
    end_progress()
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
    for label, strategy in (
        ("jump hash", JumpHashing(names)),
        ("rendezvous", RendezvousHashing(names)),
        ("Maglev, M = 65,537", MaglevHashing(names)),
        ("modulo", ModuloHashing(names)),
    ):
        references[label] = balance_of(names, strategy.get_nodes(keys))
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
    left.axhline(
        references["Maglev, M = 65,537"][0], color="purple", linestyle="-.", label="Maglev"
    )
    left.set_ylabel("busiest node / mean")
    right.plot(vnodes, [results[v][1] for v in vnodes], "o-", label="ring")
    right.plot(vnodes, [1 / v**0.5 for v in vnodes], "k:", label="1 / sqrt(V)")
    right.plot(vnodes, [results[v][3] for v in vnodes], "s-", label="bounded loads")
    right.axhline(references["jump hash"][1], color="green", linestyle="--", label="jump hash")
    right.axhline(
        references["Maglev, M = 65,537"][1], color="purple", linestyle="-.", label="Maglev"
    )
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
    heading(f"6. Movement: 100 nodes, {len(keys):,} keys, remove 10 random nodes, then add 10")
    names = [f"node-{i:03d}" for i in range(100)]
    ring = ConsistentHashRing(names)
    before = dict(zip(keys, ring.get_nodes(keys), strict=True))
    removed = set(random.Random(5).sample(names, 10))
    for node in removed:
        ring.remove_node(node)
    middle = dict(zip(keys, ring.get_nodes(keys), strict=True))
    added = {f"new-{i}" for i in range(10)}
    for node in added:
        ring.add_node(node)
    after = dict(zip(keys, ring.get_nodes(keys), strict=True))
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
    parser.add_argument(
        "--keys",
        type=int,
        help=f"keys for the balance section ({MIN_KEYS:,} to {MAX_KEYS:,}; "
        "default 1,000,000, with --quick 200,000)",
    )
    parser.add_argument(
        "--save-images",
        action="store_true",
        help="write the balance plot into images/, replacing the README's picture "
        "(default: the git-ignored out/)",
    )
    args = parser.parse_args(argv)
    if args.keys is not None and not MIN_KEYS <= args.keys <= MAX_KEYS:
        parser.error(
            f"--keys must be between {MIN_KEYS:,} and {MAX_KEYS:,} (with fewer, the keys' own "
            "noise would decide the balance targets)"
        )
    balance_keys = args.keys or (200_000 if args.quick else 1_000_000)
    lookup_keys = experiment.make_keys(50_000 if args.quick else 200_000, random.Random(1))
    batch_count = BATCH_KEYS // 5 if args.quick else BATCH_KEYS
    batch_keys = experiment.make_keys(batch_count, random.Random(3))
    rounds = 3 if args.quick else 7

    print(f"Machine: {machine()}")
    print(f"uhashring {version('uhashring')}, mmh3 {version('mmh3')}, numpy {version('numpy')}")
    ratios, verdicts = bench_lookups(lookup_keys, rounds)
    batch, batch_verdicts = bench_batch(batch_keys, rounds)
    verdicts += batch_verdicts
    verdicts += bench_membership(lookup_keys, repeat=5 if args.quick else 15, rounds=rounds)
    bench_memory()
    plot_dir = experiment.IMAGES if args.save_images else experiment.OUT
    _, balance_verdicts = bench_balance(balance_keys, plot_dir)
    verdicts += balance_verdicts
    verdicts += check_movement(lookup_keys)
    heading("Targets")
    for line in verdicts:
        print(line)
    met = sum(line.startswith("PASS") for line in verdicts)
    print(
        f"headline: get_node is {ratios['same hash (mmh3)']:.2f}x uhashring with the same hash "
        f"(mmh3), {ratios['defaults']:.2f}x with each its own default; get_nodes places "
        f"{batch / 1e6:.1f}M keys/s"
    )
    print(f"targets: {met} of {len(verdicts)} met")
    return 0 if met == len(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
