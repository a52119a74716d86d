"""Presence shared by several server processes, in Redis (README: "One chat across processes").

The same questions as `chat_rooms.Rooms` answers in memory (who holds which
name in which room, how many are in each room), answered from Redis so that
every process gives the same answer:

    chat:holders:<room>  hash   name_key(name) -> {"sid", "person", "name", "proc"}
    chat:lobby           zset   room -> members, for the lobby's busiest rooms
    chat:alive:<proc>    string a process's heartbeat; expires after PROCESS_TTL
    chat:procs           set    processes that hold names
    chat:seats:<proc>    set    "room\\nname" each process's connections hold

A name is claimed by a Lua script, which Redis runs alone: two processes
claiming "alice" at once cannot both win. Each process renews its heartbeat
every HEARTBEAT_INTERVAL; one that stops (kill -9, a lost network) is noticed
by the others' sweeps once its heartbeat expires, and its names are released
and announced as left: within PROCESS_TTL + HEARTBEAT_INTERVAL of the crash.
The guarantee rests on that lease: a process paused for longer than
PROCESS_TTL loses its names, and on waking it asks its clients to join
again (with their tokens) instead of letting them speak under names it no
longer holds.
"""

from __future__ import annotations

import json
import logging
import threading

import redis
from chat_rooms import Joined, Seat, taken
from chat_rules import name_key

log = logging.getLogger("realtimechat")

HEARTBEAT_INTERVAL = 1.0  # s between a process's heartbeats (and its sweeps of the others)
PROCESS_TTL = 3.0  # s: a process not heard from for this long is taken for dead
CRASH_BOUND = PROCESS_TTL + HEARTBEAT_INTERVAL  # s: a dead process's members are gone by then
PREFIX = "chat"

# KEYS: holders:<room>, lobby, seats:<my proc>
# ARGV: room, name_key(name), holder JSON, sid, person
CLAIM = """
local current = redis.call('HGET', KEYS[1], ARGV[2])
local ghost = ''
if current then
  local holder = cjson.decode(current)
  if holder.sid ~= ARGV[4] then
    if holder.person ~= ARGV[5] then return {0, ''} end
    ghost = holder.sid
    redis.call('SREM', 'chat:seats:' .. holder.proc, ARGV[1] .. '\\n' .. ARGV[2])
  end
else
  redis.call('ZINCRBY', KEYS[2], 1, ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1] .. '\\n' .. ARGV[2])
return {1, ghost}
"""

# KEYS: holders:<room>, lobby, seats:<proc>
# ARGV: room, name_key(name), "sid" or "proc", the value it must have
# Returns the name as typed if it was released, nil if someone else holds it now.
RELEASE = """
local current = redis.call('HGET', KEYS[1], ARGV[2])
if not current then return nil end
local holder = cjson.decode(current)
if holder[ARGV[3]] ~= ARGV[4] then return nil end
redis.call('HDEL', KEYS[1], ARGV[2])
if tonumber(redis.call('ZINCRBY', KEYS[2], -1, ARGV[1])) <= 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('SREM', KEYS[3], ARGV[1] .. '\\n' .. ARGV[2])
return holder.name
"""


