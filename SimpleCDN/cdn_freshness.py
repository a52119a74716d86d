"""The rules of RFC 9111 as pure functions: may it be stored, for how long, how old is it.

Nothing here does I/O or reads a clock: every function is handed the headers
and the times it needs, so each rule can be read (and tested) on its own.
The edge (`cdn_server.py`) calls these; the cache (`cdn_cache.py`) stores
their results.

README sections: "Freshness", "Validation", "Age" and "What a shared cache must not store".
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime
from email.utils import formatdate

from cdn_http import Headers, get_all, get_combined, get_first, split_list

# delta-seconds beyond what a cache can count are treated as this (RFC 9111 1.2.2)
DELTA_SECONDS_MAX = 2**31
# Heuristic freshness (RFC 9111 4.2.2): a fraction of the time since the
# resource last changed, as the RFC suggests, capped so a page unchanged for
# years is not then trusted for months.
HEURISTIC_FRACTION = 0.10
HEURISTIC_MAX_SECONDS = 24 * 3600

# Status codes a cache may store without explicit freshness (RFC 9110 15.1).
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# Codes whose meaning this cache understands, for `must-understand` (RFC 9111 5.2.2.3).
UNDERSTOOD_STATUSES = HEURISTICALLY_CACHEABLE | {302, 303, 307, 400, 403, 500, 502, 503, 504}

Directives = dict[str, object]  # name (lower case) -> None (bare), str, or int


# --- Cache-Control ----------------------------------------------------------


def _split_members(value: str) -> list[str]:
    """Split on commas that are not inside a quoted string."""
    members, current, quoted, escaped = [], [], False, False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            members.append("".join(current))
            current = []
            continue
        current.append(ch)
    members.append("".join(current))
    return members


TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
QUOTED = re.compile(r'^"((?:[^"\\]|\\.)*)"$')


def parse_cache_control(headers: Headers, name: str = "cache-control") -> Directives:
    """Cache-Control directives from every line of the field (RFC 9111 5.2).

    Names are case-insensitive; a value is a token or a quoted string
    (`max-age="60"` is 60). A member that is not well formed (`max-age =60`,
    `max-age= 60`, `max-age='60'`) is ignored rather than guessed at. When a
    directive repeats, the first one counts (RFC 9111 4.2.1 allows that).
    """
    directives: Directives = {}
    for line in get_all(headers, name):
        for member in _split_members(line):
            member = member.strip(" \t")
            if not member:
                continue
            key, equals, raw = member.partition("=")
            if not TOKEN.match(key):
                continue
            value: object = None
            if equals:
                quoted = QUOTED.match(raw)
                if quoted:
                    value = re.sub(r"\\(.)", r"\1", quoted.group(1))
                elif TOKEN.match(raw):
                    value = raw
                else:
                    continue
            directives.setdefault(key.lower(), value)
    return directives


def delta_seconds(value: object) -> int | None:
    """A directive's delta-seconds value, or None when it is missing or invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return min(value, DELTA_SECONDS_MAX) if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return min(int(value), DELTA_SECONDS_MAX)
    return None


def field_names(value: object) -> set[str]:
    """The field names listed by a qualified `no-cache="a, b"` or `private="a"`."""
    return {name.lower() for name in split_list(value)} if isinstance(value, str) else set()


# --- CDN-Cache-Control (RFC 9213) ---------------------------------------------

SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
SF_INTEGER = re.compile(r"-?[0-9]{1,15}(?![0-9.])")
SF_DECIMAL = re.compile(r"-?[0-9]{1,12}\.[0-9]{1,3}(?![0-9])")
SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
SF_BYTES = re.compile(r":[A-Za-z0-9+/=]*:")
SF_BOOLEAN = re.compile(r"\?[01]")


class WrongType:
    """A Structured Field value of a type the directive cannot use (e.g. a string max-age)."""


def _sf_bare_item(text: str, pos: int) -> tuple[object, int]:
    for pattern, convert in (
        (SF_DECIMAL, lambda m: WrongType()),
        (SF_INTEGER, lambda m: int(m.group(0))),
        (SF_STRING, lambda m: WrongType()),
        (SF_TOKEN, lambda m: WrongType()),
        (SF_BYTES, lambda m: WrongType()),
        (SF_BOOLEAN, lambda m: None if m.group(0) == "?1" else False),
    ):
        match = pattern.match(text, pos)
        if match:
            return convert(match), match.end()
    raise ValueError(f"no Structured Field item at {text[pos : pos + 10]!r}")


def _sf_parameters(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] == ";":
        pos += 1
        while pos < len(text) and text[pos] == " ":
            pos += 1
        key = SF_KEY.match(text, pos)
        if not key:
            raise ValueError("bad parameter key")
        pos = key.end()
        if pos < len(text) and text[pos] == "=":
            _, pos = _sf_bare_item(text, pos + 1)
    return pos


