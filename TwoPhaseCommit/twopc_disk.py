"""The disk under every process's SQLite file: it counts fsyncs, and can lose what was never synced.

A kill -9 loses nothing SQLite has written: the pages sit in the operating
system's page cache, which outlives the process and reaches the disk later.
A power cut loses that cache, so it loses every write no fsync has forced to
the disk yet. To let a test cause a power cut with a kill, `Disk(volatile=True)`
keeps that cache inside the process: SQLite's writes wait in memory until
SQLite calls xSync, and only then go to the file. Killing the process now
loses what a power cut would if the operating system had written nothing
back yet; a real one may also keep some unsynced blocks, in any order (a test
plays that by writing chosen blocks of `unsynced` to the file before the
kill). See the README's "Durability: a kill is not a power cut".

This is an SQLite VFS (the layer SQLite does all its file I/O through), written
with apsw; it wraps the operating system's default VFS and changes nothing but
when writes reach the file.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

import apsw

BLOCK = 4096  # the unit the cache holds; SQLite's reads and writes are split into blocks
# Files whose creation SQLite's own VFS makes durable by fsyncing their folder at the first sync.
_CREATED_LOGS = (
    apsw.mapping_open_flags["SQLITE_OPEN_WAL"]
    | apsw.mapping_open_flags["SQLITE_OPEN_MAIN_JOURNAL"]
    | apsw.mapping_open_flags["SQLITE_OPEN_SUPER_JOURNAL"]
)


class CachedFile(apsw.VFSFile):
    """One open file. With a volatile disk, writes wait in `unsynced` until xSync."""

    def __init__(self, disk: Disk, name: apsw.URIFilename | str | None, flags: list[int]) -> None:
        super().__init__("", name, flags)  # "": the operating system's default VFS underneath
        self.disk = disk
        self.path = name.filename() if isinstance(name, apsw.URIFilename) else (name or "")
        # Temporary files (no name) and the shared-memory index are not the
        # database: a power cut may lose them anyway, and SQLite rebuilds them.
        self.volatile = disk.volatile and bool(self.path)
        self.unsynced: dict[int, bytearray] = {}  # block number -> content not yet on disk
        self.size: int | None = None  # the file's length as SQLite sees it, while unsynced
        # Our own descriptor of the file, for xSync (below), opened at the first sync.
        self.sync_fd: int | None = None
        created = flags[0] & apsw.mapping_open_flags["SQLITE_OPEN_CREATE"]
        self.sync_folder = bool(self.path) and bool(created) and bool(flags[0] & _CREATED_LOGS)

    # -- what SQLite sees: the file with every write applied ---------------------------

    def xWrite(self, data, offset: int) -> None:
        if not self.volatile:
            return super().xWrite(data, offset)
        data = bytes(data)
        end = offset + len(data)
        position = offset
        while position < end:
            number, start = divmod(position, BLOCK)
            length = min(BLOCK - start, end - position)
            block = self._block(number)
            block[start : start + length] = data[position - offset : position - offset + length]
            position += length
        self.size = max(self.xFileSize(), end)

    def xRead(self, amount: int, offset: int) -> bytes:
        if not self.volatile or (not self.unsynced and self.size is None):
            return super().xRead(amount, offset)
        end = min(offset + amount, self.xFileSize())
        pieces = []
        position = offset
        while position < end:
            number, start = divmod(position, BLOCK)
            length = min(BLOCK - start, end - position)
            pieces.append(bytes(self._block(number, keep=False)[start : start + length]))
            position += length
        return b"".join(pieces)  # shorter than asked past the end: SQLite fills with zeros

    def xFileSize(self) -> int:
        if self.size is not None:
            return self.size
        return super().xFileSize()

    def xTruncate(self, newsize: int) -> None:
        if not self.volatile:
            return super().xTruncate(newsize)
        self.size = newsize
        last = newsize // BLOCK
        for number in [n for n in self.unsynced if n > last]:
            del self.unsynced[number]
        if last in self.unsynced:
            self.unsynced[last][newsize % BLOCK :] = bytes(BLOCK - newsize % BLOCK)

    # -- the disk: only a sync makes writes survive a power cut -------------------------

    def xSync(self, flags: int) -> None:
        """fdatasync, as SQLite's own VFS does on Linux, but without holding the GIL.

        apsw calls the VFS underneath with the GIL held, so `super().xSync`
        would stop every thread of the process for as long as the disk takes:
        no vote read, no order parsed while the coordinator's group commit is
        being forced, which is when group commit needs the others to go on.
        os.fdatasync lets them run. Any descriptor of a file syncs the whole
        file, so a second one of our own does the same work as SQLite's.
        Like SQLite's VFS, the first sync of a log it created also syncs the
        folder, so the new file's name survives a power cut too.
        """
        self.disk.count_sync(self.path)
        self._write_out()
        if not self.path:  # a temporary file: nobody else can open it
            super().xSync(flags)
            return
        if self.sync_fd is None:
            self.sync_fd = os.open(self.path, os.O_RDONLY)
        os.fdatasync(self.sync_fd)
        if self.sync_folder:
            folder = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
            try:
                os.fdatasync(folder)
            finally:
                os.close(folder)
            self.sync_folder = False

    def xClose(self) -> None:
        # A clean close is a clean shutdown: the operating system writes its
        # cache back in its own time, so nothing is lost. Only a kill loses it.
        self._write_out()
        if self.sync_fd is not None:
            os.close(self.sync_fd)
            self.sync_fd = None
        super().xClose()

    def _write_out(self) -> None:
        if self.size is None:
            return
        for number in sorted(self.unsynced):
            length = min(BLOCK, self.size - number * BLOCK)
            if length > 0:
                super().xWrite(bytes(self.unsynced[number][:length]), number * BLOCK)
        if super().xFileSize() > self.size:
            super().xTruncate(self.size)
        self.unsynced.clear()
        self.size = None

    def _block(self, number: int, keep: bool = True) -> bytearray:
        """Block `number` as SQLite last wrote it: from the cache, else from the file."""
        if number in self.unsynced:
            return self.unsynced[number]
        block = bytearray(BLOCK)
        on_disk = super().xFileSize()
        if number * BLOCK < on_disk:
            stored = super().xRead(min(BLOCK, on_disk - number * BLOCK), number * BLOCK)
            block[: len(stored)] = stored
        if self.size is not None and number * BLOCK + BLOCK > self.size:
            # Past SQLite's end of file (it truncated): zeros, not stale bytes.
            cut = max(0, self.size - number * BLOCK)
            block[cut:] = bytes(BLOCK - cut)
        if keep:
            self.unsynced[number] = block
        return block


class Disk(apsw.VFS):
    """The VFS every store in this process opens its database through (one per process).

    `syncs` counts xSync calls per file: the fsyncs SQLite really asked for.
    """

    def __init__(self, volatile: bool, name: str = "twopc-disk") -> None:
        self.volatile = volatile
        self.vfs_name = name
        self.syncs: Counter[str] = Counter()
        self._lock = threading.Lock()
        super().__init__(name, "")

    def xOpen(self, name: apsw.URIFilename | str | None, flags: list[int]) -> CachedFile:
        return CachedFile(self, name, flags)

    def count_sync(self, path: str) -> None:
        with self._lock:
            self.syncs[path] += 1

    def syncs_of(self, database: str) -> int:
        """fsyncs of one database: its main file, write-ahead log and journal together."""
        with self._lock:
            return sum(n for path, n in self.syncs.items() if path.startswith(database))


_disk: Disk | None = None


def disk(volatile: bool = False) -> Disk:
    """This process's Disk, registered with SQLite on first use."""
    global _disk
    if _disk is None:
        _disk = Disk(volatile)
    elif _disk.volatile != volatile:
        raise ValueError("one process has one disk: volatile or not, not both")
    return _disk
