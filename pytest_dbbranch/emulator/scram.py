"""The client half of SCRAM-SHA-256, for the proxy's own login to the backing server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from .pgwire import ProtocolError


class ScramClient:
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
            raise ProtocolError("malformed SCRAM server-first message")
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
            raise ProtocolError(f"SCRAM error from the backing server: {attrs['e']}")
        if not hmac.compare_digest(base64.b64decode(attrs.get("v", "")), self._server_signature):
            raise ProtocolError("the backing server's SCRAM signature does not match")
