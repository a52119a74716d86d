"""HTTP/1.1 on the wire for the edge: read requests, write responses, ask the origin.

The standard library's `http.server` and `http.client` hide exactly what a
caching proxy has to control: they merge or drop repeated header lines, cannot
relay interim (1xx) responses, dispatch methods they do not know to an error,
and have no deadline for a client that sends its headers one byte a minute.
So the edge speaks HTTP/1.1 itself (RFC 9112), with these rules:

- headers stay a list of (name, value) pairs in the order they arrived, so
  `Set-Cookie` twice stays twice and nothing is reordered;
- every limit is a named constant and every violation is an `HttpError`
  carrying the status to answer with (400, 408, 413, 414, 431, 501, 505);
- every read has a deadline, so one slow client only ever costs its own thread.

README sections: "How a request flows through the edge" and "Staying up" (limits, timeouts).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

Headers = list[tuple[str, str]]  # in arrival order; names keep their case

# Limits on what a client may send (RFC 9112 leaves them to the server).
MAX_REQUEST_LINE = 8 * 1024  # longer -> 414 URI Too Long
MAX_FIELD_LINE = 8 * 1024  # one header line; longer -> 431
MAX_HEADER_BYTES = 32 * 1024  # all header lines together; more -> 431
MAX_HEADER_COUNT = 100  # more lines than this -> 431
MAX_REQUEST_BODY = 16 * 1024 * 1024  # larger -> 413 Content Too Large
MAX_RESPONSE_BODY = 256 * 1024 * 1024  # an origin answer larger than this is refused (502)
BODY_TIME_FACTOR = 10  # an origin gets 10x --origin-timeout to finish sending a body

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

TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
VERSION = re.compile(r"^HTTP/(\d)\.(\d)$")
STATUS_LINE = re.compile(r"^HTTP/(\d)\.(\d) (\d{3})(?: (.*))?$")

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


class ClientTimeout(Exception):
    """The client was too slow (or went quiet) and its deadline passed."""


class ClientClosed(Exception):
    """The client closed the connection in the middle of a message."""


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
    expects_continue: bool = False

    def header(self, name: str) -> str | None:
        return get_combined(self.headers, name)

    @property
    def keep_alive(self) -> bool:
        tokens = {t.lower() for t in split_list(self.header("connection"))}
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens


@dataclass
class Response:
    status: int
    reason: str
    headers: Headers
    body: bytes = b""
    version: tuple[int, int] = (1, 1)
    # What the edge notes about an answer; never sent as such.
    x_cache: str = ""  # HIT, MISS, REVALIDATED or STALE; "" for the edge's own pages
    send_body: bool = True  # False for the answer to a HEAD
    origin_failed: bool = False  # a 502/504 the edge made because the origin failed

    def header(self, name: str) -> str | None:
        return get_combined(self.headers, name)


def has_no_body(status: int, request_method: str) -> bool:
    """Responses that never carry content (RFC 9112 section 6.3)."""
    return request_method == "HEAD" or status in (204, 304) or 100 <= status < 200


# --- reading with deadlines ---------------------------------------------------


class Reader:
    """Buffered reads from a socket where every call has a deadline.

    A per-`recv` timeout alone would let a client trickle one byte every few
    seconds forever (slowloris); a deadline bounds the whole message.
    """

    def __init__(self, sock: socket.socket, chunk: int = 65536) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.chunk = chunk

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClientTimeout("deadline passed")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(self.chunk)
        except TimeoutError as exc:
            raise ClientTimeout("deadline passed") from exc
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ClientClosed("connection reset") from exc
        if not data:
            raise ClientClosed("peer closed the connection")
        self.buffer += data

    def wait_for_data(self, timeout: float) -> bool:
        """True once a byte is available; False if the peer closed or stayed idle."""
        if self.buffer:
            return True
        try:
            self._fill(time.monotonic() + timeout)
        except (ClientTimeout, ClientClosed):
            return False
        return True

    def readline(self, limit: int, deadline: float, too_long: HttpError) -> bytes:
        """One line without its CRLF (or bare LF); `too_long` past `limit` bytes."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                if end > limit:
                    raise too_long
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buffer) > limit:
                raise too_long
            self._fill(deadline)

    def read_exact(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            self._fill(deadline)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read_to_close(self, limit: int, deadline: float) -> bytes:
        while True:
            if len(self.buffer) > limit:
                raise OriginError(f"response body larger than {limit} bytes")
            try:
                self._fill(deadline)
            except ClientClosed:
                data = bytes(self.buffer)
                self.buffer.clear()
                return data


def _parse_field_lines(
    reader: Reader, deadline: float, max_line: int, max_bytes: int, max_count: int
) -> Headers:
    """Header lines up to the blank line, validated as RFC 9112 section 5 asks."""
    headers: Headers = []
    total = 0
    too_large = HttpError(431, "header fields too large")
    while True:
        line = reader.readline(max_line, deadline, too_large)
        if not line:
            return headers
        total += len(line) + 2
        if total > max_bytes or len(headers) >= max_count:
            raise too_large
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete line folding is not accepted")
        if b"\r" in line or b"\0" in line:
            raise HttpError(400, "control character in a header line")
        name, colon, value = line.partition(b":")
        text_name = name.decode("latin-1")
        if not colon or not TOKEN.match(text_name):
            # also catches "Name : value": whitespace before the colon is a
            # classic request-smuggling trick and must be rejected (RFC 9112 5.1)
            raise HttpError(400, f"malformed header line {line[:40]!r}")
        headers.append((text_name, value.decode("latin-1").strip(" \t")))


def _read_chunked(reader: Reader, deadline: float, limit: int, error: type) -> bytes:
    """A chunked body (RFC 9112 section 7.1), trailers read and dropped."""
    body = bytearray()
    while True:
        line = reader.readline(1024, deadline, error(400, "chunk size line too long"))
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size_text):
            raise error(400, f"bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        if len(body) + size > limit:
            raise error(413, f"body larger than {limit} bytes")
        body += reader.read_exact(size, deadline)
        if reader.readline(2, deadline, error(400, "chunk not followed by CRLF")) != b"":
            raise error(400, "chunk not followed by CRLF")
    _parse_field_lines(reader, deadline, MAX_FIELD_LINE, MAX_HEADER_BYTES, MAX_HEADER_COUNT)
    return bytes(body)


def _content_length(headers: Headers, error: type) -> int | None:
    values = {v.strip() for value in get_all(headers, "content-length") for v in value.split(",")}
    if not values:
        return None
    if len(values) > 1 or not all(v.isdigit() for v in values):
        raise error(400, f"invalid Content-Length {sorted(values)}")
    return int(values.pop())


def read_request_head(reader: Reader, idle_timeout: float, header_timeout: float) -> Request | None:
    """The next request's line and headers; None if the client left or idled out.

    The body is read separately (`read_request_body`) so the caller can send
    `100 Continue` first when the client asked for it.
    """
    if not reader.wait_for_data(idle_timeout):
        return None
    deadline = time.monotonic() + header_timeout
    line = b""
    for _ in range(3):  # RFC 9112 2.2: ignore a few empty lines before a request
        line = reader.readline(MAX_REQUEST_LINE, deadline, HttpError(414, "request line too long"))
        if line:
            break
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise HttpError(400, f"malformed request line {line[:60]!r}")
    method, target, version_text = (part.decode("latin-1") for part in parts)
    if not TOKEN.match(method):
        raise HttpError(400, f"invalid method {method[:20]!r}")
    version = VERSION.match(version_text)
    if not version:
        raise HttpError(400, f"invalid HTTP version {version_text[:20]!r}")
    if version.group(1) != "1":
        raise HttpError(505, f"{version_text} is not supported; speak HTTP/1.1")
    if any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in target):
        raise HttpError(400, "request target contains spaces or control characters")
    headers = _parse_field_lines(
        reader, deadline, MAX_FIELD_LINE, MAX_HEADER_BYTES, MAX_HEADER_COUNT
    )
    request = Request(method, target, (1, int(version.group(2))), headers)
    if request.version >= (1, 1) and len(get_all(headers, "host")) != 1:
        raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")
    expect = request.header("expect")
    if expect is not None:
        if expect.lower() != "100-continue":
            raise HttpError(417, f"cannot meet Expect: {expect}")
        request.expects_continue = True
    return request


