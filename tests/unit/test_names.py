"""Branch, template and source names: valid everywhere, unique, readable (no database needed).

A name must be a PostgreSQL database name (63 bytes) and a Lakebase branch id at once, must
never collide between tests, runs, workers, scopes or fixtures, and should still tell a
developer looking at ``\\l`` which test it belongs to.
"""

from __future__ import annotations

import hashlib
import itertools
import random

import pytest

from pytest_dbbranch import names
from pytest_dbbranch.names import (
    MAX_LEN,
    NAME_RE,
    SCOPE_CODES,
    branch_name,
    is_ours,
    new_run_id,
    slugify,
    source_name,
    template_name,
    validate,
)

RUN = "abc12345"
SAME_TEST = "tests/test_x.py::test_same"


def assert_valid(name: str, case: object = None) -> None:
    """Valid everywhere a branch can live: Lakebase id rule and PostgreSQL's 63 bytes."""
    assert isinstance(name, str), case
    assert NAME_RE.fullmatch(name), (name, case)
    assert len(name.encode("utf-8")) <= MAX_LEN, (name, case)


def assert_all_distinct(generated: list[str], inputs: list[object]) -> None:
    """One name per input; on failure, show which inputs share a name."""
    assert len(generated) == len(inputs)
    seen: dict[str, object] = {}
    for name, given in zip(generated, inputs, strict=True):
        assert name not in seen, f"{given!r} and {seen[name]!r} both give {name}"
        seen[name] = given


def _hex(seed: str, length: int = 64) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:length]


# --------------------------------------------------------------------------- hostile ids

HOSTILE_NODE_IDS = [
    "tests/test_x.py::test_plain",
    "tests/test_x.py::test_quotes[it's]",
    'tests/test_x.py::test_quotes["double"]',
    "tests/test_x.py::test_quotes[`back`tick]",
    "tests/test_x.py::test_backslash[a\\b]",
    "tests/test_x.py::test_backslash[\\\\server\\share]",
    "tests/test_x.py::test_emoji[🎉🔥💾]",
    "tests/test_x.py::test_emoji[🎉]",
    "tests/test_x.py::test_cjk[数据库分支]",
    "tests/test_x.py::test_cjk[データベース]",
    "tests/test_x.py::test_accents[café]",
    "tests/test_x.py::test_accents[cafe\u0301]",  # combining acute accent
    "tests/test_x.py::test_accents[ÅÄÖ-ñ-ß]",
    "tests/test_x.py::test_nul[a\x00b]",
    "tests/test_x.py::test_newline[a\nb]",
    "tests/test_x.py::test_tab[a\tb]",
    "tests/test_x.py::test_sql[x'; DROP DATABASE postgres; --]",
    "tests/test_x.py::test_pct[%s%d%%]",
    "tests/test_x.py::test_colons[a::b::c]",
    "tests/test_x.py::Test Class::test method",
    "tests/test_x.py::TestCamelCase::testMixedCASE",
    "tests/test_x.py::test_upper[ABC]",
    "tests/test_x.py::test_long[" + "x" * 5000 + "]",
    "tests/test_x.py::test_long[" + "é" * 5000 + "]",
    "tests/test_x.py::test_long[" + "🎉" * 5000 + "]",
    "tests/" + "deep/" * 500 + "test_x.py::test_deep",
    "tests/test_x.py",
    "tests/test_x.py::",
    "::",
    "",
    "!!!",
    "[]",
    "-",
    "---___---",
    "🎉🎉🎉",
    "数据库",
    "\u0301\u0301",
    "\ud800",  # lone surrogate (can appear in ids decoded with surrogateescape)
    "a" * 100_000,
]

#: Known scopes, and values no caller should pass but which must not break a name either.
ODD_SCOPES = [*SCOPE_CODES, "unknown-scope", "", "🎉", "9"]
ODD_RUNS = [RUN, "", "RUN!!", "é", "x" * 300, "0starts-with-digit"]
ODD_WORKERS = [None, "master", "", "gw0", "gw1", "gw12345678901", "GW3", "gw-1", "!!!", "🎉", "w" * 300]


def test_branch_names_are_valid_whatever_the_node_id_and_scope() -> None:
    """Test ids carry user text (parameters, unicode, NUL, SQL); names must survive all of it."""
    for node_id, scope in itertools.product(HOSTILE_NODE_IDS, ODD_SCOPES):
        assert_valid(branch_name(RUN, "gw0", scope, node_id), (node_id[:60], scope))


