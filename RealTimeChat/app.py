# ruff: noqa: E402  (a server process must let gevent patch the standard library before imports)
"""RealTimeChat: a multi-room chat server on Flask and Flask-SocketIO (README.md).

`create_app(config)` builds the Flask app and its SocketIO with their own
database, the way Flask's tutorial builds an app per test. Run as a script,
it serves the chat on gevent: one process, one OS thread, one greenlet per
connection (README: "Server mode").

    python RealTimeChat/app.py --port 5000          then open http://127.0.0.1:5000
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "--threading" not in sys.argv[1:]:
    # gevent swaps the blocking calls of socket, ssl, threading and time for ones
    # that yield to other greenlets. It must happen before anything imports them,
    # and only in a server process: patching a test run would change every test.
    from gevent import monkey

    monkey.patch_all()

import argparse
import functools
import gc
import logging
import math
import re
import signal
import socket
import sqlite3
import threading
import types
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
from chat_rooms import NameTaken, Rooms, Seat
from chat_rules import (
    COMEBACK_SPACING,
    LIMITS,
    Comebacks,
    Flooding,
    Limiter,
    Rejected,
    TokenBucket,
    check_history,
    check_join,
    check_message,
    check_typing,
)
from chat_store import HISTORY_LIMIT, PAGE_LIMIT, ChatStore, StoreError
from engineio import exceptions as engineio_exceptions
from engineio import packet as engineio_packet
from engineio import socket as engineio_socket
from flask import Flask, Request, render_template, request
from flask_socketio import SocketIO, emit, join_room, leave_room
from itsdangerous import BadData, URLSafeTimedSerializer
from socketio import packet as socketio_packet
from werkzeug.routing import MapAdapter

HERE = Path(__file__).resolve().parent
DEFAULT_DB = HERE / "out" / "chat.db"  # git-ignored; pass --db to keep several apart
CLIENT_JS = HERE / "static" / "vendor" / "socket.io.min.js"  # copied from npm by `make setup`
DEFAULT_ROOMS = ("general", "random")  # listed in the lobby even when empty
EVENTS = ("join", "leave", "message", "typing", "rooms", "history")  # what a client may send

LOBBY_INTERVAL = 0.5  # s: membership changes within this window make one lobby update
LOBBY_ROOMS = 50  # rooms the lobby lists, busiest first: it goes to every client
# Above this many members a room stops announcing each join and leave: N people
# joining one by one would cost N(N-1)/2 notices (2,000 joiners: 2 million).
# The lobby's count, pushed at most twice a second, says how many are there.
ANNOUNCE_UP_TO = 200
MAX_PACKET_BYTES = 64 * 1024  # Engine.IO closes a connection that sends a bigger packet
MAX_ATTACHMENTS = 4  # binary attachments one event may announce (the chat's events take none)
STRAY_FRAMES = (1.0, 3)  # frames that do nothing: rate and burst a connection may send
# A Socket.IO packet: its type digit, "<count>-" if it has binary attachments,
# then its namespace if not "/" (and any "?query" after it).
SOCKETIO_HEADER = re.compile(r"(?P<type>\d)(?:(?P<attachments>\d{1,10})-)?(?P<namespace>/[^,?]*)?")
SOCKETIO_PATH = "/socket.io"  # where Engine.IO serves, before Flask's routes (the default)
PING_INTERVAL, PING_TIMEOUT = 10, 5  # s: a vanished client leaves presence in 15-20 s
LISTEN_BACKLOG = 2048  # connections the kernel queues while we accept: reconnect storms
STOP_TIMEOUT = 2.0  # s: open connections get this long to close at shutdown
REDIS_TIMEOUT = 2.0  # s: how long app.py waits for --redis at start
TOKEN_MAX_AGE = 7 * 24 * 3600  # s: a rejoin token older than a week no longer counts
# Python's cyclic garbage collector runs after every 700 net allocations by
# default, and a full run scans every object: with 2,000 connections held,
# one took 0.9 s of the 30 broadcasts' tail. Collecting young objects per
# 50,000 allocations, and freezing what start-up made (it lives forever),
# halved the collector's time in that run and cut its longest pause to 0.1 s.
GC_THRESHOLDS = (50_000, 20, 20)

log = logging.getLogger("realtimechat")


class ChatServer:
    """The chat's event handlers and the state they share.

    Every handler starts with `admit(event)`, the rate limit, before it reads
    its payload. Handlers raise `Rejected` for bad input; `on_error` turns
    that into an `error` event (and the ack's answer) for that client alone,
    so one bad client never disturbs the others.
    """

    def __init__(
        self,
        socketio: SocketIO,
        store: ChatStore,
        presence,
        limiter: Limiter,
        comebacks: Comebacks,
        disk: Callable,
    ) -> None:
        self.socketio = socketio
        self.store = store
        self.disk = disk  # how a handler calls the store: see store_caller()
        self.presence = presence  # chat_rooms.Rooms, or chat_presence_redis.RedisRooms
        self.limiter = limiter
        self.comebacks = comebacks  # addresses hung up on, and when they may reconnect
        # Rejoin tokens are signed with a secret kept in the database, so every
        # process on it, and the same one after a restart, accepts them.
        self.tokens = URLSafeTimedSerializer(store.secret("rejoin-token"), salt="rejoin")
        self.connected: set[str] = set()  # sids between connect and disconnect
        self.people: dict[str, str] = {}  # sid -> person id, from its first join
        self._lobby_lock = threading.Lock()  # guards the two flags below
        self._lobby_pending = False  # True while a lobby update is scheduled
        self._closed = False  # True once close() has run: nothing more is sent

    # -- connecting and leaving ------------------------------------------------

    def on_connect(self, auth: object = None) -> None:
        sid = request.sid
        if sid in self.connected:  # not Socket.IO connecting: a client sent an event named so
            self.admit("connect")
            raise Rejected("reserved_event", "'connect' is Socket.IO's own event, not a client's")
        self.connected.add(sid)
        emit("rooms", self.lobby())

    def on_disconnect(self, *reason: object) -> None:
        sid = request.sid
        if self.socketio.server.manager.is_connected(sid, "/"):
            # During a real disconnect Socket.IO has already marked the client as leaving.
            self.admit("disconnect")
            raise Rejected(
                "reserved_event", "'disconnect' is Socket.IO's own event, not a client's"
            )
        self.connected.discard(sid)
        self.people.pop(sid, None)
        self.limiter.forget(sid)
        self._vacate(sid, self.presence.leave(sid))

    # -- the events a client sends -------------------------------------------

    def on_join(self, payload: object = None, *extra: object) -> dict:
        """Sit in a room under a name; the ack carries the members, history and a rejoin token.

        The same person (a valid token) takes their name back from a ghost
        connection at once, and the ghost is closed; anyone else is refused.
        """
        self.admit("join")
        no_extra_arguments("join", extra)
        room, name, after_id, token = check_join(payload)
        sid = request.sid
        moving = self.presence.seat(sid) != Seat(room, name)
        if moving:  # the person it wants to be must have a join left...
            self.limiter.admit_person(sid, (room, name), "join", peek=True)
        person = self.person_in(token) or self.people.get(sid) or uuid.uuid4().hex
        try:
            joined = self.presence.join(sid, room, name, person)
        except NameTaken as taken:
            raise Rejected("name_taken", str(taken)) from None
        if moving:  # ...and spends it only now that the name is theirs
            self.limiter.charge_person((room, name), "join")
        self.people[sid] = person
        if joined.ghost is not None:
            self.close_ghost(joined.ghost, f"'{name}' joined {room} from a newer connection")
        if joined.old is not None:
            self._vacate(sid, joined.old)
        # Enter the room before reading history: a message stored from now on is
        # also broadcast to us, so nothing falls between the two (a message in
        # both is shown once, by id).
        join_room(room)
        if joined.ghost is None and not joined.again:
            if self.presence.count(room) <= ANNOUNCE_UP_TO:
                online = {"room": room, "name": name, "online": True}
                emit("presence", online, to=room, include_self=False)
            self.lobby_changed()
        if after_id:
            history, more = self.disk(self.store.page, room, after_id, HISTORY_LIMIT)
        else:
            history, more = self.disk(self.store.latest, room), False
        return {
            "room": room,
            "name": name,
            "members": self.presence.members(room),
            "history": [message.to_json() for message in history],
            "more": more,  # more after these: page on with `history`
            "token": self.tokens.dumps(person),
        }

    def on_leave(self, *args: object) -> dict:
        self.admit("leave")
        no_arguments("leave", args)
        seat = self.seat_or_reject()
        left = self.presence.leave(request.sid)  # None if a rejoin took the name meanwhile
        leave_room(seat.room)
        if left is not None:
            self.announce_left(left)
        return {"left": seat.room}

    def on_history(self, payload: object = None, *extra: object) -> dict:
        """A page of a room's messages after `after_id`, oldest first, and whether more follow."""
        self.admit("history")
        no_extra_arguments("history", extra)
        room, after_id, limit = check_history(payload, PAGE_LIMIT)
        messages, more = self.disk(self.store.page, room, after_id, limit)
        return {"messages": [message.to_json() for message in messages], "more": more}

    def on_message(self, payload: object = None, *extra: object) -> dict:
        """Store, then broadcast, then acknowledge: an ack means the message is on disk.

        A retry with a `client_id` already stored is acknowledged with the
        first one's id and not broadcast again.
        """
        self.admit("message")
        no_extra_arguments("message", extra)
        seat = self.seat_or_reject()
        text, client_id = check_message(payload)
        message, is_new = self.disk(self.store.add, seat.room, seat.name, text, client_id)
        if is_new:
            emit("message", message.to_json(), to=seat.room)
        return {"id": message.id, "ts": message.ts, "seq": message.seq}

    def on_typing(self, payload: object = None, *extra: object) -> None:
        self.admit("typing")
        no_extra_arguments("typing", extra)
        seat = self.seat_or_reject()
        notice = {"room": seat.room, "name": seat.name, "typing": check_typing(payload)}
        emit("typing", notice, to=seat.room, include_self=False)

    def on_rooms(self, *args: object) -> list[dict]:
        self.admit("rooms")
        no_arguments("rooms", args)
        return self.lobby()

    def on_unknown(self, event: str, *args: object) -> None:
        self.admit(event)
        raise Rejected("unknown_event", f"unknown event '{event}'; events: {', '.join(EVENTS)}")

    def on_error(self, error: Exception) -> dict:
        """Tell only the sender what went wrong; the answer also goes back as the ack."""
        if isinstance(error, Rejected):
            code, reason = error.code, error.reason
        elif isinstance(error, Flooding):
            code, reason = "flooding", f"disconnected: {error}"
        else:
            log.exception("handler failed on %r", request.event)
            code, reason = "internal", "the server failed on this event (logged); nothing changed"
        event = request.event["message"]
        if event == "*" and request.event["args"]:
            event = request.event["args"][0]  # the catch-all handler gets the name first
        emit("error", {"event": event, "code": code, "reason": reason})
        if code == "flooding":
            self.hang_up(request.sid, str(error))
        return {"error": reason, "code": code}

    # -- helpers ---------------------------------------------------------------

    def answering(self, handler: Callable) -> Callable:
        """`handler`, with its refusals answered here rather than by Flask-SocketIO.

        Flask-SocketIO catches a handler's exception with `sys.exc_info()` in
        a local variable: its frame then holds the traceback that holds the
        frame, a reference cycle through every frame of the event's stack,
        which only the cyclic garbage collector frees. A flood is refusals
        by the thousand, and the collector freed their 50,000 objects at once
        in 120-160 ms, stalling every connection (README: "Fair service"). Caught
        here, the exception is dropped at the end of the `except` block and
        reference counting frees it at once. Other exceptions still reach
        `on_error` through Flask-SocketIO, logged.
        """

        @functools.wraps(handler)
        def answer(*args: object) -> object:
            try:
                return handler(*args)
            except (Rejected, Flooding) as error:
                return self.on_error(error)

        return answer

    def admit(self, event: str) -> None:
        """Pass the event through its connection's and its person's token buckets."""
        seat = self.presence.seat(request.sid)
        person = (seat.room, seat.name) if seat else None
        self.limiter.admit(request.sid, person, event)

    def hang_up(self, sid: str, why: str) -> None:
        """Close the connection itself (Engine.IO), not just its Socket.IO namespace.

        Leaving the namespace alone would keep the socket open, and the server
        would go on reading every frame the client had already written.
        """
        eio_sid = self.socketio.server.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is None:  # gone already; and Engine.IO's disconnect(None) closes everyone
            return
        hang_up_on(self.socketio, self.comebacks, eio_sid, why)

    def close_ghost(self, ghost: str, why: str) -> None:
        """Tell the ghost's client it lost its name, then close its connection.

        The Socket.IO disconnect comes first because clients do not reconnect
        after one: two live tabs sharing a token would otherwise take the name
        from each other forever. A half-open ghost hears nothing; on another
        process, Redis carries the disconnect there.
        """
        eio_sid = self.socketio.server.manager.eio_sid_from_sid(ghost, "/")  # None: elsewhere
        self.socketio.emit("replaced", {"reason": why}, to=ghost)
        self.socketio.server.disconnect(ghost)
        if eio_sid is not None:
            log.warning("closing %s: %s", ghost, why)
            self.socketio.server.eio.disconnect(eio_sid)

    def person_in(self, token: str | None) -> str | None:
        """The person id a rejoin token vouches for; None if it is absent, forged or stale."""
        if token is None:
            return None
        try:
            return self.tokens.loads(token, max_age=TOKEN_MAX_AGE)
        except BadData:
            return None

    def seat_or_reject(self) -> Seat:
        seat = self.presence.seat(request.sid)
        if seat is None:
            raise Rejected("not_in_room", "join a room first: emit 'join' with a room and a name")
        return seat

    def _vacate(self, sid: str, seat: Seat | None) -> None:
        """Announce that `sid` left `seat` (if it had one)."""
        if seat is None:
            return
        leave_room(seat.room, sid=sid)
        self.announce_left(seat)

    def announce_left(self, seat: Seat) -> None:
        if self.presence.count(seat.room) < ANNOUNCE_UP_TO:
            offline = {"room": seat.room, "name": seat.name, "online": False}
            self.socketio.emit("presence", offline, to=seat.room)
        self.lobby_changed()

    def lobby(self) -> list[dict]:
        """The busiest rooms with their members; cheap however many messages are stored."""
        counts = self.presence.busiest(LOBBY_ROOMS)
        names = set(DEFAULT_ROOMS) | set(counts) | set(self.disk(self.store.rooms, LOBBY_ROOMS))
        busiest = sorted(names, key=lambda room: (-counts.get(room, 0), room))[:LOBBY_ROOMS]
        return [{"room": room, "members": counts.get(room, 0)} for room in busiest]

    def lobby_changed(self) -> None:
        """Schedule one lobby update for all changes in the next LOBBY_INTERVAL.

        Sending the lobby on every join would cost N messages per join, N^2 for
        a room filling up; coalescing keeps it at one update per interval.
        """
        with self._lobby_lock:
            if self._lobby_pending:
                return
            self._lobby_pending = True
        self.socketio.start_background_task(self._send_lobby_later)

    def _send_lobby_later(self) -> None:
        self.socketio.sleep(LOBBY_INTERVAL)
        with self._lobby_lock:
            self._lobby_pending = False
            if self._closed:
                return
            try:
                lobby = self.lobby()
            except redis.RedisError as error:  # the next membership change sends one
                log.warning("lobby update skipped: %s", error)
                return
        self.socketio.emit("rooms", lobby)

    def keep_presence_alive(self, interval: float) -> None:
        """With Redis: renew this process's lease, and release crashed processes' names."""
        while not self._closed:
            try:
                dropped = self.presence.heartbeat()
                for sid, seat in (dropped or {}).items():  # our lease had expired
                    self.socketio.server.leave_room(sid, seat.room, namespace="/")
                    notice = {"reason": "this server lost its presence lease; join again"}
                    self.socketio.emit("rejoin", notice, to=sid, ignore_queue=True)
                for seat in self.presence.sweep():
                    self.announce_left(seat)
            except redis.RedisError as error:
                log.warning("presence heartbeat failed: %s", error)
            except Exception:  # the heartbeat must outlive any one failure
                log.exception("presence heartbeat failed")
            self.socketio.sleep(interval)

    def close(self) -> None:
        """Close the database and end the presence lease; a pending lobby update is dropped."""
        with self._lobby_lock:
            self._closed = True
            self.store.close()
        if hasattr(self.presence, "close"):
            self.presence.close()


class ChatFlask(Flask):
    """Flask, minus a URL lookup that fails on every Socket.IO event.

    Flask-SocketIO runs each event in a request context made from its
    connection's environ, and Flask matches that request's path,
    /socket.io/, against the routes. No route serves it (Engine.IO answers
    it before Flask sees it), so every event made a NotFound, kept in the
    context with a traceback whose frames refer back to the context: a
    reference cycle per event, freed only by the cyclic garbage collector,
    in pauses of up to 160 ms under a flood (README: "Fair service"). An event
    needs no route, so its context gets no URL adapter and matches nothing.
    """

    # gevent-websocket tells `server.application.current_app` when a connection
    # closes; without one it makes a new class for the purpose at every call, a
    # few per connection, which only the cyclic collector can free.
    current_app = types.SimpleNamespace(on_close=lambda *reason: None)

    def create_url_adapter(self, request: Request | None) -> MapAdapter | None:
        path = request.path if request is not None else ""
        if path == SOCKETIO_PATH or path.startswith(SOCKETIO_PATH + "/"):
            return None
        return super().create_url_adapter(request)


def no_extra_arguments(event: str, extra: tuple) -> None:
    if extra:
        raise Rejected("wrong_type", f"'{event}' takes one argument, got {1 + len(extra)}")


def no_arguments(event: str, args: tuple) -> None:
    if args:
        raise Rejected("wrong_type", f"'{event}' takes no arguments, got {len(args)}")


def create_app(config: dict | None = None) -> tuple[Flask, SocketIO]:
    """Build the chat: a Flask app serving the page and a SocketIO serving the events.

    `config` overrides the defaults below (Flask-style upper-case keys), e.g.
    `create_app({"DB_PATH": tmp_path / "chat.db", "ASYNC_MODE": "threading"})`.
    """
    app = ChatFlask(__name__)
    app.config.from_mapping(
        DB_PATH=DEFAULT_DB,
        REDIS=None,  # "redis://host:port": processes share rooms, names and presence
        ASYNC_MODE="gevent",  # or "threading" (Werkzeug's server, for comparison)
        LIMITS=LIMITS,  # chat_rules.LIMITS: each event's rate and burst
        COMEBACK_SPACING=COMEBACK_SPACING,  # s between connections of a flooder's address
        LOG_EVENTS=False,  # True: log every Socket.IO event (app.py --verbose)
    )
    app.config.update(config or {})
    socketio = SocketIO(
        app,
        async_mode=app.config["ASYNC_MODE"],
        message_queue=app.config["REDIS"],
        # One connection's events are handled one after another, in the order sent:
        # a sender's messages are stored and broadcast in the order they typed them.
        async_handlers=False,
        manage_session=False,  # the chat keeps no Flask session
        # Answer a client's CONNECT before running on_connect, so the lobby it
        # emits arrives after the connection is confirmed, as the protocol orders.
        always_connect=True,
        max_http_buffer_size=MAX_PACKET_BYTES,
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        # Our own loggers: the libraries' defaults add a handler of their own, which
        # printed every error twice next to the one logging.basicConfig sets up.
        logger=library_logger("socketio", verbose=app.config["LOG_EVENTS"]),
        engineio_logger=library_logger("engineio", verbose=False),  # pings and polls: noise
    )
    store = ChatStore(app.config["DB_PATH"])
    if app.config["REDIS"]:
        from chat_presence_redis import HEARTBEAT_INTERVAL, RedisRooms

        client = redis.Redis.from_url(app.config["REDIS"], socket_timeout=REDIS_TIMEOUT)
        presence = RedisRooms(client, process=uuid.uuid4().hex[:12])
    else:
        presence = Rooms()
    comebacks = Comebacks(spacing=app.config["COMEBACK_SPACING"])
    app.wsgi_app = one_comeback_at_a_time(app.wsgi_app, comebacks, socketio.sleep)
    limiter = Limiter(app.config["LIMITS"])
    disk = store_caller(app.config["ASYNC_MODE"])
    chat = ChatServer(socketio, store, presence, limiter, comebacks, disk)
    socketio.on("connect")(chat.answering(chat.on_connect))
    socketio.on("disconnect")(chat.answering(chat.on_disconnect))
    socketio.on("join")(chat.answering(chat.on_join))
    socketio.on("leave")(chat.answering(chat.on_leave))
    socketio.on("message")(chat.answering(chat.on_message))
    socketio.on("typing")(chat.answering(chat.on_typing))
    socketio.on("rooms")(chat.answering(chat.on_rooms))
    socketio.on("history")(chat.answering(chat.on_history))
    socketio.on("*")(chat.answering(chat.on_unknown))
    socketio.on_error_default(chat.on_error)
    guard_every_frame(socketio, comebacks)
    if app.config["REDIS"]:
        socketio.start_background_task(chat.keep_presence_alive, HEARTBEAT_INTERVAL)
    app.extensions["chat"] = chat

    @app.get("/")
    def index() -> str:
        return render_template("index.html", client_js_ready=CLIENT_JS.is_file())

    return app, socketio


def store_caller(async_mode: str) -> Callable:
    """How handlers call the store: `call(store.add, ...)`; under gevent, in a thread of its own.

    An ack means the message is on disk: SQLite's commit waits for an fsync,
    a few milliseconds. gevent runs every connection in one thread, so a
    commit made there stopped them all for its fsync, and a flooder's burst
    of accepted messages stopped them for several fsyncs in a row (README:
    "Fair service"). Here the handler's greenlet waits for the call while
    the others run. One thread, so calls never contend for the store's
    connection. Werkzeug's server has a thread per connection already: there
    the call is made where it is.
    """
    if async_mode != "gevent":
        return lambda call, *args: call(*args)
    from gevent.threadpool import ThreadPool

    pool = ThreadPool(1)
    return lambda call, *args: pool.apply(call, args)


def hang_up_on(socketio: SocketIO, comebacks: Comebacks, eio_sid: str, why: str) -> None:
    """Close a connection for what it sent, and make its address take turns to come back."""
    environ = socketio.server.environ.get(eio_sid) or {}
    comebacks.hung_up(environ.get("REMOTE_ADDR", ""))
    log.warning("closing %s: %s", eio_sid, why)
    socketio.server.eio.disconnect(eio_sid)


def one_comeback_at_a_time(
    wsgi_app: Callable, comebacks: Comebacks, sleep: Callable[[float], None]
) -> Callable:
    """WSGI middleware: a new connection from an address hung up on waits its turn.

    It runs before Engine.IO sees the request, so a waiting flooder costs
    a sleeping greenlet, not a handshake (chat_rules.Comebacks). Only a new
    Engine.IO session waits: a request with a `sid` belongs to a connection
    already made (every long-poll and every message of a polling client is
    a request of its own), and pages and scripts start no session.
    """

    def app(environ: dict, start_response: Callable) -> object:
        if not starts_a_session(environ):
            return wsgi_app(environ, start_response)
        wait = comebacks.wait(environ.get("REMOTE_ADDR", ""))
        if wait is None:
            websocket = environ.get("wsgi.websocket")  # gevent-websocket upgrades first
            if websocket is not None:
                websocket.close()
                return []
            start_response(
                "429 Too Many Requests",
                [
                    ("Content-Type", "text/plain"),
                    ("Retry-After", str(math.ceil(comebacks.longest_wait))),
                ],
            )
            return [b"too many connections from your address after flooding; retry later\n"]
        if wait:
            sleep(wait)
        return wsgi_app(environ, start_response)

    return app


def starts_a_session(environ: dict) -> bool:
    """Is this request an Engine.IO handshake: /socket.io/ with no session id yet?"""
    path = environ.get("PATH_INFO", "")
    if path != SOCKETIO_PATH and not path.startswith(SOCKETIO_PATH + "/"):
        return False
    return "sid" not in urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))


