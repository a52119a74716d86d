"""Chat from a terminal: a RealTimeChat client on python-socketio (README: "Run it").

    python RealTimeChat/cli_client.py --room general --name alice          type lines; Ctrl-D leaves
    python RealTimeChat/cli_client.py --room general --name bob --send hi  send one message, exit

It speaks the same events as the page, and survives what the page survives:
when the connection drops it reconnects by itself (growing, jittered
delays), rejoins with its rejoin token, and pages through what it missed.
Lines typed meanwhile wait in order and go out once it is back; each carries
a client id, so a line resent after a lost ack is stored once. Three threads
share the work, and only one of them prints messages, in sequence order.
"""

from __future__ import annotations

import _thread
import argparse
import collections
import queue
import sys
import threading
import time
import uuid

import socketio

DEFAULT_URL = "http://127.0.0.1:5000"
TIMEOUT = 5.0  # s to wait for the server to connect or to answer an event
RECONNECT_DELAY, RECONNECT_DELAY_MAX = 0.5, 5.0  # s: doubling between attempts, up to this
JITTER = 0.5  # each delay is randomised by +-50%, so clients do not come back all at once
GAP_WAIT = 0.5  # s a message may wait for a missing earlier one before we fetch it
PAGE = 200  # messages per history page when catching up
RATE_PAUSE = 0.25  # s between lines once the server refused one as too fast (5 a second)
DRAIN_TIMEOUT = 30.0  # s after Ctrl-D to wait for unsent lines (the server may be down)
TRANSPORT_ERRORS = (socketio.exceptions.SocketIOError, OSError)  # disconnected, timed out...


def clock(ts_ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts_ms / 1000))


