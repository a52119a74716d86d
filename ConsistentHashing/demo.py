"""The guided run: what moves when shards come and go, for the ring and its rivals.

1. The brief's experiment: 1,000 shards, 10,000 keys, remove 50, add 50.
2. The same change for modulo, jump, rendezvous, Maglev and bounded-load hashing.
3. Balance: how far the busiest node sits above the mean, by virtual nodes.
4. Maglev: balance and disruption by table size.

Ends with a `Lesson:` line, or with `Lesson not shown:` and exit status 1 if
the ring moved more than twice the theoretical share, modulo hashing moved
less than 80%, or any key moved that consistent hashing says must stay. The
plots go to the folder's git-ignored out/ (`--save-images`: to images/, the
README's copies).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import simulate_resharding as experiment
from ConsistentHashRing import DEFAULT_VNODES, ConsistentHashRing
from strategies import (
    DEFAULT_BALANCE_FACTOR,
    BoundedLoadHashing,
    JumpHashing,
    MaglevHashing,
    ModuloHashing,
    RendezvousHashing,
)

SHARDS, KEYS, REMOVE, ADD = 1000, 10_000, 50, 50
TRIALS = 3  # simulate_resharding.py runs more; three already show the spread
BALANCE_NODES, BALANCE_KEYS = 100, 100_000
BALANCE_VNODES = (1, 10, 100, 256)
MAGLEV_NODES = 100
MAGLEV_SIZES = (1_009, 4_099, 65_537)  # primes: about 10, 40 and 655 slots a node
MAGLEV_LIMIT = 1.5  # at M = 65,537, needless moves may be at most 1.5x the necessary ones
RING_LIMIT = 2.0  # the ring may move at most twice the theoretical share
MODULO_FLOOR = 0.80  # modulo hashing must move at least this share to make the point
PROGRESS_WIDTH = 60  # characters the updating progress line may take


def heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


def progress(text: str) -> None:
    """One line that updates in place while long work runs (on a terminal only:
    piped, e.g. through tour.py, the step headings are the progress)."""
    if sys.stdout.isatty():
        print(f"\r   {text}".ljust(PROGRESS_WIDTH), end="", flush=True)


def clear_progress() -> None:
    if sys.stdout.isatty():
        print("\r" + " " * PROGRESS_WIDTH + "\r", end="", flush=True)


def step_experiment(plot_dir: Path) -> experiment.Trial:
    heading(f"1. The brief's experiment: {SHARDS} shards, {KEYS} keys, remove {REMOVE}, add {ADD}")
    trials = []
    for number in range(TRIALS):
        progress(f"trial {number + 1}/{TRIALS}")
        trials.append(experiment.run_trial(SHARDS, KEYS, REMOVE, ADD, seed=number + 1))
    clear_progress()
    rows = experiment.summary_rows(trials, REMOVE, ADD, SHARDS)
    print(experiment.format_table(experiment.SUMMARY_HEADER, rows))
    paths = experiment.write_plots(trials[0], plot_dir, DEFAULT_VNODES)
    print("plots of trial 1:")
    for path in paths:
        print(f"  {experiment.shown(path)}")
    return trials[0]


def placements(strategy: Any, keys: list[str]) -> dict[str, str]:
    return dict(zip(keys, strategy.get_nodes(keys), strict=True))


def three_placements(
    strategy: Any, keys: list[str], leaving: list[str], joining: list[str]
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Where `keys` live before, after `leaving` left, and after `joining` joined."""
    before = placements(strategy, keys)  # bounded loads: all placed at once, one cap
    for shard in leaving:
        strategy.remove_node(shard)
    middle = placements(strategy, keys)
    for shard in joining:
        strategy.add_node(shard)
    return before, middle, placements(strategy, keys)


