"""Child processes that end when their parent dies, instead of running on for ever.

A parent killed with `kill -9` (or SIGBUS, or the OOM killer) gets no chance to
stop its children. Re-parented to init, they carry on: the slow server keeps its
port, a pool's workers wait for tasks that will never come, the convoy's control
process computes at 100% of a core, and the resource tracker, which waits for
every one of them to let go of its pipe, never unlinks the shared memory the
parent left behind. Every child this folder starts therefore watches its parent.
"""

from __future__ import annotations

import os
import threading
import time

CHECK_INTERVAL = 0.5  # seconds between looks at the parent: a thread wakes this often


def exit_with_parent(parent_pid: int) -> None:
    """Start a daemon thread that ends this process once `parent_pid` is no longer its parent.

    The parent passes its own pid (`os.getpid()`), so a parent that died before the
    child got this far is noticed too. An orphan is re-parented (to init, or to a
    container's subreaper), and `os.getppid()` changes.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(CHECK_INTERVAL)
        os._exit(1)  # nothing to flush: the parent that wanted the results is gone

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()
