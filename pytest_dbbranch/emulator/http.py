"""The HTTP server in front of the REST API: it reads a request, hands it to a dispatch function
and writes back the JSON reply, knowing nothing of Lakebase itself."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class Reply:
    status: int
    payload: dict[str, Any] | None  # None: close the socket without answering
    headers: dict[str, str] = field(default_factory=dict)


#: (method, target, headers, raw body) -> the reply to write.
Dispatch = Callable[[str, str, Any, bytes], Reply]


class HttpServer(ThreadingHTTPServer):
    # Handler threads are joined on server_close(), so stop() leaves none behind.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], dispatch: Dispatch) -> None:
        self.dispatch = dispatch
        super().__init__(address, RequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up mid-answer is routine for a test server, not worth a traceback.
        logger.debug("HTTP connection from %s failed", client_address, exc_info=True)


class RequestHandler(BaseHTTPRequestHandler):
    # One request per connection: nothing idles in a handler thread after an answer.
    protocol_version = "HTTP/1.0"
    timeout = 30
    server: HttpServer

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "invalid Content-Length")
            return
        # Read the body even when refusing: closing with unread input makes the kernel send a
        # reset, and the client would then see a broken connection instead of our answer.
        raw = self.rfile.read(length) if length > 0 else b""
        reply = self.server.dispatch(method, self.path, self.headers, raw)
        if reply.payload is None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        data = json.dumps(reply.payload).encode("utf-8")
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)
