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
import unicodedata
from collections import OrderedDict
from collections.abc import Callable

MAX_MESSAGE_CHARS = 2_000  # longer messages are refused, not cut
MAX_NAME_CHARS = 24  # fits a member list; any characters, they are shown as text
MAX_ID = 2**63 - 1  # the largest integer SQLite stores: message ids never exceed it
ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")  # room names appear in URLs and logs
MAX_CLIENT_ID_CHARS = 64  # a message's client-chosen id: a UUID fits
MAX_TOKEN_CHARS = 512  # a rejoin token is about 100 characters

# How fast each event may come: (refill per second, burst). Every event passes
# two buckets of its kind, one for the connection and one for the person
# (room + name, across their connections), so reconnecting refills nothing.
# An event that fans out to a room (message, typing, join and leave, through
# presence) costs the server the room's size, so it gets the lowest rates.
LIMITS = {
    "message": (5.0, 5),
    "typing": (5.0, 5),
    "join": (1.0, 5),  # each join and leave is announced to the room
    "leave": (1.0, 5),
    "rooms": (2.0, 5),
    "history": (10.0, 20),  # catching up after a long absence pages quickly
    "other": (1.0, 3),  # unknown and reserved event names: only mistakes and probes
}
MESSAGES_PER_SECOND, MESSAGE_BURST = LIMITS["message"]
PATIENCE = (1.0, 20)  # refusals a connection may collect: burst 20, forgiven at 1/s
PERSON_BUCKETS_KEPT = 10_000  # above this, buckets idle long enough to be full are dropped
# An address the server hung up on for flooding: its new connections are served one
# per COMEBACK_SPACING seconds for COMEBACK_MEMORY seconds after its last hang-up;
# one that would wait over COMEBACK_LONGEST_WAIT is refused. Addresses kept: at most
# COMEBACKS_KEPT, the longest-quiet forgotten first.
COMEBACK_SPACING, COMEBACK_MEMORY, COMEBACK_LONGEST_WAIT = 1.0, 30.0, 10.0
COMEBACKS_KEPT = 10_000


# Letters of other scripts drawn like Latin ones (after casefolding): a name
# spelled with them looks the same as the Latin name, so it is the same name.
# The Cyrillic and Greek rows of Unicode's confusables (UTS #39) that matter
# for Latin names; a real chat would use the whole table.
LOOKALIKES = str.maketrans(
    "аеіјорсухѕһԁԛԝӏαοριυνχκ",  # Cyrillic, then Greek
    "aeijopcyxshdqwlaopiuvxk",
)
# Characters that take no space on screen yet pass str.isprintable: the
# Hangul fillers, the Braille blank, the combining grapheme joiner, the
# Khmer inherent vowels and the variation selectors. ("alice" and
# "alice" + U+3164 would look alike; zero-width spaces and joiners are
# format characters, which isprintable already refuses.)
INVISIBLE = re.compile(
    "[\u115f\u1160\u3164\uffa0\u2800\u034f\u17b4\u17b5\u180b-\u180f\ufe00-\ufe0f\U000e0100-\U000e01ef]"
)


