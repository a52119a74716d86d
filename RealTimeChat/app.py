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
import logging
import signal
import socket
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from chat_rooms import NameTaken, Rooms, Seat
from chat_rules import (
    MESSAGE_BURST,
    MESSAGES_PER_SECOND,
    TYPING_BURST,
    TYPING_PER_SECOND,
    Rejected,
    TokenBucket,
    check_join,
    check_message,
    check_typing,
)
from chat_store import ChatStore
from flask import Flask, render_template, request
from flask_socketio import SocketIO, emit, join_room, leave_room

HERE = Path(__file__).resolve().parent
DEFAULT_DB = HERE / "out" / "chat.db"  # git-ignored; pass --db to keep several apart
CLIENT_JS = HERE / "static" / "vendor" / "socket.io.min.js"  # copied from npm by `make setup`
DEFAULT_ROOMS = ("general", "random")  # listed in the lobby even when empty
EVENTS = ("join", "leave", "message", "typing", "rooms")  # what a client may send

LOBBY_INTERVAL = 0.5  # s: membership changes within this window make one lobby update
LOBBY_ROOMS = 50  # rooms the lobby lists, busiest first: it goes to every client
MAX_PACKET_BYTES = 64 * 1024  # Engine.IO closes a connection that sends a bigger packet
PING_INTERVAL, PING_TIMEOUT = 10, 5  # s: a vanished client leaves presence in 15-20 s
LISTEN_BACKLOG = 2048  # connections the kernel queues while we accept: reconnect storms
STOP_TIMEOUT = 2.0  # s: open connections get this long to close at shutdown
QUEUE_TIMEOUT = 2.0  # s: how long app.py waits for --message-queue's Redis at start

log = logging.getLogger("realtimechat")


@dataclass
class Limits:
    """A connection's token buckets: one for messages, one for typing notices."""

    messages: TokenBucket
    typing: TokenBucket


