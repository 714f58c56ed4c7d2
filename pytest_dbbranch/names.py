"""Branch, template and source names.

One name must be valid everywhere a branch can live: a PostgreSQL database name (at most 63
bytes) and a Lakebase branch id (``^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$``). Satisfying the
stricter Lakebase rule everywhere means a suite can move between backends without renaming.
Names carry the run id and worker so parallel workers and concurrent CI jobs never collide,
and a readable slug of the test so a developer looking at ``\\l`` knows what they are seeing;
uniqueness comes from a hash of the full node id, never from the (truncated) slug.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
import unicodedata

MAX_LEN = 63
NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")

BRANCH_PREFIX = "dbb"
TEMPLATE_PREFIX = "dbbt"
SOURCE_PREFIX = "dbbs"
#: Lakebase only: a run's branch, and a branch holding a fingerprint's sealed templates.
RUN_PREFIX = "dbbr"
LAKEBASE_TEMPLATE_PREFIX = "dbbl"

SCOPE_CODES = {"function": "f", "class": "c", "module": "m", "package": "p", "session": "s"}


def short_hash(text: str, length: int = 8) -> str:
    """A lowercase hex digest prefix: stable across processes (unlike ``hash()``)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def slugify(text: str, max_len: int = 24) -> str:
    """Readable, lossy form of ``text``: ascii letters and digits joined by single hyphens."""
    normalized = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", normalized.lower()).strip("-")
    return slug[:max_len].strip("-")


def new_run_id() -> str:
    """Short id of one test run; time-ordered so ``\\l`` sorts runs by start."""
    stamp = _base36(int(time.time()))[-5:]
    return f"{stamp}{secrets.token_hex(2)}"


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rem = divmod(number, 36)
        out = digits[rem] + out
        if number == 0:
            return out


def worker_code(worker_id: str | None) -> str:
    """``gw3`` stays ``gw3``; the controller (no xdist) is ``m``."""
    if not worker_id or worker_id == "master":
        return "m"
    code = slugify(worker_id, 8).replace("-", "")
    return code or "w" + short_hash(worker_id, 4)


def branch_name(run_id: str, worker_id: str | None, scope: str, node_id: str, salt: str = "") -> str:
    """Name of a test's branch: ``dbb-<run>-<worker>-<scope>-<slug>-<hash>``.

    ``salt`` (the fixture name) tells apart two branch fixtures of one test without
    cluttering the readable part.
    """
    scope_code = SCOPE_CODES.get(scope, slugify(scope, 1) or "x")
    head = f"{BRANCH_PREFIX}-{run_key(run_id)}-{worker_code(worker_id)}-{scope_code}"
    digest = short_hash(f"{run_id}|{worker_id}|{scope}|{node_id}|{salt}", 10)
    room = MAX_LEN - len(head) - len(digest) - CHECK_LEN - 2
    slug = slugify(_last_part(node_id), max(room, 0))
    name = f"{head}-{slug}-{digest}" if slug else f"{head}-{digest}"
    return validate(_checked(name))


def _last_part(node_id: str) -> str:
    """The test's own name is the most telling part of a long node id."""
    return node_id.rsplit("::", 1)[-1] if "::" in node_id else os.path.basename(node_id)


def run_key(run_id: str) -> str:
    """The run as it appears in branch names (letters and digits, at most 12): what tells,
    from a name alone, which run made a branch, even one that never got its tag."""
    return slugify(run_id, 12).replace("-", "") or "r" + short_hash(run_id, 8)


#: Names this tool generates, strictly. An untagged database matching one of them is a
#: leftover of a process killed between creating it and tagging it (there is no way to do
#: both at once), and may be removed once its owner is provably gone.
BRANCH_NAME_RE = re.compile(r"^dbb-(?P<run>[a-z0-9]{1,12})-[a-z0-9]{1,8}-[a-z]-(?:[a-z0-9-]*-)?[0-9a-f]{14}$")
TEMPLATE_NAME_RE = re.compile(r"^dbbt-[0-9a-f]{10}-[0-9a-f]{20}$")
SOURCE_NAME_RE = re.compile(r"^dbbs-[0-9a-f]{24}$")
#: Lakebase: the run's branch, and the branch that holds a fingerprint's sealed templates
#: (key, then the UTC second it was forked from the source: a newer copy replaces it).
RUN_BRANCH_RE = re.compile(r"^dbbr-(?P<run>[a-z0-9]{1,12})-[0-9a-f]{4}$")
LAKEBASE_TEMPLATE_RE = re.compile(r"^dbbl-(?P<key>[0-9a-f]{12})-(?P<second>[0-9]{14})-[0-9a-f]{4}$")
#: Every generated name ends in a short hash of the rest: a database someone named like ours
#: by hand passes that check once in 65,536 times.
CHECK_LEN = 4


def _checked(name: str) -> str:
    return name + short_hash("pytest-dbbranch:" + name, CHECK_LEN)


def generated_kind(name: str) -> str | None:
    """ "branch", "template" or "source" for a name this tool generated, else None."""
    if short_hash("pytest-dbbranch:" + name[:-CHECK_LEN], CHECK_LEN) != name[-CHECK_LEN:]:
        return None
    if BRANCH_NAME_RE.fullmatch(name):
        return "branch"
    if TEMPLATE_NAME_RE.fullmatch(name):
        return "template"
    if SOURCE_NAME_RE.fullmatch(name):
        return "source"
    if RUN_BRANCH_RE.fullmatch(name):
        return "run"
    if LAKEBASE_TEMPLATE_RE.fullmatch(name):
        return "template-branch"
    return None


def run_branch_name(run_id: str) -> str:
    """The Lakebase branch of a run: every process of the run computes it from the run id."""
    return validate(_checked(f"{RUN_PREFIX}-{run_key(run_id)}-"))


def lakebase_template_name(key: str, forked_at: float) -> str:
    """A Lakebase branch of sealed templates for ``key``, forked from the source at
    ``forked_at`` (UTC second: two jobs copying the source in the same second build one
    branch, the second waits for the first's)."""
    second = time.strftime("%Y%m%d%H%M%S", time.gmtime(forked_at))
    return validate(_checked(f"{LAKEBASE_TEMPLATE_PREFIX}-{key[:12]}-{second}-"))


def run_of(name: str) -> str | None:
    """The run key in a branch name (see ``run_key``), or None for other names."""
    match = BRANCH_NAME_RE.fullmatch(name)
    return match.group("run") if match and generated_kind(name) else None


def template_name(group: str, fingerprint: str) -> str:
    """Template names are a pure function of template group and fingerprint, so every
    process (and every machine sharing the server) computes the same one and can find it."""
    return validate(_checked(f"{TEMPLATE_PREFIX}-{group[:10]}-{fingerprint[:16]}"))


def source_name(content_hash: str) -> str:
    """A dump file is restored once into a database named by its content."""
    return validate(_checked(f"{SOURCE_PREFIX}-{content_hash[:20]}"))


def validate(name: str) -> str:
    """Fail loudly here rather than let a backend reject a name in the middle of a run."""
    if len(name.encode()) > MAX_LEN or not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid branch name {name!r}")
    return name


def is_ours(name: str) -> bool:
    """Cheap pre-filter by prefix; the tag on the database is what actually decides."""
    prefixes = (BRANCH_PREFIX, TEMPLATE_PREFIX, SOURCE_PREFIX, RUN_PREFIX, LAKEBASE_TEMPLATE_PREFIX)
    return name.startswith(tuple(f"{prefix}-" for prefix in prefixes))
