"""RealTimeChat: the real server process, real Socket.IO clients, a real browser, a real Redis.

Most tests share one server (each in its own room, so they cannot see each
other); the ones that crash, restart or scale it out start their own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import redis
import requests
import socketio
from conftest import (
    ServerProcess,
    child_env,
    engine_binary,
    free_port,
    load_module,
    run_script,
    script_path,
)
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as websocket_connect

APP = "RealTimeChat/app.py"
CLI = "RealTimeChat/cli_client.py"
WAIT = 10.0  # s: the bound on every wait for an event
XSS = "<img src=x onerror=alert(1)>"

rules = load_module("RealTimeChat", "chat_rules")
store_module = load_module("RealTimeChat", "chat_store")
rooms_module = load_module("RealTimeChat", "chat_rooms")


def new_room() -> str:
    return "t" + uuid.uuid4().hex[:12]


class Member:
    """A python-socketio client that records every event the server sends it.

    python-engineio's client runs each incoming message's handler in a new
    thread, so two events that arrive back to back may be recorded in either
    order: tests compare sets, or wait for one event before causing the next.
    `Frames` below is for the tests where the order on the wire is the point.
    """

    EVENTS = ("message", "presence", "typing", "rooms", "error")

    def __init__(self, url: str, transports: list[str] | None = None) -> None:
        self.events: dict[str, list] = defaultdict(list)
        self._changed = threading.Condition()
        self.client = socketio.Client(reconnection=False)
        for event in self.EVENTS:
            self.client.on(event, partial(self._record, event))
        self.client.connect(url, transports=transports or ["websocket"], wait_timeout=WAIT)

    def _record(self, event: str, data: object) -> None:
        with self._changed:
            self.events[event].append(data)
            self._changed.notify_all()

    def call(self, event: str, data: object = None) -> object:
        return self.client.call(event, data, timeout=WAIT)

    def join(self, room: str, name: str, **extra: object) -> dict:
        return self.call("join", {"room": room, "name": name, **extra})

    def send(self, text: object) -> dict:
        return self.call("message", {"text": text})

    def wait_until(self, condition: Callable[[], bool], timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(condition, timeout)

    def texts(self) -> list[str]:
        with self._changed:
            return [message["text"] for message in self.events["message"]]

    def error_codes(self) -> list[str]:
        with self._changed:
            return [error["code"] for error in self.events["error"]]

    def close(self) -> None:
        self.client.disconnect()


class Frames:
    """Socket.IO spoken by hand over one WebSocket, reading frames in the order they came.

    Engine.IO v4: `0` open, `2`/`3` ping/pong, `4` message; inside it Socket.IO's
    `0` connect, `2` event, `3` ack (README: "Socket.IO is not a WebSocket").
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: list[str] = []  # frames read while looking for something else
        self.ack_ids = itertools.count(1)
        assert self.ws.recv(timeout=WAIT).startswith("0")
        self.ws.send("40")
        self._next(lambda frame: frame.startswith("40"))

    def _next(self, wanted: Callable[[str], bool]) -> str:
        for i, frame in enumerate(self.pending):
            if wanted(frame):
                return self.pending.pop(i)
        deadline = time.monotonic() + WAIT
        while True:
            frame = self.ws.recv(timeout=max(0.0, deadline - time.monotonic()))
            if frame == "2":
                self.ws.send("3")
            elif wanted(frame):
                return frame
            else:
                self.pending.append(frame)

    def call(self, event: str, data: object) -> object:
        ack = f"43{next(self.ack_ids)}"
        self.ws.send(f"42{ack[2:]}{json.dumps([event, data])}")
        return json.loads(self._next(lambda frame: frame.startswith(ack + "["))[len(ack) :])[0]

    def collect(self, event: str, count: int) -> list:
        """The next `count` `event`s, in the order they arrived."""
        prefix = f'42["{event}",'
        return [json.loads(self._next(lambda f: f.startswith(prefix))[2:])[1] for _ in range(count)]


@contextmanager
def frames(url: str) -> Iterator[Frames]:
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    with websocket_connect(ws_url, open_timeout=WAIT) as ws:
        yield Frames(ws)


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> Iterator[ServerProcess]:
    """One server for the tests that only need it running."""
    with ServerProcess(APP, "--db", str(tmp_path_factory.mktemp("chat") / "chat.db")) as server:
        yield server


@pytest.fixture(scope="module")
def hung_up_on(tmp_path_factory) -> Iterator[ServerProcess]:
    """A server for tests whose clients it hangs up on, quick to let their address back.

    After a hang-up, new connections from the address (127.0.0.1, so every
    test's) are spaced out (chat_rules.Comebacks): on `chat` that would slow
    the tests after these, which have no flooders to be punished for.
    """
    db = tmp_path_factory.mktemp("hung_up_on") / "chat.db"
    with ServerProcess(APP, "--db", str(db), "--comeback-spacing", "0.1") as server:
        yield server


@pytest.fixture(scope="module")
def flooded(tmp_path_factory) -> Iterator[ServerProcess]:
    """A server for the floods, with the default spacing of a flooder's comebacks."""
    with ServerProcess(APP, "--db", str(tmp_path_factory.mktemp("flooded") / "chat.db")) as server:
        yield server


@pytest.fixture
def connect() -> Iterator[Callable[..., Member]]:
    """Factory of connected members; every one is disconnected at teardown."""
    made: list[Member] = []

    def _connect(server: ServerProcess, **kwargs: object) -> Member:
        member = Member(server.url, **kwargs)
        made.append(member)
        return member

    yield _connect
    for member in made:
        member.close()


# -- the rules, the store and the presence registry, in-process ------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_exactly_the_rate():
    clock = FakeClock()
    bucket = rules.TokenBucket(rate=5, burst=5, clock=clock)
    assert [bucket.take() for _ in range(7)] == [True] * 5 + [False] * 2
    clock.now += 0.2  # one token's worth
    assert [bucket.take(), bucket.take()] == [True, False]
    allowed = 0
    for _ in range(100):  # ten seconds of trying every 0.1 s
        clock.now += 0.1
        allowed += bucket.take()
    assert allowed == 50
    clock.now += 60  # a long quiet spell refills only up to the burst
    assert sum(bucket.take() for _ in range(20)) == 5


def test_token_bucket_refuses_nonsense_settings():
    with pytest.raises(ValueError, match="rate > 0"):
        rules.TokenBucket(rate=0, burst=5)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"text": "x" * 2001}, "too_long"),
        ({"text": ""}, "empty"),
        ({"text": " \n\t "}, "empty"),
        ({"text": 42}, "wrong_type"),
        ({"body": "hi"}, "wrong_type"),
        ("hi", "wrong_type"),
        (None, "wrong_type"),
    ],
)
def test_check_message_rejects_with_a_code(payload, code):
    with pytest.raises(rules.Rejected) as rejected:
        rules.check_message(payload)
    assert rejected.value.code == code


def test_refusals_name_the_json_types_a_client_sent():
    reasons = {}
    for payload in ({"text": None}, {"text": {"a": 1}}, {"text": [1]}, 7, True, {"body": "hi"}):
        with pytest.raises(rules.Rejected) as rejected:
            rules.check_message(payload)
        reasons[json.dumps(payload)] = rejected.value.reason
    assert reasons['{"text": null}'].endswith("got null")
    assert reasons['{"text": {"a": 1}}'].endswith("got object")
    assert reasons['{"text": [1]}'].endswith("got array")
    assert reasons["7"].endswith("got number") and reasons["true"].endswith("got boolean")
    assert reasons['{"body": "hi"}'].endswith("but it is missing")


