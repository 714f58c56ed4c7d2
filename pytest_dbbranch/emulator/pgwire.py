"""The few PostgreSQL wire-protocol messages the proxy itself must read or write.

Only the handshake is parsed; once a session is logged in, the proxy relays bytes untouched.
"""

from __future__ import annotations

import socket
import struct

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
TLS_RECORD_HANDSHAKE = 0x16
_MAX_STARTUP = 10_000
_MAX_HANDSHAKE_MESSAGE = 1 << 20


class ProtocolError(Exception):
    """The peer sent something that is not the PostgreSQL protocol we expect."""


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed the connection during the handshake")
        data += chunk
    return bytes(data)


def read_startup_packet(sock: socket.socket) -> bytes:
    head = recv_exact(sock, 4)
    (length,) = struct.unpack("!I", head)
    if not 8 <= length <= _MAX_STARTUP:
        raise ProtocolError(f"invalid startup packet length {length}")
    return head + recv_exact(sock, length - 4)


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = recv_exact(sock, 5)
    kind = head[:1]
    (length,) = struct.unpack("!I", head[1:])
    if not 4 <= length <= _MAX_HANDSHAKE_MESSAGE:
        raise ProtocolError(f"invalid message length {length}")
    return kind, recv_exact(sock, length - 4)


def encode_message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def error_response(sqlstate: str, message: str, detail: str | None = None, severity: str = "FATAL") -> bytes:
    """An ErrorResponse message, as the server would send it."""
    fields = [(b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", message)]
    if detail:
        fields.append((b"D", detail))
    payload = b"".join(code + text.encode("utf-8") + b"\0" for code, text in fields) + b"\0"
    return encode_message(b"E", payload)


def parse_startup(packet: bytes) -> tuple[int, dict[str, str]]:
    (version,) = struct.unpack("!I", packet[4:8])
    items = packet[8:].split(b"\0")
    params: dict[str, str] = {}
    for index in range(0, len(items) - 1, 2):
        key = items[index]
        if not key:
            break
        params[key.decode("utf-8", "replace")] = items[index + 1].decode("utf-8", "replace")
    return version, params


def startup_packet(version: int, params: dict[str, str]) -> bytes:
    body = struct.pack("!I", version)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body
