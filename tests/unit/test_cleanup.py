"""What crashed or finished runs left behind, decided from our tags alone.

The reaper at session start, ``dbbranch gc`` and a user's script all call ``find_garbage``;
each ``Garbage`` carries a machine-readable ``cause`` (the reaper takes only ``dead-run``), so
a wrong cause deletes the wrong thing. Liveness is injected (``run_alive``: the server's run
locks where it has them, else host and pid), and time is passed as ``now``: no process is
killed and nothing waits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pytest_dbbranch.backends.base import BranchRecord, Tag
from pytest_dbbranch.branching.cleanup import find_garbage, run_is_gone, stale_templates

HERE = "here"
LIVE_PID = 1  # the only live process on this host
DEAD_PID = 2
NOW = 2000.0


def alive(pid: int) -> bool:
    return pid == LIVE_PID


def by_pid(tag: Tag) -> bool:
    """Liveness without server locks: only a pid on this host can be proven dead."""
    return not run_is_gone(tag, host=HERE, alive=alive)


def record(name: str, kind: str = "branch", *, expires_at: float | None = None, **tag: Any) -> BranchRecord:
    """A record of a live run on this host, created at 1000 (1000 s before NOW)."""
    values: dict[str, Any] = {
        "kind": kind,
        "run": "r1",
        "parent": "dbbt-x",
        "host": HERE,
        "pid": LIVE_PID,
        "created": 1000.0,
    }
    values.update(tag)
    return BranchRecord(name=name, tag=Tag(**values), expires_at=expires_at)


def causes(records: Iterable[BranchRecord], **options: Any) -> dict[str, str]:
    """Name -> cause of everything ``find_garbage`` would delete, seen from this host at NOW."""
    found = find_garbage(records, **{"now": NOW, "run_alive": by_pid, **options})
    result: dict[str, str] = {item.record.name: item.cause for item in found}
    assert len(result) == len(found), "a record is listed twice"
    return result


def reasons(records: Iterable[BranchRecord], **options: Any) -> dict[str, str]:
    return {
        item.record.name: item.reason
        for item in find_garbage(records, **{"now": NOW, "run_alive": by_pid, **options})
    }


# ------------------------------------------------------------------------------ branches


def test_branches_of_a_run_proven_dead_on_this_host_are_garbage() -> None:
    """A dead run is provable only where it ran: another host's pid means nothing here."""
    records = [
        record("dbb-live"),
        record("dbb-dead", pid=DEAD_PID, run="r9"),
        record("dbb-other-host", host="elsewhere", pid=DEAD_PID),
        record("dbb-no-pid", pid=0),
    ]
    assert causes(records) == {"dbb-dead": "dead-run"}
    assert "r9" in reasons(records)["dbb-dead"]


def test_with_server_side_liveness_a_dead_run_is_garbage_wherever_it_ran() -> None:
    """Where the server knows which runs hold their run lock, the host and pid do not matter:
    a run in another container with the same hostname and a live-looking pid is dead if it
    holds no lock, and a run on another machine is alive if it does."""
    live_runs = {"r1", "far"}
    records = [
        record("dbb-here-live"),
        record("dbb-same-host-other-namespace", run="r7", pid=LIVE_PID),
        record("dbb-far-live", run="far", host="elsewhere", pid=DEAD_PID),
        record("dbb-far-dead", run="gone", host="elsewhere", pid=LIVE_PID),
    ]
    found = causes(records, run_alive=lambda tag: tag.run in live_runs)
    assert found == {"dbb-same-host-other-namespace": "dead-run", "dbb-far-dead": "dead-run"}


def test_old_branches_go_only_with_older_than() -> None:
    """``--older-than`` takes what cannot be proven dead (another host, a live pid)."""
    records = [
        record("dbb-live-old", created=1000.0),
        record("dbb-other-host-old", host="elsewhere", pid=DEAD_PID, created=1000.0),
        record("dbb-live-young", created=1900.0),
    ]
    assert causes(records) == {}
    assert causes(records, older_than=500) == {"dbb-live-old": "old", "dbb-other-host-old": "old"}
    assert "older than" in reasons(records, older_than=500)["dbb-live-old"]


def test_kept_branches_stay_unless_asked_or_old() -> None:
    """Kept for a developer (``--dbbranch-keep``, ``dbbranch create``): not reaped with the
    run, only with ``include_kept`` or once older than ``older_than``."""
    records = [record("dbb-kept", pid=DEAD_PID, kept=True)]
    assert causes(records) == {}
    assert causes(records, include_kept=True) == {"dbb-kept": "dead-run"}
    assert causes(records, older_than=500) == {"dbb-kept": "dead-run"}
    assert causes(records, older_than=5000) == {}
    assert causes([record("dbb-kept-live", kept=True)], older_than=500) == {"dbb-kept-live": "old"}


