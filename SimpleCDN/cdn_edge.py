"""The edge's caching policy: what to answer each request with, and when to ask the origin.

This is RFC 9111 for a shared cache, applied request by request. A GET or
HEAD is looked up in the cache, and the answer is one of
  HIT          a stored response, still fresh
  STALE        a stored response past its freshness, which the origin or the
               client allowed (stale-while-revalidate, stale-if-error, max-stale)
  REVALIDATED  a stored response the origin confirmed with a 304
  MISS         the origin's answer (stored if HTTP allows it)
and says so in `X-Cache`. Every other method is forwarded unchanged, and a
successful unsafe one (POST, PUT, DELETE, PATCH, or any method the edge does
not know) removes the stored responses it may have changed.

The sockets and threads live in `cdn_server.py`; the rules for freshness in
`cdn_freshness.py`; the store in `cdn_cache.py`.
README sections: "How a request flows through the edge" and those after it.
"""

from __future__ import annotations

import hmac
import json
import re
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from cdn_cache import CacheEntry, HttpCache, variant_of, vary_fields
from cdn_freshness import (
    Directives,
    always_revalidate,
    corrected_initial_age,
    delta_seconds,
    fields_not_to_store,
    format_http_date,
    freshness_lifetime,
    must_revalidate_when_stale,
    parse_cache_control,
    parse_http_date,
    response_directives,
    why_not_storable,
)
from cdn_http import (
    FRAMING,
    Headers,
    HttpError,
    OriginError,
    Request,
    Response,
    end_to_end,
    error_response,
    fetch_from_origin,
    get_all,
    get_combined,
    get_first,
    split_list,
    without,
)

STATS_PATH = "/__cdn/stats"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 9.2.1
# Request fields this cache does not evaluate itself; such requests go
# straight to the origin and their answers are never stored.
BYPASS_FIELDS = ("if-range", "if-match", "if-unmodified-since")
BYTE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")  # one range; a list of ranges is ignored
CLIENT_CONDITIONALS = frozenset({"if-none-match", "if-modified-since"})
# Fields a 304 must carry when the 200 would have (RFC 9110 15.4.5).
NOT_MODIFIED_FIELDS = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "vary"}
)
# How long to remember that a URL's answers could not be shared (e.g. no-store),
# so that concurrent requests for it go straight to the origin instead of
# queueing behind each other; and how many such URLs to remember at most.
UNSHAREABLE_MEMORY_SECONDS = 30.0
UNSHAREABLE_MEMORY_SIZE = 10_000
ENTITY_TAG = re.compile(r'(?:W/)?"[^"]*"')

# Defaults, each overridable on the command line.
DEFAULT_CACHE_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_OBJECT_SIZE = 8 * 1024 * 1024
DEFAULT_ORIGIN_TIMEOUT = 10.0  # seconds the origin has to start answering


@dataclass
class EdgeConfig:
    origin_host: str
    origin_port: int
    name: str = "edge"  # this edge's name in `Via`, e.g. "eu-west"
    cache_size: int = DEFAULT_CACHE_SIZE
    max_object_size: int = DEFAULT_MAX_OBJECT_SIZE
    origin_timeout: float = DEFAULT_ORIGIN_TIMEOUT
    purge_token: str | None = None
    verbose: bool = False

    @property
    def origin_authority(self) -> str:
        return (
            self.origin_host if self.origin_port == 80 else f"{self.origin_host}:{self.origin_port}"
        )


class Flight:
    """One origin request in progress that other requests for the same URL wait on."""

    def __init__(self) -> None:
        self.landed = threading.Event()  # set by the leader when its answer is stored
        self.failure: Response | None = None  # the leader's 502/504, if the origin failed


