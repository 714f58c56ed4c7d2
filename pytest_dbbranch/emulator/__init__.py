"""A local Lakebase emulator: the REST API databricks-sdk calls, and a PostgreSQL wire proxy
that checks database credentials, backed by a real PostgreSQL server."""

from .command_line import main
from .service import LakebaseEmulator

__all__ = ["LakebaseEmulator", "main"]
