"""WebSockets: Server.py's routes, limits and shutdown against a real client,
Client.py end to end, the hand-made handshake and frames, and push vs polling."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from conftest import ROOT, child_env, engine_binary, free_port, load_module, run_script
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response

Client = load_module("WebSockets", "Client")
Server = load_module("WebSockets", "Server")
handshake = load_module("WebSockets", "handshake")
polling_vs_websocket = load_module("WebSockets", "polling_vs_websocket")
slow_reader = load_module("WebSockets", "slow_reader")

SERVER = "WebSockets/Server.py"
CLIENT = "WebSockets/Client.py"


def run(coro, timeout: float = 20.0):
    """Run a coroutine to completion, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def ws_url(server, path: str) -> str:
    return f"{server.url}{path}"


def raw_handshake(host: str, port: int, path: str, version: str = "13") -> bytes:
    """Send an Upgrade request by hand; return the raw HTTP response head."""
    request = handshake.upgrade_request(host, port, path, handshake.new_key(), version)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


async def still_echoes(url: str) -> str:
    async with connect(url) as ws:
        await ws.send("still serving")
        return await ws.recv()


# -- Server.py ------------------------------------------------------------------


def test_echo_returns_text_as_text_and_binary_as_binary(start_server):
    server = start_server(SERVER)

    async def exchange():
        async with connect(ws_url(server, "/echo")) as ws:
            replies = []
            for message in ("héllo", b"\x00\xff\x10" * 100, "", b""):
                await ws.send(message)
                replies.append(await ws.recv())
            return replies

    assert run(exchange()) == ["héllo", b"\x00\xff\x10" * 100, "", b""]


def test_time_route_pushes_ticks_without_being_asked(start_server):
    server = start_server(SERVER, "--interval", "0.05")

    async def listen():
        async with connect(ws_url(server, "/time")) as ws:
            return [json.loads(await ws.recv()) for _ in range(3)]

    ticks = run(listen())
    assert [t["tick"] for t in ticks] == [1, 2, 3]
    times = [t["server_time"] for t in ticks]
    assert times == sorted(times) and len(set(times)) == 3


def test_time_route_keeps_ticking_while_the_client_talks(start_server):
    """Messages sent to /time are read and ignored, so they never stall the connection."""
    server = start_server(SERVER, "--interval", "0.05", "--ping-interval", "0.3")

    async def chatter():
        async with connect(ws_url(server, "/time"), ping_interval=None) as ws:
            for n in range(200):  # far more than the library's 16-message queue
                await ws.send(f"noise {n}")
            ticks = []
            deadline = time.monotonic() + 1.5  # several keep-alive rounds
            while time.monotonic() < deadline:
                ticks.append(json.loads(await ws.recv())["tick"])
            return ticks, ws.close_code

    ticks, close_code = run(chatter())
    assert close_code is None  # the keep-alive never gave up on us
    assert ticks == list(range(1, len(ticks) + 1)) and len(ticks) > 5


def test_broadcast_reaches_every_client_exactly_once(start_server):
    server = start_server(SERVER)

    async def room():
        clients = [await connect(ws_url(server, "/broadcast")) for _ in range(4)]
        await asyncio.sleep(0.2)  # every handler has joined the room
        await clients[0].send("from 0")
        await clients[3].send(b"from 3")
        received = []
        for ws in clients:
            got = []
            try:
                while True:  # read until the line goes quiet, to catch duplicates
                    got.append(await asyncio.wait_for(ws.recv(), 0.5))
            except TimeoutError:
                pass
            received.append(got)
        for ws in clients:
            await ws.close()
        return received

    for got in run(room()):
        assert sorted(got, key=repr) == sorted(["from 0", b"from 3"], key=repr)


def test_oversized_message_closes_only_that_client_with_1009(start_server):
    server = start_server(SERVER, "--max-size", "1024")

    async def scenario():
        bystander = await connect(ws_url(server, "/echo"))
        offender = await connect(ws_url(server, "/echo"), max_size=None)
        await offender.send("y" * 1024)  # exactly the limit: accepted
        at_limit = await offender.recv()
        await offender.send("x" * 1025)
        with pytest.raises(ConnectionClosed):
            await offender.recv()
        await bystander.send("are you there?")
        reply = await bystander.recv()
        await bystander.close()
        return len(at_limit), offender.close_code, reply

    assert run(scenario()) == (1024, 1009, "are you there?")
    assert run(still_echoes(ws_url(server, "/echo"))) == "still serving"


def test_plain_http_get_gets_an_http_error_not_a_crash(start_server):
    server = start_server(SERVER)
    response = requests.get(f"http://{server.host}:{server.port}/echo", timeout=5)
    assert response.status_code == 426  # Upgrade Required
    assert run(still_echoes(ws_url(server, "/echo"))) == "still serving"


def test_wrong_websocket_version_gets_426_naming_version_13(start_server):
    server = start_server(SERVER)
    answer = raw_handshake(server.host, server.port, "/echo", version="8")
    head = answer.decode("latin-1")
    assert head.startswith("HTTP/1.1 426 ")
    assert "Sec-WebSocket-Version: 13" in head
    assert "Upgrade: websocket" in head  # a 426 must say what to upgrade to
    assert run(still_echoes(ws_url(server, "/echo"))) == "still serving"


