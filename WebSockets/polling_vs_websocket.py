"""Push vs polling: one stream of updates delivered both ways, timed and weighed.

A feed produces N updates at random moments (a price ticker, say). Two clients
follow it at the same time:

  (a) HTTP short polling: GET /updates?after=<last seen> every P ms, over one
      keep-alive connection (aiohttp client and server);
  (b) WebSocket push: one connection, the server sends each update the moment
      it exists (the `websockets` library).

Each client talks through a small TCP relay that counts every byte in both
directions: HTTP request and response headers, WebSocket handshake and frame
headers, all of it. Latency is from the moment an update exists to the moment
the client has parsed it. See the README's "Push vs polling, measured".

    python WebSockets/polling_vs_websocket.py --updates 100 --poll-ms 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import ClientSession, web
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

HERE = Path(__file__).resolve().parent
PLOT_NAME = "polling_vs_push.png"
OUT = HERE / "out"  # git-ignored: what a plain run writes
IMAGES = HERE / "images"  # the README's picture: only --save-images rewrites it
DEFAULT_UPDATES = 100
DEFAULT_MEAN_GAP_MS = 100.0  # average time between updates (exponentially distributed)
DEFAULT_POLL_MS = 100.0
MAX_UPDATES = 100_000  # a run of hours at the default pace: enough
MS_RANGE = (1.0, 10_000.0)  # for --poll-ms and --mean-gap-ms: finer is a busy loop, longer a nap


@dataclass
class Traffic:
    """Bytes that crossed one relay, by direction."""

    up: int = 0  # client to server
    down: int = 0  # server to client

    @property
    def total(self) -> int:
        return self.up + self.down


@dataclass
class Delivery:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    traffic: Traffic = field(default_factory=Traffic)
    exchanges: int = 0  # HTTP requests made, or WebSocket messages received

    def percentile(self, p: float) -> float:
        return percentile(self.latencies_ms, p)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank p-th percentile: the value below which p% of them fall."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def print_rows(rows: list[tuple[str, ...]]) -> None:
    """An aligned table: the first column to the left, figures to the right,
    a rule under the header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        print(("  " + "  ".join(cells)).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


class Feed:
    """The updates, with the moment each one came to exist."""

    def __init__(self) -> None:
        self.updates: list[dict] = []
        self.created: dict[int, float] = {}  # seq -> time.perf_counter()
        self.changed = asyncio.Condition()

    async def publish(self, seq: int, price: float) -> None:
        async with self.changed:
            self.created[seq] = time.perf_counter()
            self.updates.append({"seq": seq, "symbol": "ACME", "price": round(price, 2)})
            self.changed.notify_all()

    def after(self, seq: int) -> list[dict]:
        return [u for u in self.updates if u["seq"] > seq]


async def start_relay(target_port: int, traffic: Traffic) -> asyncio.Server:
    """A TCP relay on a free port that forwards to target_port and counts bytes."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        try:
            while data := await reader.read(65536):
                if up:
                    traffic.up += len(data)
                else:
                    traffic.down += len(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_r, server_w, True), pipe(server_r, client_w, False))

    return await asyncio.start_server(relay, "127.0.0.1", 0)


def port_of(server) -> int:
    return server.sockets[0].getsockname()[1]


async def poll(url: str, feed: Feed, count: int, poll_ms: float, result: Delivery) -> None:
    """Ask again and again; record when each update first shows up."""
    last = 0
    async with ClientSession() as session:
        while last < count:
            async with session.get(url, params={"after": str(last)}) as response:
                body = await response.read()
            now = time.perf_counter()
            result.exchanges += 1
            for update in json.loads(body):
                result.latencies_ms.append((now - feed.created[update["seq"]]) * 1000)
                last = update["seq"]
            await asyncio.sleep(poll_ms / 1000)


async def listen(url: str, feed: Feed, count: int, result: Delivery) -> None:
    """Hold one connection open; every update arrives on its own."""
    async with connect(url, compression=None) as ws:
        while len(result.latencies_ms) < count:
            update = json.loads(await ws.recv())
            result.latencies_ms.append((time.perf_counter() - feed.created[update["seq"]]) * 1000)
            result.exchanges += 1


async def compare(
    updates: int = DEFAULT_UPDATES,
    poll_ms: float = DEFAULT_POLL_MS,
    mean_gap_ms: float = DEFAULT_MEAN_GAP_MS,
    seed: int = 1,
) -> tuple[Delivery, Delivery]:
    """Run both deliveries side by side over the same feed; return (polling, push)."""
    feed = Feed()
    polling, push = Delivery("HTTP polling"), Delivery("WebSocket push")

    async def updates_after(request: web.Request) -> web.Response:
        after = int(request.query.get("after", "0"))
        return web.json_response(feed.after(after))

    app = web.Application()
    app.router.add_get("/updates", updates_after)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    http_site = web.TCPSite(runner, "127.0.0.1", 0)
    await http_site.start()
    http_port = runner.addresses[0][1]

    async def push_updates(ws: ServerConnection) -> None:
        """Send each update as soon as it exists, until the client hangs up."""

        async def send_each() -> None:
            sent = 0
            while True:
                async with feed.changed:
                    await feed.changed.wait_for(lambda n=sent: len(feed.updates) > n)
                    fresh = feed.updates[sent:]
                for update in fresh:
                    await ws.send(json.dumps(update))
                sent += len(fresh)

        # The sender waits on the feed, not on the socket, so it would never
        # notice the client leaving; the handler watches for that and stops it.
        sender = asyncio.create_task(send_each())
        try:
            await ws.wait_closed()
        finally:
            sender.cancel()

    # compression=None on both ends: this compares protocol overhead, not gzip.
    async with serve(push_updates, "127.0.0.1", 0, compression=None) as ws_server:
        http_relay = await start_relay(http_port, polling.traffic)
        ws_relay = await start_relay(port_of(ws_server), push.traffic)
        clients = [
            asyncio.create_task(
                poll(
                    f"http://127.0.0.1:{port_of(http_relay)}/updates",
                    feed,
                    updates,
                    poll_ms,
                    polling,
                )
            ),
            asyncio.create_task(
                listen(f"ws://127.0.0.1:{port_of(ws_relay)}/", feed, updates, push)
            ),
        ]
        await asyncio.sleep(0.2)  # both clients connected before the first update
        rng = random.Random(seed)
        price = 100.0
        for seq in range(1, updates + 1):
            await asyncio.sleep(rng.expovariate(1000 / mean_gap_ms))
            price += rng.uniform(-1, 1)
            await feed.publish(seq, price)
        await asyncio.wait_for(asyncio.gather(*clients), timeout=30)
        for relay in (http_relay, ws_relay):
            relay.close()
    await runner.cleanup()
    return polling, push


def print_table(polling: Delivery, push: Delivery, poll_ms: float) -> None:
    rows = [
        ("", "polling", "push", "polling / push"),
        (
            "latency p50 (ms)",
            f"{polling.percentile(50):.2f}",
            f"{push.percentile(50):.2f}",
            f"{polling.percentile(50) / push.percentile(50):.0f}x",
        ),
        (
            "latency p99 (ms)",
            f"{polling.percentile(99):.2f}",
            f"{push.percentile(99):.2f}",
            f"{polling.percentile(99) / push.percentile(99):.0f}x",
        ),
        ("bytes client->server", f"{polling.traffic.up:,}", f"{push.traffic.up:,}", ""),
        ("bytes server->client", f"{polling.traffic.down:,}", f"{push.traffic.down:,}", ""),
        (
            "bytes in all",
            f"{polling.traffic.total:,}",
            f"{push.traffic.total:,}",
            f"{polling.traffic.total / push.traffic.total:.1f}x",
        ),
        ("requests / messages", f"{polling.exchanges:,}", f"{push.exchanges:,}", ""),
    ]
    print(f"  {len(push.latencies_ms)} updates, polling every {poll_ms:g} ms")
    print_rows(rows)


def plot(polling: Delivery, push: Delivery, poll_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    for delivery, color in ((polling, "tab:orange"), (push, "tab:blue")):
        ordered = sorted(delivery.latencies_ms)
        share = [(i + 1) / len(ordered) for i in range(len(ordered))]
        left.step(ordered, share, where="post", color=color, label=delivery.name)
    left.set_xscale("log")
    left.set_xlabel("delivery latency (ms, log scale)")
    left.set_ylabel("share of updates delivered")
    left.set_title(f"{len(push.latencies_ms)} updates, polling every {poll_ms:g} ms")
    left.grid(alpha=0.3)
    left.legend(loc="lower right")

    names = [polling.name, push.name]
    ups = [polling.traffic.up / 1024, push.traffic.up / 1024]
    downs = [polling.traffic.down / 1024, push.traffic.down / 1024]
    right.bar(names, ups, color="tab:gray", label="client to server")
    right.bar(names, downs, bottom=ups, color="tab:green", label="server to client")
    right.set_ylabel("KiB on the wire")
    right.set_title("bytes for the same updates")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The same updates by HTTP polling and by WebSocket push."
    )
    parser.add_argument("--updates", type=int, default=DEFAULT_UPDATES, help="how many updates")
    parser.add_argument("--poll-ms", type=float, default=DEFAULT_POLL_MS, help="polling interval")
    parser.add_argument(
        "--mean-gap-ms", type=float, default=DEFAULT_MEAN_GAP_MS, help="mean time between updates"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--plot", type=Path, help=f"where to write the plot (default: out/{PLOT_NAME})"
    )
    parser.add_argument(
        "--save-images",
        action="store_true",
        help=f"write the plot to images/{PLOT_NAME}, the picture the README shows",
    )
    args = parser.parse_args(argv)
    if args.plot is None:
        args.plot = default_plot(args.save_images)
    check_run(parser, args.updates, args.poll_ms, args.mean_gap_ms)
    check_plot_path(parser, args.plot)
    polling, push = asyncio.run(compare(args.updates, args.poll_ms, args.mean_gap_ms, args.seed))
    print_table(polling, push, args.poll_ms)
    try:
        plot(polling, push, args.poll_ms, args.plot)
    except OSError as err:
        print(f"error: cannot write the plot to {args.plot}: {err}", file=sys.stderr)
        return 1
    print(f"  plot: {args.plot}")
    return 0


def default_plot(save_images: bool) -> Path:
    """out/ for a plain run (git-ignored); images/, the README's picture, with --save-images."""
    return (IMAGES if save_images else OUT) / PLOT_NAME


def check_run(
    parser: argparse.ArgumentParser, updates: int, poll_ms: float, mean_gap_ms: float
) -> None:
    """Refuse a run that cannot work: nan or inf sleeps hung it or ended it in a traceback."""
    if not 1 <= updates <= MAX_UPDATES:
        parser.error(f"--updates must be in 1..{MAX_UPDATES:,}, got {updates}")
    low, high = MS_RANGE
    for flag, value in (("--poll-ms", poll_ms), ("--mean-gap-ms", mean_gap_ms)):
        if not low <= value <= high:  # written so that nan fails too
            parser.error(f"{flag} must be in {low:g}..{high:g} ms, got {value:g}")


def check_plot_path(parser: argparse.ArgumentParser, path: Path) -> None:
    """Refuse an unusable --plot before the run, not after it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(f"--plot: cannot create {path.parent}: {err}")
    if path.is_dir():
        parser.error(f"--plot: {path} is a directory; give a file name ending in .png")


if __name__ == "__main__":
    sys.exit(main())
