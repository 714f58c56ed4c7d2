"""Alembic environment for the inventory example.

Two ways in:

* pytest-dbbranch (or any other caller) puts an open SQLAlchemy connection in
  ``config.attributes["connection"]``; migrations then run on it and the
  caller stays in charge of the connection.
* From the command line nothing is handed over, so an engine is built from
  ``sqlalchemy.url`` in alembic.ini (or ``-x url=...``) as usual.
"""

import sys
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import Connection, engine_from_config, pool

# Make the `inventory` package (examples/inventory/inventory) importable no
# matter which directory alembic was started from.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inventory.models import metadata

config = context.config
target_metadata = metadata

# Only configure logging for command-line runs: calling fileConfig() inside a
# test session would replace pytest's own logging setup.
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

url_override = context.get_x_argument(as_dictionary=True).get("url")
if url_override:
    config.set_main_option("sqlalchemy.url", url_override)


def run_migrations_offline() -> None:
    """Emit the migration SQL to stdout (``alembic upgrade --sql``)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is None:
        engine = engine_from_config(
            config.get_section(config.config_ini_section, {}),
            prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )
        with engine.connect() as connection:
            do_run_migrations(connection)
    else:
        # Connection handed over by pytest-dbbranch: use it, don't close it.
        do_run_migrations(connectable)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
