"""Asking the origin: one request per connection, its answer parsed by httptools as it streams in.

`OriginExchange.open` connects, sends the request and waits for the
response head (relaying any 1xx interim response on the way); the body then
flows chunk by chunk into a sink (a `cdn_stream.Fill`), which may pause and
resume the connection to match its slowest reader. One connection per
request (`Connection: close`), never retried: a request the origin may have
seen is never sent twice.

README section: "Streaming: one origin fetch, many readers, bounded memory".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import httptools
from cdn_http import (
    MAX_HEADER_BYTES,
    MAX_HEADER_COUNT,
    Headers,
    OriginError,
    get_all,
    get_combined,
    serialize_head,
)

# An origin gets more room for its headers than a client does (it is trusted
# more), but still a limit, so a broken origin cannot fill the edge's memory.
MAX_ORIGIN_HEADER_BYTES = 4 * MAX_HEADER_BYTES
MAX_ORIGIN_HEADER_COUNT = 4 * MAX_HEADER_COUNT

InterimHandler = Callable[[int, str, Headers], None]


class Sink(Protocol):
    """Where the body goes (a `cdn_stream.Fill`)."""

    def feed(self, data: bytes) -> None: ...
    def finish(self) -> None: ...
    def fail(self, error: Exception) -> None: ...


def request_bytes(method: str, target: str, headers: Headers, body: bytes) -> bytes:
    """The request as sent: the head (headers as given, plus framing) and the body."""
    framing: Headers = [("Connection", "close")]
    if body or method not in ("GET", "HEAD", "OPTIONS", "TRACE", "DELETE"):
        framing.append(("Content-Length", str(len(body))))
    return serialize_head(f"{method} {target} HTTP/1.1", headers + framing) + body


class OriginExchange(asyncio.Protocol):
    """One request to the origin and its answer, on a connection of its own."""

    def __init__(self, method: str, timeout: float, on_interim: InterimHandler | None) -> None:
        self.method = method
        self.timeout = timeout  # for connecting + the head, and for each pause in the body
        self.on_interim = on_interim
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.head = asyncio.get_running_loop().create_future()
        self.status = 0
        self.reason = ""
        self.headers: Headers = []
        self.header_bytes = 0
        self.version = (1, 1)
        self.sink: Sink | None = None
        self.early: list[bytes] = []  # body bytes that came with the head, before a sink
        self.complete = False
        self.error: OriginError | None = None  # why the body broke off, if it did
        self.paused = False
        self.stall_timer: asyncio.TimerHandle | None = None

    async def open(self, host: str, port: int, request: bytes) -> None:
        """Connect, send `request`, and wait for the final response head. Raises OriginError."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                await loop.create_connection(lambda: self, host, port)
                assert self.transport is not None
                self.transport.write(request)
                await asyncio.shield(self.head)
        except TimeoutError as exc:
            self.abort()
            raise OriginError(f"origin sent no answer within {self.timeout:g} s", True) from exc
        except OSError as exc:
            self.abort()
            raise OriginError(
                f"cannot reach the origin {host}:{port}: {exc.strerror or exc}"
            ) from exc

    def stream_into(self, sink: Sink) -> None:
        """Send the body to `sink` from now on (what came early first)."""
        self.sink = sink
        # Read on before feeding: a sink that is short of room pauses us again
        # while it takes the early bytes (resuming after them would undo that).
        self.resume()
        for chunk in self.early:
            sink.feed(chunk)
        self.early.clear()
        if self.error is not None:
            sink.fail(self.error)
        elif self.complete:
            sink.finish()
        elif self.transport is None or self.transport.is_closing():
            sink.fail(OriginError("origin closed the connection mid-body"))

    # --- flow control, as the sink asks --------------------------------------------

    def pause(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
            self._stop_stall_timer()

    def resume(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()
            self._start_stall_timer()

    def abort(self) -> None:
        self._stop_stall_timer()
        if self.transport is not None:
            self.transport.abort()

    def _start_stall_timer(self) -> None:
        self._stop_stall_timer()
        if not self.complete:
            loop = asyncio.get_running_loop()
            self.stall_timer = loop.call_later(self.timeout, self._stalled)

    def _stop_stall_timer(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None

    def _stalled(self) -> None:
        self._failed(OriginError(f"origin sent nothing for {self.timeout:g} s mid-body", True))
        self.abort()

    # --- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._failed(exc.__context__ or OriginError("malformed response from origin"))
            self.abort()
        except httptools.HttpParserError as exc:
            self._failed(OriginError(f"malformed response from origin: {exc}"))
            self.abort()
        else:
            if self.sink is not None and not self.paused:
                self._start_stall_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_stall_timer()
        self.transport = None
        if self.complete:
            return
        if self.head.done() and self.read_until_close and exc is None:
            # The body of this response ends where the connection does, if it
            # ends cleanly: one cut off by a reset is not a whole body.
            self.on_message_complete()
        elif not self.head.done():
            self._failed(OriginError("origin closed the connection before answering"))
        else:
            self._failed(OriginError("origin closed the connection mid-body"))

    # --- httptools callbacks -----------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_ORIGIN_HEADER_BYTES or len(self.headers) >= (
            MAX_ORIGIN_HEADER_COUNT
        ):
            raise OriginError("origin sent too many header bytes")
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                raise OriginError("origin switched protocols, which the edge never asked for")
            if self.on_interim is not None:
                self.on_interim(status, self.reason, self.headers)
            self.reason, self.headers, self.header_bytes = "", [], 0
            return
        self.status = status
        self.version = (1, 1) if self.parser.get_http_version() == "1.1" else (1, 0)
        if self.transport is not None:
            self.transport.pause_reading()  # until stream_into names a sink
            self.paused = True
        if not self.head.done():
            self.head.set_result(None)
        if self.method == "HEAD":  # the parser cannot know a HEAD answer has no body
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        if self.sink is None:
            self.early.append(body)
        else:
            self.sink.feed(body)

    def on_message_complete(self) -> None:
        if self.status == 0 or self.complete:
            return  # the end of an interim response, or a second end of a HEAD answer
        self.complete = True
        self._stop_stall_timer()
        if self.sink is not None:
            self.sink.finish()
        if self.transport is not None:
            self.transport.close()

    @property
    def read_until_close(self) -> bool:
        """Neither Content-Length nor chunked: the body is what comes until the close."""
        chunked = "chunked" in (get_combined(self.headers, "transfer-encoding") or "").lower()
        return not chunked and not get_all(self.headers, "content-length")

    def _failed(self, error: BaseException) -> None:
        if not isinstance(error, OriginError):
            error = OriginError(f"malformed response from origin: {error}")
        if self.complete:
            return
        self.error, self.complete = error, True
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()
        elif self.sink is not None:
            self.sink.fail(error)