def parse_structured_dictionary(value: str) -> Directives:
    """An RFC 8941 Dictionary, as RFC 9213 requires for CDN-Cache-Control.

    Raises ValueError if the field is not a valid dictionary; the caller then
    ignores the whole field, as RFC 9213 2.1 says.
    """
    result: Directives = {}
    text, pos = value.strip(" "), 0
    while pos < len(text):
        key = SF_KEY.match(text, pos)
        if not key:
            raise ValueError(f"bad dictionary key at {text[pos : pos + 10]!r}")
        pos = key.end()
        item: object = None  # a bare key means boolean true
        if pos < len(text) and text[pos] == "=":
            if text[pos + 1 : pos + 2] == "(":  # inner list: well formed, but of no use here
                close = text.find(")", pos)
                if close < 0:
                    raise ValueError("unterminated inner list")
                item, pos = WrongType(), close + 1
            else:
                item, pos = _sf_bare_item(text, pos + 1)
        pos = _sf_parameters(text, pos)
        result[key.group(0)] = item  # later duplicates win, as in RFC 8941
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos == len(text):
            break
        if text[pos] != ",":
            raise ValueError(f"expected ',' at {text[pos : pos + 10]!r}")
        pos += 1
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos == len(text):
            raise ValueError("trailing comma")
    return {k: v for k, v in result.items() if v is not False}


def surrogate_directives(headers: Headers, device: str) -> Directives:
    """`Surrogate-Control` directives meant for this edge (W3C Edge Architecture 1.0).

    A directive may name its target (`max-age=60;eu-west`); only untargeted
    ones and those naming `device` (what the edge sends in
    `Surrogate-Capability`) apply here.
    """
    value = get_combined(headers, "surrogate-control")
    if value is None:
        return {}
    kept = []
    for member in _split_members(value):
        directive, _, target = member.partition(";")
        if not target.strip() or target.strip() == device:
            kept.append(directive)
    return parse_cache_control([("Surrogate-Control", ", ".join(kept))], "surrogate-control")


def response_directives(headers: Headers, device: str = "") -> tuple[Directives, bool]:
    """The directives this shared cache obeys, and whether `Expires` still counts.

    Origins can tell a CDN something different from browsers. A valid
    `CDN-Cache-Control` (RFC 9213), or else `Surrogate-Control` directives
    aimed at this edge, replace both `Cache-Control` and `Expires` for the
    edge, while browsers downstream still obey `Cache-Control`. An invalid
    `CDN-Cache-Control` is ignored as if absent.
    """
    targeted = get_combined(headers, "cdn-cache-control")
    if targeted is not None:
        try:
            return parse_structured_dictionary(targeted), False
        except ValueError:
            pass
    surrogate = surrogate_directives(headers, device)
    if surrogate:
        return surrogate, False
    return parse_cache_control(headers), True


# --- dates (RFC 9110 5.6.7) ---------------------------------------------------

MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
IMF_FIXDATE = re.compile(
    r"^(?:mon|tue|wed|thu|fri|sat|sun), (\d{2}) ([a-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) gmt$"
)
RFC850_DATE = re.compile(
    r"^(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday), "
    r"(\d{2})-([a-z]{3})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) gmt$"
)
ASCTIME_DATE = re.compile(
    r"^(?:mon|tue|wed|thu|fri|sat|sun) ([a-z]{3}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})$"
)


