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
        "--storage",
        choices=["cluster", "database"],
        default="cluster",
        help="cluster: one PostgreSQL cluster per branch (default); database: the older model, one "
        "database per branch on the backing server, sessions as its superuser",
    )
    parser.add_argument(
        "--data-dir",
        help="folder for the branches' clusters (default: /dev/shm when roomy, else the temp folder)",
    )
    parser.add_argument(
        "--backing-url",
        default=os.environ.get("DBBRANCH_EMULATOR_BACKING_URL"),
        help="PostgreSQL server for --storage database and --source-database (default: "
        "$DBBRANCH_EMULATOR_BACKING_URL, else the plugin's embedded server)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="HTTP port of the REST API (default: any free port)"
    )
    parser.add_argument(
        "--pg-port", type=int, default=0, help="the single shared PostgreSQL port (default: any free port)"
    )
    parser.add_argument("--project", action="append", help="project id to create (repeatable; default: demo)")
    parser.add_argument("--source-database", help="database on the backing server to copy into production")
    parser.add_argument("--token", default="dapi-emulator", help="personal access token of the project owner")
    parser.add_argument("--user", default="alice@example.com", help="the project owner's identity")
    parser.add_argument(
        "--identity",
        action="append",
        default=[],
        metavar="NAME[=PAT]",
        help="another identity (e.g. a CI service principal) with its own role; repeatable",
    )
    parser.add_argument(
        "--fast", action="store_true", help="the older timing: near-instant operations, no suspend"
    )
    parser.add_argument("--operation-delay", type=_delay, help="seconds an operation takes: S or LOW-HIGH")
    parser.add_argument("--compute-start-delay", type=float, help="seconds before a new compute has a host")
    parser.add_argument(
        "--suspend-timeout", type=float, help="idle seconds before a compute suspends (0: never)"
    )
    parser.add_argument("--cold-start-delay", type=float, help="seconds a suspended compute takes to wake")
    parser.add_argument(
        "--credential-lifetime", type=float, default=3600.0, help="database token lifetime (s)"
    )
    parser.add_argument(
        "--no-auto-endpoint", action="store_true", help="branches get no implicit 'primary' endpoint"
    )
    parser.add_argument(
        "--host-style",
        choices=["auto", "loopback", "single"],
        default="auto",
        help="loopback: each endpoint on its own 127.0.0.N:5432; single: one shared printed port",
    )
    parser.add_argument("--allow-plaintext", action="store_true", help="accept logins without TLS")
    parser.add_argument("--no-soft-delete", action="store_true", help="every delete purges")
    parser.add_argument(
        "--no-branch-rules",
        action="store_true",
        help="allow several protected branches and expiring protected/default branches",
    )
    parser.add_argument(
        "--ttl-with-children",
        choices=["refuse-child", "refuse-ttl", "allow"],
        default="refuse-child",
        help="a branch with both an expiry and children: refuse the child (default), refuse only "
        "adding the expiry, or allow both",
    )
    parser.add_argument(
        "--branch-limit", type=int, default=10, help="unarchived branches per project (default: 10)"
    )
    parser.add_argument(
        "--limit-error",
        choices=["request", "operation"],
        default="request",
        help="refuse the create request over the limit (default), or fail its operation",
    )
    args = parser.parse_args(argv)
    embedded: EmbeddedServer | None = None
    password: str | None = None
    try:
        backing: ServerAddress | None = None
        if args.backing_url:
            backing = ServerAddress.parse(args.backing_url, where="--backing-url")
        elif args.storage == "database" or args.source_database:
            from ..server.embedded import EmbeddedServer

            embedded = EmbeddedServer(None)
            backing = embedded.acquire("emulator")
        password = backing.password if backing is not None else None
        _serve(args, backing)
    except (DbBranchError, psycopg.Error, OSError) as exc:
        print(f"lakebase emulator: {redact_text(str(exc), password)}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.release("emulator")
    return 0


def _delay(text: str) -> tuple[float, float]:
    low, _sep, high = text.partition("-")
    try:
        return (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or LOW-HIGH, got {text!r}") from None


def _serve(args: argparse.Namespace, backing: ServerAddress | None) -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: Ctrl-C still raises KeyboardInterrupt
            previous[signum] = signal.signal(signum, on_signal)
    projects: list[str] = args.project or ["demo"]
    suspend: float | str | None = "default"
    if args.suspend_timeout is not None:
        suspend = args.suspend_timeout or None
    emulator = LakebaseEmulator(
        backing,
        storage=args.storage,
        data_dir=args.data_dir,
        token=args.token,
        user_name=args.user,
        timing="fast" if args.fast else "realistic",
        operation_delay=args.operation_delay,
        compute_start_delay=args.compute_start_delay,
        suspend_timeout=suspend,
        cold_start_delay=args.cold_start_delay,
        credential_lifetime=args.credential_lifetime,
        auto_endpoint=not args.no_auto_endpoint,
        host_style=args.host_style,
        tls_required=not args.allow_plaintext,
        soft_delete=not args.no_soft_delete,
        branch_rules=not args.no_branch_rules,
        ttl_with_children=args.ttl_with_children,
        branch_limit=args.branch_limit,
        limit_error=args.limit_error,
        http_port=args.port,
        pg_port=args.pg_port,
    )
    try:
        with emulator:
            identities = []
            for spec in args.identity:
                name, _sep, pat = spec.partition("=")
                emulator.add_identity(name, pat or None)
                identities.append(name)
            for project_id in projects:
                emulator.create_project(project_id, source_database=args.source_database)
            print(f"DATABRICKS_HOST={emulator.url}")
            print(f"DATABRICKS_TOKEN={emulator.token}")
            print(f"DBBRANCH_LAKEBASE_PORT={emulator.pg_port}")
            print(f"DBBRANCH_LAKEBASE_SSLMODE={emulator.sslmode}", flush=True)
            where = (
                "one cluster per branch"
                if backing is None or args.storage == "cluster"
                else backing.display_url()
            )
            hosts = "own 127.0.0.N:5432 per endpoint" if emulator.loopback else f"port {emulator.pg_port}"
            print(
                f"Lakebase emulator: projects {', '.join(projects)} owned by {emulator.user_name}"
                + (f" (also: {', '.join(identities)})" if identities else "")
                + f"; branches: {where}; endpoints: {hosts}. Ctrl-C to stop.",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                while not stop.wait(0.5):
                    pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
