"""The brief's experiment: put keys on a ring of shards, remove some shards, add new ones.

It counts, key by key, how many keys change shard at each step, compares that
with the theoretical share and with modulo hashing, and draws the three
distributions. README section "The experiment" shows and explains the output.

    python ConsistentHashing/simulate_resharding.py --trials 10

The plots go to the folder's git-ignored out/; `--save-images` (the brief's
numbers only) rewrites the copies in images/ that the README shows.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import statistics
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mmh3
from ConsistentHashRing import DEFAULT_VNODES, ConsistentHashRing, HashFunction
from strategies import ModuloHashing

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"  # the README's pictures: rewritten only with --save-images
OUT = HERE / "out"  # git-ignored: where a run's plots go by default

# The brief's figures: 1,000 shards and 10,000 keys; remove 50, then add 50.
DEFAULT_SHARDS = 1000
DEFAULT_KEYS = 10_000
DEFAULT_REMOVE = 50
DEFAULT_ADD = 50
DEFAULT_TRIALS = 10
DEFAULT_SEED = 1
# Ceilings for the command line, so a typo cannot ask for hours or all the memory.
LIMITS = {"shards": 100_000, "keys": 10_000_000, "trials": 1000, "vnodes": 10_000}
MAX_POINTS = 10_000_000  # virtual nodes on the ring at once

# Hash functions to try on the ring. Only murmur3 is a good choice: the
# checksums spread short, similar strings badly, and Python's hash() is salted
# differently in every process, so two clients would disagree on every key.
HASH_FUNCTIONS: dict[str, HashFunction] = {
    "murmur3": mmh3.hash,
    "crc32": lambda key: zlib.crc32(key.encode() if isinstance(key, str) else key),
    "adler32": lambda key: zlib.adler32(key.encode() if isinstance(key, str) else key),
    "python": hash,
}


def shard_name(number: int) -> str:
    return f"shard-{number:04d}"


def make_keys(count: int, rng: random.Random) -> list[str]:
    """`count` distinct random keys that look like ids (key-3f9a...)."""
    keys: dict[str, None] = {}
    while len(keys) < count:
        keys[f"key-{rng.getrandbits(64):016x}"] = None
    return list(keys)


def place(get_node: Callable[[str], str], keys: Sequence[str]) -> dict[str, str]:
    return {key: get_node(key) for key in keys}


def moved_keys(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The keys whose node changed between two placements of the same keys."""
    return [key for key, node in before.items() if after[key] != node]


def load_per_node(placement: dict[str, str], nodes: Sequence[str]) -> list[int]:
    """Keys held by each of `nodes`, in that order (a node with none counts 0)."""
    counts = Counter(placement.values())
    return [counts[node] for node in nodes]


def balance(loads: Sequence[int]) -> tuple[float, float]:
    """(max/mean, std/mean) of the keys per node: 1.0 and 0.0 are perfect balance."""
    mean = statistics.fmean(loads)
    return max(loads) / mean, statistics.pstdev(loads) / mean


def theoretical_shares(shards: int, remove: int, add: int) -> tuple[float, float]:
    """The fraction of keys that must move: the removed shards' share, then the new ones'."""
    return remove / shards, add / (shards - remove + add)


