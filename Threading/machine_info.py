"""The machine the figures come from: every demo and bench prints this first, so a
reader can compare their own figures (README.md, "What you will see")."""

from __future__ import annotations

import multiprocessing
import os
import platform
import sys


def usable_cores() -> int:
    """Cores this process may run on (a container or taskset may allow fewer than exist)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gil_enabled() -> bool:
    """False only on a free-threaded build (3.13t and later) running without the GIL."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)  # exists from Python 3.13
    return True if is_gil_enabled is None else bool(is_gil_enabled())


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> str:
    """The 1-minute load average ("n/a" where the OS has none): how busy the cores were."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def machine_summary() -> str:
    """One line naming everything a reader needs to compare figures with their own."""
    return (
        f"{usable_cores()} cores ({cpu_model()}), Python {platform.python_version()} "
        f"({'GIL enabled' if gil_enabled() else 'free-threaded, GIL disabled'}), "
        f"{platform.system()} {platform.release()}, "
        f"process start method {multiprocessing.get_start_method()}, "
        f"load average {load_average()}"
    )
