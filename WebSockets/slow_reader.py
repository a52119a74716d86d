"""Backpressure, provoked: one member of /broadcast stops reading.

`websockets.broadcast` writes to every connection without waiting, so a fast
member is never held up by a slow one. The price is memory: what a stalled
member does not read piles up in its socket buffers, then in the server's
write buffer for that connection, for as long as the others keep talking.

The keep-alive does not save the server here: its ping waits behind the
queued data for a drain that never comes, so the pong timeout never starts.
This script shows it in two rounds with the same traffic:

  1. --max-buffer 0: no cap. The queue for the stalled member only grows.
  2. Server.py's cap (1 MiB by default): the server drops the member as soon
     as more than that is queued for it.

It runs Server.py's routes in-process, so it can read the server's side of
each connection. The stalled member is a raw socket that did the handshake
and then reads nothing, as a phone that lost its signal would.

    python WebSockets/slow_reader.py --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
import time

import handshake
import Server
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

MESSAGE_BYTES = 4096
MESSAGES_PER_TICK = 25  # sent every 10 ms: about 10 MB/s of broadcast
SLOW_RCVBUF = 64 * 1024  # bytes; the kernel may double it


def stalled_client(port: int) -> socket.socket:
    """A client that completes the handshake and then never reads a byte.

    A raw socket, not the library: the library's client would keep reading
    into its own memory for us. Its receive buffer is kept small, as on a
    phone with a weak signal, so the kernel cannot hide the problem for long.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    sock.connect(("127.0.0.1", port))
    key = handshake.new_key()
    sock.sendall(handshake.upgrade_request("127.0.0.1", port, "/broadcast", key))
    response = handshake.read_http_response(sock)
    if handshake.accept_key(key).encode() not in response:
        raise handshake.ProtocolError(f"handshake refused: {response[:60]!r}")
    return sock


def buffered(connection: ServerConnection) -> int:
    """Bytes the server has queued for this client but not yet handed to the kernel."""
    return connection.transport.get_write_buffer_size()


async def one_round(max_buffer: int, seconds: float, out=print) -> dict[str, float]:
    """Broadcast for `seconds` to a reading and a stalled member; return what was seen."""
    # A short keep-alive, so it would have had every chance to act.
    async with Server.serve_routes(
        "127.0.0.1", 0, ping_interval=1.0, max_buffer=max_buffer
    ) as server:
        port = server.sockets[0].getsockname()[1]
        fast = await connect(f"ws://127.0.0.1:{port}/broadcast", ping_interval=None)
        slow = await asyncio.to_thread(stalled_client, port)
        await asyncio.sleep(0.1)  # both handlers have joined the room
        slow_side = next(c for c in server.connections if c.remote_address == slow.getsockname())

        received = 0

        async def read_fast() -> None:
            nonlocal received
            async for _ in fast:
                received += 1

        reader = asyncio.create_task(read_fast())
        payload = b"x" * MESSAGE_BYTES
        sent = peak = 0
        dropped_after = None
        started = time.monotonic()
        next_report = 0.0
        out(f"  {'time':>5}  {'sent':>6}  {'fast got':>8}  queued for the stalled member")
        while (elapsed := time.monotonic() - started) < seconds:
            for _ in range(MESSAGES_PER_TICK):
                await fast.send(payload)
                sent += 1
            await asyncio.sleep(0.01)
            if slow_side.close_code is None:
                peak = max(peak, buffered(slow_side))
            elif dropped_after is None:
                dropped_after = elapsed
                out(f"  {elapsed:4.1f}s  the server dropped the stalled member")
            if elapsed >= next_report and dropped_after is None:
                queued = f"{buffered(slow_side) / 2**20:6.2f} MiB"
                out(f"  {elapsed:4.1f}s  {sent:>6,}  {received:>8,}  {queued}")
                next_report += 0.5
        deadline = time.monotonic() + 10  # let the fast member catch up
        while received < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        reader.cancel()
        await fast.close()
        slow.close()
        return {
            "sent": sent,
            "fast_received": received,
            "peak_buffered": peak,
            "dropped_after": dropped_after,
        }


async def both_rounds(seconds: float, out=print) -> tuple[dict, dict]:
    out("Round 1: no cap (--max-buffer 0)")
    uncapped = await one_round(0, seconds, out)
    cap = Server.DEFAULT_MAX_BUFFER
    out(f"\nRound 2: Server.py's cap (--max-buffer {cap:,} bytes)")
    capped = await one_round(cap, seconds, out)
    return uncapped, capped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Watch the server's queue grow for a /broadcast member that stops reading."
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="how long each round broadcasts")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 60:  # written so that nan fails too; inf never ended
        parser.error(f"--seconds must be in 1..60, got {args.seconds:g}")
    logging.getLogger("ws-server").setLevel(logging.ERROR)  # the table reports the drop
    uncapped, capped = asyncio.run(both_rounds(args.seconds))
    everyone = all(r["fast_received"] == r["sent"] for r in (uncapped, capped))
    cap = f"{Server.DEFAULT_MAX_BUFFER / 2**20:g} MiB"
    seen = (
        f"with no cap the server queued {uncapped['peak_buffered'] / 2**20:.0f} MiB in "
        f"{args.seconds:g} s for one member that stopped reading, and the 1 s keep-alive "
        + ("never dropped it" if uncapped["dropped_after"] is None else "dropped it")
        + f"; with the {cap} cap it was dropped after "
        + (
            f"{capped['dropped_after']:.1f} s"
            if capped["dropped_after"] is not None
            else "(never: the cap did not act)"
        )
        + f". The reading member got every message both times ({'yes' if everyone else 'NO'})."
    )
    shown = everyone and uncapped["dropped_after"] is None and capped["dropped_after"] is not None
    print(f"\n{'Lesson' if shown else 'Lesson not shown'}: {seen}")
    return 0 if shown else 1


if __name__ == "__main__":
    sys.exit(main())
