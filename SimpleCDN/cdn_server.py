"""The edge server: connections on one asyncio event loop (uvloop if installed), the command line.

    python SimpleCDN/origin_server.py --port 8000
    python SimpleCDN/cdn_server.py --origin http://127.0.0.1:8000 --port 8080
    curl -i http://127.0.0.1:8080/index.html

What to answer is decided in `cdn_policy.py` and carried out in
`cdn_proxy.py`; this file reads requests off the wire (parsed by httptools,
the HTTP/1.1 parser of Node.js), hands them over, and writes the answers
back, with a deadline on every step, so that no client, however slow or
broken, can hold up the others or hold memory for long:

- a request's headers must arrive within --header-timeout (else 408), and
  its body must keep coming: no pause longer than --body-timeout (a slow
  upload is fine, a stalled one is not); an idle keep-alive connection
  closes after --idle-timeout;
- an answer is written in chunks of at most WRITE_CHUNK bytes while the
  client takes them: one that reads slowly is served at its own pace, one
  that takes no byte at all for --send-timeout is dropped.

README sections: "Running it yourself" and "Slow clients: a deadline on progress".
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import fcntl
import gc
import re
import signal
import socket
import struct
import sys
import termios
import traceback
from urllib.parse import urlsplit

import h11
import httptools
from cdn_http import (
    MAX_HEADER_BYTES,
    MAX_HEADER_COUNT,
    MAX_REQUEST_BODY,
    MAX_REQUEST_LINE,
    Headers,
    HttpError,
    Request,
    end_to_end,
    get_all,
    serialize_fields,
    serialize_head,
)
from cdn_proxy import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_OBJECT_SIZE,
    DEFAULT_ORIGIN_TIMEOUT,
    Answer,
    Edge,
    EdgeConfig,
    Plan,
    error_answer,
)

try:
    import uvloop
except ImportError:  # the standard event loop works too, only slower
    uvloop = None

DEFAULT_ORIGIN = "http://127.0.0.1:8000"
IDLE_TIMEOUT = 15.0  # a keep-alive connection with no new request is closed
HEADER_TIMEOUT = 10.0  # a request's line and headers must arrive within this
BODY_TIMEOUT = 30.0  # and its body may pause this long between two reads
SEND_TIMEOUT = 30.0  # a client that accepts nothing for this long is dropped
GC_THRESHOLDS = (50_000, 20, 20)  # young-generation size and the two older ratios
LISTEN_BACKLOG = 1024  # connections the kernel queues before accept()
MAX_CONNECTIONS = 2000  # open client connections before new ones get 503
MAX_TIMEOUT = 24 * 3600.0  # the largest --*-timeout accepted, in seconds
LINGER_SECONDS = 2.0  # after an error, how long to drain a client's unread input
MAX_PIPELINED = 16  # requests read ahead on one connection before reading pauses
SWEEP_INTERVAL = 0.1  # how often deadlines are checked: timeouts fire up to this late
# A streamed body goes out in pieces of at most WRITE_CHUNK, each waiting
# until the socket's buffer has room; a stored body up to WRITE_AT_ONCE goes
# out in one write (a reference to the cached bytes, not a copy). Either
# way, the client must take some of it within every --send-timeout.
WRITE_CHUNK = 256 * 1024
WRITE_AT_ONCE = 2 * 1024 * 1024
# Methods the fast parser (llhttp) knows. A request with any other method
# (RFC 9110 allows new ones, e.g. BREW) is read with h11 instead, so it is
# forwarded like any other.
FAST_PARSER_METHODS = frozenset(
    b"GET HEAD POST PUT DELETE OPTIONS PATCH PURGE TRACE CONNECT".split()
)
NEVER = float("inf")  # the deadline of a connection with no timer running
# Request fields that announce a body or ask for 100 Continue: what head_complete checks.
BODY_OR_EXPECT = frozenset({"transfer-encoding", "content-length", "expect"})
COMMON_REQUESTS = (b"GET /", b"HEAD /")  # plainly for the fast parser: no method to check
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Linux's SIOCOUTQ: the bytes a socket holds that the peer has not received yet.
UNSENT_BYTES = getattr(termios, "TIOCOUTQ", None)


class ClientGone(Exception):
    """The client closed the connection, or was dropped for making no progress."""


class EdgeServer:
    """What every connection shares: the edge, the timeouts, the count of open connections."""

    def __init__(self, edge: Edge, args: argparse.Namespace) -> None:
        self.edge = edge
        self.idle_timeout = args.idle_timeout
        self.header_timeout = args.header_timeout
        self.send_timeout = args.send_timeout
        self.body_timeout = args.body_timeout
        self.max_connections = args.max_connections
        self.connections = 0  # accepted, not counting those refused with a 503
        self.open: set[ClientConnection] = set()

    def connection(self) -> ClientConnection:
        return ClientConnection(self)

    def sweep(self) -> None:
        """Every SWEEP_INTERVAL: act on each connection whose deadline passed.

        One timer for the whole server instead of one per request: setting a
        connection's deadline is then a single assignment on the hot path.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in [c for c in self.open if c.deadline <= now]:
            connection.deadline = NEVER
            connection.on_deadline()
        loop.call_later(SWEEP_INTERVAL, self.sweep)