def test_check_message_accepts_the_limit_and_keeps_html_as_is():
    assert rules.check_message({"text": "x" * 2000}) == ("x" * 2000, None)
    assert rules.check_message({"text": f"  {XSS}  ", "client_id": "c1"}) == (XSS, "c1")
    with pytest.raises(rules.Rejected, match="client_id"):
        rules.check_message({"text": "hi", "client_id": "x" * 65})


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"room": "no spaces", "name": "a"}, "bad_room"),
        ({"room": "r" * 33, "name": "a"}, "bad_room"),
        ({"room": "r", "name": ""}, "bad_name"),
        ({"room": "r", "name": "n" * 25}, "bad_name"),
        ({"room": "r", "name": "two\nlines"}, "bad_name"),
        ({"room": "r", "name": "al\u200bice"}, "bad_name"),  # a zero-width space
        ({"room": "r", "name": "alice\u3164"}, "bad_name"),  # a Hangul filler: printable, blank
        ({"room": "r", "name": "\u2800"}, "bad_name"),  # the Braille blank
        ({"room": "r", "name": "a", "after_id": "7"}, "wrong_type"),
        ({"room": "r", "name": "a", "after_id": True}, "wrong_type"),
        ({"room": "r", "name": "a", "after_id": 2**63}, "wrong_type"),  # beyond SQLite's ids
        ({"room": ["r"], "name": "a"}, "wrong_type"),
        (["r", "a"], "wrong_type"),
    ],
)
def test_check_join_rejects_with_a_code(payload, code):
    with pytest.raises(rules.Rejected) as rejected:
        rules.check_join(payload)
    assert rejected.value.code == code


def test_store_returns_the_last_50_oldest_first_and_survives_reopening(tmp_path):
    store = store_module.ChatStore(tmp_path / "chat.db")
    stored = [store.add("r", "alice", f"m{i}")[0] for i in range(60)]
    store.add("other", "bob", "elsewhere")
    store.close()
    reopened = store_module.ChatStore(tmp_path / "chat.db")
    history = reopened.latest("r")
    assert [m.text for m in history] == [f"m{i}" for i in range(10, 60)]
    assert [m.id for m in history] == sorted(m.id for m in history)
    assert history[-1] == stored[-1]
    assert reopened.page("r", after_id=stored[57].id, limit=50) == (stored[58:], False)
    assert sorted(reopened.rooms(limit=10)) == ["other", "r"]
    reopened.close()


def test_store_numbers_each_rooms_messages_1_2_3_and_pages_forward_through_all(tmp_path):
    store = store_module.ChatStore(tmp_path / "chat.db")
    for n in range(7):
        store.add("a" if n % 2 else "b", "x", f"m{n}")
    store.add_many("a", "y", [f"bulk{n}" for n in range(5)])
    assert [m.seq for m in store.latest("a")] == list(range(1, 9))
    assert [m.seq for m in store.latest("b")] == [1, 2, 3, 4]
    pages, after, more = [], 0, True
    while more:
        page, more = store.page("a", after, limit=3)
        pages.append([m.seq for m in page])
        after = page[-1].id
    assert pages == [[1, 2, 3], [4, 5, 6], [7, 8]]
    store.close()


def test_store_keeps_a_retried_client_id_once(tmp_path):
    store = store_module.ChatStore(tmp_path / "chat.db")
    first, is_new = store.add("r", "alice", "hello", client_id="c-1")
    again, is_new_again = store.add("r", "alice", "hello", client_id="c-1")
    other, _ = store.add("r", "bob", "hello", client_id="c-1")  # the id is per sender
    assert (is_new, is_new_again) == (True, False)
    assert again == first and other.id != first.id and other.seq == 2
    assert store.count() == 2
    store.close()


def test_store_refuses_a_database_from_before_sequence_numbers(tmp_path):
    import sqlite3

    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, room, name, text, ts)")
    old.close()
    with pytest.raises(store_module.StoreError, match="older version"):
        store_module.ChatStore(tmp_path / "old.db")


def test_rooms_keep_names_unique_per_room_and_move_a_member_between_rooms():
    rooms = rooms_module.Rooms()
    assert rooms.join("s1", "a", "alice", "p1") == rooms_module.Joined(None, None)
    with pytest.raises(rooms_module.NameTaken, match="taken"):
        rooms.join("s2", "a", "ALICE", "p2")
    assert rooms.seat("s2") is None
    rooms.join("s2", "b", "alice", "p2")  # the same name in another room is fine
    assert rooms.join("s1", "b", "alice2", "p1").old == rooms_module.Seat("a", "alice")
    assert rooms.join("s1", "b", "alice2", "p1").again
    assert rooms.busiest(10) == {"b": 2}
    assert rooms.members("b") == ["alice", "alice2"]
    assert rooms.leave("s1") == rooms_module.Seat("b", "alice2")
    assert rooms.leave("s1") is None


@pytest.mark.parametrize(
    "lookalike",
    [
        "Alice",
        "ALICE",
        "\uff41\uff4c\uff49\uff43\uff45",  # fullwidth letters
        "\u0430lice",  # a Cyrillic a
        "\u0391LICE",  # a Greek capital alpha
    ],
)
def test_a_name_that_looks_the_same_is_the_same_name(lookalike):
    rooms = rooms_module.Rooms()
    rooms.join("s1", "r", "alice", "p1")
    with pytest.raises(rooms_module.NameTaken):
        rooms.join("s2", "r", lookalike, "p2")
    assert rules.name_key(lookalike) == rules.name_key("alice")


def test_a_name_is_stored_in_one_unicode_form():
    composed, decomposed = "jos\u00e9", "jose\u0301"  # one code point, or e + an accent
    assert rules.check_join({"room": "r", "name": decomposed})[1] == composed
    rooms = rooms_module.Rooms()
    rooms.join("s1", "r", composed, "p1")
    with pytest.raises(rooms_module.NameTaken):
        rooms.join("s2", "r", decomposed, "p2")


def test_the_same_person_takes_a_name_back_from_their_ghost_and_nobody_else_can():
    rooms = rooms_module.Rooms()
    rooms.join("old-connection", "r", "alice", "alice-person")
    with pytest.raises(rooms_module.NameTaken):
        rooms.join("stranger", "r", "alice", "someone-else")
    joined = rooms.join("new-connection", "r", "Alice", "alice-person")
    assert joined.ghost == "old-connection"
    assert rooms.leave("old-connection") is None  # the ghost's disconnect changes nothing
    assert rooms.members("r") == ["Alice"]
    assert rooms.seat("new-connection") == rooms_module.Seat("r", "Alice")


def test_limiter_refuses_past_the_burst_per_connection_and_per_person_then_hangs_up():
    clock = FakeClock()
    limiter = rules.Limiter({"message": (5, 5), "other": (1, 1)}, clock=clock)
    for _ in range(5):
        limiter.admit("s1", ("r", "alice"), "message")
    with pytest.raises(rules.Rejected, match="more than 5 'message'"):
        limiter.admit("s1", ("r", "alice"), "message")
    # A new connection for the same person gets no fresh burst: the person's bucket is empty.
    limiter.forget("s1")
    with pytest.raises(rules.Rejected):
        limiter.admit("s2", ("r", "ALICE"), "message")
    limiter.admit("s3", ("r", "bob"), "message")  # another person is not affected
    refusals = 0
    with pytest.raises(rules.Flooding):
        while True:
            with contextlib.suppress(rules.Rejected):
                limiter.admit("s2", ("r", "alice"), "no_such_event")
            refusals += 1
    # The one 'other' allowed, then the patience left after the refused message above.
    assert refusals == 1 + rules.PATIENCE[1] - 1
    clock.now += 1.0
    limiter.admit("s2", ("r", "alice"), "message")  # refilled at 5/s


def test_create_app_builds_an_app_with_its_own_database(tmp_path):
    app_module = load_module("RealTimeChat", "app")
    app, sio = app_module.create_app({"DB_PATH": tmp_path / "own.db", "ASYNC_MODE": "threading"})
    client = sio.test_client(app)
    joined = client.emit("join", {"room": "r", "name": "alice"}, callback=True)
    ack = client.emit("message", {"text": "hello"}, callback=True)
    assert joined["members"] == ["alice"]
    assert ack == {"id": 1, "ts": ack["ts"], "seq": 1}
    assert app.test_client().get("/").status_code == 200
    client.disconnect()
    app.extensions["chat"].close()
    assert (tmp_path / "own.db").is_file()


