"""Entry point of the keeper process: ``python -m pytest_dbbranch.server.keeper_run HOME
BINDIR POSTMASTER_PID`` (started by ``keeper.ensure_keeper``, detached)."""

from __future__ import annotations

import sys
from pathlib import Path

from .embedded import EmbeddedServer
from .keeper import run


def main(argv: list[str]) -> int:
    home, bindir, postmaster = Path(argv[0]), Path(argv[1]), int(argv[2]) or None
    return run(home, postmaster, lambda: EmbeddedServer.at(home, bindir))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