def read_request_body(reader: Reader, request: Request, body_timeout: float) -> None:
    """Fill `request.body`, de-chunking; the edge always forwards a sized body."""
    deadline = time.monotonic() + body_timeout
    codings = split_list(request.header("transfer-encoding"))
    if codings:
        if get_all(request.headers, "content-length"):
            raise HttpError(400, "both Transfer-Encoding and Content-Length (request smuggling?)")
        if [c.lower() for c in codings] != ["chunked"]:
            raise HttpError(501, f"unsupported Transfer-Encoding {', '.join(codings)}")
        request.body = _read_chunked(reader, deadline, MAX_REQUEST_BODY, HttpError)
        return
    length = _content_length(request.headers, HttpError)
    if length:
        if length > MAX_REQUEST_BODY:
            raise HttpError(413, f"body of {length} bytes; the limit is {MAX_REQUEST_BODY}")
        request.body = reader.read_exact(length, deadline)


# --- writing ------------------------------------------------------------------


def serialize_head(start_line: str, headers: Headers) -> bytes:
    """A message head as sent: the start line, then `Name: value` lines, then a blank line.

    Every value here was parsed by httptools (which refuses CR, LF and NUL
    in a field) or made by the edge, so none can split a message in two.
    """
    lines = [start_line] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")