def guard_every_frame(socketio: SocketIO, comebacks: Comebacks) -> None:
    """Take turns after every frame, and close a client whose frames do nothing or cannot be read.

    Taking turns: one connection's frames are read and handled by one greenlet,
    which does not yield while its socket has data; a client that writes
    20,000 frames at once would hold the server until all were handled. Here
    every connection yields after each Engine.IO packet, whatever its type,
    so one burst costs the others at most one frame's work per turn
    (README: "Fair service").

    Stray frames: a conforming client sends events to the namespace it
    connected, a pong per ping and a close. Anything else (an Engine.IO
    ping, noop or upgrade, a pong nobody asked for, a connect while
    connected, an event or ack for a namespace it never joined, an ack the
    server never asked for) is dropped by the libraries without an answer,
    so it never reaches the event buckets; each connection may send
    STRAY_FRAMES of them, and is closed past that.

    Unreadable frames: events with the wrong arguments reach our handlers and
    get an `error` event. A frame that is not Socket.IO at all (broken JSON,
    an unknown packet type), an event named `*` (Flask-SocketIO mistakes it
    for its catch-all's own call) and a binary event announcing more than
    MAX_ATTACHMENTS attachments (python-socketio would keep every binary
    frame until the count is reached) never become events: there is no event
    to answer, so we close the connection.
    """
    engineio = socketio.server.eio
    manager = socketio.server.manager
    read_frame = engineio.handlers["message"]  # python-socketio's decoder and dispatcher
    open_session = engineio.handlers["connect"]

    def close(eio_sid: str, why: str) -> None:
        hang_up_on(socketio, comebacks, eio_sid, why)

    def is_stray(eio_sid: str, pkt: engineio_packet.Packet, ping_outstanding: bool) -> bool:
        if pkt.packet_type in (engineio_packet.CLOSE, engineio_packet.MESSAGE):
            return pkt.packet_type == engineio_packet.MESSAGE and is_stray_socketio(
                eio_sid, pkt.data
            )
        return pkt.packet_type != engineio_packet.PONG or not ping_outstanding

    def is_stray_socketio(eio_sid: str, data: object) -> bool:
        header = SOCKETIO_HEADER.match(data) if isinstance(data, str) else None
        if header is None:  # a binary attachment, or unreadable: python-socketio decides
            return False
        kind, namespace = int(header["type"]), header["namespace"] or "/"
        connected = manager.sid_from_eio_sid(eio_sid, "/") is not None
        if namespace != "/" or kind in (socketio_packet.ACK, socketio_packet.BINARY_ACK):
            return True  # the chat serves "/" only, and never asks a client for an ack
        return connected if kind == socketio_packet.CONNECT else not connected

    def guard(eio_sid: str) -> None:
        session = engineio.sockets[eio_sid]
        receive = session.receive
        strays = TokenBucket(*STRAY_FRAMES)

        def receive_in_turn(pkt: engineio_packet.Packet) -> None:
            if session.closed or session.closing:  # hung up on: skip what it had written
                raise engineio_exceptions.SocketIsClosedError()
            if not is_stray(eio_sid, pkt, session.last_ping is not None):
                receive(pkt)
            elif not strays.take():
                close(eio_sid, f"kept sending frames that do nothing ({pkt.encode()[:40]!r})")
            socketio.sleep(0)  # let every other connection have its turn

        session.receive = receive_in_turn

    def open_and_guard(eio_sid: str, environ: dict) -> object:
        guard(eio_sid)
        if socketio.async_mode == "gevent":
            write_frames_cheaply(engineio.sockets[eio_sid])
        return open_session(eio_sid, environ)

    def read_or_close(eio_sid: str, data: object) -> None:
        header = SOCKETIO_HEADER.match(data) if isinstance(data, str) else None
        if header and int(header["attachments"] or 0) > MAX_ATTACHMENTS:
            return close(eio_sid, f"a binary event with {header['attachments']} attachments")
        try:
            read_frame(eio_sid, data)
        except Exception as error:  # whatever the decoder tripped on, the frame is unusable
            close(eio_sid, f"a frame it could not handle ({error!r})")

    engineio.on("connect", open_and_guard)
    engineio.on("message", read_or_close)