class ChatServer:
    """The chat's event handlers and the state they share.

    Handlers raise `Rejected` for bad input; `on_error` turns that into an
    `error` event (and the ack's answer) for that client alone, so one bad
    client never disturbs the others.
    """

    def __init__(
        self, socketio: SocketIO, store: ChatStore, messages_per_second: float, burst: int
    ) -> None:
        self.socketio = socketio
        self.store = store
        self.rooms = Rooms()
        self.messages_per_second = messages_per_second
        self.burst = burst
        self.limits: dict[str, Limits] = {}  # sid -> its buckets, from connect to disconnect
        self._lobby_lock = threading.Lock()  # guards the two flags below
        self._lobby_pending = False  # True while a lobby update is scheduled
        self._closed = False  # True once close() has run: nothing more is sent

    # -- connecting and leaving ------------------------------------------------

    def on_connect(self, auth: object = None) -> None:
        sid = request.sid
        if sid in self.limits:  # not Socket.IO connecting: a client sent an event named so
            raise Rejected("reserved_event", "'connect' is Socket.IO's own event, not a client's")
        self.limits[sid] = Limits(
            TokenBucket(self.messages_per_second, self.burst),
            TokenBucket(TYPING_PER_SECOND, TYPING_BURST),
        )
        emit("rooms", self.lobby())

    def on_disconnect(self, *reason: object) -> None:
        sid = request.sid
        if self.socketio.server.manager.is_connected(sid, "/"):
            # During a real disconnect Socket.IO has already marked the client as leaving.
            raise Rejected(
                "reserved_event", "'disconnect' is Socket.IO's own event, not a client's"
            )
        self.limits.pop(sid, None)
        self._vacate(sid, self.rooms.leave(sid))

    # -- the events a client sends -------------------------------------------

    def on_join(self, payload: object = None, *extra: object) -> dict:
        """Sit in a room under a name; the ack carries the members and the last messages."""
        no_extra_arguments("join", extra)
        room, name, after_id = check_join(payload)
        sid = request.sid
        try:
            old = self.rooms.join(sid, room, name)
        except NameTaken as taken:
            raise Rejected("name_taken", str(taken)) from None
        new = Seat(room, name)
        if old != new:
            self._vacate(sid, old)
            join_room(room)
            emit(
                "presence",
                {"room": room, "name": name, "online": True},
                to=room,
                include_self=False,
            )
            self.lobby_changed()
        history = self.store.history(room, after_id=after_id)
        return {
            "room": room,
            "name": name,
            "members": self.rooms.members(room),
            "history": [message.to_json() for message in history],
        }

    def on_leave(self, *args: object) -> dict:
        no_arguments("leave", args)
        seat = self.rooms.leave(request.sid)
        if seat is None:
            raise Rejected("not_in_room", "you are not in a room")
        self._vacate(request.sid, seat)
        return {"left": seat.room}

    def on_message(self, payload: object = None, *extra: object) -> dict:
        """Store, then broadcast, then acknowledge: an ack means the message is on disk."""
        no_extra_arguments("message", extra)
        seat = self.seat_or_reject()
        text = check_message(payload)
        if not self.limits[request.sid].messages.take():
            raise Rejected(
                "rate_limited",
                f"more than {self.messages_per_second:g} messages per second; wait and resend",
            )
        message = self.store.add(seat.room, seat.name, text)
        emit("message", message.to_json(), to=seat.room)
        return {"id": message.id, "ts": message.ts}

    def on_typing(self, payload: object = None, *extra: object) -> None:
        no_extra_arguments("typing", extra)
        seat = self.seat_or_reject()
        typing = check_typing(payload)
        if not self.limits[request.sid].typing.take():
            raise Rejected(
                "rate_limited", f"more than {TYPING_PER_SECOND:g} typing notices a second"
            )
        notice = {"room": seat.room, "name": seat.name, "typing": typing}
        emit("typing", notice, to=seat.room, include_self=False)

    def on_rooms(self, *args: object) -> list[dict]:
        no_arguments("rooms", args)
        return self.lobby()

    def on_unknown(self, event: str, *args: object) -> None:
        raise Rejected("unknown_event", f"unknown event '{event}'; events: {', '.join(EVENTS)}")

    def on_error(self, error: Exception) -> dict:
        """Tell only the sender what went wrong; the answer also goes back as the ack."""
        if isinstance(error, Rejected):
            code, reason = error.code, error.reason
        else:
            log.exception("handler failed on %r", request.event)
            code, reason = "internal", "the server failed on this event (logged); nothing changed"
        event = request.event["message"]
        if event == "*" and request.event["args"]:
            event = request.event["args"][0]  # the catch-all handler gets the name first
        emit("error", {"event": event, "code": code, "reason": reason})
        return {"error": reason, "code": code}

    # -- helpers ---------------------------------------------------------------

    def seat_or_reject(self) -> Seat:
        seat = self.rooms.seat(request.sid)
        if seat is None:
            raise Rejected("not_in_room", "join a room first: emit 'join' with a room and a name")
        return seat

    def _vacate(self, sid: str, seat: Seat | None) -> None:
        """Announce that `sid` left `seat` (if it had one)."""
        if seat is None:
            return
        leave_room(seat.room, sid=sid)
        offline = {"room": seat.room, "name": seat.name, "online": False}
        self.socketio.emit("presence", offline, to=seat.room)
        self.lobby_changed()

    def lobby(self) -> list[dict]:
        """The busiest known rooms, with how many members each has on this process."""
        counts = self.rooms.counts()
        names = set(DEFAULT_ROOMS) | set(counts) | set(self.store.rooms())
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
            lobby = self.lobby()
        # ignore_queue: the counts are this process's, so they go to its own clients only.
        self.socketio.emit("rooms", lobby, ignore_queue=True)

    def close(self) -> None:
        """Close the database; a lobby update still scheduled is dropped."""
        with self._lobby_lock:
            self._closed = True
            self.store.close()


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
    app = Flask(__name__)
    app.config.from_mapping(
        DB_PATH=DEFAULT_DB,
        MESSAGE_QUEUE=None,  # "redis://host:port": processes share rooms through Redis
        ASYNC_MODE="gevent",  # or "threading" (Werkzeug's server, for comparison)
        MESSAGES_PER_SECOND=MESSAGES_PER_SECOND,
        MESSAGE_BURST=MESSAGE_BURST,
        LOG_EVENTS=False,  # True: log every Socket.IO event (app.py --verbose)
    )
    app.config.update(config or {})
    socketio = SocketIO(
        app,
        async_mode=app.config["ASYNC_MODE"],
        message_queue=app.config["MESSAGE_QUEUE"],
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
    chat = ChatServer(
        socketio, store, app.config["MESSAGES_PER_SECOND"], app.config["MESSAGE_BURST"]
    )
    socketio.on("connect")(chat.on_connect)
    socketio.on("disconnect")(chat.on_disconnect)
    for event in EVENTS:
        socketio.on(event)(getattr(chat, f"on_{event}"))
    socketio.on("*")(chat.on_unknown)
    socketio.on_error_default(chat.on_error)
    close_on_unreadable_frames(socketio)
    app.extensions["chat"] = chat

    @app.get("/")
    def index() -> str:
        return render_template("index.html", client_js_ready=CLIENT_JS.is_file())

    return app, socketio


def close_on_unreadable_frames(socketio: SocketIO) -> None:
    """Disconnect a client that sends a frame Socket.IO cannot decode or dispatch.

    Events with the wrong arguments reach our handlers and get an `error`
    event. A frame that is not Socket.IO at all (broken JSON, an unknown packet
    type) never becomes an event, nor does an event named `*` (Flask-SocketIO
    mistakes it for its catch-all's own call): python-socketio would log a
    traceback, drop it and leave the connection open. There is no event to
    answer, so we close the connection.
    """
    engineio = socketio.server.eio
    read_frame = engineio.handlers["message"]  # python-socketio's decoder and dispatcher

    def read_or_close(eio_sid: str, data: object) -> None:
        try:
            read_frame(eio_sid, data)
        except Exception as error:  # whatever the decoder tripped on, the frame is unusable
            log.warning("closing %s: a frame it could not handle (%r)", eio_sid, error)
            engineio.disconnect(eio_sid)

    engineio.on("message", read_or_close)


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
        "--message-queue",
        metavar="redis://HOST:PORT",
        help="share rooms with other processes through this Redis",
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
    parser.add_argument("-v", "--verbose", action="store_true", help="log every Socket.IO event")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0-65535, got {args.port}")
    if args.message_queue and not args.message_queue.startswith("redis://"):
        parser.error(f"--message-queue must be redis://HOST:PORT, got {args.message_queue!r}")
    if args.db.is_dir():
        parser.error(f"--db must be a file, {args.db} is a directory")
    return args


def check_message_queue(url: str) -> None:
    """Refuse to start without the Redis: otherwise every broadcast would be lost, logged."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=QUEUE_TIMEOUT).ping()
    except (redis.RedisError, ValueError) as error:
        sys.exit(f"cannot reach the message queue {url}: {error}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.message_queue:
        check_message_queue(args.message_queue)
    mode = "threading" if args.threading else "gevent"
    config = {
        "DB_PATH": args.db,
        "MESSAGE_QUEUE": args.message_queue,
        "ASYNC_MODE": mode,
        "LOG_EVENTS": args.verbose,
    }
    try:
        app, _ = create_app(config)
    except (sqlite3.Error, OSError) as error:
        sys.exit(f"cannot open the message database {args.db}: {error}")
    if not CLIENT_JS.is_file():
        print(
            f"warning: {CLIENT_JS} is missing, the page cannot connect: run `make setup`",
            file=sys.stderr,
            flush=True,
        )
    serve = serve_with_threads if args.threading else serve_with_gevent
    try:
        serve(app, args.host, args.port, args.keep_nagle)
    except OSError as error:
        sys.exit(f"cannot serve on {args.host}:{args.port}: {error.strerror or error}")
    finally:
        app.extensions["chat"].close()


if __name__ == "__main__":
    main()
