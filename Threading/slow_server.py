"""The slow dependency the I/O-bound work waits on: a TCP server that answers late.

Each request is one line holding a whole number; after `delay` seconds the server
answers with the number squared, the way a database answers a query. A client
may ask one question per connection (`workloads.ask_slow_server`) or keep one
connection and ask many (`convoy.round_trips`). README.md, "Two kinds of work"
and "The convoy effect", use it.

    python Threading/slow_server.py --port 0 --delay 0.1
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from multiprocessing.connection import Connection

import command_line
import parent_watch
from workloads import IO_DELAY

SERVER_STARTUP_TIMEOUT = 10.0  # seconds the server process may take to start
SERVER_BACKLOG = 128  # pending connections the server accepts at once (32 clients arrive together)
MAX_REQUEST_BYTES = 64  # a request is one short line: the question's number
MAX_CONNECTIONS = 256  # open at once; one more is closed at once instead of costing a thread
# Seconds a connection has to send each whole request line, counted from its
# connection or its previous answer: a silent client, and one that drips a byte
# at a time to keep its thread (slowloris), are both closed when it runs out.
IDLE_TIMEOUT = 30.0


class ServerStartError(RuntimeError):
    """The slow server did not report its port in time."""


class _RequestLines:
    """The request lines of one connection, each due whole within `timeout` seconds.

    A socket timeout alone bounds each recv(), not the line: a client that sends
    one byte just inside every timeout would hold its thread for ever.
    """

    def __init__(self, connection: socket.socket, timeout: float) -> None:
        self.connection = connection
        self.timeout = timeout
        self.pending = b""  # received, not yet returned: at most one recv() past a line

    def next_line(self) -> bytes:
        """The next line, newline included; b"" once the client has finished; a line
        without its newline if it was cut off or too long. TimeoutError if it is late."""
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self.pending and len(self.pending) < MAX_REQUEST_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no whole request within {self.timeout:g} s")
            self.connection.settimeout(remaining)
            received = self.connection.recv(4096)
            if not received:  # the client shut its side: what is left is the last line
                break
            self.pending += received
        end = self.pending.find(b"\n", 0, MAX_REQUEST_BYTES)
        cut = end + 1 if end >= 0 else MAX_REQUEST_BYTES
        line, self.pending = self.pending[:cut], self.pending[cut:]
        return line


class _SlowHandler(socketserver.BaseRequestHandler):
    """One connection: for each line, wait the server's delay, answer the number squared."""

    def handle(self) -> None:
        try:
            self.answer_each_line()
        except OSError:  # the client left, reset the connection, or was too slow to ask
            pass

    def answer_each_line(self) -> None:
        lines = _RequestLines(self.request, self.server.idle_timeout)  # type: ignore[attr-defined]
        while line := lines.next_line():
            try:
                if not line.endswith(b"\n"):  # longer than MAX_REQUEST_BYTES, or cut off
                    raise ValueError
                question = int(line)
            except ValueError:
                self.reply(b"error: send one whole number per line, at most 64 bytes\n")
                return  # a client that sends garbage gets an answer and is closed
            time.sleep(self.server.delay)  # type: ignore[attr-defined]
            self.reply(f"{question * question}\n".encode())

    def reply(self, answer: bytes) -> None:
        # The timeout bounds the whole sendall: a client that asks and never reads
        # its answers cannot hold the thread either.
        self.request.settimeout(self.server.idle_timeout)  # type: ignore[attr-defined]
        self.request.sendall(answer)


class _SlowTCPServer(socketserver.ThreadingTCPServer):
    """A thread per connection, at most `max_connections` of them at once."""

    daemon_threads = True  # a stuck connection never keeps the server alive
    allow_reuse_address = True
    request_queue_size = SERVER_BACKLOG

    def __init__(
        self,
        host: str,
        port: int,
        delay: float,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__((host, port), _SlowHandler)  # port 0: the OS picks a free port
        self.delay = delay
        self.idle_timeout = idle_timeout
        self._free_slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        if not self._free_slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: a flood of clients costs no more threads
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._free_slots.release()


def _serve(host: str, limits: dict, report_port: Connection, parent_pid: int) -> None:
    """Child-process entry point: bind, tell the parent the port, serve until terminated
    (or until the parent dies without terminating it: see parent_watch.py)."""
    parent_watch.exit_with_parent(parent_pid)
    with _SlowTCPServer(host, 0, **limits) as server:
        report_port.send(server.server_address[1])
        report_port.close()
        server.serve_forever()


class SlowServer:
    """A TCP server on 127.0.0.1 that answers every request after `delay` seconds.

    It stands for any slow dependency (a database, another service). It runs in a
    process of its own, like a real one would, so its threads never compete with
    the clients being measured for their interpreter's GIL, and the measuring
    process stays free of extra threads (forking a process that has threads is
    unsafe). Use it as a context manager; `address` is where it listens.
    """

    def __init__(
        self,
        delay: float = IO_DELAY,
        host: str = "127.0.0.1",
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.limits = {
            "delay": delay,
            "idle_timeout": idle_timeout,
            "max_connections": max_connections,
        }
        self.host = host
        self.address: tuple[str, int] = (host, 0)
        self._process: multiprocessing.Process | None = None

    def __enter__(self) -> SlowServer:
        receive_port, send_port = multiprocessing.Pipe(duplex=False)
        self._process = multiprocessing.Process(
            target=_serve,
            args=(self.host, self.limits, send_port, os.getpid()),
            name="slow-server",
            daemon=True,
        )
        self._process.start()
        send_port.close()  # the child holds its own copy
        try:
            port = receive_port.recv() if receive_port.poll(SERVER_STARTUP_TIMEOUT) else None
        except EOFError:  # the child exited before it could bind
            port = None
        finally:
            receive_port.close()
        if port is None:
            exit_code = self._process.exitcode
            self.__exit__()
            raise ServerStartError(
                f"the slow server on {self.host} reported no port within "
                f"{SERVER_STARTUP_TIMEOUT:.0f} s (exit code {exit_code})"
            )
        self.address = (self.host, port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(timeout=SERVER_STARTUP_TIMEOUT)
            self._process = None


def main(argv: list[str] | None = None) -> int:
    """Run the slow server in the foreground, for trying it by hand (`nc 127.0.0.1 PORT`)."""
    parser = argparse.ArgumentParser(
        description="A TCP server that answers each line holding a number with its square, "
        "after a delay: the slow dependency the I/O-bound work waits on."
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument(
        "--port", type=command_line.port_number, default=0, help="default: 0 (a free port)"
    )
    parser.add_argument(
        "--delay",
        type=command_line.delay_seconds,
        default=IO_DELAY,
        help=f"seconds to wait before each answer (default: {IO_DELAY})",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop cleanly, like Ctrl+C
    try:
        with _SlowTCPServer(args.host, args.port, args.delay) as server:
            host, port = server.server_address[:2]
            print(f"Listening on tcp://{host}:{port}", flush=True)
            server.serve_forever()
    except OSError as error:
        print(f"slow_server.py: cannot listen on {args.host}:{args.port}: {error.strerror}")
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
