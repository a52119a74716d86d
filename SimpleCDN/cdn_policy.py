"""The edge's caching policy, top to bottom: refused, passed, looked up, stored or served stale.

Read it like Varnish's `builtin.vcl`: every decision the edge makes about a
request or a response is one small function here, in the order a request
meets them. Nothing in this file does I/O or reads a clock (the time is
passed in), so each rule can be read and tested on its own; the freshness
arithmetic of RFC 9111 lives in `cdn_freshness.py`, and the plumbing that
carries these decisions out (sockets, coalescing, streaming) in `cdn_proxy.py`.

  recv            the request arrives: refuse, purge, stats, pass, or look it up
  assess          a stored copy was found: fresh, stale-but-allowed, or validate
  origin_headers  what the edge asks the origin (Range and conditionals removed)
  why_not_shared  the origin answered: may other clients be given this answer?
  deliver         a stored copy becomes this client's answer (Age, 304, Range)

README sections: "How a request flows through the edge" and those after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from cdn_freshness import (
    Directives,
    always_revalidate,
    delta_seconds,
    fields_not_to_store,
    must_revalidate_when_stale,
    parse_http_date,
    why_not_storable,
)
from cdn_http import (
    FRAMING,
    Headers,
    Request,
    end_to_end,
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
BYPASS_FIELDS = frozenset({"if-range", "if-match", "if-unmodified-since"})
# The client's own conditionals: never sent to the origin on a fetch the
# cache shares; the cache answers them itself from the full response.
CLIENT_CONDITIONALS = frozenset({"if-none-match", "if-modified-since"})
# Fields a 304 must carry when the 200 would have (RFC 9110 15.4.5).
NOT_MODIFIED_FIELDS = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "vary"}
)
# One range (a list of ranges is ignored); the unit's name ignores case (RFC 9110 14.1).
BYTE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$", re.IGNORECASE)
ENTITY_TAG = re.compile(r'(?:W/)?"[^"]*"')

# Verdicts on a stored response for one request (see assess).
FRESH, STALE_ALLOWED, STALE_WHILE_REVALIDATE, VALIDATE = "fresh", "stale", "swr", "validate"


# --- recv: the request arrives -------------------------------------------------


@dataclass
class Route:
    """What recv decided: `action` is one of refuse, purge, stats, lookup, pass, forward."""

    action: str
    target: str = ""  # the origin-form path and query the origin is asked for
    status: int = 0  # for refuse: what to answer
    message: str = ""


def recv(
    request: Request,
    request_cc: Directives,
    edge_name: str,
    origin_authority: str,
    same_site: set[tuple[str, int]],
) -> Route:
    """The first decision about a request, before the cache is consulted."""
    if "via" in request.names and came_through(request, edge_name):
        return Route("refuse", status=508, message="request loop: it already came via this edge")
    target, refusal = origin_form(request, origin_authority, same_site)
    if refusal:
        return refusal
    if request.method == "PURGE":
        return Route("purge", target)
    if request.method not in ("GET", "HEAD"):
        return Route("forward", target)  # any other method, unknown ones too, goes as it is
    if target == STATS_PATH:
        return Route("stats", target)
    if "no-store" in request_cc or not request.names.isdisjoint(BYPASS_FIELDS):
        # The cache may not store the answer (no-store), or the request has
        # preconditions only the origin can evaluate (If-Match, If-Range...).
        return Route("pass", target)
    return Route("lookup", target)


def came_through(request: Request, edge_name: str) -> bool:
    """Loop detection: does a `Via` entry name this edge (received-by = our name)?"""
    for hop in split_list(request.header("via")):
        parts = hop.split()
        if len(parts) >= 2 and parts[1] == edge_name:
            return True
    return False


def origin_form(
    request: Request, origin_authority: str, same_site: set[tuple[str, int]]
) -> tuple[str, Route | None]:
    """The path-and-query to ask the origin for; refuse to be an open proxy.

    A request in absolute form (`GET http://other.example/ HTTP/1.1`) is what
    a forward proxy receives; this edge fronts one origin, so any other host
    is refused rather than fetched (RFC 9112 3.2.2).
    """
    target = request.target
    if target.startswith("/") or (target == "*" and request.method == "OPTIONS"):
        return target, None
    if request.method == "CONNECT":
        return "", Route("refuse", status=403, message="not a forward proxy: CONNECT is refused")
    parts = urlsplit(target)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        return "", Route("refuse", status=400, message=f"bad port in {target[:60]!r}")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "", Route("refuse", status=400, message=f"cannot understand {target[:60]!r}")
    if (parts.hostname.lower(), port) not in same_site:
        message = f"not an open proxy: this edge serves {origin_authority} only"
        return "", Route("refuse", status=403, message=message)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), None


# --- assess: a stored copy was found -------------------------------------------


def assess(age: float, lifetime: float, stored: Directives, request_cc: Directives) -> str:
    """May a stored response this old answer this request, and how (RFC 9111 4.2, 5.2)?"""
    if always_revalidate(stored):
        return VALIDATE
    if request_cc:  # (most requests carry no Cache-Control)
        if "no-cache" in request_cc:
            return VALIDATE
        max_age = delta_seconds(request_cc.get("max-age"))
        if max_age is not None and age > max_age:
            return VALIDATE
        min_fresh = delta_seconds(request_cc.get("min-fresh"))
        if min_fresh is not None and lifetime - age < min_fresh:
            return VALIDATE
    if lifetime > age:
        return FRESH
    if must_revalidate_when_stale(stored):
        return VALIDATE  # must-revalidate, proxy-revalidate, s-maxage: never stale
    staleness = age - lifetime
    if max_stale_allows(request_cc, staleness):
        return STALE_ALLOWED
    window = delta_seconds(stored.get("stale-while-revalidate"))
    if window is not None and staleness <= window:
        return STALE_WHILE_REVALIDATE
    return VALIDATE


def stale_if_error_allows(staleness: float, stored: Directives, request_cc: Directives) -> bool:
    """May a copy this stale stand in for an origin that failed (RFC 5861 4)?

    The same permission lets it answer at once while another request is
    already asking the origin about it ("serve stale while updating").
    """
    if always_revalidate(stored) or must_revalidate_when_stale(stored):
        return False
    for directives in (stored, request_cc):
        window = delta_seconds(directives.get("stale-if-error"))
        if window is not None and staleness <= window:
            return True
    return max_stale_allows(request_cc, staleness)


def max_stale_allows(request_cc: Directives, staleness: float) -> bool:
    """Did the client accept a copy this stale (`max-stale`, or `max-stale=N`)?"""
    if "max-stale" not in request_cc:
        return False
    limit = request_cc["max-stale"]
    allowed = float("inf") if limit is None else delta_seconds(limit)
    return allowed is not None and staleness <= allowed


# --- origin_headers: what the edge asks the origin ---------------------------------


def origin_headers(
    request: Request,
    client_address: str,
    edge_name: str,
    origin_authority: str,
    shared: bool,
    validators: Headers = (),
) -> Headers:
    """The client's end-to-end fields for the origin, adjusted for this hop.

    A fetch whose answer is `shared` (stored, or given to coalesced waiters)
    asks for the whole representation: `Range` and the client's own
    conditionals are removed, so a video seek or a browser's revalidation of
    a cold URL fills the cache as nginx and Varnish do; the edge then cuts
    the range, or answers the 304, itself. `validators` are the edge's own
    (If-None-Match for the copy it holds). `X-Forwarded-For` gains the
    client's address; `Via` and `Surrogate-Capability` name this edge.
    """
    dropped = {"host", "expect", "x-forwarded-for"} | FRAMING
    if shared:
        dropped |= {"range"} | CLIENT_CONDITIONALS
    forwarded = get_combined(request.headers, "x-forwarded-for")
    version = f"{request.version[0]}.{request.version[1]}"
    return (
        [("Host", origin_authority)]
        + without(end_to_end(request.headers), dropped)
        + list(validators)
        + [("X-Forwarded-For", f"{forwarded}, {client_address}" if forwarded else client_address)]
        + [("Via", f"{version} {edge_name} (SimpleCDN)")]
        + [("Surrogate-Capability", f'{edge_name}="Surrogate/1.0"')]
    )


def validators_for(stored_headers: Headers) -> Headers:
    """The conditional fields that ask the origin whether our stored copy is still current."""
    asked: Headers = []
    if etag := get_first(stored_headers, "etag"):
        asked.append(("If-None-Match", etag))
    if modified := get_first(stored_headers, "last-modified"):
        asked.append(("If-Modified-Since", modified))
    return asked


# --- why_not_shared: the origin answered ------------------------------------------------


def why_not_shared(
    request: Request, status: int, headers: Headers, directives: Directives, use_expires: bool
) -> str | None:
    """None if this answer may be stored and given to other clients; else why not.

    RFC 9111 section 3 first. Then this edge's own rule, stricter than the
    RFC and the same as Varnish's built-in policy and nginx's default: an
    answer that sets a cookie is personal (`Set-Cookie: session=...`) and
    is never shared, unless the origin says which part is personal with
    `Cache-Control: no-cache="Set-Cookie"` (or `private="Set-Cookie"`): then
    the page is stored without the cookie, and only the first client gets it.
    """
    reason = why_not_storable("GET", request.headers, status, headers, directives, use_expires)
    if reason is not None:
        return reason
    if get_all(headers, "set-cookie") and "set-cookie" not in fields_not_to_store(directives):
        return 'it sets a cookie (mark it no-cache="Set-Cookie" to share it without the cookie)'
    return None


def validators_agree(stored: Headers, stored_length: int, fresh: Headers, head: bool) -> bool:
    """Does a 304 (or a HEAD's 200) describe the stored representation (RFC 9111 4.3.4)?"""
    etag = get_first(fresh, "etag")
    if etag is not None and etag != get_first(stored, "etag"):
        return False
    modified = get_first(fresh, "last-modified")
    if etag is None and modified is not None and modified != get_first(stored, "last-modified"):
        return False
    length = get_first(fresh, "content-length")
    return not (head and length is not None and length.strip() != str(stored_length))


def merge_update(stored: Headers, update: Headers) -> Headers:
    """A stored response's fields after a 304: each field the 304 carries replaces ours."""
    update = without(end_to_end(update), FRAMING | {"age"})
    replaced = {name.lower() for name, _ in update}
    return [(k, v) for k, v in stored if k.lower() not in replaced] + update


# --- deliver: a stored copy becomes this client's answer ------------------------------


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
    since = parse_http_date(get_first(request_headers, "if-modified-since"), received)
    if since is None:
        return False
    modified = parse_http_date(get_first(response_headers, "last-modified"), received)
    if modified is None:
        modified = parse_http_date(get_first(response_headers, "date"), received) or received
    return modified <= since


def not_modified_headers(headers: Headers) -> Headers:
    """The fields a 304 carries: those RFC 9110 15.4.5 asks for, plus Age and Last-Modified."""
    kept = [(k, v) for k, v in headers if k.lower() in NOT_MODIFIED_FIELDS | {"age"}]
    if not get_all(headers, "etag") and (modified := get_first(headers, "last-modified")):
        kept.append(("Last-Modified", modified))
    return kept


UNSATISFIABLE = (-1, -1)


def byte_range(value: str | None, length: int) -> tuple[int, int] | None:
    """First and last byte of a single `bytes=` range (RFC 9110 14.1.2).

    None means "not a single byte range: ignore it and send everything"
    (RFC 9110 14.2 allows that); UNSATISFIABLE means only bytes past the end.
    """
    match = BYTE_RANGE.match((value or "").replace(" ", ""))
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
