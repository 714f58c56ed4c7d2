"""pytest-postgresql, set up the way its README shows for an existing server.

``postgresql_noproc`` points at the benchmark's server; its ``load`` list builds the
session's template database from the example's snapshot (a plain SQL file, run by
pytest-postgresql's own SQL loader) and then runs the example's Alembic migrations. The
``postgresql`` client fixture then clones that template for every test and drops the clone
afterwards. Copied into a generated suite as ``conftest.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from pytest_postgresql import factories
from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

APP = Path(os.environ["BENCH_APP_DIR"])


def upgrade_to_head(
    host: str, port: int | str, user: str, dbname: str, password: str | None, **_: Any
) -> None:
    """A ``load`` callable: migrate the template to the Alembic head, in-process."""
    url = URL.create(
        "postgresql+psycopg", username=user, password=password, host=host, port=int(port), database=dbname
    )
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config = Config(str(APP / "alembic.ini"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


postgresql_noproc = factories.postgresql_noproc(
    host=os.environ["BENCH_HOST"],
    port=os.environ["BENCH_PORT"],
    user=os.environ["BENCH_USER"],
    dbname="bench_pgpg",
    load=[APP / "snapshot.sql", upgrade_to_head],
)
postgresql = factories.postgresql("postgresql_noproc")
