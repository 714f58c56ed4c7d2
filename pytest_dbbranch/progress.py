"""One line per step of a long build, with its time: a 40-second restore or a slow data
migration in silence looks like a hang, and under a per-test timeout like a failing test."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Writes text; ``end=True`` finishes the line.
Writer = Callable[[str, bool], None]


class Progress:
    """Silent unless given a writer (the pytest terminal in the process that builds)."""

    def __init__(self, write: Writer | None = None) -> None:
        self._write = write
        self._open: tuple[str, float] | None = None

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        self.begin(text)
        try:
            yield
        finally:
            self.end()

    def begin(self, text: str) -> None:
        """Start a step whose end is known later (Alembic announces each revision as it
        starts: the next announcement ends the previous one)."""
        self.end()
        if self._write is not None:
            self._write(f"pytest-dbbranch: {text} ... ", False)
        self._open = (text, time.perf_counter())

    def end(self) -> None:
        if self._open is None:
            return
        _text, started = self._open
        self._open = None
        if self._write is not None:
            self._write(f"{time.perf_counter() - started:.1f} s", True)

    def note(self, text: str) -> None:
        self.end()
        if self._write is not None:
            self._write(f"pytest-dbbranch: {text}", True)