def write_frames_cheaply(session: engineio_socket.Socket) -> None:
    """Send WebSocket frames to this connection with less work (README: "The work per frame").

    A broadcast to N members is N frames, each written by its connection's
    writer greenlet, so the work per frame decides fan-out. Two parts of it
    buy nothing here. The writer waits for its next packet under a timer (a
    gevent Timeout made, armed and cancelled at every wake-up), though a
    closing connection always wakes it with None. And gevent-websocket
    builds each frame in Python and writes it with gevent's sendall, which
    first asks the kernel for the socket's buffer size (a getsockopt call).
    Here the writer waits without a timer, and each frame, built once per
    broadcast for all its members, goes out with one send().
    """
    handle_websocket = session._websocket_handler
    queue = session.queue

    def next_packets() -> list:  # engineio's Socket.poll, without the timer
        packets = [queue.get()]
        queue.task_done()
        if packets == [None]:  # closing
            return []
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:  # closing: send what came before, then stop
                queue.put(None)
                break
            packets.append(pkt)
        return packets

    def handle(ws: object) -> list:
        websocket = ws._sock  # gevent-websocket's connection, under engineio's wrapper
        sock = websocket.handler.socket

        def send(message: str | bytes) -> None:
            if websocket.closed:
                raise OSError("the WebSocket is closed")
            frame = websocket_frame(message)
            sent = sock.send(frame)
            if sent < len(frame):
                sock.sendall(frame[sent:])

        ws.send = send
        session.poll = next_packets
        return handle_websocket(ws)

    session._websocket_handler = handle


