"""The README's examples are real: they are extracted from README.md and run here."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import REPO, AlembicProject, drop_ours, our_branches, run_inner, write_tests

BLOCK = re.compile(r"<!-- readme-example: (\S+) -->\s*```python\n(.*?)```", re.DOTALL)

#: Next to the README's fixtures: what else ``branch_fixture`` promises.
FACTORY_EXTRAS = """
    def test_factory_branch_is_not_the_test_branch(legacy_db, db_branch_info):
        assert legacy_db.name != db_branch_info.name

    def test_blank_branch_has_no_tables(blank_db):
        n = blank_db.connection.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
        assert n == 0
"""


def readme_examples() -> dict[str, str]:
    return dict(BLOCK.findall((REPO / "README.md").read_text()))


def test_readme_examples_pass(
    pytester: pytest.Pytester, alembic_project: AlembicProject, embedded_url: str
) -> None:
    """The quick start, the ``branch_fixture`` conftest and its test, as the README prints
    them (plus two checks of the factory's fixtures), pass on the widgets project."""
    examples = readme_examples()
    assert set(examples) == {"test_quickstart.py", "conftest.py", "test_factory.py"}
    for name, code in examples.items():
        (pytester.path / name).write_text(code)
    write_tests(pytester, "test_factory_extras", FACTORY_EXTRAS)
    result = run_inner(pytester, embedded_url, "-p", "no:randomly")
    result.assert_outcomes(passed=7)
    assert our_branches(embedded_url) == []


def test_readme_script_example(
    alembic_project: AlembicProject, embedded_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "works without pytest" snippet, run in this process against a real server."""
    text = (REPO / "README.md").read_text()
    code = text.split("The machinery works without pytest:\n\n```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('"postgresql://app@127.0.0.1/postgres"', repr(embedded_url))
    monkeypatch.chdir(alembic_project.root)
    drop_ours(embedded_url)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert our_branches(embedded_url) == []
    assert len(our_branches(embedded_url, "template")) == 1


def test_readme_performance_numbers_come_from_the_benchmark_results() -> None:
    """The Performance table shows the medians the benchmark last wrote, and its plot exists."""
    results = json.loads((REPO / "bench" / "results.json").read_text())
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Performance", 1)[1].split("\n## ", 1)[0]
    for key in ("raw_floor", "db_branch_pool0", "db_branch_pool2", "rollback", "pytest_postgresql"):
        median = results["per_test"][key]["median_ms"]
        shown = f"{median:.3g}" if median >= 1 else f"{median:.2f}"
        assert shown in section, (key, shown)
    assert (REPO / "bench" / "results.png").stat().st_size > 10_000
