"""Bodies in flight: one origin response streamed to every client waiting for it, in bounded memory.

A `Fill` is one origin response on its way in. Its body arrives in chunks;
every client that wants it (the one that asked, and any that coalesced onto
it) reads those chunks through its own `Cursor`, at its own pace. A chunk is
kept until the slowest reader has sent it on, or, when the response is
being stored, until the whole body is in and becomes a cache entry.

Two limits keep memory bounded however many clients and however large the
objects:
- WINDOW: a fill that holds this many bytes its slowest reader has not sent
  yet stops reading from the origin (TCP then slows the origin down);
- the in-flight budget (`--max-inflight-bytes`): all fills together hold at
  most this much, give or take the socket read each takes in before it
  pauses; past it, every fill that is not being stored pauses, and one that
  is being stored gives up storing (it still streams to its readers).
A reader that makes no progress at all is dropped by the connection's
progress deadline (`--send-timeout`), which frees what it held.

README section: "Streaming: one origin fetch, many readers, bounded memory".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from cdn_http import Headers, get_first

WINDOW = 2 * 1024 * 1024  # bytes one fill may hold for its slowest reader before pausing


class InflightBudget:
    """The bytes held by all fills together, and the fills waiting for room."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self.waiting: set[Fill] = set()  # paused fills to wake when bytes are given back

    @property
    def exhausted(self) -> bool:
        return self.held >= self.limit

    def take(self, amount: int) -> None:
        self.held += amount
        self.peak = max(self.peak, self.held)

    def give(self, amount: int) -> None:
        self.held -= amount
        if not self.exhausted:
            for fill in list(self.waiting):
                fill.check_pause()


class Source(Protocol):
    """What a fill reads from (an origin connection): it can be paused and abandoned."""

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def abort(self) -> None: ...