@functools.lru_cache(maxsize=1)  # a broadcast sends the same message object to every member
def websocket_frame(message: str | bytes) -> bytes:
    """An unmasked, final WebSocket frame (RFC 6455 5.2): text for str, binary for bytes."""
    payload, opcode = (message.encode(), 0x81) if isinstance(message, str) else (message, 0x82)
    size = len(payload)
    if size < 126:
        return bytes((opcode, size)) + payload
    if size < 65536:
        return bytes((opcode, 126)) + size.to_bytes(2, "big") + payload
    return bytes((opcode, 127)) + size.to_bytes(8, "big") + payload


def library_logger(library: str, verbose: bool) -> logging.Logger:
    """A logger for Socket.IO or Engine.IO: everything when `verbose`, otherwise errors only."""
    logger = logging.getLogger(f"realtimechat.{library}")
    logger.setLevel(logging.INFO if verbose else logging.ERROR)
    return logger


# -- serving -------------------------------------------------------------------


def announce(host: str, port: int) -> None:
    if ":" in host:  # an IPv6 address goes in brackets in a URL: http://[::1]:5000
        host = f"[{host}]"
    print(f"Listening on http://{host}:{port}", flush=True)


def no_nagle(listener: socket.socket) -> None:
    """Send small frames at once (TCP_NODELAY; Linux copies it to accepted connections).

    A message costs the sender two frames, the broadcast and then the ack. With
    Nagle's algorithm on, the ack waits until the client acknowledges the first
    frame, and clients delay their TCP ACKs by up to 40 ms: every ack would be 40 ms late.
    """
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def serve_with_gevent(app: Flask, host: str, port: int, keep_nagle: bool) -> None:
    """One OS thread; each connection is a greenlet of a few kilobytes."""
    from gevent import pywsgi, signal_handler
    from geventwebsocket.handler import WebSocketHandler

    server = pywsgi.WSGIServer(
        (host, port), app, handler_class=WebSocketHandler, log=None, backlog=LISTEN_BACKLOG
    )
    server.init_socket()  # bind now, so --port 0 can announce the port it got
    if not keep_nagle:
        no_nagle(server.socket)
    announce(host, server.server_port)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal_handler(signum, server.stop, STOP_TIMEOUT)
    server.serve_forever()