def placement_fingerprint(placement: dict[str, str]) -> str:
    """A short digest of key -> shard: equal fingerprints mean identical placements."""
    text = "\n".join(f"{key} {node}" for key, node in sorted(placement.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Trial:
    """What one run of the experiment measured (fractions are 0..1)."""

    shards: list[str]
    removed: list[str]
    added: list[str]
    initial: dict[str, str]  # key -> shard
    after_removal: dict[str, str]
    after_addition: dict[str, str]
    moved_on_removal: float
    moved_on_addition: float
    # Keys that moved although neither their old shard left nor their new shard
    # is new: consistent hashing promises zero.
    strays_on_removal: int
    strays_on_addition: int
    modulo_moved_on_removal: float
    modulo_moved_on_addition: float


def run_trial(
    shards: int = DEFAULT_SHARDS,
    keys: int = DEFAULT_KEYS,
    remove: int = DEFAULT_REMOVE,
    add: int = DEFAULT_ADD,
    seed: int = DEFAULT_SEED,
    vnodes: int = DEFAULT_VNODES,
    hash_function: HashFunction = mmh3.hash,
) -> Trial:
    """Place keys, remove `remove` random shards, then add `add` new ones; count moves.

    The seed picks the keys and which shards leave, so a trial is repeatable.
    Modulo hashing gets the same keys and the same changes, for comparison.
    """
    rng = random.Random(seed)
    names = [shard_name(i) for i in range(shards)]
    key_list = make_keys(keys, rng)
    removed = sorted(rng.sample(names, remove))
    added = [shard_name(shards + i) for i in range(add)]

    ring = ConsistentHashRing(names, vnodes=vnodes, hash_function=hash_function)
    initial = place(ring.get_node, key_list)
    for shard in removed:
        ring.remove_node(shard)
    after_removal = place(ring.get_node, key_list)
    for shard in added:
        ring.add_node(shard)
    after_addition = place(ring.get_node, key_list)

    gone, new = set(removed), set(added)
    moved_out = moved_keys(initial, after_removal)
    moved_in = moved_keys(after_removal, after_addition)

    modulo = ModuloHashing(names)
    modulo_initial = place(modulo.get_node, key_list)
    for shard in removed:
        modulo.remove_node(shard)
    modulo_after_removal = place(modulo.get_node, key_list)
    for shard in added:
        modulo.add_node(shard)
    modulo_after_addition = place(modulo.get_node, key_list)

    return Trial(
        shards=names,
        removed=removed,
        added=added,
        initial=initial,
        after_removal=after_removal,
        after_addition=after_addition,
        moved_on_removal=len(moved_out) / keys,
        moved_on_addition=len(moved_in) / keys,
        strays_on_removal=sum(initial[key] not in gone for key in moved_out),
        strays_on_addition=sum(after_addition[key] not in new for key in moved_in),
        modulo_moved_on_removal=len(moved_keys(modulo_initial, modulo_after_removal)) / keys,
        modulo_moved_on_addition=len(moved_keys(modulo_after_removal, modulo_after_addition))
        / keys,
    )


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned: the first to the left, the others to the right."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = ["-" * width for width in widths]
    return "\n".join([line(cells[0]), line(rule), *(line(row) for row in cells[1:])])


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it."""
    path = path.resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


# -- plots ------------------------------------------------------------------------


def plot_paths(
    out_dir: Path, shards: int, keys: int, remove: int, add: int
) -> tuple[Path, Path, Path]:
    """The three figures; with the default arguments these are the brief's file names."""
    return (
        out_dir / f"initial_distribution_of_{keys}_keys_across_{shards}_shards.png",
        out_dir / f"distribution_after_removing_{remove}_shards.png",
        out_dir / f"distribution_after_adding_{add}_new_shards.png",
    )


def _poisson_expectation(shards: int, mean: float, loads: range) -> list[float]:
    """How many shards would hold k keys if each key picked a shard uniformly at random."""
    return [shards * math.exp(-mean) * mean**k / math.factorial(k) for k in loads]


def _draw(
    path: Path,
    title: str,
    shard_order: list[str],
    loads: dict[str, int],
    earlier: dict[str, int] | None,
    marked: set[str],
    marked_label: str,
    marked_colour: str,
) -> None:
    """Keys per shard (bars, with the change since `earlier` if given) and their histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, histogram) = plt.subplots(
        2, 1, figsize=(11, 7), gridspec_kw={"height_ratios": [3, 2]}
    )
    now = [loads.get(shard, 0) for shard in shard_order]
    before = now if earlier is None else [earlier.get(shard, 0) for shard in shard_order]
    kept = [min(a, b) for a, b in zip(now, before, strict=True)]
    gained = [max(0, a - b) for a, b in zip(now, before, strict=True)]
    lost = [max(0, b - a) for a, b in zip(now, before, strict=True)]
    label = "keys on the shard" if earlier is None else "keys it kept"
    # One filled step outline per series rather than a bar per shard: the same
    # picture, drawn in a fraction of the time for 1,000 shards.
    edges = [i - 0.5 for i in range(len(shard_order) + 1)]
    bars.stairs(kept, edges, fill=True, color="#8a9bb0", label=label)
    for extra, colour, what in (
        (gained, "#e08a2c", "keys it gained"),
        (lost, "#e8a5a5", "keys it gave away"),
    ):
        if any(extra):
            tops = [k + e for k, e in zip(kept, extra, strict=True)]
            bars.stairs(tops, edges, baseline=kept, fill=True, color=colour, label=what)
    marks = [i for i, shard in enumerate(shard_order) if shard in marked]
    if marks:
        bars.scatter(marks, [-0.6] * len(marks), marker="^", s=14, color=marked_colour)
        bars.scatter([], [], marker="^", color=marked_colour, label=marked_label)
    bars.set_xlim(-1, len(shard_order))
    bars.set_ylim(bottom=-1.5)
    bars.set_xlabel("shard (in name order)")
    bars.set_ylabel("keys on the shard")
    bars.legend(loc="upper right", fontsize=8, ncols=2)

    present = [loads[shard] for shard in shard_order if shard in loads]
    mean = statistics.fmean(present)
    counts = Counter(present)
    span = range(0, max(present) + 2)
    histogram.bar(span, [counts[k] for k in span], color="#4c72b0", label="shards (measured)")
    histogram.plot(
        span,
        _poisson_expectation(len(present), mean, span),
        "k.--",
        linewidth=1,
        label=f"if each key picked a shard at random (Poisson, mean {mean:.1f})",
    )
    histogram.set_xlabel("keys on a shard")
    histogram.set_ylabel("number of shards")
    histogram.legend(loc="upper right", fontsize=8)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_plots(trial: Trial, out_dir: Path, vnodes: int) -> tuple[Path, Path, Path]:
    """Draw the three distributions of one trial; returns the files written."""
    shards, keys = len(trial.shards), len(trial.initial)
    paths = plot_paths(out_dir, shards, keys, len(trial.removed), len(trial.added))
    initial = Counter(trial.initial.values())
    after_removal = Counter(trial.after_removal.values())
    after_addition = Counter(trial.after_addition.values())
    everyone = trial.shards + trial.added
    theory_out, theory_in = theoretical_shares(shards, len(trial.removed), len(trial.added))
    _draw(
        paths[0],
        f"Initial distribution of {keys:,} keys across {shards:,} shards "
        f"({vnodes} virtual nodes each)",
        trial.shards,
        {shard: initial[shard] for shard in trial.shards},
        None,
        set(),
        "",
        "red",
    )
    _draw(
        paths[1],
        f"After removing {len(trial.removed)} shards: {percent(trial.moved_on_removal)} "
        f"of keys moved (theory {percent(theory_out)}); each went to a ring neighbour",
        trial.shards,
        {shard: after_removal[shard] for shard in trial.shards if shard not in trial.removed},
        {shard: initial[shard] for shard in trial.shards},
        set(trial.removed),
        "removed shard",
        "#c0392b",
    )
    _draw(
        paths[2],
        f"After adding {len(trial.added)} new shards: {percent(trial.moved_on_addition)} "
        f"of keys moved (theory {percent(theory_in)}); all of them onto the new shards",
        everyone,
        {shard: after_addition[shard] for shard in everyone if shard not in trial.removed},
        {shard: after_removal[shard] for shard in everyone},
        set(trial.added),
        "new shard",
        "#2e8b57",
    )
    return paths


# -- command line ---------------------------------------------------------------------


def summary_rows(trials: list[Trial], remove: int, add: int, shards: int) -> list[list[str]]:
    theory_out, theory_in = theoretical_shares(shards, remove, add)

    def spread(values: list[float]) -> tuple[str, str]:
        return percent(statistics.fmean(values)), f"{percent(min(values))} - {percent(max(values))}"

    rows = []
    for label, theory, ring, strays, modulo in (
        (
            f"remove {plural(remove, 'shard')}",
            theory_out,
            [t.moved_on_removal for t in trials],
            sum(t.strays_on_removal for t in trials),
            [t.modulo_moved_on_removal for t in trials],
        ),
        (
            f"add {plural(add, 'new shard')}",
            theory_in,
            [t.moved_on_addition for t in trials],
            sum(t.strays_on_addition for t in trials),
            [t.modulo_moved_on_addition for t in trials],
        ),
    ):
        mean, span = spread(ring)
        rows.append([label, mean, span, percent(theory), str(strays), spread(modulo)[0]])
    return rows


SUMMARY_HEADER = [
    "change",
    "ring moved (mean)",
    "ring moved (range)",
    "theory",
    "other keys moved",
    "modulo moved (mean)",
]


def show_progress(done: int, total: int) -> None:
    """On stderr: one updating line on a terminal, else a line per tenth of the trials."""
    if total < 2:
        return
    if sys.stderr.isatty():
        end = "\n" if done == total else ""
        print(f"\r  trials done: {done}/{total}", end=end, file=sys.stderr, flush=True)
    elif done and done % max(1, total // 10) == 0:
        print(f"  trials done: {done}/{total}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Count the keys that move when shards leave and join a consistent-hash ring.",
    )
    parser.add_argument("--shards", type=int, default=DEFAULT_SHARDS, help="shards at the start")
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS, help="keys to place")
    parser.add_argument("--remove", type=int, default=DEFAULT_REMOVE, help="shards to remove")
    parser.add_argument("--add", type=int, default=DEFAULT_ADD, help="new shards to add after")
    parser.add_argument(
        "--trials",
        type=int,
        default=DEFAULT_TRIALS,
        help="repeat with seeds S, S+1, ... and report mean and range",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the first trial")
    parser.add_argument(
        "--vnodes", type=int, default=DEFAULT_VNODES, help="virtual nodes per shard"
    )
    parser.add_argument(
        "--hash",
        choices=sorted(HASH_FUNCTIONS),
        default="murmur3",
        help="hash function for keys and virtual nodes (only murmur3 is a good one)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=OUT,
        help="where the three plots go (default: the folder's git-ignored out/)",
    )
    parser.add_argument(
        "--save-images",
        action="store_true",
        help="write the plots into images/, replacing the README's pictures "
        "(only with the brief's numbers)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip drawing the plots")
    args = parser.parse_args(argv)
    if args.save_images:
        brief = (DEFAULT_SHARDS, DEFAULT_KEYS, DEFAULT_REMOVE, DEFAULT_ADD, DEFAULT_SEED)
        if (args.shards, args.keys, args.remove, args.add, args.seed) != brief:
            parser.error(
                "--save-images rewrites the README's pictures, which show the brief's numbers: "
                "drop --shards/--keys/--remove/--add/--seed, or use --out-dir"
            )
        if args.out_dir != OUT or args.no_plots or args.vnodes != DEFAULT_VNODES:
            parser.error("--save-images cannot be combined with --out-dir, --no-plots or --vnodes")
        if args.hash != "murmur3":
            parser.error("--save-images draws the README's pictures with murmur3 only")
        args.out_dir = IMAGES
    for name, most in LIMITS.items():
        if not 1 <= getattr(args, name) <= most:
            parser.error(f"--{name} must be between 1 and {most:,}")
    if not 0 <= args.remove < args.shards:
        parser.error(f"--remove must be between 0 and {args.shards - 1} (at least one shard stays)")
    if not 0 <= args.add <= LIMITS["shards"]:
        parser.error(f"--add must be between 0 and {LIMITS['shards']:,}")
    if (args.shards + args.add) * args.vnodes > MAX_POINTS:
        parser.error(
            f"(--shards + --add) x --vnodes is {(args.shards + args.add) * args.vnodes:,} "
            f"virtual nodes; the limit is {MAX_POINTS:,} (about 1 GiB)"
        )
    if not args.no_plots:  # find out now, not after the trials have run
        if args.out_dir.exists() and not args.out_dir.is_dir():
            parser.error(f"--out-dir {args.out_dir} is a file, not a directory")
        try:
            args.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            parser.error(f"--out-dir {args.out_dir}: cannot create it ({error.strerror})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hash_function = HASH_FUNCTIONS[args.hash]
    print(
        f"{plural(args.shards, 'shard')} with {plural(args.vnodes, 'virtual node')} each, "
        f"{plural(args.keys, 'key')}, hash {args.hash}; remove {args.remove} random, "
        f"then add {args.add} new; {plural(args.trials, 'trial')} from seed {args.seed}",
        flush=True,
    )
    trials = []
    for number in range(args.trials):
        show_progress(number, args.trials)
        trials.append(
            run_trial(
                args.shards,
                args.keys,
                args.remove,
                args.add,
                args.seed + number,
                args.vnodes,
                hash_function,
            )
        )
    show_progress(args.trials, args.trials)
    print()
    print(format_table(SUMMARY_HEADER, summary_rows(trials, args.remove, args.add, args.shards)))
    first = trials[0]
    load_before = load_per_node(first.initial, first.shards)
    max_over_mean, std_over_mean = balance(load_before)
    print()
    print(
        f"Trial 1 (seed {args.seed}): busiest shard holds {max(load_before)} keys, "
        f"{max_over_mean:.2f}x the mean of {statistics.fmean(load_before):.1f} "
        f"(std/mean {std_over_mean:.2f}); "
        f"placement fingerprint {placement_fingerprint(first.initial)}"
    )
    if not args.no_plots:
        try:
            paths = write_plots(first, args.out_dir, args.vnodes)
        except OSError as error:
            print(f"error: cannot write the plots: {error}", file=sys.stderr)
            return 1
        for path in paths:
            print(f"wrote {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
