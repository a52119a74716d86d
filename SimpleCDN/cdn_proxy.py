"""The edge: carries out `cdn_policy`'s decisions with the cache, the origin and the streams.

`Edge.decide` runs without waiting for anything: it answers what the cache
can answer (a HIT, a STALE copy, a 304, a refusal) on the spot, and returns
a `Plan` for everything that needs the origin, which `Edge.carry_out` then
does on the event loop:

  lookup  a miss, or a stored copy to revalidate: one origin fetch per
          (URL, variant), shared by every request that arrives meanwhile
  head    a HEAD the cache cannot answer goes to the origin as a HEAD
  pass    the request may not use the cache (no-store, If-Match...)
  forward any other method; a success invalidates what it changed

README sections: "How a request flows through the edge" and those after it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import cdn_policy as policy
from cdn_cache import CacheEntry, HttpCache, Variant, variant_of, vary_fields
from cdn_freshness import (
    Directives,
    corrected_initial_age,
    fields_not_to_store,
    format_http_date,
    freshness_lifetime,
    parse_cache_control,
    response_directives,
)
from cdn_http import (
    FRAMING,
    REASONS,
    Headers,
    OriginError,
    Request,
    end_to_end,
    get_all,
    get_first,
    has_no_body,
    without,
)
from cdn_origin import OriginExchange, request_bytes
from cdn_stream import Cursor, Fill, InflightBudget

# How long to remember that a URL's answers could not be shared (no-store,
# private, Set-Cookie...), so that requests for it go to the origin side by
# side instead of queueing behind each other (Varnish: "hit-for-miss").
UNSHAREABLE_MEMORY_SECONDS = 30.0
MEMORY_SIZE = 10_000  # URLs remembered as unshareable, and URLs whose Vary is known

# Defaults, each overridable on the command line.
DEFAULT_CACHE_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_OBJECT_SIZE = 8 * 1024 * 1024
DEFAULT_MAX_INFLIGHT = 64 * 1024 * 1024
DEFAULT_ORIGIN_TIMEOUT = 10.0  # seconds the origin has to start answering

InterimSender = Callable[[int, str, Headers], None] | None


@dataclass
class EdgeConfig:
    origin_host: str
    origin_port: int
    name: str = "edge"  # this edge's name in `Via`, e.g. "eu-west"
    cache_size: int = DEFAULT_CACHE_SIZE
    max_object_size: int = DEFAULT_MAX_OBJECT_SIZE
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT
    origin_timeout: float = DEFAULT_ORIGIN_TIMEOUT
    purge_token: str | None = None
    verbose: bool = False

    @property
    def origin_authority(self) -> str:
        port = self.origin_port
        return self.origin_host if port == 80 else f"{self.origin_host}:{port}"


@dataclass
class Answer:
    """What a client is sent: a head, then a body from memory or streamed from a fill."""

    status: int
    reason: str
    headers: Headers
    body: bytes | memoryview = b""
    cursor: Cursor | None = None  # stream the body from an origin fetch instead
    length: int | None = None  # the streamed body's length, when known
    label: str = ""  # X-Cache: HIT, MISS, REVALIDATED or STALE; "" for the edge's own pages
    send_body: bool = True  # False for the answer to a HEAD
    # A stored response's status line and fields, already serialized (it has
    # its Date); `headers` then holds only what this answer adds (Age...).
    stored_head: bytes = b""


@dataclass
class Plan:
    """A request that needs the origin, and what `decide` already found out about it."""

    action: str  # lookup, head, pass or forward
    target: str
    request: Request
    request_cc: Directives
    client_address: str
    send_interim: InterimSender = None
    stored: CacheEntry | None = None  # a stored copy that may not be used without asking


@dataclass
class EdgeStats:
    """Counters the edge keeps about itself, served at GET /__cdn/stats."""

    outcomes: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("HIT", "STALE", "REVALIDATED", "MISS"), 0)
    )
    other_methods: int = 0
    coalesced: int = 0  # requests that read another request's origin fetch
    origin_requests: int = 0
    origin_errors: int = 0
    bytes_from_cache: int = 0
    not_stored_too_large: int = 0
    slow_clients_dropped: int = 0  # no progress for --send-timeout


def error_answer(status: int, message: str) -> Answer:
    """A small plain-text answer the edge makes itself."""
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
    return Answer(status, REASONS.get(status, "Error"), headers, f"{message}\n".encode())


class Edge:
    """The cache, the requests in flight to the origin, and what the edge knows about URLs."""

    def __init__(self, config: EdgeConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.cache = HttpCache(config.cache_size, config.max_object_size)
        self.budget = InflightBudget(config.max_inflight_bytes)
        self.stats = EdgeStats()
        self.flights: dict[tuple[str, Variant | None], Fill] = {}  # the fetches others may join
        self.fetching: set[asyncio.Task] = set()  # every origin fetch running
        self.unshareable: OrderedDict[str, float] = OrderedDict()  # URL -> remembered until
        self.known_vary: OrderedDict[str, list[str]] = OrderedDict()  # URL -> its Vary fields
        # host:port pairs that mean "this site": the origin, and the edge itself
        self.same_site = {(config.origin_host.lower(), config.origin_port)}
        self.via = ("Via", f"1.1 {config.name} (SimpleCDN)")  # on every proxied answer
        self.authority = config.origin_authority  # host[:port], as requests name the origin

    # --- deciding, without waiting ------------------------------------------------

    def decide(
        self, request: Request, client_address: str, send_interim: InterimSender = None
    ) -> Answer | Plan:
        """The answer, if the edge can give it now; otherwise the plan for getting it."""
        config = self.config
        names = request.names
        request_cc = parse_cache_control(request.headers) if "cache-control" in names else {}
        route = policy.recv(request, request_cc, config.name, self.authority, self.same_site)
        if route.action == "refuse":
            return self.finish(request, error_answer(route.status, route.message))
        if route.action == "purge":
            return self.finish(request, self.purge(request, route.target))
        if route.action == "stats":
            headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
            body = json.dumps(self.snapshot(), indent=2).encode()
            return self.finish(request, Answer(200, "OK", headers, body))
        if "only-if-cached" in request_cc and route.action == "pass":
            return self.finish(request, self.not_in_cache())
        if route.action != "lookup":
            return Plan(
                route.action, route.target, request, request_cc, client_address, send_interim
            )
        now = self.clock()
        entry = self.cache.select(route.target, request.headers)
        if entry is not None:
            age = entry.age(now)
            verdict = policy.assess(age, entry.lifetime, entry.directives, request_cc)
            if verdict == policy.FRESH:
                return self.finish(request, self.from_entry(entry, request, "HIT", age))
            if verdict == policy.STALE_ALLOWED:
                return self.finish(request, self.from_entry(entry, request, "STALE"))
            if verdict == policy.STALE_WHILE_REVALIDATE:
                self.refresh_in_background(route.target, request, client_address, entry)
                return self.finish(request, self.from_entry(entry, request, "STALE"))
            being_refreshed = self.flight_key(route.target, request.headers) in self.flights
            if being_refreshed and policy.stale_if_error_allows(
                entry.staleness(now), entry.directives, request_cc
            ):  # serve stale while updating: one request asks, the others need not wait
                return self.finish(request, self.from_entry(entry, request, "STALE"))
        if "only-if-cached" in request_cc:
            return self.finish(request, self.not_in_cache())
        action = "head" if request.method == "HEAD" else "lookup"
        plan = Plan(action, route.target, request, request_cc, client_address, send_interim)
        plan.stored = entry
        return plan

    async def carry_out(self, plan: Plan) -> Answer:
        """Ask the origin as `plan` says; the answer, ready to send."""
        try:
            if plan.action == "lookup":
                answer = await self.fetch(plan)
            elif plan.action == "head":
                answer = await self.forward_head(plan)
            else:
                answer = await self.pass_to_origin(plan)
        except OriginError as exc:
            answer = self.origin_failed(exc, plan)
        return self.finish(plan.request, answer)

    def finish(self, request: Request, answer: Answer) -> Answer:
        """Add what every answer carries (Date; Via and X-Cache on proxied ones) and count it."""
        if not answer.stored_head and not get_all(answer.headers, "date"):
            answer.headers.append(("Date", format_http_date(self.clock())))
        label = answer.label
        if label:
            answer.headers.append(self.via)
            answer.headers.append(("X-Cache", label))
            self.stats.outcomes[label] += 1
        elif request.method not in ("GET", "HEAD"):
            self.stats.other_methods += 1
        answer.send_body = request.method != "HEAD"
        if label in ("HIT", "STALE", "REVALIDATED") and answer.send_body:
            self.stats.bytes_from_cache += len(answer.body)
        if self.config.verbose:
            print(f"{request.method} {request.target} -> {answer.status} {label}", flush=True)
        return answer

    # --- lookup: one origin fetch per (URL, variant) --------------------------------------

    def flight_key(self, target: str, request_headers: Headers) -> tuple[str, Variant | None]:
        """Which fetch a request may share: same URL, same values of the fields it varies on.

        Until the first answer for a URL says what it varies on, all
        requests for it share one key; a waiter whose variant turns out to
        differ then asks again under its own (see answer_from_fill).
        """
        fields = self.known_vary.get(target)
        return (target, None if fields is None else variant_of(fields, request_headers))

    async def fetch(self, plan: Plan, coalesce: bool = True, retried: bool = False) -> Answer:
        key = self.flight_key(plan.target, plan.request.headers)
        fill = self.flights.get(key)
        if coalesce and fill is not None and fill.joinable:
            self.stats.coalesced += 1
            return await self.answer_from_fill(plan, fill, Cursor(fill), False, retried)
        if self.known_unshareable(plan.target):
            coalesce = False  # its answers go to one client each: nobody should queue for them
        fill = self.start_fill(plan, key if coalesce else None)
        return await self.answer_from_fill(plan, fill, Cursor(fill), True, retried)

    def start_fill(self, plan: Plan, key: tuple[str, Variant | None] | None) -> Fill:
        """Start an origin fetch for `plan`; with a `key`, others may join it."""
        fill = Fill(self.budget, self.config.max_object_size)
        if key is not None:
            self.flights[key] = fill

            def land(done: Fill) -> None:
                if self.flights.get(key) is done:
                    del self.flights[key]

            fill.on_unjoinable = land
        task = asyncio.get_running_loop().create_task(self.run_fill(fill, plan))
        self.fetching.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self.fetching.discard)
        return fill

    def refresh_in_background(
        self, target: str, request: Request, client_address: str, stored: CacheEntry
    ) -> None:
        """stale-while-revalidate: one refresh per object, nobody waits for it."""
        key = self.flight_key(target, request.headers)
        if key not in self.flights:
            background = Plan("lookup", target, request, {}, client_address)
            background.stored = stored
            self.start_fill(background, key)

    async def run_fill(self, fill: Fill, plan: Plan) -> None:
        """The fetch behind a fill: validate the stored copy, or get the whole response."""
        config, stored = self.config, plan.stored
        try:
            while True:
                validators = policy.validators_for(stored.headers) if stored else []
                headers = policy.origin_headers(
                    plan.request,
                    plan.client_address,
                    config.name,
                    config.origin_authority,
                    shared=True,
                    validators=validators,
                )
                request_time = self.clock()
                exchange = await self.ask_origin(
                    "GET", plan.target, headers, b"", plan.send_interim
                )
                response_time = self.clock()
                if not (exchange.status == 304 and stored is not None and validators):
                    break
                if policy.validators_agree(
                    stored.headers, len(stored.body), exchange.headers, head=False
                ):
                    fill.revalidated, fill.shareable = self.freshen(
                        stored, plan.request, exchange.headers, request_time, response_time
                    )
                    fill.set_head(304, exchange.reason, exchange.headers, storing=False)
                    fill.finish()
                    return
                self.cache.invalidate(plan.target)  # a 304 about another copy: ask for it all
                stored = None
            self.receive(fill, plan, exchange, request_time, response_time)
        except OriginError as exc:
            fill.fail(exc)
        except Exception as exc:  # a bug must cost this fetch, never the edge
            traceback.print_exc()
            fill.fail(OriginError(f"internal error in the edge: {exc}"))
            if fill.source is not None:
                fill.source.abort()

    def receive(
        self,
        fill: Fill,
        plan: Plan,
        exchange: OriginExchange,
        request_time: float,
        response_time: float,
    ) -> None:
        """A full response arrived: decide whether it is shared and stored, then stream it."""
        status, headers = exchange.status, exchange.headers
        directives, use_expires = response_directives(headers, self.config.name)
        reason = policy.why_not_shared(plan.request, status, headers, directives, use_expires)
        lifetime = freshness_lifetime(status, headers, directives, use_expires, response_time)
        initial_age = corrected_initial_age(headers, request_time, response_time)
        self.remember_shareable(plan.target, reason is None)
        fields = vary_fields(headers)
        self.known_vary[plan.target] = fields
        self.known_vary.move_to_end(plan.target)
        if len(self.known_vary) > MEMORY_SIZE:
            self.known_vary.popitem(last=False)
        fill.variant = variant_of(fields, plan.request.headers)
        fill.shareable = reason is None
        if reason is not None and self.config.verbose:
            print(f"  not stored: {reason}", flush=True)

        def store(complete: Fill) -> None:
            entry = CacheEntry(
                key=plan.target,
                variant=complete.variant,  # type: ignore[arg-type]
                status=status,
                reason=complete.reason,
                headers=without(
                    end_to_end(headers), FRAMING | {"age"} | fields_not_to_store(directives)
                ),
                body=complete.body(),
                directives=directives,
                request_time=request_time,
                response_time=response_time,
                initial_age=initial_age,
                lifetime=lifetime,
            )
            if entry.size > self.cache.max_object_size:
                self.stats.not_stored_too_large += 1
            else:
                self.cache.store(entry)  # refused if the URL changed meanwhile (PUT...)

        fill.on_complete = store
        fill.set_head(status, exchange.reason, headers, storing=reason is None)
        if reason is None and not fill.storing:
            self.stats.not_stored_too_large += 1  # Content-Length says it is too big
        fill.source = exchange
        exchange.stream_into(fill)

    async def answer_from_fill(
        self, plan: Plan, fill: Fill, cursor: Cursor, leader: bool, retried: bool = False
    ) -> Answer:
        """This request's answer from a fetch it started or joined."""
        try:
            await fill.wait_head()
        except OriginError as exc:
            cursor.close()
            return self.origin_failed(exc, plan)
        except BaseException:
            cursor.close()
            raise
        request = plan.request
        if isinstance(fill.revalidated, CacheEntry):
            cursor.close()
            if leader:
                return self.from_entry(fill.revalidated, request, "REVALIDATED")
            # Others get the copy the 304 refreshed, as the cache now holds it;
            # if the 304 made the answer personal (it sets a cookie...), or the
            # copy for their variant is another one, they ask for themselves.
            entry = self.cache.select(plan.target, request.headers) if fill.shareable else None
            if entry is not None and entry.response_time >= fill.revalidated.response_time:
                return self.from_entry(entry, request, "REVALIDATED")
            return await self.fetch(plan, coalesce=False, retried=True)
        if not leader and not (fill.shareable and fill.variant == self.variant_for(fill, request)):
            # Not an answer for this request: someone else's (Set-Cookie,
            # private...), or another variant. Ask again; under its own
            # variant it may share a fetch with others like it.
            cursor.close()
            return await self.fetch(plan, coalesce=fill.shareable and not retried, retried=True)
        stored = plan.stored
        if fill.status >= 500 and stored is not None:
            staleness = stored.staleness(self.clock())
            if policy.stale_if_error_allows(staleness, stored.directives, plan.request_cc):
                cursor.close()
                return self.from_entry(stored, request, "STALE")
        return self.from_fill(fill, cursor, request, "MISS", cut=True)

    def variant_for(self, fill: Fill, request: Request) -> Variant:
        return variant_of(vary_fields(fill.headers), request.headers)

    # --- head, pass and forward: straight to the origin, never shared ------------------------

    async def forward_head(self, plan: Plan) -> Answer:
        """A HEAD the cache cannot answer goes to the origin as a HEAD.

        Its answer refreshes a stored GET response's headers when it
        describes the same representation, and shows the stored one is out
        of date when it does not (RFC 9111 4.3.5).
        """
        config, stored = self.config, plan.stored
        headers = policy.origin_headers(
            plan.request, plan.client_address, config.name, config.origin_authority, shared=False
        )
        request_time = self.clock()
        exchange = await self.ask_origin("HEAD", plan.target, headers, b"", plan.send_interim)
        if stored is not None and exchange.status == 200:
            if policy.validators_agree(
                stored.headers, len(stored.body), exchange.headers, head=True
            ):
                self.freshen(stored, plan.request, exchange.headers, request_time, self.clock())
            else:
                self.cache.invalidate(plan.target)
        relayed = end_to_end(exchange.headers)
        return Answer(exchange.status, exchange.reason, relayed, label="MISS")

    async def pass_to_origin(self, plan: Plan) -> Answer:
        """Forward the request as it is and stream the answer back, storing nothing."""
        config, request = self.config, plan.request
        headers = policy.origin_headers(
            request, plan.client_address, config.name, config.origin_authority, shared=False
        )
        exchange = await self.ask_origin(
            request.method, plan.target, headers, request.body, plan.send_interim
        )
        if request.method not in policy.SAFE_METHODS and 200 <= exchange.status < 400:
            self.invalidate_after_unsafe(plan.target, exchange.headers)
        if request.method == "HEAD":  # headers only, Content-Length included
            relayed = end_to_end(exchange.headers)
            return Answer(exchange.status, exchange.reason, relayed, label="MISS")
        fill = Fill(self.budget, max_stored=0)
        cursor = Cursor(fill)
        fill.set_head(exchange.status, exchange.reason, exchange.headers, storing=False)
        fill.source = exchange
        exchange.stream_into(fill)
        return self.from_fill(fill, cursor, request, "MISS", cut=False)

    async def ask_origin(
        self, method: str, target: str, headers: Headers, body: bytes, interim: InterimSender
    ) -> OriginExchange:
        """Send one request; return once the answer's head is in. Raises OriginError."""
        self.stats.origin_requests += 1
        exchange = OriginExchange(method, self.config.origin_timeout, interim)
        config = self.config
        try:
            await exchange.open(
                config.origin_host,
                config.origin_port,
                request_bytes(method, target, headers, body),
            )
        except OriginError:
            self.stats.origin_errors += 1
            raise
        # RFC 9110 6.6.1: a response without Date gets the time it arrived.
        if not get_all(exchange.headers, "date"):
            exchange.headers.append(("Date", format_http_date(self.clock())))
        return exchange

    def invalidate_after_unsafe(self, target: str, response_headers: Headers) -> None:
        """RFC 9111 4.4: the target URI, and Location / Content-Location on the same site."""
        changed_at = self.clock()
        self.cache.invalidate(target, changed_at)
        base = f"http://{self.config.origin_authority}{target}"
        for name in ("location", "content-location"):
            value = get_first(response_headers, name)
            if not value:
                continue
            parts = urlsplit(urljoin(base, value.strip()))
            try:
                port = parts.port or 80
            except ValueError:
                continue
            if parts.scheme == "http" and ((parts.hostname or "").lower(), port) in self.same_site:
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                self.cache.invalidate(path, changed_at)

    # --- the cache: storing, refreshing, remembering --------------------------------------

    def freshen(
        self,
        stored: CacheEntry,
        request: Request,
        update: Headers,
        request_time: float,
        response_time: float,
    ) -> tuple[CacheEntry, bool]:
        """Update a stored response from a 304 or HEAD answer (RFC 9111 3.2, 4.3.4).

        Returns the updated response as the request that asked gets it (with
        every field the update carried, a Set-Cookie too), and whether the
        stored copy was refreshed for everyone else. If the updated response
        may no longer be shared (the 304 says `private`, `no-store`, sets a
        cookie...), it answers that request only and the stored copy is dropped.
        """
        whole = policy.merge_update(stored.headers, update)
        directives, use_expires = response_directives(whole, self.config.name)
        merged = without(whole, fields_not_to_store(directives))
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
            initial_age=corrected_initial_age(update, request_time, response_time),
            lifetime=freshness_lifetime(
                stored.status, merged, directives, use_expires, response_time
            ),
        )
        reason = policy.why_not_shared(request, stored.status, merged, directives, use_expires)
        if reason is None:
            self.cache.replace(stored, fresh)
        else:
            if self.config.verbose:
                print(f"  dropped after revalidation: {reason}", flush=True)
            self.cache.discard(stored)
        return dataclasses.replace(fresh, headers=whole), reason is None

    def remember_shareable(self, target: str, shareable: bool) -> None:
        """Note whether the origin's latest answer for `target` could serve other requests."""
        if shareable:
            self.unshareable.pop(target, None)
            return
        self.unshareable[target] = self.clock() + UNSHAREABLE_MEMORY_SECONDS
        self.unshareable.move_to_end(target)
        if len(self.unshareable) > MEMORY_SIZE:
            self.unshareable.popitem(last=False)

    def known_unshareable(self, target: str) -> bool:
        return self.unshareable.get(target, 0.0) > self.clock()

    def purge(self, request: Request, target: str) -> Answer:
        """`PURGE /path` with the right `X-Purge-Token` drops every stored variant of /path."""
        token = self.config.purge_token
        given = request.header("x-purge-token") or ""
        if not token:
            return error_answer(403, "purging is disabled: start the edge with --purge-token")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return error_answer(403, "PURGE needs the right X-Purge-Token header")
        removed = self.cache.invalidate(target, self.clock())
        body = json.dumps({"purged": target, "entries": removed}).encode()
        return Answer(200, "OK", [("Content-Type", "application/json")], body)

    # --- answers ------------------------------------------------------------------------

    def from_entry(
        self, entry: CacheEntry, request: Request, label: str, age: float | None = None
    ) -> Answer:
        """A stored response as this client receives it: current Age, a 304 if the
        client's own conditional matches (RFC 9111 4.3.2), a range if it asked for one."""
        age = entry.age(self.clock()) if age is None else age
        age_field = ("Age", str(int(age)))
        ok = entry.status == 200
        names = request.names
        if (
            ok
            and ("if-none-match" in names or "if-modified-since" in names)
            and policy.not_modified(request.headers, entry.headers, entry.response_time)
        ):
            headers = policy.not_modified_headers([*entry.headers, age_field])
            return Answer(304, "Not Modified", headers, label=label)
        if request.method == "HEAD":
            length = ("Content-Length", str(len(entry.body)))
            return Answer(
                entry.status, entry.reason, [*entry.headers, age_field, length], label=label
            )
        if not (ok and "range" in names):  # the common case: the stored head as it is, plus Age
            return Answer(
                entry.status,
                entry.reason,
                [age_field],
                entry.body,
                label=label,
                stored_head=entry.wire_head,
            )
        headers = [*entry.headers, age_field]
        answer = Answer(entry.status, entry.reason, headers, entry.body, label=label)
        span = policy.byte_range(request.header("range"), len(entry.body))
        if span is not None:
            return self.cut(answer, span, len(entry.body))
        return answer

    def from_fill(
        self, fill: Fill, cursor: Cursor, request: Request, label: str, cut: bool
    ) -> Answer:
        """An origin response as it streams in; with `cut`, the edge answers the client's
        conditional and Range itself (they were not sent to the origin)."""
        headers = without(end_to_end(fill.headers), FRAMING)
        if has_no_body(fill.status, request.method):
            cursor.close()
            return Answer(fill.status, fill.reason, headers, label=label)
        answer = Answer(fill.status, fill.reason, headers, cursor=cursor, length=fill.length)
        answer.label = label
        if cut and fill.status == 200:
            if policy.not_modified(request.headers, headers, self.clock()):
                cursor.close()
                headers = policy.not_modified_headers(headers)
                return Answer(304, "Not Modified", headers, label=label)
            if fill.length is not None:
                span = policy.byte_range(request.header("range"), fill.length)
                if span is not None:
                    return self.cut(answer, span, fill.length)
        return answer

    @staticmethod
    def cut(answer: Answer, span: tuple[int, int], length: int) -> Answer:
        """The part of a 200 answer that a single byte range asks for: 206, or 416."""
        if span == policy.UNSATISFIABLE:
            if answer.cursor is not None:
                answer.cursor.close()
            refused = error_answer(416, f"range not satisfiable: {length} bytes")
            refused.headers.append(("Content-Range", f"bytes */{length}"))
            refused.label = answer.label
            return refused
        first, last = span
        answer.status, answer.reason = 206, "Partial Content"
        answer.headers.append(("Content-Range", f"bytes {first}-{last}/{length}"))
        if answer.cursor is not None:
            answer.cursor.limit(first, last)
            answer.length = last - first + 1
        else:
            answer.body = memoryview(answer.body)[first : last + 1]
        return answer

    def not_in_cache(self) -> Answer:
        """`only-if-cached` and nothing stored may answer: 504, without asking the origin."""
        answer = error_answer(504, "only-if-cached, and no usable stored response")
        answer.label = "MISS"
        return answer

    def origin_failed(self, exc: OriginError, plan: Plan) -> Answer:
        """The origin is down or slow: a stale copy if allowed, else a clear 502/504."""
        stored = plan.stored
        if stored is not None and policy.stale_if_error_allows(
            stored.staleness(self.clock()), stored.directives, plan.request_cc
        ):
            return self.from_entry(stored, plan.request, "STALE")
        if exc.timed_out:
            answer = error_answer(504, f"origin timed out: {exc}")
        elif stored is not None:
            answer = error_answer(
                504, f"cannot revalidate the stored copy and may not serve it stale: {exc}"
            )
        else:
            answer = error_answer(502, f"the origin failed: {exc}")
        answer.label = "MISS"
        return answer

    def snapshot(self) -> dict[str, object]:
        stats, outcomes = self.stats, self.stats.outcomes
        served = sum(outcomes.values())
        from_cache = outcomes["HIT"] + outcomes["STALE"]
        return {
            "requests": served + stats.other_methods,
            "hits": outcomes["HIT"],
            "stale": outcomes["STALE"],
            "revalidations": outcomes["REVALIDATED"],
            "misses": outcomes["MISS"],
            "other_methods": stats.other_methods,
            "hit_ratio": round(from_cache / served, 4) if served else 0.0,
            "coalesced": stats.coalesced,
            "origin_requests": stats.origin_requests,
            "origin_errors": stats.origin_errors,
            "bytes_from_cache": stats.bytes_from_cache,
            "not_stored_too_large": stats.not_stored_too_large,
            "slow_clients_dropped": stats.slow_clients_dropped,
            "origin_fetches_running": len(self.fetching),
            "inflight_bytes": self.budget.held,
            "inflight_peak": self.budget.peak,
            "inflight_limit": self.budget.limit,
            "entries": len(self.cache),
            "bytes": self.cache.bytes,
            "capacity": self.cache.capacity,
            "evictions": self.cache.evictions,
        }
