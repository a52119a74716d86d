"""An interactive WebSocket client: what you type is sent, what arrives is printed.

Two tasks run at once on one connection (full duplex): one reads your lines
and sends them, the other prints every message the server pushes the moment it
arrives. If an established connection drops, the library's own reconnect loop
(`async for ws in connect(...)`) dials again with exponential backoff and
jitter (the policy: `Reconnection`), and what was typed meanwhile goes out in
order. See the README's "Run it".

    python WebSockets/Client.py --url ws://127.0.0.1:8765/broadcast     # interactive
    python WebSockets/Client.py --url ws://127.0.0.1:8765/echo --send hello
    python WebSockets/Client.py --url ws://127.0.0.1:8765/time --count 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from websockets.asyncio.client import ClientConnection, connect
from websockets.client import backoff, process_exception
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

DEFAULT_URL = "ws://127.0.0.1:8765/echo"
DEFAULT_TIMEOUT = 10.0  # seconds a non-interactive run waits for its messages
BACKOFF_FIRST = 0.5  # seconds: the first delay is random in [0, this), then this
BACKOFF_MAX = 15.0  # never wait longer than this between attempts
BACKOFF_FACTOR = 2.0  # each failed attempt doubles the delay
RECONNECT_ATTEMPTS = 8  # then give up: the server is not coming back soon
STABLE_AFTER = 5.0  # seconds a connection must last before a drop resets the backoff
QUIET_BEFORE_CLOSE = 0.5  # seconds with nothing sent or received before Ctrl-D closes


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


class Outbox:
    """The lines typed and not yet sent, oldest first, and whether input has ended.

    A line leaves only once `ws.send` has taken it, so a line whose send failed,
    or was cut off, goes first on the next connection: it may then arrive
    twice, never not at all. (A line `send` has taken can still be lost in
    the kernel's buffers with the connection: WebSocket has no acknowledgements.)
    """

    def __init__(self) -> None:
        self.lines: deque[str] = deque()
        self.arrived = asyncio.Event()  # set by each line typed, and by the end of input
        self.ended = asyncio.Event()  # Ctrl-D, or the end of a piped file

    def add(self, line: str | None) -> None:
        """A line typed, or None at the end of input (called in the event loop)."""
        if line is None:
            self.ended.set()
        else:
            self.lines.append(line)
        self.arrived.set()

    async def next(self) -> str | None:
        """The oldest unsent line, waiting for one; None once input has ended and all is sent."""
        while not self.lines:
            if self.ended.is_set():
                return None
            self.arrived.clear()
            await self.arrived.wait()
        return self.lines[0]

    def sent(self) -> None:
        self.lines.popleft()


def read_lines(loop: asyncio.AbstractEventLoop, outbox: Outbox) -> None:
    """Read stdin (it blocks) and hand each line to the event loop; None at the end.

    Runs in a daemon thread, not the loop's executor: the program can then
    exit (say, when it gives up reconnecting) while this thread still waits
    for a line that may never come. Bytes that are not UTF-8 become U+FFFD,
    with a warning: sent as they were, they made the library fail the
    connection, and the resend after reconnecting failed it again, forever.
    """
    # Our own reader on the same file: a thread blocked in sys.stdin's reader
    # holds its lock, and the interpreter, exiting, would wait for it and abort.
    stdin = open(sys.stdin.fileno(), "rb", closefd=False)  # noqa: SIM115 (lives with the thread)
    number = 0
    while True:
        raw = stdin.readline()
        number += 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("utf-8", errors="replace")
            warning = f"warning: line {number} is not UTF-8 text; its bad bytes are sent as U+FFFD"
            say = functools.partial(print, warning, file=sys.stderr, flush=True)
            if not call_in_loop(loop, say):
                return
        if not call_in_loop(loop, outbox.add, line.rstrip("\r\n") if raw else None):
            return  # the loop is closed: the client is exiting
        if not raw:
            return


def call_in_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args) -> bool:
    """Have the event loop run callback(*args) (from another thread); False if it is closed."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        return False
    return True


class Reconnection:
    """The policy for the library's own reconnect loop (`async for ws in connect(...)`).

    The library dials again at once when an established connection closes
    and backs off between failed attempts; this class decides the rest:

    - the very first connection must succeed: failing that, the URL or the
      server is wrong, and waiting would only hide it;
    - after a connection drops, wait a random delay before dialing again
      (RFC 6455 section 7.2.3): a server that restarts loses all its clients
      at the same moment, and they should not all knock again at one instant;
    - a connection that drops within STABLE_AFTER seconds counts as a failed
      attempt, and the backoff goes on: a server that accepts and at once
      closes (overloaded, or refusing us by policy) was dialed 2,466 times in
      5 s while the library restarted its backoff after every handshake;
    - after RECONNECT_ATTEMPTS failures in a row, give up with a clear message;
      at once on an answer that will not change (a 403 or 404);
    - the delays: the library's exponential backoff with a random first
      delay, with shorter bounds than its defaults (first 5 s, at most 90 s),
      which suit a server farm more than a learner's terminal.
    """

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.connected_once = False
        self.online = False  # a connection is open now
        self.opened_at = 0.0
        self.failures = 0  # failed attempts since the last connection that lasted
        self.series: Iterator[float] | None = None  # the backoff delays in use
        self.attempt = 0  # attempts in this series

    def next_delay(self) -> float:
        """The next delay of the current series (a new one after a lasting connection)."""
        if self.series is None:
            self.series = backoff(BACKOFF_FIRST, BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_FACTOR)
            self.attempt = 0
        self.attempt += 1
        delay = next(self.series)
        print(f"Reconnecting in {delay:.1f} s (attempt {self.attempt})...", file=sys.stderr)
        return delay

    def delays(self) -> Iterator[float]:
        """For the library, which asks for a new series after every handshake: ours
        goes on until a connection has lasted STABLE_AFTER seconds."""
        while True:
            yield self.next_delay()

    def opened(self) -> None:
        self.connected_once = self.online = True
        self.opened_at = time.monotonic()

    def lost(self) -> float:
        """A connection dropped: how long to wait before dialing again.

        Raises CannotConnect when connections keep dropping as soon as they open.
        """
        self.online = False
        if time.monotonic() - self.opened_at >= STABLE_AFTER:
            self.failures, self.series = 0, None  # it worked for a while: start afresh
        else:
            self.failures += 1
            if self.failures >= RECONNECT_ATTEMPTS:
                raise CannotConnect(
                    f"gave up: {self.failures} connections in a row to {self.url} "
                    f"closed within {STABLE_AFTER:g} s of opening"
                )
        return self.next_delay()

    def process_exception(self, exc: Exception) -> Exception | None:
        """None: try again after the next delay; an exception: stop and raise it."""
        failure = as_cannot_connect(exc, self.url, self.timeout)
        if not self.connected_once:
            return failure  # never connected at all: say why and stop
        if process_exception(exc) is not None:  # the library's verdict: it will not change
            return CannotConnect(f"{failure}; not trying again")
        self.failures += 1
        print(failure, file=sys.stderr)
        if self.failures >= RECONNECT_ATTEMPTS:
            return CannotConnect(
                f"gave up after {self.failures} failed attempts to reconnect to {self.url}"
            )
        return None


async def interactive(url: str, timeout: float) -> int:
    """Type lines, see messages, until Ctrl-D; reconnect when the connection drops.

    Ctrl-D while reconnecting (backing off or dialing) ends it at once; the
    lines not sent are listed, and the exit status is then 1.
    """
    outbox = Outbox()
    loop = asyncio.get_running_loop()
    threading.Thread(target=read_lines, args=(loop, outbox), daemon=True).start()
    policy = Reconnection(url, timeout)
    talking = asyncio.create_task(converse(url, timeout, policy, outbox))
    input_ended = asyncio.create_task(outbox.ended.wait())
    try:
        await asyncio.wait({talking, input_ended}, return_when=asyncio.FIRST_COMPLETED)
        if not talking.done() and policy.connected_once and not policy.online:
            talking.cancel()  # reconnecting, and the user is done: stop dialing
        try:
            status = await talking
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise  # Ctrl-C: asyncio.run turns this into KeyboardInterrupt
            status = 0  # we stopped it above
    except CannotConnect as err:
        print(f"error: {err}", file=sys.stderr)
        status = 1
    finally:
        input_ended.cancel()
        talking.cancel()  # on Ctrl-C: close the connection before asyncio shuts down
        await asyncio.gather(talking, return_exceptions=True)
    if outbox.lines:
        lines = "line" if len(outbox.lines) == 1 else "lines"
        print(f"Not sent ({len(outbox.lines)} {lines}):", file=sys.stderr)
        for line in outbox.lines:
            print(f"  {line}", file=sys.stderr)
        return 1
    return status


async def converse(url: str, timeout: float, policy: Reconnection, outbox: Outbox) -> int:
    """One session per connection the library's loop opens, until the user quits."""
    reconnecting = connect(
        url,
        open_timeout=timeout,
        reconnect_delays=policy.delays,
        process_exception=policy.process_exception,
    )
    # aclosing: however this ends (Ctrl-C too), the loop's generator is closed
    # here, in this task, and with it the connection; not later by the garbage
    # collector while asyncio is shutting down.
    async with contextlib.aclosing(aiter(reconnecting)) as connections:
        async for ws in connections:
            if policy.connected_once:
                print(f"Reconnected to {url}.", file=sys.stderr)
            else:
                hint = "Type a line to send it; Ctrl-D to quit."
                print(f"Connected to {url}. {hint}", file=sys.stderr)
            policy.opened()
            if await session(ws, outbox, timeout) == "done":
                return 0
            print(f"Connection lost: {describe_close(ws)}.", file=sys.stderr)
            if outbox.ended.is_set():
                return 0  # input ended while that connection was open: quit, do not redial
            await asyncio.sleep(policy.lost())
            # Leaving this iteration, the library dials again.
    return 0


async def session(ws: ClientConnection, outbox: Outbox, timeout: float) -> str:
    """Full duplex on one connection until the user quits ("done") or it drops ("lost")."""
    last_activity = time.monotonic()  # the last line sent or message printed

    async def send_typed() -> str:
        nonlocal last_activity
        while (line := await outbox.next()) is not None:
            try:
                await ws.send(line)
            except ConnectionClosed:
                return "lost"
            outbox.sent()
            last_activity = time.monotonic()
        # Input has ended. A server stops sending once it reads our close frame,
        # even replies it has not written yet (`echo hi | Client.py` printed
        # nothing half the time), so first wait for the line to go quiet.
        give_up = time.monotonic() + timeout
        while (quiet := time.monotonic() - last_activity) < QUIET_BEFORE_CLOSE:
            if time.monotonic() >= give_up:
                break
            await asyncio.sleep(QUIET_BEFORE_CLOSE - quiet)
        await ws.close()  # normal closure, 1000
        return "done"

    async def print_received() -> str:
        nonlocal last_activity
        try:
            async for message in ws:
                print(show(message), flush=True)
                last_activity = time.monotonic()
        except ConnectionClosed:
            pass
        return "lost"

    sending = asyncio.create_task(send_typed())
    printing = asyncio.create_task(print_received())
    try:
        done, _ = await asyncio.wait({sending, printing}, return_when=asyncio.FIRST_COMPLETED)
        if sending in done and sending.result() == "done":
            await printing  # closed by us: it prints what arrived before the close, then ends
            return "done"
        for task in done:
            task.result()  # an error in either (a closed stdout, say) goes up from here
        return "lost"
    finally:
        sending.cancel()
        printing.cancel()


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
    if args.send is not None and not is_text(args.send):
        parser.error("--send must be text: its bytes are not valid UTF-8")
    return args


def is_text(arg: str) -> bool:
    """False for an argument whose bytes were not UTF-8 (Python keeps them as surrogates)."""
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    except BrokenPipeError:
        # Whoever read our output has gone (`Client.py ... | head -1`): stop quietly,
        # and let the interpreter's last flush write nowhere instead of failing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
