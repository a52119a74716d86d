"""What the chat server accepts from a client, and how fast (README: "Bad input").

Every event a client sends is untrusted JSON: any type, any size, any rate.
The checks here turn it into plain values or raise `Rejected`, whose `code` a
program can test and whose message a person can read; the server sends both
back as an `error` event and changes nothing.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

MAX_MESSAGE_CHARS = 2_000  # longer messages are refused, not cut
MAX_NAME_CHARS = 24  # fits a member list; any characters, they are shown as text
MAX_ID = 2**63 - 1  # the largest integer SQLite stores: message ids never exceed it
ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")  # room names appear in URLs and logs
MESSAGES_PER_SECOND = 5.0  # the token bucket's refill rate, per connection
MESSAGE_BURST = 5  # how many may arrive at once after a quiet spell
TYPING_PER_SECOND = 5.0  # typing notices are cheap, but each one fans out to the room
TYPING_BURST = 5


class Rejected(Exception):
    """A client event the server refuses; nothing was changed.

    `code` is stable for programs (`too_long`, `rate_limited`, ...); the message
    says what was wrong and what would be accepted.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type: clients speak JSON, not Python."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    names = {str: "string", list: "array", dict: "object", bytes: "binary data"}
    return names.get(type(value), type(value).__name__)


def _payload(payload: object, event: str, example: str) -> dict:
    if not isinstance(payload, dict):
        raise Rejected(
            "wrong_type", f"'{event}' takes one object like {example}, got {json_type(payload)}"
        )
    return payload


def _string(payload: dict, field: str, event: str) -> str:
    value = payload.get(field)
    if not isinstance(value, str):
        got = f"got {json_type(value)}" if field in payload else "but it is missing"
        raise Rejected("wrong_type", f"'{event}' needs '{field}' to be a string, {got}")
    return value


def check_join(payload: object) -> tuple[str, str, int]:
    """`{"room": ..., "name": ..., "after_id": 0}` -> (room, name, after_id).

    `after_id` (optional) asks only for history newer than a message the client
    already has, so a reconnecting page fetches just what it missed.
    """
    example = '{"room": "general", "name": "alice"}'
    data = _payload(payload, "join", example)
    room = _string(data, "room", "join").strip()
    name = _string(data, "name", "join").strip()
    if not ROOM_NAME.fullmatch(room):
        raise Rejected("bad_room", "a room name is 1-32 letters, digits, '-' or '_'")
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise Rejected(
            "bad_name", f"a name is 1-{MAX_NAME_CHARS} printable characters, without newlines"
        )
    after_id = data.get("after_id", 0)
    if isinstance(after_id, bool) or not isinstance(after_id, int) or not 0 <= after_id <= MAX_ID:
        raise Rejected("wrong_type", "'join' needs 'after_id' to be a message id or 0")
    return room, name, after_id


def check_message(payload: object) -> str:
    """`{"text": ...}` -> the text, stripped of surrounding whitespace."""
    data = _payload(payload, "message", '{"text": "hello"}')
    text = _string(data, "text", "message").strip()
    if not text:
        raise Rejected("empty", "an empty message is not sent")
    if len(text) > MAX_MESSAGE_CHARS:
        raise Rejected(
            "too_long",
            f"message is {len(text):,} characters; the limit is {MAX_MESSAGE_CHARS:,}",
        )
    return text


def check_typing(payload: object) -> bool:
    """`{"typing": true}` -> True."""
    data = _payload(payload, "typing", '{"typing": true}')
    typing = data.get("typing")
    if not isinstance(typing, bool):
        raise Rejected("wrong_type", "'typing' needs 'typing' to be true or false")
    return typing


class TokenBucket:
    """Allow `rate` events per second on average and `burst` at once.

    The bucket holds up to `burst` tokens and gains `rate` per second; each
    event takes one. A client that sends faster than `rate` empties it and is
    refused until it refills, however long it keeps trying: refused attempts
    cost nothing, so they do not push the refill further away.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)  # a new connection may send a burst straight away
        self._updated = clock()
        self._lock = threading.Lock()  # handlers for one client may run in several threads

    def take(self) -> bool:
        """Take one token if there is one; False means "too fast, refuse this event"."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True