class Screen:
    """Every line the client prints, one at a time: lines from different threads never mix."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def say(self, text: str, error: bool = False) -> None:
        with self._lock:
            print(text, file=sys.stderr if error else sys.stdout, flush=True)


class Chatter:
    """One person in one room, across as many connections as it takes.

    Threads: python-socketio's (connection events go into `inbox`), the
    display thread (joins, catches up, prints messages in seq order), and
    the sender thread (sends `outbox` in order, resending until acknowledged).
    """

    def __init__(self, url: str, room: str, name: str, screen: Screen) -> None:
        self.url, self.room, self.name, self.screen = url, room, name, screen
        self.token: str | None = None  # the rejoin token the last join returned
        self.last_id = 0  # the newest message printed: a rejoin asks for what came after
        self.next_seq = 1  # the room's seq we print next; a later one waits in `held`
        self.held: dict[int, dict] = {}  # seq -> message that arrived before an earlier one
        self.inbox: queue.Queue = queue.Queue()  # ("connected" | "message", data), in order
        self.outbox: collections.deque[tuple[str, str]] = collections.deque()  # (client_id, text)
        self.outbox_changed = threading.Condition()  # main and sender; notified on add/remove
        self.seated = threading.Event()  # set while joined: the sender may send
        self.failed: str | None = None  # why the client gave up, if it did
        self._closing = False
        self.client = socketio.Client(
            reconnection=True,
            reconnection_delay=RECONNECT_DELAY,
            reconnection_delay_max=RECONNECT_DELAY_MAX,
            randomization_factor=JITTER,
        )
        self.client.on("connect", lambda: self.inbox.put(("connected", None)))
        self.client.on("disconnect", self._on_disconnect)
        self.client.on("replaced", self._on_replaced)
        self.client.on("rejoin", self._on_rejoin)
        self.client.on("message", lambda message: self.inbox.put(("message", message)))
        self.client.on("presence", self._on_presence)
        self.client.on("error", self._on_error)

    # -- python-socketio's thread ------------------------------------------------

    def _on_disconnect(self, *reason: object) -> None:
        self.seated.clear()
        if not self._closing and not self.failed:
            self.screen.say("* disconnected; reconnecting...")

    def _on_rejoin(self, notice: dict) -> None:
        """The server lost our seat (its presence lease expired): join again, as after a drop."""
        self.seated.clear()
        self.inbox.put(("connected", None))

    def _on_replaced(self, notice: dict) -> None:
        """Our token joined from another connection, which now holds the name: we stop."""
        self.give_up(f"disconnected: {notice.get('reason')}")

    def _on_presence(self, notice: dict) -> None:
        if notice.get("room") == self.room and notice.get("name") != self.name:
            self.screen.say(f"* {notice['name']} {'joined' if notice['online'] else 'left'}")

    def _on_error(self, error: dict) -> None:
        if error.get("code") == "rate_limited" and error.get("event") == "message":
            return  # the sender waits and resends: nothing is lost, nothing to say
        self.screen.say(f"! {error.get('event')}: {error.get('reason')}", error=True)

    # -- joining ---------------------------------------------------------------------

    def connect_and_join(self) -> dict:
        """The first connection and join; raises ConnectionError with the reason if refused."""
        self.client.connect(self.url, wait_timeout=TIMEOUT)
        return self._join(after_id=0)

    def _join(self, after_id: int) -> dict:
        request = {"room": self.room, "name": self.name, "after_id": after_id}
        if self.token:
            request["token"] = self.token
        reply = self.client.call("join", request, timeout=TIMEOUT)
        while reply.get("code") == "rate_limited":  # a flapping network: joined too often
            time.sleep(1.0)  # joins refill at one a second
            reply = self.client.call("join", request, timeout=TIMEOUT)
        if "error" in reply:
            raise ConnectionError(reply["error"])
        self.token = reply["token"]
        self.seated.set()
        return reply

    # -- the display thread ----------------------------------------------------------

    def show(self, first_join: dict) -> None:
        """Print the first join's history, then every message in order, until closed."""
        history = first_join["history"]
        for message in history:
            self._print(message)
        self.next_seq = history[-1]["seq"] + 1 if history else 1
        while not self._closing:
            try:
                kind, data = self.inbox.get(timeout=GAP_WAIT if self.held else 1.0)
            except queue.Empty:
                if self.held:  # a message is still missing: fetch it
                    self._catch_up()
                continue
            try:
                if kind == "connected" and not self.seated.is_set():  # not the first connect
                    self._rejoin()
                elif kind == "message":
                    self._offer(data)
            except TRANSPORT_ERRORS:
                if kind == "connected":  # the rejoin went unanswered: try it again shortly
                    time.sleep(RATE_PAUSE)
                    self.inbox.put((kind, data))

    def _rejoin(self) -> None:
        try:
            reply = self._join(after_id=self.last_id)
        except ConnectionError as refused:
            self.give_up(f"cannot rejoin #{self.room}: {refused}")
            return
        for message in reply["history"]:
            self._offer(message)
        if reply["more"]:
            self._catch_up()
        self.screen.say(f"* back in #{self.room}")

    def _offer(self, message: dict) -> None:
        """Print `message` if it is the next in the room; hold it if an earlier one is missing."""
        if message.get("room") != self.room or message["id"] <= self.last_id:
            return  # another room, or one printed already (history and live overlap)
        self.held[message["seq"]] = message
        while self.next_seq in self.held:
            self._print(self.held.pop(self.next_seq))

    def _print(self, message: dict) -> None:
        self.screen.say(f"[{clock(message['ts'])}] {message['name']}: {message['text']}")
        self.last_id = max(self.last_id, message["id"])
        self.next_seq = message["seq"] + 1

    def _catch_up(self) -> None:
        """Page forward from the last message printed until the server has no more."""
        more = True
        while more:
            page = self.client.call(
                "history",
                {"room": self.room, "after_id": self.last_id, "limit": PAGE},
                timeout=TIMEOUT,
            )
            if "error" in page:
                return
            for message in page["messages"]:
                self.held.pop(message["seq"], None)
                self._offer(message)
            more = page["more"] and bool(page["messages"])
        for seq in [seq for seq in self.held if seq < self.next_seq]:
            del self.held[seq]  # already printed through the pages

    # -- the sender thread -------------------------------------------------------

    def type_line(self, text: str) -> None:
        """Queue a line to send; it keeps its place and its client id until acknowledged."""
        with self.outbox_changed:
            self.outbox.append((uuid.uuid4().hex, text))
            self.outbox_changed.notify_all()

    def send_lines(self) -> None:
        """Send the outbox in order; once refused as too fast, one line per RATE_PAUSE.

        Pacing matters: a client that resent each line as soon as the last was
        acknowledged would be refused once per line, and the server hangs up
        on a connection that collects refusals faster than it forgives them.
        """
        paced = False  # the server said too fast: keep under its rate until the outbox is empty
        while not self._closing:
            with self.outbox_changed:
                self.outbox_changed.wait_for(lambda: self.outbox or self._closing)
                if self._closing:
                    return
                client_id, text = self.outbox[0]
            if not self.seated.wait(timeout=1.0):
                continue
            if paced:
                time.sleep(RATE_PAUSE)
            try:
                reply = self.send(text, client_id)
            except TRANSPORT_ERRORS:
                time.sleep(RATE_PAUSE)  # resend the same line, same id, once back
                continue
            if reply.get("code") == "rate_limited":
                paced = True
                continue
            with self.outbox_changed:
                self.outbox.popleft()  # stored (or refused for good: the error was printed)
                paced = paced and bool(self.outbox)
                self.outbox_changed.notify_all()

    def send(self, text: str, client_id: str | None = None) -> dict:
        """Send a message; the reply is its ack ({"id", "ts", "seq"}) or {"error", "code"}."""
        payload = {"text": text, "client_id": client_id or uuid.uuid4().hex}
        return self.client.call("message", payload, timeout=TIMEOUT)

    def drain(self, timeout: float) -> int:
        """Wait until every typed line is sent (at most `timeout` s); return how many are not."""
        with self.outbox_changed:
            self.outbox_changed.wait_for(lambda: not self.outbox or self.failed, timeout)
            return len(self.outbox)

    # -- ending ------------------------------------------------------------------

    def give_up(self, why: str) -> None:
        self.failed = why
        self.screen.say(f"! {why}", error=True)
        with self.outbox_changed:
            self.outbox_changed.notify_all()
        _thread.interrupt_main()  # the main thread is blocked reading the terminal

    def close(self) -> None:
        self._closing = True
        with self.outbox_changed:
            self.outbox_changed.notify_all()
        self.client.disconnect()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Chat in a RealTimeChat room from a terminal.")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    parser.add_argument("--room", default="general", help="room to join (default general)")
    parser.add_argument("--name", required=True, help="your nickname, unique in the room")
    parser.add_argument("--send", metavar="TEXT", help="send TEXT, print its ack and exit")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url must start with http:// or https://, got {args.url!r}")
    return args