def test_branch_names_are_valid_whatever_the_run_worker_and_scope() -> None:
    """Run ids, xdist worker ids and scopes come from outside too (env, plugins)."""
    node_id = "tests/test_x.py::test_" + "y" * 200
    for run_id, worker_id, scope in itertools.product(ODD_RUNS, ODD_WORKERS, ODD_SCOPES):
        assert_valid(branch_name(run_id, worker_id, scope, node_id), (run_id[:20], worker_id, scope))


def test_branch_names_are_unique_for_hostile_node_ids() -> None:
    ids = list(dict.fromkeys(HOSTILE_NODE_IDS))
    assert_all_distinct([branch_name(RUN, "gw0", "function", node_id) for node_id in ids], list(ids))


def _random_node_id(rng: random.Random) -> str:
    alphabet = (
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        " _-.:/[]()'\"\\`!@#$%^&*+=,;<>?|~{}\t\n"
        "éèüñçßøåÅÄÖ数据库分支データ🎉🔥💾\u0301\u0308\u200b"
    )
    kind = rng.random()
    if kind < 0.05:
        length = rng.randint(1000, 5000)
    elif kind < 0.15:
        length = 0 if rng.random() < 0.1 else rng.randint(1, 5)
    else:
        length = rng.randint(1, 120)
    param = "".join(rng.choice(alphabet) for _ in range(length))
    return f"tests/test_{rng.randint(0, 9)}.py::test_{rng.randint(0, 5)}[{param}]"


def test_branch_names_for_random_ids_are_valid_and_never_collide() -> None:
    """Fuzzing beyond the hand-written list, with fixed seeds so a failure reproduces."""
    for seed in (0, 1, 20240601):
        rng = random.Random(seed)
        ids = list(dict.fromkeys(_random_node_id(rng) for _ in range(2000)))
        assert len(ids) > 1900, seed  # the generator really produces distinct ids
        generated = [branch_name(RUN, "gw3", "function", node_id) for node_id in ids]
        for name, node_id in zip(generated, ids, strict=True):
            assert_valid(name, (seed, node_id[:60]))
        assert_all_distinct(generated, list(ids))


def test_ids_that_differ_only_after_the_truncation_point_get_distinct_names() -> None:
    prefix = "tests/test_x.py::test_param[" + "a" * 5000
    ids = [f"{prefix}{i}]" for i in range(300)]
    generated = [branch_name(RUN, "gw0", "function", node_id) for node_id in ids]
    for name in generated:
        assert_valid(name)
    # The readable part is identical, so uniqueness has to come from the full node id.
    assert len({name.rsplit("-", 1)[0] for name in generated}) == 1
    assert_all_distinct(generated, list(ids))


def test_ids_that_differ_only_in_the_middle_get_distinct_names() -> None:
    ids = [f"tests/test_x.py::test_p[{'b' * 100}{i}{'c' * 100}]" for i in range(100)]
    assert_all_distinct([branch_name(RUN, "gw0", "function", node_id) for node_id in ids], list(ids))


def test_ids_that_slugify_to_the_same_text_get_distinct_names() -> None:
    params = ["a-b", "a_b", "a b", "a.b", "A-B", "a--b", "a/b", "a b ", " a b", "a\u00a0b", "á-b"]
    ids = [f"tests/test_x.py::test_p[{p}]" for p in params]
    # Precondition: the slugs really are all the same, so only the hash can tell them apart.
    assert len({slugify(names._last_part(node_id)) for node_id in ids}) == 1
    generated = [branch_name(RUN, "gw0", "function", node_id) for node_id in ids]
    for name in generated:
        assert_valid(name)
    assert_all_distinct(generated, list(ids))


def test_an_empty_slug_still_gives_a_valid_name_without_a_double_hyphen() -> None:
    for node_id in ["!!!", "::", "", "🎉🎉", "[]", "数据库", "tests/x.py::???"]:
        assert slugify(names._last_part(node_id)) == "", node_id  # precondition
        name = branch_name(RUN, "gw0", "function", node_id)
        assert_valid(name, node_id)
        assert "--" not in name.split(f"-{SCOPE_CODES['function']}-", 1)[1], name


def test_node_ids_with_empty_slugs_do_not_collide() -> None:
    ids = ["!!!", "???", "::", "", "🎉", "🎉🎉", "数据库", "データ", "[]", "()", "-", "_"]
    assert_all_distinct([branch_name(RUN, "gw0", "function", node_id) for node_id in ids], list(ids))


# ----------------------------------------------------------------- run, worker and scope


def test_unique_across_run_ids_even_those_that_slugify_alike() -> None:
    """Concurrent CI jobs on one server differ only by run id."""
    runs = ["abc12345", "abc12346", "xyz00000", "abc1234", "run", ""]
    alike = ["abc", "ABC", "a-b-c", "abc!", "abc" + "x" * 20, "abc" + "y" * 20]
    for group in (runs, alike):
        assert_all_distinct([branch_name(run, "gw0", "function", SAME_TEST) for run in group], list(group))


