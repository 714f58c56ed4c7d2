"""The README's recipes for a server from a fixture and for pytest-alembic users, in one inner
run of a project made by ``alembic init`` (its ``env.py`` in pytest-alembic's shape, with the
stock ``fileConfig`` call).

testcontainers and Docker are not available here, so ``testcontainers.postgres`` is a stand-in
with the same interface, backed by the plugin's own ``EmbeddedServer`` started in a fresh
folder: the README's conftest runs as printed, and the mechanism it relies on (a user's
session fixture starts a server and hands its URL to ``dbbranch_url``) is what is tested.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    PYTEST_ALEMBIC_ONLINE,
    InitializedProject,
    readme_block,
    remove_embedded_folder,
    run_inner,
    write_tests,
)

#: ``testcontainers/postgres.py`` of the inner project: PostgresContainer's interface
#: (constructor, context manager, ``get_connection_url`` with its driver rule), the plugin's
#: embedded server behind it. It writes down the URL it handed out.
STAND_IN = '''
"""Stand-in for testcontainers.postgres: a server this process starts, as a container would be."""
import os
from pathlib import Path

from pytest_dbbranch.server.embedded import EmbeddedServer


class PostgresContainer:
    def __init__(self, image="postgres:latest", driver="psycopg2", **kwargs):
        self.image = image
        self.driver = f"+{driver}" if driver else ""
        self.server = EmbeddedServer(Path(os.environ["STAND_IN_SERVER_FOLDER"]))

    def __enter__(self):
        self.address = self.server.acquire("testcontainers-stand-in")
        return self

    def __exit__(self, *exc_info):
        self.server.release("testcontainers-stand-in")

    def get_connection_url(self):
        url = self.address.url(scheme="postgresql" + self.driver)
        Path("handed-out-url.txt").write_text(url)
        return url
'''

#: The application's logger exists before the template is built (at collection), as a
#: module-level ``logging.getLogger`` in application code does.
APP = """
import logging

log = logging.getLogger("myapp")
"""

TESTS = """
    import logging
    from pathlib import Path

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect, make_url

    import myapp

    def test_1_branches_live_on_the_fixtures_server(db_branch_info):
        handed_out = make_url(Path("handed-out-url.txt").read_text())
        branch = make_url(db_branch_info.url)
        assert (branch.host, branch.port) == (handed_out.host, handed_out.port)
        assert db_branch_info.connection.execute("SELECT size FROM widgets").fetchall() == [(1,)]

    def test_2_the_applications_logger_survived_env_py(caplog):
        assert not myapp.log.disabled
        with caplog.at_level(logging.INFO, logger="myapp"):
            myapp.log.info("order placed")
        assert "order placed" in caplog.text

    def test_3_alembic_engine_is_a_blank_branch_pytest_alembic_can_migrate(alembic_engine):
        assert inspect(alembic_engine).get_table_names() == []
        config = Config("alembic.ini")
        config.attributes["connection"] = alembic_engine  # what pytest-alembic's runner does
        command.upgrade(config, "head")
        assert sorted(inspect(alembic_engine).get_table_names()) == ["alembic_version", "widgets"]
"""


#: Seconds the inner run may take: about 2 here, and 12 when the end of the run waits for a
#: server that is gone (libpq's connection timeout).
SLOW = 8.0


@pytest.fixture
def folders() -> Iterator[tuple[Path, Path]]:
    """The stand-in's server folder, and the embedded default's (which must stay empty); in
    RAM, where the server's account (``postgres``, when the tests run as root) may go."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    tag = uuid.uuid4().hex[:8]  # short: the server's socket path must fit in 107 bytes
    stand_in, default = base / f"dbb-stand-in-{tag}", base / f"dbb-default-{tag}"
    yield stand_in, default
    remove_embedded_folder(stand_in)
    remove_embedded_folder(default)


def test_a_server_from_a_fixture_and_pytest_alembics_engine(
    pytester: pytest.Pytester, folders: tuple[Path, Path]
) -> None:
    """With the README's ``dbbranch_url`` conftest, branches go to the server the fixture
    started, and the embedded default never starts; the template builds from an env.py in
    pytest-alembic's shape, and the stock ``fileConfig`` in it leaves the application's logger
    working in the tests after; the README's ``alembic_engine`` is a blank branch that
    pytest-alembic's kind of run migrates."""
    stand_in, default = folders
    project = InitializedProject(pytester.path)
    project.replace_online(PYTEST_ALEMBIC_ONLINE)
    project.add_widgets()
    (pytester.path / "testcontainers").mkdir()
    (pytester.path / "testcontainers" / "__init__.py").write_text("")
    (pytester.path / "testcontainers" / "postgres.py").write_text(STAND_IN)
    (pytester.path / "myapp.py").write_text(APP)
    (pytester.path / "conftest.py").write_text(readme_block("conftest_testcontainers.py"))
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "conftest.py").write_text(readme_block("conftest_pytest_alembic.py"))
    write_tests(pytester, "tests/test_recipes", TESTS)
    result = run_inner(
        pytester,
        None,
        "-p",
        "no:randomly",
        "--rootdir",
        str(pytester.path),
        STAND_IN_SERVER_FOLDER=str(stand_in),
        DBBRANCH_EMBEDDED_DIR=str(default),
    )
    result.assert_outcomes(passed=3)
    assert list(stand_in.glob("pg*/data")), "the fixture's server was not used"
    took = re.search(r"passed in ([\d.]+)s", result.stdout.str())
    assert took is not None
    problems = []
    if default.exists():
        problems.append(
            "the embedded default was started, and templates built on it before the tests, although "
            "a fixture gave the server (the prebuild does not see the dbbranch_url override)"
        )
    if float(took.group(1)) > SLOW:
        problems.append(
            f"the run took {took.group(1)} s: at session finish the plugin drops its warm pool's "
            "branches on the fixture's server, which the fixture's teardown had already stopped"
        )
    assert problems == []