class Fill:
    """One origin response on its way in, shared by every request that waits for it.

    Life cycle: `set_head` (status and headers arrived), then `feed` for each
    chunk, then `finish`, or `fail` at any point. Waiters `await wait_head()`,
    then read the body with a `Cursor`.
    """

    def __init__(self, budget: InflightBudget, max_stored: int) -> None:
        self.budget = budget
        self.max_stored = max_stored  # past this many bytes the body is not stored
        self.source: Source | None = None
        self._head = asyncio.get_running_loop().create_future()
        self._more: asyncio.Future | None = None  # resolved when a chunk arrives or it ends
        # The response, once its head arrived.
        self.status = 0
        self.reason = ""
        self.headers: Headers = []
        self.length: int | None = None  # Content-Length, when the origin said it
        # The body so far: chunks[0] is chunk number `dropped` of the whole body.
        self.chunks: list[bytes] = []
        self.dropped = 0
        self.received = 0
        self.held = 0  # bytes in self.chunks, counted against the budget
        self.readers: set[Cursor] = set()
        self.storing = False  # keep every chunk: the body becomes a cache entry at the end
        self.done = False
        self.error: Exception | None = None
        self.paused = False
        # What the edge attaches: called when the whole body is in and still
        # kept (to store it), and when no new reader can join any more (the
        # first chunks are gone, or the fill ended).
        self.on_complete: Callable[[Fill], None] = lambda fill: None
        self.on_unjoinable: Callable[[Fill], None] = lambda fill: None
        self.revalidated: object = None  # the refreshed cache entry, when the origin said 304
        self.shareable = False  # may coalesced waiters use this answer?
        self.variant: object = None  # the Vary variant of the request that asked

    # --- the origin side -------------------------------------------------------

    def set_head(self, status: int, reason: str, headers: Headers, storing: bool) -> None:
        self.status, self.reason, self.headers, self.storing = status, reason, headers, storing
        length = get_first(headers, "content-length")
        self.length = int(length) if length and length.strip().isdigit() else None
        if self.length is not None and self.length > self.max_stored:
            self.storing = False
        if not self._head.done():
            self._head.set_result(None)

    def feed(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)
        self.held += len(data)
        self.budget.take(len(data))
        if self.storing and (self.received > self.max_stored or self.budget.exhausted):
            self.stop_storing()  # too big, or memory is short: stream it through instead
        self.release()
        self._wake()
        self.check_pause()

    def finish(self) -> None:
        self.done = True
        self.budget.waiting.discard(self)
        if self.storing:
            self.on_complete(self)
            self.storing = False  # stored: from now on chunks go as readers pass them
        self.on_unjoinable(self)
        self._wake()
        self.release()

    def fail(self, error: Exception) -> None:
        """The origin failed; readers get `error` (before the head: instead of an answer)."""
        if self.done:
            return
        self.error, self.done, self.storing = error, True, False
        self.budget.waiting.discard(self)
        self.on_unjoinable(self)
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: a fill nobody waits on is no error
        self._wake()
        self.release()

    def stop_storing(self) -> None:
        if self.storing:
            self.storing = False
            self.release()

    def body(self) -> bytes:
        """The whole body, for storing; only complete while `storing` kept every chunk."""
        return b"".join(self.chunks)

    def check_pause(self) -> None:
        """Pause the origin while this fill, or all fills together, hold too much."""
        too_much = not self.storing and (self.held > WINDOW or self.budget.exhausted)
        if too_much and not self.paused and not self.done and self.source is not None:
            self.paused = True
            self.budget.waiting.add(self)
            self.source.pause()
        elif self.paused and not (self.held > WINDOW // 2 or self.budget.exhausted):
            self.paused = False
            self.budget.waiting.discard(self)
            if self.source is not None:
                self.source.resume()

    # --- the readers' side ------------------------------------------------------

    async def wait_head(self) -> None:
        """Until the status and headers arrived; raises the origin's error if it failed."""
        await asyncio.shield(self._head)

    @property
    def joinable(self) -> bool:
        """Can a new reader still get the whole body from byte 0?"""
        return self.dropped == 0 and self.error is None

    def more(self) -> asyncio.Future:
        if self._more is None:
            self._more = asyncio.get_running_loop().create_future()
        return self._more

    def _wake(self) -> None:
        if self._more is not None:
            self._more.set_result(None)
            self._more = None

    def release(self) -> None:
        """Drop the chunks every reader has sent, unless they are being stored."""
        if self.storing:
            return
        keep_from = min((r.number for r in self.readers), default=self.dropped + len(self.chunks))
        count = keep_from - self.dropped
        if count <= 0:
            return
        freed = sum(len(chunk) for chunk in self.chunks[:count])
        del self.chunks[:count]
        self.dropped += count
        self.held -= freed
        self.budget.give(freed)
        self.on_unjoinable(self)
        if not self.readers and not self.done and self.source is not None:
            self.source.abort()  # nobody reads it and nobody can join it: stop fetching
            self.fail(ConnectionAbortedError("no reader left"))
        self.check_pause()


class Cursor:
    """One reader's place in a fill's body, optionally limited to a byte range."""

    def __init__(self, fill: Fill) -> None:
        self.fill = fill
        self.number = fill.dropped  # the next chunk to read
        self.skip = 0  # bytes still to skip before the range starts
        self.remaining: int | None = None  # bytes still to send, when a range ends early
        fill.readers.add(self)

    def limit(self, first: int, last: int) -> None:
        """Read only bytes first..last (inclusive) of the body."""
        self.skip, self.remaining = first, last - first + 1

    async def next(self) -> bytes | memoryview | None:
        """The next piece of the body, None at its end; raises if the origin failed mid-way."""
        fill = self.fill
        while self.remaining != 0:
            index = self.number - fill.dropped
            if index < len(fill.chunks):
                piece: bytes | memoryview = fill.chunks[index]
                self.number += 1
                if self.skip:
                    if self.skip >= len(piece):
                        self.skip -= len(piece)
                        continue
                    piece, self.skip = memoryview(piece)[self.skip :], 0
                if self.remaining is not None:
                    piece = memoryview(piece)[: self.remaining]
                    self.remaining -= len(piece)
                return piece
            if fill.error is not None:
                raise fill.error
            if fill.done:
                return None
            await fill.more()
        return None

    def sent(self) -> None:
        """The last piece was handed to the client's socket: its chunk may go."""
        self.fill.release()

    def close(self) -> None:
        self.fill.readers.discard(self)
        self.fill.release()