class Flights:
    """Request coalescing: at most one origin fetch per URL at a time.

    The first request to miss becomes the leader and asks the origin; the
    rest wait for it and then look in the cache again, so 100 simultaneous
    misses cost the origin one request, not 100.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[str, Flight] = {}  # guarded by _lock
        # URL -> until when its answers are known not to be shareable (guarded
        # by _lock); Varnish calls this "hit-for-pass".
        self._unshareable: dict[str, float] = {}

    def remember(self, key: str, shareable: bool, now: float) -> None:
        """Record whether the origin's latest answer for `key` could serve other requests."""
        with self._lock:
            if shareable:
                self._unshareable.pop(key, None)
                return
            if len(self._unshareable) >= UNSHAREABLE_MEMORY_SIZE:
                self._unshareable = {k: t for k, t in self._unshareable.items() if t > now}
            if len(self._unshareable) < UNSHAREABLE_MEMORY_SIZE:
                self._unshareable[key] = now + UNSHAREABLE_MEMORY_SECONDS

    def known_unshareable(self, key: str, now: float) -> bool:
        with self._lock:
            return self._unshareable.get(key, 0.0) > now

    def join(self, key: str) -> tuple[Flight, bool]:
        """The flight for `key` and whether the caller leads it (must `land` it)."""
        with self._lock:
            flight = self._in_flight.get(key)
            if flight is not None:
                return flight, False
            flight = self._in_flight[key] = Flight()
            return flight, True

    def land(self, key: str, flight: Flight, failure: Response | None = None) -> None:
        with self._lock:
            self._in_flight.pop(key, None)
        flight.failure = failure
        flight.landed.set()


