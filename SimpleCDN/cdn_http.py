"""HTTP/1.1 messages for the edge: header lists, requests, limits, and writing a message head.

Parsing is not done here: httptools (llhttp, the parser in Node.js) reads
both the clients' requests and the origin's responses, and refuses what
RFC 9112 forbids (obsolete line folding, a space before a colon, both
Content-Length and Transfer-Encoding, control characters). What stays the
edge's own:

- headers stay a list of (name, value) pairs in the order they arrived, so
  `Set-Cookie` twice stays twice and nothing is reordered;
- every limit is a named constant and every violation is an `HttpError`
  carrying the status to answer with (400, 408, 413, 414, 431, 501, 505).

README sections: "How a request flows through the edge" and "Staying up" (limits, timeouts).
"""

from __future__ import annotations

from dataclasses import dataclass

Headers = list[tuple[str, str]]  # in arrival order; names keep their case

# Limits on what a client may send (RFC 9112 leaves them to the server).
MAX_REQUEST_LINE = 8 * 1024  # longer -> 414 URI Too Long
MAX_HEADER_BYTES = 32 * 1024  # all header lines together; more -> 431
MAX_HEADER_COUNT = 100  # more lines than this -> 431
MAX_REQUEST_BODY = 16 * 1024 * 1024  # larger -> 413 Content Too Large (before 100 Continue)

# Hop-by-hop fields describe one connection, not the message: a proxy never
# forwards them (RFC 9110 section 7.6.1), nor any field that Connection names.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The framing fields are recomputed for every message the edge writes.
FRAMING = frozenset({"content-length", "transfer-encoding"})

REASONS = {
    100: "Continue",
    200: "OK",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
    508: "Loop Detected",
}


class HttpError(Exception):
    """A request the edge refuses; `status` is what the client is answered with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {REASONS.get(status, '')}: {message}")
        self.status = status
        self.message = message


class OriginError(Exception):
    """The origin could not be asked or did not answer properly.

    `timed_out` tells a slow origin (answer 504) from a broken one (502).
    """

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


# --- header lists -------------------------------------------------------------


def get_all(headers: Headers, name: str) -> list[str]:
    """Every value of `name`, in order (names compare case-insensitively)."""
    name = name.lower()
    return [value for key, value in headers if key.lower() == name]


def get_combined(headers: Headers, name: str) -> str | None:
    """All lines of `name` joined with ", " (RFC 9110 5.3), or None if absent."""
    values = get_all(headers, name)
    return ", ".join(values) if values else None


def get_first(headers: Headers, name: str) -> str | None:
    values = get_all(headers, name)
    return values[0] if values else None


def without(headers: Headers, names: set[str] | frozenset[str]) -> Headers:
    """`headers` minus every field whose lower-cased name is in `names`."""
    return [(key, value) for key, value in headers if key.lower() not in names]


def split_list(value: str | None) -> list[str]:
    """A comma-separated field value as its members, blanks dropped."""
    if not value:
        return []
    return [member.strip() for member in value.split(",") if member.strip()]


def end_to_end(headers: Headers) -> Headers:
    """Drop hop-by-hop fields, `Proxy-*` fields and any field `Connection` names."""
    named = {name.lower() for name in split_list(get_combined(headers, "connection"))}
    return [
        (key, value)
        for key, value in headers
        if key.lower() not in HOP_BY_HOP
        and key.lower() not in named
        and not key.lower().startswith("proxy-")
    ]


# --- messages -----------------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str  # as sent: origin-form "/a?b", absolute-form "http://h/a", or "*"
    version: tuple[int, int]
    headers: Headers
    body: bytes = b""

    def __post_init__(self) -> None:
        # Which fields are present, lower-cased: most rules ask about a field
        # the request does not carry, and this answers that without a scan.
        self.names = frozenset([name.lower() for name, _ in self.headers])

    def has(self, name: str) -> bool:
        """Does the request carry field `name` (lower case)?"""
        return name in self.names

    def header(self, name: str) -> str | None:
        """All lines of field `name` (lower case) joined, or None."""
        return get_combined(self.headers, name) if name in self.names else None

    @property
    def keep_alive(self) -> bool:
        if "connection" not in self.names:
            return self.version >= (1, 1)
        tokens = {t.lower() for t in split_list(self.header("connection"))}
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens


def has_no_body(status: int, request_method: str) -> bool:
    """Responses that never carry content (RFC 9112 section 6.3)."""
    return request_method == "HEAD" or status in (204, 304) or 100 <= status < 200


# --- writing ------------------------------------------------------------------


def serialize_head(start_line: str, headers: Headers) -> bytes:
    """A message head as sent: the start line, then `Name: value` lines, then a blank line.

    Every value here was parsed by httptools (which refuses CR, LF and NUL
    in a field) or made by the edge, so none can split a message in two.
    """
    return start_line.encode("latin-1") + b"\r\n" + serialize_fields(headers) + b"\r\n"


def serialize_fields(headers: Headers) -> bytes:
    """`Name: value` lines, each ending in CRLF."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers])
    return lines.encode("latin-1", errors="replace")