class ClientConnection(asyncio.Protocol):
    """One client connection: requests are parsed as bytes arrive and answered in order."""

    def __init__(self, server: EdgeServer) -> None:
        self.server = server
        self.edge = server.edge
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client_address = ""
        self.parser = httptools.HttpRequestParser(self)
        self.slow_parser: h11.Connection | None = None  # for a method llhttp does not know
        self.counted = False
        # The request being read.
        self.in_message = False
        self.url = b""
        self.slow_head = bytearray()
        self.headers: Headers = []
        self.head_bytes = 0  # raw bytes of a head still incomplete after one read
        self.field_bytes = 0  # bytes of the header fields parsed so far
        self.request: Request | None = None
        self.body = bytearray()
        # Requests read and waiting for their answer, in order; `busy` while
        # one is being answered asynchronously.
        self.queue: collections.deque[Request] = collections.deque()
        self.busy = False
        self.answering: asyncio.Task | None = None  # held: the loop keeps only a weak reference
        self.refusal: HttpError | None = None  # to answer once the queue is empty, then close
        self.closing = False  # closed or closing: nothing more is written
        self.deaf = False  # refused something: nothing more is read
        self.hang_up_when_answered = False
        self.reading_paused = False
        # The one deadline this connection has at any moment (idle, header,
        # body or linger), in loop time, and what happens when it passes.
        self.deadline = NEVER
        self.on_deadline = self.hang_up
        self.writable: asyncio.Future | None = None  # resolved when the socket drains
        self.socket_fd: int | None = None  # to ask the kernel what the client has not taken
        self.unsent_before = 0  # what it had not taken when the progress deadline was set

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        server.open.add(self)
        if server.connections >= server.max_connections:
            # a flood of connections gets a quick 503, not a slot each
            self.refuse(HttpError(503, "edge busy: too many open connections"))
            return
        server.connections += 1
        self.counted = True
        peer = transport.get_extra_info("peername")
        self.client_address = peer[0] if peer else "unknown"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socket_fd = sock.fileno()
        self.transport.set_write_buffer_limits(high=WRITE_CHUNK)
        self.set_timer(server.idle_timeout, self.hang_up)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open.discard(self)
        if self.counted:
            self.server.connections -= 1
            self.counted = False
        self.closing = True
        self.cancel_timer()
        if self.writable is not None and not self.writable.done():
            self.writable.set_exception(ClientGone())
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing or self.deaf:
            return  # draining a client we are hanging up on
        try:
            if self.slow_parser is not None or (
                not self.in_message
                and not data.startswith(COMMON_REQUESTS)
                and self.extension_method_ahead(data)
            ):
                self.read_slowly(data)
                return
            if self.in_message and not self.headers_done:
                # httptools gathers a header line before calling on_header: bound
                # what a head spread over many reads may grow to before then
                self.head_bytes += len(data)
                if self.head_bytes > MAX_REQUEST_LINE + MAX_HEADER_BYTES:
                    raise HttpError(431, "request header fields too large")
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # CONNECT, or `Connection: upgrade`: the request is answered as
            # plain HTTP (the edge does not switch protocols), and whatever
            # the client sends after it cannot be read as HTTP: hang up then.
            self.deaf = self.hang_up_when_answered = True
            if not self.busy and not self.queue:
                self.hang_up()
        except httptools.HttpParserCallbackError as exc:
            context = exc.__context__
            self.refuse(context if isinstance(context, HttpError) else HttpError(400, str(exc)))
        except httptools.HttpParserInvalidMethodError:
            self.refuse(HttpError(501, "send a request with an extension method on its own"))
        except httptools.HttpParserError as exc:
            self.refuse(HttpError(400, f"malformed request: {exc}"))
        except HttpError as exc:
            self.refuse(exc)

    def pause_writing(self) -> None:
        self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None
        if self.on_deadline == self.check_progress:  # the buffer drained: wait for requests
            self.cancel_timer()
            if not self.busy and not self.queue and not self.in_message:
                self.set_timer(self.server.idle_timeout, self.hang_up)

    # --- reading requests (httptools callbacks) ------------------------------------------

    @property
    def headers_done(self) -> bool:
        return self.request is not None

    def on_message_begin(self) -> None:
        self.in_message = True
        self.url, self.headers, self.request = b"", [], None
        self.head_bytes = self.field_bytes = 0
        if self.body:  # left by a request cut short
            self.body = bytearray()
        self.set_timer(self.server.header_timeout, self.too_slow)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_REQUEST_LINE:
            raise HttpError(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))
        self.field_bytes += len(name) + len(value) + 4
        if len(self.headers) > MAX_HEADER_COUNT or self.field_bytes > MAX_HEADER_BYTES:
            raise HttpError(431, "request header fields too large")

    def on_headers_complete(self) -> None:
        version = self.parser.get_http_version()
        method = self.parser.get_method().decode("latin-1")
        self.head_complete(method, self.url.decode("latin-1"), version, self.headers)

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_REQUEST_BODY:
            raise HttpError(413, f"request body over the limit of {MAX_REQUEST_BODY} bytes")
        self.set_timer(self.server.body_timeout, self.too_slow)  # it made progress: a new deadline

    def on_message_complete(self) -> None:
        request = self.request
        if request is None:
            return
        if self.body:
            request.body, self.body = bytes(self.body), bytearray()
        self.in_message, self.request = False, None
        self.cancel_timer()
        self.queue.append(request)
        if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        if not self.busy:
            self.answer_queued()

    def head_complete(self, method: str, target: str, version: str, headers: Headers) -> None:
        """The request line and headers are in: check them before any body is read."""
        if not version.startswith("1."):
            raise HttpError(505, f"HTTP/{version} is not supported; speak HTTP/1.1")
        if len(target) > MAX_REQUEST_LINE:
            raise HttpError(414, "request target too long")
        if len(headers) > MAX_HEADER_COUNT:
            raise HttpError(431, "request header fields too large")
        request = Request(method, target, (1, int(version[2:])), headers)
        names = request.names
        if request.version >= (1, 1) and (
            "host" not in names or (len(names) < len(headers) and len(get_all(headers, "host")) > 1)
        ):  # (counted only when some field repeats)
            raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")
        if names.isdisjoint(BODY_OR_EXPECT):  # the common case: nothing more to check
            self.request = request
            self.cancel_timer()
            return
        if "transfer-encoding" in names:
            coding = request.header("transfer-encoding") or ""
            if request.has("content-length"):
                raise HttpError(400, "both Transfer-Encoding and Content-Length (smuggling?)")
            if request.version < (1, 1):  # RFC 9112 6.1: its framing cannot be trusted
                raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request (smuggling?)")
            if coding.strip().lower() != "chunked":
                # the edge would undo the chunks and pass the rest (gzip...) on as plain
                raise HttpError(501, f"cannot decode Transfer-Encoding: {coding[:40]}")
        length = request.header("content-length")
        if length is not None and length.strip().isdigit() and int(length) > MAX_REQUEST_BODY:
            # refused before any 100 Continue, so the client never sends the body
            raise HttpError(413, f"body of {length} bytes; the limit is {MAX_REQUEST_BODY}")
        expect = request.header("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise HttpError(417, f"cannot meet Expect: {expect}")
            if not self.busy and not self.queue and self.transport is not None:
                self.transport.write(CONTINUE)
        self.request = request
        if request.has("content-length") or request.has("transfer-encoding"):
            self.set_timer(self.server.body_timeout, self.too_slow)
        else:
            self.cancel_timer()

    def extension_method_ahead(self, data: bytes) -> bool:
        """Does the next request use a method the fast parser does not know?"""
        if data[:1] in b"\r\n":
            data = data.lstrip(b"\r\n")
        method = data[: data.find(b" ", 0, 32)]
        return bool(method) and method not in FAST_PARSER_METHODS and method.isalpha()

    def read_slowly(self, data: bytes) -> None:
        """Read one request with h11, which accepts any method token (RFC 9110 9.1)."""
        if self.slow_parser is None:
            self.slow_parser = h11.Connection(
                h11.SERVER, max_incomplete_event_size=MAX_REQUEST_LINE + MAX_HEADER_BYTES
            )
            self.on_message_begin()
            self.slow_head = bytearray()  # the raw head, kept to check its line folding
        parser = self.slow_parser
        if not self.headers_done:
            # h11 unfolds obsolete line folding; the fast parser refuses it, and so
            # must this one (a folded line reads differently to different parsers)
            self.slow_head += data
            head = self.slow_head.partition(b"\r\n\r\n")[0]
            if b"\n " in head or b"\n\t" in head:
                raise HttpError(400, "obsolete line folding is not accepted")
            if len(head) > MAX_REQUEST_LINE + MAX_HEADER_BYTES:
                raise HttpError(431, "request header fields too large")
        parser.receive_data(data)
        try:
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    return
                if isinstance(event, h11.Request):
                    raw = [
                        (n.decode("latin-1"), v.decode("latin-1"))
                        for n, v in event.headers.raw_items()
                    ]
                    version = event.http_version.decode()
                    self.head_complete(
                        event.method.decode(), event.target.decode("latin-1"), version, raw
                    )
                elif isinstance(event, h11.Data):
                    self.on_body(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    rest = parser.trailing_data[0]
                    self.slow_parser = None
                    self.on_message_complete()
                    if rest:
                        self.data_received(rest)
                    return
        except h11.RemoteProtocolError as exc:
            raise HttpError(exc.error_status_hint, f"malformed request: {exc}") from exc

    # --- answering, in order ---------------------------------------------------------

    def answer_queued(self) -> None:
        """Answer queued requests: at once when the edge can, else in a task, one at a time."""
        while self.queue and not self.busy and not self.closing:
            request = self.queue.popleft()
            try:
                interim = self.send_interim if request.version >= (1, 1) else None
                decided = self.edge.decide(request, self.client_address, interim)
            except Exception:  # a bug must cost one request, not the edge
                traceback.print_exc()
                decided = error_answer(500, "internal error in the edge")
            if (
                isinstance(decided, Answer)
                and self.writable is None
                and len(decided.body) <= WRITE_AT_ONCE
            ):
                self.write_at_once(request, decided)
                continue
            self.busy = True
            self.answering = self.loop.create_task(self.answer_later(request, decided))
            return
        if self.busy or self.closing or self.transport is None:
            return
        if self.refusal is not None:  # the requests before it are answered: now refuse
            self.send_refusal()
            return
        if self.hang_up_when_answered:
            self.hang_up()
            return
        if self.deaf:
            return  # lingering after a refusal
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if not self.in_message:
            self.set_timer(self.server.idle_timeout, self.hang_up)

    async def answer_later(self, request: Request, decided: Answer | Plan) -> None:
        try:
            answer = decided if isinstance(decided, Answer) else await self.edge.carry_out(decided)
            await self.send(request, answer)
        except ClientGone:
            self.closing = True
            return
        except Exception:  # a bug must cost one request, not the edge
            traceback.print_exc()
            if self.transport is not None:
                self.transport.abort()
            return
        self.busy = False
        self.answer_queued()

    def framed_head(self, request: Request, answer: Answer) -> tuple[bytes, bool, bool]:
        """The status line and headers as sent, with framing; whether the body goes
        chunked, and whether to close after."""
        headers = answer.headers
        close, chunked = not request.keep_alive, False
        if answer.send_body and answer.status >= 200 and answer.status not in (204, 304):
            # (an answer with a body never carries framing fields of its own)
            length = len(answer.body) if answer.cursor is None else answer.length
            if length is not None:
                headers = headers + [("Content-Length", str(length))]
            elif request.version >= (1, 1):
                # No length known (the origin sent chunks, or read-until-close):
                # chunks again, so a body cut off at the origin reaches the client
                # without its last chunk, which every client reports as an error.
                headers, chunked = headers + [("Transfer-Encoding", "chunked")], True
            else:
                close = True  # an HTTP/1.0 client: the body ends where the connection does
        if close:
            headers = headers + [("Connection", "close")]
        if answer.stored_head:
            return answer.stored_head + serialize_fields(headers) + b"\r\n", chunked, close
        head = serialize_head(f"HTTP/1.1 {answer.status} {answer.reason}", headers)
        return head, chunked, close

    def write_at_once(self, request: Request, answer: Answer) -> None:
        """An answer from memory: one write, no waiting (the common case: a hit)."""
        assert self.transport is not None
        head, _, close = self.framed_head(request, answer)  # (a body in memory has a length)
        if not answer.send_body:
            self.transport.write(head)
        elif len(answer.body) < WRITE_CHUNK:
            self.transport.write(head + answer.body)
        else:
            self.transport.writelines([head, answer.body])
        if self.writable is not None:  # the socket did not take it all: watch the client
            self.watch_progress()
        if close:
            self.closing = True
            self.transport.close()

    async def send(self, request: Request, answer: Answer) -> None:
        """Write an answer piece by piece, as fast as the client takes them."""
        head, chunked, close = self.framed_head(request, answer)
        cursor = answer.cursor
        try:
            await self.write(head)
            if cursor is not None and answer.send_body:
                while (piece := await cursor.next()) is not None:
                    if chunked:
                        await self.write(b"%x\r\n" % len(piece), piece, b"\r\n")
                    else:
                        await self.write(piece)
                    cursor.sent()
                if chunked:
                    await self.write(b"0\r\n\r\n")
            elif answer.send_body:
                body = memoryview(answer.body)
                for start in range(0, len(body), WRITE_CHUNK):
                    await self.write(body[start : start + WRITE_CHUNK])
        except ClientGone:
            raise
        except Exception:  # the origin failed mid-body: the client sees a cut-off answer
            if self.transport is not None:
                self.transport.abort()
            raise ClientGone() from None
        finally:
            if cursor is not None:
                cursor.close()
        if close and self.transport is not None:
            self.closing = True
            self.transport.close()

    async def write(self, *data: bytes | memoryview) -> None:
        """Hand `data` to the socket; wait while its buffer is full, for as long as the
        client keeps taking bytes. ClientGone if it takes none for --send-timeout."""
        if self.transport is None or self.transport.is_closing():
            raise ClientGone()
        if len(data) == 1:
            self.transport.write(data[0])
        else:
            self.transport.writelines(data)
        writable = self.writable
        if writable is None:
            return
        before = self.unsent()
        while not writable.done():
            await asyncio.wait([writable], timeout=self.server.send_timeout)
            if writable.done():
                break
            left = self.unsent()
            if left >= before:  # not one byte taken in --send-timeout
                self.stalled()
                raise ClientGone()
            before = left
        writable.result()  # raises ClientGone if the connection was lost meanwhile

    def send_interim(self, status: int, reason: str, headers: Headers) -> None:
        """Relays the origin's 1xx (e.g. 103 Early Hints) to an HTTP/1.1 client."""
        if self.transport is not None:
            line = f"HTTP/1.1 {status} {reason}"
            self.transport.write(serialize_head(line, end_to_end(headers)))

    # --- refusing and hanging up -----------------------------------------------------

    def refuse(self, error: HttpError) -> None:
        """A request the edge will not read: answer it after those before it, then close."""
        self.refusal = error
        self.deaf = True
        self.cancel_timer()
        if not self.busy:
            self.send_refusal()

    def too_slow(self) -> None:
        self.refuse(HttpError(408, "request too slow"))

    def send_refusal(self) -> None:
        """Answer with the error, stop writing, and drain the client's input for a moment.

        Closing a socket with unread input makes the kernel send a reset, and
        the client may lose the error response we just wrote (RFC 9112 9.6).
        """
        transport, error = self.transport, self.refusal
        if transport is None or error is None:
            return
        self.refusal = None
        answer = error_answer(error.status, error.message)
        headers = answer.headers + [
            ("Content-Length", str(len(answer.body))),
            ("Connection", "close"),
        ]
        line = f"HTTP/1.1 {answer.status} {answer.reason}"
        transport.write(serialize_head(line, headers) + answer.body)
        if transport.can_write_eof():
            transport.write_eof()
        self.set_timer(LINGER_SECONDS, self.hang_up)

    def hang_up(self) -> None:
        """Close; a client that has not even read its last answer is cut off instead."""
        if self.transport is not None:
            if self.transport.get_write_buffer_size():
                self.transport.abort()
            else:
                self.transport.close()

    def unsent(self) -> int:
        """Bytes of its answers the client has not taken yet: those still in the
        transport's buffer, and those the kernel holds (which can be megabytes)."""
        if self.transport is None:
            return 0
        left = self.transport.get_write_buffer_size()
        if UNSENT_BYTES is not None and self.socket_fd is not None:
            try:
                queued = fcntl.ioctl(self.socket_fd, UNSENT_BYTES, b"\0\0\0\0")
                left += struct.unpack("i", queued)[0]
            except OSError:
                pass  # not a kernel that says: the transport's buffer alone shows progress
        return left

    def watch_progress(self) -> None:
        """Drop the client if it takes none of what it was sent for --send-timeout."""
        self.unsent_before = self.unsent()
        self.set_timer(self.server.send_timeout, self.check_progress)

    def check_progress(self) -> None:
        left = self.unsent()
        if left and left >= self.unsent_before:
            self.stalled()
        else:  # it took some: another period
            self.watch_progress()

    def stalled(self) -> None:
        """No progress for --send-timeout: the client stopped reading."""
        self.edge.stats.slow_clients_dropped += 1
        if self.transport is not None:
            self.transport.abort()

    def set_timer(self, seconds: float, action) -> None:
        self.deadline = self.loop.time() + seconds
        self.on_deadline = action

    def cancel_timer(self) -> None:
        self.deadline = NEVER


# --- command line -------------------------------------------------------------

SIZE = re.compile(r"^(\d+)\s*([kmg]?)i?b?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`64MB`, `512k`, `1000` -> bytes (K, M, G are powers of 1024)."""
    match = SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64MB, 512K or 1000)")
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " ")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="A caching edge (shared HTTP cache, RFC 9111) in front of one origin."
    )
    add = parser.add_argument
    add("--origin", default=DEFAULT_ORIGIN, help="origin URL (default: %(default)s)")
    add("--host", default="127.0.0.1", help="address to listen on")
    add("--port", type=int, default=8080, help="port to listen on (0 = any free)")
    add("--name", default="edge", help="this edge's name in Via (e.g. eu-west)")
    # memory
    add(
        "--cache-size",
        type=parse_size,
        default=DEFAULT_CACHE_SIZE,
        help="cache capacity in bytes, e.g. 64MB (default 64MB)",
    )
    add(
        "--max-object-size",
        type=parse_size,
        default=None,
        help="largest response the cache stores; larger ones stream through, still coalesced "
        "(default 8MB, or the cache size or in-flight budget if smaller)",
    )
    add(
        "--max-inflight-bytes",
        type=parse_size,
        default=DEFAULT_MAX_INFLIGHT,
        help="bytes held for responses on their way from the origin, all together (default 64MB)",
    )
    # time
    add(
        "--origin-timeout",
        type=float,
        default=DEFAULT_ORIGIN_TIMEOUT,
        help="seconds the origin has to answer (and to resume a paused body) before a 504 "
        "(default 10)",
    )
    add(
        "--send-timeout",
        type=float,
        default=SEND_TIMEOUT,
        help="seconds a client may accept no bytes at all before it is dropped; a slow "
        f"reader is never cut off for taking long in total (default {SEND_TIMEOUT:g})",
    )
    add(
        "--body-timeout",
        type=float,
        default=BODY_TIMEOUT,
        help="seconds a request body may pause between two reads; a slow upload is never "
        f"cut off for taking long in total (default {BODY_TIMEOUT:g})",
    )
    add(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        help=f"seconds an idle keep-alive connection stays open (default {IDLE_TIMEOUT:g})",
    )
    add(
        "--header-timeout",
        type=float,
        default=HEADER_TIMEOUT,
        help=f"seconds a client has to send a request's headers (default {HEADER_TIMEOUT:g})",
    )
    add(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        help=f"open client connections before new ones get 503 (default {MAX_CONNECTIONS})",
    )
    add("--purge-token", help="enables PURGE for requests with this X-Purge-Token")
    add("-v", "--verbose", action="store_true", help="print a line per request")
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, EdgeConfig]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        origin = urlsplit(args.origin)
        origin_port = 80 if origin.port is None else origin.port
    except ValueError:  # an unclosed IPv6 bracket, a port past 65535...
        parser.error(f"--origin is not a valid URL: {args.origin!r}")
    if origin.scheme != "http" or not origin.hostname:
        parser.error(f"--origin must be an http:// URL with a host, got {args.origin!r}")
    if origin_port == 0:  # (it would have meant port 80)
        parser.error(f"--origin needs a port from 1 to 65535, got {args.origin!r}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0..65535, got {args.port}")
    if args.max_connections < 1:
        parser.error("--max-connections must be at least 1")
    timeouts = (
        args.origin_timeout,
        args.idle_timeout,
        args.header_timeout,
        args.send_timeout,
        args.body_timeout,
    )
    if not all(0 < seconds <= MAX_TIMEOUT for seconds in timeouts):  # also refuses nan
        parser.error(f"timeouts must be positive, at most {MAX_TIMEOUT:g} seconds")
    if args.max_inflight_bytes < 64 * 1024:
        parser.error("--max-inflight-bytes must be at least 64KB")
    # A body being stored is held in flight until the last byte is in: one larger
    # than the in-flight budget could never be stored.
    if args.max_object_size is None:
        limits = (DEFAULT_MAX_OBJECT_SIZE, args.cache_size, args.max_inflight_bytes)
        args.max_object_size = min(limits)
    if args.max_object_size > args.cache_size:
        parser.error("--max-object-size cannot exceed --cache-size")
    if args.max_object_size > args.max_inflight_bytes:
        parser.error(
            "--max-object-size cannot exceed --max-inflight-bytes "
            "(a body being stored is held in flight until it is whole)"
        )
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.name):
        parser.error("--name may use letters, digits, '.', '_' and '-' only")
    config = EdgeConfig(
        origin_host=origin.hostname,
        origin_port=origin_port,
        name=args.name,
        cache_size=args.cache_size,
        max_object_size=args.max_object_size,
        max_inflight_bytes=args.max_inflight_bytes,
        origin_timeout=args.origin_timeout,
        purge_token=args.purge_token,
        verbose=args.verbose,
    )
    return args, config


