"""The run's Lakebase branch: the unit of Lakebase branching.

A Lakebase branch per test costs about five API calls, seconds of latency and one of the ten
branches a project may have; four CI jobs with four workers each exhaust the project. So the
process that owns the run (the xdist controller, or pytest without xdist) makes one branch for
the whole run, and inside it the PostgreSQL backend forks a database per test with
``CREATE DATABASE ... TEMPLATE``: no API call per test.

The run's branch is forked from a *template branch*: a copy of the source in which the
fingerprint's templates were migrated and sealed, shared by every run and CI job with the
same fingerprint (so migrations run once, not once per job). A template branch is marked
ready only after its last template is sealed; while it is built, its builder holds an
advisory lock in it, which is how another job tells a build in progress from a builder that
died (without an age rule). A template branch older than ``lakebase_template_max_age`` is
not forked any more: the next run copies the moving source again.

The run's branch has a TTL a heartbeat keeps extending, so a job cancelled without teardown
(SIGKILL, a lost runner) leaves it only until the TTL runs out; ``dbbranch gc`` removes it
sooner, seeing that no process holds its run lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg

from .. import names
from ..backends import build_lock
from ..backends.lakebase import (
    MARK_DATABASE,
    BranchAddress,
    LakebaseConfig,
    LakebaseMark,
    LakebaseProject,
)
from ..backends.postgres import PostgresBackend, lock_held
from ..errors import BranchExistsError, DbBranchError
from ..progress import Progress
from ..settings import Settings
from .sources import parse_source
from .stats import Stats

log = logging.getLogger("pytest_dbbranch")

#: A template branch created this recently may not carry its mark yet: its builder is
#: between the create call and its first login.
MARK_GRACE = 180.0
#: Poll step while another job builds the template branch this run needs.
WAIT_STEP = 2.0


def lakebase_source(settings: Settings, database: str) -> tuple[str | None, str]:
    """Where a Lakebase run's data comes from: the source *branch* (None for the project's
    default) and the source as the PostgreSQL backend inside the branch sees it (the data
    database, or a dump file restored there)."""
    source = parse_source(settings)
    if source.kind == "dump":
        return None, f"file:{source.location}"
    branch = source.location if source.kind == "database" else None
    return branch, f"db:{database}"


def inner_settings(settings: Settings, database: str) -> Settings:
    """The settings the PostgreSQL machinery sees inside a Lakebase branch."""
    return dataclasses.replace(settings, source=lakebase_source(settings, database)[1])


class LakebaseRun:
    """One run's Lakebase branch, made by the process that owns the run and attached to by
    the others (xdist workers), which compute its name from the run id."""

    def __init__(
        self,
        project: LakebaseProject,
        *,
        run_id: str,
        owns: bool,
        lock_folder: Path,
        stats: Stats,
        progress: Progress,
    ) -> None:
        self.project = project
        self.api = project.api
        self.run_id = run_id
        self.owns = owns
        self.name = names.run_branch_name(run_id)
        self.lock_folder = lock_folder
        self.stats = stats
        self.progress = progress
        self.template_branch: str | None = None
        self._started = False
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def config(self) -> LakebaseConfig:
        return self.project.config

    def backend(self, strategy: str = "auto") -> PostgresBackend:
        """The PostgreSQL backend inside the run's branch: templates and test databases."""
        return self._backend_in(self.name, strategy)

    def _backend_in(self, branch: str, strategy: str = "auto") -> PostgresBackend:
        folder = self.lock_folder / branch
        folder.mkdir(parents=True, exist_ok=True)
        # The admin connection sits on the database we made for our mark: never on the data
        # database, which is copied (and PostgreSQL copies only what nobody is connected to).
        address = BranchAddress(self.project, branch, MARK_DATABASE)
        return PostgresBackend(
            address,
            lock_folder=folder,
            strategy=strategy,
            server_key=f"{self.project.server_key}:{branch}",
            timeout=self.config.timeout,
        )

    # -- the owner ------------------------------------------------------------------------

    def start(
        self, variants: list[Settings], build: Callable[[PostgresBackend, list[Settings]], None]
    ) -> None:
        """Make the run's branch from a fresh, ready template branch for ``variants``
        (finding one, waiting for another job's, or building one with ``build``)."""
        if self._started:
            return
        source_branch = lakebase_source(variants[0], self.config.database)[0]
        source = self.project.full(source_branch or self.project.default_branch)
        key, group = self.key(variants, source)
        template = self._template_branch(key, group, source, variants, build)
        with self.progress.step(f"Lakebase: forking the run's branch {self.name} from {template}"):
            self.api.create_branch(self.name, source=self.project.full(template), ttl=self.config.run_ttl)
        self.template_branch = template
        self.project.write_mark(self.name, LakebaseMark(role="run", run=self.run_id, key=key, group=group))
        self._started = True
        self._beat = threading.Thread(target=self._heartbeat, name="dbbranch-heartbeat", daemon=True)
        self._beat.start()

    def key(self, variants: list[Settings], source: str) -> tuple[str, str]:
        """What decides a template branch's content (the source branch and the point read,
        and the fingerprints of the templates inside, as the builder will compute them), and
        the group of branches that replace each other (the same without fingerprints)."""
        from .templates import TemplatePlan

        facts: Any = SimpleNamespace(
            server_version=self.project.server_version, role=self.project.user, source_point=""
        )
        plans = [TemplatePlan(inner_settings(v, self.config.database), facts) for v in variants]
        prints = sorted(p.fingerprint for p in plans)
        groups = sorted({p.group for p in plans})
        key = names.short_hash("|".join([source, self.config.source_time or "now", *prints]), 12)
        return key, names.short_hash("|".join([source, *groups]), 12)

    def _template_branch(
        self,
        key: str,
        group: str,
        source: str,
        variants: list[Settings],
        build: Callable[[PostgresBackend, list[Settings]], None],
    ) -> str:
        deadline = time.monotonic() + self.config.timeout
        while True:
            found, waiting = self._find_template_branch(key)
            if found is not None:
                self.progress.note(f"Lakebase: forking templates from {found}")
                return found
            if not waiting:
                built = self._build_template_branch(key, group, source, variants, build)
                if built is not None:
                    return built
            if time.monotonic() > deadline:
                raise DbBranchError(
                    f"Lakebase: waited {self.config.timeout:.0f}s for another job building the "
                    f"template branch for key {key} (dbbranch_timeout sets the wait)"
                )
            time.sleep(WAIT_STEP)

    def _find_template_branch(self, key: str) -> tuple[str | None, bool]:
        """The newest ready template branch of ``key`` young enough to fork, and whether one
        is being built by a live builder (then wait for it rather than build another)."""
        now = time.time()
        candidates = []
        for branch in self.api.list_branches():
            match = names.LAKEBASE_TEMPLATE_RE.fullmatch(branch.id)
            if match and match.group("key") == key[:12] and names.generated_kind(branch.id):
                candidates.append(branch)
        candidates.sort(key=lambda b: b.id, reverse=True)
        waiting = False
        for branch in candidates:
            age = now - (branch.create_time or now)
            if age > self.config.template_max_age:
                continue
            if not branch.ready:
                # Still being created by another job: nothing to log in to yet.
                waiting = waiting or age < self.config.timeout
                continue
            mark = self.mark_of(branch.id)
            if mark is not None and mark.ready:
                return branch.id, False
            if mark is None and age < MARK_GRACE:
                waiting = True  # created moments ago by another job: not marked yet
            elif mark is not None and self.held(branch.id, build_lock(branch.id), unreachable=False):
                waiting = True
        return None, waiting

    def mark_of(self, branch: str) -> LakebaseMark | None:
        try:
            return self.project.read_mark(branch)
        except DbBranchError as exc:
            log.info("pytest-dbbranch: cannot read the mark of Lakebase branch %s: %s", branch, exc)
            return None

    def held(self, branch: str, key: str, *, unreachable: bool) -> bool:
        """Whether a live process holds advisory lock ``key`` in ``branch`` (``unreachable``
        when the branch cannot be reached)."""
        try:
            with self.project.connect(branch, MARK_DATABASE, autocommit=True) as conn:
                return lock_held(conn, key)
        except (DbBranchError, psycopg.Error):
            return unreachable

    def _build_template_branch(
        self,
        key: str,
        group: str,
        source: str,
        variants: list[Settings],
        build: Callable[[PostgresBackend, list[Settings]], None],
    ) -> str | None:
        """Copy the source, migrate and seal the templates inside, mark the branch ready.
        None when another job created the same name first (then wait for it)."""
        name = names.lakebase_template_name(key, time.time())
        with self.progress.step(f"Lakebase: copying {self.project.branch_id(source)} into {name}"):
            try:
                # Not adopted: a template branch's name is the same for every job, so a
                # conflict means another job's build (wait for it), never our lost answer.
                info = self.api.create_branch(
                    name, source=source, ttl=None, source_time=self.config.source_time, adopt=False
                )
            except BranchExistsError:
                return None
        try:
            point = info.source_branch_lsn or info.source_branch_time or self.config.source_time or ""
            mark = LakebaseMark(
                role="template-branch", run=self.run_id, key=key, group=group, point=str(point)
            )
            self.project.write_mark(name, mark)
            backend = self._backend_in(name)
            try:
                backend.hold(build_lock(name))
                build(backend, [inner_settings(v, self.config.database) for v in variants])
                self.project.write_mark(name, dataclasses.replace(mark, ready=True))
            finally:
                backend.close()
        except BaseException:
            with contextlib.suppress(Exception):
                self.api.delete_branch(name)
            raise
        return name

    def _heartbeat(self) -> None:
        """Extend the run branch's TTL while the run lives: a long suite never loses its
        branch, and a dead run's branch is gone one TTL after its last beat."""
        every = max(1.0, self.config.run_ttl / 4)
        while not self._stop.wait(every):
            try:
                self.api.extend(self.name, self.config.run_ttl)
            except Exception as exc:
                log.warning("pytest-dbbranch: could not extend the run's Lakebase branch: %s", exc)

    def parent_of_tests(self) -> str:
        """Where a test's own Lakebase branch forks from: the template branch (no TTL), not
        the run's branch (the service may refuse a child under a branch with a TTL)."""
        if self.template_branch is None:
            info = self.api.get_branch(self.name)
            if info is None or not info.source_branch:
                raise DbBranchError(f"Lakebase: the run's branch {self.name} is gone")
            self.template_branch = self.project.branch_id(info.source_branch)
        return self.template_branch

    def test_branches(self, template: str) -> TestBranches:
        return TestBranches(self, template)

    def finish(self) -> None:
        """Delete the run's branch (purged: a soft-deleted branch still counts) at the end."""
        self._stop.set()
        if self.owns and self._started:
            self.api.delete_branch(self.name)
            self._started = False

    # -- the others -------------------------------------------------------------------------

    def attach(self) -> None:
        """Wait for the owner's branch (an xdist worker may start before it is ready)."""
        deadline = time.monotonic() + self.config.timeout
        while True:
            info = self.api.get_branch(self.name)
            if info is not None and (info.state or "READY").upper().endswith("READY"):
                return
            if time.monotonic() > deadline:
                raise DbBranchError(
                    f"Lakebase: the run's branch {self.name} did not appear within "
                    f"{self.config.timeout:.0f}s (the xdist controller makes it before the tests)"
                )
            time.sleep(1.0)


