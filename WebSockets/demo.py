"""The guided tour of WebSockets: echo, push, broadcast, the wire, and push vs polling.

Starts Server.py's routes in this process on a free port, then:

  1. an echo round trip (text and binary) over one connection;
  2. the server speaking first: /time ticks arrive without a request;
  3. a three-client broadcast: one message, every member gets it once;
  4. an oversized message: that client is closed with 1009, the others carry on;
  5. the handshake and frames by hand, byte by byte (handshake.py);
  6. the same 100 updates by HTTP polling every 100 ms and by WebSocket push.

Prints `Lesson: ...` with the measured latency and byte ratios and writes the
plot to out/polling_vs_push.png (images/ with --save-images). If push was not
both faster and smaller than polling, or a step misbehaved, it prints
`Lesson not shown: ...` with what it saw instead and exits 1.

    python WebSockets/demo.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import handshake
import polling_vs_websocket
import Server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

TICK_INTERVAL = 0.2  # seconds between /time ticks in the demo
DEMO_MAX_SIZE = 64 * 1024


def heading(text: str) -> None:
    print(f"\n== {text}")


def table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        print(("  " + "  ".join(cells)).rstrip())


async def echo_round_trip(base: str) -> bool:
    heading("1. Echo: one connection, a message out and straight back")
    async with connect(f"{base}/echo") as ws:
        rows = [("sent", "received", "round trip")]
        ok = True
        for message in ("hello", b"\x00\x01\x02\xff"):
            start = time.perf_counter()
            await ws.send(message)
            reply = await ws.recv()
            elapsed = (time.perf_counter() - start) * 1000
            ok &= reply == message
            rows.append((repr(message), repr(reply), f"{elapsed:.2f} ms"))
    table(rows)
    print("  text comes back as text (str), binary as binary (bytes).")
    return ok


async def server_push(base: str) -> bool:
    heading(f"2. Server push: /time speaks first, every {TICK_INTERVAL:g} s, asked nothing")
    async with connect(f"{base}/time") as ws:
        ticks = [json.loads(await ws.recv()) for _ in range(3)]
    table(
        [("tick", "server_time")] + [(str(t["tick"]), t["server_time"]) for t in ticks],
    )
    print("  the client sent nothing after the handshake; the server started talking.")
    return [t["tick"] for t in ticks] == [1, 2, 3]


async def three_client_broadcast(base: str) -> bool:
    heading("3. Broadcast: three clients in /broadcast, one of them speaks")
    names = ("alice", "bob", "carol")
    clients = [await connect(f"{base}/broadcast") for _ in names]
    try:
        await asyncio.sleep(0.05)  # every handler has joined the room
        await clients[0].send("alice: lunch at noon?")
        received = []
        for ws in clients:
            got = [await asyncio.wait_for(ws.recv(), 5)]
            try:  # anything more would be a duplicate
                got.append(await asyncio.wait_for(ws.recv(), 0.2))
            except TimeoutError:
                pass
            received.append(got)
    finally:
        for ws in clients:
            await ws.close()
    table(
        [("client", "messages received")]
        + [(name, ", ".join(map(repr, got))) for name, got in zip(names, received, strict=True)]
    )
    print("  the server wrote it to every member, the sender included, exactly once.")
    return all(got == ["alice: lunch at noon?"] for got in received)


async def oversized_message(base: str) -> bool:
    heading(f"4. A message over --max-size ({DEMO_MAX_SIZE // 1024} KiB) closes only its sender")
    bystander = await connect(f"{base}/echo")
    offender = await connect(f"{base}/echo", max_size=None)
    try:
        await offender.send(b"x" * (DEMO_MAX_SIZE + 1))
        try:
            await asyncio.wait_for(offender.recv(), 5)
        except ConnectionClosed:
            pass
        await bystander.send("still there?")
        reply = await asyncio.wait_for(bystander.recv(), 5)
    finally:
        await offender.close()
        await bystander.close()
    code, reason = offender.close_code, offender.close_reason
    table(
        [
            ("client", "outcome"),
            ("sent 64 KiB + 1", f"closed by the server: code {code} ({reason})"),
            ("the other one", f"echo {reply!r}"),
        ]
    )
    return code == 1009 and reply == "still there?"


def wire_walk_through(base: str) -> bool:
    heading("5. The protocol by hand on a raw socket (handshake.py)")
    seen = handshake.walk_through(
        f"{base}/echo", "Hi", out=lambda line: print(f"  {line}".rstrip())
    )
    return bool(seen["accept_ok"]) and seen["echo"] == "Hi" and seen["close_code"] == 1000


async def main_async(updates: int, poll_ms: float, mean_gap_ms: float, plot_path: Path) -> int:
    async with Server.serve_routes("127.0.0.1", 0, interval=TICK_INTERVAL) as server:
        port = server.sockets[0].getsockname()[1]
        base = f"ws://127.0.0.1:{port}"
        print(f"Server.py's routes are listening on {base} (in this process)")
        checks = {
            "echo": await echo_round_trip(base),
            "push": await server_push(base),
            "broadcast": await three_client_broadcast(base),
            "1009": await oversized_message(base),
            "wire": await asyncio.to_thread(wire_walk_through, base),
        }

    heading(
        f"6. Push vs polling: {updates} updates (about one per {mean_gap_ms:g} ms), "
        f"polled every {poll_ms:g} ms"
    )
    print("  (bytes counted at a TCP relay in front of each server: headers and framing too)")
    polling, push = await polling_vs_websocket.compare(updates, poll_ms, mean_gap_ms)
    polling_vs_websocket.print_table(polling, push, poll_ms)
    try:
        polling_vs_websocket.plot(polling, push, poll_ms, plot_path)
        print(f"  plot: {plot_path}")
    except OSError as err:
        checks["plot"] = False
        print(f"  cannot write the plot to {plot_path}: {err}")

    failed = [name for name, ok in checks.items() if not ok]
    latency_ratio = polling.percentile(50) / push.percentile(50)
    byte_ratio = polling.traffic.total / push.traffic.total
    measured = (
        f"push delivered updates in {push.percentile(50):.1f} ms at p50 against "
        f"{polling.percentile(50):.0f} ms for polling every {poll_ms:g} ms "
        f"({latency_ratio:.0f}x faster), with {byte_ratio:.1f}x fewer bytes on the wire"
    )
    if failed:
        print(f"\nLesson not shown: these steps did not behave as described: {', '.join(failed)}")
        return 1
    if latency_ratio <= 1 or byte_ratio <= 1:
        print(f"\nLesson not shown: push was not both faster and smaller: {measured}")
        return 1
    print(f"\nLesson: {measured}; one connection carries both directions.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--updates", type=int, default=100, help="updates in the polling comparison"
    )
    parser.add_argument("--poll-ms", type=float, default=100.0, help="polling interval")
    parser.add_argument(
        "--mean-gap-ms", type=float, default=100.0, help="mean time between updates"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        help="where to write the latency and bytes plot (default: out/polling_vs_push.png)",
    )
    parser.add_argument(
        "--save-images",
        action="store_true",
        help="write the plot to images/polling_vs_push.png, the picture the README shows",
    )
    args = parser.parse_args(argv)
    if args.plot is None:
        args.plot = polling_vs_websocket.default_plot(args.save_images)
    polling_vs_websocket.check_run(parser, args.updates, args.poll_ms, args.mean_gap_ms)
    polling_vs_websocket.check_plot_path(parser, args.plot)
    return asyncio.run(main_async(args.updates, args.poll_ms, args.mean_gap_ms, args.plot))


if __name__ == "__main__":
    sys.exit(main())
