"""The edge's store: stored responses, one per URL and Vary variant, bounded in bytes (LRU).

A cache keyed by URL alone would hand a gzip body to a client that cannot
read gzip. RFC 9111 4.1: a response with `Vary: Accept-Encoding` may only be
reused for a request whose Accept-Encoding matches the one that produced it,
so the store keeps a separate entry per variant and picks the newest match.

Entries are immutable: refreshing one (after a 304) stores a new entry in its
place, so a connection that is still sending the old one is never disturbed.

README sections: "Vary: one URL, several answers" and "Staying up" (bounded memory).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from cdn_freshness import Directives, current_age
from cdn_http import Headers, get_all, get_combined, serialize_head, split_list

# How many recent invalidations to remember, so that a response fetched
# before a URL changed is not stored after it changed (see HttpCache.store).
INVALIDATION_MEMORY = 10_000

# Bookkeeping each entry costs beyond its bytes (keys, timings, object headers),
# so a flood of tiny responses cannot hide behind a byte budget that counts only bodies.
ENTRY_OVERHEAD_BYTES = 256

Variant = tuple[tuple[str, str | None], ...]  # (request field, its normalised value or None)


def vary_fields(response_headers: Headers) -> list[str]:
    """The request fields a response varies on, lower-cased, in order, without repeats."""
    names: list[str] = []
    for name in split_list(get_combined(response_headers, "vary")):
        if name.lower() not in names:
            names.append(name.lower())
    return names


def normalised_value(request_headers: Headers, name: str) -> str | None:
    """A request field's value for Vary matching: lines joined, spaces around commas ignored.

    `Foo: 1,2`, `Foo: 1, 2` and two lines `Foo: 1` / `Foo: 2` mean the same
    (RFC 9111 4.1 allows this normalisation); an absent field matches only absent.
    `name` is lower case.
    """
    values = get_all(request_headers, name)
    if not values:
        return None
    members = split_list(",".join(values))
    if name == "accept-encoding":
        # The order of codings carries no meaning, and their names no case
        # (RFC 9110 12.5.3): `gzip, br` and `BR,gzip` are one variant, not two.
        members = sorted(member.lower() for member in members)
    return ",".join(members)


def variant_of(fields: Sequence[str], request_headers: Headers) -> Variant:
    """This request's values of the fields a response varies on: its part of the cache key."""
    if not fields:  # no Vary: one variant for everyone
        return ()
    return tuple((name, normalised_value(request_headers, name)) for name in fields)


def fields_of(variant: Variant) -> tuple[str, ...]:
    return tuple(name for name, _ in variant)


@dataclass(frozen=True)
class CacheEntry:
    """One stored response and the times needed to compute its age and freshness."""

    key: str  # the request target ("/path?query"): the cache key's URL part
    variant: Variant  # the Vary part: what the request that fetched it sent
    status: int
    reason: str
    headers: Headers  # end-to-end fields only; no Age, no framing
    body: bytes
    directives: Directives  # the response's cache directives, parsed once
    request_time: float  # when the edge asked (wall clock, seconds)
    response_time: float  # when the answer arrived
    initial_age: float  # corrected_initial_age at response_time (RFC 9111 4.2.3)
    lifetime: float  # freshness lifetime in seconds (RFC 9111 4.2.1)
    size: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        header_bytes = sum(len(k) + len(v) + 4 for k, v in self.headers)
        object.__setattr__(self, "size", len(self.body) + header_bytes + ENTRY_OVERHEAD_BYTES)

    @cached_property
    def wire_head(self) -> bytes:
        """The status line and stored fields as sent, made once: every hit reuses them."""
        return serialize_head(f"HTTP/1.1 {self.status} {self.reason}", self.headers)[:-2]

    def age(self, now: float) -> float:
        return current_age(self.initial_age, self.response_time, now)

    def staleness(self, now: float) -> float:
        """Seconds past its freshness lifetime (negative while fresh)."""
        return self.age(now) - self.lifetime

    def header(self, name: str) -> str | None:
        return get_combined(self.headers, name)


