"""Loopback addresses for endpoints: each endpoint gets 127.0.0.N and listens on 5432 there.

Why: an unmodified client connects to ``hosts.host`` on port 5432, as it would on Lakebase.
On Linux the whole of 127/8 is local and ports from 1024 up need no privilege, so every
endpoint can have its own address. 127.0.0.1:5432 usually belongs to a local server, so N
starts at 2; an address another program (or another emulator) holds is skipped.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable, Iterator

ENDPOINT_PORT = 5432

_lock = threading.Lock()
#: Addresses this process's emulators hold, so two of them never try the same one.
_taken: set[str] = set()


def _candidates() -> Iterator[str]:
    for third in range(256):
        for fourth in range(2 if third == 0 else 1, 255):
            yield f"127.0.{third}.{fourth}"


def claim(listen: Callable[[str, int], int], port: int = ENDPOINT_PORT) -> str:
    """The first free loopback address that ``listen`` could bind; raises OSError if none."""
    last: OSError | None = None
    for tries, host in enumerate(_candidates()):
        with _lock:
            if host in _taken:
                continue
            _taken.add(host)
        try:
            listen(host, port)
        except OSError as exc:
            with _lock:
                _taken.discard(host)
            last = exc
            if tries > 64 and exc.errno != errno.EADDRINUSE:  # not "in use": this machine has no such address
                break
            continue
        return host
    raise OSError(f"no loopback address with a free port {port}: {last}")


def release(host: str) -> None:
    with _lock:
        _taken.discard(host)


def loopback_works(port: int = ENDPOINT_PORT) -> bool:
    """Whether some 127.0.0.N (N >= 2) accepts a bind on ``port`` here (not on macOS, by default)."""
    for fourth in range(2, 40):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((f"127.0.0.{fourth}", port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:  # in use: the address exists, try the next one
                    continue
                return False
            return True
    return False