def serialize_response(
    status: int, reason: str, headers: Headers, body: bytes, *, send_body: bool = True
) -> bytes:
    """A whole response; Content-Length is added unless the status forbids content.

    For a HEAD answer (`send_body=False`) the caller's headers already say how
    long the GET body would be, and no body bytes follow.
    """
    headers = list(headers)
    if send_body and status not in (204, 304) and status >= 200:
        headers = without(headers, FRAMING) + [("Content-Length", str(len(body)))]
    payload = body if send_body and status not in (204, 304) else b""
    return serialize_head(f"HTTP/1.1 {status} {reason}", headers) + payload


def error_response(status: int, message: str, close: bool = False) -> Response:
    """A small plain-text answer the edge generates itself."""
    headers: Headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Cache-Control", "no-store"),
    ]
    if close:
        headers.append(("Connection", "close"))
    return Response(status, REASONS.get(status, "Error"), headers, f"{message}\n".encode())


# --- asking the origin --------------------------------------------------------


InterimHandler = Callable[[int, str, Headers], None]


def fetch_from_origin(
    host: str,
    port: int,
    method: str,
    target: str,
    headers: Headers,
    body: bytes,
    timeout: float,
    on_interim: InterimHandler | None = None,
) -> Response:
    """Send one request on a fresh connection and read the whole answer.

    One connection per request (`Connection: close`) keeps the proxy simple
    and never retries: a request the origin may have seen is never sent twice.
    `timeout` bounds connecting plus waiting for the response head, and each
    pause while the body streams in. Raises `OriginError`.
    """
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
    lines.append("Connection: close")
    if body or method not in ("GET", "HEAD", "OPTIONS", "TRACE", "DELETE"):
        lines.append(f"Content-Length: {len(body)}")
    wire = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace") + body
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as exc:
        raise OriginError(f"connecting to {host}:{port} timed out", timed_out=True) from exc
    except OSError as exc:
        raise OriginError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    try:
        sock.sendall(wire)
        return _read_response(Reader(sock), method, deadline, timeout, on_interim)
    except ClientTimeout as exc:
        raise OriginError(f"origin sent no answer within {timeout:g} s", timed_out=True) from exc
    except ClientClosed as exc:
        raise OriginError("origin closed the connection before answering") from exc
    except HttpError as exc:
        raise OriginError(f"malformed response from origin: {exc.message}") from exc
    except OSError as exc:
        raise OriginError(f"connection to origin failed: {exc}") from exc
    finally:
        sock.close()


def _read_response(
    reader: Reader,
    method: str,
    deadline: float,
    timeout: float,
    on_interim: InterimHandler | None,
) -> Response:
    while True:
        line = reader.readline(MAX_FIELD_LINE, deadline, HttpError(502, "status line too long"))
        match = STATUS_LINE.match(line.decode("latin-1"))
        if not match:
            raise HttpError(502, f"bad status line {line[:60]!r}")
        status = int(match.group(3))
        reason = match.group(4) or REASONS.get(status, "")
        headers = _parse_field_lines(
            reader, deadline, MAX_FIELD_LINE, 4 * MAX_HEADER_BYTES, 4 * MAX_HEADER_COUNT
        )
        if 100 <= status < 200:
            if status == 101:
                raise HttpError(502, "origin switched protocols, which the edge never asked for")
            if on_interim is not None:
                on_interim(status, reason, headers)
            continue
        break
    version = (int(match.group(1)), int(match.group(2)))
    body_deadline = time.monotonic() + max(timeout, 1.0) * BODY_TIME_FACTOR
    if has_no_body(status, method):
        body = b""
    elif "chunked" in (get_combined(headers, "transfer-encoding") or "").lower():
        body = _read_chunked(reader, body_deadline, MAX_RESPONSE_BODY, _origin_error)
    else:
        length = _content_length(headers, _origin_error)
        if length is None:
            body = reader.read_to_close(MAX_RESPONSE_BODY, body_deadline)
        elif length > MAX_RESPONSE_BODY:
            raise OriginError(f"response body of {length} bytes is over the limit")
        else:
            body = reader.read_exact(length, body_deadline)
    return Response(status, reason, headers, body, version)


def _origin_error(_status: int, message: str) -> OriginError:
    return OriginError(message)
