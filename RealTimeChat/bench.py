"""RealTimeChat bench: fair share under a flood, and fan-out beside Node.js's Socket.IO server.

1. Fair share. Five bystanders take turns sending messages to app.py and time
   each ack: first on a quiet server, then while another process floods it
   with each event type in turn (20,000 events per connection as fast as it
   can write them, reconnecting whenever the server hangs up on it). Target:
   the bystanders' p99 under the worst flood is at most 2x the quiet p99.
2. Fan-out. N clients in one room (200, then 2,000); messages are sent one
   at a time, each by the next client in turn, and each is timed from the
   send until the last of the N has it. The same clients do the same against
   the reference peer, Node.js with npm `socket.io` (node_chat_server.js,
   pinned in package.json), in the same run. Target: our p99 at 2,000
   clients is at most 1.5x Node's, nothing lost, every ack still meaning "on
   disk" (both servers fsync each message before acking it).

The clients are deliberately thin, so that they measure the servers and not
themselves: Socket.IO spoken by hand (Engine.IO v4 text frames) over the
`websockets` library, all of them in one asyncio event loop; the flooder is
a separate process. On 2 or more cores the server runs on core 0 and the
load (the fan-out clients, the flooder) on core 1, as if each had its own
machine; the bystanders, which need little, share the server's core. Each
table says how much CPU the server used and how long it waited for its
core while other processes had it: on a shared machine, that wait is the
part of a latency that is not the server's.

    python RealTimeChat/bench.py                      # ~2 min
    python RealTimeChat/bench.py --sizes 200 --servers gevent node
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect as sync_connect

HERE = Path(__file__).resolve().parent
APP = HERE / "app.py"
NODE_SERVER = HERE / "node_chat_server.js"
OUT = HERE / "out"  # git-ignored: the plot of each run
PICTURE = HERE / "images" / "fanout.png"  # the README's copy: only --save-images rewrites it
SERVERS = {
    # name: (command line after --port 0, what it is)
    "gevent": ([sys.executable, str(APP)], "app.py on gevent: one thread, a greenlet per client"),
    "node": (["node", str(NODE_SERVER)], "Node.js + npm socket.io 4.8.4, the reference server"),
    "threading": (
        [sys.executable, str(APP), "--threading"],
        "app.py on Werkzeug's threads + simple-websocket",
    ),
}
SIZES = (200, 2_000)  # clients in the room
MESSAGES = {200: 50, 2_000: 30}  # broadcasts timed per round at each size (others: 50)
ROUNDS = {200: 3, 2_000: 1}  # the table shows the median round (others: 1)
WAIT = 15.0  # s: a message not everywhere by then counts as lost
CONNECT_BATCH = 100  # clients connecting at once: a crowd, not a stampede
REFILL = 1.1  # s between rounds: every sender's token bucket (5/s, burst 5) is full again
SETTLE = 0.5  # s of silence: join and presence traffic has drained, timing may start
BYSTANDERS = 5  # taking turns to send
FAIR_SAMPLES = 120  # bystander acks timed per phase: p99 is the second slowest
FAIR_PACE = 0.05  # s between bystander sends: each of the 5 sends 4 messages a second
FLOOD_EVENTS = 20_000  # events per flooding connection
FLOODS = {
    "rooms": ['42["rooms"]'],
    "join/leave": ['42["join",{"room":"fair","name":"flooder"}]', '42["leave"]'],
    "typing": ['42["typing",{"typing":true}]'],
    "message": ['42["message",{"text":"flood"}]'],
    "unknown": ['42["shout",{"text":"flood"}]'],
}
# On 2+ cores each side gets a core of its own, as it would on its own machine:
# the server (and, for fair share, the bystanders, which need little) on one,
# the load on the other: the fan-out clients, or the flooder. Otherwise the
# flooder's own CPU, spent connecting and writing 600 KB a time, would slow
# the server it attacks, and the bench would measure the shared machine.
SERVER_CORE, LOAD_CORE = 0, 1
FAIR_TARGET = 2.0  # the p99 under flood may be at most this times the quiet p99
NODE_TARGET = 1.5  # our p99 at 2,000 clients may be at most this times Node's
TARGET_CLIENTS = 2_000


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
        sender = clients[n % len(clients)]  # rotating keeps each under its 5 messages a second
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


def flood(url: str, frames: list[str], seconds: float, report) -> None:
    """A flooding client, run in its own process: flood, reconnect, flood, until time is up.

    The 20,000 events are encoded as WebSocket frames once and written with
    one `sendall` per connection: the server gets them all at once, and the
    flooder spends its CPU on connecting, not on encoding (on 2 cores, a
    flooder busy encoding would slow the bystanders by itself).
    """
    pin(LOAD_CORE)  # the attacker's CPU is not the server's
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    events = [Frame(Opcode.TEXT, frames[n % len(frames)].encode()) for n in range(FLOOD_EVENTS)]
    burst = b"".join(event.serialize(mask=True) for event in events)
    deadline = time.monotonic() + seconds
    hangups = sent = 0
    while time.monotonic() < deadline:
        try:
            with sync_connect(ws_url, open_timeout=5, close_timeout=1, max_size=None) as ws:
                ws.recv(timeout=WAIT)  # Engine.IO open
                ws.send("40")
                ws.send('42["join",{"room":"fair","name":"flooder"}]')
                ws.socket.sendall(burst)  # beside the library: 20,000 frames in one write
                sent += FLOOD_EVENTS
                while time.monotonic() < deadline:  # all written: wait for the hang-up
                    ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed:
            hangups += 1
        except (TimeoutError, OSError):
            pass
    report.put({"sent": sent, "hangups": hangups})


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (user + system), from Linux's /proc; 0.0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def waited_seconds(pid: int) -> float:
    """Time the process's threads were ready to run but waited for a core (Linux schedstat)."""
    total = 0.0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return total / 1e9