async def serve(args: argparse.Namespace, config: EdgeConfig) -> int:
    """Listen until SIGINT or SIGTERM; 0 on a clean stop."""
    loop = asyncio.get_running_loop()
    edge = Edge(config)
    server = EdgeServer(edge, args)
    try:
        listener = await loop.create_server(
            server.connection, args.host, args.port, backlog=LISTEN_BACKLOG, reuse_address=True
        )
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    host, port = listener.sockets[0].getsockname()[:2]
    edge.same_site |= {(host, port), ("localhost", port), ("127.0.0.1", port)}
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server.sweep()
    tune_garbage_collector()
    print(f"Listening on http://{host}:{port}", flush=True)
    await stop.wait()
    listener.close()
    return 0


def tune_garbage_collector() -> None:
    """Fewer collections of the young, and never another look at start-up's objects.

    A hit allocates a few dozen short-lived objects (the request, its
    headers, the answer); Python collects the young generation every 700
    net allocations, so every dozen hits, and each collection costs more as
    the cache fills with long-lived entries that older generations must
    trace. Most of a hit's objects die by reference counting anyway, so a
    larger young generation loses nothing and the collector runs ~70 times
    less often. (The same tuning as RealTimeChat's app.py.)
    """
    gc.collect()
    gc.freeze()  # modules, the parsed configuration: never scanned again
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: list[str] | None = None) -> int:
    args, config = config_from_args(argv)
    if uvloop is not None:
        return uvloop.run(serve(args, config))
    return asyncio.run(serve(args, config))


if __name__ == "__main__":
    sys.exit(main())
