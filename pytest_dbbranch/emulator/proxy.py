"""A PostgreSQL wire-protocol front door that logs clients in the way Lakebase does.

Real Lakebase takes a short-lived OAuth token as the password, insists on TLS and routes the
session to the branch's compute. A suite that runs against the emulator has to go through that
same login (token as password, ``sslmode=require``, expiry enforced at login only), or it would
pass offline and fail on the real service. So the proxy finishes the client's handshake itself,
asks an ``Authenticator`` which backing database the token leads to, and only then opens a plain
session on the backing server and relays bytes untouched.

One thread per client connection, each relaying both directions with a poll loop: a TLS socket
must not be read and written from two threads at once.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import hmac
import logging
import secrets
import selectors
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from ..conninfo import ServerAddress

logger = logging.getLogger(__name__)

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
_TLS_RECORD_HANDSHAKE = 0x16
_MAX_STARTUP = 10_000
_MAX_HANDSHAKE_MESSAGE = 1 << 20
_BUFFER_LIMIT = 1 << 20
_CHUNK = 65536
_POLL_SECONDS = 0.25


class ProxyRefusal(Exception):
    """Why a login is refused, carried to the client as a FATAL ErrorResponse."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail


class _ProtocolError(Exception):
    """The peer sent something that is not the PostgreSQL protocol we expect."""


#: (user, database, password) -> name of the backing database; raises ProxyRefusal.
Authenticator = Callable[[str, str, str], str]

_tls_lock = threading.Lock()
_tls_cache: list[ssl.SSLContext | None] = []


def make_tls_context() -> ssl.SSLContext | None:
    """A server TLS context with a throwaway self-signed certificate, or None without openssl.

    Made once per process: RSA key generation costs a noticeable fraction of a second and
    ``sslmode=require`` never verifies the certificate anyway.
    """
    with _tls_lock:
        if not _tls_cache:
            _tls_cache.append(_build_tls_context())
        return _tls_cache[0]


def _build_tls_context() -> ssl.SSLContext | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        logger.warning("openssl not found: the Lakebase emulator's proxy will refuse TLS")
        return None
    with tempfile.TemporaryDirectory(prefix="dbbranch-tls-") as folder:
        key, cert = Path(folder) / "key.pem", Path(folder) / "cert.pem"
        argv = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"]
        argv += ["-days", "2", "-keyout", str(key), "-out", str(cert)]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("could not make a TLS certificate (%s): the proxy will refuse TLS", exc)
            return None
        if result.returncode != 0:
            logger.warning("openssl failed (%s): the proxy will refuse TLS", result.stderr.strip()[-300:])
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
    # libpq 17+ offers ALPN and, with sslnegotiation=direct, requires the server to pick it.
    context.set_alpn_protocols(["postgresql"])
    return context


# -- protocol helpers ------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed the connection during the handshake")
        data += chunk
    return bytes(data)


def _read_startup_packet(sock: socket.socket) -> bytes:
    head = _recv_exact(sock, 4)
    (length,) = struct.unpack("!I", head)
    if not 8 <= length <= _MAX_STARTUP:
        raise _ProtocolError(f"invalid startup packet length {length}")
    return head + _recv_exact(sock, length - 4)


def _read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _recv_exact(sock, 5)
    kind = head[:1]
    (length,) = struct.unpack("!I", head[1:])
    if not 4 <= length <= _MAX_HANDSHAKE_MESSAGE:
        raise _ProtocolError(f"invalid message length {length}")
    return kind, _recv_exact(sock, length - 4)