def test_unique_across_worker_ids() -> None:
    """xdist workers run the same test ids; ``gw-1`` and ``gw_1`` shorten to the same code."""
    for controller in (None, "master"):
        workers = [controller, "gw0", "gw1", "gw2", "gw10", "gw-1", "gw_1"]
        generated = [branch_name(RUN, worker, "function", SAME_TEST) for worker in workers]
        assert_all_distinct(generated, list(workers))


def test_worker_codes_are_visible() -> None:
    assert branch_name(RUN, "gw7", "function", SAME_TEST).startswith(f"dbb-{RUN}-gw7-")
    assert branch_name(RUN, None, "function", SAME_TEST).startswith(f"dbb-{RUN}-m-")
    assert branch_name(RUN, "master", "function", SAME_TEST).startswith(f"dbb-{RUN}-m-")


def test_unique_across_scopes() -> None:
    """A module-scope and a session-scope branch may share a node id."""
    scopes = [*SCOPE_CODES, "other", "fancy"]
    assert_all_distinct([branch_name(RUN, "gw0", scope, "tests/test_x.py") for scope in scopes], list(scopes))


def test_unique_across_the_full_product() -> None:
    runs = ["r1", "r2"]
    workers = [None, "gw0", "gw1"]
    node_ids = ["tests/a.py::test_a", "tests/a.py::test_b", "tests/a.py", "tests/b.py::test_a"]
    combos = list(itertools.product(runs, workers, SCOPE_CODES, node_ids))
    assert_all_distinct([branch_name(*combo) for combo in combos], list(combos))


def test_salt_tells_apart_two_fixtures_of_one_test() -> None:
    node_id = "tests/test_x.py::test_two_databases"
    salts = ["", "db", "other_db", "db_branch", "DB", "🎉"]
    generated = [branch_name(RUN, "gw0", "function", node_id, salt) for salt in salts]
    for name in generated:
        assert_valid(name)
        assert "-test-two-databases-" in name  # the salt does not clutter the readable part
    assert_all_distinct(generated, list(salts))
    assert branch_name(RUN, "gw0", "function", node_id) == branch_name(RUN, "gw0", "function", node_id, "")


def test_branch_name_is_deterministic() -> None:
    """Every process of a run must compute the same name (keep-on-failure, reaper)."""
    node_id = "tests/test_x.py::test_p[🎉 long " + "z" * 3000 + "]"
    first = branch_name(RUN, "gw0", "module", node_id)
    assert all(branch_name(RUN, "gw0", "module", node_id) == first for _ in range(5))


# ----------------------------------------------------------------------------- readability


def test_the_slug_of_the_test_name_appears_in_the_name() -> None:
    cases = {
        "tests/test_orders.py::test_create_order": "test-create-order",
        "tests/test_orders.py::TestOrders::test_cancel": "test-cancel",
        "tests/test_orders.py::test_add[1-2]": "test-add-1-2",
        "tests/test_orders.py": "test-orders-py",
        "tests/test_orders.py::test_café": "test-cafe",
    }
    for node_id, expected_slug in cases.items():
        name = branch_name(RUN, "gw0", "function", node_id)
        assert f"-{expected_slug}-" in name, (node_id, name)
        assert name.startswith(f"dbb-{RUN}-gw0-{SCOPE_CODES['function']}-"), name


def test_long_names_keep_the_start_of_the_slug() -> None:
    name = branch_name(RUN, "gw0", "function", "tests/t.py::test_something_rather_long_" + "q" * 500)
    assert "-test-something" in name
    assert_valid(name)


def test_slugify() -> None:
    cases = {
        "Hello World": "hello-world",
        "a--b__c": "a-b-c",
        "  leading and trailing  ": "leading-and-trailing",
        "café": "cafe",
        "🎉": "",
        "": "",
    }
    for text, expected in cases.items():
        assert slugify(text) == expected, text


def test_slugify_respects_max_len_and_never_ends_with_hyphen() -> None:
    texts = ["a-b-c-d-e-f-g-h-i-j-k-l", "abcdefghijklmnopqrstuvwxyz" * 3, "x y z " * 20]
    for max_len, text in itertools.product([1, 2, 5, 10, 24], texts):
        slug = slugify(text, max_len)
        assert len(slug) <= max_len, (max_len, text)
        assert not slug.startswith("-") and not slug.endswith("-"), (max_len, slug)


# --------------------------------------------------------------- template and source names