class TestBranches:
    """Isolation ``lakebase_branch``: a test gets a Lakebase branch of its own (its own
    compute; for tests that restart the server, change roles or settings, or need a pristine
    copy of large data), forked from the run's branch with a short TTL. Inside it the
    template database is opened to connections: the copy is the test's alone.

    It answers the part of the backend protocol a ``Branch`` and its release use."""

    kind = "lakebase"
    #: Each is a Lakebase branch, one slot of the project's limit: never kept waiting.
    warm_pool = False

    def __init__(self, run: LakebaseRun, template: str) -> None:
        self.run = run
        self.project = run.project
        self.template = template
        self._marks: dict[str, LakebaseMark] = {}

    def fork(self, name: str, parent: str, tag: Any) -> None:
        self._wait_for_room()
        self.run.api.create_branch(name, source=self.project.full(parent), ttl=self.run.config.test_ttl)
        try:
            from psycopg import sql

            with self.project.connect(name, autocommit=True) as conn:
                ident = sql.Identifier(self.template)
                conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(ident))
                conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident))
            mark = LakebaseMark(role="test", run=self.run.run_id, key=self.template)
            self.project.write_mark(name, mark)
            self._marks[name] = mark
        except BaseException:
            with contextlib.suppress(Exception):
                self.run.api.delete_branch(name)
            raise

    def _wait_for_room(self) -> None:
        """The project's limit counts every job's branches: wait for one to go rather than
        have the service refuse the create."""
        deadline = time.monotonic() + self.run.config.timeout
        while len(self.run.api.list_branches()) >= self.run.config.limit:
            if time.monotonic() > deadline:
                raise DbBranchError(
                    f"Lakebase project {self.project.name} stayed at its limit of "
                    f"{self.run.config.limit} branches for {self.run.config.timeout:.0f}s "
                    "(dbbranch_lakebase_limit); run fewer workers or jobs with isolation lakebase_branch"
                )
            time.sleep(WAIT_STEP)

    def address(self, name: str) -> Any:
        return BranchAddress(self.project, name, self.template).current()

    def refresh_credentials(self, name: str) -> bool:
        return BranchAddress(self.project, name, self.template).refresh()

    def describe(self, name: str) -> Any:
        from ..backends import BranchRecord, Tag

        mark = self._marks.get(name)
        if mark is None:
            return None
        return BranchRecord(name=name, tag=Tag(kind="branch", run=mark.run, parent=self.run.name))

    def retag(self, name: str, tag: Any) -> None:
        if tag.kept:
            self._marks.pop(name, None)  # kept: its TTL removes it

    def drop(self, name: str) -> None:
        if name in self._marks:
            self.run.api.delete_branch(name)
            self._marks.pop(name, None)
