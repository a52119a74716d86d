"""Who is in which room under which name, on one server process (README: "Presence").

A connection sits in at most one room at a time, under a nickname unique in
that room (compared as `chat_rules.name_key` folds them: case, Unicode
forms and lookalike letters aside). A name is held by a *person*: the
random id a first join gives them, carried in their signed rejoin token. The
same person joining from a new connection takes the name back at once, and
the old connection (a half-open ghost, usually) is closed; anybody else is
refused. `chat_presence_redis.RedisRooms` keeps the same state in Redis so
that several processes share it; this one lives in memory.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from chat_rules import name_key


class NameTaken(Exception):
    """Someone else in the room holds this name."""


@dataclass(frozen=True)
class Seat:
    """Where a connection sits: its room and its name there."""

    room: str
    name: str


@dataclass(frozen=True)
class Holder:
    """Who holds a name in a room: the connection and the person behind it."""

    sid: str
    person: str
    name: str  # as they typed it; the key is its name_key


@dataclass(frozen=True)
class Joined:
    """What a join changed: the seat the connection left, and the ghost to close."""

    old: Seat | None  # where this connection sat before, if it moved
    ghost: str | None  # the person's previous connection, which lost the name to this one
    again: bool = False  # it already sat there: nothing changed


def taken(room: str, name: str) -> NameTaken:
    return NameTaken(f"the name '{name}' is taken in room '{room}'; pick another")


class Rooms:
    """Members per room, keyed by connection id (the Socket.IO `sid`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # handlers for different clients may run concurrently
        self._seats: dict[str, Seat] = {}  # sid -> where it sits
        self._holders: dict[str, dict[str, Holder]] = {}  # room -> {name_key: holder}

    def join(self, sid: str, room: str, name: str, person: str) -> Joined:
        """Seat `sid` in `room` as `name`, leaving its previous seat.

        Raises NameTaken if another person holds the name there; the
        connection then stays where it was. If the same person holds it from
        another connection, that connection loses it and is returned as the ghost.
        """
        with self._lock:
            holder = self._holders.get(room, {}).get(name_key(name))
            ghost = None
            if holder is not None and holder.sid != sid:
                if holder.person != person:
                    raise taken(room, name)
                ghost = holder.sid
                self._seats.pop(ghost, None)  # it sits nowhere now; its disconnect changes nothing
            seat, old = Seat(room, name), self._seats.get(sid)
            if old == seat:
                return Joined(None, None, again=True)
            if old is not None:
                self._release(sid, old)
            self._seats[sid] = seat
            self._holders.setdefault(room, {})[name_key(name)] = Holder(sid, person, name)
            return Joined(old, ghost)

    def leave(self, sid: str) -> Seat | None:
        """Remove `sid` from its room (if any) and return the seat it had."""
        with self._lock:
            seat = self._seats.pop(sid, None)
            if seat is not None:
                self._release(sid, seat)
            return seat

    def _release(self, sid: str, seat: Seat) -> None:
        holders = self._holders.get(seat.room, {})
        holder = holders.get(name_key(seat.name))
        if holder is not None and holder.sid == sid:
            del holders[name_key(seat.name)]
            if not holders:
                del self._holders[seat.room]  # an empty room costs nothing

    def seat(self, sid: str) -> Seat | None:
        with self._lock:
            return self._seats.get(sid)

    def members(self, room: str) -> list[str]:
        """The names in `room`, sorted for display."""
        with self._lock:
            names = [holder.name for holder in self._holders.get(room, {}).values()]
        return sorted(names, key=str.casefold)

    def count(self, room: str) -> int:
        with self._lock:
            return len(self._holders.get(room, {}))

    def busiest(self, limit: int) -> dict[str, int]:
        """Members per occupied room, the `limit` fullest rooms."""
        with self._lock:
            counts = {room: len(holders) for room, holders in self._holders.items()}
        return dict(sorted(counts.items(), key=lambda item: -item[1])[:limit])