def _message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def error_response(sqlstate: str, message: str, detail: str | None = None, severity: str = "FATAL") -> bytes:
    """An ErrorResponse message, as the server would send it."""
    fields = [(b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", message)]
    if detail:
        fields.append((b"D", detail))
    payload = b"".join(code + text.encode("utf-8") + b"\0" for code, text in fields) + b"\0"
    return _message(b"E", payload)


def _parse_startup(packet: bytes) -> tuple[int, dict[str, str]]:
    (version,) = struct.unpack("!I", packet[4:8])
    items = packet[8:].split(b"\0")
    params: dict[str, str] = {}
    for index in range(0, len(items) - 1, 2):
        key = items[index]
        if not key:
            break
        params[key.decode("utf-8", "replace")] = items[index + 1].decode("utf-8", "replace")
    return version, params


def _startup_packet(version: int, params: dict[str, str]) -> bytes:
    body = struct.pack("!I", version)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


class _ScramClient:
    """SCRAM-SHA-256 without channel binding, so a password-protected backing server works.

    PostgreSQL stores new passwords as SCRAM by default, so a ``--backing-url`` with a password
    nearly always means SCRAM. SASLprep is skipped: it is the identity for ASCII passwords.
    """

    def __init__(self, password: str) -> None:
        self._password = password.encode("utf-8")
        self._nonce = base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        self._first_bare = f"n=,r={self._nonce}"
        self._server_signature = b""

    def first(self) -> bytes:
        return ("n,," + self._first_bare).encode("ascii")

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode("ascii")
        attrs = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
        nonce = attrs.get("r", "")
        if not nonce.startswith(self._nonce) or "s" not in attrs or "i" not in attrs:
            raise _ProtocolError("malformed SCRAM server-first message")
        salted = hashlib.pbkdf2_hmac("sha256", self._password, base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._first_bare},{text},{without_proof}".encode("ascii")
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self._server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode('ascii')}".encode("ascii")

    def verify(self, server_final: bytes) -> None:
        attrs = dict(item.split("=", 1) for item in server_final.decode("ascii").split(",") if "=" in item)
        if "e" in attrs:
            raise _ProtocolError(f"SCRAM error from the backing server: {attrs['e']}")
        if not hmac.compare_digest(base64.b64decode(attrs.get("v", "")), self._server_signature):
            raise _ProtocolError("the backing server's SCRAM signature does not match")


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
    """Listens on 127.0.0.1 and hands every authenticated session to a backing database."""

    def __init__(
        self,
        backing: ServerAddress,
        authenticate: Authenticator,
        *,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self._backing = backing
        self._authenticate = authenticate
        self._requested_port = port
        self._tls = tls
        self._handshake_timeout = handshake_timeout
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._live: dict[threading.Thread, _Connection] = {}

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the proxy is not started")
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def tls_enabled(self) -> bool:
        return self._tls is not None

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self._requested_port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        # Accept wakes up regularly so stop() never depends on closing a socket under accept().
        listener.settimeout(_POLL_SECONDS)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name="pgproxy-accept", daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            live = list(self._live.items())
        for _thread, connection in live:
            connection.shutdown()
        for thread, _connection in live:
            thread.join(timeout=10)

    def connection_count(self) -> int:
        with self._lock:
            return len(self._live)

    # -- accepting -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
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
        except (OSError, ConnectionError, _ProtocolError, ValueError, UnicodeError) as exc:
            logger.debug("proxy session ended: %s", exc)
        finally:
            connection.close()
            with self._lock:
                self._live.pop(threading.current_thread(), None)

    # -- one session -----------------------------------------------------------------------

    def _session(self, connection: _Connection) -> None:
        connection.client.settimeout(self._handshake_timeout)
        startup = self._negotiate(connection)
        if startup is None:
            return
        client = connection.client
        version, params = _parse_startup(startup)
        if version >> 16 != 3:
            client.sendall(
                error_response("0A000", f"unsupported frontend protocol {version >> 16}.{version & 0xFFFF}")
            )
            return
        user = params.get("user", "")
        database = params.get("database") or user
        client.sendall(_message(b"R", struct.pack("!I", 3)))
        kind, payload = _read_message(client)
        if kind != b"p":
            client.sendall(error_response("08P01", "expected a password message"))
            return
        password = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
        try:
            target = self._authenticate(user, database, password)
        except ProxyRefusal as refusal:
            client.sendall(error_response(refusal.sqlstate, refusal.message, refusal.detail))
            return
        extra = {key: value for key, value in params.items() if key not in ("user", "database")}
        try:
            backend, pending = self._open_backend(connection, version, extra, target)
        except ProxyRefusal as refusal:
            client.sendall(error_response(refusal.sqlstate, refusal.message, refusal.detail))
            return
        except _BackendRefused as refused:
            client.sendall(refused.raw)
            return
        self._relay(client, backend, pending)

    def _negotiate(self, connection: _Connection) -> bytes | None:
        """Answer the encryption requests and return the StartupMessage (None: nothing to serve)."""
        for _attempt in range(4):
            sock = connection.client
            if not isinstance(sock, ssl.SSLSocket):
                first = sock.recv(1, socket.MSG_PEEK)
                if not first:
                    return None
                if first[0] == _TLS_RECORD_HANDSHAKE:
                    # sslnegotiation=direct: TLS from the first byte, no SSLRequest.
                    if self._tls is None:
                        return None
                    connection.client = self._tls.wrap_socket(sock, server_side=True)
                    continue
            packet = _read_startup_packet(sock)
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
        raise _ProtocolError("too many encryption requests")

    def _forward_cancel(self, packet: bytes) -> None:
        """The key came from the backing server through us, so the backing server can honour it."""
        with contextlib.suppress(OSError), self._connect_backing() as sock:
            sock.sendall(packet)

    def _connect_backing(self) -> socket.socket:
        host, port = self._backing.host, self._backing.port or 5432
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
        self, connection: _Connection, version: int, extra: dict[str, str], database: str
    ) -> tuple[socket.socket, bytes]:
        """Log in to the backing server; returns the socket and the bytes owed to the client."""
        try:
            sock = self._connect_backing()
        except OSError as exc:
            raise ProxyRefusal("08006", f"could not connect to the backing server: {exc}") from None
        connection.backend = sock
        _no_delay(sock)
        user = self._backing.user or getpass.getuser()
        sock.sendall(_startup_packet(version, {"user": user, "database": database, **extra}))
        scram: _ScramClient | None = None
        owed = bytearray()
        while True:
            kind, body = _read_message(sock)
            if kind == b"E":
                raise _BackendRefused(_message(kind, body))
            if kind in (b"v", b"N"):
                owed += _message(kind, body)
                continue
            if kind != b"R" or len(body) < 4:
                raise _ProtocolError(f"unexpected message {kind!r} from the backing server")
            (code,) = struct.unpack("!I", body[:4])
            if code == 0:
                owed += _message(kind, body)
                return sock, bytes(owed)
            password = self._backing.password
            if password is None:
                raise ProxyRefusal(
                    "28P01", "the backing server asks for a password but the backing address has none"
                )
            if code == 3:
                sock.sendall(_message(b"p", password.encode("utf-8") + b"\0"))
            elif code == 5:
                inner = hashlib.md5((password + user).encode("utf-8")).hexdigest().encode("ascii")
                outer = "md5" + hashlib.md5(inner + body[4:8]).hexdigest()
                sock.sendall(_message(b"p", outer.encode("ascii") + b"\0"))
            elif code == 10:
                if b"SCRAM-SHA-256" not in body[4:].split(b"\0"):
                    raise ProxyRefusal(
                        "28000", "the backing server offers no SASL mechanism the proxy speaks"
                    )
                scram = _ScramClient(password)
                first = scram.first()
                sock.sendall(_message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
            elif code == 11 and scram is not None:
                sock.sendall(_message(b"p", scram.final(body[4:])))
            elif code == 12 and scram is not None:
                scram.verify(body[4:])
            else:
                raise ProxyRefusal(
                    "28000", f"the backing server asks for an unsupported login method ({code})"
                )

    # -- relaying --------------------------------------------------------------------------

    def _relay(self, client: socket.socket, backend: socket.socket, owed_to_client: bytes) -> None:
        client.setblocking(False)
        backend.setblocking(False)
        outgoing = {client: bytearray(owed_to_client), backend: bytearray()}
        peer = {client: backend, backend: client}
        by_fd = {client.fileno(): client, backend.fileno(): backend}
        with selectors.DefaultSelector() as selector:
            while not self._stopping.is_set():
                for sock in (client, backend):
                    wanted = 0
                    if len(outgoing[peer[sock]]) < _BUFFER_LIMIT:
                        wanted |= selectors.EVENT_READ
                    if outgoing[sock]:
                        wanted |= selectors.EVENT_WRITE
                    _interest(selector, sock, wanted)
                for key, mask in selector.select(timeout=_POLL_SECONDS):
                    sock = by_fd[key.fd]
                    if mask & selectors.EVENT_WRITE and not _send_some(sock, outgoing[sock]):
                        return
                    if mask & selectors.EVENT_READ and not _receive(sock, outgoing[peer[sock]]):
                        _flush(peer[sock], outgoing[peer[sock]])
                        return


def _no_delay(sock: socket.socket) -> None:
    """Relaying message by message, Nagle plus delayed ACKs would add ~40 ms per round trip."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
