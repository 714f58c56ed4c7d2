"""Unit tests for settings resolution: precedence, origins, parsing and paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pytest_dbbranch.errors import ConfigError
from pytest_dbbranch.settings import (
    KEEP_CHOICES,
    OVERRIDABLE,
    SPECS,
    SPECS_BY_NAME,
    STRATEGY_CHOICES,
    Settings,
    Spec,
    resolve,
)

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
    if is_numeric(spec):
        base = spec.default or 0
        return [(str(base + 17), base + 17), (str(base + 23), base + 23)]
    return [(f"{spec.name}-one", f"{spec.name}-one"), (f"{spec.name}-two", f"{spec.name}-two")]


def origin_label(spec: Spec, level: str) -> str:
    return {
        "override": MARKER_WHERE,
        "option": spec.option,
        "env": f"environment variable {spec.env}",
        "ini": f"ini option {spec.ini}",
    }[level]


def build(spec: Spec, given: dict[str, str], root: Path) -> Settings:
    """Resolve with ``spec`` given at the levels in ``given`` (level -> raw text)."""
    options = {spec.name: given["option"]} if "option" in given else {}
    env = {spec.env: given["env"]} if "env" in given else {}
    ini = {spec.name: given["ini"]} if "ini" in given else {}
    settings = resolve(options=options, env=env, ini=ini, root=root)
    if "override" in given:
        settings = settings.with_overrides(MARKER_WHERE, **{spec.name: given["override"]})
    return settings


def level_pairs() -> list[Any]:
    params = []
    for spec in SPECS:
        for hi_index, higher in enumerate(LEVELS):
            for lower in LEVELS[hi_index + 1 :]:
                if "override" in (higher, lower) and spec.name not in OVERRIDABLE:
                    continue
                params.append(pytest.param(spec, higher, lower, id=f"{spec.name}-{higher}>{lower}"))
    return params


def single_levels() -> list[Any]:
    return [
        pytest.param(spec, level, id=f"{spec.name}-{level}")
        for spec in SPECS
        for level in LEVELS
        if level != "override" or spec.name in OVERRIDABLE
    ]


# ---------------------------------------------------------------------------- precedence


@pytest.mark.parametrize(("spec", "higher", "lower"), level_pairs())
@pytest.mark.parametrize("swap", [False, True], ids=["a>b", "b>a"])
def test_higher_level_wins(spec: Spec, higher: str, lower: str, swap: bool, tmp_path: Path) -> None:
    (raw_a, value_a), (raw_b, value_b) = two_values(spec)
    if swap:
        (raw_a, value_a), (raw_b, value_b) = (raw_b, value_b), (raw_a, value_a)
    settings = build(spec, {higher: raw_a, lower: raw_b}, tmp_path)
    assert getattr(settings, spec.name) == value_a
    assert settings.origin(spec.name) == origin_label(spec, higher)


def test_all_levels_at_once(tmp_path: Path) -> None:
    for spec in SPECS:
        numeric = is_numeric(spec)
        given = {
            level: (str(100 + i) if numeric else f"{spec.name}-{level}") for i, level in enumerate(LEVELS)
        }
        if spec.name not in OVERRIDABLE:
            del given["override"]
        if spec.flag or spec.choices:
            continue  # covered pairwise: too few distinct values to give each level its own
        settings = build(spec, given, tmp_path)
        top = next(level for level in LEVELS if level in given)
        expected: Any = int(given[top]) if numeric else given[top]
        assert getattr(settings, spec.name) == expected, spec.name
        assert settings.origin(spec.name) == origin_label(spec, top)


@pytest.mark.parametrize(("spec", "level"), single_levels())
def test_any_level_beats_the_default(spec: Spec, level: str, tmp_path: Path) -> None:
    raw, value = two_values(spec)[0]
    assert value != spec.default
    settings = build(spec, {level: raw}, tmp_path)
    assert getattr(settings, spec.name) == value
    assert settings.origin(spec.name) == origin_label(spec, level)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_default_when_nothing_is_given(spec: Spec, tmp_path: Path) -> None:
    settings = resolve(root=tmp_path)
    assert getattr(settings, spec.name) == spec.default
    assert getattr(Settings(), spec.name) == spec.default
    # The origin then lists every place the value could be set.
    origin = settings.origin(spec.name)
    assert spec.option in origin
    assert spec.env in origin
    assert spec.ini in origin


def test_every_spec_is_a_settings_field() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert {spec.name for spec in SPECS} <= fields
    assert set(OVERRIDABLE) <= set(SPECS_BY_NAME)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_option_env_and_ini_names(spec: Spec) -> None:
    assert spec.option == "--dbbranch-" + spec.name.replace("_", "-")
    assert spec.env == "DBBRANCH_" + spec.name.upper()
    assert spec.ini == "dbbranch_" + spec.name


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_empty_env_counts_as_not_given(spec: Spec, tmp_path: Path) -> None:
    raw, value = two_values(spec)[0]
    settings = resolve(env={spec.env: ""}, ini={spec.name: raw}, root=tmp_path)
    assert getattr(settings, spec.name) == value
    assert settings.origin(spec.name) == f"ini option {spec.ini}"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("empty", ["", []], ids=["str", "list"])
def test_empty_ini_counts_as_not_given(spec: Spec, empty: Any, tmp_path: Path) -> None:
    settings = resolve(ini={spec.name: empty}, root=tmp_path)
    assert getattr(settings, spec.name) == spec.default


def test_ini_list_values_are_joined(tmp_path: Path) -> None:
    settings = resolve(ini={"source": ["prod", "snapshot"], "keep": ["failed"]}, root=tmp_path)
    assert settings.source == "prod snapshot"
    assert settings.keep == "failed"


def test_none_option_counts_as_not_given(tmp_path: Path) -> None:
    options: dict[str, Any] = {spec.name: None for spec in SPECS}
    env = {spec.env: two_values(spec)[0][0] for spec in SPECS}
    settings = resolve(options=options, env=env, root=tmp_path)
    for spec in SPECS:
        assert getattr(settings, spec.name) == two_values(spec)[0][1]
        assert settings.origin(spec.name) == f"environment variable {spec.env}"


def test_flag_option_true_beats_env_false(tmp_path: Path) -> None:
    settings = resolve(options={"rebuild": True}, env={"DBBRANCH_REBUILD": "0"}, root=tmp_path)
    assert settings.rebuild is True
    assert settings.origin("rebuild") == "--dbbranch-rebuild"


def test_flag_option_absent_false_lets_env_decide(tmp_path: Path) -> None:
    # A store_true flag that was not passed cannot mean "off": the environment decides.
    settings = resolve(options={"rebuild": False}, env={"DBBRANCH_REBUILD": "1"}, root=tmp_path)
    assert settings.rebuild is True
    assert settings.origin("rebuild") == "environment variable DBBRANCH_REBUILD"


def test_levels_are_independent_per_setting(tmp_path: Path) -> None:
    settings = resolve(
        options={"keep": "always"},
        env={"DBBRANCH_URL": "postgresql://u@h/db", "DBBRANCH_KEEP": "failed"},
        ini={"revision": "0001", "url": "postgresql://ini@h/db"},
        root=tmp_path,
    )
    assert settings.keep == "always"
    assert settings.url == "postgresql://u@h/db"
    assert settings.revision == "0001"
    assert settings.origin("keep") == "--dbbranch-keep"
    assert settings.origin("url") == "environment variable DBBRANCH_URL"
    assert settings.origin("revision") == "ini option dbbranch_revision"
    assert settings.strategy == "auto"


def test_origin_names_the_environment_variable(tmp_path: Path) -> None:
    settings = resolve(env={"DBBRANCH_URL": "postgresql://u@h/db"}, root=tmp_path)
    assert settings.origin("url") == "environment variable DBBRANCH_URL"


def test_root_defaults_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve().root == tmp_path
    assert resolve(root=tmp_path / "x").root == tmp_path / "x"


# ------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "on", " On "])
def test_bool_true_spellings(raw: str, tmp_path: Path) -> None:
    assert resolve(env={"DBBRANCH_REBUILD": raw}, root=tmp_path).rebuild is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "off", " "])
def test_bool_false_spellings(raw: str, tmp_path: Path) -> None:
    assert resolve(env={"DBBRANCH_REBUILD": raw}, root=tmp_path).rebuild is False


@pytest.mark.parametrize("choice", KEEP_CHOICES)
def test_keep_choices_are_accepted_case_insensitively(choice: str, tmp_path: Path) -> None:
    assert resolve(env={"DBBRANCH_KEEP": f" {choice.upper()} "}, root=tmp_path).keep == choice


@pytest.mark.parametrize("choice", STRATEGY_CHOICES)
def test_strategy_choices_are_accepted(choice: str, tmp_path: Path) -> None:
    assert resolve(ini={"strategy": choice.upper()}, root=tmp_path).strategy == choice


def bad_value_cases() -> list[Any]:
    bad = {"keep": "sometimes", "strategy": "fast", "rebuild": "maybe", "revision": "   "}
    return [
        pytest.param(name, value, level, id=f"{name}-{level}")
        for name, value in bad.items()
        for level in LEVELS
        if level != "override" or name in OVERRIDABLE
    ]


@pytest.mark.parametrize(("name", "value", "level"), bad_value_cases())
def test_bad_values_raise_config_error_naming_the_place(
    name: str, value: str, level: str, tmp_path: Path
) -> None:
    spec = SPECS_BY_NAME[name]
    with pytest.raises(ConfigError) as info:
        build(spec, {level: value}, tmp_path)
    message = str(info.value)
    assert origin_label(spec, level) in message
    if value.strip():
        assert repr(value) in message


@pytest.mark.parametrize("value", ["sometimes", "", "never "])
def test_bad_keep_message_lists_the_choices(value: str, tmp_path: Path) -> None:
    if value == "never ":  # surrounding whitespace is fine
        assert resolve(options={"keep": value}, root=tmp_path).keep == "never"
        return
    with pytest.raises(ConfigError, match="--dbbranch-keep") as info:
        resolve(options={"keep": value}, root=tmp_path)
    for choice in KEEP_CHOICES:
        assert choice in str(info.value)


def test_empty_revision_option_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--dbbranch-revision: the target revision is empty"):
        resolve(options={"revision": ""}, root=tmp_path)


def test_revision_is_stripped(tmp_path: Path) -> None:
    assert resolve(env={"DBBRANCH_REVISION": "  0002 \n"}, root=tmp_path).revision == "0002"


# --------------------------------------------------------------------------- overrides


def test_with_overrides_rejects_unknown_names(tmp_path: Path) -> None:
    settings = resolve(root=tmp_path)
    with pytest.raises(ConfigError) as info:
        settings.with_overrides(MARKER_WHERE, revison="0001")
    assert MARKER_WHERE in str(info.value)
    assert "revison" in str(info.value)


@pytest.mark.parametrize("name", [spec.name for spec in SPECS if spec.name not in OVERRIDABLE])
def test_with_overrides_rejects_settings_that_are_not_overridable(name: str, tmp_path: Path) -> None:
    settings = resolve(root=tmp_path)
    with pytest.raises(ConfigError, match=name):
        settings.with_overrides(MARKER_WHERE, **{name: two_values(SPECS_BY_NAME[name])[0][0]})


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
    assert changed.origin("revision") == MARKER_WHERE
    assert changed.origin("keep") == MARKER_WHERE
    assert changed.root == settings.root


def test_overrides_stack_and_the_last_one_wins(tmp_path: Path) -> None:
    settings = resolve(root=tmp_path)
    factory = settings.with_overrides("branch_fixture(revision='0001')", revision="0001")
    marked = factory.with_overrides(MARKER_WHERE, revision="0002")
    assert marked.revision == "0002"
    assert marked.origin("revision") == MARKER_WHERE
    assert factory.origin("revision") == "branch_fixture(revision='0001')"


# ------------------------------------------------------------------------------- paths


def test_alembic_ini_relative_to_root(tmp_path: Path) -> None:
    settings = resolve(ini={"alembic_ini": "conf/alembic.ini"}, root=tmp_path)
    assert settings.alembic_ini_path() == tmp_path / "conf" / "alembic.ini"


def test_alembic_ini_relative_to_root_not_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    root = tmp_path / "project"
    settings = resolve(env={"DBBRANCH_ALEMBIC_INI": "db/alembic.ini"}, root=root)
    assert settings.alembic_ini_path() == root / "db" / "alembic.ini"


def test_alembic_ini_absolute_path_is_kept(tmp_path: Path) -> None:
    absolute = tmp_path / "other" / "migrations.ini"
    settings = resolve(options={"alembic_ini": str(absolute)}, root=tmp_path / "root")
    assert settings.alembic_ini_path() == absolute


def test_alembic_ini_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = resolve(options={"alembic_ini": "~/alembic.ini"}, root=tmp_path / "root")
    assert settings.alembic_ini_path() == tmp_path / "home" / "alembic.ini"


@pytest.mark.parametrize("off", ["none", "None", "NONE", " none ", "off", "false"])
def test_alembic_ini_none_disables_migrations(off: str, tmp_path: Path) -> None:
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    settings = resolve(env={"DBBRANCH_ALEMBIC_INI": off}, root=tmp_path)
    assert settings.alembic_ini_path() is None


def test_default_alembic_ini_is_used_when_it_exists(tmp_path: Path) -> None:
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    assert resolve(root=tmp_path).alembic_ini_path() == tmp_path / "alembic.ini"


def test_no_default_alembic_ini_when_missing(tmp_path: Path) -> None:
    assert resolve(root=tmp_path).alembic_ini_path() is None


def test_default_alembic_ini_must_be_a_file(tmp_path: Path) -> None:
    (tmp_path / "alembic.ini").mkdir()
    assert resolve(root=tmp_path).alembic_ini_path() is None


def test_default_alembic_ini_is_looked_up_in_root_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "alembic.ini").write_text("[alembic]\n")
    monkeypatch.chdir(cwd)
    assert resolve(root=tmp_path / "root").alembic_ini_path() is None


def test_explicit_missing_alembic_ini_is_returned_for_a_later_clear_error(tmp_path: Path) -> None:
    settings = resolve(ini={"alembic_ini": "missing.ini"}, root=tmp_path)
    assert settings.alembic_ini_path() == tmp_path / "missing.ini"


def test_override_of_alembic_ini_resolves_against_root(tmp_path: Path) -> None:
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    settings = resolve(root=tmp_path).with_overrides(MARKER_WHERE, alembic_ini="legacy/alembic.ini")
    assert settings.alembic_ini_path() == tmp_path / "legacy" / "alembic.ini"
    assert resolve(root=tmp_path).with_overrides(MARKER_WHERE, alembic_ini="none").alembic_ini_path() is None


# ------------------------------------------------------------------------------- frozen


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Settings)])
def test_settings_is_frozen(name: str, tmp_path: Path) -> None:
    settings = resolve(root=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, name, "changed")


def test_origins_do_not_affect_equality(tmp_path: Path) -> None:
    from_env = resolve(env={"DBBRANCH_KEEP": "failed"}, root=tmp_path)
    from_ini = resolve(ini={"keep": "failed"}, root=tmp_path)
    assert from_env == from_ini
    assert from_env.origin("keep") != from_ini.origin("keep")


def test_marker_values_of_other_types_are_parsed(tmp_path: Path) -> None:
    """A marker may pass a Path or an int; it must be validated like text."""
    from pytest_dbbranch.settings import Settings

    settings = Settings(root=tmp_path).with_overrides("marker", alembic_ini=tmp_path / "a.ini", revision=3)
    assert settings.alembic_ini_path() == tmp_path / "a.ini"
    assert settings.revision == "3"
    with pytest.raises(ConfigError, match="marker: expected one of never, failed, always"):
        Settings(root=tmp_path).with_overrides("marker", keep=True)


def test_pool_size_auto_follows_free_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = resolve(env={"DBBRANCH_POOL_SIZE": "auto"}, root=tmp_path)
    assert settings.pool_size is None
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert settings.effective_pool_size() == 2
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    assert settings.effective_pool_size() == 0
    assert resolve(options={"pool_size": "0"}, root=tmp_path).effective_pool_size() == 0
    with pytest.raises(ConfigError, match="must be at least 0"):
        resolve(options={"pool_size": "-1"}, root=tmp_path)
