"""``pytest_plugin.signals``: SIGTERM becomes a KeyboardInterrupt (so pytest tears down, as
on Ctrl-C) unless someone else handles SIGTERM already, and only once; a process whose
parent is gone interrupts itself. Each case runs in a fresh interpreter, which the test
signals and watches; ``suites/test_signals.py`` shows the same in real runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.helpers import process_alive

PRELUDE = """
import os, signal, sys, time
from pytest_dbbranch.pytest_plugin.signals import stop_when_orphaned, terminate_like_ctrl_c
"""


def python(code: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def wait_ready(proc: subprocess.Popen[str]) -> None:
    """The child prints "ready" once its handlers are in place."""
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""


def test_sigterm_raises_keyboard_interrupt_once() -> None:
    proc = python(
        """
        terminate_like_ctrl_c()
        try:
            print("ready", flush=True)
            time.sleep(30)
        except KeyboardInterrupt as exc:
            print(f"interrupted: {exc}", flush=True)
        time.sleep(30)  # a second SIGTERM kills as usual
        """
    )
    try:
        wait_ready(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "interrupted: SIGTERM"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.communicate()


def test_a_sigterm_handler_someone_installed_is_left_alone() -> None:
    proc = python(
        """
        signal.signal(signal.SIGTERM, lambda *a: (print("theirs", flush=True), sys.exit(0)))
        terminate_like_ctrl_c()
        print("ready", flush=True)
        time.sleep(30)
        """
    )
    try:
        wait_ready(proc)
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=10)
        assert out.strip() == "theirs" and proc.returncode == 0
    finally:
        proc.kill()
        proc.communicate()


ORPHAN = """
import time
from pytest_dbbranch.pytest_plugin.signals import stop_when_orphaned
try:
    stop_when_orphaned()
    print("ready", flush=True)
    time.sleep(30)
except KeyboardInterrupt:
    open("interrupted", "w").close()
"""


def test_a_process_whose_parent_dies_interrupts_itself(tmp_path: Path) -> None:
    """The parent (an xdist controller) is killed: within a second or two the child gets a
    KeyboardInterrupt, as if someone pressed Ctrl-C."""
    (tmp_path / "orphan.py").write_text(ORPHAN)
    parent = python(
        """
        import subprocess
        child = subprocess.Popen([sys.executable, "orphan.py"], stdout=subprocess.PIPE, text=True)
        child.stdout.readline()
        print(child.pid, flush=True)
        time.sleep(30)
        """,
        cwd=tmp_path,
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait()
        killed = time.monotonic()
        while process_alive(child) and time.monotonic() - killed < 10:
            time.sleep(0.02)
        took = time.monotonic() - killed
    finally:
        parent.kill()
        parent.communicate()
        if child and process_alive(child):
            os.kill(child, signal.SIGKILL)
    assert took < 3, f"the orphan ran on for {took:.1f}s"
    assert (tmp_path / "interrupted").exists(), "it ended without a KeyboardInterrupt"
