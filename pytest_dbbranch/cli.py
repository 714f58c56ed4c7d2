"""``dbbranch``: the plugin's branch machinery from a shell.

Exit codes: 0 done; 1 nothing to do or a check found something (``delete`` of a branch that
does not exist, ``diff --fail-on-breaking`` with breaking changes); 2 an error to fix
(configuration, server, migration); 3 refused (the branch was not created by this tool).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import names
from .branching.manager import BranchManager
from .errors import DbBranchError, NotOursError
from .settings import SPECS, Settings, resolve

EXIT_OK, EXIT_NOTHING, EXIT_ERROR, EXIT_REFUSED = 0, 1, 2, 3


def ini_values(folder: Path) -> tuple[dict[str, Any], Path]:
    """dbbranch_* values from exactly the configuration pytest reads when started in
    ``folder`` (pytest.toml, .pytest.toml, pytest.ini, .pytest.ini, [tool.pytest] or
    [tool.pytest.ini_options] of pyproject.toml, tox.ini, setup.cfg: pytest's own search),
    and the folder relative paths are taken from (the configuration file's)."""
    from _pytest.config.findpaths import locate_config

    try:
        found = locate_config(folder, [])
    except TypeError:  # pytest before 8.1 took only the arguments
        found = locate_config([folder])  # type: ignore[call-arg,arg-type,unused-ignore]
    inipath, config = found[1], found[2]
    values = {
        key.removeprefix("dbbranch_"): getattr(value, "value", value)  # pytest 9 wraps values
        for key, value in config.items()
        if key.startswith("dbbranch_")
    }
    return values, (inipath.parent if inipath is not None else folder)


#: The flags of this command line that set a setting: messages name these, not pytest's.
FLAGS = {
    "url": "--url",
    "embedded_dir": "--embedded-dir",
    "lakebase_project": "--lakebase-project",
    "source": "--source",
    "alembic_ini": "--alembic-ini",
    "revision": "--revision",
}


def settings_from(args: argparse.Namespace) -> Settings:
    """Flags > environment > ini > defaults: the plugin's own precedence."""
    ini, root = ini_values(Path.cwd())
    options = {spec.name: getattr(args, spec.name, None) for spec in SPECS}
    return resolve(options=options, env=os.environ, ini=ini, root=root, option_names=FLAGS)


def _manager(args: argparse.Namespace) -> BranchManager:
    return BranchManager(settings_from(args), run_id="cli" + str(os.getpid()), reap_on_start=False)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _lakebase_list(manager: BranchManager, args: argparse.Namespace) -> int:
    """On Lakebase the plugin's branches are the runs', the template branches and the tests'
    own; the test databases inside a run's branch go with it."""
    run = manager.lakebase()
    now = time.time()
    rows: list[dict[str, Any]] = []
    for branch in run.api.list_branches():
        kind = names.generated_kind(branch.id)
        if kind is None:
            continue
        rows.append(
            {
                "name": branch.id,
                "kind": kind,
                "age_seconds": round(now - (branch.create_time or now), 1),
                "expires_in_seconds": round(branch.expire_time - now, 1) if branch.expire_time else None,
                "parent": (branch.source_branch or "").rsplit("/", 1)[-1],
            }
        )
    if args.json:
        _print_json(rows)
    elif not rows:
        print(f"no branches created by pytest-dbbranch in {run.project.name}")
    else:
        print(f"{'NAME':<40} {'KIND':<16} {'AGE':>6} {'EXPIRES':>8} PARENT")
        for row in rows:
            expires = row["expires_in_seconds"]
            shown = _age(float(expires)) if expires is not None else "never"
            age = _age(float(row["age_seconds"]))
            print(f"{row['name']:<40} {row['kind']:<16} {age:>6} {shown:>8} {row['parent']}")
    return EXIT_OK


def _lakebase_gc(manager: BranchManager, args: argparse.Namespace, older: float | None) -> int:
    from .branching.lakebase_gc import collect_lakebase, find_lakebase_garbage

    run = manager.lakebase()
    garbage = find_lakebase_garbage(run, older_than=older)
    failed = [] if args.dry_run else collect_lakebase(run, garbage)
    failed_names = {name for name, _ in failed}
    deleted = [g for g in garbage if g.branch not in failed_names] if not args.dry_run else []
    if args.json:
        _print_json(
            {
                "dry_run": args.dry_run,
                "candidates": [{"name": g.branch, "reason": g.reason} for g in garbage],
                "deleted": [g.branch for g in deleted],
                "failed": [{"name": name, "error": error} for name, error in failed],
            }
        )
    else:
        verb = "would delete" if args.dry_run else "deleted"
        for item in garbage if args.dry_run else deleted:
            print(f"{verb} {item.branch}  ({item.reason})")
        for name, error in failed:
            print(f"could not delete {name}: {error}", file=sys.stderr)
        if not garbage:
            print("nothing to delete")
    return EXIT_ERROR if failed else EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    manager = _manager(args)
    if manager.settings.effective_backend == "lakebase":
        with manager:
            return _lakebase_list(manager, args)
    try:
        records = manager.backend().list_ours()
    finally:
        manager.close()
    now = time.time()
    if args.json:
        _print_json(
            [
                {
                    "name": r.name,
                    "kind": r.tag.kind,
                    "run": r.tag.run,
                    "parent": r.tag.parent,
                    "age_seconds": round(now - r.tag.created, 1),
                    "ready": r.ready,
                    "kept": r.tag.kept,
                    "size_bytes": r.size_bytes,
                    "host": r.tag.host,
                    "pid": r.tag.pid,
                }
                for r in records
            ]
        )
        return EXIT_OK
    if not records:
        print("no branches created by pytest-dbbranch on this server")
        return EXIT_OK
    print(f"{'NAME':<64} {'KIND':<9} {'RUN':<12} {'AGE':>6} {'SIZE':>9} PARENT")
    for record in records:
        size = f"{record.size_bytes / 1e6:.1f}MB" if record.size_bytes else "-"
        kind = record.tag.kind + ("*" if record.tag.kept else "")
        print(
            f"{record.name:<64} {kind:<9} {record.tag.run:<12} {_age(now - record.tag.created):>6} "
            f"{size:>9} {record.tag.parent}"
        )
    return EXIT_OK


def cmd_create(args: argparse.Namespace) -> int:
    """A migrated branch for a person to use: kept, so neither the reaper nor gc (without
    --older-than) takes it away."""
    from dataclasses import replace

    manager = _manager(args)
    try:
        settings = replace(manager.settings, keep="always")
        scope = "session"
        if settings.effective_backend == "lakebase":
            # A database inside the run's branch would go with it: a Lakebase branch of its
            # own, which expires after dbbranch_lakebase_ttl.
            settings, scope = replace(settings, isolation="lakebase_branch"), "function"
        branch = manager.create(settings, scope=scope, node_id=args.name or "cli")
        manager.release(branch)
        url = branch.url if args.show_password else branch.display_url
        if args.json:
            _print_json(
                {
                    "name": branch.name,
                    "url": url,
                    "sqlalchemy_url": branch.sqlalchemy_url if args.show_password else None,
                    "template": manager.template(settings),
                }
            )
        else:
            print(url)
    finally:
        manager.close()
    return EXIT_OK


def cmd_connect(args: argparse.Namespace) -> int:
    """Open a kept branch to look at it: psql when installed, else its URL. The embedded
    server is started for it (on the port it had) and stays up while psql runs, or, with
    ``--print``, until Enter or Ctrl-C."""
    from .server.binaries import client_if_any

    with _manager(args) as manager:
        backend = manager.backend()
        if backend.describe(args.name) is None:
            print(
                f"dbbranch: no branch of ours named {args.name!r} (dbbranch list shows them)", file=sys.stderr
            )
            return EXIT_NOTHING
        address = backend.address(args.name)
        psql = None if args.print else client_if_any("psql")
        if psql is not None:
            return subprocess.run([psql, address.conninfo()], check=False).returncode
        print(address.url() if args.show_password or not address.password else address.display_url())
        if not manager.settings.url and not args.no_wait:
            sys.stdout.flush()
            print("(the embedded server runs until you press Enter or Ctrl-C)", file=sys.stderr)
            with contextlib.suppress(KeyboardInterrupt, EOFError):
                input()
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    from .branching.cleanup import find_orphans

    manager = _manager(args)
    try:
        backend = manager.backend()
        if not backend.exists(args.name):
            print(f"dbbranch: no branch named {args.name!r}", file=sys.stderr)
            return EXIT_NOTHING
        if args.name in find_orphans(backend):
            backend.drop_untagged(args.name)  # made by a process killed before it tagged it
        else:
            backend.drop(args.name)
    finally:
        manager.close()
    print(f"deleted {args.name}")
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    from .branching.cleanup import (
        Garbage,
        collect,
        collect_orphans,
        find_garbage,
        find_orphans,
        in_use,
        liveness,
    )
    from .settings import parse_duration

    older = parse_duration(args.older_than, "--older-than") if args.older_than else None
    manager = _manager(args)
    if manager.settings.effective_backend == "lakebase":
        with manager:
            return _lakebase_gc(manager, args, older)
    try:
        backend = manager.backend()
        garbage = find_garbage(
            backend.list_ours(),
            run_alive=liveness(backend),
            in_use=in_use(backend),
            older_than=older,
            include_kept=args.include_kept,
            current_runs=[manager.run_id],
        )
        orphans = find_orphans(backend)
        clusters = manager.stale_embedded_clusters()
        deleted: list[Garbage] = []
        failed: list[tuple[Garbage, str]] = []
        orphans_deleted: list[str] = []
        orphans_failed: list[tuple[str, str]] = []
        if not args.dry_run:
            deleted, failed = collect(backend, garbage)
            orphans_deleted, orphans_failed = collect_orphans(backend, orphans)
            for cluster in clusters:
                shutil.rmtree(cluster, ignore_errors=True)
    finally:
        manager.close()
    leftover = "untagged leftover of a process killed while creating it"
    if args.json:
        _print_json(
            {
                "dry_run": args.dry_run,
                "candidates": [g.to_dict() for g in garbage]
                + [{"name": name, "cause": "orphan", "reason": leftover} for name in orphans],
                "deleted": [g.record.name for g in deleted] + orphans_deleted,
                "clusters": [str(c) for c in clusters],
                "failed": [{"name": g.record.name, "error": err} for g, err in failed]
                + [{"name": name, "error": err} for name, err in orphans_failed],
            }
        )
    else:
        verb = "would delete" if args.dry_run else "deleted"
        done = [(g.record.name, g.reason) for g in (garbage if args.dry_run else deleted)]
        done += [(name, leftover) for name in (orphans if args.dry_run else orphans_deleted)]
        done += [(str(c), "embedded cluster of another install, unused") for c in clusters]
        for name, reason in done:
            print(f"{verb} {name}  ({reason})")
        for item, error in failed:
            print(f"could not delete {item.record.name}: {error}", file=sys.stderr)
        for name, error in orphans_failed:
            print(f"could not delete {name}: {error}", file=sys.stderr)
        if not garbage and not orphans and not clusters:
            print("nothing to delete")
    return EXIT_ERROR if failed or orphans_failed else EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from .review import schema_diff
    from .schema import render_json, render_markdown

    with _manager(args) as manager:
        diff = schema_diff(manager)
    as_json = args.json or args.format == "json"  # --json, as every subcommand takes it
    text = render_json(diff) if as_json else render_markdown(diff)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_NOTHING if args.fail_on_breaking and diff.breaking else EXIT_OK


def cmd_lakebase_doctor(args: argparse.Namespace) -> int:
    """Check, on a real workspace, every assumption the plugin makes about Lakebase."""
    from .backends import lakebase_config
    from .backends.lakebase import LakebaseProject
    from .backends.lakebase_doctor import run_doctor

    settings = settings_from(args)
    if not settings.lakebase_project:
        print("dbbranch: set the project: --lakebase-project or DBBRANCH_LAKEBASE_PROJECT", file=sys.stderr)
        return EXIT_ERROR
    project = LakebaseProject(lakebase_config(settings))
    source = settings.source if settings.source and settings.source.lower() not in ("empty", "none") else None
    schema = Path(args.schema).read_text() if args.schema else None
    return run_doctor(
        project.api,
        source_branch=project.full(source.removeprefix("db:")) if source else project.default_branch,
        out=sys.stdout,
        schema_sql=schema,
        port=settings.lakebase_port,
        sslmode=settings.lakebase_sslmode,
    )


def cmd_emulator(args: argparse.Namespace) -> int:
    """Hand the remaining arguments to the emulator's own parser (``--help`` included)."""
    from .emulator import main as emulator_main

    return emulator_main(list(args.rest))


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbbranch",
        description="Database branches made by pytest-dbbranch, from the shell. Settings come from "
        "flags, DBBRANCH_* variables and the dbbranch_* ini values pytest reads.",
        epilog="exit codes: 0 done, 1 nothing to do / breaking changes found, 2 error, 3 refused",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="server URL (DBBRANCH_URL; default: the embedded server)")
    common.add_argument("--embedded-dir", dest="embedded_dir", help="embedded server folder")
    common.add_argument("--lakebase-project", dest="lakebase_project", help="use a Lakebase project")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    template = argparse.ArgumentParser(add_help=False)
    template.add_argument("--source", help="production snapshot: database, dump file or 'empty'")
    template.add_argument("--alembic-ini", dest="alembic_ini", help="path of alembic.ini")
    template.add_argument("--revision", help="target revision (default head)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = sub.add_parser(
        "list", parents=[common], help="branches, templates and sources this tool created"
    )
    listing.set_defaults(func=cmd_list)

    create = sub.add_parser(
        "create", parents=[common, template], help="fork a migrated branch of the source and print its URL"
    )
    create.add_argument("--name", help="words to put in the branch name")
    create.add_argument("--show-password", action="store_true", help="print the URL with the password")
    create.set_defaults(func=cmd_create)

    connect = sub.add_parser(
        "connect",
        parents=[common],
        help="open a branch with psql (starting the embedded server), or print its URL",
    )
    connect.add_argument("name")
    connect.add_argument("--print", action="store_true", help="print the URL instead of starting psql")
    connect.add_argument("--show-password", action="store_true", help="print the URL with the password")
    connect.add_argument("--no-wait", action="store_true", help="with --print: do not keep the server up")
    connect.set_defaults(func=cmd_connect)

    delete = sub.add_parser("delete", parents=[common], help="delete a branch this tool created")
    delete.add_argument("name")
    delete.set_defaults(func=cmd_delete)

    gc = sub.add_parser(
        "gc",
        parents=[common],
        help="delete branches of dead or finished runs, stale templates, expired branches",
    )
    gc.add_argument("--older-than", dest="older_than", help="also delete branches older than this (e.g. 2h)")
    gc.add_argument("--include-kept", action="store_true", help="kept branches of dead runs go too")
    gc.add_argument("--dry-run", action="store_true", help="show what would be deleted")
    gc.set_defaults(func=cmd_gc)

    diff = sub.add_parser(
        "diff",
        parents=[common, template],
        help="schema difference between the source and the migrated template",
    )
    diff.add_argument("--format", choices=("markdown", "json"), default="markdown")
    diff.add_argument("--output", help="write to this file instead of standard output")
    diff.add_argument("--fail-on-breaking", action="store_true", help="exit 1 when a change is breaking")
    diff.set_defaults(func=cmd_diff)

    lakebase = sub.add_parser("lakebase", help="Lakebase tools")
    lakebase_sub = lakebase.add_subparsers(dest="lakebase_command", required=True, metavar="TOOL")
    doctor = lakebase_sub.add_parser(
        "doctor",
        parents=[common],
        help="check the service behaves as the plugin assumes; print a pass/fail table; clean up",
    )
    doctor.add_argument("--source", help="source branch (default: the project's default branch)")
    doctor.add_argument("--schema", help="an SQL file to time CREATE DATABASE with your schema")
    doctor.set_defaults(func=cmd_lakebase_doctor)

    emulator = sub.add_parser(
        "emulator", add_help=False, help="serve a local Lakebase emulator (REST API + PostgreSQL proxy)"
    )
    emulator.set_defaults(func=cmd_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "emulator":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    try:
        return int(args.func(args))
    except NotOursError as exc:
        print(f"dbbranch: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except DbBranchError as exc:
        print(f"dbbranch: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