def test_under_gevent_a_slow_store_call_lets_every_other_connection_run():
    # An fsync stands for the wait: a plain time.sleep, which would stop every
    # greenlet if it ran in gevent's thread, as SQLite's commit used to.
    import gevent

    app_module = load_module("RealTimeChat", "app")

    def slow_commit() -> str:
        time.sleep(0.3)
        return "on disk"

    ticks: list[float] = []

    def another_connection() -> None:
        for _ in range(40):
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    other = gevent.spawn(another_connection)
    gevent.sleep(0)  # it has started
    started = time.monotonic()
    assert app_module.store_caller("gevent")(slow_commit) == "on disk"
    finished = time.monotonic()
    other.join()
    assert finished - started >= 0.3
    assert sum(started < t < finished for t in ticks) >= 10  # it ran all along
    assert app_module.store_caller("threading")(slow_commit) == "on disk"  # where it is called


def test_events_and_refusals_leave_no_cycles_for_the_garbage_collector(tmp_path):
    # Objects in reference cycles wait for the cyclic collector, which frees them
    # all in one pause: 50,000 a flood's refusals made cost every client 120-160 ms.
    app_module = load_module("RealTimeChat", "app")
    app, sio = app_module.create_app({"DB_PATH": tmp_path / "gc.db", "ASYNC_MODE": "threading"})
    client = sio.test_client(app)
    client.emit("join", {"room": "r", "name": "alice"}, callback=True)
    gc.collect()
    gc.disable()
    try:
        replies = [client.emit("rooms", callback=True) for _ in range(60)]
        replies += [client.emit("shout", callback=True) for _ in range(10)]
        left_in_cycles = gc.collect()
    finally:
        gc.enable()
        client.disconnect()
        app.extensions["chat"].close()
    assert sum("code" in reply for reply in replies if isinstance(reply, dict)) >= 15
    assert left_in_cycles < 50  # 0 here; 4,578 before, about 65 objects per event


# -- the real server, over Socket.IO ------------------------------------------------


def test_broadcast_reaches_every_member_of_the_room_exactly_once_and_no_one_else(chat, connect):
    room, other_room = new_room(), new_room()
    here = [connect(chat) for _ in range(4)]
    there = [connect(chat) for _ in range(2)]
    for i, member in enumerate(here):
        member.join(room, f"here{i}")
    for i, member in enumerate(there):
        member.join(other_room, f"there{i}")
    acks = [member.send(f"{i}-{n}") for i, member in enumerate(here) for n in range(3)]
    there[0].send("only for there")
    sent = {f"{i}-{n}" for i in range(4) for n in range(3)}
    for member in here:
        assert member.wait_until(lambda m=member: len(m.texts()) >= len(sent))
    for member in there:
        assert member.wait_until(lambda m=member: len(m.texts()) >= 1)
    time.sleep(0.3)  # anything extra (a duplicate, a leak) would arrive by now
    for member in here:
        assert sorted(member.texts()) == sorted(sent)
        assert {m["id"] for m in member.events["message"]} == {a["id"] for a in acks}
    for member in there:
        assert member.texts() == ["only for there"]


def test_one_senders_messages_arrive_in_the_order_sent_with_increasing_ids(chat, connect):
    room = new_room()
    sender = connect(chat)
    with frames(chat.url) as receiver:
        receiver.call("join", {"room": room, "name": "receiver"})
        sender.join(room, "sender")
        for n in range(5):  # without waiting for acks: the burst the bucket allows
            sender.client.emit("message", {"text": f"m{n}"})
        messages = receiver.collect("message", 5)
    assert [m["text"] for m in messages] == [f"m{n}" for n in range(5)]
    ids = [m["id"] for m in messages]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_the_ack_carries_the_stored_id_and_time_that_everyone_and_history_see(chat, connect):
    room = new_room()
    alice, bob = connect(chat), connect(chat)
    alice.join(room, "alice")
    bob.join(room, "bob")
    ack = alice.send("hello")
    assert set(ack) == {"id", "ts", "seq"} and ack["seq"] == 1
    assert bob.wait_until(lambda: bob.texts() == ["hello"])
    broadcast = bob.events["message"][0]
    assert (broadcast["id"], broadcast["ts"], broadcast["name"]) == (ack["id"], ack["ts"], "alice")
    history = connect(chat).join(room, "carol")["history"]
    assert history == [broadcast]


def test_a_taken_nickname_is_refused_with_an_error_and_changes_nothing(chat, connect):
    room = new_room()
    alice, impostor = connect(chat), connect(chat)
    alice.join(room, "alice")
    reply = impostor.join(room, "Alice")
    assert reply["code"] == "name_taken"
    assert impostor.wait_until(lambda: impostor.error_codes() == ["name_taken"])
    assert "taken" in impostor.events["error"][0]["reason"]
    assert impostor.send("am I in?")["code"] == "not_in_room"
    assert alice.call("rooms") and alice.join(room, "alice")["members"] == ["alice"]
    assert impostor.join(new_room(), "alice")["name"] == "alice"  # free in another room