def can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


def pin(core: int, pid: int = 0) -> None:
    """Run a process (this one by default), all its threads, on one core, where possible."""
    if not can_pin():
        return
    tasks = os.listdir(f"/proc/{pid}/task") if pid else [0]
    for task in tasks:
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(task), {core})


async def fair_share(url: str, pid: int) -> dict[str, dict]:
    """Bystander ack times, quiet and under each flood: {phase: {p50, p99, cpu, ...}}."""
    arrivals = Arrivals(expected=BYSTANDERS)
    bystanders = await connect_room(url, "fair", BYSTANDERS, arrivals)
    await asyncio.sleep(REFILL)
    results = {}
    try:
        for phase in ["quiet", *FLOODS]:
            print(f"  fair share: {phase}...", flush=True)
            flooder, report = None, multiprocessing.Queue()
            seconds = FAIR_SAMPLES * FAIR_PACE + 1.0
            if phase != "quiet":
                flooder = multiprocessing.Process(
                    target=flood, args=(url, FLOODS[phase], seconds, report), daemon=True
                )
                flooder.start()
                await asyncio.sleep(0.5)  # the flood is under way
            acks, began = [], time.perf_counter()
            cpu_before, waited_before = cpu_seconds(pid), waited_seconds(pid)
            for n in range(FAIR_SAMPLES):
                started = time.perf_counter()
                sender = bystanders[n % BYSTANDERS]
                ack = await sender.call("message", {"text": f"{phase} {n}"})
                if "error" in ack:
                    raise RuntimeError(f"a bystander was refused: {ack['error']}")
                acks.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(FAIR_PACE)
            elapsed = time.perf_counter() - began
            stats = {
                "p50": statistics.median(acks),
                "p99": percentile(acks, 0.99),
                "cpu": (cpu_seconds(pid) - cpu_before) / elapsed,
                "waited": (waited_seconds(pid) - waited_before) / elapsed,
            }
            if flooder:
                flooder.join(timeout=seconds + WAIT)
                stats |= report.get(timeout=WAIT) if not report.empty() else {}
            results[phase] = stats
            await asyncio.sleep(REFILL)
    finally:
        await asyncio.gather(*(client.close() for client in bystanders), return_exceptions=True)
    return results


async def measure(url: str, pid: int, size: int) -> dict:
    messages, rounds = MESSAGES.get(size, 50), ROUNDS.get(size, 1)
    arrivals = Arrivals(expected=size)
    started = time.perf_counter()
    clients = await connect_room(url, f"bench{size}", size, arrivals)
    connect_seconds = time.perf_counter() - started
    await arrivals.quiet(SETTLE)
    threads, rss_mb = server_resources(pid)
    try:
        runs, cpu, waited = [], 0.0, 0.0
        for _ in range(rounds):
            cpu_before, waited_before = cpu_seconds(pid), waited_seconds(pid)
            runs.append(await fan_out(clients, arrivals, messages))
            cpu += cpu_seconds(pid) - cpu_before
            waited += waited_seconds(pid) - waited_before
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
        "cpu_ms": cpu * 1000 / (messages * rounds),  # the server's CPU per message fanned out
        "waited_ms": waited * 1000 / (messages * rounds),  # ...and its wait for a core
    }


