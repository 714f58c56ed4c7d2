"""An inner pytest run kept alive in the background, for stories about concurrent runs.

The run is driven through its standard streams, so nothing polls or sleeps: its tests print
markers (``print(..., flush=True)`` with ``-s``) that ``wait_for`` reads as they come, and
block on ``sys.stdin.readline()`` until ``release`` writes a line. A watchdog kills a run
that hangs, which ends any read.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pytest

#: Longer than any inner run takes on a loaded machine; a hang fails instead of blocking.
WATCHDOG_SECONDS = 120.0


class LiveRun:
    """``pytest -s -v`` in ``folder`` (behind ``prefix``, e.g. ``unshare ...``), started now."""

    def __init__(
        self, folder: Path, *args: str, prefix: Sequence[str] = (), env: dict[str, str] | None = None
    ) -> None:
        argv = [sys.executable, "-m", "pytest", "-s", "-v", "-p", "no:cacheprovider", "-p", "no:randomly"]
        self.proc = subprocess.Popen(
            [*prefix, *argv, *args],
            cwd=folder,
            env=dict(os.environ, **(env or {})),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.seen: list[str] = []
        self._watchdog = threading.Timer(WATCHDOG_SECONDS, self.proc.kill)
        self._watchdog.start()

    @property
    def output(self) -> str:
        return "".join(self.seen)

    def wait_for(self, marker: str) -> str:
        """The first output line containing ``marker`` (blocks until the run prints it)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.seen.append(line)
            if marker in line:
                return line
        pytest.fail(f"the run ended (exit {self.proc.wait()}) without printing {marker!r}:\n{self.output}")

    def release(self) -> None:
        """Let the test blocked on its standard input go on."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        """Wait for the end of the run; its exit code (all output is in ``output``)."""
        out, _ = self.proc.communicate(timeout=WATCHDOG_SECONDS)
        self.seen.append(out)
        return self.proc.returncode

    def kill(self) -> None:
        """``kill -9``: no teardown, no atexit, connections cut by the kernel."""
        self.proc.send_signal(signal.SIGKILL)
        self.finish()

    def __enter__(self) -> LiveRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._watchdog.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