def name_key(name: str) -> str:
    """What makes two names the same name: case, Unicode forms and lookalike letters aside.

    NFKC casefolding (Unicode's identifier caseless match) makes "Alice",
    "ALICE", "ａｌｉｃｅ" (fullwidth) and "alice" one name, and "josé" typed
    as one code point or as e + a combining accent one name; LOOKALIKES
    then folds the Cyrillic "а" in "аlice" to the Latin one.
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return folded.translate(LOOKALIKES)


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


def _room(data: dict, event: str) -> str:
    room = _string(data, "room", event).strip()
    if not ROOM_NAME.fullmatch(room):
        raise Rejected("bad_room", "a room name is 1-32 letters, digits, '-' or '_'")
    return room


def _after_id(data: dict, event: str) -> int:
    after_id = data.get("after_id", 0)
    if isinstance(after_id, bool) or not isinstance(after_id, int) or not 0 <= after_id <= MAX_ID:
        raise Rejected("wrong_type", f"'{event}' needs 'after_id' to be a message id or 0")
    return after_id


def _optional_string(data: dict, field: str, event: str, limit: int) -> str | None:
    if data.get(field) is None:
        return None
    value = _string(data, field, event)
    if not 1 <= len(value) <= limit:
        raise Rejected("wrong_type", f"'{event}' needs '{field}' to be 1-{limit} characters")
    return value


def check_join(payload: object) -> tuple[str, str, int, str | None]:
    """`{"room", "name", "after_id"?, "token"?}` -> (room, name, after_id, token).

    `after_id` (optional) asks for the history after a message the client
    already has, oldest first, so a reconnecting client pages through just
    what it missed. `token` is the rejoin token an earlier join returned.
    """
    data = _payload(payload, "join", '{"room": "general", "name": "alice"}')
    room = _room(data, "join")
    name = unicodedata.normalize("NFC", _string(data, "name", "join")).strip()
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable() or INVISIBLE.search(name):
        raise Rejected(
            "bad_name",
            f"a name is 1-{MAX_NAME_CHARS} visible characters, without newlines or invisible ones",
        )
    token = _optional_string(data, "token", "join", MAX_TOKEN_CHARS)
    return room, name, _after_id(data, "join"), token


def check_history(payload: object, page_limit: int) -> tuple[str, int, int]:
    """`{"room", "after_id", "limit"?}` -> (room, after_id, limit)."""
    data = _payload(payload, "history", '{"room": "general", "after_id": 0, "limit": 50}')
    limit = data.get("limit", page_limit)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= page_limit:
        raise Rejected("wrong_type", f"'history' needs 'limit' to be 1-{page_limit}")
    return _room(data, "history"), _after_id(data, "history"), limit


def check_message(payload: object) -> tuple[str, str | None]:
    """`{"text", "client_id"?}` -> (the text stripped of surrounding whitespace, client_id)."""
    data = _payload(payload, "message", '{"text": "hello"}')
    text = _string(data, "text", "message").strip()
    if not text:
        raise Rejected("empty", "an empty message is not sent")
    if len(text) > MAX_MESSAGE_CHARS:
        raise Rejected(
            "too_long",
            f"message is {len(text):,} characters; the limit is {MAX_MESSAGE_CHARS:,}",
        )
    return text, _optional_string(data, "client_id", "message", MAX_CLIENT_ID_CHARS)


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
        self.updated = clock()
        self._lock = threading.Lock()  # handlers for one client may run in several threads

    def take(self, peek: bool = False) -> bool:
        """Take one token if there is one; False means "too fast, refuse this event".

        With `peek`, only say whether there is one, and take nothing.
        """
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self._tokens < 1:
                return False
            if not peek:
                self._tokens -= 1
            return True

    def is_full(self) -> bool:
        """True once it has refilled to its burst: dropping it then changes nothing."""
        return self._clock() - self.updated >= self.burst / self.rate


class Flooding(Exception):
    """A connection kept sending after being refused: the server hangs up on it."""


class Limiter:
    """The token buckets of every connection and person, and each connection's patience.

    `admit(sid, person, event)` passes an event or raises `Rejected("rate_limited")`;
    a connection whose refusals outrun its patience gets `Flooding` instead,
    and the server disconnects it: refusing costs little, but not nothing.
    """

    def __init__(self, limits: dict = LIMITS, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()  # guards the three dicts
        self._connections: dict[tuple[str, str], TokenBucket] = {}  # (sid, kind) -> bucket
        self._people: dict[tuple[str, str, str], TokenBucket] = {}  # (room, name, kind) ->
        self._patience: dict[str, TokenBucket] = {}  # sid -> refusals it may still collect

    def admit(self, sid: str, person: tuple[str, str] | None, event: str) -> None:
        """Take a token from the connection's bucket for `event`, and the person's if seated."""
        kind = event if event in self.limits else "other"
        self._take(sid, event, self._bucket(self._connections, (sid, kind), self.limits[kind]))
        if person is not None:
            self.admit_person(sid, person, event)

    def admit_person(
        self, sid: str, person: tuple[str, str], event: str, peek: bool = False
    ) -> None:
        """Take a token from the bucket of `person` (room, name) for `event`.

        A join names the person it wants to be before it is one, so the
        server asks here too: a flooder that reconnects to join again and
        again finds the same empty bucket each time. It asks with `peek` first
        and takes the token (`charge_person`) only once the join succeeded, so
        strangers failing to take alice's name cannot empty alice's bucket.
        """
        self._take(sid, event, self._person_bucket(person, event), peek)

    def charge_person(self, person: tuple[str, str], event: str) -> None:
        self._person_bucket(person, event).take()

    def _person_bucket(self, person: tuple[str, str], event: str) -> TokenBucket:
        kind = event if event in self.limits else "other"
        room, name = person
        return self._bucket(self._people, (room, name_key(name), kind), self.limits[kind])

    def _take(self, sid: str, event: str, bucket: TokenBucket, peek: bool = False) -> None:
        if bucket.take(peek):
            return
        if not self._bucket(self._patience, sid, PATIENCE).take():
            raise Flooding(f"kept sending '{event}' after {PATIENCE[1]} refusals")
        raise Rejected(
            "rate_limited", f"more than {bucket.rate:g} '{event}' a second; wait and resend"
        )

    def forget(self, sid: str) -> None:
        """A connection is gone: drop its buckets (a person's stay: rejoining refills nothing)."""
        with self._lock:
            for kind in self.limits:
                self._connections.pop((sid, kind), None)
            self._patience.pop(sid, None)

    def _bucket(self, buckets: dict, key: tuple | str, limit: tuple) -> TokenBucket:
        with self._lock:
            bucket = buckets.get(key)
            if bucket is None:
                if buckets is self._people and len(buckets) >= PERSON_BUCKETS_KEPT:
                    for stale in [k for k, b in buckets.items() if b.is_full()]:
                        del buckets[stale]
                rate, burst = limit
                bucket = buckets[key] = TokenBucket(rate, burst, self._clock)
            return bucket


class Comebacks:
    """Addresses hung up on for flooding, and when each may open its next connection.

    Disconnecting a flooder is not the end of it: it reconnects at once and
    floods again, and each comeback costs the server a handshake, a join and
    the refusals that lead to the next hang-up (about 10 ms of CPU here, 50
    times a second). So for `memory` seconds after a hang-up, connections
    from that address take turns: one every `spacing` seconds, the others
    wait (a sleeping greenlet costs no CPU), and one that would wait over
    `longest_wait` is refused. Clients already connected from the address are
    not touched: only a new session waits (app.py's `starts_a_session`). The
    cost falls on whoever shares the address (a NAT, or 127.0.0.1 in the
    tests): their new connections wait their turn too, as with nginx's
    per-address limits (README: "Fair service").
    """

    def __init__(
        self,
        spacing: float = COMEBACK_SPACING,
        memory: float = COMEBACK_MEMORY,
        longest_wait: float = COMEBACK_LONGEST_WAIT,
        kept: int = COMEBACKS_KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spacing, self.memory, self.longest_wait, self.kept = (
            spacing,
            memory,
            longest_wait,
            kept,
        )
        self._clock = clock
        self._lock = threading.Lock()
        # address -> [time of its last hang-up, earliest start of its next connection]
        self._struck: OrderedDict[str, list[float]] = OrderedDict()

    def hung_up(self, address: str) -> None:
        """The server hung up on a connection from `address` for flooding."""
        with self._lock:
            now = self._clock()
            entry = self._struck.pop(address, None) or [now, now]
            entry[0] = now
            self._struck[address] = entry  # the most recent last: the oldest go first
            while len(self._struck) > self.kept:
                self._struck.popitem(last=False)

    def wait(self, address: str) -> float | None:
        """Seconds a new connection from `address` waits before it is served (0.0 for an
        address with no recent hang-up), or None: refuse it, too many are waiting."""
        with self._lock:
            entry = self._struck.get(address)
            now = self._clock()
            if entry is None:
                return 0.0
            if now - entry[0] > self.memory:
                del self._struck[address]
                return 0.0
            start = max(now, entry[1])
            if start - now > self.longest_wait:
                return None
            entry[1] = start + self.spacing
            return start - now
