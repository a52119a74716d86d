"""The WebSocket protocol by hand, on a raw socket: what the library does for you.

It opens a TCP connection to our Server.py, sends the HTTP Upgrade request,
checks the Sec-WebSocket-Accept answer, sends one masked text frame, reads the
echo and decodes it (answering a ping, joining fragments), then closes,
printing every byte with what it means. A teaching tool, not a client to
build on. See the README's "The upgrade handshake" and "Frames and masking".

    python WebSockets/Server.py --port 8765 &
    python WebSockets/handshake.py --url ws://127.0.0.1:8765/echo --text "Hello"
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import socket
import struct
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

# RFC 6455 section 1.3: the server proves it read the key by hashing it with
# this fixed GUID. A plain HTTP server would never produce the right answer.
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RFC_EXAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # from RFC 6455 section 1.3
RFC_EXAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# Opcodes (RFC 6455 section 5.2)
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
OPCODE_NAMES = {
    0x0: "continuation",
    0x1: "text",
    0x2: "binary",
    0x8: "close",
    0x9: "ping",
    0xA: "pong",
}

# Payload length encodings: 7 bits, or 126 + 16 bits, or 127 + 64 bits.
MAX_7BIT_LENGTH = 125
LENGTH_16BIT = 126
LENGTH_64BIT = 127
MAX_16BIT_LENGTH = 0xFFFF
NO_STATUS_CODE = 1005  # reported, never sent, for a close frame that carries no code
MAX_PAYLOAD = 16 * 1024 * 1024  # bytes we read in one frame; a server may claim 2**63 - 1
MAX_HTTP_HEAD = 64 * 1024  # bytes of HTTP answer before the blank line that must end it


class ProtocolError(Exception):
    """The bytes on the wire are not what RFC 6455 allows."""


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value a server must send back for this key."""
    digest = hashlib.sha1((key + WEBSOCKET_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def new_key() -> str:
    """A Sec-WebSocket-Key: 16 random bytes, base64-encoded (RFC 6455 section 4.1)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def upgrade_request(host: str, port: int, path: str, key: str, version: str = "13") -> bytes:
    """The client's opening handshake: an HTTP/1.1 GET asking to switch protocols."""
    if ":" in host:  # an IPv6 address goes in brackets, as in a URL
        host = f"[{host}]"
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: {version}\r\n"
        "\r\n"
    ).encode("ascii")


def apply_mask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, repeated. Masking and unmasking are the same step."""
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes
    masked: bool
    header_length: int  # bytes before the payload: 2, 4 or 10, plus 4 if masked

    @property
    def opcode_name(self) -> str:
        return OPCODE_NAMES.get(self.opcode, f"reserved 0x{self.opcode:x}")


def encode_frame(
    payload: bytes, opcode: int = TEXT, fin: bool = True, mask: bytes | None = None
) -> bytes:
    """One frame. Clients must pass a mask (4 random bytes); servers must not."""
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask is not None else 0
    length = len(payload)
    if length <= MAX_7BIT_LENGTH:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length <= MAX_16BIT_LENGTH:
        header = struct.pack("!BBH", first, mask_bit | LENGTH_16BIT, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | LENGTH_64BIT, length)
    if mask is None:
        return header + payload
    if len(mask) != 4:
        raise ValueError("a mask is exactly 4 bytes")
    return header + mask + apply_mask(payload, mask)


def decode_frame(data: bytes) -> Frame:
    """Parse one whole frame from the start of `data` (which must hold all of it)."""
    if len(data) < 2:
        raise ProtocolError("a frame has at least 2 bytes")
    first, second = data[0], data[1]
    if first & 0x70:
        raise ProtocolError("reserved bits set, but no extension was negotiated")
    masked = bool(second & 0x80)
    length = second & 0x7F
    offset = 2
    extra = {LENGTH_16BIT: 2, LENGTH_64BIT: 8}.get(length, 0) + (4 if masked else 0)
    if len(data) < offset + extra:
        raise ProtocolError(f"the frame header needs {offset + extra} bytes, only {len(data)}")
    if length == LENGTH_16BIT:
        (length,) = struct.unpack_from("!H", data, offset)
        offset += 2
    elif length == LENGTH_64BIT:
        (length,) = struct.unpack_from("!Q", data, offset)
        offset += 8
        if length >> 63:
            raise ProtocolError("the top bit of a 64-bit length must be 0")
    mask = b""
    if masked:
        mask = data[offset : offset + 4]
        offset += 4
    payload = data[offset : offset + length]
    if len(payload) != length:
        raise ProtocolError(f"frame says {length} payload bytes, only {len(payload)} present")
    if masked:
        payload = apply_mask(payload, mask)
    return Frame(bool(first & 0x80), first & 0x0F, payload, masked, offset)


def read_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(min(count - len(data), 65536))
        if not chunk:
            raise ProtocolError(f"connection closed after {len(data)} of {count} bytes")
        data += chunk
    return bytes(data)


def read_frame(sock: socket.socket) -> tuple[bytes, Frame]:
    """Read one frame off the socket: the raw bytes and their decoding."""
    head = read_exactly(sock, 2)
    length = head[1] & 0x7F
    if length == LENGTH_16BIT:
        head += read_exactly(sock, 2)
        (length,) = struct.unpack_from("!H", head, 2)
    elif length == LENGTH_64BIT:
        head += read_exactly(sock, 8)
        (length,) = struct.unpack_from("!Q", head, 2)
    if length > MAX_PAYLOAD:  # read it and we would try to hold it all in memory
        raise ProtocolError(f"a frame of {length:,} bytes: this tool reads {MAX_PAYLOAD:,} at most")
    if head[1] & 0x80:
        head += read_exactly(sock, 4)  # the masking key
    raw = head + read_exactly(sock, length)
    return raw, decode_frame(raw)


def read_http_response(sock: socket.socket) -> bytes:
    """The server's HTTP answer, up to and including the blank line that ends it.

    Read one byte at a time so that nothing after the blank line is taken off
    the socket: a server may send its first frame right behind the 101, in the
    same TCP segment, and that frame belongs to `read_frame`.
    """
    data = bytearray()
    while not data.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ProtocolError("connection closed during the handshake")
        data += byte
        if len(data) > MAX_HTTP_HEAD:
            raise ProtocolError(f"no end to the HTTP answer after {MAX_HTTP_HEAD:,} bytes")
    return bytes(data)


def close_code(payload: bytes) -> tuple[int, str]:
    """A close frame's status code and reason; an empty payload means 1005 (none given)."""
    if not payload:
        return NO_STATUS_CODE, ""
    if len(payload) == 1:
        raise ProtocolError("a close frame's payload is empty or at least 2 bytes")
    (code,) = struct.unpack("!H", payload[:2])
    return code, payload[2:].decode("utf-8", errors="replace")


# -- printing ---------------------------------------------------------------------


def hex_bytes(data: bytes, limit: int = 24) -> str:
    shown = data[:limit].hex(" ")
    return shown + (f" ... ({len(data)} bytes)" if len(data) > limit else "")


def explain_frame(raw: bytes, frame: Frame, direction: str) -> list[str]:
    first, second = raw[0], raw[1]
    lines = [f"{direction} {len(raw)} bytes: {hex_bytes(raw)}"]
    lines.append(
        f"  byte 0  {first:08b}  FIN={int(frame.fin)} RSV=000 opcode=0x{frame.opcode:x} "
        f"({frame.opcode_name})"
    )
    code = second & 0x7F
    how = {LENGTH_16BIT: "length in the next 2 bytes", LENGTH_64BIT: "length in the next 8 bytes"}
    lines.append(
        f"  byte 1  {second:08b}  MASK={int(frame.masked)} length code={code} "
        f"({how.get(code, f'payload is {code} bytes')})"
    )
    at = 2
    if code in how:
        size = 2 if code == LENGTH_16BIT else 8
        field = raw[at : at + size].hex(" ")
        lines.append(f"  bytes {at}-{at + size - 1}  {field}  = {len(frame.payload)} bytes")
        at += size
    if frame.masked:
        lines.append(f"  bytes {at}-{at + 3}  {raw[at : at + 4].hex(' ')}  masking key")
        at += 4
        lines.append(f"  payload on the wire (masked): {hex_bytes(raw[at:])}")
    lines.append(f"  payload: {frame.payload[:60]!r}")
    return lines


def read_message(sock: socket.socket, out=print) -> Frame:
    """Read frames, printing each, until one whole data message has arrived.

    Real servers may ping before they answer (we pong with the same bytes, as
    RFC 6455 section 5.5.2 requires), split a message into fragments (FIN=0,
    then continuation frames) or close instead of answering.
    """
    fragments: list[Frame] = []
    while True:
        raw, frame = read_frame(sock)
        for line in explain_frame(raw, frame, "<"):
            out("  " + line)
        if frame.opcode == PING:
            out("  a ping: answered with a pong carrying the same bytes")
            sock.sendall(encode_frame(frame.payload, PONG, mask=os.urandom(4)))
        elif frame.opcode == CLOSE:
            code, reason = close_code(frame.payload)
            why = f" ({reason})" if reason else ""
            raise ProtocolError(f"the server closed the connection: code {code}{why}")
        elif frame.opcode in (TEXT, BINARY, CONTINUATION):
            fragments.append(frame)
            if frame.fin:
                break
    if len(fragments) > 1:
        out(f"  {len(fragments)} fragments make one message")
    payload = b"".join(f.payload for f in fragments)
    first = fragments[0]
    return Frame(True, first.opcode, payload, any(f.masked for f in fragments), first.header_length)


def walk_through(url: str, text: str, out=print) -> dict[str, object]:
    """Do the whole exchange against a server, printing it; return what was seen."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"need a ws:// URL with a host, got {url!r} (wss:// would need TLS)")
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    example = accept_key(RFC_EXAMPLE_KEY)
    verdict = "match" if example == RFC_EXAMPLE_ACCEPT else "MISMATCH"
    out(f"RFC 6455's example: accept_key({RFC_EXAMPLE_KEY!r}) = {example!r}")
    out(f"  the RFC says {RFC_EXAMPLE_ACCEPT!r}: {verdict}")

    key = new_key()
    request = upgrade_request(parts.hostname, port, path, key)
    with socket.create_connection((parts.hostname, port), timeout=10) as sock:
        out("")
        out(
            "1. The opening handshake: an ordinary HTTP request asking to switch "
            f"protocols ({len(request)} bytes)"
        )
        for line in request.decode().split("\r\n")[:-2]:
            out(f"  > {line}")
        sock.sendall(request)
        response = read_http_response(sock)
        out(f"  the answer ({len(response)} bytes):")
        headers = {}
        for line in response.decode("latin-1").split("\r\n")[:-2]:
            out(f"  < {line}")
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        status_line = response.split(b"\r\n", 1)[0].decode("latin-1")
        if status_line.split(" ")[1:2] != ["101"]:
            raise ProtocolError(f"expected 101 Switching Protocols, got {status_line!r}")
        expected = accept_key(key)
        accepted = headers.get("sec-websocket-accept") == expected
        out(
            f"  Sec-WebSocket-Accept should be base64(sha1(key + GUID)) = {expected}: "
            + ("ok" if accepted else "WRONG")
        )
        if not accepted:
            raise ProtocolError("the server's Sec-WebSocket-Accept does not match our key")

        out("")
        out("2. One text frame, masked as every client frame must be")
        mask = os.urandom(4)
        sent = encode_frame(text.encode("utf-8"), TEXT, mask=mask)
        for line in explain_frame(sent, decode_frame(sent), ">"):
            out("  " + line)
        sock.sendall(sent)

        out("")
        out("3. The server's frame back: not masked (servers never mask)")
        echo = read_message(sock, out)

        out("")
        out("4. The closing handshake: close frame with code 1000 (normal closure)")
        sock.sendall(encode_frame(struct.pack("!H", 1000), CLOSE, mask=os.urandom(4)))
        while True:  # frames the server sent before it saw our close still arrive first
            raw_close, close = read_frame(sock)
            if close.opcode == CLOSE:
                break
            out(f"  < {hex_bytes(raw_close)}  opcode=0x{close.opcode:x} ({close.opcode_name})")
        code, reason = close_code(close.payload)
        out(
            f"  < {hex_bytes(raw_close)}  opcode=0x8 (close), code {code}"
            + (f" ({reason})" if reason else "")
        )

    out("")
    out("5. How the length is written, by payload size")
    for size in (0, 125, 126, 65535, 65536):
        header = encode_frame(b"x" * size)[: -size or None]
        out(f"  {size:>6} bytes: header {header.hex(' ')}")
    return {
        "accept_ok": accepted,
        "echo": echo.payload.decode("utf-8", errors="replace"),
        "echo_masked": echo.masked,
        "sent_bytes": len(sent),
        "close_code": code,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The WebSocket handshake and frames, by hand.")
    parser.add_argument(
        "--url", default="ws://127.0.0.1:8765/echo", help="an /echo route of Server.py"
    )
    parser.add_argument("--text", default="Hello, WebSocket!", help="the message to send")
    args = parser.parse_args(argv)
    try:
        args.text.encode("utf-8")
    except UnicodeEncodeError:
        parser.error("--text must be text: its bytes are not valid UTF-8")
    try:
        walk_through(args.url, args.text)
    except (OSError, ProtocolError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
