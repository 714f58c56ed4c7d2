"""The proxy's TLS: Lakebase clients connect with ``sslmode=require``, so the proxy must offer it."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import tempfile
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

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