def test_expired_records_go_whoever_owns_them() -> None:
    """Past its TTL a branch is garbage even of a live run on another host; not before."""
    records = [
        record("dbb-expired", host="elsewhere", expires_at=1500.0),
        record("dbb-expires-now", expires_at=NOW),
        record("dbb-not-yet", pid=LIVE_PID, expires_at=NOW + 1),
        record("dbbt-expired", "template", ready=True, group="g", expires_at=1500.0),
    ]
    assert causes(records) == {
        "dbb-expired": "expired",
        "dbb-expires-now": "expired",
        "dbbt-expired": "expired",
    }
    assert "TTL" in reasons(records)["dbb-expired"]


def test_the_current_runs_are_never_garbage() -> None:
    """Whatever they look like: dead pid (a forked worker), old, or past a TTL."""
    records = [
        record("dbb-now-dead", run="now", pid=DEAD_PID),
        record("dbb-now-old", run="now", created=0.0),
        record("dbb-now-expired", run="now", expires_at=1500.0),
        record("dbbt-now-half", "template", run="now", pid=DEAD_PID, group="g"),
    ]
    assert causes(records, current_runs=["now"], older_than=1, include_kept=True) == {}
    assert set(causes(records, older_than=1)) == {r.name for r in records}


# ----------------------------------------------------------------------------- templates


def test_a_replaced_template_is_stale_and_names_its_replacement() -> None:
    records = [
        record("dbbt-old", "template", group="p", ready=True, created=100.0),
        record("dbbt-new", "template", group="p", ready=True, created=900.0),
        record("dbbt-other-group", "template", group="q", ready=True, created=100.0),
    ]
    assert causes(records) == {"dbbt-old": "stale-template"}
    assert "replaced by dbbt-new" in reasons(records)["dbbt-old"]
    # A sealed template nothing replaced is reused across runs; with --older-than it goes
    # (a copy of the project elsewhere, a marker's old revision), unless a run uses it.
    assert causes(records, older_than=1) == {
        "dbbt-old": "stale-template",
        "dbbt-new": "unused-template",
        "dbbt-other-group": "unused-template",
    }
    in_use = {"dbbt-old", "dbbt-new"}
    assert causes(records, older_than=1, in_use=in_use.__contains__) == {
        "dbbt-other-group": "unused-template"
    }


def test_a_half_built_template_goes_once_its_builder_is_gone() -> None:
    """Unsealed: still being built by a live run (however long it takes), or left by a
    crashed build. Age proves nothing: a build that cannot be proven dead stays."""
    records = [
        record("dbbt-crashed", "template", group="a", pid=DEAD_PID),
        record("dbbt-building", "template", group="b"),
        record("dbbt-elsewhere", "template", group="c", host="elsewhere", pid=DEAD_PID),
    ]
    assert causes(records) == {"dbbt-crashed": "half-built"}
    assert causes(records, older_than=500) == {"dbbt-crashed": "half-built"}


def test_a_template_being_built_is_not_garbage_because_an_older_one_is_sealed() -> None:
    """A live run building the next template of a group (the migrations changed) must not
    lose it to ``dbbranch gc`` or to another run's stale-template cleanup: the older sealed
    template does not replace a newer one."""
    records = [
        record("dbbt-sealed", "template", group="p", ready=True, created=100.0),
        record("dbbt-building", "template", group="p", ready=False, created=1900.0),
    ]
    assert causes(records) == {}


# ------------------------------------------------------------------------------- sources


def test_a_restored_dump_goes_once_no_template_uses_it_whatever_its_age() -> None:
    """After the dump changed (or its templates went), nothing forks from the old restore any
    more: ``gc`` takes it without ``--older-than`` (it held RAM on the embedded default until
    someone thought of an age), but never while a live run holds it (a run that restored it
    and is building its template)."""
    records = [
        record("dbbs-used", "source", ready=True),
        record("dbbs-unused", "source", ready=True),
        record("dbbs-young", "source", ready=True, created=1999.0),
        record("dbbt-t", "template", group="g", ready=True, parent="dbbs-used"),
    ]
    assert causes(records) == {"dbbs-unused": "unused-source", "dbbs-young": "unused-source"}
    assert reasons(records)["dbbs-unused"] == "restored dump no template uses"
    assert causes(records, older_than=500) == {
        "dbbs-unused": "unused-source",
        "dbbs-young": "unused-source",
        "dbbt-t": "unused-template",
    }
    # Only while no live run holds it.
    assert causes(records, in_use={"dbbs-unused", "dbbs-young"}.__contains__) == {}
    assert causes(records, older_than=500, in_use={"dbbs-unused", "dbbs-young", "dbbt-t"}.__contains__) == {}


