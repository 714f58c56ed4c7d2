"""pytest plugin loaded into every generated suite (``-p bench_recorder``).

It keeps pytest's own phase timings: ``report.duration`` of the ``setup`` phase covers every
fixture set up for the test, ``teardown`` every fixture finalised after it. The controller
(never an xdist worker, which forwards its reports) writes them to ``$BENCH_RECORD_FILE``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_phases: dict[str, dict[str, float]] = {}
_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when in ("setup", "teardown"):
        _phases.setdefault(report.nodeid, {})[report.when] = float(report.duration)
    if report.failed:
        _outcomes[report.nodeid] = f"failed in {report.when}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return
    target = os.environ.get("BENCH_RECORD_FILE")
    if not target:
        return
    tests = [
        {
            "nodeid": nodeid,
            "setup_s": phases.get("setup", 0.0),
            "teardown_s": phases.get("teardown", 0.0),
            "outcome": _outcomes.get(nodeid, "passed"),
        }
        for nodeid, phases in _phases.items()
    ]
    Path(target).write_text(json.dumps({"exitstatus": int(exitstatus), "tests": tests}))