def test_template_name_is_valid_deterministic_and_ours() -> None:
    key, fp = _hex("project", 10), _hex("fingerprint")
    name = template_name(key, fp)
    assert_valid(name)
    assert name == template_name(key, fp)
    assert name.startswith(f"{names.TEMPLATE_PREFIX}-")
    assert is_ours(name)


def test_template_name_changes_with_fingerprint_and_group() -> None:
    fps = [_hex(f"fp{i}") for i in range(200)]
    keys = [_hex(f"key{i}", 10) for i in range(20)]
    assert len({template_name(keys[0], fp) for fp in fps}) == len(fps)
    assert len({template_name(key, fps[0]) for key in keys}) == len(keys)


def test_template_names_never_look_like_branch_or_source_names() -> None:
    template = template_name(_hex("k", 10), _hex("f"))
    source = source_name(_hex("s"))
    branch = branch_name(RUN, "gw0", "session", "tests/x.py")
    assert len({template.split("-")[0], source.split("-")[0], branch.split("-")[0]}) == 3


def test_source_name_is_valid_deterministic_and_content_addressed() -> None:
    hashes = [_hex(f"dump{i}") for i in range(200)]
    generated = [source_name(h) for h in hashes]
    for name in generated:
        assert_valid(name)
        assert name.startswith(f"{names.SOURCE_PREFIX}-")
        assert is_ours(name)
    assert generated == [source_name(h) for h in hashes]
    assert_all_distinct(generated, list(hashes))


# ------------------------------------------------------------------------------- validate


def test_validate_accepts_good_names() -> None:
    for name in ["a", "a1", "dbb-x", "a" * 63, "a" + "-" * 61 + "b", "dbb-abc12345-gw0-f-test-x-0123456789"]:
        assert validate(name) == name


def test_validate_rejects_bad_names() -> None:
    """Fail loudly before a backend rejects the name in the middle of a run."""
    bad = ["", "A", "Dbb-x", "1abc", "-abc", "abc-", "a_b", "a b", "a.b", "a/b", "café", "a" * 64]
    bad += ["é" * 32]  # 32 characters but 64 bytes
    bad += ["dbb-x\n", "\ndbb-x", "dbb-x ", " dbb-x", "dbb-\x00"]  # a regex with $ would pass the first
    assert [name for name in bad if not _rejected(name)] == []


def _rejected(name: str) -> bool:
    try:
        validate(name)
    except ValueError as exc:
        return "invalid branch name" in str(exc)
    return False


# -------------------------------------------------------------------------------- is_ours


def test_is_ours_accepts_our_prefixes_only() -> None:
    """A cheap pre-filter: only our three prefixes followed by a hyphen pass."""
    for name in ["dbb-x", "dbbt-x", "dbbs-x", "dbb-abc-gw0-f-test-1234567890"]:
        assert is_ours(name), name
    foreign = ["postgres", "template0", "template1", "dbb", "dbbt", "dbbs", "dbbx-1", "dbbranch"]
    foreign += ["dbb_1", "mydbb-1", "DBB-x", " dbb-x", "", "app-dbb-1"]
    for name in foreign:
        assert not is_ours(name), name


def test_everything_we_generate_is_ours() -> None:
    generated = [
        branch_name(RUN, "gw0", scope, node_id) for scope in SCOPE_CODES for node_id in HOSTILE_NODE_IDS[:10]
    ]
    generated += [template_name(_hex("k", 10), _hex("f")), source_name(_hex("s"))]
    assert all(is_ours(name) for name in generated)


# ------------------------------------------------------------------------------- run ids


def test_new_run_id_is_embedded_unchanged_in_valid_names() -> None:
    """Not truncated or altered when embedded, so a run can be recognised in ``\\l``."""
    for _ in range(50):
        run_id = new_run_id()
        assert run_id and run_id.isascii() and run_id.isalnum() and run_id == run_id.lower(), run_id
        assert slugify(run_id, 12) == run_id
        name = branch_name(run_id, "gw0", "function", "tests/test_x.py::test_a")
        assert_valid(name)
        assert name.startswith(f"dbb-{run_id}-")


def test_new_run_id_varies_even_within_one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """16 random bits per id: a handful of birthday collisions at most."""
    assert len({new_run_id() for _ in range(100)}) >= 90
    monkeypatch.setattr("pytest_dbbranch.names.time.time", lambda: 1_700_000_000.0)
    assert len({new_run_id() for _ in range(50)}) > 40


def test_new_run_id_is_time_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    """``\\l`` sorts runs by start."""
    ids = []
    for stamp in [1_700_000_000.0, 1_700_000_001.0, 1_700_000_100.0, 1_700_086_400.0]:
        monkeypatch.setattr("pytest_dbbranch.names.time.time", lambda stamp=stamp: stamp)
        ids.append(new_run_id())
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