def parse_http_date(value: str | None, now: float) -> float | None:
    """Seconds since the epoch for an HTTP-date, or None if it is not one.

    All three formats a recipient must accept; names in any letter case
    (servers do send `THU` and `gMT`); anything else (`UTC`, two-digit years
    in the modern format, missing comma, dashes) is invalid rather than guessed.
    `now` places the two-digit years of the obsolete RFC 850 format in a century.
    """
    if value is None:
        return None
    text = value.strip().lower()
    if match := IMF_FIXDATE.match(text):
        day, month, year, hh, mm, ss = match.groups()
    elif match := RFC850_DATE.match(text):
        day, month, yy, hh, mm, ss = match.groups()
        # a two-digit year more than 50 years ahead is the century before (RFC 9110 5.6.7)
        this_year = datetime.fromtimestamp(now, UTC).year
        year = str(this_year // 100 * 100 + int(yy))
        if int(year) > this_year + 50:
            year = str(int(year) - 100)
    elif match := ASCTIME_DATE.match(text):
        month, day, hh, mm, ss, year = match.groups()
    else:
        return None
    if month not in MONTHS:
        return None
    try:
        moment = datetime(int(year), MONTHS[month], int(day), int(hh), int(mm), int(ss))
    except ValueError:
        return None
    return float(calendar.timegm(moment.timetuple()))


def format_http_date(timestamp: float) -> str:
    """An IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`."""
    return formatdate(timestamp, usegmt=True)


# --- freshness and age (RFC 9111 4.2) ----------------------------------------


def freshness_lifetime(
    status: int,
    headers: Headers,
    directives: Directives,
    use_expires: bool,
    response_time: float,
) -> float:
    """How long a stored response stays fresh, as a shared cache computes it.

    In order of precedence: `s-maxage` (shared caches only), `max-age`,
    `Expires - Date`, and only then a heuristic (10% of the time since
    `Last-Modified`) for statuses that allow one. A present but invalid
    value means "already stale", never "use the next rule".
    """
    for name in ("s-maxage", "max-age"):
        if name in directives:
            return float(delta_seconds(directives[name]) or 0)
    date = parse_http_date(get_first(headers, "date"), response_time) or response_time
    expires_values = get_all(headers, "expires")
    if use_expires and expires_values:
        expires = parse_http_date(expires_values[0], response_time)
        return max(0.0, expires - date) if expires is not None else 0.0
    if status in HEURISTICALLY_CACHEABLE or "public" in directives:
        last_modified = parse_http_date(get_first(headers, "last-modified"), response_time)
        if last_modified is not None and last_modified < date:
            return min((date - last_modified) * HEURISTIC_FRACTION, HEURISTIC_MAX_SECONDS)
    return 0.0


def age_value(headers: Headers) -> int:
    """The `Age` the response arrived with; the first member of a list, 0 if invalid."""
    members = split_list(get_combined(headers, "age"))
    if members and members[0].isascii() and members[0].isdigit():
        return min(int(members[0]), DELTA_SECONDS_MAX)
    return 0


def corrected_initial_age(headers: Headers, request_time: float, response_time: float) -> float:
    """How old the response already was when it arrived (RFC 9111 4.2.3).

    The larger of two estimates: what the clocks say (`response_time - Date`,
    never negative) and what the caches upstream said (`Age`) plus the time
    the request spent in flight, which errs on the side of "older".
    """
    date = parse_http_date(get_first(headers, "date"), response_time)
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = response_time - request_time
    return max(apparent_age, age_value(headers) + response_delay)


def current_age(initial_age: float, response_time: float, now: float) -> float:
    """Initial age plus the time the response has been resident in this cache."""
    return initial_age + max(0.0, now - response_time)


def must_revalidate_when_stale(directives: Directives) -> bool:
    """A stale copy may never be served without asking the origin (RFC 9111 5.2.2)."""
    return any(d in directives for d in ("must-revalidate", "proxy-revalidate", "s-maxage"))


def always_revalidate(directives: Directives) -> bool:
    """Unqualified `no-cache`: store it, but check with the origin before every use."""
    return "no-cache" in directives and not field_names(directives["no-cache"])


# --- what a shared cache may store (RFC 9111 3) ---------------------------------


def why_not_storable(
    request_method: str,
    request_headers: Headers,
    status: int,
    response_headers: Headers,
    directives: Directives,
    use_expires: bool,
) -> str | None:
    """None if a shared cache may store this response, else the reason it may not."""
    if request_method != "GET":
        return f"{request_method} responses are not stored"
    if status in (206, 304) or status < 200:
        return f"a {status} is not a complete response"
    request_cc = parse_cache_control(request_headers)
    if "no-store" in request_cc:
        return "the request said Cache-Control: no-store"
    must_understand = "must-understand" in directives
    if must_understand and status not in UNDERSTOOD_STATUSES:
        return f"must-understand and status {status} is not understood"
    if "no-store" in directives and not must_understand:
        return "Cache-Control: no-store"
    if "private" in directives and not field_names(directives["private"]):
        return "Cache-Control: private (a shared cache must not store it)"
    if get_all(request_headers, "authorization") and not any(
        d in directives for d in ("public", "s-maxage", "must-revalidate")
    ):
        return "the request carried Authorization and the response is not marked public"
    if "*" in split_list(get_combined(response_headers, "vary")):
        return "Vary: * never matches a later request"
    explicit = (
        "public" in directives
        or "max-age" in directives
        or "s-maxage" in directives
        or (use_expires and bool(get_all(response_headers, "expires")))
    )
    if not explicit and status not in HEURISTICALLY_CACHEABLE:
        return f"no explicit freshness and {status} is not heuristically cacheable"
    return None


def fields_not_to_store(directives: Directives) -> set[str]:
    """Fields a qualified `no-cache="..."` or `private="..."` keeps out of the cache."""
    return field_names(directives.get("no-cache")) | field_names(directives.get("private"))
