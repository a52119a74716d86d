"""RealTimeChat demo: one server fans each message out to a room, and keeps what it acked.

1. Start the server (gevent) on a free port, with a fresh database.
2. Three people join #general: presence as each arrives.
3. Fan-out: 60 messages, time until all three members have each one.
4. Bad input: each gets an `error` event, nothing changes.
5. A hostile client writes 20,000 events: refused, hung up on; the others' acks stay fast.
6. HTML is text: `<img src=x onerror=alert(1)>` arrives exactly as typed.
7. A dropped connection: the rejoin token takes the name back; paging fetches all missed.
8. Crash (SIGKILL) right after an ack, restart on the same database: nothing lost.
9. Two server processes: without Redis they are two chats; with Redis, one.

Exits non-zero if the lesson did not show. README.md explains each step.
Databases go to RealTimeChat/out/; `--save-images` also photographs the page
in Chromium for the README (images/chat.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import chat_browser
import redis
import socketio
from chat_rules import MAX_MESSAGE_CHARS, MESSAGES_PER_SECOND
from chat_store import HISTORY_LIMIT, ChatStore
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as websocket_connect

HERE = Path(__file__).resolve().parent
APP = HERE / "app.py"
OUT = HERE / "out"  # git-ignored: the demo's databases
PICTURE = HERE / "images" / "chat.png"  # the README's picture: only --save-images rewrites it
WAIT = 10.0  # s: every wait in the demo is bounded by this
ROOM = "general"
XSS = "<img src=x onerror=alert(1)>"
FANOUT_MESSAGES = 60
PACE = 1 / (0.9 * MESSAGES_PER_SECOND)  # s between one sender's messages: under the limit
REDIS_NO_DISK = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no")  # throwaway
REDIS_CHANNEL = "flask-socketio"  # where Flask-SocketIO's processes meet in Redis
RAW_PATH = "/socket.io/?EIO=4&transport=websocket"  # Engine.IO over a WebSocket, no polling
FLOOD_EVENTS = 20_000
AWAY_MESSAGES = 120  # more than one join's worth (50): the rest come by paging


class Server:
    """app.py as a child process, on a free port."""

    def __init__(self, db: Path, *args: str, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), "--port", str(port), "--db", str(db), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.url = ""

    def ready(self) -> Server:
        """Wait for the Listening line (app.py prints it first) and note the URL."""
        line = self.proc.stdout.readline()
        if not line.startswith("Listening on "):
            self.proc.kill()
            sys.exit(f"app.py did not start: {line}{self.proc.stdout.read()}")
        self.url = line.split()[-1]
        # Keep reading its output, so a chatty server never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


class Person:
    """A Socket.IO client that notes when each message reaches it."""

    def __init__(self, url: str, name: str) -> None:
        self.name = name
        self.received: dict[int, float] = {}  # message id -> perf_counter at arrival
        self.messages: list[dict] = []
        self.presence: list[str] = []
        self.errors: list[dict] = []
        self._arrived = threading.Condition()  # handlers notify it; wait_for waits on it
        self.client = socketio.Client(reconnection=False)
        self.client.on("message", self._on_message)
        self.client.on("presence", self._on_presence)
        self.client.on("error", self._on_error)
        self.client.connect(url, transports=["websocket"], wait_timeout=WAIT)

    def _on_message(self, message: dict) -> None:
        with self._arrived:
            self.received.setdefault(message["id"], time.perf_counter())
            self.messages.append(message)
            self._arrived.notify_all()

    def _on_presence(self, notice: dict) -> None:
        with self._arrived:
            self.presence.append(f"{notice['name']} {'joined' if notice['online'] else 'left'}")
            self._arrived.notify_all()

    def _on_error(self, error: dict) -> None:
        with self._arrived:
            self.errors.append(error)
            self._arrived.notify_all()

    def wait_for(self, condition: Callable[[], bool], timeout: float = WAIT) -> bool:
        with self._arrived:
            return self._arrived.wait_for(condition, timeout)

    def join(self, room: str = ROOM, **extra: object) -> dict:
        return self.client.call("join", {"room": room, "name": self.name, **extra}, timeout=WAIT)

    def say(self, text: object) -> dict:
        return self.client.call("message", {"text": text}, timeout=WAIT)

    def close(self) -> None:
        self.client.disconnect()


def heading(text: str) -> None:
    print(f"\n{text}", flush=True)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def step_join(url: str) -> list[Person]:
    heading(f"2. Three people join #{ROOM}")
    people = []
    print(f"  {'who':<6} {'members in the join ack':<24} {'history':>7}")
    for name in ("alice", "bob", "carol"):
        person = Person(url, name)
        reply = person.join()
        people.append(person)
        print(f"  {name:<6} {', '.join(reply['members']):<24} {len(reply['history']):>7}")
    people[0].wait_for(lambda: len(people[0].presence) == 2)
    print(f"  alice saw, live: {'; '.join(people[0].presence)}")
    return people


def step_fanout(people: list[Person]) -> tuple[list[float], int, int]:
    heading(f"3. Fan-out: {FANOUT_MESSAGES} messages, each timed until all 3 members have it")
    latencies, acked_ids = [], []
    for n in range(FANOUT_MESSAGES):
        sender = people[n % len(people)]
        started = time.perf_counter()
        message_id = sender.say(f"message {n} from {sender.name}")["id"]
        acked_ids.append(message_id)
        everyone = all(p.wait_for(lambda p=p, i=message_id: i in p.received) for p in people)
        if everyone:
            latencies.append((max(p.received[message_id] for p in people) - started) * 1000)
        if sys.stdout.isatty():
            print(f"\r  {n + 1}/{FANOUT_MESSAGES} sent", end="", flush=True)
        time.sleep(PACE / len(people))  # each sender stays under its 5 messages/s
    if sys.stdout.isatty():
        print("\r", end="")
    delivered = sum(1 for p in people for i in acked_ids if i in p.received)
    lost = FANOUT_MESSAGES * len(people) - delivered
    duplicates = sum(len(p.messages) for p in people) - delivered
    print(
        f"  {'messages':>8} {'deliveries':>10} {'lost':>5} {'dup':>4} {'p50 ms':>7} {'p99 ms':>7}"
    )
    print(
        f"  {FANOUT_MESSAGES:>8} {delivered:>10} {lost:>5} {duplicates:>4}"
        f" {statistics.median(latencies):>7.2f} {percentile(latencies, 0.99):>7.2f}"
    )
    return latencies, lost, duplicates


def step_bad_input(url: str, people: list[Person]) -> bool:
    heading("4. Bad input and too many messages: an `error` event each, nothing stored")
    mallory = Person(url, "mallory")
    mallory.join()
    before = len(people[0].messages)
    cases = [
        (
            f"{MAX_MESSAGE_CHARS + 1:,} characters",
            "message",
            {"text": "x" * (MAX_MESSAGE_CHARS + 1)},
        ),
        ("an empty message", "message", {"text": "  "}),
        ('{"text": 7}', "message", {"text": 7}),
        ("a bare string", "message", "hello"),
        ("an unknown event 'shout'", "shout", {"text": "HEY"}),
    ]
    print(f"  {'input':<26} {'code':<14} reason")
    refused = 0
    for label, event, payload in cases:
        reply = mallory.client.call(event, payload, timeout=WAIT)
        refused += "code" in reply
        print(f"  {label:<26} {reply.get('code', 'ACCEPTED'):<14} {reply.get('error', '')}")
    time.sleep(1.0)  # the refused messages above took tokens too: let the bucket refill
    flood = [mallory.say(f"flood {n}") for n in range(12)]
    accepted = sum("id" in reply for reply in flood)
    limited = sum(reply.get("code") == "rate_limited" for reply in flood)
    print(
        f"  {'12 messages at once':<26} {'rate_limited':<14} {limited} refused, {accepted} accepted"
    )
    people[0].wait_for(lambda: len(people[0].messages) >= before + accepted)
    time.sleep(0.2)
    stored = len(people[0].messages) - before
    print(f"  messages the others received: {stored} (the {accepted} accepted ones)")
    expected_errors = len(cases) + limited
    mallory.wait_for(lambda: len(mallory.errors) >= expected_errors)
    errors_seen = len(mallory.errors)
    mallory.close()
    ok = refused == len(cases) and limited > 0 and stored == accepted
    return ok and errors_seen == expected_errors


@contextmanager
def raw_socket(url: str) -> Iterator[ClientConnection]:
    """A WebSocket speaking Engine.IO and Socket.IO by hand, connected to namespace "/"."""
    with websocket_connect(url.replace("http://", "ws://") + RAW_PATH, close_timeout=1) as ws:
        ws.recv(timeout=WAIT)  # Engine.IO's open packet
        ws.send("40")
        yield ws


def closed_by_server(ws: ClientConnection) -> bool:
    """Read (and drop) what the server sends until it hangs up; False if it never does."""
    try:
        while True:
            ws.recv(timeout=WAIT)
    except ConnectionClosed:
        return True
    except TimeoutError:
        return False


def flood(url: str, report: dict) -> None:
    """Join, then write FLOOD_EVENTS `rooms` events as fast as the socket takes them."""
    started = time.perf_counter()
    with raw_socket(url) as ws:
        ws.send(f'42["join",{{"room":"{ROOM}","name":"mallory2"}}]')
        try:
            for _ in range(FLOOD_EVENTS):
                ws.send('42["rooms"]')
                report["sent"] += 1
            hung_up = closed_by_server(ws)  # everything written: wait for the hang-up
        except ConnectionClosed:
            hung_up = True
        if hung_up:
            report["hung_up_after_ms"] = (time.perf_counter() - started) * 1000


def ack_ms(person: Person, text: str) -> float:
    started = time.perf_counter()
    person.say(text)
    return (time.perf_counter() - started) * 1000


def step_flood(url: str, people: list[Person]) -> tuple[bool, float, float]:
    heading(f"5. A hostile client writes {FLOOD_EVENTS:,} `rooms` events as fast as it can")
    bob = people[1]
    quiet = max(ack_ms(bob, f"quiet {n}") for n in range(3))
    report = {"sent": 0, "hung_up_after_ms": None}
    flooder = threading.Thread(target=flood, args=(url, report), daemon=True)
    flooder.start()
    during = []
    while flooder.is_alive() and len(during) < 4:
        during.append(ack_ms(bob, "during the flood"))
        time.sleep(PACE)
    flooder.join(timeout=WAIT)
    hung_up = report["hung_up_after_ms"]
    print(f"  events it wrote before the server hung up   {report['sent']:,}")
    print(f"  hung up on after                             {hung_up or 0:.0f} ms")
    print(f"  bob's ack before / during, slowest           {quiet:.1f} ms / {max(during):.1f} ms")
    return hung_up is not None, quiet, max(during)


def step_comeback(url: str, db: Path) -> tuple[bool, float, int]:
    heading("7. A dropped connection: the name comes back with the token, nothing is missed")
    with raw_socket(url) as ghost:  # erin's old connection: half-open, it never answers again
        ghost.send(f'421["join",{{"room":"{ROOM}","name":"erin"}}]')
        reply = ghost.recv(timeout=WAIT)
        while not reply.startswith("431"):
            reply = ghost.recv(timeout=WAIT)
        joined = json.loads(reply[3:])[0]
        stranger = Person(url, "erin")
        refused = stranger.join().get("code")
        stranger.close()
        store = ChatStore(db)  # 120 messages arrive while she is away, from another process
        store.add_many(ROOM, "frank", [f"while erin was away {n}" for n in range(AWAY_MESSAGES)])
        store.close()
        erin = Person(url, "erin")
        started = time.perf_counter()
        back = erin.join(token=joined["token"], after_id=joined["history"][-1]["id"])
        took_ms = (time.perf_counter() - started) * 1000
        got, more = back["history"], back["more"]
        while more:
            request = {"room": ROOM, "after_id": got[-1]["id"]}
            page = erin.client.call("history", request, timeout=WAIT)
            got, more = got + page["messages"], page["more"]
        erin.close()
        ghost_closed = closed_by_server(ghost)
    missed = sum(m["text"].startswith("while erin was away") for m in got)
    print(f"  a stranger joining as erin                  {refused}")
    print(f"  erin with her rejoin token                  back in {took_ms:.1f} ms")
    print(f"  her old connection                          {'closed' if ghost_closed else 'open'}")
    print(f"  missed while away, fetched by paging        {missed} of {AWAY_MESSAGES}")
    ok = refused == "name_taken" and back.get("name") == "erin" and ghost_closed
    return ok and missed == AWAY_MESSAGES, took_ms, missed


def step_xss(people: list[Person]) -> bool:
    heading("6. HTML is text")
    alice, bob = people[0], people[1]
    ack = alice.say(XSS)
    bob.wait_for(lambda: ack["id"] in bob.received)
    got = next(m["text"] for m in bob.messages if m["id"] == ack["id"])
    print(f"  alice sent {XSS!r}; bob received {got!r}")
    print("  the page puts it on screen with textContent: shown as text, never run")
    print("  (tests/test_realtimechat.py checks that in Chromium; --save-images photographs it)")
    return got == XSS


def step_crash(db: Path, server: Server, people: list[Person]) -> tuple[Server, int, bool]:
    heading("8. Crash right after an ack, restart on the same database")
    alice = people[0]
    time.sleep(1.0)  # let alice's bucket refill
    acks = [alice.say(f"last words {n}") for n in range(5)]
    server.kill()  # SIGKILL straight after the 5th ack: no shutdown, no flush
    for person in people:
        person.close()
    restarted = Server(db).ready()
    dave = Person(restarted.url, "dave")
    history = dave.join()["history"]
    dave.close()
    store = ChatStore(db)
    stored_ids = {m.id for m in store.latest(ROOM, limit=10_000)}
    store.close()
    acked = {ack["id"] for ack in acks}
    survived = len(acked & stored_ids)
    print(f"  acked just before SIGKILL   {len(acked)}")
    print(f"  of those, in the database   {survived}")
    print(f"  history a joiner gets       {len(history)} (the last {HISTORY_LIMIT})")
    in_order = [m["id"] for m in history] == sorted(m["id"] for m in history)
    ends_right = [m["id"] for m in history[-5:]] == [ack["id"] for ack in acks]
    return restarted, survived, survived == len(acked) and in_order and ends_right


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_redis(queue: redis.Redis) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            return queue.ping()
        except redis.ConnectionError:
            time.sleep(0.05)
    return False


def live_delivery(
    db: Path, *server_args: str, channel_ready: Callable[[], bool]
) -> tuple[int, str]:
    """alice on one process, bob on another: how many of alice's 3 messages bob gets live,
    and what a second "alice" on bob's process is told."""
    east, west = Server(db, *server_args), Server(db, *server_args)  # both start at once
    try:
        east.ready(), west.ready()
        alice, bob = Person(east.url, "alice"), Person(west.url, "bob")
        room = "scaleout" + ("q" if server_args else "")
        alice.join(room)
        deadline = time.monotonic() + WAIT
        while not channel_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        bob.join(room)
        ids = [alice.say(f"hello from east {n}")["id"] for n in range(3)]
        alice.wait_for(lambda: all(i in alice.received for i in ids))  # sent and broadcast
        bob.wait_for(lambda: all(i in bob.received for i in ids), timeout=1.0)
        got = sum(i in bob.received for i in ids)
        impostor = Person(west.url, "alice")
        second = impostor.join(room).get("code", "accepted")
        for person in (alice, bob, impostor):
            person.close()
        return got, second
    finally:
        east.stop()
        west.stop()


