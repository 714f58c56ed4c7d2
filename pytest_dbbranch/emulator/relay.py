"""Moving bytes both ways between a logged-in client and its backing session.

One thread does both directions with a poll loop, because a TLS socket must not be read and
written from two threads at once.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import threading
from collections.abc import Callable

#: How long a loop waits before it looks at its stop flag again.
POLL_SECONDS = 0.25
_BUFFER_LIMIT = 1 << 20
_CHUNK = 65536


def relay(
    client: socket.socket,
    backend: socket.socket,
    owed_to_client: bytes,
    stopping: threading.Event,
    touch: Callable[[bool], None] = lambda from_client: None,
) -> None:
    """Until either side hangs up or ``stopping`` is set; ``owed_to_client`` goes out first.

    ``touch(from_client)`` is called whenever bytes arrive, so an idle compute can be told
    from a busy one (a client that spoke last is waiting for an answer)."""
    client.setblocking(False)
    backend.setblocking(False)
    outgoing = {client: bytearray(owed_to_client), backend: bytearray()}
    peer = {client: backend, backend: client}
    by_fd = {client.fileno(): client, backend.fileno(): backend}
    with selectors.DefaultSelector() as selector:
        while not stopping.is_set():
            for sock in (client, backend):
                wanted = 0
                if len(outgoing[peer[sock]]) < _BUFFER_LIMIT:
                    wanted |= selectors.EVENT_READ
                if outgoing[sock]:
                    wanted |= selectors.EVENT_WRITE
                _interest(selector, sock, wanted)
            for key, mask in selector.select(timeout=POLL_SECONDS):
                sock = by_fd[key.fd]
                if mask & selectors.EVENT_READ:
                    touch(sock is client)
                if mask & selectors.EVENT_WRITE and not _send_some(sock, outgoing[sock]):
                    return
                if mask & selectors.EVENT_READ and not _receive(sock, outgoing[peer[sock]]):
                    _flush(peer[sock], outgoing[peer[sock]])
                    return


def _interest(selector: selectors.BaseSelector, sock: socket.socket, events: int) -> None:
    key = selector.get_map().get(sock)
    if events == 0:
        if key is not None:
            selector.unregister(sock)
    elif key is None:
        selector.register(sock, events)
    elif key.events != events:
        selector.modify(sock, events)


def _receive(sock: socket.socket, into: bytearray) -> bool:
    """Read what is there; False once the peer is gone."""
    while True:
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        except OSError:
            return False
        if not data:
            return False
        into += data
        # Decrypted bytes buffered inside TLS never wake the selector: drain them now.
        if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return True


def _send_some(sock: socket.socket, buffer: bytearray) -> bool:
    try:
        sent = sock.send(buffer[:_CHUNK])
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return True
    except OSError:
        return False
    del buffer[:sent]
    return True


def _flush(sock: socket.socket, buffer: bytearray) -> None:
    """Best effort: hand over what the closing side said last (often an error message)."""
    if not buffer:
        return
    with contextlib.suppress(OSError):
        sock.settimeout(2.0)
        sock.sendall(bytes(buffer))
