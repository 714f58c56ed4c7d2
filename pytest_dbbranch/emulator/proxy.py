"""A PostgreSQL wire-protocol front door that logs clients in the way Lakebase does.

Real Lakebase takes a short-lived OAuth token as the password, insists on TLS and routes the
session to the branch's compute. A suite that runs against the emulator has to go through that
same login (token as password, ``sslmode=require``, expiry enforced at login only), or it would
pass offline and fail on the real service. So the proxy finishes the client's handshake itself,
asks an ``Authenticator`` where the session goes (which branch's server, as which role), and
only then opens a plain session there and relays bytes untouched. Each endpoint has its own local
address (127.0.0.N:5432), and the address a session arrives on says which endpoint it wants.

One thread per client connection: it does the login here, then hands both sockets to ``relay``.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..conninfo import ServerAddress
from .pgwire import (
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    SSL_REQUEST,
    TLS_RECORD_HANDSHAKE,
    ProtocolError,
    encode_message,
    error_response,
    parse_startup,
    read_message,
    read_startup_packet,
    startup_packet,
)
from .relay import POLL_SECONDS, relay
from .scram import ScramClient
from .storage import Target

logger = logging.getLogger(__name__)


class ProxyRefusal(Exception):
    """Why a login is refused, carried to the client as a FATAL ErrorResponse."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class Login:
    """What a client offered, and where it arrived: the local address picks the endpoint."""

    user: str
    database: str
    password: str
    local_host: str
    options: str
    tls: bool


@dataclass(frozen=True)
class Admission:
    """Where the session goes, and the tag (the endpoint's name) used to find it again later."""

    target: Target
    tag: str


#: Login -> Admission; raises ProxyRefusal.
Authenticator = Callable[[Login], Admission]


class _BackendRefused(Exception):
    """The backing server answered the login with an ErrorResponse, relayed as is."""

    def __init__(self, raw: bytes) -> None:
        super().__init__("backing server refused the session")
        self.raw = raw