def serve_with_threads(app: Flask, host: str, port: int, keep_nagle: bool) -> None:
    """Werkzeug's development server, a thread per connection: the comparison in bench.py."""
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = make_server(host, port, app, threaded=True)
    if not keep_nagle:
        no_nagle(server.socket)
    announce(host, server.server_port)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Serve the chat: open http://HOST:PORT in a browser, or use cli_client.py."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on (0: any free)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="SQLite file of messages")
    parser.add_argument(
        "--redis",
        metavar="redis://HOST:PORT",
        help="be one chat with every other process on this Redis: broadcasts, names, presence",
    )
    parser.add_argument(
        "--threading",
        action="store_true",
        help="serve with Werkzeug's thread-per-connection server instead of gevent (to compare)",
    )
    parser.add_argument(
        "--keep-nagle",
        action="store_true",
        help="leave Nagle's algorithm on, to see what it does to acks (README: Break it)",
    )
    parser.add_argument(
        "--comeback-spacing",
        type=float,
        default=COMEBACK_SPACING,
        metavar="SECONDS",
        help="after a connection is hung up on for flooding, serve new connections from its "
        "address one per SECONDS (default %(default)g; 0 turns it off)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every Socket.IO event")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0-65535, got {args.port}")
    if not 0 <= args.comeback_spacing <= 60:
        parser.error(f"--comeback-spacing must be 0-60 seconds, got {args.comeback_spacing:g}")
    if args.redis and not args.redis.startswith("redis://"):
        parser.error(f"--redis must be redis://HOST:PORT, got {args.redis!r}")
    if args.db.is_dir():
        parser.error(f"--db must be a file, {args.db} is a directory")
    return args