def send_once(chatter: Chatter, text: str) -> int:
    started = time.perf_counter()
    ack = chatter.send(text)
    waited_ms = (time.perf_counter() - started) * 1000
    if "error" in ack:
        return 1  # the error event has printed the reason
    chatter.screen.say(
        f"stored as message {ack['id']} at {clock(ack['ts'])}"
        f" (acknowledged {waited_ms:.1f} ms after sending)"
    )
    return 0


def chat(chatter: Chatter, reply: dict) -> int:
    """Show the room and send what is typed, until Ctrl-D (then send what is left)."""
    here = ", ".join(reply["members"])
    chatter.screen.say(f"* joined #{chatter.room} as {chatter.name}; here: {here}")
    threading.Thread(target=chatter.show, args=(reply,), daemon=True).start()
    threading.Thread(target=chatter.send_lines, daemon=True).start()
    for line in sys.stdin:
        if line.strip():
            chatter.type_line(line.rstrip("\n"))
    unsent = chatter.drain(DRAIN_TIMEOUT)
    if unsent:
        chatter.screen.say(f"! {unsent} lines not sent: the server did not come back", error=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    screen = Screen()
    chatter = Chatter(args.url, args.room, args.name, screen)
    try:
        reply = chatter.connect_and_join()
    except socketio.exceptions.ConnectionError:
        screen.say(f"cannot connect to {args.url}: is app.py running there?", error=True)
        return 1
    except (ConnectionError, *TRANSPORT_ERRORS) as error:
        screen.say(f"cannot join #{args.room}: {error or 'no answer'}", error=True)
        chatter.close()
        return 1
    try:
        return send_once(chatter, args.send) if args.send is not None else chat(chatter, reply)
    except TRANSPORT_ERRORS as error:
        screen.say(f"! the server did not answer: {error or 'timed out'}", error=True)
        return 1
    except KeyboardInterrupt:
        return 1 if chatter.failed else 0
    finally:
        chatter.close()


if __name__ == "__main__":
    sys.exit(main())
