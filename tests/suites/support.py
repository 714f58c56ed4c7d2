"""Helpers only the suites use (the shared ones are in ``tests/helpers.py``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_dbbranch import cli
from tests.helpers import REPO, item_outcomes

CHECK_SUITE = "dbbranch-migrations::"
ALL_CHECKS = {"single-head", "applies", "idempotent", "reversible", "models-match"}


def check_outcomes(result: pytest.RunResult) -> dict[str, str]:
    """Outcome of each migration check item of a ``-rA`` run, by check name (the items'
    node ids are ``<folder>::dbbranch-migrations::<check>``)."""
    return {
        node.rsplit(CHECK_SUITE, 1)[1]: outcome
        for node, outcome in item_outcomes(result).items()
        if CHECK_SUITE in node
    }


def readme_example_diff() -> str:
    """The schema diff of the example application, as the README shows it."""
    readme = (REPO / "README.md").read_text()
    return readme.split("<!-- example-diff -->\n", 1)[1].split("\n<!-- /example-diff -->", 1)[0]


def dbbranch(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The ``dbbranch`` command in process: exit code, standard output, standard error."""
    capsys.readouterr()
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def dbbranch_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = dbbranch(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)