def tune_garbage_collector() -> None:
    """Fewer, cheaper collections in a server that holds many objects (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()  # start-up's objects (modules, the app) are never scanned again
    gc.set_threshold(*GC_THRESHOLDS)


def check_redis(url: str) -> None:
    """Refuse to start without the Redis: otherwise every broadcast would be lost, logged."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT).ping()
    except (redis.RedisError, ValueError) as error:
        sys.exit(f"cannot reach Redis at {url}: {error}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.redis:
        check_redis(args.redis)
    mode = "threading" if args.threading else "gevent"
    config = {
        "DB_PATH": args.db,
        "REDIS": args.redis,
        "ASYNC_MODE": mode,
        "LOG_EVENTS": args.verbose,
        "COMEBACK_SPACING": args.comeback_spacing,
    }
    try:
        app, _ = create_app(config)
    except (sqlite3.Error, StoreError, OSError) as error:
        sys.exit(f"cannot open the message database {args.db}: {error}")
    if not CLIENT_JS.is_file():
        print(
            f"warning: {CLIENT_JS} is missing, the page cannot connect: run `make setup`",
            file=sys.stderr,
            flush=True,
        )
    tune_garbage_collector()
    serve = serve_with_threads if args.threading else serve_with_gevent
    try:
        serve(app, args.host, args.port, args.keep_nagle)
    except OSError as error:
        sys.exit(f"cannot serve on {args.host}:{args.port}: {error.strerror or error}")
    finally:
        app.extensions["chat"].close()


if __name__ == "__main__":
    main()
