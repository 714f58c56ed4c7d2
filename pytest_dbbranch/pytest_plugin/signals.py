"""How a run ends when it is told to: SIGTERM (a cancelled CI job, ``docker stop``,
``timeout``) tears down like Ctrl-C, and an xdist worker whose controller died stops
instead of running on with live branches nobody will report."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

#: Seconds between checks that the controller of an xdist worker is still there.
ORPHAN_POLL = 0.5


def terminate_like_ctrl_c() -> None:
    """Make SIGTERM raise KeyboardInterrupt, so pytest tears fixtures down (and branches are
    dropped) instead of dying on the spot. Leaves a handler someone else installed alone;
    a second SIGTERM kills as usual."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, on_term)


def stop_when_orphaned() -> None:
    """In an xdist worker: once the controller is gone (killed with -9, its job cancelled),
    interrupt this process so it tears down and exits instead of finishing the suite."""
    parent = os.getppid()

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(ORPHAN_POLL):
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGINT)
                return

    threading.Thread(target=watch, name="dbbranch-orphan-watch", daemon=True).start()