class Server:
    """A chat server in its own process, so the server and the clients do not share a CPU."""

    def __init__(self, name: str, workdir: Path) -> None:
        command, _ = SERVERS[name]
        store = ["--log", str(workdir / f"{name}.jsonl")] if name == "node" else []
        store = store or ["--db", str(workdir / f"{name}.db")]
        self.proc = subprocess.Popen(
            [*command, "--port", "0", *store],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("Listening on "):
            self.proc.kill()
            sys.exit(f"{name} did not start: {line}{self.proc.stdout.read()}")
        self.url = line.split()[-1]
        pin(SERVER_CORE, self.proc.pid)  # threads it starts later inherit the core
        # Keep reading what it logs (a line per flooder hung up on): a full pipe
        # would stop the server at its next log line.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_fan_out(name: str, sizes: list[int], workdir: Path) -> list[dict]:
    pin(LOAD_CORE)  # the clients' core: reading 2,000 frames a message is work too
    rows = []
    for size in sizes:  # a fresh server per size: the previous crowd has fully left
        server = Server(name, workdir)
        try:
            print(f"  fan-out: {name}, {size:,} clients...", flush=True)
            rows.append({"server": name, **asyncio.run(measure(server.url, server.proc.pid, size))})
        finally:
            server.stop()
    return rows


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
        f" load average {load:.2f} at the start;"
        + (
            f" servers pinned to core {SERVER_CORE}, clients and flooder to core {LOAD_CORE}"
            if can_pin()
            else " not pinned (one core, or no sched_setaffinity)"
        )
    )


def print_fair(results: dict[str, dict]) -> None:
    print(
        f"  {'phase':<12} {'p50 ms':>7} {'p99 ms':>7} {'server CPU':>10} {'waited':>6}"
        f" {'flood sent':>10} {'hung up':>7}"
    )
    for phase, r in results.items():
        sent = f"{r['sent']:,}" if "sent" in r else "-"
        print(
            f"  {phase:<12} {r['p50']:>7.1f} {r['p99']:>7.1f} {r['cpu']:>10.0%}"
            f" {r['waited']:>6.0%} {sent:>10} {r.get('hangups', '-'):>7}"
        )
    print("  (server CPU: the share of a core app.py used; waited: the share of the phase it")
    print("   was ready to run but waited for its core, which other processes had)")


def print_fan_out(rows: list[dict]) -> None:
    print(
        f"  {'server':<10} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5}"
        f" {'CPU ms/msg':>10} {'waited':>6} {'threads':>7} {'RSS MB':>7} {'connect s':>9}"
    )
    for r in rows:
        print(
            f"  {r['server']:<10} {r['clients']:>7,} {r['p50']:>8.1f} {r['p99']:>8.1f}"
            f" {r['lost']:>5} {r['cpu_ms']:>10.1f} {r['waited_ms']:>6.1f} {r['threads']:>7}"
            f" {r['rss_mb']:>7.0f} {r['connect_s']:>9.1f}"
        )
    print("  (CPU ms/msg: the server's CPU per message fanned out, all its threads;")
    print("   waited: ms per message it was ready to run but waited for its core)")


