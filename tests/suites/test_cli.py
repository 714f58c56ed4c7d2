"""The ``dbbranch`` command line as a shell and a CI workflow use it. What its subcommands do
to a server is tested in process (``tests/integration``) and in ``test_guarantees.py``."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pytest_dbbranch.cli import build_parser
from pytest_dbbranch.settings import SPECS
from tests.helpers import REPO
from tests.suites.support import dbbranch


def test_console_script_is_installed() -> None:
    """``pip install`` puts a ``dbbranch`` command on PATH (next to the interpreter)."""
    exe = shutil.which("dbbranch") or str(Path(sys.executable).parent / "dbbranch")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: dbbranch" in result.stdout
    for command in ("list", "create", "delete", "gc", "diff", "emulator"):
        assert command in result.stdout


@pytest.mark.parametrize(("command", "shown"), [("list", "--json"), ("emulator", "--backing-url")])
def test_subcommand_help(capsys: pytest.CaptureFixture[str], command: str, shown: str) -> None:
    """Every subcommand answers ``--help`` with exit 0, the emulator's with its own options."""
    with pytest.raises(SystemExit) as exited:
        dbbranch(capsys, command, "--help")
    assert exited.value.code == 0
    assert shown in capsys.readouterr().out


def test_github_actions_example_uses_real_commands() -> None:
    """Every dbbranch command and pytest option in the example workflow exists."""
    workflow = yaml.safe_load((REPO / "examples/github-actions/pull-request.yml").read_text())
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