@pytest.mark.parametrize("hosts", [b"", b"Host: one.test\r\nHost: other.test\r\n"])
def test_handshake_without_exactly_one_host_header_gets_400(start_server, hosts):
    server = start_server(SERVER)
    request = handshake.upgrade_request(server.host, server.port, "/echo", handshake.new_key())
    request = request.replace(f"Host: {server.host}:{server.port}\r\n".encode(), hosts)
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(request)
        answer = handshake.read_http_response(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_unknown_path_gets_404(start_server):
    server = start_server(SERVER)
    answer = raw_handshake(server.host, server.port, "/nowhere")
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert b"/echo" in answer  # says where to go instead


async def origin_answer(url: str, origin: str | None) -> int:
    """The HTTP status the server gives a handshake sending this Origin (None: no header)."""
    try:
        async with connect(url, origin=origin) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def test_a_foreign_origin_gets_403_an_allowed_one_and_programs_are_served(start_server):
    page = "http://localhost:8000"
    server = start_server(SERVER, "--allowed-origin", page, "--allowed-origin", "https://chat.test")
    url = ws_url(server, "/echo")
    answers = {
        origin: run(origin_answer(url, origin))
        for origin in (
            page,
            "https://chat.test",
            None,  # a program: no Origin header at all
            "https://evil.test",
            "http://localhost:8001",  # another port is another origin
            "null",  # a sandboxed iframe or a file:// page
        )
    }
    assert answers == {
        page: 101,
        "https://chat.test": 101,
        None: 101,
        "https://evil.test": 403,
        "http://localhost:8001": 403,
        "null": 403,
    }


def test_by_default_no_browser_origin_is_allowed_and_star_allows_all(start_server):
    closed = start_server(SERVER)
    assert run(origin_answer(ws_url(closed, "/echo"), "http://127.0.0.1:8000")) == 403
    assert run(origin_answer(ws_url(closed, "/echo"), None)) == 101
    open_to_all = start_server(SERVER, "--allowed-origin", "*")
    assert run(origin_answer(ws_url(open_to_all, "/echo"), "https://evil.test")) == 101


@pytest.mark.parametrize(
    "origin",
    [
        "localhost:8000",
        "http://localhost:8000/",
        "http://h:99999",
        "http://user@h:8000",
        "http://[fe80::1%25eth0]:8000",
        "http://a..b",
    ],
)
def test_server_refuses_an_allowed_origin_that_is_not_an_origin(origin):
    result = run_script(SERVER, "--allowed-origin", origin)
    assert result.returncode == 2 and "--allowed-origin" in result.stderr
    assert "Traceback" not in result.stderr


# What Chromium 156 put in the Origin header, measured on pages at the URL on
# the left (README, "Who may connect"): one spelling per origin.
SPELLINGS_CHROMIUM_SENDS = {
    "HTTP://LOCALHOST:8000": "http://localhost:8000",
    "http://localhost:80": "http://localhost",
    "https://chat.test:443": "https://chat.test",
    "http://[0:0::1]:8000": "http://[::1]:8000",
    "http://bücher.example": "http://xn--bcher-kva.example",
}


@pytest.mark.parametrize(("allowed", "sent"), SPELLINGS_CHROMIUM_SENDS.items())
def test_an_allowed_origin_is_written_as_browsers_send_it(allowed, sent):
    assert Server.browser_origin(allowed) == sent
    assert Server.browser_origin(sent) == sent


def test_an_allowed_origin_in_another_spelling_still_lets_its_browser_pages_in(start_server):
    """The library compares strings: `http://localhost:80` must become `http://localhost`."""
    allowed = [arg for origin in SPELLINGS_CHROMIUM_SENDS for arg in ("--allowed-origin", origin)]
    server = start_server(SERVER, *allowed)
    url = ws_url(server, "/echo")
    answers = {sent: run(origin_answer(url, sent)) for sent in SPELLINGS_CHROMIUM_SENDS.values()}
    assert answers == dict.fromkeys(SPELLINGS_CHROMIUM_SENDS.values(), 101)
    assert run(origin_answer(url, "http://localhost:8001")) == 403
    assert "Origins allowed: http://localhost:8000, http://localhost," in server.text


def test_two_origin_headers_get_400(start_server):
    server = start_server(SERVER, "--allowed-origin", "https://chat.test")
    request = handshake.upgrade_request(server.host, server.port, "/echo", handshake.new_key())
    two = b"Origin: https://chat.test\r\nOrigin: https://evil.test\r\n\r\n"
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(request[:-2] + two)
        answer = handshake.read_http_response(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_allowing_null_warns_that_it_lets_any_site_in(start_server):
    server = start_server(SERVER, "--allowed-origin", "null")
    assert server.wait_for_output("warning: 'null'")
    assert run(origin_answer(ws_url(server, "/echo"), "null")) == 101


def test_garbage_instead_of_a_handshake_does_not_stop_the_server(start_server):
    server = start_server(SERVER)
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        sock.recv(4096)  # whatever it answers, then it closes
    assert run(still_echoes(ws_url(server, "/echo"))) == "still serving"


def test_server_sends_keepalive_pings_and_drops_a_client_that_never_pongs(start_server):
    server = start_server(SERVER, "--ping-interval", "0.2")
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        key = handshake.new_key()
        sock.sendall(handshake.upgrade_request(server.host, server.port, "/echo", key))
        handshake.read_http_response(sock)
        _, frame = handshake.read_frame(sock)  # we say nothing; the server pings
        _, close = handshake.read_frame(sock)  # we never pong; the server gives up
    assert frame.opcode == handshake.PING
    assert not frame.masked
    assert close.opcode == handshake.CLOSE
    assert handshake.close_code(close.payload)[0] == 1011


def test_a_broadcast_member_that_stops_reading_is_dropped_and_others_get_everything(
    start_server,
):
    server = start_server(SERVER, "--max-buffer", str(256 * 1024))
    stalled = slow_reader.stalled_client(server.port)  # handshake done, never reads

    async def talk():
        async with connect(ws_url(server, "/broadcast")) as ws:
            sent = received = 0
            deadline = time.monotonic() + 20
            while "stopped reading" not in server.text and time.monotonic() < deadline:
                for _ in range(20):
                    await ws.send(b"x" * 4096)
                    sent += 1
                while received < sent:  # this member keeps up with every message
                    await ws.recv()
                    received += 1
            return sent, received

    try:
        sent, received = run(talk(), 30)
    finally:
        stalled.close()
    assert server.wait_for_output("stopped reading", timeout=1), server.text
    assert received == sent > 0
    assert run(still_echoes(ws_url(server, "/echo"))) == "still serving"


def test_without_a_cap_the_keepalive_does_not_drop_a_stalled_member():
    """The reason the cap exists: the ping waits behind the queued data."""
    seen = run(slow_reader.one_round(max_buffer=0, seconds=2.5, out=lambda line: None), 30)
    assert seen["dropped_after"] is None  # a 1 s keep-alive had 2.5 s to act
    assert seen["peak_buffered"] > 1024 * 1024
    assert seen["fast_received"] == seen["sent"]


def flood_without_reading(server, frame: bytes, seconds: float = 20.0) -> bool:
    """Send `frame` over and over on /echo and read nothing, until the server
    says it dropped us (True) or `seconds` pass (False)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that barely reads
    sock.connect((server.host, server.port))
    try:
        sock.sendall(
            handshake.upgrade_request(server.host, server.port, "/echo", handshake.new_key())
        )
        handshake.read_http_response(sock)
        sock.settimeout(0.1)
        deadline = time.monotonic() + seconds
        while "stopped reading" not in server.text and time.monotonic() < deadline:
            try:
                sock.send(frame)
            except TimeoutError:
                pass  # our send buffer is full: the server is not reading either
            except OSError:
                break  # reset: the server dropped us
        return server.wait_for_output("stopped reading", timeout=2)
    finally:
        sock.close()


def test_a_client_that_sends_but_never_reads_its_echoes_is_dropped(start_server):
    """Its echoes wait for a drain that never comes, and so does the keep-alive's
    ping: without the stall timer it held its socket and buffers forever."""
    server = start_server(SERVER, "--ping-interval", "0.5")
    message = handshake.encode_frame(b"m" * 60_000, handshake.BINARY, mask=b"abcd")
    assert flood_without_reading(server, message), server.text
    assert "its queue did not drain for 1 s" in server.text
    assert run(still_echoes(ws_url(server, "/echo"))) == "still serving"


def test_a_client_that_floods_pings_and_reads_no_pongs_is_dropped(start_server):
    """Every ping read makes a pong; unread, they grew the server's buffer by
    megabytes a second (130 MiB in 8 s) with the keep-alive stuck behind them."""
    server = start_server(SERVER)  # a 20 s keep-alive: the cap acts long before
    pings = handshake.encode_frame(b"p" * 125, handshake.PING, mask=b"abcd") * 100
    assert flood_without_reading(server, pings), server.text
    assert "bytes queued" in server.text
    assert run(still_echoes(ws_url(server, "/echo"))) == "still serving"


def test_two_members_bursting_at_once_take_turns():
    """Each route lets the others have a turn after every message. Before, a
    handler went through everything one socket read had queued (thousands of
    messages) without a pause: a burst held every other client waiting."""

    async def scenario():
        async with Server.serve_routes("127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            listener = await connect(f"ws://127.0.0.1:{port}/broadcast")
            a, b = [
                await asyncio.to_thread(RawClient, "127.0.0.1", port, "/broadcast") for _ in "ab"
            ]
            await asyncio.sleep(0.1)  # every handler has joined the room
            bursts = {
                client: b"".join(
                    handshake.encode_frame(name.encode(), mask=b"abcd") for _ in range(300)
                )
                for client, name in ((a, "a"), (b, "b"))
            }
            # Both bursts reach the server's socket buffers before its event loop
            # runs again (we hold the loop here): its next read finds them side by side.
            for client, burst in bursts.items():
                client.sock.sendall(burst)
            heard = [await listener.recv() for _ in range(600)]
            await listener.close()
            for client in bursts:
                client.close()
            return heard

    heard = run(scenario())
    longest = max(len(list(in_a_row)) for _, in_a_row in itertools.groupby(heard))
    assert sorted(heard) == ["a"] * 300 + ["b"] * 300
    assert longest <= 3, f"one member's burst went out {longest} messages in a row"


class RawClient:
    """A client on a raw socket, writing frames with handshake.py's encoder, so a
    test can send what no well-behaved library would (Autobahn-style cases)."""

    def __init__(self, host: str, port: int, path: str = "/echo") -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.sendall(handshake.upgrade_request(host, port, path, handshake.new_key()))
        assert handshake.read_http_response(self.sock).startswith(b"HTTP/1.1 101 ")

    def send(self, payload: bytes, opcode: int = handshake.TEXT, fin: bool = True, **bits):
        wire = bytearray(handshake.encode_frame(payload, opcode, fin, bits.get("mask", b"abcd")))
        wire[0] |= bits.get("rsv", 0)
        self.sock.sendall(bytes(wire))

    def frames_until_close(self) -> tuple[list[handshake.Frame], int | None]:
        """Every frame the server sends, up to its close frame; then its close code."""
        frames = []
        while (frame := handshake.read_frame(self.sock)[1]).opcode != handshake.CLOSE:
            frames.append(frame)
        code, _ = handshake.close_code(frame.payload)
        return frames, code

    def close(self) -> None:
        self.sock.close()


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


# What RFC 6455 says a server must do with a broken frame: fail the connection
# with 1002 (protocol error), 1007 (text that is not UTF-8) or 1009 (too big).
VIOLATIONS = {
    "unmasked client frame": ([(b"hi", handshake.TEXT, True, {"mask": None})], 1002),
    "reserved bit without an extension": ([(b"hi", handshake.TEXT, True, {"rsv": 0x40})], 1002),
    "reserved opcode 0x3": ([(b"hi", 0x3, True, {})], 1002),
    "ping of 126 bytes (control max 125)": ([(b"p" * 126, handshake.PING, True, {})], 1002),
    "fragmented ping": ([(b"p", handshake.PING, False, {})], 1002),
    "continuation with no message to continue": ([(b"hi", handshake.CONTINUATION, True, {})], 1002),
    "new message inside a fragmented one": (
        [(b"a", handshake.TEXT, False, {}), (b"b", handshake.TEXT, True, {})],
        1002,
    ),
    "close code 999 (not a valid code)": ([(close_frame(999), handshake.CLOSE, True, {})], 1002),
    "text that is not UTF-8": ([(b"caf\xc3\x28", handshake.TEXT, True, {})], 1007),
    "UTF-8 broken across fragments": (
        [(b"\xce", handshake.TEXT, False, {}), (b"\xff", handshake.CONTINUATION, True, {})],
        1007,
    ),
    "fragments adding up to over --max-size": (
        [(b"x" * 800, handshake.BINARY, False, {}), (b"x" * 800, handshake.CONTINUATION, True, {})],
        1009,
    ),
}


def test_server_fails_rfc_6455_violations_with_the_right_close_code(start_server):
    server = start_server(SERVER, "--max-size", "1024")
    answers = {}
    for name, (frames, _) in VIOLATIONS.items():
        client = RawClient(server.host, server.port)
        try:
            for payload, opcode, fin, bits in frames:
                client.send(payload, opcode, fin, **bits)
            echoed, code = client.frames_until_close()
            assert client.sock.recv(1) == b""  # then the server closes TCP
        finally:
            client.close()
        answers[name] = (echoed, code)
    assert answers == {name: ([], code) for name, (_, code) in VIOLATIONS.items()}
    assert run(still_echoes(ws_url(server, "/echo"))) == "still serving"


def test_server_reassembles_fragments_and_answers_a_ping_between_them(start_server):
    server = start_server(SERVER)
    client = RawClient(server.host, server.port)
    try:
        client.send(b"Hel", handshake.TEXT, fin=False)
        client.send(b"are you there?", handshake.PING)  # control frames may interleave
        client.send("lo, wörld".encode(), handshake.CONTINUATION, fin=False)
        client.send(b"", handshake.CONTINUATION)
        pong = handshake.read_frame(client.sock)[1]
        echo = handshake.read_frame(client.sock)[1]
        client.send(close_frame(1000, b"bye now"), handshake.CLOSE)
        rest, code = client.frames_until_close()
    finally:
        client.close()
    assert (pong.opcode, pong.payload) == (handshake.PONG, b"are you there?")
    assert (echo.opcode, echo.fin, echo.payload) == (handshake.TEXT, True, "Hello, wörld".encode())
    assert (rest, code) == ([], 1000)


def test_another_implementations_client_talks_to_the_server(start_server):
    """aiohttp's WebSocket client, with permessage-deflate on: echo, push, broadcast, 1009."""
    import aiohttp

    server = start_server(SERVER, "--interval", "0.05", "--max-size", "1024")

    async def session():
        async with aiohttp.ClientSession() as http_session:
            ws = await http_session.ws_connect(ws_url(server, "/echo"), compress=15)
            await ws.send_str("héllo from aiohttp")
            text = (await ws.receive()).data
            await ws.send_bytes(b"\x00\xff")
            binary = (await ws.receive()).data
            await ws.send_str("z" * 2000)  # compresses to a few bytes; still too big
            too_big = await ws.receive()
            tick = await http_session.ws_connect(ws_url(server, "/time"))
            first_tick = json.loads((await tick.receive()).data)["tick"]
            await tick.close()
            room = [await http_session.ws_connect(ws_url(server, "/broadcast")) for _ in range(2)]
            await room[0].send_str("to the room")
            heard = [(await member.receive()).data for member in room]
            for member in room:
                await member.close()
            deflate = ws.compress > 0  # permessage-deflate negotiated (its window bits)
            return deflate, text, binary, too_big.type, ws.close_code, first_tick, heard

    assert run(session()) == (
        True,
        "héllo from aiohttp",
        b"\x00\xff",
        aiohttp.WSMsgType.CLOSE,
        1009,
        1,
        ["to the room", "to the room"],
    )


def test_sigterm_closes_every_client_with_1001(start_server):
    server = start_server(SERVER)

    async def connect_two():
        return [await connect(ws_url(server, path)) for path in ("/echo", "/broadcast")]

    async def wait_closed(clients):
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        return [ws.close_code for ws in clients]

    loop = asyncio.new_event_loop()
    try:
        clients = loop.run_until_complete(connect_two())
        server.signal(signal.SIGTERM)
        codes = loop.run_until_complete(asyncio.wait_for(wait_closed(clients), 10))
    finally:
        loop.close()
    assert codes == [1001, 1001]
    assert server.proc.wait(timeout=10) == 0


BAD_ARGUMENTS = [
    ("Server.py", "--max-size", "0"),
    ("Server.py", "--interval", "nan"),
    ("Server.py", "--ping-interval", "inf"),
    ("Server.py", "--port", "65536"),
    ("Client.py", "--timeout", "nan"),
    ("Client.py", "--count", "-1"),
    # nan and inf sleeps hung these runs or ended them in a traceback
    ("demo.py", "--poll-ms", "nan"),
    ("demo.py", "--mean-gap-ms", "inf"),
    ("demo.py", "--updates", "1000000"),
    ("polling_vs_websocket.py", "--poll-ms", "inf"),
    ("polling_vs_websocket.py", "--mean-gap-ms", "nan"),
    ("bench.py", "--poll-ms", "nan"),
    ("bench.py", "--clients", "100000"),
    ("bench.py", "--round-trips", "0"),
    ("slow_reader.py", "--seconds", "inf"),  # queued without end
    ("slow_reader.py", "--seconds", "nan"),  # printed a Lesson it had not shown
]


@pytest.mark.parametrize(("script", "flag", "value"), BAD_ARGUMENTS)
def test_scripts_refuse_a_bad_argument_in_one_line(script, flag, value):
    result = run_script(f"WebSockets/{script}", flag, value, timeout=30)
    assert result.returncode == 2 and flag in result.stderr.splitlines()[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_slow_reader_says_lesson_not_shown_when_the_cap_did_not_act(monkeypatch, capsys):
    """It printed `Lesson:` (and exited 1) when its run contradicted the lesson."""
    no_drop = {"sent": 10, "fast_received": 10, "peak_buffered": 0, "dropped_after": None}

    async def both_rounds(seconds):
        return no_drop, no_drop

    monkeypatch.setattr(slow_reader, "both_rounds", both_rounds)
    assert slow_reader.main(["--seconds", "1"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("Lesson not shown: ") and "the cap did not act" in last


# -- Client.py ------------------------------------------------------------------


def test_client_send_prints_the_echo_and_exits_0(start_server):
    server = start_server(SERVER)
    result = run_script(CLIENT, "--url", ws_url(server, "/echo"), "--send", "hello there")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello there\n"


def test_client_count_prints_pushed_messages(start_server):
    server = start_server(SERVER, "--interval", "0.05")
    result = run_script(CLIENT, "--url", ws_url(server, "/time"), "--count", "2")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["tick"] for line in result.stdout.splitlines()] == [1, 2]


def test_client_without_a_server_exits_nonzero_with_a_clear_message():
    port = free_port()  # nothing listens there any more
    result = run_script(CLIENT, "--url", f"ws://127.0.0.1:{port}/echo", "--send", "hi")
    assert result.returncode == 1
    assert "connection refused" in result.stderr
    assert "Is Server.py running?" in result.stderr
    assert "Traceback" not in result.stderr


def test_client_refuses_a_non_websocket_url():
    result = run_script(CLIENT, "--url", "http://127.0.0.1:1/echo", "--send", "hi")
    assert result.returncode == 2 and "ws://" in result.stderr
    result = run_script(CLIENT, "--url", "ws://127.0.0.1:99999/echo", "--send", "hi")
    assert result.returncode == 1 and "Port out of range" in result.stderr
    assert "Traceback" not in result.stderr


class InteractiveClient:
    """Client.py run interactively, its stdin a pipe we type into."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / CLIENT), "--url", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(),
            cwd=ROOT,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def type(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_for(self, text: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.02)
        return False

    def quit(self) -> int:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # end of input: the client closes and exits
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def test_interactive_client_prints_pushes_while_waiting_for_input(start_server):
    server = start_server(SERVER)
    client = InteractiveClient(ws_url(server, "/broadcast"))
    try:
        assert client.wait_for("Connected to")

        async def other_member():
            async with connect(ws_url(server, "/broadcast")) as ws:
                await ws.send("pushed to you")  # the client has typed nothing
                assert client.wait_for("pushed to you")
                client.type("typed by you")
                while (message := await ws.recv()) != "typed by you":
                    pass
                return message

        assert run(other_member()) == "typed by you"
    finally:
        assert client.quit() == 0


def test_interactive_client_without_a_server_exits_without_waiting_for_input():
    client = InteractiveClient(f"ws://127.0.0.1:{free_port()}/echo")  # stdin stays open
    try:
        assert client.proc.wait(timeout=10) == 1
    finally:
        client.quit()
    assert client.wait_for("connection refused", timeout=2)


@pytest.mark.parametrize("when", ["connected", "reconnecting"])
def test_interactive_client_exits_at_once_on_ctrl_c(start_server, when):
    server = start_server(SERVER)
    client = InteractiveClient(ws_url(server, "/echo"))
    try:
        assert client.wait_for("Connected to")
        if when == "reconnecting":
            server.stop()
            assert client.wait_for("Reconnecting in")
        client.proc.send_signal(signal.SIGINT)  # no line typed: stdin is still open
        assert client.proc.wait(timeout=10) == 130
    finally:
        client.quit()
    assert not any("Traceback" in line for line in client.lines)


def test_lines_typed_while_offline_arrive_in_order_after_reconnecting(start_server):
    server = start_server(SERVER)
    port = server.port
    client = InteractiveClient(ws_url(server, "/echo"))
    try:
        assert client.wait_for("Connected to")
        server.stop()
        assert client.wait_for("Connection lost")
        for n in range(1, 6):
            client.type(f"offline line {n}")
        assert client.wait_for("Reconnecting in")  # the library's loop, backing off
        start_server(SERVER, port=port)
        assert client.wait_for("offline line 5", timeout=20)
        assert any(line.startswith("Reconnected to") for line in client.lines)
        echoed = [line for line in client.lines if line.startswith("offline line")]
        assert echoed == [f"offline line {n}" for n in range(1, 6)]
    finally:
        assert client.quit() == 0
    assert not any("Traceback" in line for line in client.lines)


def test_reconnection_policy_backs_off_across_short_connections_and_gives_up(capsys):
    """Client.py's policy for the library's loop, fed the events the loop reports."""
    policy = Client.Reconnection("ws://h/echo", timeout=1.0)
    refused = ConnectionRefusedError(111, "Connection refused")
    assert isinstance(policy.process_exception(refused), Client.CannotConnect)  # never connected

    policy.opened()
    delays = [policy.lost()]  # dropped at once: a failure, and a random first delay
    for _ in range(2):
        policy.opened()
        delays.append(policy.lost())
    assert 0 <= delays[0] < Client.BACKOFF_FIRST and delays[1:] == [0.5, 1.0]
    for _ in range(Client.RECONNECT_ATTEMPTS - 4):
        assert policy.process_exception(refused) is None  # dial again after the next delay
    assert policy.failures == 7 and next(policy.delays()) == 2.0  # the series went on
    gave_up = policy.process_exception(refused)
    assert isinstance(gave_up, Client.CannotConnect) and "after 8 failed attempts" in str(gave_up)

    policy.opened()
    policy.opened_at -= Client.STABLE_AFTER  # this one lasted: start afresh
    assert policy.lost() < Client.BACKOFF_FIRST and policy.failures == 0
    for _ in range(Client.RECONNECT_ATTEMPTS - 1):
        policy.opened()
        policy.lost()
    policy.opened()
    with pytest.raises(Client.CannotConnect, match="8 connections in a row"):
        policy.lost()

    forbidden = InvalidStatus(Response(403, "Forbidden", Headers()))
    fresh = Client.Reconnection("ws://h/echo", timeout=1.0)
    fresh.opened()
    assert "HTTP 403" in str(fresh.process_exception(forbidden))  # will not change: stop now
    assert "Reconnecting in 0.5 s (attempt 2)" in capsys.readouterr().err


def test_ctrl_d_while_reconnecting_quits_at_once_and_lists_what_was_not_sent(start_server):
    server = start_server(SERVER)
    client = InteractiveClient(ws_url(server, "/echo"))
    try:
        assert client.wait_for("Connected to")
        server.stop()
        assert client.wait_for("Reconnecting in")  # backing off: 30 s before it gives up
        client.type("typed while the server was down")
        client.proc.stdin.close()  # Ctrl-D
        assert client.proc.wait(timeout=10) == 1
    finally:
        client.quit()
    assert client.wait_for("Not sent (1 line):", timeout=2), client.lines
    assert "  typed while the server was down" in client.lines
    assert not any("Traceback" in line for line in client.lines)


def test_client_backs_off_from_a_server_that_closes_every_connection_at_once():
    """The library restarts its backoff after every handshake: against this
    server it dialed 2,466 times in 5 s. Short-lived connections now count as
    failures, with the backoff going on between them."""
    server = ScriptedServer(handshake.encode_frame(close_frame(1000), handshake.CLOSE))
    with server as url:
        client = InteractiveClient(url)
        try:
            assert client.wait_for("Reconnecting in 1.0 s (attempt 3)")
            time.sleep(1)  # 2 s in all would have been thousands of handshakes
        finally:
            client.quit()
    assert 3 <= server.handshakes <= 5, server.handshakes
    assert not any("Traceback" in line for line in client.lines)


@pytest.mark.parametrize("lines", [1, 500])
def test_piped_lines_all_get_their_replies_before_the_client_closes(start_server, lines):
    """A server stops sending once it reads the close frame, even replies it has
    not written yet: `echo hi | Client.py` printed nothing about half the time."""
    server = start_server(SERVER)
    typed = "".join(f"line {n}\n" for n in range(lines))
    result = run_script(CLIENT, "--url", ws_url(server, "/echo"), input=typed)
    assert result.returncode == 0, result.stderr
    assert result.stdout == typed


def test_a_line_that_is_not_utf8_is_sent_with_replacement_characters(start_server):
    """Sent raw, the library failed the connection and the resend failed it
    again after every reconnect, with a traceback each time, forever."""
    server = start_server(SERVER)
    result = subprocess.run(
        [sys.executable, str(ROOT / CLIENT), "--url", ws_url(server, "/echo")],
        input=b"before\n\xff\xfe bad\nafter\n",
        capture_output=True,
        timeout=30,
        env=child_env(),
    )
    assert result.returncode == 0
    assert result.stdout.decode() == "before\n\ufffd\ufffd bad\nafter\n"
    assert b"warning: line 2 is not UTF-8" in result.stderr
    assert b"Traceback" not in result.stderr and b"Reconnect" not in result.stderr


def test_client_refuses_a_send_argument_that_is_not_utf8():
    result = run_script(CLIENT, "--send", os.fsdecode(b"\xff"))
    assert result.returncode == 2 and "--send" in result.stderr
    assert "Traceback" not in result.stderr


def test_client_stops_quietly_when_its_reader_goes_away(start_server):
    """`Client.py --count 50 | head -1`: a broken pipe, not a traceback."""
    server = start_server(SERVER, "--interval", "0.01")
    client = subprocess.Popen(
        [sys.executable, str(ROOT / CLIENT), "--url", ws_url(server, "/time"), "--count", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert client.stdout.readline().startswith('{"tick": 1')
        client.stdout.close()  # the reader is gone
        assert client.wait(timeout=10) == 1
        errors = client.stderr.read()
    finally:
        client.kill()
        client.wait()
        client.stderr.close()
    assert "Traceback" not in errors and "Exception ignored" not in errors, errors


# -- interoperability: other RFC 6455 implementations ------------------------------


REFUSED_IN_BROWSER = """(url) => new Promise((resolve) => {
    const ws = new WebSocket(url);
    let opened = false;
    ws.onopen = () => { opened = true; };
    ws.onclose = (event) => resolve({opened, code: event.code});
})"""


def test_a_browser_websocket_talks_to_the_server(start_server):
    """Chromium's own RFC 6455 client (the page's `WebSocket` API) on every route."""
    from playwright.sync_api import sync_playwright

    chromium = engine_binary("chromium")
    port = free_port()
    # The page comes from the server's own origin (its 426 answer to plain
    # HTTP; from about:blank, Chromium's local-network rules refuse a
    # connection to a loopback address). Only that origin is allowed.
    allowed = f"http://127.0.0.1:{port}"
    server = start_server(SERVER, "--interval", "0.05", "--allowed-origin", allowed, port=port)
    script = """async (base) => {
        const open = (path) => new Promise((resolve, reject) => {
            const ws = new WebSocket(base + path);
            ws.binaryType = "arraybuffer";
            ws.onopen = () => resolve(ws);
            ws.onerror = () => reject(new Error("could not open " + path));
        });
        const next = (ws) => new Promise((resolve) => {
            ws.onmessage = (event) => resolve(event.data);
        });
        const echo = await open("/echo");
        let reply = next(echo);
        echo.send("héllo from the browser");
        const text = await reply;
        reply = next(echo);
        echo.send(new Uint8Array([0, 1, 2, 255]));
        const binary = Array.from(new Uint8Array(await reply));
        const time = await open("/time");
        const tick = JSON.parse(await next(time)).tick;
        const room = await Promise.all([open("/broadcast"), open("/broadcast")]);
        const heard = next(room[1]);
        room[0].send("to the room");
        const broadcast = await heard;
        const closed = new Promise((resolve) => { echo.onclose = (e) => resolve(e.code); });
        echo.close(1000);
        const code = await closed;
        return {text, binary, tick, broadcast, code};
    }"""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.goto(f"{allowed}/echo")
            seen = page.evaluate(script, server.url)
            # The same server, the same page, but from another origin
            # (localhost is not 127.0.0.1 to a browser): the handshake is refused.
            foreign = browser.new_page()
            foreign.goto(f"http://localhost:{port}/echo")
            refused = foreign.evaluate(REFUSED_IN_BROWSER, server.url + "/echo")
        finally:
            browser.close()
    assert refused == {"opened": False, "code": 1006}
    assert seen == {
        "text": "héllo from the browser",
        "binary": [0, 1, 2, 255],
        "tick": 1,
        "broadcast": "to the room",
        "code": 1000,
    }


class AiohttpEchoServer:
    """Another implementation's WebSocket server (aiohttp), in a thread."""

    def __enter__(self) -> str:
        from aiohttp import WSMsgType, web

        async def echo(request):
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await ws.send_str(f"aiohttp says: {message.data}")
            return ws

        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start():
            app = web.Application()
            app.router.add_get("/echo", echo)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = self.runner.addresses[0][1]
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        assert ready.wait(10)
        return f"ws://127.0.0.1:{self.port}/echo"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_client_talks_to_another_implementations_server():
    with AiohttpEchoServer() as url:
        result = run_script(CLIENT, "--url", url, "--send", "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "aiohttp says: hi\n"


class ScriptedServer:
    """A WebSocket server on a raw socket that sends `first_frames` right behind
    its 101 (in the same TCP segment), then echoes text and answers close. It
    does what real servers may do and Server.py happens not to: ping first,
    fragment a message, speak before the client does; or break the rules."""

    def __init__(self, first_frames: bytes) -> None:
        self.first_frames = first_frames
        self.pongs: list[bytes] = []
        self.handshakes = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed at the end of the test
            with sock:
                try:
                    self._converse(sock)
                except (OSError, handshake.ProtocolError):
                    pass  # the client hung up or broke off: next connection

    def _converse(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        request = handshake.read_http_response(sock).decode("latin-1")
        key = next(
            line.split(":", 1)[1].strip()
            for line in request.split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        self.handshakes += 1
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {handshake.accept_key(key)}\r\n\r\n".encode()
            + self.first_frames
        )
        while True:
            frame = handshake.read_frame(sock)[1]
            if frame.opcode == handshake.PONG:
                self.pongs.append(frame.payload)
            elif frame.opcode == handshake.TEXT:
                sock.sendall(handshake.encode_frame(frame.payload))
            elif frame.opcode == handshake.CLOSE:
                sock.sendall(handshake.encode_frame(close_frame(1000), handshake.CLOSE))
                return

    def __enter__(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def __exit__(self, *exc: object) -> None:
        self.listener.close()


PING_THEN_FRAGMENTS = (
    handshake.encode_frame(b"ping first", handshake.PING)
    + handshake.encode_frame(b"part one, ", handshake.TEXT, fin=False)
    + handshake.encode_frame(b"part two", handshake.CONTINUATION)
)


def test_client_and_handshake_py_cope_with_a_server_that_pings_and_fragments_first():
    server = ScriptedServer(PING_THEN_FRAGMENTS)
    with server as url:
        result = run_script(CLIENT, "--url", url, "--count", "1")
        lines: list[str] = []
        seen = handshake.walk_through(url, "hi", out=lines.append)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "part one, part two\n"
    assert seen["echo"] == "part one, part two" and seen["close_code"] == 1000
    assert "  2 fragments make one message" in lines
    assert server.pongs.count(b"ping first") == 2  # each client ponged the same bytes


def test_client_refuses_a_masked_frame_from_the_server():
    masked = handshake.encode_frame(b"servers never mask", mask=b"abcd")
    with ScriptedServer(masked) as url:
        result = run_script(CLIENT, "--url", url, "--count", "1")
    assert result.returncode == 1
    assert "this client closed the connection: code 1002" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# -- handshake.py: the protocol by hand -----------------------------------------


def test_accept_key_matches_rfc_6455_example():
    assert handshake.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("size", "header_length"), [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)]
)
@pytest.mark.parametrize("mask", [None, b"\x01\x02\x03\x04"])
def test_frame_round_trip(size, header_length, mask):
    payload = bytes(i % 251 for i in range(size))
    wire = handshake.encode_frame(payload, handshake.BINARY, mask=mask)
    frame = handshake.decode_frame(wire)
    assert frame.payload == payload
    assert (frame.fin, frame.opcode, frame.masked) == (True, handshake.BINARY, mask is not None)
    assert frame.header_length == header_length + (4 if mask else 0)
    assert len(wire) == frame.header_length + size
    if mask and size:
        assert wire[frame.header_length :] != payload  # masked on the wire


@pytest.mark.parametrize("cut", [1, 200, 202])  # into the payload, the length, the header
def test_decode_refuses_a_truncated_frame(cut):
    wire = handshake.encode_frame(b"x" * 200)
    with pytest.raises(handshake.ProtocolError):
        handshake.decode_frame(wire[:-cut])


def test_close_code_reads_code_and_reason_and_an_empty_close_as_1005():
    assert handshake.close_code(b"\x03\xe8bye") == (1000, "bye")
    assert handshake.close_code(b"") == (1005, "")
    with pytest.raises(handshake.ProtocolError):
        handshake.close_code(b"\x03")


def test_walk_through_refuses_a_frame_it_could_not_hold():
    """A server may claim a 2**62-byte frame: reading it was a MemoryError traceback."""
    huge = b"\x81\x7f" + (2**62).to_bytes(8, "big") + b"not that much"
    with ScriptedServer(huge) as url, pytest.raises(handshake.ProtocolError, match="at most"):
        handshake.walk_through(url, "hi", out=lambda line: None)


def test_reading_an_http_answer_that_never_ends_stops_at_a_limit():
    """Before, it read one byte at a time for as long as the server kept talking."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    junk = b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-Junk: aaaaaaaa\r\n" * 10_000
    writer = threading.Thread(target=theirs.sendall, args=(junk,), daemon=True)
    writer.start()
    try:
        with pytest.raises(handshake.ProtocolError, match="no end to the HTTP answer"):
            handshake.read_http_response(ours)
    finally:
        ours.close()
        writer.join(5)
        theirs.close()


def test_handshake_py_refuses_text_that_is_not_utf8():
    result = run_script("WebSockets/handshake.py", "--text", os.fsdecode(b"\xff"))
    assert result.returncode == 2 and "--text" in result.stderr
    assert "Traceback" not in result.stderr


def test_walk_through_talks_to_the_real_server(start_server):
    server = start_server(SERVER)
    lines: list[str] = []
    seen = handshake.walk_through(ws_url(server, "/echo"), "héllo", out=lines.append)
    assert seen == {
        "accept_ok": True,
        "echo": "héllo",
        "echo_masked": False,
        "sent_bytes": 2 + 4 + len("héllo".encode()),
        "close_code": 1000,
    }
    assert any("101 Switching Protocols" in line for line in lines)


def test_walk_through_script_reports_a_missing_server_clearly():
    result = run_script("WebSockets/handshake.py", "--url", f"ws://127.0.0.1:{free_port()}/echo")
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


# -- push vs polling --------------------------------------------------------------


def test_polling_and_push_each_deliver_every_update_and_count_the_bytes():
    polling, push = run(polling_vs_websocket.compare(updates=15, poll_ms=30, mean_gap_ms=20), 60)
    assert len(polling.latencies_ms) == len(push.latencies_ms) == 15
    assert push.exchanges == 15
    assert polling.exchanges >= 2
    assert all(latency >= 0 for latency in polling.latencies_ms + push.latencies_ms)
    # What the relay counted downstream for push holds at least every update's
    # JSON payload plus a 2-byte frame header each, and the handshake answer.
    payloads = 15 * len(json.dumps({"seq": 1, "symbol": "ACME", "price": 9}))
    assert push.traffic.down > payloads + 2 * 15 + len("HTTP/1.1 101 Switching Protocols")
    assert push.traffic.up > len("GET / HTTP/1.1\r\n")
    assert polling.traffic.up >= polling.exchanges * len("GET /updates?after=0 HTTP/1.1\r\n")


@pytest.mark.parametrize("script", ["polling_vs_websocket.py", "demo.py"])
def test_an_unusable_plot_path_is_refused_before_the_run(script, tmp_path):
    result = run_script(f"WebSockets/{script}", "--plot", str(tmp_path))  # a directory
    assert result.returncode == 2 and "--plot" in result.stderr
    assert "Traceback" not in result.stderr


# -- the scripts ------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        "Server.py",
        "Client.py",
        "handshake.py",
        "polling_vs_websocket.py",
        "slow_reader.py",
        "demo.py",
        "bench.py",
    ],
)
def test_every_script_has_help(script):
    result = run_script(f"WebSockets/{script}", "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


def test_demo_prints_the_lesson(tmp_path):
    plot = tmp_path / "push.png"
    result = run_script(
        "WebSockets/demo.py",
        "--updates",
        "20",
        "--mean-gap-ms",
        "30",
        "--poll-ms",
        "60",
        "--plot",
        str(plot),
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lesson: push delivered updates in" in result.stdout
    assert "code 1009" in result.stdout
    assert plot.stat().st_size > 10_000
