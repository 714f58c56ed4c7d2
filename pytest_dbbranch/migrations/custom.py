"""A migration step the user writes: ``callable:package.module:function``, called with the
branch's URL and the target, for tools the plugin has no adapter for (Liquibase, sqitch, a
schema built by the application itself).

The plugin cannot see inside it, so the fingerprint covers the function's module file and
``dbbranch_fingerprint_files``, and the checks that walk revisions do not apply.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..conninfo import ServerAddress
from ..errors import ConfigError, MigrationError
from ..progress import Progress
from .base import Revision

if TYPE_CHECKING:
    from ..settings import Settings


def import_object(spec: str, root: Path, where: str) -> Any:
    """Import ``package.module:attribute`` with the rootdir on the path, as pytest would."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"{where}: expected 'package.module:name', got {spec!r}")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import {module_name!r} ({exc})") from None
    value: Any = module
    for part in attribute.split("."):
        value = getattr(value, part, None)
        if value is None:
            raise ConfigError(f"{where}: {module_name!r} has no {attribute!r}")
    return value


@dataclass
class CallableMigrator:
    spec: str
    function: Callable[[str, str], Any]
    module_file: Path | None

    kind = "callable"
    can_downgrade = False

    @property
    def description(self) -> str:
        return f"the function {self.spec}"

    def files(self) -> list[tuple[str, Path]]:
        return [(f"callable/{self.module_file.name}", self.module_file)] if self.module_file else []

    def settings_text(self) -> list[tuple[str, str]]:
        return [("callable", self.spec)]

    def lineage(self) -> tuple[str, ...]:
        return (self.spec,)

    def resolve(self, target: str, where: str) -> tuple[str, ...]:
        return (target,)

    def heads(self) -> list[str]:
        return ["head"]

    def revisions(self) -> list[Revision]:
        return [Revision(id="head", path=self.module_file, title=self.spec)]

    def applied(self, address: ServerAddress) -> tuple[str, ...]:
        return ()

    def pending(self, applied: tuple[str, ...], target: str) -> list[Revision]:
        return self.revisions()

    def upgrade(self, address: ServerAddress, target: str, *, progress: Progress | None = None) -> None:
        progress = progress or Progress()
        progress.begin(f"migrating with {self.spec}")
        try:
            self.function(address.url(), target)
        except Exception as exc:
            frame = _innermost_in(exc, self.module_file)
            error = MigrationError(
                f"the migration function {self.spec} failed (migrating a branch to {target!r}).\n"
                + (f"  file: {frame.filename}, line {frame.lineno}\n" if frame else "")
                + f"  error: {type(exc).__name__}: {address.redact(str(exc)).strip()}"
            )
            error.location = (frame.filename, frame.lineno or 1) if frame else None
            raise error from None
        finally:
            progress.end()

    def downgrade(self, address: ServerAddress, target: str) -> None:
        raise MigrationError(f"{self.description} cannot downgrade")


def _innermost_in(exc: BaseException, module_file: Path | None) -> Any:
    import traceback

    if module_file is None:
        return None
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == module_file.resolve():
            found = frame
    return found


def load_callable(spec: str, settings: Settings, where: str) -> CallableMigrator:
    function = import_object(spec, settings.root, where)
    if not callable(function):
        raise ConfigError(f"{where}: {spec} is not a function")
    try:
        inspect.signature(function).bind("url", "head")
    except TypeError:
        message = f"{where}: {spec} must take two arguments: the branch's URL and the target"
        raise ConfigError(message) from None
    except ValueError:
        pass  # no signature to read (a builtin): trust it
    source = inspect.getsourcefile(function)
    return CallableMigrator(spec=spec, function=function, module_file=Path(source) if source else None)
