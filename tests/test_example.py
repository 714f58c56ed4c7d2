"""The shipped example suite runs green on the embedded default and on an existing server."""

from __future__ import annotations

import pytest
from conftest import copy_example, drop_ours, our_branches, run_inner


def _passed(result: pytest.RunResult) -> int:
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()
    return int(outcomes["passed"])


def test_example_suite_on_embedded_server(pytester: pytest.Pytester, embedded_url: str) -> None:
    drop_ours(embedded_url)
    copy_example(pytester)
    result = run_inner(pytester, embedded_url)
    assert result.ret == 0, result.stdout.str()
    assert _passed(result) >= 15
    assert our_branches(embedded_url) == []


def test_example_suite_with_xdist_loadscope(pytester: pytest.Pytester, embedded_url: str) -> None:
    drop_ours(embedded_url)
    copy_example(pytester)
    result = run_inner(pytester, embedded_url, "-n", "2", "--dist", "loadscope")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*templates: *, 3 built*"])  # head, 0001, 0002
    assert our_branches(embedded_url) == []


@pytest.mark.system_server
def test_example_suite_on_existing_server_as_non_superuser(
    pytester: pytest.Pytester, system_url: str
) -> None:
    copy_example(pytester)
    result = run_inner(pytester, system_url)
    assert result.ret == 0, result.stdout.str()
    assert _passed(result) >= 15
    assert our_branches(system_url) == []