class EdgeStats:
    """Counters the edge keeps about itself, served at GET /__cdn/stats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()  # X-Cache label -> GET/HEAD requests
        self.other_methods = 0
        self.coalesced = 0  # requests that waited for another's origin fetch
        self.origin_requests = 0
        self.origin_errors = 0
        self.bytes_from_cache = 0
        self.not_stored_too_large = 0

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def outcome(self, label: str) -> None:
        with self._lock:
            self.outcomes[label] += 1

    def snapshot(self, cache: HttpCache) -> dict[str, object]:
        with self._lock:
            served = sum(self.outcomes.values())
            from_cache = self.outcomes["HIT"] + self.outcomes["STALE"]
            return {
                "requests": served + self.other_methods,
                "hits": self.outcomes["HIT"],
                "stale": self.outcomes["STALE"],
                "revalidations": self.outcomes["REVALIDATED"],
                "misses": self.outcomes["MISS"],
                "other_methods": self.other_methods,
                "hit_ratio": round(from_cache / served, 4) if served else 0.0,
                "coalesced": self.coalesced,
                "origin_requests": self.origin_requests,
                "origin_errors": self.origin_errors,
                "bytes_from_cache": self.bytes_from_cache,
                "not_stored_too_large": self.not_stored_too_large,
                "entries": len(cache),
                "bytes": cache.bytes,
                "capacity": cache.capacity,
                "evictions": cache.evictions,
            }


InterimSender = Callable[[int, str, Headers], None] | None

# Verdicts on a stored response for one request (see Edge.assess).
FRESH, STALE_ALLOWED, STALE_WHILE_REVALIDATE, VALIDATE = "fresh", "stale", "swr", "validate"


class Edge:
    """The caching policy: what to answer a request with, and when to ask the origin."""

    def __init__(self, config: EdgeConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.cache = HttpCache(config.cache_size, config.max_object_size)
        self.flights = Flights()
        self.stats = EdgeStats()
        # host:port pairs that mean "this site": the origin, and the edge itself
        self.same_site = {(config.origin_host.lower(), config.origin_port)}

    # --- entry point ------------------------------------------------------

    def handle(self, request: Request, send_interim: InterimSender = None) -> Response:
        """The response to one request, with `x_cache` saying where it came from."""
        if self.came_through_here(request):
            return self.finish(
                request, error_response(508, "request loop: it already came via this edge")
            )
        try:
            target = self.origin_form(request)
        except HttpError as exc:
            return self.finish(request, error_response(exc.status, exc.message))
        if request.method == "PURGE":
            return self.finish(request, self.purge(request, target))
        if target == STATS_PATH and request.method in ("GET", "HEAD"):
            body = json.dumps(self.stats.snapshot(self.cache), indent=2).encode()
            headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
            return self.finish(request, Response(200, "OK", headers, body))
        if request.method in ("GET", "HEAD"):
            response = self.serve_cacheable(request, target, send_interim)
            self.stats.outcome(response.x_cache or "MISS")
        else:
            response = self.forward_other(request, target, send_interim)
            self.stats.add("other_methods")
        return self.finish(request, response)

    def came_through_here(self, request: Request) -> bool:
        """Loop detection: does a `Via` entry name this edge (received-by = our name)?"""
        for hop in split_list(get_combined(request.headers, "via")):
            parts = hop.split()
            if len(parts) >= 2 and parts[1] == self.config.name:
                return True
        return False

    def origin_form(self, request: Request) -> str:
        """The path-and-query to ask the origin for; refuse to be an open proxy.

        A request in absolute form (`GET http://other.example/ HTTP/1.1`) is
        what a forward proxy receives; this edge fronts one origin, so any
        other host is refused rather than fetched (RFC 9112 3.2.2).
        """
        target = request.target
        if target.startswith("/"):
            return target
        if target == "*" and request.method == "OPTIONS":
            return target
        if request.method == "CONNECT":
            raise HttpError(403, "this edge is not a forward proxy: CONNECT is refused")
        parts = urlsplit(target)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise HttpError(400, f"cannot understand request target {target[:60]!r}")
        try:
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError as exc:
            raise HttpError(400, f"bad port in {target[:60]!r}") from exc
        if (parts.hostname.lower(), port) not in self.same_site:
            raise HttpError(
                403, f"not an open proxy: this edge serves {self.config.origin_authority} only"
            )
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def finish(self, request: Request, response: Response) -> Response:
        """Add what every answer carries: Date, Via, X-Cache."""
        if not get_all(response.headers, "date"):
            response.headers.append(("Date", format_http_date(self.clock())))
        label = response.x_cache
        response.send_body = request.method != "HEAD"
        if label in ("HIT", "STALE", "REVALIDATED") and response.send_body:
            self.stats.add("bytes_from_cache", len(response.body))
        if label:
            response.headers.append(("Via", f"1.1 {self.config.name} (SimpleCDN)"))
            response.headers.append(("X-Cache", label))
        if self.config.verbose:
            print(
                f"{request.method} {request.target} -> {response.status} {label or ''}",
                flush=True,
            )
        return response

    # --- GET and HEAD: the cache ---------------------------------------------

    def serve_cacheable(
        self, request: Request, target: str, send_interim: InterimSender
    ) -> Response:
        request_cc = parse_cache_control(request.headers)
        if "no-store" in request_cc or any(get_all(request.headers, f) for f in BYPASS_FIELDS):
            # The cache may not store the answer (no-store), or the request
            # has preconditions only the origin can evaluate (If-Match...).
            if "only-if-cached" in request_cc:
                return self.not_in_cache()
            return self.pass_through(request, target, send_interim)
        if request.method == "GET" and get_all(request.headers, "range"):
            return self.serve_range(request, target, request_cc, send_interim)
        return self.lookup(request, target, request_cc, send_interim)

    def not_in_cache(self) -> Response:
        """`only-if-cached` and nothing stored may answer: 504, without asking the origin."""
        return self.label(
            error_response(504, "only-if-cached, and no usable stored response"), "MISS"
        )

    def serve_range(
        self, request: Request, target: str, request_cc: Directives, send_interim: InterimSender
    ) -> Response:
        """A byte range cut from a stored response (how a video seek stays at the edge).

        The stored copy must be usable as it is: fresh, or stale within the
        client's `max-stale`. Otherwise the Range request goes to the origin
        as it is (or gets a 504 under `only-if-cached`), and its 206 is not stored.
        """
        entry = self.cache.select(target, request.headers)
        verdict = (
            self.assess(entry, request_cc, self.clock())
            if entry is not None and entry.status == 200
            else None
        )
        if entry is None or verdict not in (FRESH, STALE_ALLOWED):
            if "only-if-cached" in request_cc:
                return self.not_in_cache()
            return self.pass_through(request, target, send_interim)
        whole = self.from_cache(entry, request, "HIT" if verdict == FRESH else "STALE")
        span = byte_range(request.header("range") or "", len(entry.body))
        if span is None or whole.status != 200:
            return whole  # a Range the edge does not understand may be ignored (RFC 9110 14.2)
        if span == UNSATISFIABLE:
            response = error_response(416, f"range not satisfiable: {len(entry.body)} bytes")
            response.headers.append(("Content-Range", f"bytes */{len(entry.body)}"))
            return self.label(response, whole.x_cache)
        start, end = span
        whole.status, whole.reason = 206, "Partial Content"
        whole.headers.append(("Content-Range", f"bytes {start}-{end}/{len(entry.body)}"))
        whole.body = entry.body[start : end + 1]
        return whole

    def lookup(
        self,
        request: Request,
        target: str,
        request_cc: Directives,
        send_interim: InterimSender,
        waited_for: Flight | None = None,
    ) -> Response:
        entry = self.cache.select(target, request.headers)
        if entry is not None:
            verdict = self.assess(entry, request_cc, self.clock())
            if verdict == FRESH:
                return self.from_cache(entry, request, "HIT")
            if verdict == STALE_ALLOWED:
                return self.from_cache(entry, request, "STALE")
            if verdict == STALE_WHILE_REVALIDATE:
                self.revalidate_in_background(request, target, entry)
                return self.from_cache(entry, request, "STALE")
        if "only-if-cached" in request_cc:
            return self.not_in_cache()
        if waited_for is not None and waited_for.failure is not None:
            return self.copy_failure(waited_for.failure)
        if request.method == "HEAD":
            return self.forward_head(request, target, entry, send_interim)
        if waited_for is not None or self.flights.known_unshareable(target, self.clock()):
            # We already waited once, or this URL's answers cannot be shared
            # (no-store, private...): waiting for another request's answer
            # would only add its round trip to ours. Ask on our own.
            return self.fetch(request, target, entry, request_cc, send_interim)

        flight, leader = self.flights.join(target)
        if not leader:
            self.stats.add("coalesced")
            flight.landed.wait(self.config.origin_timeout * 2 + 1)
            return self.lookup(request, target, request_cc, send_interim, waited_for=flight)
        response = None
        try:
            response = self.fetch(request, target, entry, request_cc, send_interim)
            return response
        finally:
            failed = response is not None and response.origin_failed
            self.flights.land(target, flight, failure=response if failed else None)

    def assess(self, entry: CacheEntry, request_cc: Directives, now: float) -> str:
        """May this stored response answer this request, and how (RFC 9111 4.2, 5.2)?"""
        age = entry.age(now)
        if always_revalidate(entry.directives) or "no-cache" in request_cc:
            return VALIDATE
        max_age = delta_seconds(request_cc.get("max-age"))
        if max_age is not None and age > max_age:
            return VALIDATE
        min_fresh = delta_seconds(request_cc.get("min-fresh"))
        if min_fresh is not None and entry.lifetime - age < min_fresh:
            return VALIDATE
        if entry.lifetime > age:
            return FRESH
        if must_revalidate_when_stale(entry.directives):
            return VALIDATE  # must-revalidate, proxy-revalidate, s-maxage: never stale
        staleness = age - entry.lifetime
        if max_stale_allows(request_cc, staleness):
            return STALE_ALLOWED
        window = delta_seconds(entry.directives.get("stale-while-revalidate"))
        if window is not None and staleness <= window:
            return STALE_WHILE_REVALIDATE
        return VALIDATE

    def stale_if_error_allows(self, entry: CacheEntry, request_cc: Directives) -> bool:
        """May `entry` stand in for an origin that failed (RFC 5861 4)?"""
        if always_revalidate(entry.directives) or must_revalidate_when_stale(entry.directives):
            return False
        staleness = entry.staleness(self.clock())
        for directives in (entry.directives, request_cc):
            window = delta_seconds(directives.get("stale-if-error"))
            if window is not None and staleness <= window:
                return True
        return max_stale_allows(request_cc, staleness)

    def fetch(
        self,
        request: Request,
        target: str,
        stored: CacheEntry | None,
        request_cc: Directives,
        send_interim: InterimSender,
    ) -> Response:
        """Ask the origin for a GET: a plain miss, or a validation of `stored`."""
        headers = self.forward_headers(request)
        validating = stored is not None and bool(
            stored.header("etag") or stored.header("last-modified")
        )
        if stored is not None:
            # The edge asks about the copy it holds; the client's own
            # conditionals are answered afterwards, from that copy.
            headers = without(headers, CLIENT_CONDITIONALS)
            if stored.header("etag"):
                headers.append(("If-None-Match", stored.header("etag")))
            if stored.header("last-modified"):
                headers.append(("If-Modified-Since", stored.header("last-modified")))
        request_time = self.clock()
        try:
            response = self.ask_origin("GET", target, headers, request.body, send_interim)
        except OriginError as exc:
            return self.origin_failed(exc, request, stored, request_cc)
        response_time = self.clock()

        if response.status == 304 and validating and stored is not None:
            if self.validators_agree(stored, response):
                entry = self.freshen(stored, request, response, request_time, response_time)
                return self.from_cache(entry, request, "REVALIDATED")
            self.cache.invalidate(target)  # a 304 about some other copy: start over
            return self.fetch(request, target, None, request_cc, send_interim)
        if response.status >= 500 and stored is not None:
            if self.stale_if_error_allows(stored, request_cc):
                return self.from_cache(stored, request, "STALE")
        # A miss is answered with the origin's own message (no Age: nothing
        # aged in a cache), whether or not a copy of it was stored.
        entry = self.store(request, target, response, request_time, response_time)
        shareable = entry is not None and entry.is_fresh(response_time)
        self.flights.remember(target, shareable, response_time)
        return self.relay(response, request, "MISS", answer_conditionals=stored is not None)

    def forward_head(
        self, request: Request, target: str, stored: CacheEntry | None, send_interim: InterimSender
    ) -> Response:
        """A HEAD the cache cannot answer goes to the origin as a HEAD.

        Its answer can refresh a stored GET response's headers when it
        describes the same representation, and shows the stored one is out of
        date when it does not (RFC 9111 4.3.5).
        """
        request_time = self.clock()
        try:
            response = self.ask_origin(
                "HEAD", target, self.forward_headers(request), b"", send_interim
            )
        except OriginError as exc:
            return self.origin_failed(exc, request, stored, parse_cache_control(request.headers))
        if stored is not None and response.status == 200:
            if self.validators_agree(stored, response, compare_length=True):
                self.freshen(stored, request, response, request_time, self.clock())
            else:
                self.cache.invalidate(target)
        return self.relay(response, request, "MISS")

    def pass_through(self, request: Request, target: str, send_interim: InterimSender) -> Response:
        try:
            response = self.ask_origin(
                request.method, target, self.forward_headers(request), request.body, send_interim
            )
        except OriginError as exc:
            return self.origin_failed(exc, request, None, {})
        return self.relay(response, request, "MISS")

    def revalidate_in_background(self, request: Request, target: str, entry: CacheEntry) -> None:
        """stale-while-revalidate: answer from the stale copy now, refresh it behind the scenes."""
        flight, leader = self.flights.join(target)
        if not leader:
            return  # someone is already asking the origin about this URL

        def refresh() -> None:
            get = Request("GET", target, request.version, list(request.headers))
            try:
                self.fetch(get, target, entry, {}, None)
            except Exception:  # a background refresh must never take the edge down
                traceback.print_exc()
            finally:
                self.flights.land(target, flight)

        threading.Thread(target=refresh, name=f"refresh {target}", daemon=True).start()

    # --- storing and refreshing -------------------------------------------

    def store(
        self,
        request: Request,
        target: str,
        response: Response,
        request_time: float,
        response_time: float,
    ) -> CacheEntry | None:
        """Store `response` if RFC 9111 section 3 allows it and it can ever be reused."""
        directives, use_expires = response_directives(response.headers, self.config.name)
        reason = why_not_storable(
            "GET", request.headers, response.status, response.headers, directives, use_expires
        )
        if reason is not None:
            if self.config.verbose:
                print(f"  not stored: {reason}", flush=True)
            return None
        lifetime = freshness_lifetime(
            response.status, response.headers, directives, use_expires, response_time
        )
        initial_age = corrected_initial_age(response.headers, request_time, response_time)
        dropped = FRAMING | {"age"} | fields_not_to_store(directives)
        entry = CacheEntry(
            key=target,
            variant=variant_of(vary_fields(response.headers), request.headers),
            status=response.status,
            reason=response.reason,
            headers=without(end_to_end(response.headers), dropped),
            body=response.body,
            directives=directives,
            request_time=request_time,
            response_time=response_time,
            initial_age=initial_age,
            lifetime=lifetime,
        )
        if entry.size > self.cache.max_object_size:
            self.stats.add("not_stored_too_large")
            return None
        if not self.cache.store(entry):
            return None  # the URL changed (PUT, DELETE...) while this answer was on its way
        return entry

    def validators_agree(
        self, stored: CacheEntry, response: Response, compare_length: bool = False
    ) -> bool:
        """Does this 304 (or HEAD 200) describe the stored representation (RFC 9111 4.3.4)?"""
        etag = get_first(response.headers, "etag")
        if etag is not None and etag != stored.header("etag"):
            return False
        modified = get_first(response.headers, "last-modified")
        if etag is None and modified is not None and modified != stored.header("last-modified"):
            return False
        length = get_first(response.headers, "content-length")
        if compare_length and length is not None and length.strip() != str(len(stored.body)):
            return False
        return True

    def freshen(
        self,
        stored: CacheEntry,
        request: Request,
        response: Response,
        request_time: float,
        response_time: float,
    ) -> CacheEntry:
        """Update a stored response from a 304 or HEAD answer (RFC 9111 3.2, 4.3.4).

        Every field the new answer carries replaces the stored one of that
        name, except framing; the freshness clock restarts from this exchange.
        If the updated response may no longer be stored (the 304 says
        `private`, `no-store` or `Vary: *`), it answers this request only
        and the stored copy is dropped.
        """
        update = without(end_to_end(response.headers), FRAMING | {"age"})
        replaced = {name.lower() for name, _ in update}
        kept = [(k, v) for k, v in stored.headers if k.lower() not in replaced]
        merged = kept + update
        directives, use_expires = response_directives(merged, self.config.name)
        merged = without(merged, fields_not_to_store(directives))
        fresh = CacheEntry(
            key=stored.key,
            variant=stored.variant,
            status=stored.status,
            reason=stored.reason,
            headers=merged,
            body=stored.body,
            directives=directives,
            request_time=request_time,
            response_time=response_time,
            initial_age=corrected_initial_age(response.headers, request_time, response_time),
            lifetime=freshness_lifetime(
                stored.status, merged, directives, use_expires, response_time
            ),
        )
        reason = why_not_storable(
            "GET", request.headers, stored.status, merged, directives, use_expires
        )
        if reason is None:
            self.cache.replace(stored, fresh)
        else:
            if self.config.verbose:
                print(f"  dropped after revalidation: {reason}", flush=True)
            self.cache.discard(stored)
        return fresh

    # --- answering ------------------------------------------------------

    def from_cache(self, entry: CacheEntry, request: Request, label: str) -> Response:
        """A stored response as the client receives it: current Age, and a 304
        if the client's own conditional request matches it (RFC 9111 4.3.2)."""
        headers = list(entry.headers) + [("Age", str(int(entry.age(self.clock()))))]
        if entry.status == 200 and not_modified(
            request.headers, entry.headers, entry.response_time
        ):
            kept = [(k, v) for k, v in headers if k.lower() in NOT_MODIFIED_FIELDS | {"age"}]
            if not get_all(entry.headers, "etag") and entry.header("last-modified"):
                kept.append(("Last-Modified", entry.header("last-modified") or ""))
            return self.label(Response(304, "Not Modified", kept), label)
        if request.method == "HEAD":
            headers.append(("Content-Length", str(len(entry.body))))
        return self.label(Response(entry.status, entry.reason, headers, entry.body), label)

    def relay(
        self, response: Response, request: Request, label: str, answer_conditionals: bool = False
    ) -> Response:
        """The origin's answer, minus hop-by-hop fields (HEAD keeps its Content-Length)."""
        headers = end_to_end(response.headers)
        if request.method != "HEAD":
            headers = without(headers, FRAMING)
        if (
            answer_conditionals
            and response.status == 200
            and not_modified(request.headers, headers, self.clock())
        ):
            kept = [(k, v) for k, v in headers if k.lower() in NOT_MODIFIED_FIELDS]
            return self.label(Response(304, "Not Modified", kept), label)
        return self.label(
            Response(response.status, response.reason, headers, response.body, response.version),
            label,
        )

    def origin_failed(
        self, exc: OriginError, request: Request, stored: CacheEntry | None, request_cc: Directives
    ) -> Response:
        """The origin is down or slow: a stale copy if allowed, else a clear 502/504."""
        self.stats.add("origin_errors")
        if stored is not None and self.stale_if_error_allows(stored, request_cc):
            return self.from_cache(stored, request, "STALE")
        if exc.timed_out:
            response = error_response(504, f"origin timed out: {exc}")
        elif stored is not None:
            response = error_response(
                504, f"cannot revalidate the stored copy and may not serve it stale: {exc}"
            )
        else:
            response = error_response(502, f"the origin failed: {exc}")
        response.origin_failed = True
        return self.label(response, "MISS")

    def copy_failure(self, failure: Response) -> Response:
        copy = Response(failure.status, failure.reason, list(failure.headers), failure.body)
        copy.headers = without(copy.headers, {"via", "x-cache", "date"})
        return self.label(copy, "MISS")

    @staticmethod
    def label(response: Response, x_cache: str) -> Response:
        response.x_cache = x_cache
        return response

    # --- everything that is not GET or HEAD ----------------------------------

    def forward_other(self, request: Request, target: str, send_interim: InterimSender) -> Response:
        """Forward any other method unchanged; a success invalidates what it touched."""
        try:
            response = self.ask_origin(
                request.method, target, self.forward_headers(request), request.body, send_interim
            )
        except OriginError as exc:
            return self.origin_failed(exc, request, None, {})
        if request.method not in SAFE_METHODS and 200 <= response.status < 400:
            self.invalidate_after_unsafe(target, response)
        return self.relay(response, request, "MISS")

    def invalidate_after_unsafe(self, target: str, response: Response) -> None:
        """RFC 9111 4.4: the target URI, and Location / Content-Location on the same site."""
        changed_at = self.clock()
        self.cache.invalidate(target, changed_at)
        base = f"http://{self.config.origin_authority}{target}"
        for name in ("location", "content-location"):
            value = get_first(response.headers, name)
            if not value:
                continue
            parts = urlsplit(urljoin(base, value.strip()))
            try:
                port = parts.port or 80
            except ValueError:
                continue
            if parts.scheme == "http" and ((parts.hostname or "").lower(), port) in self.same_site:
                self.cache.invalidate(
                    (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), changed_at
                )

    def purge(self, request: Request, target: str) -> Response:
        """`PURGE /path` with the right `X-Purge-Token` drops every stored variant of /path."""
        token = self.config.purge_token
        given = request.header("x-purge-token") or ""
        if not token:
            return error_response(403, "purging is disabled: start the edge with --purge-token")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return error_response(403, "PURGE needs the right X-Purge-Token header")
        removed = self.cache.invalidate(target, self.clock())
        body = json.dumps({"purged": target, "entries": removed}).encode()
        return Response(200, "OK", [("Content-Type", "application/json")], body)

    # --- talking to the origin -------------------------------------------

    def forward_headers(self, request: Request) -> Headers:
        """The client's end-to-end fields for the origin, with Host, Via and
        Surrogate-Capability (which names this edge to Surrogate-Control) set."""
        headers = without(end_to_end(request.headers), {"host", "expect"} | FRAMING)
        version = f"{request.version[0]}.{request.version[1]}"
        name = self.config.name
        return (
            [("Host", self.config.origin_authority)]
            + headers
            + [("Via", f"{version} {name} (SimpleCDN)")]
            + [("Surrogate-Capability", f'{name}="Surrogate/1.0"')]
        )

    def ask_origin(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        send_interim: InterimSender,
    ) -> Response:
        self.stats.add("origin_requests")
        response = fetch_from_origin(
            self.config.origin_host,
            self.config.origin_port,
            method,
            target,
            headers,
            body,
            self.config.origin_timeout,
            send_interim,
        )
        # RFC 9110 6.6.1: a response without Date gets the time it arrived.
        if not get_all(response.headers, "date"):
            response.headers.append(("Date", format_http_date(self.clock())))
        return response


