"""RealTimeChat bench: fan-out to N clients in one room, gevent against a thread per connection.

For each server mode, app.py runs as its own process and this process runs N
clients (N = 10, 50, 200) in one room. 50 messages are sent one at a time,
each by the next client in turn, and each is timed from the send until the
last of the N clients has it (the sender's own copy included): p50 and p99
over the 50, messages lost, and the server's threads and memory while it
holds the N connections. Then one gevent process holds --hold idle clients
and broadcasts to all of them.

The clients are deliberately thin, so that they measure the server and not
themselves: Socket.IO spoken by hand (Engine.IO v4 text frames) over the
`websockets` library, all of them in one asyncio event loop.

    python RealTimeChat/bench.py                 # ~1 min: both modes, then 2,000 held
    python RealTimeChat/bench.py --sizes 10 50 --hold 0
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

HERE = Path(__file__).resolve().parent
APP = HERE / "app.py"
OUT = HERE / "out"  # git-ignored: the plot of each run
PICTURE = HERE / "images" / "fanout.png"  # the README's copy: only --save-images rewrites it
SIZES = (10, 50, 200)  # clients in the room
MESSAGES = 50  # broadcasts timed per round
ROUNDS = 3  # per size; the table shows the median round, so one noisy moment does not decide
HOLD = 2_000  # idle clients one gevent process is asked to hold
HOLD_MESSAGES = 5
WAIT = 15.0  # s: a message not everywhere by then counts as lost
CONNECT_BATCH = 100  # clients connecting at once: a crowd, not a stampede
REFILL = 1.1  # s between rounds: every sender's token bucket (5/s, burst 5) is full again
SETTLE = 0.5  # s of silence: join and presence traffic has drained, timing may start
MODES = {
    # name: (app.py flags, what it is)
    "gevent": ([], "gevent + gevent-websocket: one thread, a greenlet per connection"),
    "threading": (["--threading"], "Werkzeug's threaded server + simple-websocket"),
}
TARGET_CLIENTS = 200  # the target: 200 clients, one process, 2 cores, 0 lost


class WireClient:
    """One Socket.IO client, written out: the frames are the protocol.

    Engine.IO v4 over a WebSocket sends text frames that start with a type
    digit: `0` open (the server's), `2`/`3` ping/pong, `4` a message. A
    Socket.IO packet rides in a message: `40` connect, `42[event, data]` an
    event, `42<id>[...]` an event that wants an ack, `43<id>[reply]` the ack.
    """

    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals
        self.ws: ClientConnection | None = None
        self._acks: dict[int, asyncio.Future] = {}
        self._ack_ids = itertools.count(1)
        self._reader: asyncio.Task | None = None

    async def connect(self, url: str) -> None:
        ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        # Engine.IO pings on its own schedule, so the WebSocket-level keepalive stays off.
        self.ws = await connect(
            ws_url, ping_interval=None, max_size=None, compression=None, close_timeout=2
        )
        opening = await self.ws.recv()
        if not opening.startswith("0"):
            raise ConnectionError(f"expected an Engine.IO open packet, got {opening[:60]!r}")
        await self.ws.send("40")  # join the default namespace "/"
        while not (await self.ws.recv()).startswith("40"):
            pass  # events the connect handler emits may come first
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            self.arrivals.heard()
            if frame == "2":
                await self.ws.send("3")
            elif frame.startswith('42["message"'):
                self.arrivals.arrived(json.loads(frame[2:])[1]["id"])
            elif frame.startswith("43"):
                ack_id, _, payload = frame[2:].partition("[")
                future = self._acks.pop(int(ack_id), None)
                if future and not future.done():
                    future.set_result(json.loads("[" + payload)[0])

    async def call(self, event: str, data: object) -> dict:
        ack_id = next(self._ack_ids)
        future = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = future
        await self.ws.send(f"42{ack_id}{json.dumps([event, data])}")
        return await asyncio.wait_for(future, WAIT)

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
        if self.ws:
            await self.ws.send("41")  # leave the namespace: the server hangs up its end too
            await self.ws.close()


class Arrivals:
    """When each message reached each client; `complete` fires when all `expected` have it."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.times: dict[int, list[float]] = defaultdict(list)
        self.complete: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.last_frame = time.perf_counter()

    def heard(self) -> None:
        """Any frame arrived: the join and presence traffic is not over yet."""
        self.last_frame = time.perf_counter()

    async def quiet(self, seconds: float, limit: float = 120.0) -> None:
        """Wait until no frame has arrived for `seconds` (at most `limit`)."""
        deadline = time.perf_counter() + limit
        while time.perf_counter() - self.last_frame < seconds:
            if time.perf_counter() > deadline:
                return
            await asyncio.sleep(0.1)

    def arrived(self, message_id: int) -> None:
        times = self.times[message_id]
        times.append(time.perf_counter())
        if len(times) == self.expected:
            self.complete[message_id].set()


def server_resources(pid: int) -> tuple[int, float]:
    """(threads, resident MB) of a process, from Linux's /proc; (0, 0.0) elsewhere."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0.0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024


async def connect_room(url: str, room: str, size: int, arrivals: Arrivals) -> list[WireClient]:
    clients = [WireClient(arrivals) for _ in range(size)]
    for start in range(0, size, CONNECT_BATCH):
        batch = clients[start : start + CONNECT_BATCH]
        await asyncio.gather(*(client.connect(url) for client in batch))
        joins = [
            c.call("join", {"room": room, "name": f"c{start + i}"}) for i, c in enumerate(batch)
        ]
        for reply in await asyncio.gather(*joins):
            if "error" in reply:
                raise RuntimeError(f"join refused: {reply['error']}")
    return clients


async def fan_out(clients: list[WireClient], arrivals: Arrivals, messages: int) -> dict:
    """Send `messages` one at a time, rotating senders; time each to its last arrival."""
    latencies, lost = [], 0
    for n in range(messages):
        sender = clients[n % len(clients)]  # rotating keeps each under its 5 messages/s
        started = time.perf_counter()
        ack = await sender.call("message", {"text": f"bench {n}"})
        if "error" in ack:
            raise RuntimeError(f"message refused: {ack['error']}")
        try:
            await asyncio.wait_for(arrivals.complete[ack["id"]].wait(), WAIT)
            latencies.append((max(arrivals.times[ack["id"]]) - started) * 1000)
        except TimeoutError:
            lost += arrivals.expected - len(arrivals.times[ack["id"]])
    return {
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": percentile(latencies, 0.99) if latencies else float("nan"),
        "lost": lost,
    }


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def measure(url: str, pid: int, size: int, messages: int, rounds: int) -> dict:
    arrivals = Arrivals(expected=size)
    started = time.perf_counter()
    clients = await connect_room(url, f"bench{size}", size, arrivals)
    connect_seconds = time.perf_counter() - started
    await arrivals.quiet(SETTLE)
    threads, rss_mb = server_resources(pid)
    try:
        runs = []
        for _ in range(rounds):
            runs.append(await fan_out(clients, arrivals, messages))
            await asyncio.sleep(REFILL)
    finally:
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
    return {
        "clients": size,
        "threads": threads,
        "rss_mb": rss_mb,
        "connect_s": connect_seconds,
        "p50": statistics.median(run["p50"] for run in runs),  # the median round
        "p99": statistics.median(run["p99"] for run in runs),
        "lost": sum(run["lost"] for run in runs),
        "sent": messages * rounds,
    }


class Server:
    """app.py in its own process, so the server and the clients do not share a CPU budget."""

    def __init__(self, mode: str, db: Path) -> None:
        flags, _ = MODES[mode]
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), "--port", "0", "--db", str(db), *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("Listening on "):
            self.proc.kill()
            sys.exit(f"app.py ({mode}) did not start: {line}{self.proc.stdout.read()}")
        self.url = line.split()[-1]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_mode(mode: str, sizes: list[int], rounds: int, workdir: Path) -> list[dict]:
    server = Server(mode, workdir / f"{mode}.db")
    rows = []
    try:
        for size in sizes:
            print(f"  {mode}: {size} clients...", flush=True)
            row = asyncio.run(measure(server.url, server.proc.pid, size, MESSAGES, rounds))
            rows.append({"mode": mode, **row})
    finally:
        server.stop()
    return rows


def run_hold(size: int, workdir: Path) -> dict:
    server = Server("gevent", workdir / "hold.db")
    try:
        print(f"  gevent: holding {size:,} clients...", flush=True)
        return {
            "mode": "gevent",
            **asyncio.run(measure(server.url, server.proc.pid, size, HOLD_MESSAGES, 1)),
        }
    finally:
        server.stop()


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores{', ' + model if model else ''};"
        f" Python {platform.python_version()}; {platform.system()} {platform.release()};"
        f" load average {load:.2f} at the start"
    )


def print_table(rows: list[dict]) -> None:
    print(
        f"  {'mode':<10} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5}"
        f" {'threads':>7} {'RSS MB':>7} {'connect s':>9}"
    )
    for r in rows:
        print(
            f"  {r['mode']:<10} {r['clients']:>7,} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['lost']:>5}"
            f" {r['threads']:>7} {r['rss_mb']:>7.0f} {r['connect_s']:>9.1f}"
        )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, threads) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        sizes = [r["clients"] for r in mine]
        line = latency.plot(sizes, [r["p50"] for r in mine], "o-", label=f"{mode} p50")[0]
        latency.plot(
            sizes, [r["p99"] for r in mine], "o--", color=line.get_color(), label=f"{mode} p99"
        )
        threads.plot(sizes, [r["threads"] for r in mine], "o-", label=mode)
    latency.set(
        xscale="log",
        xlabel="clients in the room",
        ylabel="ms until all have it",
        title="Fan-out of one message to the whole room",
    )
    threads.set(
        xscale="log",
        yscale="log",
        xlabel="clients connected",
        ylabel="server OS threads",
        title="What holding the clients costs",
    )
    for axes in (latency, threads):
        axes.grid(alpha=0.3)
        axes.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(SIZES),
        help=f"clients in the room (default {' '.join(map(str, SIZES))})",
    )
    parser.add_argument(
        "--hold",
        type=int,
        default=HOLD,
        help=f"idle clients for one gevent process to hold (default {HOLD}; 0 skips)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help=f"rounds of {MESSAGES} messages (default {ROUNDS})",
    )
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--save-images",
        action="store_true",
        help=f"write the plot to {PICTURE.relative_to(HERE.parent)} (default: out/fanout.png)",
    )
    args = parser.parse_args()
    if any(size < 2 for size in args.sizes) or args.hold < 0 or args.rounds < 1:
        parser.error("--sizes need at least 2 clients each, --hold >= 0 and --rounds >= 1")
    print(f"RealTimeChat fan-out bench on {machine()}")
    for mode in args.modes:
        print(f"  {mode:<10} {MODES[mode][1]}")
    with tempfile.TemporaryDirectory(prefix="realtimechat-bench-") as tmp:
        rows = [
            r for mode in args.modes for r in run_mode(mode, args.sizes, args.rounds, Path(tmp))
        ]
        hold = run_hold(args.hold, Path(tmp)) if args.hold else None
    print(
        f"\nFan-out: {args.rounds} rounds of {MESSAGES} messages per size, each timed until every"
        " client has it; p50/p99 of the median round, lost over all rounds"
    )
    print_table(rows)
    by = {(r["mode"], r["clients"]): r for r in rows}
    for size in args.sizes:
        if ("gevent", size) in by and ("threading", size) in by:
            g, t = by[("gevent", size)], by[("threading", size)]
            print(
                f"  {size:>4} clients: threading/gevent p50 {t['p50'] / g['p50']:.2f}x,"
                f" p99 {t['p99'] / g['p99']:.2f}x, threads {t['threads']} vs {g['threads']}"
            )
    if hold:
        print(f"\nHolding {args.hold:,} clients on one gevent process ({HOLD_MESSAGES} broadcasts)")
        print_table([hold])
        notices = args.hold * (args.hold - 1) // 2
        print(
            f"  (joining one room one by one sent {notices:,} presence notices: README, Presence)"
        )
    picture = PICTURE if args.save_images else OUT / "fanout.png"
    plot(rows + ([hold] if hold else []), picture)
    print(f"\nPlot: {picture.relative_to(HERE.parent)}")
    verdicts = []  # one per target: True if met
    target = by.get(("gevent", TARGET_CLIENTS))
    if target:
        verdicts.append(target["lost"] == 0)
        verdict = "PASS" if target["lost"] == 0 else "FAIL"
        print(
            f"{verdict}  {TARGET_CLIENTS} clients in one room, one gevent process:"
            f" {target['lost']} lost over {target['sent']} broadcasts"
            f" (p50 {target['p50']:.1f} ms, p99 {target['p99']:.1f} ms)"
        )
    if hold:
        verdicts.append(hold["lost"] == 0)
        verdict = "PASS" if hold["lost"] == 0 else "FAIL"
        print(
            f"{verdict}  {args.hold:,} clients held by one gevent process:"
            f" {hold['lost']} lost over {HOLD_MESSAGES} broadcasts, {hold['threads']} threads,"
            f" {hold['rss_mb']:.0f} MB"
        )
    if target:
        print(
            f"headline: {TARGET_CLIENTS} clients in one room on one gevent process got every"
            f" message, p99 {target['p99']:.1f} ms from send to the last of them"
        )
    print(f"targets: {sum(verdicts)} of {len(verdicts)} met")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
