"""The ``dbbranch`` command line (``--help`` and ``list`` for now)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from conftest import AlembicProject, drop_ours, run_inner, write_tests


def dbbranch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_dbbranch.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help() -> None:
    result = dbbranch("--help")
    assert result.returncode == 0
    assert "list" in result.stdout
    assert dbbranch("list", "--help").returncode == 0


def test_console_script_is_installed() -> None:
    import shutil

    exe = shutil.which("dbbranch") or str(__import__("pathlib").Path(sys.executable).parent / "dbbranch")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: dbbranch" in result.stdout


def test_list_shows_templates_and_kept_branches(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    drop_ours(embedded_url)
    write_tests(pytester, "test_l", "def test_a(db_branch):\n    assert False\n")
    run_inner(pytester, embedded_url, "--dbbranch-keep=failed").assert_outcomes(failed=1)
    result = dbbranch("list", "--url", embedded_url, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    kinds = sorted(row["kind"] for row in rows)
    assert kinds == ["branch", "template"]
    branch = next(row for row in rows if row["kind"] == "branch")
    template = next(row for row in rows if row["kind"] == "template")
    assert branch["kept"] is True and branch["parent"] == template["name"]
    assert template["ready"] is True
    table = dbbranch("list", "--url", embedded_url)
    assert branch["name"] in table.stdout and template["name"] in table.stdout
    drop_ours(embedded_url)
    assert "no branches" in dbbranch("list", "--url", embedded_url).stdout


def test_list_unreachable_server_exits_2() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = dbbranch("list", "--url", f"postgresql://u:topsecret@127.0.0.1:{port}/postgres")
    assert result.returncode == 2
    assert "cannot connect to PostgreSQL" in result.stderr
    assert "topsecret" not in result.stderr + result.stdout


def test_emulator_help() -> None:
    result = dbbranch("emulator", "--help")
    assert result.returncode == 0
    assert "--backing-url" in result.stdout and "--project" in result.stdout


def test_github_actions_example_uses_real_commands() -> None:
    """Every dbbranch command and pytest option in the example workflow exists."""
    import shlex
    from pathlib import Path

    import yaml

    from pytest_dbbranch.cli import build_parser
    from pytest_dbbranch.settings import SPECS

    workflow = yaml.safe_load(
        (Path(__file__).parent.parent / "examples/github-actions/pull-request.yml").read_text()
    )
    runs = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    script = "\n".join(runs).replace("\\\n", " ")
    commands = [line[line.index("dbbranch ") :] for line in script.splitlines() if "dbbranch " in line]
    assert len(commands) >= 4
    for command in commands:
        words = shlex.split(command.split("|")[0].split("&&")[0].split(";")[0])[1:]
        words = [("x" if w.startswith("$") else w) for w in words]
        _args, rest = build_parser().parse_known_args(words)
        assert not rest, command
    options = {spec.option for spec in SPECS}
    used = {word.split("=")[0] for word in script.split() if word.startswith("--dbbranch-")}
    assert used and used <= options