class _Connection:
    """Sockets of one client session, reachable from stop() so it can cut them."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.backend: socket.socket | None = None
        self.tag = ""
        self.cancel_key = b""
        self.last_active = time.monotonic()
        #: The client spoke last: a query is running, which keeps the compute awake.
        self.waiting = False

    def touch(self, from_client: bool) -> None:
        self.last_active = time.monotonic()
        self.waiting = from_client

    def shutdown(self) -> None:
        for sock in (self.client, self.backend):
            if sock is not None:
                with contextlib.suppress(OSError, ValueError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if isinstance(self.client, ssl.SSLSocket):
            # A TLS close without close_notify reads as "unexpected eof" to OpenSSL 3, which
            # makes libpq report a failed cancel request even though it went through.
            with contextlib.suppress(OSError, ValueError):
                self.client.settimeout(0.2)
                self.client.unwrap().close()
        for sock in (self.client, self.backend):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


class PgProxy:
    """Listens on any number of local addresses and hands each authenticated session to the
    server its endpoint leads to."""

    def __init__(
        self,
        authenticate: Authenticator,
        *,
        tls: ssl.SSLContext | None = None,
        tls_required: bool = True,
        handshake_timeout: float = 10.0,
    ) -> None:
        self._authenticate = authenticate
        self._tls = tls
        self._tls_required = tls_required and tls is not None
        self._handshake_timeout = handshake_timeout
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._listeners: dict[tuple[str, int], socket.socket] = {}
        self._live: dict[threading.Thread, _Connection] = {}
        self._cancel_keys: dict[bytes, Target] = {}

    @property
    def tls_enabled(self) -> bool:
        return self._tls is not None

    def listen(self, host: str, port: int = 0) -> int:
        """Start accepting on (host, port); returns the port. Raises OSError when taken."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Lets an address whose last sessions linger in TIME_WAIT be reused; on Linux it never
        # lets two listeners share an address and port (that would take SO_REUSEPORT).
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        bound: int = listener.getsockname()[1]
        with self._lock:
            self._listeners[(host, bound)] = listener
        return bound

    def unlisten(self, host: str, port: int) -> None:
        with self._lock:
            listener = self._listeners.pop((host, port), None)
        if listener is not None:
            listener.close()

    def start(self) -> None:
        self._acceptor = threading.Thread(target=self._accept_loop, name="pgproxy-accept", daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None
        with self._lock:
            listeners = list(self._listeners.values())
            self._listeners.clear()
        for listener in listeners:
            listener.close()
        self.cut(lambda tag: True)
        with self._lock:
            live = list(self._live)
        for thread in live:
            thread.join(timeout=10)

    def cut(self, which: Callable[[str], bool]) -> None:
        """End the sessions whose tag matches: a deleted branch, a suspended compute."""
        with self._lock:
            doomed = [c for c in self._live.values() if which(c.tag)]
        for connection in doomed:
            connection.shutdown()

    def last_activity(self) -> dict[str, float]:
        """Per tag, the latest moment any of its sessions was busy (monotonic clock)."""
        out: dict[str, float] = {}
        moment = time.monotonic()
        with self._lock:
            for connection in self._live.values():
                if connection.tag:
                    last = moment if connection.waiting else connection.last_active
                    out[connection.tag] = max(out.get(connection.tag, 0.0), last)
        return out

    # -- accepting -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        # One thread polls every listener, so adding or closing one needs no thread of its own.
        while not self._stopping.is_set():
            with self._lock:
                listeners = list(self._listeners.values())
            if not listeners:
                self._stopping.wait(POLL_SECONDS)
                continue
            try:
                ready, _w, _x = select.select(listeners, [], [], POLL_SECONDS)
            except (OSError, ValueError):
                continue  # a listener was closed under us; take the new list
            for listener in ready:
                try:
                    sock, _peer = listener.accept()
                except OSError:
                    continue
                _no_delay(sock)
                connection = _Connection(sock)
                thread = threading.Thread(
                    target=self._serve, args=(connection,), name="pgproxy-conn", daemon=True
                )
                with self._lock:
                    self._live[thread] = connection
                thread.start()

    def _serve(self, connection: _Connection) -> None:
        try:
            self._session(connection)
        except (OSError, ConnectionError, ProtocolError, ValueError, UnicodeError) as exc:
            logger.debug("proxy session ended: %s", exc)
        finally:
            connection.close()
            with self._lock:
                self._live.pop(threading.current_thread(), None)
                self._cancel_keys.pop(connection.cancel_key, None)

    # -- one session -----------------------------------------------------------------------

    def _session(self, connection: _Connection) -> None:
        connection.client.settimeout(self._handshake_timeout)
        local_host = str(connection.client.getsockname()[0])
        startup = self._negotiate(connection)
        if startup is None:
            return
        client = connection.client
        version, params = parse_startup(startup)
        if version >> 16 != 3:
            client.sendall(
                error_response("0A000", f"unsupported frontend protocol {version >> 16}.{version & 0xFFFF}")
            )
            return
        tls = isinstance(client, ssl.SSLSocket)
        if self._tls_required and not tls:
            client.sendall(error_response("28000", "SSL/TLS required", "Connect with sslmode=require."))
            return
        user = params.get("user", "")
        database = params.get("database") or user
        client.sendall(encode_message(b"R", struct.pack("!I", 3)))
        kind, payload = read_message(client)
        if kind != b"p":
            client.sendall(error_response("08P01", "expected a password message"))
            return
        password = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
        login = Login(user, database, password, local_host, params.get("options", ""), tls)
        try:
            admission = self._authenticate(login)
        except ProxyRefusal as refusal:
            client.sendall(error_response(refusal.sqlstate, refusal.message, refusal.detail))
            return
        connection.tag = admission.tag
        # The endpoint option is ours (routing without SNI); the server would refuse it.
        extra = {k: v for k, v in params.items() if k not in ("user", "database")}
        if "endpoint=" in extra.get("options", ""):
            extra.pop("options")
        try:
            backend, pending = self._open_backend(connection, version, extra, admission.target)
        except ProxyRefusal as refusal:
            client.sendall(error_response(refusal.sqlstate, refusal.message, refusal.detail))
            return
        except _BackendRefused as refused:
            client.sendall(refused.raw)
            return
        relay(client, backend, pending, self._stopping, connection.touch)

    def _negotiate(self, connection: _Connection) -> bytes | None:
        """Answer the encryption requests and return the StartupMessage (None: nothing to serve)."""
        for _attempt in range(4):
            sock = connection.client
            if not isinstance(sock, ssl.SSLSocket):
                first = sock.recv(1, socket.MSG_PEEK)
                if not first:
                    return None
                if first[0] == TLS_RECORD_HANDSHAKE:
                    # sslnegotiation=direct: TLS from the first byte, no SSLRequest.
                    if self._tls is None:
                        return None
                    connection.client = self._tls.wrap_socket(sock, server_side=True)
                    continue
            packet = read_startup_packet(sock)
            (code,) = struct.unpack("!I", packet[4:8])
            if code == SSL_REQUEST and not isinstance(sock, ssl.SSLSocket):
                if self._tls is None:
                    sock.sendall(b"N")
                    continue
                sock.sendall(b"S")
                connection.client = self._tls.wrap_socket(sock, server_side=True)
                continue
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                sock.sendall(b"N")
                continue
            if code == CANCEL_REQUEST:
                self._forward_cancel(packet)
                return None
            return packet
        raise ProtocolError("too many encryption requests")

    def _forward_cancel(self, packet: bytes) -> None:
        """The key came from a backing server through us; only that server can honour it."""
        with self._lock:
            target = self._cancel_keys.get(packet[8:])
        if target is None:
            return
        with contextlib.suppress(OSError), self._connect(target.address) as sock:
            sock.sendall(packet)

    def _connect(self, address: ServerAddress) -> socket.socket:
        host, port = address.host, address.port or 5432
        if host is None or host.startswith("/"):
            folder = host or next((d for d in ("/var/run/postgresql", "/tmp") if Path(d).is_dir()), "/tmp")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._handshake_timeout)
            try:
                sock.connect(f"{folder}/.s.PGSQL.{port}")
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection((host, port), timeout=self._handshake_timeout)

    def _open_backend(
        self, connection: _Connection, version: int, extra: dict[str, str], target: Target
    ) -> tuple[socket.socket, bytes]:
        """Log in to the backing server; returns the socket and the bytes owed to the client."""
        address = target.address
        try:
            sock = self._connect(address)
        except OSError as exc:
            raise ProxyRefusal("08006", f"could not connect to the branch's server: {exc}") from None
        connection.backend = sock
        _no_delay(sock)
        user = address.user or getpass.getuser()
        sock.sendall(startup_packet(version, {"user": user, "database": target.database, **extra}))
        scram: ScramClient | None = None
        owed = bytearray()
        authenticated = False
        while True:
            kind, body = read_message(sock)
            if kind == b"E":
                raise _BackendRefused(bytes(owed) + encode_message(kind, body))
            if authenticated or kind in (b"v", b"N"):
                owed += encode_message(kind, body)
                if kind == b"K":
                    connection.cancel_key = body
                    with self._lock:
                        self._cancel_keys[body] = target
                if kind == b"Z":
                    return sock, bytes(owed)
                continue
            if kind != b"R" or len(body) < 4:
                raise ProtocolError(f"unexpected message {kind!r} from the backing server")
            (code,) = struct.unpack("!I", body[:4])
            if code == 0:
                owed += encode_message(kind, body)
                authenticated = True
                continue
            password = address.password
            if password is None:
                raise ProxyRefusal(
                    "28P01", "the backing server asks for a password but the backing address has none"
                )
            if code == 3:
                sock.sendall(encode_message(b"p", password.encode("utf-8") + b"\0"))
            elif code == 5:
                inner = hashlib.md5((password + user).encode("utf-8")).hexdigest().encode("ascii")
                outer = "md5" + hashlib.md5(inner + body[4:8]).hexdigest()
                sock.sendall(encode_message(b"p", outer.encode("ascii") + b"\0"))
            elif code == 10:
                if b"SCRAM-SHA-256" not in body[4:].split(b"\0"):
                    raise ProxyRefusal(
                        "28000", "the backing server offers no SASL mechanism the proxy speaks"
                    )
                scram = ScramClient(password)
                first = scram.first()
                sock.sendall(encode_message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
            elif code == 11 and scram is not None:
                sock.sendall(encode_message(b"p", scram.final(body[4:])))
            elif code == 12 and scram is not None:
                scram.verify(body[4:])
            else:
                raise ProxyRefusal(
                    "28000", f"the backing server asks for an unsupported login method ({code})"
                )


def _no_delay(sock: socket.socket) -> None:
    """Relaying message by message, Nagle plus delayed ACKs would add ~40 ms per round trip."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