class HttpCache:
    """Stored responses, evicted least-recently-used first to stay under `capacity` bytes.

    All methods are thread-safe; each holds one lock briefly and does no I/O.
    """

    def __init__(self, capacity: int, max_object_size: int) -> None:
        if max_object_size > capacity:
            raise ValueError(
                f"max object size {max_object_size} B exceeds the cache size {capacity} B; "
                "lower --max-object-size or raise --cache-size"
            )
        self.capacity = capacity
        self.max_object_size = max_object_size
        self._lock = threading.Lock()
        # Guarded by _lock. Order = recency of use: first is the eviction victim.
        self._entries: OrderedDict[tuple[str, Variant], CacheEntry] = OrderedDict()
        # key -> the fields its stored responses vary on -> the variants stored.
        # A lookup computes the request's variant once per list of fields (one,
        # nearly always) and finds it in _entries; it never walks the variants,
        # however many a client's odd Accept-Encoding values have added.
        self._variants: dict[str, dict[tuple[str, ...], set[Variant]]] = {}
        # key -> when a PUT, POST, DELETE... or PURGE last changed it (guarded by _lock)
        self._changed_at: OrderedDict[str, float] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def select(self, key: str, request_headers: Headers) -> CacheEntry | None:
        """The newest stored response for `key` whose variant matches this request."""
        with self._lock:
            by_fields = self._variants.get(key)
            if not by_fields:
                return None
            candidates = []
            for fields in by_fields:
                entry = self._entries.get((key, variant_of(fields, request_headers)))
                if entry is not None:
                    candidates.append(entry)
            if not candidates:
                return None
            newest = candidates[0]
            if len(candidates) > 1:
                newest = max(candidates, key=lambda entry: entry.response_time)
            self._entries.move_to_end((key, newest.variant))
            return newest

    def store(self, entry: CacheEntry) -> bool:
        """Store (or replace) an entry; False if it may not be kept.

        Not kept: an entry larger than the object limit, and one whose request
        left before its URL was last changed (`invalidate(..., changed_at=)`),
        since the origin may have answered it with the old content.
        """
        if entry.size > self.max_object_size:
            return False
        with self._lock:
            if entry.request_time < self._changed_at.get(entry.key, float("-inf")):
                return False
            self._insert(entry)
            return True

    def replace(self, old: CacheEntry, new: CacheEntry) -> bool:
        """Swap in a refreshed copy of `old`, unless `old` was evicted or replaced meanwhile."""
        if new.size > self.max_object_size:
            return False
        with self._lock:
            if self._entries.get((old.key, old.variant)) is not old:
                return False
            self._insert(new)
            return True

    def discard(self, entry: CacheEntry) -> None:
        """Remove `entry` itself, unless it was evicted or replaced meanwhile."""
        with self._lock:
            if self._entries.get((entry.key, entry.variant)) is entry:
                self._remove((entry.key, entry.variant))

    def _insert(self, entry: CacheEntry) -> None:
        """Add `entry` as the most recently used, evicting from the other end to make room."""
        self._remove((entry.key, entry.variant))
        while self.bytes + entry.size > self.capacity and self._entries:
            self._remove(next(iter(self._entries)))
            self.evictions += 1
        self._entries[(entry.key, entry.variant)] = entry
        by_fields = self._variants.setdefault(entry.key, {})
        by_fields.setdefault(fields_of(entry.variant), set()).add(entry.variant)
        self.bytes += entry.size

    def invalidate(self, key: str, changed_at: float | None = None) -> int:
        """Remove every variant stored for `key`; returns how many there were.

        `changed_at` (when the resource changed) also keeps out answers to
        requests that were already on their way to the origin at that moment.
        """
        with self._lock:
            if changed_at is not None:
                self._changed_at[key] = changed_at
                self._changed_at.move_to_end(key)
                if len(self._changed_at) > INVALIDATION_MEMORY:
                    self._changed_at.popitem(last=False)
            by_fields = self._variants.get(key, {})
            variants = [variant for group in by_fields.values() for variant in group]
            for variant in variants:
                self._remove((key, variant))
            return len(variants)

    def _remove(self, entry_key: tuple[str, Variant]) -> None:
        entry = self._entries.pop(entry_key, None)
        if entry is None:
            return
        self.bytes -= entry.size
        by_fields = self._variants.get(entry.key, {})
        fields = fields_of(entry.variant)
        variants = by_fields.get(fields, set())
        variants.discard(entry.variant)
        if not variants:
            by_fields.pop(fields, None)
        if not by_fields:
            self._variants.pop(entry.key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
