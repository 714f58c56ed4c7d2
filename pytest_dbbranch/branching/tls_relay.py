"""A local plain-text door to a server that requires TLS, for the PostgreSQL client programs.

``psql``, ``pg_restore`` and ``pg_dump`` restore and copy sources; the ones shipped with the
embedded server are built without SSL, and Lakebase accepts TLS only. Rather than depend on
how the client programs were built, the plugin relays their session: it listens on a
loopback port, and for each connection asks the server for TLS (PostgreSQL's SSLRequest),
wraps the socket and pumps bytes both ways. The programs connect with ``sslmode=disable`` to
the relay; the server sees a TLS session checked as ``sslmode`` says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator

from ..conninfo import ServerAddress

#: PostgreSQL's SSLRequest: length 8, then the magic code 80877103.
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
NEEDS_TLS = ("require", "verify-ca", "verify-full")
#: How long a connection is retried while the server's compute starts.
WAKE_SECONDS = 30.0


@contextlib.contextmanager
def tls_relay(address: ServerAddress) -> Iterator[ServerAddress]:
    """``address`` itself when it does not require TLS; else the address of a relay that
    lives for the ``with`` block."""
    mode = dict(address.options).get("sslmode", "prefer")
    if mode not in NEEDS_TLS or not address.host or address.host.startswith("/"):
        yield address
        return
    context = ssl.create_default_context()
    if mode != "verify-full":
        context.check_hostname = False
    if mode == "require":
        context.verify_mode = ssl.CERT_NONE
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    upstream = (address.host, address.port or 5432)

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_relay, args=(client, upstream, context), daemon=True).start()

    thread = threading.Thread(target=serve, name="dbbranch-tls-relay", daemon=True)
    thread.start()
    options = (*((k, v) for k, v in address.options if k != "sslmode"), ("sslmode", "disable"))
    try:
        yield dataclasses.replace(address, host="127.0.0.1", port=listener.getsockname()[1], options=options)
    finally:
        stop.set()
        listener.close()


def _relay(client: socket.socket, upstream: tuple[str, int], context: ssl.SSLContext) -> None:
    with client:
        tls = _open(upstream, context)
        if tls is None:
            return
        with tls:
            try:
                _pump(client, tls)
            except (OSError, ssl.SSLError):
                return


def _open(upstream: tuple[str, int], context: ssl.SSLContext) -> ssl.SSLSocket | None:
    """A TLS session to the server, retried for a while: a compute that is starting or waking
    from scale-to-zero refuses or drops the first connections (the plugin's own connections
    retry the same way)."""
    deadline = time.monotonic() + WAKE_SECONDS
    delay = 0.2
    while True:
        raw: socket.socket | None = None
        try:
            raw = socket.create_connection(upstream, timeout=30)
            raw.sendall(SSL_REQUEST)
            if raw.recv(1) != b"S":
                raw.close()
                return None  # the server does not speak TLS: the client program says so
            tls = context.wrap_socket(raw, server_hostname=upstream[0])
            tls.settimeout(None)
            return tls
        except (OSError, ssl.SSLError):
            if raw is not None:
                raw.close()
            if time.monotonic() + delay > deadline:
                return None
        time.sleep(delay)
        delay = min(delay * 2, 3.0)


def _pump(client: socket.socket, tls: ssl.SSLSocket) -> None:
    """Bytes both ways until either side closes. One thread per session: an SSL socket is not
    read and written from two threads at once."""
    while True:
        ready = [tls] if tls.pending() else select.select([client, tls], [], [], 300)[0]
        if not ready:
            return
        for sock in ready:
            data = sock.recv(1 << 16)
            if not data:
                return
            (tls if sock is client else client).sendall(data)