def not_modified(request_headers: Headers, response_headers: Headers, received: float) -> bool:
    """Would the origin answer this conditional GET with 304, judging by these headers?

    If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2); entity tags
    compare weakly, as GET allows; a response without Last-Modified is
    compared by its Date, then by when it was received (RFC 9111 4.3.2).
    """
    if_none_match = get_combined(request_headers, "if-none-match")
    if if_none_match is not None:
        etag = get_first(response_headers, "etag")
        if if_none_match.strip() == "*":
            return True
        if etag is None:
            return False
        wanted = ENTITY_TAG.findall(if_none_match) or [t.strip() for t in if_none_match.split(",")]
        return any(_opaque(tag) == _opaque(etag) for tag in wanted)
    since = parse_http_date(get_first(request_headers, "if-modified-since"))
    if since is None:
        return False
    modified = parse_http_date(get_first(response_headers, "last-modified"))
    if modified is None:
        modified = parse_http_date(get_first(response_headers, "date")) or received
    return modified <= since


def max_stale_allows(request_cc: Directives, staleness: float) -> bool:
    """Did the client accept a copy this stale (`max-stale`, or `max-stale=N`)?"""
    if "max-stale" not in request_cc:
        return False
    limit = request_cc["max-stale"]
    allowed = float("inf") if limit is None else delta_seconds(limit)
    return allowed is not None and staleness <= allowed


UNSATISFIABLE = (-1, -1)


def byte_range(value: str, length: int) -> tuple[int, int] | None:
    """First and last byte of a single `bytes=` range (RFC 9110 14.1.2).

    None means "not a single byte range: ignore it and send everything";
    UNSATISFIABLE means it asks only for bytes past the end.
    """
    match = BYTE_RANGE.match(value.replace(" ", ""))
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the final N bytes
        suffix = int(last)
        return (max(0, length - suffix), length - 1) if suffix and length else UNSATISFIABLE
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignore the Range field
    if start >= length:
        return UNSATISFIABLE
    return start, min(int(last), length - 1) if last else length - 1


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag
