"""Who is in which room on this server process, under which name (README: "Presence").

A connection is in at most one room at a time, under a nickname unique in
that room. This is the state presence is made of: the member list a joiner
receives, the counts the lobby shows, and the name a message is signed with.
It lives in memory, so it is per process: see README "In production" for
presence shared across processes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


class NameTaken(Exception):
    """Someone in the room already uses this name (names are compared case-insensitively)."""


@dataclass(frozen=True)
class Seat:
    """Where a connection sits: its room and its name there."""

    room: str
    name: str


class Rooms:
    """Members per room, keyed by connection id (the Socket.IO `sid`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # handlers for different clients run concurrently
        self._seats: dict[str, Seat] = {}  # sid -> where it sits
        self._members: dict[str, dict[str, str]] = {}  # room -> {sid: name}

    def join(self, sid: str, room: str, name: str) -> Seat | None:
        """Seat `sid` in `room` as `name`, leaving its previous room; return that old seat.

        Raises NameTaken if another connection in `room` has the name; the
        connection then stays where it was.
        """
        with self._lock:
            taken = {n.casefold() for s, n in self._members.get(room, {}).items() if s != sid}
            if name.casefold() in taken:
                raise NameTaken(f"the name '{name}' is taken in room '{room}'; pick another")
            old = self._leave(sid)
            self._seats[sid] = Seat(room, name)
            self._members.setdefault(room, {})[sid] = name
            return old

    def leave(self, sid: str) -> Seat | None:
        """Remove `sid` from its room (if any) and return the seat it had."""
        with self._lock:
            return self._leave(sid)

    def _leave(self, sid: str) -> Seat | None:
        seat = self._seats.pop(sid, None)
        if seat is not None:
            members = self._members[seat.room]
            del members[sid]
            if not members:
                del self._members[seat.room]  # an empty room costs nothing
        return seat

    def seat(self, sid: str) -> Seat | None:
        with self._lock:
            return self._seats.get(sid)

    def members(self, room: str) -> list[str]:
        """The names in `room`, sorted for display."""
        with self._lock:
            return sorted(self._members.get(room, {}).values(), key=str.casefold)

    def counts(self) -> dict[str, int]:
        """Members per occupied room."""
        with self._lock:
            return {room: len(members) for room, members in self._members.items()}
