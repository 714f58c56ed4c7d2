"""The plugin and the ``dbbranch`` command read the same configuration file, in every form
pytest 9 reads, and take TOML's own types where pytest 9 does.

``dbbranch create`` or ``diff`` run in a project folder must see the source and Alembic config
its tests see; once the command kept its own list of files it drifted from pytest's (it saw
nothing in ``[tool.pytest]`` or ``pytest.toml``). So each form is written, pytest's own
configuration is built from it (``pytester.parseconfigure``: the plugin's ``pytest_configure``
resolves the settings), and the command's reading must give the same settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dbbranch import cli
from pytest_dbbranch.pytest_plugin.state import STATE
from pytest_dbbranch.settings import SPECS, Settings, resolve
from tests.helpers import readme_block

#: The values every form sets: a path, a flag, a number (TOML types in pytest 9's native
#: tables, text in the ini-style ones).
TOML_VALUES = 'dbbranch_source = "dumps/snap.sql"\ndbbranch_rebuild = true\ndbbranch_pool_size = 0\n'
INI_VALUES = "dbbranch_source = dumps/snap.sql\ndbbranch_rebuild = true\ndbbranch_pool_size = 0\n"

#: file name -> its text, in the order pytest 9 looks for them in one folder.
FORMS = {
    "pytest.toml": "[pytest]\n" + TOML_VALUES,
    ".pytest.toml": "[pytest]\n" + TOML_VALUES,
    "pytest.ini": "[pytest]\n" + INI_VALUES,
    ".pytest.ini": "[pytest]\n" + INI_VALUES,
    "pyproject.toml [tool.pytest]": "[tool.pytest]\n" + TOML_VALUES,
    "pyproject.toml [tool.pytest.ini_options]": "[tool.pytest.ini_options]\n"
    + TOML_VALUES.replace("true", '"true"').replace("= 0", '= "0"'),
    "tox.ini": "[pytest]\n" + INI_VALUES,
    "setup.cfg": "[tool:pytest]\n" + INI_VALUES,
}


def write_form(folder: Path, form: str) -> None:
    folder.mkdir(parents=True)
    (folder / form.split(" ")[0]).write_text(FORMS[form])


def pytest_settings(pytester: pytest.Pytester) -> Settings:
    """What the plugin resolved for a pytest started in the current folder."""
    config = pytester.parseconfigure()
    return config.stash[STATE].settings


def command_settings() -> Settings:
    """What ``dbbranch`` resolves in the current folder (no flags, no environment)."""
    values, root = cli.ini_values(Path.cwd())
    return resolve(options={spec.name: None for spec in SPECS}, env={}, ini=values, root=root)


def test_every_configuration_form_means_the_same_to_pytest_and_the_command(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For each form alone, started in its folder and in a subfolder: the same settings, the
    relative path taken from the configuration file's folder, the flag and the number
    parsed (no "expects a string, got bool" for ``dbbranch_rebuild = true``)."""
    for index, form in enumerate(FORMS):
        folder = pytester.path / f"form{index}"
        write_form(folder, form)
        (folder / "sub").mkdir()
        for start in (folder, folder / "sub"):
            monkeypatch.chdir(start)
            seen = pytest_settings(pytester)
            assert seen == command_settings(), (form, start)
            assert seen.rebuild is True and seen.pool_size == 0, form
            assert seen.resolve_path(str(seen.source)) == folder / "dumps" / "snap.sql", form


def test_where_several_files_exist_both_pick_the_one_pytest_picks(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest takes the first file in its order that has a pytest section; a pyproject.toml
    without one does not count, nor does a tox.ini without ``[pytest]``."""
    cases = {
        "pytest.toml over pyproject": {
            "pytest.toml": '[pytest]\ndbbranch_source = "from-pytest-toml.sql"\n',
            "pyproject.toml": '[tool.pytest]\ndbbranch_source = "from-pyproject.sql"\n',
        },
        "a pyproject without a pytest table": {
            "pyproject.toml": '[tool.alembic]\nscript_location = "migrations"\n',
            "tox.ini": "[pytest]\ndbbranch_source = from-tox.sql\n",
        },
        "a tox.ini without [pytest]": {
            "tox.ini": "[tox]\nenvlist = py311\n",
            "setup.cfg": "[tool:pytest]\ndbbranch_source = from-setup-cfg.sql\n",
        },
    }
    expected = ["from-pytest-toml.sql", "from-tox.sql", "from-setup-cfg.sql"]
    for index, files in enumerate(cases.values()):
        folder = pytester.path / f"case{index}"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        monkeypatch.chdir(folder)
        seen = pytest_settings(pytester)
        assert seen == command_settings()
        assert seen.source == expected[index]


def test_the_readme_pytest9_example(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's ``[tool.pytest]`` block, with a TOML boolean and number, as the plugin and
    the command read it."""
    (pytester.path / "pyproject.toml").write_text(readme_block("pytest9.toml"))
    monkeypatch.chdir(pytester.path)
    seen = pytest_settings(pytester)
    assert seen == command_settings()
    assert (seen.source, seen.rebuild, seen.pool_size) == ("snapshot.sql", True, 0)