# ------------------------------------------------------------------------------ together


def test_find_garbage_rules_together() -> None:
    """One listing mixing every kind, as ``dbbranch gc`` sees a shared server."""
    records = [
        record("dbb-live"),
        record("dbb-dead", pid=DEAD_PID),
        record("dbb-dead-kept", pid=DEAD_PID, kept=True),
        record("dbb-other-host", host="elsewhere", pid=DEAD_PID),
        record("dbb-current", run="now", pid=DEAD_PID),
        record("dbbt-old", "template", group="p", ready=True, created=100.0),
        record("dbbt-new", "template", group="p", ready=True, created=900.0),
        record("dbbt-other-group", "template", group="q", ready=True, created=100.0),
        record("dbbt-half", "template", group="z", ready=False, pid=DEAD_PID),
        record("dbb-expired", run="r", host="x", created=999.0, expires_at=1500.0),
    ]
    assert causes(records, current_runs=["now"]) == {
        "dbb-dead": "dead-run",
        "dbbt-old": "stale-template",
        "dbbt-half": "half-built",
        "dbb-expired": "expired",
    }
    assert causes(records, current_runs=["now"], older_than=500) == {
        "dbb-live": "old",
        "dbb-dead": "dead-run",
        "dbb-dead-kept": "dead-run",
        "dbb-other-host": "old",
        "dbbt-old": "stale-template",
        "dbbt-new": "unused-template",
        "dbbt-other-group": "unused-template",
        "dbbt-half": "half-built",
        "dbb-expired": "expired",
    }


def test_garbage_to_dict_carries_the_cause() -> None:
    """``dbbranch gc --json`` output: what, whose, why (for programs and for people)."""
    (item,) = find_garbage([record("dbb-dead", pid=DEAD_PID)], now=NOW, run_alive=by_pid)
    assert item.to_dict() == {
        "name": "dbb-dead",
        "kind": "branch",
        "run": "r1",
        "cause": "dead-run",
        "reason": item.reason,
    }


# ------------------------------------------------------------------------ stale_templates


def stale(records: list[BranchRecord]) -> dict[str, str]:
    return {old.name: new.name for old, new in stale_templates(records)}


def test_a_template_is_stale_once_a_newer_sealed_one_of_its_group_exists() -> None:
    """Sealed or half-built, an older template is replaced by the newest sealed one."""
    records = [
        record("dbbt-1", "template", group="p", ready=True, created=100.0),
        record("dbbt-2-half", "template", group="p", ready=False, created=200.0),
        record("dbbt-3", "template", group="p", ready=True, created=300.0),
    ]
    assert stale(records) == {"dbbt-1": "dbbt-3", "dbbt-2-half": "dbbt-3"}


def test_other_groups_and_other_kinds_are_untouched() -> None:
    records = [
        record("dbbt-p-old", "template", group="p", ready=True, created=100.0),
        record("dbbt-p-new", "template", group="p", ready=True, created=900.0),
        record("dbbt-q-old", "template", group="q", ready=True, created=100.0),
        record("dbb-branch", group="p", created=50.0),
        record("dbbs-source", "source", group="p", ready=True, created=50.0),
    ]
    assert stale(records) == {"dbbt-p-old": "dbbt-p-new"}


def test_an_unsealed_template_replaces_nothing_and_is_not_replaced_by_an_older_one() -> None:
    """The one rule: replaced only by a NEWER, SEALED template of the same group. A newer
    template still being built replaces nothing yet, and is not stale either."""
    records = [
        record("dbbt-sealed", "template", group="p", ready=True, created=100.0),
        record("dbbt-building", "template", group="p", ready=False, created=900.0),
        record("dbbt-lone-building", "template", group="q", ready=False, created=900.0),
    ]
    pairs = list(stale_templates(records))
    for old, new in pairs:
        assert new.tag.ready, (old.name, new.name)
        assert new.tag.group == old.tag.group, (old.name, new.name)
        assert new.tag.created > old.tag.created, f"{old.name} replaced by the older {new.name}"
    assert stale(records) == {}
