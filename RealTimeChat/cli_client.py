"""Chat from a terminal: a RealTimeChat client on python-socketio (README: "Run it").

    python RealTimeChat/cli_client.py --room general --name alice          type lines; Ctrl-D leaves
    python RealTimeChat/cli_client.py --room general --name bob --send hi  send one message, exit

It speaks the same events as the page (join, message, presence, error), so
two terminals and a browser can share a room.
"""

from __future__ import annotations

import argparse
import sys
import time

import socketio

DEFAULT_URL = "http://127.0.0.1:5000"
TIMEOUT = 5.0  # s to wait for the server to connect or to answer an event


def clock(ts_ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts_ms / 1000))


def show_message(message: dict) -> None:
    print(f"[{clock(message['ts'])}] {message['name']}: {message['text']}", flush=True)


def show_presence(notice: dict) -> None:
    print(f"* {notice['name']} {'joined' if notice['online'] else 'left'}", flush=True)


def show_error(error: dict) -> None:
    print(f"! {error['event']}: {error['reason']}", file=sys.stderr, flush=True)


class Chatter:
    """One connection sitting in one room; rejoins by itself after a reconnect."""

    def __init__(self, url: str, room: str, name: str, interactive: bool) -> None:
        self.url, self.room, self.name = url, room, name
        self.last_id = 0  # newest message seen: a rejoin asks only for newer ones
        self.client = socketio.Client(reconnection=interactive)
        self.client.on("error", show_error)
        if interactive:
            self.client.on("message", self.on_message)
            self.client.on("presence", show_presence)
            self.client.on("disconnect", self.on_disconnect)
            self.client.on("connect", self.on_reconnect)
        self._joined = False
        self._closing = False

    def on_disconnect(self, *reason: object) -> None:
        if not self._closing:
            print("* disconnected; reconnecting...", flush=True)

    def on_message(self, message: dict) -> None:
        if message["id"] > self.last_id:
            self.last_id = message["id"]
            show_message(message)

    def on_reconnect(self) -> None:
        if self._joined:  # the first connect is followed by join(); this is a comeback
            request = {"room": self.room, "name": self.name, "after_id": self.last_id}
            self.client.emit("join", request, callback=self.on_rejoined)

    def on_rejoined(self, reply: dict) -> None:
        if "error" in reply:
            return  # show_error has printed it
        print(f"* back in #{self.room}", flush=True)
        for message in reply["history"]:
            self.on_message(message)

    def join(self) -> dict:
        """Connect and join; raise ConnectionError with the server's reason if refused."""
        self.client.connect(self.url, wait_timeout=TIMEOUT)
        reply = self.client.call("join", {"room": self.room, "name": self.name}, timeout=TIMEOUT)
        if "error" in reply:
            raise ConnectionError(reply["error"])
        self._joined = True
        return reply

    def send(self, text: str) -> dict:
        """Send a message; the reply is its ack ({"id", "ts"}) or {"error", "code"}."""
        return self.client.call("message", {"text": text}, timeout=TIMEOUT)

    def close(self) -> None:
        self._closing = True
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interactive = args.send is None
    chatter = Chatter(args.url, args.room, args.name, interactive)
    try:
        reply = chatter.join()
    except socketio.exceptions.ConnectionError:
        print(f"cannot connect to {args.url}: is app.py running there?", file=sys.stderr)
        return 1
    except (ConnectionError, socketio.exceptions.TimeoutError) as error:
        print(f"cannot join #{args.room}: {error or 'no answer'}", file=sys.stderr)
        chatter.close()
        return 1
    try:
        if not interactive:
            started = time.perf_counter()
            ack = chatter.send(args.send)
            waited_ms = (time.perf_counter() - started) * 1000
            if "error" in ack:
                return 1  # show_error has printed the reason
            print(
                f"stored as message {ack['id']} at {clock(ack['ts'])}"
                f" (acknowledged {waited_ms:.1f} ms after sending)",
                flush=True,
            )
            return 0
        print(f"* joined #{args.room} as {args.name}; here: {', '.join(reply['members'])}")
        for message in reply["history"]:
            chatter.on_message(message)
        for line in sys.stdin:
            if line.strip():
                chatter.send(line.rstrip("\n"))
        return 0
    except socketio.exceptions.TimeoutError:
        print("no answer from the server", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        chatter.close()


if __name__ == "__main__":
    sys.exit(main())
