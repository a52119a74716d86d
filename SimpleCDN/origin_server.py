"""The origin: a small local website whose pages exercise every caching rule the edge follows.

    python SimpleCDN/origin_server.py --port 8000 --latency-ms 80

Every answer is delayed by `--latency-ms` (the distance between a user and a
far-away origin), and every request is counted, so a demo or a test can ask
`GET /__origin/stats` how many requests really reached the origin.
`PUT /__origin/latency?ms=3000` changes the delay while it runs (to play a
slow origin).

Pages (GET /, or see PAGES below):
  /index.html              HTML, max-age=3 and an ETag (answers If-None-Match with 304)
  /assets/app.3f9a1c.js    a fingerprinted asset: public, max-age=31536000, immutable
  /about.html              only Last-Modified: the edge may guess a lifetime (heuristic)
  /news.html               max-age=2, stale-if-error=600: may stand in for a dead origin
  /api/time                no-store: a fresh answer every time
  /account                 private: for one user's browser, never a shared cache
  /greeting                Vary: Accept-Encoding (gzip for those who accept it)
  /large.bin               2 MiB, max-age=3600
  /slow?ms=1500            answers after an extra delay
  /items/<name>            a resource that PUT / POST / DELETE change
  /echo                    any method: echoes method, headers and body as JSON
  /respond?...             answers with whatever the query asks for (for tests):
                           status=404  cc=max-age%3D60  etag=v1  lm=3600 (seconds before
                           the URL was first asked for: every answer has the same one)
                           date=-10 (seconds from now)  expires=60  age=30
                           h=Name:Value (repeatable; h200= / h304= only on a 200 / a 304)
                           body=text  size=bytes (up to 1 GiB, written in pieces)
                           sleep_ms=500  hint=</a.css>;rel=preload (103)
                           cookie=1 (Set-Cookie: session=<the request's X-User>-secret)
                           te=chunked or te=close (the body's framing instead of
                           Content-Length), cut=bytes (the origin dies, a TCP reset,
                           after sending this much of the body)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter, OrderedDict
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

STATS_PATH = "/__origin/stats"
LATENCY_PATH = "/__origin/latency"  # PUT ?ms=3000 makes every answer slower
DEFAULT_LATENCY_MS = 80  # a user far from the origin: the round trip a CDN saves
LARGE_FILE_BYTES = 2 * 1024 * 1024
MAX_RESPOND_BYTES = 1024**3  # /respond?size= beyond this is refused, not attempted
PIECE_BYTES = 1024 * 1024  # a large body is written in pieces this size, never held whole
STARTED = time.time()
ABOUT_LAST_MODIFIED = STARTED - 10 * 24 * 3600  # "edited ten days ago"
FIRST_ASKED_KEPT = 100_000  # /respond URLs whose first request time is remembered (for lm=)

PAGES = {
    "/index.html": (
        "text/html",
        "max-age=3",
        b"<!doctype html><title>Home</title><h1>Welcome to the origin</h1>\n",
    ),
    "/assets/app.3f9a1c.js": (
        "application/javascript",
        "public, max-age=31536000, immutable",
        b"console.log('a fingerprinted file never changes: its name changes instead');\n",
    ),
    "/news.html": (
        "text/html",
        "max-age=2, stale-if-error=600",
        b"<!doctype html><title>News</title><p>Nothing happened today.</p>\n",
    ),
    "/account": (
        "text/html",
        "private, max-age=60",
        b"<!doctype html><title>Account</title><p>Hello, Alice. Balance: 42.</p>\n",
    ),
}


def http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def fields(specs: list[str]) -> list[tuple[str, str]]:
    """`["X-A: 1", "Vary:Foo"]` -> header pairs (for /respond's h= parameters)."""
    pairs = [spec.partition(":") for spec in specs]
    return [(name.strip(), value.strip()) for name, _, value in pairs]


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha1(body).hexdigest()[:16] + '"'


class Filler:
    """`size` bytes of b"x", produced piece by piece so a 100 MB body costs no 100 MB."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def pieces(self):
        piece = b"x" * min(self.size, PIECE_BYTES)
        for start in range(0, self.size, PIECE_BYTES):
            yield piece[: self.size - start]


class OriginState:
    """What the origin remembers: request counts and the mutable /items/ store."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # request target -> count; guarded by lock
        self.items: dict[str, tuple[int, bytes]] = {}  # name -> (version, body); guarded by lock

    def count(self, target: str) -> None:
        with self.lock:
            self.requests[target] += 1

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            return {"requests": sum(self.requests.values()), "paths": dict(self.requests)}


_first_asked: OrderedDict[str, float] = OrderedDict()
_first_asked_lock = threading.Lock()


def first_asked(target: str, now: float) -> float:
    """When `target` was first requested (now, the first time); the oldest are forgotten."""
    with _first_asked_lock:
        when = _first_asked.setdefault(target, now)
        if len(_first_asked) > FIRST_ASKED_KEPT:
            _first_asked.popitem(last=False)
        return when


class OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real web server
    # Headers and body go out as two writes; without TCP_NODELAY, Nagle's
    # algorithm and the client's delayed ACK add ~40 ms to every answer.
    disable_nagle_algorithm = True
    server_version = "SimpleOrigin/1.0"
    state: OriginState  # set on the class by make_server

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the edge and the demos print what matters

    def __getattr__(self, name: str):
        # Answer every method, including ones nobody has heard of (`do_BREW`).
        if name.startswith("do_"):
            return self.dispatch
        raise AttributeError(name)

    # --- plumbing ---------------------------------------------------------

    def read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes | Filler = b"",
        date: float | None = None,
        framing: str = "length",
        cut: int | None = None,
    ) -> None:
        """Send a response. `framing`: "length" (Content-Length), "chunked", or
        "close" (the body ends where the connection does); `cut`: die after that
        many body bytes, as a crashed origin would."""
        self.send_response_only(status)
        names = {name.lower() for name, _ in headers}
        if "date" not in names:
            self.send_header("Date", http_date(time.time() if date is None else date))
        self.send_header("Server", self.server_version)
        for name, value in headers:
            self.send_header(name, value)
        has_body = status not in (204, 304) and status >= 200
        if has_body and framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        elif has_body and framing == "close":
            self.send_header("Connection", "close")
            self.close_connection = True
        elif has_body:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD" or not has_body:
            return
        sent = 0
        for piece in body.pieces() if isinstance(body, Filler) else [body]:
            if cut is not None:
                piece = piece[: cut - sent]
            if framing == "chunked" and piece:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
            sent += len(piece)
            if cut is not None and sent >= cut:
                self.die()
                return
        if framing == "chunked":
            self.wfile.write(b"0\r\n\r\n")

    def die(self) -> None:
        """Drop the connection with a TCP reset, the way a crashed process's socket goes."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()  # (the fd closes, with the reset, when the handler's files do)

    def not_modified(self, etag: str | None, last_modified: float | None) -> bool:
        """The origin's side of validation: does the client's copy still match?"""
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
            return etag is not None and ("*" in tags or etag.removeprefix("W/") in tags)
        since = self.headers.get("If-Modified-Since")
        if since and last_modified is not None:
            try:
                return int(last_modified) <= parsedate_to_datetime(since).timestamp()
            except (TypeError, ValueError):
                return False
        return False

    def page(
        self,
        content_type: str,
        cache_control: str,
        body: bytes,
        etag: str | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        """A cacheable page with an ETag, answered with 304 when the client has it."""
        etag = etag or etag_of(body)
        headers = [("Content-Type", content_type), ("Cache-Control", cache_control)]
        headers += [("ETag", etag)] + (extra or [])
        if self.command in ("GET", "HEAD") and self.not_modified(etag, None):
            self.reply(304, headers)
        else:
            self.reply(200, headers, body)

    # --- routing ----------------------------------------------------------

    def dispatch(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
        body = self.read_body()
        if path == STATS_PATH:
            self.reply(
                200,
                [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
                json.dumps(self.state.snapshot()).encode(),
            )
            return
        if path == LATENCY_PATH and self.command in ("PUT", "POST"):
            # fault injection: make the origin slow (or fast again) while it runs
            try:
                latency_ms = float(query.get("ms", [""])[0])
            except ValueError:
                latency_ms = -1.0
            if not 0 <= latency_ms <= 600_000:
                message = b"give the delay as ?ms=<0..600000>, e.g. ?ms=3000\n"
                self.reply(400, [("Content-Type", "text/plain")], message)
                return
            self.state.latency = latency_ms / 1000
            self.reply(200, [("Content-Type", "text/plain")], b"latency set\n")
            return
        self.state.count(self.path)
        time.sleep(self.state.latency)
        try:
            self.route(path, query, body)
        except (ValueError, KeyError) as exc:
            self.reply(400, [("Content-Type", "text/plain")], f"bad request: {exc}\n".encode())

    def route(self, path: str, query: dict[str, list[str]], body: bytes) -> None:
        if path == "/echo":
            self.echo(body)
        elif path == "/respond":
            self.respond(query)
        elif path.startswith("/items/"):
            self.item(path.removeprefix("/items/"), body)
        elif self.command not in ("GET", "HEAD"):
            self.reply(
                405,
                [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")],
                b"method not allowed here\n",
            )
        elif path in PAGES:
            self.page(*PAGES[path])
        elif path == "/":
            listing = "".join(
                f"<li><a href='{p}'>{p}</a>"
                for p in [
                    *PAGES,
                    "/about.html",
                    "/api/time",
                    "/greeting",
                    "/large.bin",
                    "/slow?ms=1500",
                ]
            )
            self.page("text/html", "max-age=10", f"<ul>{listing}</ul>\n".encode())
        elif path == "/about.html":
            self.about()
        elif path == "/api/time":
            payload = json.dumps({"time": time.time()}).encode()
            self.reply(
                200, [("Content-Type", "application/json"), ("Cache-Control", "no-store")], payload
            )
        elif path == "/greeting":
            self.greeting()
        elif path == "/large.bin":
            body = bytes(range(256)) * (LARGE_FILE_BYTES // 256)
            self.page("application/octet-stream", "max-age=3600", body)
        elif path == "/slow":
            time.sleep(int(query.get("ms", ["1500"])[0]) / 1000)
            self.page("text/plain", "max-age=60", b"worth the wait\n")
        else:
            self.reply(
                404,
                [("Content-Type", "text/plain"), ("Cache-Control", "max-age=10")],
                b"no such page\n",
            )

    def about(self) -> None:
        body = b"<!doctype html><title>About</title><p>Written ten days ago.</p>\n"
        headers = [("Content-Type", "text/html"), ("Last-Modified", http_date(ABOUT_LAST_MODIFIED))]
        if self.not_modified(None, ABOUT_LAST_MODIFIED):
            self.reply(304, headers)
        else:
            self.reply(200, headers, body)

    def greeting(self) -> None:
        """Two representations of one URL: the edge must keep them apart (Vary)."""
        body = b"hello from the origin! " * 40 + b"\n"
        extra = [("Vary", "Accept-Encoding")]
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body, mtime=0)
            extra.append(("Content-Encoding", "gzip"))
        self.page("text/plain", "max-age=60", body, extra=extra)

    def item(self, name: str, body: bytes) -> None:
        with self.state.lock:
            version, current = self.state.items.get(name, (1, f"item {name}, version 1\n".encode()))
            if self.command in ("PUT", "POST", "PATCH"):
                version, current = (
                    version + 1,
                    body or f"item {name}, version {version + 1}\n".encode(),
                )
                self.state.items[name] = (version, current)
            elif self.command == "DELETE":
                self.state.items[name] = (version + 1, b"")
            elif name in self.state.items and not self.state.items[name][1]:
                current = b""
        if self.command in ("GET", "HEAD"):
            if not current:
                self.reply(
                    404,
                    [("Content-Type", "text/plain"), ("Cache-Control", "max-age=60")],
                    b"deleted\n",
                )
            else:
                self.page("text/plain", "max-age=60", current, etag=f'"v{version}"')
        elif self.command in ("PUT", "POST", "PATCH", "DELETE"):
            self.reply(
                200,
                [("Content-Type", "text/plain")],
                f"{self.command} {name}: now version {version}\n".encode(),
            )
        else:
            self.reply(405, [("Allow", "GET, HEAD, PUT, POST, PATCH, DELETE")], b"")

    def echo(self, body: bytes) -> None:
        payload = {
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", errors="replace"),
            "body_length": len(body),
        }
        self.reply(
            200,
            [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
            json.dumps(payload).encode(),
        )

    def respond(self, query: dict[str, list[str]]) -> None:
        """Whatever the query asks for, so a test can try one caching rule at a time."""
        first = {key: values[0] for key, values in query.items()}
        now = time.time()
        time.sleep(int(first.get("sleep_ms", "0")) / 1000)
        status = int(first.get("status", "200"))
        if not 200 <= status <= 599:
            raise ValueError(f"status={status}: give a final status, 200..599")
        size = int(first.get("size", "0"))
        if size > MAX_RESPOND_BYTES:
            raise ValueError(f"size={size}: at most {MAX_RESPOND_BYTES} bytes")
        headers: list[tuple[str, str]] = [("Content-Type", "text/plain")]
        if "cc" in first:
            headers.append(("Cache-Control", first["cc"]))
        etag = first.get("etag")
        if etag is not None:
            etag = etag if etag.startswith(("W/", '"')) else f'"{etag}"'
            headers.append(("ETag", etag))
        # Anchored to the URL's first request, not to now: a Last-Modified that
        # moved with the clock would tell a revalidation in the next second that
        # the page changed, and the cache would rightly fetch it all again.
        last_modified = first_asked(self.path, now) - int(first["lm"]) if "lm" in first else None
        if last_modified is not None:
            headers.append(("Last-Modified", http_date(last_modified)))
        if "expires" in first:
            headers.append(("Expires", http_date(now + int(first["expires"]))))
        if "age" in first:
            headers.append(("Age", first["age"]))
        headers += fields(query.get("h", []))
        if "cookie" in first:  # a personal answer: a session cookie for whoever asked
            headers.append(("Set-Cookie", f"session={self.headers.get('X-User', 'anon')}-secret"))
        if "hint" in first:  # 103 Early Hints before the real answer (RFC 8297)
            self.wfile.write(f"HTTP/1.1 103 Early Hints\r\nLink: {first['hint']}\r\n\r\n".encode())
        date = now + int(first.get("date", "0"))
        body = first.get("body", "").encode() or (Filler(size) if size else b"ok\n")
        framing = first.get("te", "length")
        if framing not in ("length", "chunked", "close"):
            raise ValueError(f"te={framing}: give chunked or close")
        cut = int(first["cut"]) if "cut" in first else None
        if cut is not None and not 0 <= cut < len(body):
            raise ValueError(f"cut={cut}: give a byte count below the body's {len(body)}")
        if self.command in ("GET", "HEAD") and self.not_modified(etag, last_modified):
            self.reply(304, headers + fields(query.get("h304", [])), date=date)
        else:
            headers += fields(query.get("h200", []))
            self.reply(status, headers, body, date=date, framing=framing, cut=cut)


class OriginServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a burst of 100 simultaneous users must not be refused


def make_server(host: str, port: int, latency_ms: float) -> ThreadingHTTPServer:
    """A threaded origin: each connection gets a thread, as each user would."""
    handler = type("Handler", (OriginHandler,), {"state": OriginState(latency_ms / 1000)})
    return OriginServer((host, port), handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The local origin site the edge caches.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=DEFAULT_LATENCY_MS,
        help="delay added to every answer, standing for distance (default 80)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.latency_ms <= 600_000:  # also refuses nan
        parser.error("--latency-ms must be between 0 and 600000")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0..65535, got {args.port}")
    try:
        server = make_server(args.host, args.port, args.latency_ms)
    except OSError as exc:
        sys.exit(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(f"Listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
