"""The emulator's command line: ``python -m pytest_dbbranch.emulator`` or ``dbbranch emulator``.

It lives here rather than in ``__main__.py`` so that the package can export ``main`` without
importing ``__main__`` (``python -m`` would then warn that it runs a module already imported).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

import psycopg

from ..conninfo import ServerAddress, redact_text
from ..errors import DbBranchError
from .service import LakebaseEmulator

if TYPE_CHECKING:
    from ..server.embedded import EmbeddedServer


def main(argv: list[str] | None = None) -> int:
    """For running a Lakebase-configured suite by hand: the printed variables point it here."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_dbbranch.emulator",
        description="Local Databricks Lakebase Autoscaling emulator backed by a real PostgreSQL server.",
    )
    parser.add_argument(
        "--backing-url",
        default=os.environ.get("DBBRANCH_EMULATOR_BACKING_URL"),
        help="PostgreSQL server that holds the branches (default: $DBBRANCH_EMULATOR_BACKING_URL, "
        "else the plugin's embedded server)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="HTTP port of the REST API (default: any free port)"
    )
    parser.add_argument("--pg-port", type=int, default=0, help="port of the PostgreSQL proxy (default: any)")
    parser.add_argument("--project", action="append", help="project id to create (repeatable; default: demo)")
    parser.add_argument("--source-database", help="backing database to clone into each project's production")
    parser.add_argument("--token", default="dapi-emulator", help="personal access token clients must send")
    parser.add_argument(
        "--branch-limit", type=int, default=10, help="live branches per project (default: 10)"
    )
    parser.add_argument(
        "--operation-delay", type=float, default=0.05, help="seconds an operation takes at least"
    )
    args = parser.parse_args(argv)
    embedded: EmbeddedServer | None = None
    password: str | None = None
    try:
        if args.backing_url:
            backing = ServerAddress.parse(args.backing_url, where="--backing-url")
        else:
            from ..server.embedded import EmbeddedServer

            embedded = EmbeddedServer(None)
            backing = embedded.acquire("emulator")
        password = backing.password
        _serve(args, backing)
    except (DbBranchError, psycopg.Error, OSError) as exc:
        print(f"lakebase emulator: {redact_text(str(exc), password)}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.release("emulator")
    return 0


def _serve(args: argparse.Namespace, backing: ServerAddress) -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: Ctrl-C still raises KeyboardInterrupt
            previous[signum] = signal.signal(signum, on_signal)
    projects: list[str] = args.project or ["demo"]
    emulator = LakebaseEmulator(
        backing,
        token=args.token,
        branch_limit=args.branch_limit,
        operation_delay=args.operation_delay,
        http_port=args.port,
        pg_port=args.pg_port,
    )
    try:
        with emulator:
            for project_id in projects:
                emulator.create_project(project_id, source_database=args.source_database)
            print(f"DATABRICKS_HOST={emulator.url}")
            print(f"DATABRICKS_TOKEN={emulator.token}")
            print(f"DBBRANCH_LAKEBASE_PORT={emulator.pg_port}")
            print(f"DBBRANCH_LAKEBASE_SSLMODE={emulator.sslmode}", flush=True)
            print(
                f"Lakebase emulator: projects {', '.join(projects)} for {emulator.user_name}, "
                f"branches on {backing.display_url()}. Ctrl-C to stop.",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                while not stop.wait(0.5):
                    pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