def plot(fair: dict[str, dict], rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if fair:
        phases = list(fair)
        left.bar(phases, [fair[p]["p99"] for p in phases], color="#2f5fb3", label="p99")
        left.bar(phases, [fair[p]["p50"] for p in phases], color="#8fb0e8", label="p50")
        left.axhline(
            FAIR_TARGET * fair["quiet"]["p99"],
            color="#a3332d",
            ls="--",
            label=f"target: {FAIR_TARGET:g}x quiet p99",
        )
        left.set(ylabel="bystander ack, ms", title="One client floods: the others' acks")
        left.tick_params(axis="x", rotation=20)
        left.legend()
    for name in SERVERS:
        mine = [r for r in rows if r["server"] == name]
        if mine:
            sizes = [r["clients"] for r in mine]
            line = right.plot(sizes, [r["p99"] for r in mine], "o-", label=f"{name} p99")[0]
            right.plot(
                sizes, [r["p50"] for r in mine], "o--", color=line.get_color(), label=f"{name} p50"
            )
    right.set(
        xscale="log",
        xlabel="clients in the room",
        ylabel="ms until all have it",
        title="Fan-out of one message to the whole room",
    )
    for axes in (left, right):
        axes.grid(alpha=0.3)
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


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
        "--servers",
        nargs="+",
        choices=list(SERVERS),
        default=["gevent", "node"],
        help="servers to compare (default: gevent node)",
    )
    parser.add_argument("--no-fair", action="store_true", help="skip the fair-share part")
    parser.add_argument(
        "--save-images",
        action="store_true",
        help=f"write the plot to {PICTURE.relative_to(HERE.parent)} (default: out/fanout.png)",
    )
    args = parser.parse_args()
    if any(not 10 <= size <= 10_000 for size in args.sizes):
        # fewer than 10 senders taking turns would outrun their 5 messages a second
        parser.error("--sizes must each be 10-10000 clients")
    if "node" in args.servers and not (HERE / "node_modules" / "socket.io").is_dir():
        parser.error("Node's socket.io is missing: run `make setup` (npm ci in RealTimeChat)")
    if "node" in args.servers and shutil.which("node") is None:
        parser.error("node is not installed: run `make setup`")
    print(f"RealTimeChat bench on {machine()}")
    for name in args.servers:
        print(f"  {name:<10} {SERVERS[name][1]}")
    with tempfile.TemporaryDirectory(prefix="realtimechat-bench-") as tmp:
        workdir = Path(tmp)
        fair = {}
        if not args.no_fair:
            pin(SERVER_CORE)  # the bystanders share the server's core; the flooder has its own
            server = Server("gevent", workdir)
            try:
                fair = asyncio.run(fair_share(server.url, server.proc.pid))
            finally:
                server.stop()
        rows = [r for name in args.servers for r in run_fan_out(name, args.sizes, workdir)]
    verdicts = []
    if fair:
        print(f"\nFair share: {BYSTANDERS} bystanders' message acks while one client floods app.py")
        print_fair(fair)
        worst = max((p for p in fair if p != "quiet"), key=lambda p: fair[p]["p99"])
        quiet, flooded = fair["quiet"]["p99"], fair[worst]["p99"]
        verdicts.append(flooded <= FAIR_TARGET * quiet)
        print(
            f"{verdict(verdicts[-1])}  fair share: bystander p99 under the worst flood ({worst})"
            f" {flooded:.1f} ms, {flooded / quiet:.2f}x the quiet {quiet:.1f} ms"
            f" (target <= {FAIR_TARGET:g}x)"
        )
    print("\nFan-out: each message timed from the send until every client in the room has it")
    print_fan_out(rows)
    by = {(r["server"], r["clients"]): r for r in rows}
    ratio = None
    for size in args.sizes:
        if ("gevent", size) in by and ("node", size) in by:
            ours, node = by[("gevent", size)], by[("node", size)]
            print(
                f"  {size:>5,} clients: gevent/node p50 {ours['p50'] / node['p50']:.2f}x,"
                f" p99 {ours['p99'] / node['p99']:.2f}x,"
                f" CPU per message {ours['cpu_ms'] / node['cpu_ms']:.2f}x"
            )
            if size == TARGET_CLIENTS:
                ratio = ours["p99"] / node["p99"]
                lost = ours["lost"] + node["lost"]
                verdicts.append(ratio <= NODE_TARGET and lost == 0)
                print(
                    f"{verdict(verdicts[-1])}  fan-out to {size:,}: our p99 {ours['p99']:.1f} ms"
                    f" vs Node's {node['p99']:.1f} ms = {ratio:.2f}x (target <= {NODE_TARGET:g}x),"
                    f" lost {ours['lost']} vs {node['lost']}"
                )
    picture = PICTURE if args.save_images else OUT / "fanout.png"
    plot(fair, rows, picture)
    print(f"\nPlot: {picture.relative_to(HERE.parent)}")
    if fair and ratio is not None:
        print(
            f"headline: under a flood the bystanders' p99 stayed {flooded / quiet:.1f}x the quiet"
            f" one; fan-out to {TARGET_CLIENTS:,} clients at {ratio:.2f}x Node's Socket.IO p99"
        )
    elif rows:
        r = rows[-1]
        print(
            f"headline: fan-out to {r['clients']:,} clients on {r['server']}: p99 {r['p99']:.1f} ms"
        )
    if hasattr(os, "getloadavg"):
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"targets: {sum(verdicts)} of {len(verdicts)} met")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
