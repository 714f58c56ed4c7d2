"""Reading an Alembic configuration in every form real projects use.

``alembic.ini`` with ``script_location = %(here)s/migrations`` or a path relative to the ini
file; ``[tool.alembic]`` in ``pyproject.toml`` (Alembic 1.16+), alone or beside an ini that
holds only logging. Relative paths are taken relative to the file that names them, never to
the folder pytest happens to be started from.
"""

from __future__ import annotations

import configparser
import inspect
import os
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ConfigError

#: Values that name folders: made absolute against the configuration file's folder.
_PATH_OPTIONS = ("script_location", "version_locations", "prepend_sys_path")


def toml_alembic(path: Path) -> dict[str, Any] | None:
    """The ``[tool.alembic]`` table of a pyproject.toml, if it has one."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    table = data.get("tool", {}).get("alembic")
    return table if isinstance(table, dict) else None


def alembic_config(path: Path, where: str) -> Any:
    """An ``alembic.config.Config`` for ``path`` (an ini file or a pyproject.toml), with the
    folders it names made absolute, or a ``ConfigError`` that names the file."""
    from alembic.config import Config

    if not path.is_file():
        raise ConfigError(f"{where}: Alembic config file {path} does not exist")
    takes_toml = "toml_file" in inspect.signature(Config.__init__).parameters
    if path.suffix == ".toml":
        if toml_alembic(path) is None:
            raise ConfigError(f"{where}: {path} has no [tool.alembic] table")
        if not takes_toml:
            raise ConfigError(f"{where}: Alembic reads [tool.alembic] from version 1.16; upgrade Alembic")
        config = Config(toml_file=str(path))
    else:
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error as exc:
            raise ConfigError(f"{path}: malformed alembic.ini ({exc})") from None
        beside = path.parent / "pyproject.toml"
        has_toml = takes_toml and beside.is_file() and toml_alembic(beside) is not None
        if not parser.has_option("alembic", "script_location") and not has_toml:
            raise ConfigError(
                f"{path}: no [alembic] section with script_location (nor a [tool.alembic] table in "
                "a pyproject.toml beside it); it should name the folder holding env.py and versions/"
            )
        config = Config(str(path), toml_file=str(beside)) if has_toml else Config(str(path))
    anchor_paths(config, path.parent)
    return config


def anchor_paths(config: Any, base: Path) -> None:
    """Make the folders the configuration names absolute, relative to its own folder."""
    for name in _PATH_OPTIONS:
        value = _option(config, name)
        if not value or _is_resource(value):
            continue
        separator = _separator(config, name)
        parts = value.split(separator) if separator else [value]
        anchored = [part if not part or Path(part).is_absolute() else str(base / part) for part in parts]
        joined = (separator or " ").join(anchored)
        if joined != value:
            config.set_main_option(name, joined.replace("%", "%%"))


def _option(config: Any, name: str) -> str | None:
    getter = getattr(config, "get_alembic_option", None) or config.get_main_option
    value = getter(name)
    if isinstance(value, list):  # [tool.alembic] may give lists
        value = " ".join(str(v) for v in value)
    return str(value) if value else None


def _separator(config: Any, name: str) -> str | None:
    if name == "script_location":
        return None
    chosen = _option(config, "path_separator") or _option(config, "version_path_separator")
    return {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}.get(chosen or "", " ")


def _is_resource(value: str) -> bool:
    """``package:folder`` names a folder inside an installed package, not a path."""
    head = value.split(":", 1)[0]
    return ":" in value and "/" not in head and "\\" not in head and len(head) > 1


def settings_values(path: Path, section: str) -> list[tuple[str, str]]:
    """The configuration values that can shape the schema, as written (``%(here)s``
    unexpanded, so every checkout of a project gives the same): all but ``sqlalchemy.url``,
    which the plugin replaces anyway; from the ini's section and a ``[tool.alembic]``."""
    values: dict[str, str] = {}
    if path.suffix != ".toml":
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(path)
        if parser.has_section(section):
            values.update(parser.items(section))
    toml_path = path if path.suffix == ".toml" else path.parent / "pyproject.toml"
    table = toml_alembic(toml_path) if toml_path.is_file() else None
    for key, value in (table or {}).items():
        values[f"toml:{key}"] = repr(value)
    values.pop("sqlalchemy.url", None)
    return sorted(values.items())


def default_config_file(root: Path) -> Path | None:
    """Where a project keeps its Alembic configuration when no setting names it."""
    ini = root / "alembic.ini"
    if ini.is_file():
        return ini
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and toml_alembic(pyproject) is not None:
        return pyproject
    return None
