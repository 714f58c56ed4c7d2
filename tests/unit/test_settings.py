"""Settings: declared once, resolved by one precedence rule, parsed and checked the same way
whichever level a value comes from (marker or factory > option > environment > ini > default).

The plugin, the ``dbbranch`` command and a user's script all build their settings through
``settings.py``, so these rules are what makes a given environment mean the same to each.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from pytest_dbbranch.errors import ConfigError
from pytest_dbbranch.pytest_plugin.factories import MARKER_HELP, branch_fixture
from pytest_dbbranch.settings import MAX_POOL_SIZE, OVERRIDABLE, SPECS, SPECS_BY_NAME, Settings, Spec, resolve
from tests.helpers import REPO

MARKER_WHERE = "@pytest.mark.dbbranch on tests/test_x.py::test_a"
LEVELS = ("override", "option", "env", "ini")  # highest first


def is_numeric(spec: Spec) -> bool:
    """Whole-number settings (pool_size's default is None, meaning auto)."""
    return (isinstance(spec.default, int) and not spec.flag) or spec.name == "pool_size"


def two_values(spec: Spec) -> list[tuple[str, Any]]:
    """Two raw texts for ``spec`` that parse to different values, the first not the default."""
    if spec.flag:
        return [("yes", True), ("off", False)]
    if spec.choices:
        others = [c for c in spec.choices if c != spec.default]
        second = others[1] if len(others) > 1 else spec.default
        return [(others[0].upper(), others[0]), (second, second)]
    if spec.name == "pool_size":  # at most MAX_POOL_SIZE
        return [("5", 5), ("7", 7)]
    if is_numeric(spec):
        base = spec.default or 0
        return [(str(base + 17), base + 17), (str(base + 23), base + 23)]
    if spec.name == "url_env":  # names of environment variables, normalised to a list
        return [("APP_DB_URL OTHER", "APP_DB_URL,OTHER"), ("none", "none")]
    if spec.name == "migrations":  # a tool name, or a prefix and what it names
        return [("sql: db/one ", "sql:db/one"), ("callable:app.db:migrate", "callable:app.db:migrate")]
    return [(f"{spec.name}-one", f"{spec.name}-one"), (f"{spec.name}-two", f"{spec.name}-two")]


def levels_of(spec: Spec) -> list[str]:
    """Where ``spec`` can be given: a marker or factory only for overridable settings."""
    return [level for level in LEVELS if level != "override" or spec.overridable]


def origin_label(spec: Spec, level: str) -> str:
    return {
        "override": MARKER_WHERE,
        "option": spec.option,
        "env": f"environment variable {spec.env}",
        "ini": f"ini option {spec.ini}",
    }[level]


def build(spec: Spec, given: dict[str, Any], root: Path) -> Settings:
    """Resolve with ``spec`` given at the levels in ``given`` (level -> raw value)."""
    options = {spec.name: given["option"]} if "option" in given else {}
    env = {spec.env: given["env"]} if "env" in given else {}
    ini = {spec.name: given["ini"]} if "ini" in given else {}
    settings = resolve(options=options, env=env, ini=ini, root=root)
    if "override" in given:
        settings = settings.with_overrides(MARKER_WHERE, **{spec.name: given["override"]})
    return settings


def outcome(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """What ``call(*args, **kwargs)`` returns, or the ConfigError it raises."""
    try:
        return call(*args, **kwargs)
    except ConfigError as exc:
        return exc


def config_error(call: Callable[..., object], *args: Any, **kwargs: Any) -> str | None:
    """The message of the ConfigError ``call(*args, **kwargs)`` raises, or None if none."""
    result = outcome(call, *args, **kwargs)
    return str(result) if isinstance(result, ConfigError) else None


# ------------------------------------------------------------------ declared once, derived


def test_option_env_and_ini_names_are_derived_from_the_field_name() -> None:
    """The one naming rule users can rely on; a spec cannot drift from it."""
    for spec in SPECS:
        assert spec.env == "DBBRANCH_" + spec.name.upper(), spec.name
        assert spec.ini == "dbbranch_" + spec.name, spec.name
        assert spec.option == "--dbbranch-" + spec.name.replace("_", "-"), spec.name


def test_choices_are_the_literal_of_the_field_type() -> None:
    """Choices come from the type, so the type checker and the option parser agree."""
    hints = typing.get_type_hints(Settings)
    with_choices = set()
    for spec in SPECS:
        hint = hints[spec.name]
        if typing.get_origin(hint) is Literal:
            assert spec.choices == typing.get_args(hint), spec.name
            with_choices.add(spec.name)
        else:
            assert spec.choices is None, spec.name
    assert {"keep", "strategy", "isolation", "module_isolation", "backend", "diff_format"} <= with_choices


def test_every_setting_is_a_settings_field_and_only_those() -> None:
    """Only ``root`` and ``origins`` are fields that are not settings."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert fields - {spec.name for spec in SPECS} == {"root", "origins"}
    assert {spec.name: spec for spec in SPECS} == SPECS_BY_NAME
    assert tuple(spec.name for spec in SPECS if spec.overridable) == OVERRIDABLE


def test_one_list_of_overridable_settings() -> None:
    """The factory's keyword arguments, the marker's help line and the README all say what a
    marker may change; they are the same list as ``OVERRIDABLE``."""
    parameters = inspect.signature(branch_fixture).parameters.values()
    factory = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]

    marker_signature = re.fullmatch(r"dbbranch\((.*?)\): .*", MARKER_HELP)
    assert marker_signature, MARKER_HELP
    marker = re.findall(r"(\w+)=", marker_signature.group(1))

    readme_lines = [
        line
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith("`@pytest.mark.dbbranch(")
    ]
    assert len(readme_lines) == 1, readme_lines
    readme_signature = re.match(r"`@pytest\.mark\.dbbranch\((.*?)\)`", readme_lines[0])
    assert readme_signature, readme_lines[0]
    readme = re.findall(r"(\w+)=", readme_signature.group(1))

    assert "isolation" in OVERRIDABLE
    assert factory == list(OVERRIDABLE)
    assert marker == list(OVERRIDABLE)
    assert readme == list(OVERRIDABLE)


# ----------------------------------------------------------------------------- precedence


def test_the_higher_level_wins(tmp_path: Path) -> None:
    """For every setting and every pair of levels, with the two values both ways round, the
    value and its origin are the higher level's."""
    problems = []
    for spec in SPECS:
        values = two_values(spec)
        for higher, lower in itertools.combinations(levels_of(spec), 2):
            for (raw_a, value_a), (raw_b, _value_b) in (values, values[::-1]):
                settings = build(spec, {higher: raw_a, lower: raw_b}, tmp_path)
                got = (getattr(settings, spec.name), settings.origin(spec.name))
                if got != (value_a, origin_label(spec, higher)):
                    problems.append((spec.name, higher, lower, raw_a, raw_b, got))
    assert not problems, "\n".join(map(str, problems))


def test_all_levels_at_once(tmp_path: Path) -> None:
    """Settings with enough distinct values get one per level: the highest given wins."""
    checked = []
    for spec in SPECS:
        if spec.flag or spec.choices:
            continue  # too few distinct values to give each level its own: covered pairwise
        numeric = is_numeric(spec)
        first = 2 if spec.name == "pool_size" else 100  # a pool holds at most MAX_POOL_SIZE
        text = "sql:{}_{}" if spec.name == "migrations" else "{}_{}"  # a folder to migrate from
        given = {
            level: (str(first + i) if numeric else text.format(spec.name, level))
            for i, level in enumerate(LEVELS)
        }
        given = {level: raw for level, raw in given.items() if level in levels_of(spec)}
        settings = build(spec, given, tmp_path)
        top = levels_of(spec)[0]
        expected: Any = int(given[top]) if numeric else given[top]
        assert getattr(settings, spec.name) == expected, spec.name
        assert settings.origin(spec.name) == origin_label(spec, top), spec.name
        checked.append(spec.name)
    assert {"url", "revision", "lakebase_ttl", "pool_size"} <= set(checked)


def test_any_level_beats_the_default(tmp_path: Path) -> None:
    for spec in SPECS:
        raw, value = two_values(spec)[0]
        assert value != spec.default, spec.name  # precondition
        for level in levels_of(spec):
            settings = build(spec, {level: raw}, tmp_path)
            assert getattr(settings, spec.name) == value, (spec.name, level)
            assert settings.origin(spec.name) == origin_label(spec, level), (spec.name, level)


def test_the_default_when_nothing_is_given(tmp_path: Path) -> None:
    """And the origin then lists every place the value could have been set."""
    settings = resolve(root=tmp_path)
    for spec in SPECS:
        assert getattr(settings, spec.name) == spec.default, spec.name
        assert getattr(Settings(), spec.name) == spec.default, spec.name
        origin = settings.origin(spec.name)
        assert spec.option in origin and spec.env in origin and spec.ini in origin, origin


def test_empty_values_count_as_not_given(tmp_path: Path) -> None:
    """An empty variable, an empty ini line (text or list) and an option left at None all
    leave the decision to the level below. (Except an empty ``DBBRANCH_URL``, an unset CI
    secret: see ``test_an_empty_url_variable_is_an_error``.)"""
    for spec in SPECS:
        raw, value = two_values(spec)[0]
        if spec.name == "url":
            from_ini = resolve(ini={spec.name: raw}, root=tmp_path)
            assert (from_ini.url, from_ini.origin("url")) == (value, f"ini option {spec.ini}")
            assert resolve(ini={spec.name: ""}, root=tmp_path).url is None
            continue
        from_ini = resolve(env={spec.env: ""}, ini={spec.name: raw}, root=tmp_path)
        assert getattr(from_ini, spec.name) == value, spec.name
        assert from_ini.origin(spec.name) == f"ini option {spec.ini}", spec.name
        empties: tuple[Any, ...] = ("", [])
        for empty in empties:
            assert getattr(resolve(ini={spec.name: empty}, root=tmp_path), spec.name) == spec.default
    options: dict[str, Any] = {spec.name: None for spec in SPECS}
    env = {spec.env: two_values(spec)[0][0] for spec in SPECS}
    assert env["DBBRANCH_URL"]  # precondition: not the empty case
    settings = resolve(options=options, env=env, root=tmp_path)
    for spec in SPECS:
        assert getattr(settings, spec.name) == two_values(spec)[0][1], spec.name
        assert settings.origin(spec.name) == f"environment variable {spec.env}", spec.name


def test_ini_list_values_are_joined(tmp_path: Path) -> None:
    settings = resolve(ini={"source": ["prod", "snapshot"], "keep": ["failed"]}, root=tmp_path)
    assert settings.source == "prod snapshot"
    assert settings.keep == "failed"


def test_a_flag_option_that_was_not_passed_lets_the_environment_decide(tmp_path: Path) -> None:
    """A store_true flag that was not passed (False) cannot mean "off"; passed, it wins."""
    passed = resolve(options={"rebuild": True}, env={"DBBRANCH_REBUILD": "0"}, root=tmp_path)
    assert passed.rebuild is True
    assert passed.origin("rebuild") == "--dbbranch-rebuild"
    absent = resolve(options={"rebuild": False}, env={"DBBRANCH_REBUILD": "1"}, root=tmp_path)
    assert absent.rebuild is True
    assert absent.origin("rebuild") == "environment variable DBBRANCH_REBUILD"


def test_levels_are_independent_per_setting(tmp_path: Path) -> None:
    settings = resolve(
        options={"keep": "always"},
        env={"DBBRANCH_URL": "postgresql://u@h/db", "DBBRANCH_KEEP": "failed"},
        ini={"revision": "0001", "url": "postgresql://ini@h/db"},
        root=tmp_path,
    )
    assert (settings.keep, settings.url, settings.revision) == ("always", "postgresql://u@h/db", "0001")
    assert settings.origin("keep") == "--dbbranch-keep"
    assert settings.origin("url") == "environment variable DBBRANCH_URL"
    assert settings.origin("revision") == "ini option dbbranch_revision"
    assert settings.strategy == "auto"


def test_root_defaults_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve().root == tmp_path
    assert resolve(root=tmp_path / "x").root == tmp_path / "x"


def test_origins_do_not_affect_equality(tmp_path: Path) -> None:
    from_env = resolve(env={"DBBRANCH_KEEP": "failed"}, root=tmp_path)
    from_ini = resolve(ini={"keep": "failed"}, root=tmp_path)
    assert from_env == from_ini
    assert from_env.origin("keep") != from_ini.origin("keep")


# ------------------------------------------------------------------------------- parsing


def test_bool_spellings(tmp_path: Path) -> None:
    for raw in ["1", "true", "TRUE", "yes", "on", " On "]:
        assert resolve(env={"DBBRANCH_REBUILD": raw}, root=tmp_path).rebuild is True, raw
    for raw in ["0", "false", "False", "no", "off", " "]:
        assert resolve(env={"DBBRANCH_REBUILD": raw}, root=tmp_path).rebuild is False, raw


def test_choices_are_accepted_case_insensitively_and_stripped(tmp_path: Path) -> None:
    for spec in SPECS:
        for choice in spec.choices or ():
            from_env = resolve(env={spec.env: f" {choice.upper()} "}, root=tmp_path)
            from_option = resolve(options={spec.name: f"{choice.title()} "}, root=tmp_path)
            from_ini = resolve(ini={spec.name: choice.upper()}, root=tmp_path)
            got = {getattr(settings, spec.name) for settings in (from_env, from_option, from_ini)}
            assert got == {choice}, (spec.name, got)


def test_a_bad_choice_lists_the_accepted_ones(tmp_path: Path) -> None:
    for spec in SPECS:
        if not spec.choices:
            continue
        for bad in ("sometimes", ""):
            message = config_error(resolve, options={spec.name: bad}, root=tmp_path)
            assert message is not None and message.startswith(spec.option), (spec.name, bad, message)
            assert all(choice in message for choice in spec.choices), message


def test_bad_values_raise_config_error_naming_the_place(tmp_path: Path) -> None:
    """Whichever level a bad value comes from, the message says where, and shows the value."""
    bad = {"keep": "sometimes", "strategy": "fast", "rebuild": "maybe", "revision": "   "}
    for name, value in bad.items():
        spec = SPECS_BY_NAME[name]
        for level in levels_of(spec):
            message = config_error(build, spec, {level: value}, tmp_path)
            assert message is not None, (name, level)
            assert message.startswith(origin_label(spec, level)), message
            if value.strip():
                assert repr(value) in message, message


def test_the_revision_is_stripped_and_never_empty(tmp_path: Path) -> None:
    assert resolve(env={"DBBRANCH_REVISION": "  0002 \n"}, root=tmp_path).revision == "0002"
    with pytest.raises(ConfigError, match="--dbbranch-revision: the target revision is empty"):
        resolve(options={"revision": ""}, root=tmp_path)


def test_numbers_durations_and_ports_are_checked(tmp_path: Path) -> None:
    good: dict[str, list[tuple[str, int | None]]] = {
        "lakebase_ttl": [
            ("90", 90),
            ("90s", 90),
            ("30m", 1800),
            ("1h", 3600),
            ("7d", 7 * 86400),
            ("1.5h", 5400),
        ],
        "lakebase_port": [("1", 1), ("65535", 65535)],
        "lakebase_limit": [("1", 1), (" 12 ", 12)],
        "pool_size": [("0", 0), ("auto", None), ("AUTO", None), ("3", 3), ("16", 16)],
        "timeout": [("2", 2), ("90s", 90), ("10m", 600), ("1h", 3600)],
    }
    for name, cases in good.items():
        for raw, value in cases:
            assert getattr(resolve(ini={name: raw}, root=tmp_path), name) == value, (name, raw)
    bad = {
        "lakebase_ttl": ["soon", "0", "-5m", "h"],
        "lakebase_port": ["0", "65536", "http", "5432.0"],
        "lakebase_limit": ["0", "many", "-1"],
        "pool_size": ["-1", "some", "17", "100000"],
        "timeout": ["0", "never", "-1m"],
    }
    for name, raws in bad.items():
        for raw in raws:
            message = config_error(resolve, ini={name: raw}, root=tmp_path)
            assert message is not None and message.startswith(f"ini option dbbranch_{name}"), (name, raw)


def test_the_timeout_defaults_to_ten_minutes(tmp_path: Path) -> None:
    """The longest wait for one answer of the server or for another builder's lock."""
    assert resolve(root=tmp_path).timeout == Settings().timeout == 600
    assert resolve(env={"DBBRANCH_TIMEOUT": "30s"}, root=tmp_path).timeout == 30
    assert SPECS_BY_NAME["timeout"].option == "--dbbranch-timeout"


def test_pool_size_auto_follows_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm pool is on while the workers do not outnumber the cores."""
    settings = resolve(env={"DBBRANCH_POOL_SIZE": "auto"}, root=tmp_path)
    assert settings.pool_size is None
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert settings.effective_pool_size() == 2
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    assert settings.effective_pool_size() == 2
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    assert settings.effective_pool_size() == 0
    assert resolve(options={"pool_size": "0"}, root=tmp_path).effective_pool_size() == 0
    with pytest.raises(ConfigError, match="must be at least 0"):
        resolve(options={"pool_size": "-1"}, root=tmp_path)


def test_effective_backend_and_isolation_per_scope() -> None:
    assert Settings().effective_backend == "postgres"
    assert Settings(lakebase_project="p1").effective_backend == "lakebase"
    assert Settings(backend="postgres", lakebase_project="p1").effective_backend == "postgres"
    assert Settings(backend="lakebase").effective_backend == "lakebase"
    settings = Settings(isolation="rollback", module_isolation="clone")
    assert [
        settings.isolation_for(scope) for scope in ("function", "module", "class", "package", "session")
    ] == [
        "rollback",
        "clone",
        "branch",
        "branch",
        "branch",
    ]


# ------------------------------------------------------------------------ built directly


def test_a_huge_warm_pool_is_refused_at_every_level(tmp_path: Path) -> None:
    """Each pooled branch is a full copy of the template: 100000 would fill the disk (the
    review saw 221 live branches), so any value above ``MAX_POOL_SIZE`` is a usage error that
    says why, wherever it was given."""
    assert MAX_POOL_SIZE == 16
    spec = SPECS_BY_NAME["pool_size"]
    assert build(spec, {"env": str(MAX_POOL_SIZE)}, tmp_path).pool_size == MAX_POOL_SIZE
    for level in levels_of(spec):
        message = config_error(build, spec, {level: "100000"}, tmp_path)
        assert message is not None, level
        assert message.startswith(origin_label(spec, level)), message
        assert "a warm pool of 100000 branches" in message and "at most 16" in message, message
    message = config_error(Settings, pool_size=100000)
    assert message is not None and message.startswith("Settings(pool_size=...): "), message


@pytest.mark.parametrize("blank", ["", "  ", "\n"])
def test_an_empty_url_variable_is_an_error(tmp_path: Path, blank: str) -> None:
    """``DBBRANCH_URL: ${{ secrets.DB_URL }}`` with the secret unset gives an empty variable:
    silently starting the embedded server instead would test against the wrong server."""
    message = config_error(resolve, env={"DBBRANCH_URL": blank}, root=tmp_path)
    assert message is not None
    assert message.startswith("environment variable DBBRANCH_URL is set but empty"), message
    assert "unset the variable" in message
    # Unset, or given at a higher level, it is no error.
    assert resolve(env={}, root=tmp_path).url is None
    given = resolve(options={"url": "postgresql://h/db"}, env={"DBBRANCH_URL": blank}, root=tmp_path)
    assert given.url == "postgresql://h/db"


def test_settings_built_directly_checks_values_like_every_other_level(tmp_path: Path) -> None:
    """A user's script builds ``Settings(...)``: each value goes through the same parser as
    an ini value, with the same outcome, and an error names ``Settings(<name>=...)``."""
    cases: list[tuple[str, Any]] = [(spec.name, "sometimes") for spec in SPECS if spec.choices]
    cases += [(spec.name, choice.upper()) for spec in SPECS for choice in spec.choices or ()]
    cases += [
        ("rebuild", "maybe"),
        ("rebuild", "yes"),
        ("check_migrations", True),
        ("revision", "   "),
        ("revision", " r1 "),
        ("lakebase_ttl", "soon"),
        ("lakebase_ttl", 0),
        ("lakebase_ttl", "2h"),
        ("lakebase_template_max_age", "-1d"),
        ("lakebase_port", 0),
        ("lakebase_port", 70000),
        ("lakebase_port", "5433"),
        ("lakebase_limit", 0),
        ("lakebase_limit", "4"),
        ("pool_size", -1),
        ("pool_size", "auto"),
        ("pool_size", 3),
        ("pool_size", 100000),
        ("url", "  postgresql://h/db "),
        ("source", "   "),
    ]
    errors = 0
    for name, raw in cases:
        ini_text = str(raw).lower() if isinstance(raw, bool) else str(raw)
        from_ini = outcome(resolve, ini={name: ini_text}, root=tmp_path)
        direct = outcome(Settings, root=tmp_path, **{name: raw})
        if isinstance(from_ini, ConfigError):
            errors += 1
            assert isinstance(direct, ConfigError), (name, raw, direct)
            assert str(direct).startswith(f"Settings({name}=...): "), direct
            # The same explanation after the place.
            assert str(direct).split(": ", 1)[1] == str(from_ini).split(": ", 1)[1], (name, raw)
        else:
            assert not isinstance(direct, ConfigError), (name, raw, direct)
            assert getattr(direct, name) == getattr(from_ini, name), (name, raw)
    assert errors >= 15  # precondition: the bad half of the cases really is bad


def test_settings_built_directly_normalises_values() -> None:
    """As a script would write them: any case, surrounding blanks, durations and numbers as text."""
    given: dict[str, Any] = {
        "keep": "FAILED",
        "strategy": " Clone ",
        "lakebase_ttl": "2h",
        "lakebase_port": "5433",
        "rebuild": "yes",
    }
    settings = Settings(**given)
    assert (settings.keep, settings.strategy, settings.lakebase_ttl) == ("failed", "clone", 7200)
    assert (settings.lakebase_port, settings.rebuild) == (5433, True)


def test_the_defaults_construct_and_equal_an_empty_resolve(tmp_path: Path) -> None:
    assert Settings(root=tmp_path) == resolve(root=tmp_path)
    assert Settings(**{spec.name: spec.default for spec in SPECS}, root=tmp_path) == Settings(root=tmp_path)


def test_a_blank_required_text_setting_is_never_silently_none(tmp_path: Path) -> None:
    """``lakebase_sslmode`` and ``lakebase_database`` have text defaults and are always
    needed. Given as blanks, each level must either keep the default or raise an error naming
    the place (``Settings(<name>=...)`` when built directly); it must never become None."""
    problems = []
    for name in ("lakebase_sslmode", "lakebase_database"):
        spec = SPECS_BY_NAME[name]
        attempts: list[tuple[str, Callable[..., Settings], dict[str, Any]]] = [
            (spec.option, resolve, {"options": {name: "  "}, "root": tmp_path}),
            (f"environment variable {spec.env}", resolve, {"env": {spec.env: "  "}, "root": tmp_path}),
            (f"ini option {spec.ini}", resolve, {"ini": {name: "  "}, "root": tmp_path}),
            (f"Settings({name}=...)", Settings, {name: "  ", "root": tmp_path}),
        ]
        for place, call, kwargs in attempts:
            try:
                value = getattr(call(**kwargs), name)
            except ConfigError as exc:
                if not str(exc).startswith(place):
                    problems.append(f"{name}, blank from {place}: the error does not name it: {exc}")
            else:
                if value != spec.default:
                    problems.append(
                        f"{name}, blank from {place}: {value!r}, neither the default nor an error"
                    )
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- overrides


def test_with_overrides_rejects_unknown_names_and_lists_the_accepted_ones(tmp_path: Path) -> None:
    settings = resolve(root=tmp_path)
    message = config_error(settings.with_overrides, MARKER_WHERE, revison="0001")
    assert message is not None and message.startswith(MARKER_WHERE), message
    assert "revison" in message
    assert f"accepted: {', '.join(OVERRIDABLE)}" in message


def test_with_overrides_rejects_settings_that_are_not_overridable(tmp_path: Path) -> None:
    """Server-wide settings (strategy, backend, pool size...) cannot differ per fixture."""
    settings = resolve(root=tmp_path)
    not_overridable = [spec for spec in SPECS if not spec.overridable]
    assert {"strategy", "backend", "pool_size", "module_isolation"} <= {spec.name for spec in not_overridable}
    for spec in not_overridable:
        message = config_error(settings.with_overrides, MARKER_WHERE, **{spec.name: two_values(spec)[0][0]})
        assert message is not None and spec.name in message, (spec.name, message)


def test_with_overrides_none_changes_nothing(tmp_path: Path) -> None:
    settings = resolve(env={"DBBRANCH_KEEP": "failed"}, root=tmp_path)
    same = settings.with_overrides(MARKER_WHERE, keep=None, revision=None)
    assert same == settings
    assert same.keep == "failed"
    assert same.origin("keep") == "environment variable DBBRANCH_KEEP"


def test_with_overrides_leaves_the_original_untouched(tmp_path: Path) -> None:
    settings = resolve(env={"DBBRANCH_REVISION": "0003"}, root=tmp_path)
    changed = settings.with_overrides(MARKER_WHERE, revision="0001", keep="always")
    assert (changed.revision, changed.keep) == ("0001", "always")
    assert (settings.revision, settings.keep) == ("0003", "never")
    assert settings.origin("revision") == "environment variable DBBRANCH_REVISION"
    assert changed.origin("revision") == changed.origin("keep") == MARKER_WHERE
    assert changed.root == settings.root


def test_overrides_stack_and_the_last_one_wins(tmp_path: Path) -> None:
    """A factory argument first, then the marker on the test."""
    factory = resolve(root=tmp_path).with_overrides("branch_fixture(revision='0001')", revision="0001")
    marked = factory.with_overrides(MARKER_WHERE, revision="0002")
    assert marked.revision == "0002"
    assert marked.origin("revision") == MARKER_WHERE
    assert factory.origin("revision") == "branch_fixture(revision='0001')"


def test_marker_values_of_other_types_are_parsed(tmp_path: Path) -> None:
    """A marker may pass a Path or an int; it must be validated like text."""
    settings = Settings(root=tmp_path).with_overrides("marker", alembic_ini=tmp_path / "a.ini", revision=3)
    assert settings.alembic_ini_path() == tmp_path / "a.ini"
    assert settings.revision == "3"
    with pytest.raises(ConfigError, match="marker: expected one of never, failed, always"):
        Settings(root=tmp_path).with_overrides("marker", keep=True)


def test_isolation_override_applies_to_the_fixtures_own_scope(tmp_path: Path) -> None:
    """``isolation=`` on a module-scope fixture sets the module isolation, not the function
    one; a session- or class-scope branch is always a branch of its own."""
    settings = Settings(root=tmp_path)
    module = settings.with_overrides(MARKER_WHERE, scope="module", isolation="rollback")
    assert (module.module_isolation, module.isolation) == ("rollback", "branch")
    assert module.origin("module_isolation") == MARKER_WHERE
    assert module.isolation_for("module") == "rollback"
    function = settings.with_overrides(MARKER_WHERE, isolation="clone")
    assert (function.isolation, function.module_isolation) == ("clone", "branch")
    for scope, isolation in itertools.product(("session", "package", "class"), ("clone", "rollback")):
        message = config_error(settings.with_overrides, MARKER_WHERE, scope=scope, isolation=isolation)
        assert message is not None and message.startswith(MARKER_WHERE), (scope, isolation)
        assert f"{scope}-scope branch is always a branch of its own" in message, message
    session = settings.with_overrides(MARKER_WHERE, scope="session", isolation="branch")
    assert session.isolation_for("session") == "branch"


# ------------------------------------------------------------------------ secrets, frozen


def test_repr_and_str_never_show_the_password() -> None:
    """``pytest -l`` and junit XML show fixture values; a URL's password must not be in them."""
    secret = "Sup3rS3cretPw"
    for url in (
        f"postgresql://u:{secret}@h/db",
        f"postgresql://:{secret}@h/db",
        f"host=h user=u password={secret} dbname=db",
        f"host=h password='{secret} x'",
    ):
        settings = Settings(url=url, keep="failed")
        for shown in (repr(settings), str(settings)):
            assert secret not in shown, shown
            assert "keep='failed'" in shown, shown  # the rest is still shown
    assert "url" in repr(Settings(url=f"postgresql://u:{secret}@h/db"))
    by_name = {f.name: f for f in dataclasses.fields(Settings)}
    assert by_name["url"].repr is False
    assert [name for name, f in by_name.items() if not f.repr] == ["url", "origins"]


def test_settings_is_frozen(tmp_path: Path) -> None:
    settings = resolve(root=tmp_path)
    for field in dataclasses.fields(Settings):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, field.name, "changed")


# ------------------------------------------------------------------------------- paths


def test_a_relative_alembic_ini_is_relative_to_root_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    root = tmp_path / "project"
    assert (
        resolve(ini={"alembic_ini": "conf/alembic.ini"}, root=root).alembic_ini_path()
        == root / "conf" / "alembic.ini"
    )
    assert (
        resolve(env={"DBBRANCH_ALEMBIC_INI": "db/alembic.ini"}, root=root).alembic_ini_path()
        == root / "db" / "alembic.ini"
    )
    # Explicit and missing: returned anyway, for a clear error later.
    assert resolve(ini={"alembic_ini": "missing.ini"}, root=root).alembic_ini_path() == root / "missing.ini"


def test_an_absolute_or_home_alembic_ini_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = tmp_path / "other" / "migrations.ini"
    assert (
        resolve(options={"alembic_ini": str(absolute)}, root=tmp_path / "root").alembic_ini_path() == absolute
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = resolve(options={"alembic_ini": "~/alembic.ini"}, root=tmp_path / "root")
    assert settings.alembic_ini_path() == tmp_path / "home" / "alembic.ini"


def test_alembic_ini_none_disables_migrations(tmp_path: Path) -> None:
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    for off in ["none", "None", "NONE", " none ", "off", "false"]:
        assert resolve(env={"DBBRANCH_ALEMBIC_INI": off}, root=tmp_path).alembic_ini_path() is None, off


def test_the_default_alembic_ini_is_a_file_in_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Used when it exists in root (not in the working directory); no migrations otherwise."""
    root = tmp_path / "root"
    root.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "alembic.ini").write_text("[alembic]\n")
    monkeypatch.chdir(cwd)
    assert resolve(root=root).alembic_ini_path() is None
    (root / "alembic.ini").mkdir()
    assert resolve(root=root).alembic_ini_path() is None  # a folder is not a file
    (root / "alembic.ini").rmdir()
    (root / "alembic.ini").write_text("[alembic]\n")
    assert resolve(root=root).alembic_ini_path() == root / "alembic.ini"


def test_override_of_alembic_ini_resolves_against_root(tmp_path: Path) -> None:
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    settings = resolve(root=tmp_path).with_overrides(MARKER_WHERE, alembic_ini="legacy/alembic.ini")
    assert settings.alembic_ini_path() == tmp_path / "legacy" / "alembic.ini"
    assert resolve(root=tmp_path).with_overrides(MARKER_WHERE, alembic_ini="none").alembic_ini_path() is None


def test_the_readme_configuration_table_names_every_setting() -> None:
    """A setting missing from the README's table is a setting nobody finds."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+)`", table))
    missing = [spec.name for spec in SPECS if spec.name not in named]
    assert missing == []
