"""``dbbranch``: the same branch machinery from a shell."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import DbBranchError
from .manager import BranchManager
from .settings import resolve


def cmd_list(args: argparse.Namespace) -> int:
    settings = resolve(
        options={"url": args.url, "embedded_dir": args.embedded_dir},
        env=os.environ,
        ini=_ini_values(Path.cwd()),
        root=Path.cwd(),
    )
    manager = BranchManager(settings, run_id="cli")
    try:
        records = manager.backend().list_ours()
    finally:
        manager.close()
    now = time.time()
    rows = [
        {
            "name": r.name,
            "kind": r.tag.kind,
            "run": r.tag.run,
            "parent": r.tag.parent,
            "age_seconds": round(now - r.tag.created, 1),
            "ready": r.ready,
            "kept": r.tag.kept,
            "size_bytes": r.size_bytes,
        }
        for r in records
    ]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print("no branches created by pytest-dbbranch on this server")
        return 0
    print(f"{'NAME':<64} {'KIND':<9} {'RUN':<10} {'AGE':>8} {'SIZE':>9} PARENT")
    for record in records:
        size = f"{record.size_bytes / 1e6:.1f}MB" if record.size_bytes else "-"
        age = _age(now - record.tag.created)
        print(
            f"{record.name:<64} {record.tag.kind:<9} {record.tag.run:<10} {age:>8} {size:>9} "
            f"{record.tag.parent}"
        )
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _ini_values(folder: Path) -> dict[str, str]:
    """dbbranch_* values from pyproject.toml's [tool.pytest.ini_options], when present."""
    import tomllib

    path = folder / "pyproject.toml"
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text())
    options = data.get("tool", {}).get("pytest", {}).get("ini_options", {})
    return {k.removeprefix("dbbranch_"): str(v) for k, v in options.items() if k.startswith("dbbranch_")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbbranch", description="Manage database branches made by pytest-dbbranch."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="server URL (default: DBBRANCH_URL, else the embedded server)")
    common.add_argument("--embedded-dir", help="embedded server folder (DBBRANCH_EMBEDDED_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser(
        "list", parents=[common], help="branches, templates and sources this tool created"
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_list)
    emulator = sub.add_parser(
        "emulator",
        help="serve a local Lakebase emulator (REST API + PostgreSQL proxy) backed by PostgreSQL",
        add_help=False,
    )
    emulator.set_defaults(func=cmd_emulator)
    return parser


def cmd_emulator(args: argparse.Namespace) -> int:
    """Hand the remaining arguments to the emulator's own parser (``--help`` included)."""
    from .lakebase_emulator import main as emulator_main

    return emulator_main(list(args.rest))


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    if rest and args.command != "emulator":
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    try:
        return int(args.func(args))
    except DbBranchError as exc:
        print(f"dbbranch: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