class RedisRooms:
    """Members per room in Redis; this process's own seats also in memory, by sid."""

    def __init__(self, client: redis.Redis, process: str) -> None:
        self.redis = client
        self.process = process
        self._claim = client.register_script(CLAIM)
        self._release = client.register_script(RELEASE)
        self._lock = threading.Lock()  # guards _seats and _unreleased
        self._seats: dict[str, Seat] = {}  # sid -> seat, for this process's connections
        # Seats left while Redis could not be reached: the next sweep releases them,
        # or the name would stay held by a connection that is gone, for good.
        self._unreleased: dict[str, Seat] = {}
        self.redis.set(self._alive(process), 1, px=int(PROCESS_TTL * 1000))

    def _alive(self, process: str) -> str:
        return f"{PREFIX}:alive:{process}"

    def _keys(self, room: str, process: str) -> list[str]:
        return [f"{PREFIX}:holders:{room}", f"{PREFIX}:lobby", f"{PREFIX}:seats:{process}"]

    def join(self, sid: str, room: str, name: str, person: str) -> Joined:
        """As `Rooms.join`, atomic across processes; the ghost may sit on another process."""
        holder = json.dumps({"sid": sid, "person": person, "name": name, "proc": self.process})
        won, ghost = self._claim(
            keys=self._keys(room, self.process),
            args=[room, name_key(name), holder, sid, person],
        )
        if not won:
            raise taken(room, name)
        self.redis.sadd(f"{PREFIX}:procs", self.process)
        ghost = ghost.decode() or None
        seat = Seat(room, name)
        with self._lock:
            if ghost is not None:
                self._seats.pop(ghost, None)
            old = self._seats.get(sid)
            self._seats[sid] = seat
        if old == seat:
            return Joined(None, None, again=True)
        if old is not None:
            self._give_up(sid, old)
        return Joined(old, ghost)

    def leave(self, sid: str) -> Seat | None:
        """Give up `sid`'s seat; return it only if the name was still this connection's."""
        with self._lock:
            seat = self._seats.pop(sid, None)
        if seat is None or not self._give_up(sid, seat):
            return None
        return seat

    def _give_up(self, sid: str, seat: Seat) -> bool:
        """Release `sid`'s name; False if someone else holds it now, or Redis is away (retried)."""
        keys = self._keys(seat.room, self.process)
        try:
            name = self._release(keys=keys, args=[seat.room, name_key(seat.name), "sid", sid])
        except redis.RedisError as error:
            log.warning(
                "releasing %r in %s failed (%s); the next sweep retries",
                seat.name,
                seat.room,
                error,
            )
            with self._lock:
                self._unreleased[sid] = seat
            return False
        return name is not None

    def seat(self, sid: str) -> Seat | None:
        with self._lock:
            return self._seats.get(sid)

    def members(self, room: str) -> list[str]:
        holders = self.redis.hvals(f"{PREFIX}:holders:{room}")
        return sorted((json.loads(h)["name"] for h in holders), key=str.casefold)

    def count(self, room: str) -> int:
        return self.redis.hlen(f"{PREFIX}:holders:{room}")

    def busiest(self, limit: int) -> dict[str, int]:
        top = self.redis.zrevrange(f"{PREFIX}:lobby", 0, limit - 1, withscores=True)
        return {room.decode(): int(count) for room, count in top}

    # -- the lease ---------------------------------------------------------------

    def heartbeat(self) -> dict[str, Seat] | None:
        """Renew this process's lease: None if renewed.

        If it had expired (a pause longer than PROCESS_TTL, or Redis lost its
        data), the other processes have released, or will release, this
        one's names: its connections sit nowhere now. They are returned
        (sid -> the seat they had), so the caller can ask them to join again.
        """
        lease = {"px": int(PROCESS_TTL * 1000)}
        if self.redis.set(self._alive(self.process), 1, xx=True, **lease):
            return None
        self.redis.set(self._alive(self.process), 1, **lease)
        self._release_all(self.process)  # whatever no sweeper has released yet
        with self._lock:
            dropped, self._seats, self._unreleased = self._seats, {}, {}
        return dropped

    def sweep(self) -> list[Seat]:
        """Release the names of processes whose lease expired, and the names this
        process failed to release while Redis was away; return them, to announce."""
        with self._lock:
            unreleased, self._unreleased = self._unreleased, {}
        released = [seat for sid, seat in unreleased.items() if self._give_up(sid, seat)]
        for member in self.redis.smembers(f"{PREFIX}:procs"):
            process = member.decode()
            if process != self.process and not self.redis.exists(self._alive(process)):
                released += self._release_all(process)
        return released

    def _release_all(self, process: str) -> list[Seat]:
        released = []
        for entry in self.redis.smembers(f"{PREFIX}:seats:{process}"):
            room, key = entry.decode().split("\n", 1)
            keys = self._keys(room, process)
            name = self._release(keys=keys, args=[room, key, "proc", process])
            if name is not None:  # another sweeper may have been first
                released.append(Seat(room, name.decode()))
        if process != self.process and not self.redis.scard(f"{PREFIX}:seats:{process}"):
            self.redis.srem(f"{PREFIX}:procs", process)
        return released

    def close(self) -> None:
        """End the lease now: the other processes release this one's names at their next sweep."""
        self.redis.delete(self._alive(self.process))
