"""The tour: run every concept folder's demo.py in turn, then summarise.

Each demo runs in its own subprocess (folders share no code, and a crash in one
must not stop the rest). Its output is streamed under a heading as it happens;
at the end a table shows each concept, whether its lesson showed, how long it
took, and the demo's own `Lesson:` line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent

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

LESSON_PREFIX = "Lesson:"


@dataclass
class Result:
    concept: str
    status: str  # "ok", "failed" or "not built yet"
    seconds: float
    lesson: str


def run_demo(concept: str) -> Result:
    """Run one folder's demo.py, streaming its output; return what it showed."""
    demo = ROOT / concept / "demo.py"
    if not demo.is_file():
        print(f"{concept}/demo.py does not exist yet: not built yet.\n", flush=True)
        return Result(concept, "not built yet", 0.0, "")

    lesson = ""
    started = time.monotonic()
    with subprocess.Popen(
        [sys.executable, str(demo)],
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
            if line.startswith(LESSON_PREFIX):
                lesson = line[len(LESSON_PREFIX) :].strip()
        returncode = proc.wait()
    seconds = time.monotonic() - started
    status = "ok" if returncode == 0 else f"failed (exit {returncode})"
    print(flush=True)
    return Result(concept, status, seconds, lesson)


def print_summary(results: list[Result]) -> None:
    name_w = max(len("Concept"), *(len(r.concept) for r in results))
    status_w = max(len("Result"), *(len(r.status) for r in results))
    print(f"{'Concept':<{name_w}}  {'Result':<{status_w}}  {'Seconds':>7}  Lesson")
    print(f"{'-' * name_w}  {'-' * status_w}  {'-' * 7}  {'-' * 6}")
    for r in results:
        seconds = f"{r.seconds:7.1f}" if r.status != "not built yet" else f"{'-':>7}"
        print(f"{r.concept:<{name_w}}  {r.status:<{status_w}}  {seconds}  {r.lesson}")


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

    results = []
    for i, concept in enumerate(chosen, 1):
        print(f"=== [{i}/{len(chosen)}] {concept} " + "=" * max(0, 60 - len(concept)), flush=True)
        results.append(run_demo(concept))

    print_summary(results)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
