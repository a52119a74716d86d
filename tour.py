"""The tour: run every concept folder's demo.py in turn, then summarise.

Each demo runs in its own subprocess (folders share no code, and a crash in one
must not stop the rest). Its output is streamed under a heading as it happens;
at the end a table shows each concept, whether its lesson showed, how long it
took, and the demo's own `Lesson:` line (or its `Lesson not shown:` line).

`--save-images` passes the same flag to every demo, which then rewrites the
pictures its README shows (`make images`), and to every bench that draws one
of them too (its --help lists the flag). `--bench` runs every folder's
bench.py instead (`make bench`): the table then shows how many of each bench's
targets were met and its headline figure, and is also written as JSON to
out/bench-summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BENCH_SUMMARY = ROOT / "out" / "bench-summary.json"

# The README's order: each concept builds on the ones before it.
CONCEPTS = [
    "Threading",
    "BlockingQueue",
    "WebSockets",
    "RealTimeChat",
    "TwoPhaseCommit",
    "UniqueIdGeneration",
    "SimpleCDN",
    "ConsistentHashing",
]

# The lines every demo and bench ends with (../shared/DESIGN.md, "The contract").
LESSON = "Lesson:"  # the demo showed its lesson
NOT_SHOWN = "Lesson not shown:"  # ... or did not, and says what it saw instead
HEADLINE = "headline:"  # a bench's headline figure
TARGETS = re.compile(r"^targets: (\d+) of (\d+) met\s*$")  # a bench's last line


@dataclass
class Result:
    concept: str
    status: str  # "ok", "failed (exit N)" or "not built yet"
    seconds: float
    summary: str  # the Lesson / Lesson not shown line, or a bench's headline
    targets_met: int | None = None  # benches only
    targets: int | None = None


def run_script(concept: str, script: str, args: list[str]) -> Result:
    """Run one folder's script, streaming its output; return what it reported."""
    path = ROOT / concept / script
    if not path.is_file():
        print(f"{concept}/{script} does not exist yet: not built yet.\n", flush=True)
        return Result(concept, "not built yet", 0.0, "")

    result = Result(concept, "", 0.0, "")
    started = time.monotonic()
    with subprocess.Popen(
        [sys.executable, str(path), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print("  " + line, end="", flush=True)
            stripped = line.strip()
            if stripped.startswith((LESSON, NOT_SHOWN)):
                result.summary = stripped
            elif stripped.startswith(HEADLINE):
                result.summary = stripped[len(HEADLINE) :].strip()
            elif match := TARGETS.match(stripped):
                result.targets_met, result.targets = int(match[1]), int(match[2])
        returncode = proc.wait()
    result.seconds = time.monotonic() - started
    result.status = "ok" if returncode == 0 else f"failed (exit {returncode})"
    if returncode == 0 and script == "bench.py" and result.targets is None:
        result.status = "failed (no 'targets: N of M met' line)"
    print(flush=True)
    return result


def draws_pictures(concept: str, script: str) -> bool:
    """Whether a folder's script offers --save-images (it draws a README picture)."""
    path = ROOT / concept / script
    if not path.is_file():
        return False
    usage = subprocess.run(
        [sys.executable, str(path), "--help"], cwd=ROOT, capture_output=True, text=True
    )
    return "--save-images" in usage.stdout


def print_summary(results: list[Result], bench: bool) -> None:
    headers = ["Concept", "Result", "Seconds"] + (["Targets"] if bench else [])
    rows = []
    for r in results:
        seconds = f"{r.seconds:.1f}" if r.status != "not built yet" else "-"
        row = [r.concept, r.status, seconds]
        if bench:
            row.append(f"{r.targets_met} of {r.targets}" if r.targets is not None else "-")
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    last = "Headline" if bench else "Lesson"

    def line(cells: list[str]) -> str:  # names to the left, figures to the right
        padded = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded)

    print(line(headers) + "  " + last)
    print(line(["-" * w for w in widths]) + "  " + "-" * len(last))
    for r, row in zip(results, rows, strict=True):
        print(line(row) + "  " + r.summary)


def write_bench_summary(results: list[Result]) -> Path:
    BENCH_SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "benches": [asdict(r) for r in results],
    }
    BENCH_SUMMARY.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return BENCH_SUMMARY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run each concept's demo.py in turn and summarise the lessons.",
    )
    parser.add_argument(
        "concepts",
        nargs="*",
        metavar="CONCEPT",
        help="run only these folders (default: all, in the README's order)",
    )
    parser.add_argument("--list", action="store_true", help="list the concept folders and exit")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--save-images",
        action="store_true",
        help="let each demo rewrite the pictures its README shows (images/); `make images`",
    )
    mode.add_argument(
        "--bench",
        action="store_true",
        help="run each bench.py instead; the summary also goes to out/bench-summary.json",
    )
    args = parser.parse_args(argv)

    if args.list:
        for concept in CONCEPTS:
            built = "" if (ROOT / concept / "demo.py").is_file() else "  (not built yet)"
            print(f"{concept}{built}")
        return 0

    unknown = [c for c in args.concepts if c not in CONCEPTS]
    if unknown:
        parser.error(f"unknown concept {', '.join(unknown)}; choose from {', '.join(CONCEPTS)}")
    chosen = args.concepts or CONCEPTS
    script = "bench.py" if args.bench else "demo.py"
    script_args = ["--save-images"] if args.save_images else []

    runs = [(concept, script) for concept in chosen]
    if args.save_images:  # a bench may draw a README picture too
        runs += [(concept, "bench.py") for concept in chosen if draws_pictures(concept, "bench.py")]
    results = []
    for i, (concept, ran) in enumerate(runs, 1):
        heading = f"=== [{i}/{len(runs)}] {concept}/{ran} "
        print(heading + "=" * max(0, 72 - len(heading)), flush=True)
        result = run_script(concept, ran, script_args)
        if ran != script:
            result.concept += f"/{ran}"
        results.append(result)

    print_summary(results, bench=args.bench)
    if args.bench:
        print(f"\nsummary written to {write_bench_summary(results).relative_to(ROOT)}")
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
