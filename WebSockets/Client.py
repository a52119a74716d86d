"""An interactive WebSocket client: what you type is sent, what arrives is printed.

Two tasks run at once on one connection (full duplex): one reads your lines
and sends them, the other prints every message the server pushes the moment it
arrives. If an established connection drops, the library's own reconnect loop
(`async for ws in connect(...)`) dials again with exponential backoff and
jitter, and a line whose send failed goes out first. See the README's "Run it".

    python WebSockets/Client.py --url ws://127.0.0.1:8765/broadcast     # interactive
    python WebSockets/Client.py --url ws://127.0.0.1:8765/echo --send hello
    python WebSockets/Client.py --url ws://127.0.0.1:8765/time --count 3
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from collections.abc import Iterator

from websockets.asyncio.client import ClientConnection, connect
from websockets.client import backoff, process_exception
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

DEFAULT_URL = "ws://127.0.0.1:8765/echo"
DEFAULT_TIMEOUT = 10.0  # seconds a non-interactive run waits for its messages
BACKOFF_FIRST = 0.5  # seconds: the first delay is random in [0, this), then this
BACKOFF_MAX = 15.0  # never wait longer than this between attempts
BACKOFF_FACTOR = 2.0  # each failed attempt doubles the delay
RECONNECT_ATTEMPTS = 8  # then give up: the server is not coming back soon


class CannotConnect(Exception):
    """The server is not there, or refused the WebSocket handshake."""


def show(message: str | bytes) -> str:
    if isinstance(message, bytes):
        more = " ..." if len(message) > 32 else ""
        return f"<binary {len(message)} bytes: {message[:32].hex(' ')}{more}>"
    return message


def describe_close(ws: ClientConnection) -> str:
    """Who ended the connection and why, from the close frames that went each way."""
    received, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
    if received is not None:  # the server's close frame: its code and reason
        why = f" ({received.reason})" if received.reason else ""
        return f"the server closed the connection: code {received.code}{why}"
    if sent is not None:  # we closed first: the server broke RFC 6455 or sent over 1 MiB
        return f"this client closed the connection: code {sent.code} ({sent.reason})"
    return "the connection dropped without a close frame (code 1006)"


def as_cannot_connect(exc: Exception, url: str, timeout: float) -> CannotConnect:
    """The many ways a connection attempt fails, as one clear message."""
    if isinstance(exc, (InvalidURI, ValueError)):  # ValueError: a port out of range
        return CannotConnect(f"{url} is not a WebSocket URL: {exc}")
    if isinstance(exc, InvalidHandshake):
        return CannotConnect(f"{url} refused the WebSocket handshake: {exc}")
    if isinstance(exc, ConnectionRefusedError):
        why = "connection refused (nothing is listening there)"
    elif isinstance(exc, TimeoutError):
        why = f"no answer within {timeout:g} s"
    elif isinstance(exc, OSError):  # an unknown host, a TLS failure, ...
        why = exc.strerror or str(exc) or type(exc).__name__
    else:
        why = str(exc) or type(exc).__name__
    return CannotConnect(f"cannot connect to {url}: {why}. Is Server.py running?")


async def open_connection(url: str, timeout: float) -> ClientConnection:
    """Connect once, turning any failure into one clear message."""
    try:
        return await connect(url, open_timeout=timeout)
    except (InvalidURI, InvalidHandshake, ValueError, OSError, TimeoutError) as err:
        raise as_cannot_connect(err, url, timeout) from None


async def one_shot(url: str, send: str | None, count: int, timeout: float) -> int:
    """Send one message (if any), print `count` messages, exit."""
    ws = await open_connection(url, timeout)
    try:
        if send is not None:
            await ws.send(send)
        for _ in range(count):
            print(show(await asyncio.wait_for(ws.recv(), timeout)), flush=True)
    except TimeoutError:
        print(f"error: no message from {url} within {timeout:g} s", file=sys.stderr)
        return 1
    except ConnectionClosed:
        print(f"error: {describe_close(ws)}", file=sys.stderr)
        return 1
    finally:
        await ws.close()
    return 0


def read_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Read stdin (it blocks) and hand each line to the event loop; None at the end.

    Runs in a daemon thread, not the loop's executor: the program can then
    exit (say, when it gives up reconnecting) while this thread still waits
    for a line that may never come.
    """
    while True:
        line = sys.stdin.readline()
        try:
            loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\n") if line else None)
        except RuntimeError:
            return  # the loop is closed: the client is exiting
        if not line:
            return


