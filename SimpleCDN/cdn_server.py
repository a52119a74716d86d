"""The edge server: sockets, one thread per connection, and the command line.

    python SimpleCDN/origin_server.py --port 8000
    python SimpleCDN/cdn_server.py --origin http://127.0.0.1:8000 --port 8080
    curl -i http://127.0.0.1:8080/index.html

What to answer is decided in `cdn_edge.py`; this file only reads requests
off the wire (`cdn_http.py`), hands them over, and writes the answers back,
with a deadline on every step so that no client, however slow or broken,
can hold up the others.
README section: "Running it yourself".
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from urllib.parse import urlsplit

from cdn_edge import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_MAX_OBJECT_SIZE,
    DEFAULT_ORIGIN_TIMEOUT,
    Edge,
    EdgeConfig,
    InterimSender,
)
from cdn_http import (
    ClientClosed,
    ClientTimeout,
    Headers,
    HttpError,
    Reader,
    Request,
    Response,
    end_to_end,
    error_response,
    read_request_body,
    read_request_head,
    serialize_head,
    serialize_response,
)

DEFAULT_ORIGIN = "http://127.0.0.1:8000"
IDLE_TIMEOUT = 15.0  # a keep-alive connection with no new request is closed
HEADER_TIMEOUT = 10.0  # a request's line and headers must arrive within this
BODY_TIMEOUT = 30.0  # and its body within this
SEND_TIMEOUT = 30.0  # a client that will not read its response is dropped
LISTEN_BACKLOG = 1024  # connections the kernel queues before accept()
MAX_CONNECTIONS = 2000  # open client connections (each is a thread) before 503s
MAX_TIMEOUT = 24 * 3600.0  # the largest --*-timeout accepted, in seconds
LINGER_SECONDS = 2.0  # after an error, how long to drain a client's unread input


class EdgeServer(socketserver.ThreadingTCPServer):
    """Accepts connections and gives each its own thread, so a slow or
    malicious client ties up only its own thread, never the others'."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        edge: Edge,
        idle_timeout: float = IDLE_TIMEOUT,
        header_timeout: float = HEADER_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.edge = edge
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        # One slot per open connection: a flood of connections gets a quick
        # 503 instead of a thread each, so the edge cannot be starved of memory.
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, ConnectionHandler)
        host, port = self.server_address[:2]
        edge.same_site |= {(host, port), ("localhost", port), ("127.0.0.1", port)}

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(
                    serialize_response(
                        503, "Service Unavailable", [("Connection", "close")], b"edge busy\n"
                    )
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class ConnectionHandler(socketserver.BaseRequestHandler):
    """One client connection: read requests in turn (keep-alive) and answer each."""

    server: EdgeServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        edge, server = self.server.edge, self.server
        reader = Reader(sock)
        try:
            while True:
                try:
                    request = read_request_head(reader, server.idle_timeout, server.header_timeout)
                    if request is None:
                        return
                    if request.expects_continue:
                        self.send(sock, b"HTTP/1.1 100 Continue\r\n\r\n")
                    read_request_body(reader, request, BODY_TIMEOUT)
                except HttpError as exc:
                    self.send_response(sock, error_response(exc.status, exc.message, close=True))
                    self.lingering_close(sock)
                    return
                except ClientTimeout:
                    self.send_response(sock, error_response(408, "request too slow", close=True))
                    self.lingering_close(sock)
                    return
                except ClientClosed:
                    return

                try:
                    response = edge.handle(request, self.interim_sender(sock, request))
                except Exception:  # a bug must cost one request, not the edge
                    traceback.print_exc()
                    response = error_response(500, "internal error in the edge")
                keep_alive = request.keep_alive
                if not keep_alive:
                    response.headers.append(("Connection", "close"))
                self.send_response(sock, response)
                if not keep_alive:
                    return
        except OSError:
            return  # the client went away mid-response

    def interim_sender(self, sock: socket.socket, request: Request) -> InterimSender:
        """Relays the origin's 1xx (e.g. 103 Early Hints) to an HTTP/1.1 client."""
        if request.version < (1, 1):
            return None  # HTTP/1.0 clients do not understand interim responses

        def send_interim(status: int, reason: str, headers: Headers) -> None:
            self.send(sock, serialize_head(status, reason, end_to_end(headers)))

        return send_interim

    def send_response(self, sock: socket.socket, response: Response) -> None:
        payload = serialize_response(
            response.status,
            response.reason,
            response.headers,
            response.body,
            send_body=response.send_body,
        )
        self.send(sock, payload)

    @staticmethod
    def lingering_close(sock: socket.socket) -> None:
        """Stop writing, then drain what the client is still sending for a moment.

        Closing a socket with unread input makes the kernel send a reset, and
        the client may lose the error response we just wrote (RFC 9112 9.6).
        """
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                if not sock.recv(65536):
                    break
        except OSError:
            pass

    @staticmethod
    def send(sock: socket.socket, data: bytes) -> None:
        sock.settimeout(SEND_TIMEOUT)
        sock.sendall(data)


# --- command line -------------------------------------------------------------

SIZE = re.compile(r"^(\d+)\s*([kmg]?)i?b?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`64MB`, `512k`, `1000` -> bytes (K, M, G are powers of 1024)."""
    match = SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64MB, 512K or 1000)")
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " ")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="A caching edge (shared HTTP cache, RFC 9111) in front of one origin."
    )
    parser.add_argument(
        "--origin", default=DEFAULT_ORIGIN, help="origin URL (default: %(default)s)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (0 = any free)")
    parser.add_argument("--name", default="edge", help="this edge's name in Via (e.g. eu-west)")
    parser.add_argument(
        "--cache-size",
        type=parse_size,
        default=DEFAULT_CACHE_SIZE,
        help="cache capacity in bytes, e.g. 64MB (default 64MB)",
    )
    parser.add_argument(
        "--max-object-size",
        type=parse_size,
        default=None,
        help="largest response the cache stores, e.g. 8MB (default 8MB, or the cache size)",
    )
    parser.add_argument(
        "--origin-timeout",
        type=float,
        default=DEFAULT_ORIGIN_TIMEOUT,
        help="seconds the origin has to answer before a 504 (default 10)",
    )
    parser.add_argument("--purge-token", help="enables PURGE for requests with this X-Purge-Token")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        help="seconds an idle keep-alive connection stays open (default 15)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=HEADER_TIMEOUT,
        help="seconds a client has to send a request's headers (default 10)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        help=f"open client connections before new ones get 503 (default {MAX_CONNECTIONS})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print a line per request")
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, EdgeConfig]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        origin = urlsplit(args.origin)
        origin_port = origin.port or 80
    except ValueError:  # an unclosed IPv6 bracket, a port past 65535...
        parser.error(f"--origin is not a valid URL: {args.origin!r}")
    if origin.scheme != "http" or not origin.hostname:
        parser.error(f"--origin must be an http:// URL with a host, got {args.origin!r}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0..65535, got {args.port}")
    if args.max_connections < 1:
        parser.error("--max-connections must be at least 1")
    timeouts = (args.origin_timeout, args.idle_timeout, args.header_timeout)
    if not all(0 < seconds <= MAX_TIMEOUT for seconds in timeouts):  # also refuses nan
        parser.error(f"timeouts must be positive, at most {MAX_TIMEOUT:g} seconds")
    if args.max_object_size is None:
        args.max_object_size = min(DEFAULT_MAX_OBJECT_SIZE, args.cache_size)
    if args.max_object_size > args.cache_size:
        parser.error("--max-object-size cannot exceed --cache-size")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.name):
        parser.error("--name may use letters, digits, '.', '_' and '-' only")
    config = EdgeConfig(
        origin_host=origin.hostname,
        origin_port=origin_port,
        name=args.name,
        cache_size=args.cache_size,
        max_object_size=args.max_object_size,
        origin_timeout=args.origin_timeout,
        purge_token=args.purge_token,
        verbose=args.verbose,
    )
    return args, config


def main(argv: list[str] | None = None) -> None:
    args, config = config_from_args(argv)
    try:
        server = EdgeServer(
            (args.host, args.port),
            Edge(config),
            args.idle_timeout,
            args.header_timeout,
            args.max_connections,
        )
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