def step_scale_out(workdir: Path) -> bool | None:
    heading("9. Two server processes: alice on one, bob on the other, alice sends 3")
    executable = shutil.which("redis-server")
    db = fresh_database("shared.db")
    print(f"  {'':<38} {'bob got live':<13} a second alice on bob's process")
    alone, second_alone = live_delivery(db, channel_ready=lambda: True)
    print(f"  {'without Redis':<38} {f'{alone}/3':<13} {second_alone}")
    if executable is None:
        print("  Skipped the Redis half: redis-server is not installed (`make setup` installs it).")
        return None
    port = free_port()
    queue_proc = subprocess.Popen(
        [executable, "--port", str(port), *REDIS_NO_DISK, "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        queue = redis.Redis(port=port, socket_timeout=1)
        if not wait_for_redis(queue):
            print("  Skipped the Redis half: redis-server did not start.")
            return None

        def both_subscribed() -> bool:
            return dict(queue.pubsub_numsub(REDIS_CHANNEL)).get(REDIS_CHANNEL.encode(), 0) >= 2

        url = f"redis://127.0.0.1:{port}"
        shared, second_shared = live_delivery(db, "--redis", url, channel_ready=both_subscribed)
        print(f"  {'with --redis ' + url:<38} {f'{shared}/3':<13} {second_shared}")
        return shared == 3 and second_shared == "name_taken"
    finally:
        queue_proc.terminate()
        queue_proc.wait(timeout=5)


def save_picture(db: Path) -> bool:
    """Play the browser scene on a fresh server and photograph bob's page."""
    heading("10. The page in Chromium, for the README's picture")
    executable = chat_browser.chromium_path()
    if executable is None:
        print("  Skipped: chromium is not installed (`make setup` installs it).")
        return False
    from playwright.sync_api import sync_playwright

    server = Server(db).ready()
    try:
        with sync_playwright() as playwright:
            browser = chat_browser.launch(playwright, executable)
            try:
                _alice, bob, carol = chat_browser.play_scene(browser, server.url)
                chat_browser.photograph(bob, PICTURE)
                carol.disconnect()
            finally:
                browser.close()
    finally:
        server.stop()
    print(f"  saved {PICTURE.relative_to(HERE.parent)}")
    return True


def fresh_database(name: str) -> Path:
    """A new, empty database file in out/ (the last run's is replaced)."""
    OUT.mkdir(exist_ok=True)
    db = OUT / name
    for leftover in OUT.glob(name + "*"):  # the file and its -wal, -shm companions
        leftover.unlink()
    return db


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--save-images",
        action="store_true",
        help=f"also photograph the page in Chromium to {PICTURE.relative_to(HERE.parent)}",
    )
    args = parser.parse_args()
    started = time.monotonic()
    db = fresh_database("demo.db")
    heading("1. Start the server")
    server = Server(db).ready()
    print(f"  app.py on gevent: {server.url}, database {db.relative_to(HERE.parent)}")
    try:
        people = step_join(server.url)
        latencies, lost, duplicates = step_fanout(people)
        refused_ok = step_bad_input(server.url, people)
        flood_ok, quiet_ms, flooded_ms = step_flood(server.url, people)
        xss_ok = step_xss(people)
        comeback_ok, back_ms, missed = step_comeback(server.url, db)
        server, survived, crash_ok = step_crash(db, server, people)
    finally:
        server.stop()
    scale_ok = step_scale_out(OUT)
    picture_ok = save_picture(fresh_database("picture.db")) if args.save_images else True
    p50 = statistics.median(latencies)
    print(f"\n(demo took {time.monotonic() - started:.1f} s)")
    checks = {
        f"{lost} lost and {duplicates} duplicated deliveries": lost == 0 and duplicates == 0,
        "bad input was not refused as it should be": refused_ok,
        "the flooder was not hung up on": flood_ok,
        f"the comeback failed ({missed} of {AWAY_MESSAGES} missed messages fetched)": comeback_ok,
        "HTML did not arrive as plain text": xss_ok,
        f"only {survived} acknowledged messages survived the crash": crash_ok,
        "the two processes were not one chat through Redis": scale_ok is not False,
        "the page could not be photographed": picture_ok,
    }
    failed = [why for why, ok in checks.items() if not ok]
    if failed:
        print(f"Lesson not shown: {'; '.join(failed)} (fan-out p50 {p50:.1f} ms)")
        return 1
    print(
        f"Lesson: one process fanned each message out to 3 members in p50 {p50:.1f} ms,"
        f" {lost} of {FANOUT_MESSAGES * 3} lost; a {FLOOD_EVENTS:,}-event flood was hung up on"
        f" while bob's acks took {flooded_ms:.1f} ms (quiet {quiet_ms:.1f} ms); erin took her"
        f" name back in {back_ms:.1f} ms and fetched {missed} of {AWAY_MESSAGES} missed"
        f" messages; all {survived} acked before a SIGKILL survived"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