def test_presence_updates_live_on_join_leave_disconnect_and_crash(chat, connect):
    room = new_room()
    alice = connect(chat)
    alice.join(room, "alice")

    def presence() -> list[tuple[str, bool]]:
        return [(p["name"], p["online"]) for p in alice.events["presence"]]

    bob, carol = connect(chat), connect(chat)
    assert bob.join(room, "bob")["members"] == ["alice", "bob"]
    assert alice.wait_until(lambda: presence() == [("bob", True)])
    carol.join(room, "carol")
    assert alice.wait_until(lambda: presence()[-1] == ("carol", True))
    bob.call("leave")
    assert alice.wait_until(lambda: presence()[-1] == ("bob", False))
    carol.close()  # a clean disconnect
    assert alice.wait_until(lambda: presence()[-1] == ("carol", False))
    # A crash: a terminal client killed with SIGKILL says nothing; its socket closes.
    dave = subprocess.Popen(
        [
            sys.executable,
            str(script_path(CLI)),
            "--url",
            chat.url,
            "--room",
            room,
            "--name",
            "dave",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(),
    )
    try:
        assert alice.wait_until(lambda: ("dave", True) in presence(), timeout=20)
        dave.kill()
        assert alice.wait_until(lambda: presence()[-1] == ("dave", False))
    finally:
        dave.kill()
        dave.wait(timeout=5)
    assert alice.join(room, "alice")["members"] == ["alice"]


def test_the_lobby_lists_rooms_with_member_counts(chat, connect):
    busy, quiet = new_room(), new_room()
    members = [connect(chat) for _ in range(3)]
    for i, member in enumerate(members):
        member.join(busy if i < 2 else quiet, f"m{i}")
    lobby = {entry["room"]: entry["members"] for entry in members[0].call("rooms")}
    assert lobby[busy] == 2 and lobby[quiet] == 1 and "general" in lobby
    # ...and the lobby is pushed to everyone when it changes.
    watcher = connect(chat)
    members[2].call("leave")

    def pushed_quiet_count() -> int | None:
        latest = {e["room"]: e["members"] for e in watcher.events["rooms"][-1]}
        return latest.get(quiet)

    assert watcher.wait_until(lambda: len(watcher.events["rooms"]) >= 2)
    assert watcher.wait_until(lambda: pushed_quiet_count() in (0, None))


def test_typing_notices_reach_the_others_in_the_room_but_not_the_typist(chat, connect):
    room = new_room()
    typist, reader, outsider = connect(chat), connect(chat), connect(chat)
    typist.join(room, "typist")
    reader.join(room, "reader")
    outsider.join(new_room(), "outsider")
    typist.client.emit("typing", {"typing": True})
    assert reader.wait_until(lambda: len(reader.events["typing"]) == 1)
    typist.client.emit("typing", {"typing": False})
    assert reader.wait_until(lambda: len(reader.events["typing"]) == 2)
    assert [t["typing"] for t in reader.events["typing"]] == [True, False]
    assert {t["name"] for t in reader.events["typing"]} == {"typist"}
    # The typist's own events are handled in order, so a notice meant for it would
    # arrive before the broadcast of its next message.
    typist.send("done")
    assert typist.wait_until(lambda: typist.texts() == ["done"])
    time.sleep(0.3)  # and a leak to the other room would have arrived by now
    assert typist.events["typing"] == [] and outsider.events["typing"] == []


BAD_INPUTS = [
    # (event, payload, the error code expected)
    ("message", {"text": "x" * 2001}, "too_long"),
    ("message", {"text": ""}, "empty"),
    ("message", {"text": "   "}, "empty"),
    ("message", {"text": 7}, "wrong_type"),
    ("message", {"text": b"bytes"}, "wrong_type"),  # a binary attachment: allowed, not text
    ("message", "just a string", "wrong_type"),
    ("message", ({"text": "a"}, "extra"), "wrong_type"),
    ("typing", {"typing": "yes"}, "wrong_type"),
    ("join", ["room", "name"], "wrong_type"),
    ("join", {"room": "bad room!", "name": "x"}, "bad_room"),
    ("join", {"room": "elsewhere", "name": "x", "after_id": 2**64}, "wrong_type"),
    ("leave", {"room": "elsewhere"}, "wrong_type"),
    ("rooms", "all", "wrong_type"),
    ("no_such_event", {"text": "hi"}, "unknown_event"),
    ("disconnect", None, "reserved_event"),
    ("connect", None, "reserved_event"),
]


def test_every_bad_input_gets_an_error_event_changes_nothing_and_others_keep_chatting(
    chat, connect
):
    room = new_room()
    mallory, alice = connect(chat), connect(chat)
    mallory.join(room, "mallory")
    alice.join(room, "alice")
    for event, payload, code in BAD_INPUTS:
        if event == "message":  # refused or not, each one takes a token: stay under the rate
            time.sleep(1 / rules.MESSAGES_PER_SECOND)
        reply = mallory.call(event, payload)
        assert reply["code"] == code, (event, payload, reply)
    expected = sorted(code for _, _, code in BAD_INPUTS)
    assert mallory.wait_until(lambda: sorted(mallory.error_codes()) == expected)
    assert all(error["reason"] for error in mallory.events["error"])
    # Nothing changed: no message stored or sent, mallory still seated under her name.
    assert alice.send("still here")["id"] > 0
    assert mallory.wait_until(lambda: mallory.texts() == ["still here"])
    assert [m["text"] for m in connect(chat).join(room, "auditor")["history"]] == ["still here"]
    assert mallory.send("and me")["id"] > 0


def test_more_than_5_messages_a_second_are_refused_by_the_token_bucket(chat, connect):
    room = new_room()
    flooder, reader = connect(chat), connect(chat)
    flooder.join(room, "flooder")
    reader.join(room, "reader")
    started = time.monotonic()
    replies = [flooder.send(f"flood {n}") for n in range(15)]
    elapsed = time.monotonic() - started
    accepted = [r for r in replies if "id" in r]
    refused = [r for r in replies if r.get("code") == "rate_limited"]
    assert len(accepted) + len(refused) == 15
    # A burst of 5, plus what the bucket refilled (5/s) while the 15 were sent.
    assert 5 <= len(accepted) <= 5 + int(elapsed * 5) + 1
    assert refused
    assert flooder.wait_until(lambda: flooder.error_codes().count("rate_limited") == len(refused))
    assert reader.wait_until(lambda: len(reader.texts()) == len(accepted))
    time.sleep(1.0)  # refilled: the flooder may talk again
    assert "id" in flooder.send("calm now")


def test_a_packet_over_the_size_limit_closes_only_that_connection(chat, connect):
    room = new_room()
    bully, alice, bob = connect(chat), connect(chat), connect(chat)
    for member, name in ((bully, "bully"), (alice, "alice"), (bob, "bob")):
        member.join(room, name)
    bully.client.emit("message", {"text": "x" * 100_000})  # > the 64 KB Engine.IO limit
    assert alice.wait_until(
        lambda: ("bully", False) in [(p["name"], p["online"]) for p in alice.events["presence"]]
    )
    alice.send("fine")
    assert bob.wait_until(lambda: bob.texts() == ["fine"])


def test_a_frame_that_is_not_socketio_closes_only_that_connection(hung_up_on, connect):
    chat = hung_up_on
    room = new_room()
    alice, bob = connect(chat), connect(chat)
    alice.join(room, "alice")
    bob.join(room, "bob")
    unreadable = [
        '42["message",{"text":',
        '42{"not": "a list"}',
        "49",  # no such packet type
        "42" + "[" * 5000,
        '42["*",{"text":"hi"}]',  # Flask-SocketIO would take it for its catch-all's own call
        # python-socketio would keep every binary frame that follows until a million came
        '451000000-["message",{"text":{"_placeholder":true,"num":0}}]',
        "45" + "9" * 5000 + '-["message",{}]',  # a count too long for int() to parse
    ]
    for frame in unreadable:
        closed = chat.text.count("closing ")
        with frames(chat.url) as garbler:
            garbler.call("join", {"room": room, "name": "garbler"})
            garbler.ws.send(frame)
            # closed for this frame, not for missing a ping (which takes 15 s)
            assert wait_for(lambda: chat.text.count("closing ") > closed), frame[:60]  # noqa: B023
            with pytest.raises(ConnectionClosed):  # Engine.IO's close packet, then the close
                while True:
                    garbler.ws.recv(timeout=WAIT)
    alice.send("still fine")
    assert bob.wait_until(lambda: bob.texts() == ["still fine"])
    assert "closing" in chat.text and "Traceback" not in chat.text


STRAY_FRAMES = {
    # frames no conforming client sends, which the libraries drop without an answer
    "Engine.IO ping": "2",
    "Engine.IO noop": "6",
    "Engine.IO upgrade": "5",
    "a pong nobody asked for": "3",
    "a connect while connected": "40",
    "an event to another namespace": '42/admin,["rooms"]',
    "an ack the server never asked for": '431["x"]',
}


def test_frames_that_do_nothing_are_hung_up_on_without_stalling_the_others(hung_up_on, connect):
    chat = hung_up_on
    room = new_room()
    alice, bob = connect(chat), connect(chat)
    alice.join(room, "alice")
    bob.join(room, "bob")
    quiet = max(quiet_ack_seconds(alice, f"quiet {n}") for n in range(3))
    for hung_up, (kind, frame) in enumerate(STRAY_FRAMES.items(), 1):
        with frames(chat.url) as stray:
            # 200,000 at once: unlimited and unyielding, pings alone held the server 1.2 s
            burst = Frame(Opcode.TEXT, frame.encode()).serialize(mask=True) * 200_000
            writer = threading.Thread(target=write_until_closed, args=(stray.ws, burst))
            writer.start()
            assert quiet_ack_seconds(alice, kind) < max(1.0, 20 * quiet), kind
            with pytest.raises(ConnectionClosed):
                while True:
                    stray.ws.recv(timeout=WAIT)
            writer.join(timeout=WAIT)
        # closed for what it sent (not for missing a ping, which takes 15 s)
        assert wait_for(lambda: chat.text.count("frames that do nothing") == hung_up), kind  # noqa: B023
        time.sleep(1 / rules.MESSAGES_PER_SECOND)  # alice stays under her rate
    assert bob.wait_until(lambda: len(bob.texts()) == 3 + len(STRAY_FRAMES))


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def write_until_closed(ws: ClientConnection, data: bytes) -> None:
    with contextlib.suppress(OSError):
        ws.socket.sendall(data)


def test_html_in_names_and_messages_is_stored_and_sent_unchanged(chat, connect):
    room = new_room()
    writer, reader = connect(chat), connect(chat)
    writer.join(room, "<b>bold</b>")
    reader.join(room, "reader")
    writer.send(XSS)
    assert reader.wait_until(lambda: reader.texts() == [XSS])
    assert reader.events["message"][0]["name"] == "<b>bold</b>"


def test_long_polling_clients_chat_with_websocket_clients(chat, connect):
    room = new_room()
    poller, socketeer = connect(chat, transports=["polling"]), connect(chat)
    assert poller.client.transport() == "polling"
    poller.join(room, "poller")
    socketeer.join(room, "socketeer")
    poller.send("over HTTP requests")
    socketeer.send("over a WebSocket")
    for member in (poller, socketeer):
        assert member.wait_until(lambda m=member: len(m.texts()) == 2)
        assert sorted(member.texts()) == ["over HTTP requests", "over a WebSocket"]


def test_many_senders_at_once_lose_and_duplicate_nothing(chat, connect):
    room = new_room()
    members = [connect(chat) for _ in range(20)]
    for i, member in enumerate(members):
        member.join(room, f"m{i}")
    barrier = threading.Barrier(len(members))
    acks: list[dict] = []

    def talk(i: int, member: Member) -> None:
        barrier.wait(timeout=WAIT)
        for n in range(3):
            acks.append(member.send(f"{i}.{n}"))

    threads = [threading.Thread(target=talk, args=pair) for pair in enumerate(members)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(acks) == 60 and all("id" in ack for ack in acks)
    assert len({ack["id"] for ack in acks}) == 60
    for member in members:
        assert member.wait_until(lambda m=member: len(m.texts()) >= 60)
    time.sleep(0.3)
    for member in members:
        ids = [m["id"] for m in member.events["message"]]
        assert len(ids) == 60 and set(ids) == {ack["id"] for ack in acks}


def test_the_page_uses_the_socketio_client_from_our_own_static_folder(chat):
    page = requests.get(chat.url + "/", timeout=WAIT)
    assert page.status_code == 200
    assert '<script src="/static/vendor/socket.io.min.js">' in page.text
    assert "//cdn" not in page.text and "https://" not in page.text
    client_js = requests.get(chat.url + "/static/vendor/socket.io.min.js", timeout=WAIT)
    assert client_js.status_code == 200, "run `make setup`: it copies the client from npm"
    assert "Socket.IO" in client_js.text[:300] or "socket.io" in client_js.text[:300]


# -- fair service: one hostile client cannot stall the others ---------------------

FLOOD_EVENTS = 20_000  # events each flooding connection writes as fast as it can
FLOODS = {
    # what one raw connection repeats, as Engine.IO frames
    "rooms": ['42["rooms"]'],
    "join/leave": ['42["join",{"room":"%(room)s","name":"flooder"}]', '42["leave"]'],
    "typing": ['42["typing",{"typing":true}]'],
    "message": ['42["message",{"text":"flood"}]'],
    "unknown": ['42["shout",{"text":"flood"}]'],
}


class Flooder(threading.Thread):
    """Connects, joins and writes FLOOD_EVENTS frames, again and again until told to stop.

    A persistent attacker: each time the server hangs up, it reconnects and
    floods again. It records what the server answered.
    """

    def __init__(self, url: str, room: str, frames_to_send: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.room = url, room
        self.frames_to_send = [f % {"room": room} for f in frames_to_send]
        self.stop = threading.Event()
        self.codes: list[str] = []  # error codes received
        self.hung_up = 0  # connections the server closed
        self.sent = 0

    def run(self) -> None:
        while not self.stop.is_set():
            with frames(self.url) as flooder:
                flooder.call("join", {"room": self.room, "name": "flooder"})
                reader = threading.Thread(target=self._read, args=(flooder.ws,), daemon=True)
                reader.start()
                try:
                    for n in range(FLOOD_EVENTS):
                        flooder.ws.send(self.frames_to_send[n % len(self.frames_to_send)])
                        self.sent += 1
                except ConnectionClosed:
                    pass
                reader.join(timeout=WAIT)

    def _read(self, ws: ClientConnection) -> None:
        try:
            while True:
                frame = ws.recv(timeout=WAIT)
                if frame.startswith('42["error"'):
                    self.codes.append(json.loads(frame[2:])[1]["code"])
        except ConnectionClosed:
            self.hung_up += 1
        except TimeoutError:
            pass

    def __enter__(self) -> Flooder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=30)


def quiet_ack_seconds(member: Member, label: str) -> float:
    started = time.monotonic()
    assert "id" in member.send(label)
    return time.monotonic() - started


def check_fair_under_flood(server: ServerProcess, connect, flood: list[str]) -> None:
    room = new_room()
    alice, bob = connect(server), connect(server)
    alice.join(room, "alice")
    bob.join(room, "bob")
    quiet = max(quiet_ack_seconds(alice, f"quiet {n}") for n in range(3))
    started = time.monotonic()
    with Flooder(server.url, room, flood) as flooder:
        deadline = time.monotonic() + WAIT
        while flooder.hung_up < 2 and time.monotonic() < deadline:  # mid-flood, repeatedly
            assert quiet_ack_seconds(alice, "during the flood") < max(1.0, 20 * quiet)
            with frames(server.url) as newcomer:  # the server still answers new connections
                assert newcomer.call("rooms", None)
            time.sleep(0.25)  # alice stays under her own 5 messages a second
    assert flooder.hung_up >= 2, f"the flooder was not disconnected ({flooder.sent} sent)"
    assert "rate_limited" in flooder.codes
    assert flooder.sent < 2 * FLOOD_EVENTS  # hung up on long before it wrote all it had
    assert bob.wait_until(lambda: bob.texts().count("during the flood") >= 1)
    flooded = [p for p in bob.events["presence"] if p["name"] == "flooder"]
    # Joins (and so leaves) are limited per person, across the flooder's connections:
    # a burst of 5, then 1 a second (the issue saw 1,966 notices in 2 s).
    assert len(flooded) <= 2 * (5 + (time.monotonic() - started) + 1)


@pytest.mark.parametrize("kind", list(FLOODS))
def test_a_flood_of_any_event_is_refused_and_hung_up_on_while_others_chat(flooded, connect, kind):
    check_fair_under_flood(flooded, connect, FLOODS[kind])


def test_comebacks_from_a_flooders_address_take_turns_and_too_many_are_refused():
    clock = FakeClock()
    comebacks = rules.Comebacks(spacing=1.0, memory=30.0, longest_wait=3.0, clock=clock)
    assert comebacks.wait("10.0.0.1") == 0.0  # never hung up on: served at once
    comebacks.hung_up("10.0.0.1")
    # One at once, then one a second, whoever asks; past 3 s of waiting: refused.
    assert [comebacks.wait("10.0.0.1") for _ in range(6)] == [0.0, 1.0, 2.0, 3.0, None, None]
    assert comebacks.wait("10.0.0.2") == 0.0  # another address is not touched
    clock.now += 10  # the queue has drained: one at once again, then the spacing
    assert [comebacks.wait("10.0.0.1") for _ in range(2)] == [0.0, 1.0]
    clock.now += 31  # no hang-up for longer than the memory: forgotten
    assert [comebacks.wait("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    few = rules.Comebacks(kept=2, clock=clock)
    for address in ("a", "b", "c"):
        few.hung_up(address)
    assert few.wait("a") == 0.0 and few.wait("b") == 0.0 and few.wait("b") == 1.0  # a: dropped


def test_a_flooders_address_reconnects_one_at_a_time_while_members_chat_on(
    start_server, connect, tmp_path
):
    spacing = 6.0  # the second comeback waits 6 s; the third would wait 12: refused
    server = start_server(
        APP, "--db", str(tmp_path / "chat.db"), "--comeback-spacing", str(spacing)
    )
    room = new_room()
    alice, bob = connect(server), connect(server)
    carol = connect(server, transports=["polling"])  # each poll is a request of its own
    alice.join(room, "alice")
    bob.join(room, "bob")
    carol.join(room, "carol")
    with frames(server.url) as garbler:  # hung up on for a frame that is not Socket.IO
        garbler.ws.send("49")
        with pytest.raises(ConnectionClosed):
            while True:
                garbler.ws.recv(timeout=WAIT)
    ws_url = server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"

    def comeback() -> tuple[float, str]:
        """Seconds until Engine.IO's open packet came, or the connection was closed."""
        started = time.monotonic()
        try:
            with websocket_connect(ws_url, open_timeout=WAIT) as ws:
                ws.recv(timeout=WAIT)
                return time.monotonic() - started, "served"
        except ConnectionClosed:
            return time.monotonic() - started, "refused"

    first = comeback()
    assert first[1] == "served" and first[0] < 1.0  # the first comes back at once
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(comeback) for _ in range(2)]
        time.sleep(0.5)
        assert quiet_ack_seconds(alice, "still here") < 1.0  # members are not kept waiting
        # nor are the polls and posts of a session made before the hang-up, nor pages
        assert quiet_ack_seconds(carol, "polling too") < 1.0
        assert requests.get(server.url + "/", timeout=WAIT).status_code == 200
        results = sorted(f.result(timeout=4 * WAIT) for f in waiting)
    refused = [seconds for seconds, outcome in results if outcome == "refused"]
    served = [seconds for seconds, outcome in results if outcome == "served"]
    assert len(refused) == 1 and refused[0] < 1.0  # refused at once, not after a wait
    assert len(served) == 1 and spacing - 0.5 < served[0] < spacing + 2  # its turn came
    assert bob.wait_until(lambda: bob.texts() == ["still here", "polling too"])


def test_room_lists_cost_the_same_on_a_database_of_200000_messages(tmp_path, start_server, connect):
    db = tmp_path / "big.db"
    store = store_module.ChatStore(db)
    for batch in range(20):
        store.add_many(f"busy{batch % 4}", "seed", [f"old {n}" for n in range(10_000)])
    store.close()
    server = start_server(APP, "--db", str(db))
    lobby = {entry["room"] for entry in connect(server).call("rooms")}
    assert {"busy0", "busy3", "general"} <= lobby
    check_fair_under_flood(server, connect, FLOODS["rooms"])


# -- delivery without gaps or duplicates --------------------------------------------


def test_a_member_offline_while_1000_messages_arrive_pages_through_all_of_them(
    tmp_path, start_server, connect
):
    db = tmp_path / "chat.db"
    server = start_server(APP, "--db", str(db))
    room = new_room()
    alice, bob = connect(server), connect(server)
    alice.join(room, "alice")
    joined = bob.join(room, "bob")
    last = alice.send("before bob went away")
    assert bob.wait_until(lambda: bob.texts() == ["before bob went away"])
    bob.close()
    # 1,000 arrive meanwhile: stored by another writer on the same database, as a
    # second server process would, and the last few live through this one.
    other_writer = store_module.ChatStore(db)
    other_writer.add_many(room, "carol", [f"missed {n}" for n in range(996)])
    other_writer.close()
    live = [alice.send(f"missed {n}") for n in range(996, 1000)]  # within alice's burst
    back = connect(server)
    rejoined = back.join(room, "bob", after_id=last["id"], token=joined["token"])
    got, more = rejoined["history"], rejoined["more"]
    assert len(got) == 50 and more  # the oldest 50 after after_id, and a flag to go on
    pages = 1
    while more:
        page = back.call("history", {"room": room, "after_id": got[-1]["id"], "limit": 200})
        got += page["messages"]
        more = page["more"]
        pages += 1
    assert [m["text"] for m in got] == [f"missed {n}" for n in range(1000)]
    assert [m["seq"] for m in got] == list(range(last["seq"] + 1, last["seq"] + 1001))
    assert len({m["id"] for m in got}) == 1000 and pages == 1 + 5
    assert got[-1]["id"] == live[-1]["id"]


def test_frames_of_every_length_arrive_whole(tmp_path, start_server, connect):
    # WebSocket frames carry their length in 1, 2 or 8 bytes (RFC 6455 5.2):
    # under 126, under 65,536, and this join ack of 50 x 2,000 characters.
    db = tmp_path / "chat.db"
    seeded = store_module.ChatStore(db)
    texts = [f"{n:04d}" + "é" * (rules.MAX_MESSAGE_CHARS - 4) for n in range(50)]
    seeded.add_many("long", "seed", texts)
    seeded.close()
    server = start_server(APP, "--db", str(db))
    member = connect(server)
    assert [m["text"] for m in member.join("long", "reader")["history"]] == texts
    page = member.call("history", {"room": "long", "after_id": 0, "limit": 1})
    assert page["messages"][0]["text"] == texts[0] and page["more"]
    assert member.send("short")["seq"] == 51


def test_history_refuses_bad_pages(chat, connect):
    member = connect(chat)
    for payload in (
        {"room": "general", "after_id": -1},
        {"room": "general", "after_id": 0, "limit": 0},
        {"room": "general", "after_id": 0, "limit": 201},
        {"room": "no room!", "after_id": 0},
        "general",
    ):
        assert member.call("history", payload)["code"] in ("wrong_type", "bad_room"), payload


def test_a_send_retried_with_the_same_client_id_is_stored_and_broadcast_once(chat, connect):
    room = new_room()
    reader = connect(chat)
    reader.join(room, "reader")
    with frames(chat.url) as sender:
        sender.call("join", {"room": room, "name": "sender"})
        message = {"text": "only once", "client_id": "3f2a-retry"}
        sender.ws.send(f"42{json.dumps(['message', message])}")  # the ack is "lost": no id asked
        first = sender.collect("message", 1)[0]  # its own broadcast: it was stored
        retried = sender.call("message", message)  # the retry, after a timeout
        assert retried == {"id": first["id"], "ts": first["ts"], "seq": first["seq"]}
        assert sender.call("message", {"text": "next", "client_id": "3f2a-next"})["seq"] == 2
    assert reader.wait_until(lambda: reader.texts() == ["only once", "next"])
    time.sleep(0.3)  # a second broadcast would have arrived by now
    assert reader.texts() == ["only once", "next"]
    history = connect(chat).join(room, "auditor")["history"]
    assert [m["text"] for m in history] == ["only once", "next"]


# -- identity that survives reconnects ----------------------------------------------


def test_a_half_open_ghost_gives_the_name_back_to_its_token_and_to_no_one_else(chat, connect):
    room = new_room()
    bystander = connect(chat)
    bystander.join(room, "bystander")
    with frames(chat.url) as ghost:
        joined = ghost.call("join", {"room": room, "name": "alice"})
        token = joined["token"]
        # The network drops: the ghost's socket stays open on the server, unanswered.
        stranger = connect(chat)
        assert stranger.join(room, "alice")["code"] == "name_taken"
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert stranger.join(room, "alice", token=forged)["code"] == "name_taken"
        someone = connect(chat).join(new_room(), "someone")["token"]
        assert stranger.join(room, "alice", token=someone)["code"] == "name_taken"
        # Strangers failing to take the name do not use up alice's joins (5 at once).
        for _ in range(8):
            assert connect(chat).join(room, "alice")["code"] == "name_taken"
        started = time.monotonic()
        back = connect(chat).join(room, "alice", token=token)
        took = time.monotonic() - started
        assert back["name"] == "alice" and took < WAIT
        assert back["members"] == ["alice", "bystander"]
        heard = []
        with pytest.raises(ConnectionClosed):  # the ghost is closed...
            while True:
                heard.append(ghost.ws.recv(timeout=WAIT))
        assert "41" in heard  # ...after a Socket.IO disconnect: a live client would not reconnect
    # Nobody saw alice leave or come back: the name never changed hands.
    time.sleep(0.3)
    assert [p["name"] for p in bystander.events["presence"]] == ["alice"]
    assert bystander.join(room, "bystander")["members"] == ["alice", "bystander"]


def test_a_live_connection_that_loses_its_name_to_its_own_token_stays_away(chat, connect):
    room = new_room()
    reasons: list[str] = []
    first = socketio.Client(reconnection=True, reconnection_delay=0.1)  # as the page and CLI
    first.on("disconnect", reasons.append)
    first.connect(chat.url, transports=["websocket"], wait_timeout=WAIT)
    try:
        token = first.call("join", {"room": room, "name": "alice"}, timeout=WAIT)["token"]
        second = connect(chat)  # another tab with the same token
        assert second.join(room, "alice", token=token)["name"] == "alice"
        deadline = time.monotonic() + WAIT
        while not reasons and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reasons == [first.reason.SERVER_DISCONNECT]
        time.sleep(1.0)  # a reconnect (0.1 s) would have taken the name back by now
        assert not first.connected
        assert second.join(room, "alice")["members"] == ["alice"]
    finally:
        first.disconnect()


# -- restarts, crashes and the scripts' command lines ------------------------------


def test_acknowledged_messages_survive_a_crash_and_the_last_50_come_back(
    tmp_path, start_server, connect
):
    db = tmp_path / "chat.db"
    seeded = store_module.ChatStore(db)
    for n in range(52):
        seeded.add("lobby", "old", f"old {n}")
    seeded.close()
    room = "lobby"
    server = start_server(APP, "--db", str(db))
    alice = connect(server)
    alice.join(room, "alice")
    acks = [alice.send(f"new {n}") for n in range(3)]
    server.kill()  # SIGKILL: no chance to flush or close anything
    restarted = start_server(APP, "--db", str(db))
    history = connect(restarted).join(room, "bob")["history"]
    assert len(history) == 50
    assert [m["text"] for m in history] == [f"old {n}" for n in range(5, 52)] + [
        f"new {n}" for n in range(3)
    ]
    assert [m["id"] for m in history[-3:]] == [ack["id"] for ack in acks]
    catch_up = connect(restarted).join(room, "carol", after_id=acks[0]["id"])["history"]
    assert [m["text"] for m in catch_up] == ["new 1", "new 2"]
    assert restarted.stop() == 0  # SIGTERM: a clean exit


presence_redis = load_module("RealTimeChat", "chat_presence_redis")


def wait_for_subscribers(url: str, count: int) -> None:
    """Each app process subscribes to Redis's pub/sub when its first client connects."""
    queue = redis.Redis.from_url(url)
    deadline = time.monotonic() + WAIT
    while dict(queue.pubsub_numsub("flask-socketio")).get(b"flask-socketio", 0) < count:
        assert time.monotonic() < deadline, f"the {count} app processes never subscribed"
        time.sleep(0.05)


def lobby_count(member: Member, room: str) -> int:
    return {e["room"]: e["members"] for e in member.call("rooms")}.get(room, 0)


def test_two_processes_behind_redis_are_one_chat(tmp_path, redis_server, start_server, connect):
    shared = redis_server()
    db = str(tmp_path / "chat.db")  # one database, as two replicas of one service would share
    east = start_server(APP, "--db", db, "--redis", shared.url)
    west = start_server(APP, "--db", db, "--redis", shared.url)
    room = new_room()
    alice, carol, bob, dave = connect(east), connect(east), connect(west), connect(west)
    alice.join(room, "alice")
    wait_for_subscribers(shared.url, 2)
    bob.join(room, "bob")
    carol.join(room, "carol")
    dave.join(room, "dave")
    assert alice.wait_until(lambda: {p["name"] for p in alice.events["presence"]} >= {"bob"})

    # A name taken on one process is refused on the other, in any spelling.
    assert connect(west).join(room, "ALICE")["code"] == "name_taken"
    assert connect(west).join(room, "\u0430lice")["code"] == "name_taken"  # a Cyrillic a
    # Claims racing on both processes at once: exactly one wins.
    racers = [connect(east if n % 2 else west) for n in range(8)]
    barrier = threading.Barrier(len(racers))
    replies: list[dict] = []

    def race(member: Member) -> None:
        barrier.wait(timeout=WAIT)
        replies.append(member.join(room, "zed"))

    threads = [threading.Thread(target=race, args=(m,)) for m in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT)
    assert sorted("name" in r for r in replies) == [False] * 7 + [True]

    # Member lists and lobby counts are the same whichever process answers.
    everyone = ["alice", "bob", "carol", "dave", "zed"]
    assert alice.join(room, "alice")["members"] == everyone  # the same seat again: a query
    assert bob.join(room, "bob")["members"] == everyone
    assert lobby_count(alice, room) == lobby_count(bob, room) == 5
    ack = alice.send("from east")
    bob.send("from west")
    for member in (alice, bob):
        assert member.wait_until(lambda m=member: len(m.texts()) == 2)
        assert sorted(member.texts()) == ["from east", "from west"]
    assert [m["id"] for m in bob.events["message"] if m["text"] == "from east"] == [ack["id"]]

    # kill -9 east: its members (alice, carol, perhaps zed) leave west's list in time.
    killed = time.monotonic()
    east.kill()

    def gone() -> set[str]:
        return {p["name"] for p in bob.events["presence"] if not p["online"]}

    bound = presence_redis.CRASH_BOUND
    assert bob.wait_until(lambda: {"alice", "carol"} <= gone(), timeout=bound + WAIT)
    took = time.monotonic() - killed
    assert took < bound + 3, f"left after {took:.1f} s; the stated bound is {bound:.0f} s"
    survivors = bob.join(room, "bob")["members"]
    assert {"alice", "carol"}.isdisjoint(survivors) and {"bob", "dave"} <= set(survivors)
    assert lobby_count(bob, room) == len(survivors)
    assert connect(west).join(room, "alice")["name"] == "alice"  # the name is free again


def test_a_process_paused_past_its_lease_lets_its_members_go_and_they_rejoin(
    tmp_path, redis_server, start_server, connect, cli
):
    shared = redis_server()
    db = str(tmp_path / "chat.db")
    east = start_server(APP, "--db", db, "--redis", shared.url)
    west = start_server(APP, "--db", db, "--redis", shared.url)
    room = new_room()
    bob = connect(west)
    bob.join(room, "bob")
    alice = cli(east.url, room, "alice")  # reconnects and rejoins by itself
    assert alice.wait_for("* joined")
    assert bob.wait_until(lambda: ("alice", True) in presence_of(bob))
    east.signal(signal.SIGSTOP)  # a stalled VM: east says nothing, its lease runs out
    try:
        bound = presence_redis.CRASH_BOUND
        assert bob.wait_until(lambda: ("alice", False) in presence_of(bob), timeout=bound + WAIT)
        assert "alice" not in bob.join(room, "bob")["members"]
    finally:
        east.signal(signal.SIGCONT)
    # Awake, east finds its lease gone and closes its connections; alice comes back.
    assert alice.wait_for("* back in", timeout=30), (alice.out, alice.err, east.text)
    assert bob.wait_until(lambda: presence_of(bob).count(("alice", True)) == 2)
    alice.type("still me")
    assert bob.wait_until(lambda: bob.texts() == ["still me"])
    assert "alice" in bob.join(room, "bob")["members"]


def test_a_name_let_go_while_redis_is_away_is_released_once_it_is_back(
    tmp_path, redis_server, start_server, connect
):
    shared = redis_server("--appendonly", "yes", "--appendfsync", "always")  # keeps its data
    server = start_server(APP, "--db", str(tmp_path / "chat.db"), "--redis", shared.url)
    room = new_room()
    connect(server).join(room, "bob")
    alice = connect(server)
    alice.join(room, "alice")
    shared.kill()  # a blip: Redis restarts with its data, within the lease
    alice.close()  # her disconnect cannot release her name now...
    assert server.wait_for_output("the next sweep retries"), server.text
    shared.start()
    # ...so the sweep does, once Redis is back (it was held for good)
    stranger = connect(server)
    assert wait_for(lambda: "name" in stranger.join(room, "alice")), server.text


def presence_of(member: Member) -> list[tuple[str, bool]]:
    return [(p["name"], p["online"]) for p in member.events["presence"]]


def test_four_processes_started_at_once_on_a_fresh_database_all_start(tmp_path, start_server):
    db = str(tmp_path / "fresh.db")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        starts = [pool.submit(start_server, APP, "--db", db) for _ in range(4)]
        servers = [start.result() for start in starts]  # raises if one exited
    for server in servers:
        assert requests.get(server.url + "/", timeout=WAIT).status_code == 200
        assert "locked" not in server.text


def test_app_and_client_refuse_bad_arguments_with_exit_code_2():
    cases = [
        (APP, ["--port", "70000"]),
        (APP, ["--redis", "http://localhost:6379"]),
        (CLI, ["--name", "a", "--url", "ws://x"]),
        (CLI, []),
        ("RealTimeChat/bench.py", ["--sizes", "1"]),
    ]
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        results = pool.map(lambda case: run_script(case[0], *case[1], timeout=60), cases)
        for (script, args), result in zip(cases, results, strict=True):
            assert result.returncode == 2, (script, args, result.stderr)
            assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_app_refuses_to_start_without_its_redis():
    nowhere = f"redis://127.0.0.1:{free_port()}"
    result = run_script(APP, "--port", "0", "--redis", nowhere, timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"cannot reach Redis at {nowhere}" in result.stderr
    assert "Listening" not in result.stdout and "Traceback" not in result.stderr


def test_cli_client_sends_one_message_and_reports_its_ack(chat, connect):
    room = new_room()
    reader = connect(chat)
    reader.join(room, "reader")
    result = run_script(CLI, "--url", chat.url, "--room", room, "--name", "cli", "--send", "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("stored as message ")
    assert reader.wait_until(lambda: reader.texts() == ["hi"])
    refused = run_script(CLI, "--url", chat.url, "--room", room, "--name", "cli", "--send", " ")
    assert refused.returncode == 1 and "empty" in refused.stderr


def test_cli_client_says_so_when_no_server_is_there():
    result = run_script(
        CLI, "--url", f"http://127.0.0.1:{free_port()}", "--name", "a", "--send", "x"
    )
    assert result.returncode == 1
    assert "cannot connect" in result.stderr and "Traceback" not in result.stderr


class CliProcess:
    """cli_client.py as a subprocess: lines in through stdin, its output read as it comes."""

    def __init__(self, url: str, room: str, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script_path(CLI)), "--url", url, "--room", room, "--name", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        self._drains = [
            threading.Thread(target=self._drain, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for drain in self._drains:
            drain.start()

    def _drain(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: any(text in line for line in self.out), timeout)

    def type(self, *lines: str) -> None:
        self.proc.stdin.write("".join(line + "\n" for line in lines))
        self.proc.stdin.flush()

    def finish(self, timeout: float) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=WAIT)
        for drain in self._drains:
            drain.join(timeout=WAIT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def cli() -> Iterator[Callable[..., CliProcess]]:
    started: list[CliProcess] = []

    def _start(*args: str) -> CliProcess:
        started.append(CliProcess(*args))
        return started[-1]

    yield _start
    for process in started:
        process.kill()


def test_cli_client_keeps_lines_typed_while_the_server_is_down_and_sends_them_in_order(
    tmp_path, start_server, connect, cli
):
    db = str(tmp_path / "chat.db")
    server = start_server(APP, "--db", db)
    room = new_room()
    watcher = connect(server)
    watcher.join(room, "watcher")
    typist = cli(server.url, room, "typist")
    assert typist.wait_for("* joined")
    typist.type("before the crash")
    assert watcher.wait_until(lambda: watcher.texts() == ["before the crash"])
    port = server.port
    server.kill()
    assert typist.wait_for("disconnected")
    # More than the burst of 5 and the 20 refusals the server forgives: paced, in order
    offline = [f"offline {n}" for n in range(40)]
    typist.type(offline[0], "", "x" * 3000, *offline[1:])  # a blank line, one too long
    time.sleep(0.5)  # typed while nothing is there to take them
    restarted = start_server(APP, "--db", db, port=port)
    reader = connect(restarted)
    reader.join(room, "reader")
    assert typist.wait_for("* back in")
    assert typist.finish(timeout=60) == 0  # Ctrl-D: it sends what is left, then exits
    history = [m["text"] for m in connect(restarted).join(room, "auditor")["history"]]
    assert history == ["before the crash", *offline]
    assert reader.wait_until(lambda: reader.texts() == offline)
    errors = "\n".join(typist.err)
    assert "too_long" in errors or "2,000" in errors
    assert "Traceback" not in errors and "Traceback" not in "\n".join(typist.out)
    assert "closing" not in restarted.text  # a polite client is never taken for a flooder


def test_cli_client_prints_what_it_missed_once_and_in_order(tmp_path, start_server, connect, cli):
    db = str(tmp_path / "chat.db")
    server = start_server(APP, "--db", db)
    room = new_room()
    typist = cli(server.url, room, "reader")
    assert typist.wait_for("* joined")
    port = server.port
    server.kill()
    assert typist.wait_for("disconnected")
    writer = store_module.ChatStore(db)  # 300 arrive meanwhile, through another process
    writer.add_many(room, "writer", [f"missed {n}" for n in range(300)])
    writer.close()
    restarted = start_server(APP, "--db", db, port=port)
    assert typist.wait_for("* back in", timeout=30)
    speaker = connect(restarted)
    speaker.join(room, "speaker")
    speaker.send("live again")
    assert typist.wait_for("speaker: live again")
    assert typist.finish(timeout=WAIT) == 0
    shown = [line.split(": ", 1)[1] for line in typist.out if line.startswith("[")]
    assert shown == [f"missed {n}" for n in range(300)] + ["live again"]


# -- a real browser ---------------------------------------------------------------

browser_scene = load_module("RealTimeChat", "chat_browser")


def test_two_browser_pages_chat_show_html_as_text_and_survive_a_restart(
    tmp_path, start_server, connect
):
    from playwright.sync_api import sync_playwright

    chromium = engine_binary("chromium")
    db = tmp_path / "chat.db"
    server = start_server(APP, "--db", str(db))
    with sync_playwright() as playwright:
        browser = browser_scene.launch(playwright, chromium)
        try:
            run_browser_scenario(browser, server, start_server, db, tmp_path)
        finally:
            browser.close()


def run_browser_scenario(browser, server, start_server, db: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    alice, bob, carol = browser_scene.play_scene(browser, server.url)
    carol.disconnect()
    texts = browser_scene.SCENE_TEXTS
    for page in (alice, bob):
        expect(page.locator("#messages img")).to_have_count(0)
        assert page.dialogs == []
    expect(bob.locator("#messages li[data-id] .author")).to_have_text(
        ["alice", "bob", "carol", "alice"]
    )
    expect(bob.locator("#rooms li.current .count")).to_have_text("2")
    browser_scene.photograph(bob, tmp_path / "chat.png")  # never the tracked images/chat.png
    assert (tmp_path / "chat.png").stat().st_size > 10_000

    # The server dies: the pages say so and disable Send; alice's text stays in the box.
    port = server.port
    server.kill()
    for page in (alice, bob):
        expect(page.locator("#status")).to_contain_text("reconnecting")
        expect(page.locator("#send")).to_be_disabled()
    alice.fill("#text", "are you still there?")
    alice.press("#text", "Enter")
    # Meanwhile 60 messages arrive through another process on the same database:
    # more than the 50 a join returns, so the pages must page on with `history`.
    missed = [f"while you were away {n}" for n in range(60)]
    writer = store_module.ChatStore(db)
    writer.add_many("general", "dave", missed)
    writer.close()
    # The server comes back on the same port: both pages rejoin and catch up by themselves.
    start_server(APP, "--db", str(db), port=port)
    for page in (alice, bob):
        expect(page.locator("#status")).to_have_class(browser_scene.CONNECTED, timeout=20_000)
        expect(page.locator("#messages li[data-id] .text")).to_have_text([*texts, *missed])
    expect(alice.locator("#members li")).to_have_text(["alice", "bob"])
    expect(alice.locator("#text")).to_have_value("are you still there?")
    alice.click("#send")
    expect(bob.locator("#messages li[data-id] .text")).to_have_text(
        [*texts, *missed, "are you still there?"]
    )
    expect(alice.locator("#text")).to_have_value("")
    assert alice.js_errors == [] and bob.js_errors == []
