"""A WebSocket server on the `websockets` library: echo, server push and broadcast.

Three routes, chosen by the request path during the opening handshake:

    /echo       sends every text or binary message straight back
    /time       pushes a tick every --interval seconds without being asked
    /broadcast  sends every message from one client to all connected clients

    python WebSockets/Server.py --port 8765
    python WebSockets/Client.py --url ws://127.0.0.1:8765/echo

Browsers may connect only from a page whose origin is allowed with
--allowed-origin; programs (which send no Origin header) always may. A client
that stops reading is dropped, and every connection gets its turn between
another's messages. See the README's "Run it", "Who may connect", "Close
codes" and "Backpressure".
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http
import ipaddress
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

DEFAULT_PORT = 8765
DEFAULT_MAX_SIZE = 64 * 1024  # bytes; a bigger message closes that connection with 1009
DEFAULT_INTERVAL = 1.0  # seconds between /time ticks
DEFAULT_PING_INTERVAL = 20.0  # seconds; a peer that misses a pong is dropped
DEFAULT_MAX_BUFFER = 1024 * 1024  # bytes queued for a client that stopped reading: dropped
SUPPORTED_VERSION = "13"  # RFC 6455 is version 13; nothing else is in use
ANY_ORIGIN = "*"  # --allowed-origin '*': no Origin check at all (experiments only)

log = logging.getLogger("ws-server")


class GuardedConnection(ServerConnection):
    """A server connection that is dropped when its client stops reading.

    The library's keep-alive cannot do this: its ping waits in the same write
    buffer as everything else, for a drain that never comes (slow_reader.py
    shows it). So each connection watches its own write buffer:

    - stuck above the high-water mark for `stall_timeout` seconds (the bound
      the keep-alive would have kept: a ping interval plus the pong timeout):
      the client reads nothing, and an echo reply or a /time tick would wait
      for it forever, holding a socket and its buffers;
    - more than `max_buffer` bytes queued: a client that floods pings and
      reads none of the pongs (every ping read makes a pong, megabytes a
      second), or a /broadcast member that stopped reading (the room checks
      it before each broadcast); dropped at once.

    A close frame would only join the back of the queue the client is not
    reading, so both abort the TCP connection. `max_buffer` = 0 turns both off.
    """

    def __init__(self, *args: Any, max_buffer: int, stall_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_buffer = max_buffer
        self.stall_timeout = stall_timeout
        self.stall_timer: asyncio.TimerHandle | None = None

    def drop(self, why: str) -> None:
        log.warning("dropping %s: it stopped reading (%s)", self.remote_address, why)
        self.transport.abort()

    def drop_if_overflowing(self) -> bool:
        """Drop the connection if more than `max_buffer` bytes wait for it; True if so."""
        queued = self.transport.get_write_buffer_size()
        if not self.max_buffer or queued <= self.max_buffer:
            return False
        self.drop(f"{queued:,} bytes queued")
        return True

    # asyncio's protocol callbacks: the library does its work, then the guard looks.

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.drop_if_overflowing()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.max_buffer:
            why = f"its queue did not drain for {self.stall_timeout:g} s"
            self.stall_timer = self.loop.call_later(self.stall_timeout, self.drop, why)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.cancel_stall_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_stall_timer()
        super().connection_lost(exc)

    def cancel_stall_timer(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None


async def taking_turns(ws: ServerConnection) -> AsyncIterator[str | bytes]:
    """Each message from the client, letting every other connection have a turn in between.

    `recv()` returns at once while messages are queued, without a pause in
    which the event loop could serve anyone else, and one read from the
    socket can queue thousands of them: under permessage-deflate a 64 KiB
    message of one repeated byte is 100 bytes on the wire. A client sending
    those to /broadcast held the loop for 5 s at a time (every other client
    waited) until each route took its messages through here.
    """
    async for message in ws:
        yield message
        await asyncio.sleep(0)  # the other connections' turn


def make_routes(interval: float) -> dict[str, Callable[[GuardedConnection], Awaitable[None]]]:
    """The three routes, sharing what they need: the tick interval and the room."""
    room: set[GuardedConnection] = set()

    async def echo(ws: GuardedConnection) -> None:
        """Send each message back as it came: text as text, binary as binary."""
        async for message in taking_turns(ws):
            await ws.send(message)

    async def time_push(ws: GuardedConnection) -> None:
        """Speak first: a tick every interval, whether or not the client says anything.

        What the client sends is read and ignored: left unread, it would fill
        the library's incoming queue, which then stops reading the socket, and
        the pongs to our keep-alive pings would go unread with it.
        """

        async def ignore_incoming() -> None:
            async for _ in taking_turns(ws):
                pass

        ignoring = asyncio.create_task(ignore_incoming())
        try:
            tick = 0
            while True:
                tick += 1
                now = datetime.now(UTC).isoformat(timespec="milliseconds")
                await ws.send(json.dumps({"tick": tick, "server_time": now}))
                await asyncio.sleep(interval)
        finally:
            ignoring.cancel()

    def drop_stalled_members() -> None:
        """Cut off members with more than `max_buffer` bytes queued.

        `broadcast` queues a copy for every member without waiting, so a member
        that reads nothing makes its queue grow by every message anyone sends,
        far faster than the stall timer would notice.
        """
        for member in list(room):
            if member.drop_if_overflowing():
                room.discard(member)

    async def broadcast_room(ws: GuardedConnection) -> None:
        """Every message from any member goes to every member, the sender included.

        `broadcast` writes to each connection without waiting for it, so one
        slow reader cannot hold up the others (see the README on backpressure).
        """
        room.add(ws)
        try:
            async for message in taking_turns(ws):
                drop_stalled_members()
                broadcast(room, message)
        finally:
            room.discard(ws)

    return {"/echo": echo, "/time": time_push, "/broadcast": broadcast_room}


PATHS = ("/echo", "/time", "/broadcast")


def route_path(request: Request) -> str:
    return request.path.split("?", 1)[0]


def check_request(connection: ServerConnection, request: Request) -> Response | None:
    """Refuse, as plain HTTP, what is not a handshake we can finish.

    Runs before the library validates the handshake, so an unknown path gets a
    404 instead of an upgrade, an unsupported protocol version gets the 426
    that RFC 6455 section 4.4 asks for, telling the client which version we
    speak, and a request without the Host header that section 4.2.1 requires
    (or with two of them) gets 400. Anything else the library checks itself
    (a missing Upgrade header gets 426, a malformed key 400).
    """
    if len(request.headers.get_all("Host")) != 1:  # RFC 9112 section 3.2: 400 for both
        return connection.respond(
            http.HTTPStatus.BAD_REQUEST, "A WebSocket handshake needs one Host header.\n"
        )
    if route_path(request) not in PATHS:
        return connection.respond(
            http.HTTPStatus.NOT_FOUND,
            f"No WebSocket route at {route_path(request)}; try {', '.join(PATHS)}.\n",
        )
    versions = request.headers.get_all("Sec-WebSocket-Version")
    if versions and versions != [SUPPORTED_VERSION]:
        response = connection.respond(
            http.HTTPStatus.UPGRADE_REQUIRED,
            f"Unsupported Sec-WebSocket-Version {', '.join(versions)}; "
            f"this server speaks {SUPPORTED_VERSION}.\n",
        )
        response.headers["Upgrade"] = "websocket"  # a 426 must name what to upgrade to
        response.headers["Sec-WebSocket-Version"] = SUPPORTED_VERSION
        return response
    return None


def accepted_origins(allowed: list[str]) -> list[str | None] | None:
    """What the library's `origins=` check accepts, from the --allowed-origin values.

    A browser always sends the origin of the page that opens a WebSocket, and
    the same-origin policy does not apply to WebSockets: without this check,
    any web page the user visits could talk to this server with the user's
    cookies and network position (cross-site WebSocket hijacking). Programs
    send no Origin header, and nothing a web page does can remove it, so `None`
    (no header) is always accepted. `*` turns the check off.
    """
    if ANY_ORIGIN in allowed:
        return None
    return [None, *allowed]


def describe_origins(allowed: list[str]) -> str:
    """One line saying which browser pages may connect (programs always may)."""
    if ANY_ORIGIN in allowed:
        return "Origins allowed: any (--allowed-origin '*'): every web page may connect"
    if not allowed:
        return "Origins allowed: none: browser pages get 403 (add some with --allowed-origin)"
    line = f"Origins allowed: {', '.join(allowed)}; other browser pages get 403"
    if "null" in allowed:
        line += (
            "\nwarning: 'null' is the origin of every sandboxed iframe and file:// page, "
            "whatever site it comes from: allowing it lets any site in"
        )
    return line


def serve_routes(
    host: str,
    port: int,
    interval: float = DEFAULT_INTERVAL,
    max_size: int = DEFAULT_MAX_SIZE,
    ping_interval: float = DEFAULT_PING_INTERVAL,
    max_buffer: int = DEFAULT_MAX_BUFFER,
    allowed_origins: list[str] = (),
) -> serve:
    """The server, not yet started: use it as `async with serve_routes(...) as server:`.

    A client that stops reading is dropped (see `GuardedConnection`) once
    `max_buffer` bytes wait for it, or its queue has not drained for two ping
    intervals; `max_buffer` = 0 never drops it, and its queue may grow without limit.
    A handshake whose Origin is not in `allowed_origins` gets 403 (see
    `accepted_origins`); one without an Origin header is served.
    """
    routes = make_routes(interval)

    async def handler(ws: GuardedConnection) -> None:
        path = route_path(ws.request)
        log.info("open   %s %s", ws.remote_address, path)
        try:
            await routes[path](ws)
        except ConnectionClosed:
            pass  # the client went away while we were sending: nothing more to do
        finally:
            log.info("closed %s %s code=%s", ws.remote_address, path, ws.close_code)

    return serve(
        handler,
        host,
        port,
        process_request=check_request,
        origins=accepted_origins(list(allowed_origins)),
        max_size=max_size,
        ping_interval=ping_interval,
        ping_timeout=ping_interval,
        create_connection=functools.partial(
            GuardedConnection, max_buffer=max_buffer, stall_timeout=2 * ping_interval
        ),
    )


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set_result, signum)

    async with serve_routes(
        args.host,
        args.port,
        args.interval,
        args.max_size,
        args.ping_interval,
        args.max_buffer,
        args.allowed_origin,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        host = f"[{args.host}]" if ":" in args.host else args.host  # IPv6, as in a URL
        print(f"Listening on ws://{host}:{port}", flush=True)
        print(describe_origins(args.allowed_origin), flush=True)
        await stop
        # Leaving the `async with` closes the server: new handshakes get 503 and
        # every open connection is closed with 1001 (going away).
    print("Server stopped; open connections were closed with 1001 (going away).", flush=True)


DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def browser_origin(text: str) -> str:
    """`text` written as a browser writes its Origin header (RFC 6454 section 6.2).

    The library compares Origin headers as plain strings, and browsers send
    one spelling only: scheme and host in lower case, an IPv6 address in its
    shortest form, an international name in its xn-- form, and no port when
    it is the scheme's default. Chromium, on a page at
    http://LOCALHOST:80/x, sends `Origin: http://localhost`; so
    `--allowed-origin HTTP://LOCALHOST:80` must become that to ever match.
    Raises ValueError for what is not an origin (a path, a user name, a bad port).
    """
    if text == "null":  # sandboxed iframes, file:// pages
        return text
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError as err:
        raise ValueError(f"bad port: {err}") from None
    if not parts.scheme or not parts.hostname:
        raise ValueError("it needs a scheme and a host, like http://localhost:8000")
    if parts.username is not None or parts.path or parts.query or parts.fragment:
        bare = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        raise ValueError(f"an origin is only scheme://host[:port]: did you mean {bare}?")
    host = parts.hostname  # urlsplit has lowered it
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError as err:
            raise ValueError(f"bad IPv6 address: {err}") from None
        if address.scope_id:  # browsers have no URL syntax for a zone
            raise ValueError("an IPv6 origin cannot name a zone (%...)")
        host = f"[{address.compressed}]"
    else:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as err:
            raise ValueError(f"bad host name: {err}") from None
    scheme = parts.scheme.lower()
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="WebSocket server with /echo, /time (server push) and /broadcast routes."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0 picks a free one)")
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between /time ticks"
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=DEFAULT_MAX_SIZE,
        help="largest message accepted, in bytes (default 64 KiB); bigger closes with 1009",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=DEFAULT_PING_INTERVAL,
        help="seconds between keep-alive pings, and how long to wait for the pong",
    )
    parser.add_argument(
        "--max-buffer",
        type=int,
        default=DEFAULT_MAX_BUFFER,
        help="bytes queued for a client that stopped reading before it is dropped "
        "(default 1 MiB; it is also dropped when its queue has not drained for two ping "
        "intervals); 0: never drop it",
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let browser pages from ORIGIN (e.g. http://localhost:8000) connect; repeatable. "
        "Others get 403; clients that send no Origin header (programs) are always served. "
        "'*' allows every origin",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    args = parser.parse_args(argv)
    origins = []
    for origin in args.allowed_origin:
        try:
            origins.append(origin if origin == ANY_ORIGIN else browser_origin(origin))
        except ValueError as err:
            parser.error(f"--allowed-origin {origin!r}: {err}")
    args.allowed_origin = origins
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    if not args.interval > 0:  # written so that nan fails too
        parser.error("--interval must be positive")
    if args.max_size < 1:
        parser.error("--max-size must be at least 1 byte")
    if args.max_buffer < 0:
        parser.error("--max-buffer must be >= 0")
    if not 0 < args.ping_interval < float("inf"):
        parser.error("--ping-interval must be a positive number of seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    try:
        asyncio.run(run(args))
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port}: {err.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