class Reconnection:
    """The policy for the library's own reconnect loop (`async for ws in connect(...)`).

    The library reconnects at once when an established connection closes and
    backs off between failed attempts; this class decides the rest:

    - the very first connection must succeed: failing that, the URL or the
      server is wrong, and waiting would only hide it;
    - after RECONNECT_ATTEMPTS failures in a row, give up with a clear message;
    - the delays: the library's exponential backoff with a random first delay
      (RFC 6455 section 7.2.3), so a thousand clients that lost the same server
      do not all knock on it in the same instant, with shorter bounds than its
      defaults (first 5 s, at most 90 s), which suit a server farm more than a
      learner's terminal.
    """

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.connected_once = False
        self.failures = 0  # failed attempts since the last successful connection

    def delays(self) -> Iterator[float]:
        """The library asks for a fresh series after every successful connection."""
        attempts = backoff(BACKOFF_FIRST, BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_FACTOR)
        for attempt, delay in enumerate(attempts, 1):
            print(f"Reconnecting in {delay:.1f} s (attempt {attempt})...", file=sys.stderr)
            yield delay

    def process_exception(self, exc: Exception) -> Exception | None:
        """None: try again after the next delay; an exception: stop and raise it."""
        failure = as_cannot_connect(exc, self.url, self.timeout)
        if not self.connected_once:
            return failure  # never connected at all: say why and stop
        self.failures += 1
        print(failure, file=sys.stderr)
        if self.failures >= RECONNECT_ATTEMPTS or process_exception(exc) is not None:
            return CannotConnect(
                f"gave up after {self.failures} attempts to reconnect to {self.url}: {failure}"
            )
        return None


async def interactive(url: str, timeout: float) -> int:
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    threading.Thread(target=read_lines, args=(loop, lines), daemon=True).start()
    held: list[str] = []  # a line whose send failed: it goes first on the next connection
    policy = Reconnection(url, timeout)
    connections = connect(
        url,
        open_timeout=timeout,
        reconnect_delays=policy.delays,
        process_exception=policy.process_exception,
    )
    async for ws in connections:
        if policy.connected_once:
            print(f"Reconnected to {url}.", file=sys.stderr)
        else:
            print(f"Connected to {url}. Type a line to send it; Ctrl-D to quit.", file=sys.stderr)
        policy.connected_once, policy.failures = True, 0
        if await session(ws, lines, held) == "done":
            return 0
        # Leaving this iteration closes the connection; the library dials again.
        print(f"Connection lost: {describe_close(ws)}.", file=sys.stderr)
    return 0


async def session(ws: ClientConnection, lines: asyncio.Queue[str | None], held: list[str]) -> str:
    """Full duplex on one connection until the user quits ("done") or it drops ("lost")."""

    async def send_typed() -> str:
        while True:
            line = held.pop() if held else await lines.get()
            if line is None:
                await ws.close()  # normal closure, 1000
                return "done"
            try:
                await ws.send(line)
            except ConnectionClosed:
                held.append(line)  # ahead of what was typed since, for the next connection
                return "lost"

    async def print_received() -> str:
        try:
            async for message in ws:
                print(show(message), flush=True)
        except ConnectionClosed:
            pass
        return "lost"

    tasks = [asyncio.create_task(send_typed()), asyncio.create_task(print_received())]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return "done" if any(t.result() == "done" for t in done) else "lost"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="WebSocket client: interactive by default; --send/--count for one shot."
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default {DEFAULT_URL})")
    parser.add_argument("--send", metavar="TEXT", help="send TEXT, print the reply, exit")
    parser.add_argument(
        "--count", type=int, help="print this many messages, then exit (default 1 with --send)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for the connection and for each message",
    )
    args = parser.parse_args(argv)
    if args.count is not None and args.count < 0:
        parser.error(f"--count must be >= 0, got {args.count}")
    if not 0 < args.timeout < float("inf"):  # written so that nan fails too
        parser.error("--timeout must be a positive number of seconds")
    if not args.url.startswith(("ws://", "wss://")):
        parser.error(f"--url must start with ws:// or wss://, got {args.url!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.send is not None or args.count is not None:
            count = args.count if args.count is not None else 1
            return asyncio.run(one_shot(args.url, args.send, count, args.timeout))
        return asyncio.run(interactive(args.url, args.timeout))
    except CannotConnect as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