def rebuilt(
    make: Callable[[list[str]], Any],
    names: list[str],
    keys: list[str],
    leaving: list[str],
    joining: list[str],
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """The same three placements, each from a strategy built afresh from the node list.

    Maglev is rebuilt from its node list on every change anyway (one build here
    instead of one per shard); jump hash built from the survivors is what
    removing shards from the middle of its list means: the rest are renumbered.
    """
    survivors = [name for name in names if name not in set(leaving)]
    return (
        placements(make(names), keys),
        placements(make(survivors), keys),
        placements(make(survivors + joining), keys),
    )


def movement(
    before: dict[str, str], middle: dict[str, str], after: dict[str, str]
) -> dict[str, float]:
    """Shares of keys moved at each step, needless moves, and the final balance."""
    gone = set(before.values()) - set(middle.values())
    new = set(after.values()) - set(middle.values())
    moved_out = experiment.moved_keys(before, middle)
    moved_in = experiment.moved_keys(middle, after)
    return {
        "removal": len(moved_out) / len(before),
        "addition": len(moved_in) / len(before),
        # Moved although its shard stayed (removal) or not onto a new shard (addition).
        "strays": sum(before[key] not in gone for key in moved_out)
        + sum(after[key] not in new for key in moved_in),
        "max_over_mean": experiment.balance(list(Counter(after.values()).values()))[0],
    }


def step_strategies(trial: experiment.Trial) -> dict[str, dict[str, float]]:
    heading("2. The same change for every strategy (the keys and shards of trial 1)")
    keys, names = list(trial.initial), trial.shards
    removed, added = trial.removed, trial.added
    last = names[::-1][:REMOVE]  # jump hash can only drop buckets from the end
    ring_label = f"ring, {DEFAULT_VNODES} vnodes"
    plans: list[tuple[str, Callable[[], tuple]]] = [
        (ring_label, lambda: three_placements(ConsistentHashRing(names), keys, removed, added)),
        ("modulo", lambda: three_placements(ModuloHashing(names), keys, removed, added)),
        (
            f"jump (the last {REMOVE} removed)",
            lambda: three_placements(JumpHashing(names), keys, last, added),
        ),
        (
            f"jump (the same {REMOVE}, renumbered)",
            lambda: rebuilt(JumpHashing, names, keys, removed, added),
        ),
        ("rendezvous", lambda: three_placements(RendezvousHashing(names), keys, removed, added)),
        ("Maglev, M = 65,537", lambda: rebuilt(MaglevHashing, names, keys, removed, added)),
        (
            f"bounded loads, c={DEFAULT_BALANCE_FACTOR}",
            lambda: three_placements(BoundedLoadHashing(names), keys, removed, added),
        ),
    ]
    results: dict[str, dict[str, float]] = {}
    rows = []
    for label, plan in plans:
        progress(f"measuring {label} ...")
        started = time.perf_counter()
        result = results[label] = movement(*plan())
        rows.append(
            [
                label,
                experiment.percent(result["removal"]),
                experiment.percent(result["addition"]),
                str(result["strays"]),
                f"{result['max_over_mean']:.2f}",
                f"{time.perf_counter() - started:.2f}",
            ]
        )
    clear_progress()
    header = [
        "strategy",
        f"moved: remove {REMOVE}",
        f"moved: add {ADD}",
        "moved needlessly",
        "busiest/mean",
        "seconds",
    ]
    print(experiment.format_table(header, rows))
    theory_out, theory_in = experiment.theoretical_shares(SHARDS, REMOVE, ADD)
    print(
        f"theory: {experiment.percent(theory_out)} on removal, "
        f"{experiment.percent(theory_in)} on addition. Needlessly = moved although its shard\n"
        f"stayed, or not onto a new shard. Busiest/mean is after both changes, at "
        f"{KEYS // SHARDS} keys a shard."
    )
    return results


def step_balance() -> dict[int, float]:
    heading(f"3. Balance: {BALANCE_NODES} nodes, {BALANCE_KEYS:,} keys")
    keys = experiment.make_keys(BALANCE_KEYS, random.Random(7))
    names = [f"node-{i:03d}" for i in range(BALANCE_NODES)]
    rows = []
    ring_max: dict[int, float] = {}
    for vnodes in BALANCE_VNODES:
        ring = ConsistentHashRing(names, vnodes=vnodes)
        ring_max[vnodes], ring_std = experiment.balance(
            experiment.load_per_node(placements(ring, keys), names)
        )
        bounded = BoundedLoadHashing(names, vnodes=vnodes)
        bounded.add_keys(keys)
        bounded_max, _ = experiment.balance(list(bounded.loads.values()))
        rows.append(
            [
                str(vnodes),
                f"{ring_max[vnodes]:.3f}",
                f"{ring_std:.3f}",
                f"{bounded_max:.3f}",
            ]
        )
    print(
        experiment.format_table(
            [
                "virtual nodes",
                "ring busiest/mean",
                "ring std/mean",
                f"bounded loads (c={DEFAULT_BALANCE_FACTOR}) busiest/mean",
            ],
            rows,
        )
    )
    for label, strategy in (
        ("jump hash", JumpHashing(names)),
        ("rendezvous", RendezvousHashing(names)),
        ("Maglev, M = 65,537", MaglevHashing(names)),
    ):
        loads = experiment.load_per_node(placements(strategy, keys), names)
        top, spread = experiment.balance(loads)
        print(f"{label} (no virtual nodes): busiest/mean {top:.3f}, std/mean {spread:.3f}")
    return ring_max


def step_maglev() -> dict[int, float]:
    heading(
        f"4. Maglev: {MAGLEV_NODES} nodes, {BALANCE_KEYS:,} keys, one node leaves; by table size M"
    )
    keys = experiment.make_keys(BALANCE_KEYS, random.Random(11))
    names = [f"node-{i:03d}" for i in range(MAGLEV_NODES)]
    leaving = names[42]
    rows = []
    needless_share: dict[int, float] = {}
    for size in MAGLEV_SIZES:
        progress(f"building a table of {size:,} slots ...")
        started = time.perf_counter()
        maglev = MaglevHashing(names, table_size=size)
        built = time.perf_counter() - started
        slots = maglev.slot_counts().values()
        before = maglev.get_nodes(keys)
        maglev.remove_node(leaving)
        after = maglev.get_nodes(keys)
        must = sum(node == leaving for node in before)
        needless = sum(a != b and a != leaving for a, b in zip(before, after, strict=True))
        needless_share[size] = needless / must
        counts = Counter(before)
        top, _ = experiment.balance([counts[name] for name in names])
        rows.append(
            [
                f"{size:,}",
                f"{min(slots)} - {max(slots)}",
                f"{top:.3f}",
                experiment.percent(must / len(keys)),
                experiment.percent(needless / len(keys)),
                f"{needless / must:.2f}x",
                f"{built:.2f}",
            ]
        )
    clear_progress()
    header = [
        "table size M",
        "slots a node",
        "busiest/mean",
        "had to move",
        "moved needlessly",
        "needlessly / had to",
        "s to build",
    ]
    print(experiment.format_table(header, rows))
    print(
        "Every node holds M/N slots give or take one. A node leaving frees its slots, and\n"
        "refilling the table also hands some slots from one staying node to another: few\n"
        "when M is ~100x the nodes, as the paper advises, more when the table is small."
    )
    return needless_share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The guided run: what moves when shards come and go, for the ring "
        "and its rivals, and how virtual nodes buy balance (10-20 s).",
    )
    parser.add_argument(
        "--save-images",
        action="store_true",
        help="write the plots into images/, replacing the README's pictures "
        "(default: the git-ignored out/)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    trial = step_experiment(experiment.IMAGES if args.save_images else experiment.OUT)
    results = step_strategies(trial)
    ring_max = step_balance()
    maglev = step_maglev()

    theory_out, _ = experiment.theoretical_shares(SHARDS, REMOVE, ADD)
    ring = results[f"ring, {DEFAULT_VNODES} vnodes"]
    modulo = results["modulo"]
    problems = []
    if ring["removal"] > RING_LIMIT * theory_out or ring["addition"] > RING_LIMIT * theory_out:
        problems.append("the ring moved more than twice the theoretical share")
    if modulo["removal"] < MODULO_FLOOR:
        problems.append(f"modulo hashing moved less than {MODULO_FLOOR:.0%} of keys")
    strays = ring["strays"] + results["rendezvous"]["strays"]
    if strays:
        problems.append(f"{strays} keys moved that consistent hashing says must stay")
    if maglev[MAGLEV_SIZES[-1]] > MAGLEV_LIMIT:
        problems.append(
            f"Maglev (M = {MAGLEV_SIZES[-1]:,}) moved {maglev[MAGLEV_SIZES[-1]]:.2f}x as many "
            f"keys needlessly as it had to (limit {MAGLEV_LIMIT}x)"
        )

    print(f"\n(demo took {time.perf_counter() - started:.1f} s)")
    figures = (
        f"removing {REMOVE} of {SHARDS} shards moved "
        f"{experiment.percent(ring['removal'])} of keys on the ring, adding {ADD} moved "
        f"{experiment.percent(ring['addition'])} (theory {experiment.percent(theory_out)}; "
        f"modulo hashing: {experiment.percent(modulo['removal'])}); "
        f"{BALANCE_VNODES[-1]} virtual nodes keep the busiest node at "
        f"{ring_max[BALANCE_VNODES[-1]]:.2f}x the mean (1 virtual node: {ring_max[1]:.2f}x); "
        f"Maglev moved {maglev[MAGLEV_SIZES[-1]]:.2f}x the necessary keys needlessly at "
        f"M = {MAGLEV_SIZES[-1]:,} ({maglev[MAGLEV_SIZES[0]]:.2f}x at M = {MAGLEV_SIZES[0]:,})"
    )
    if problems:
        print(f"Lesson not shown: {'; '.join(problems)}: {figures}")
        return 1
    print(f"Lesson: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
