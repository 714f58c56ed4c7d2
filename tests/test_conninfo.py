"""Unit tests for server addresses: parsing, URLs for branches, and hiding passwords."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_dbbranch.conninfo import ServerAddress, redact_text
from pytest_dbbranch.errors import ConfigError

SECRET = "Sup3rS3cretPw"


# ----------------------------------------------------------------------------------- parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"postgresql://alice:{SECRET}@db.example.com:5433/app",
            ServerAddress("db.example.com", 5433, "alice", SECRET, "app"),
        ),
        (
            f"postgres://alice:{SECRET}@db.example.com:5433/app",
            ServerAddress("db.example.com", 5433, "alice", SECRET, "app"),
        ),
        (
            f"postgresql+psycopg://alice:{SECRET}@db.example.com:5433/app",
            ServerAddress("db.example.com", 5433, "alice", SECRET, "app"),
        ),
        (
            f"postgresql+psycopg2://alice:{SECRET}@db.example.com/app",
            ServerAddress("db.example.com", None, "alice", SECRET, "app"),
        ),
        (
            f"  postgresql://alice:{SECRET}@db.example.com/app \n",
            ServerAddress("db.example.com", None, "alice", SECRET, "app"),
        ),
        ("postgresql://localhost", ServerAddress("localhost", None, None, None, "postgres")),
        ("postgresql://localhost/", ServerAddress("localhost", None, None, None, "postgres")),
        ("postgresql://bob@localhost/app", ServerAddress("localhost", None, "bob", None, "app")),
        (
            f"host=db.example.com port=5433 user=alice password={SECRET} dbname=app",
            ServerAddress("db.example.com", 5433, "alice", SECRET, "app"),
        ),
        (
            "host=db.example.com user=alice password='se cret' dbname=app",
            ServerAddress("db.example.com", None, "alice", "se cret", "app"),
        ),
        ("host=localhost", ServerAddress("localhost", None, None, None, "postgres")),
        (
            # percent-encoded user and password: '@', ':', '/', space, '%' and unicode
            "postgresql://us%40er%3Aname:p%40ss%3Aw%2Frd%20%25%C3%A9@db.example.com/app",
            ServerAddress("db.example.com", None, "us@er:name", "p@ss:w/rd %é", "app"),
        ),
        (
            f"postgresql://alice:{SECRET}@[::1]:5432/app",
            ServerAddress("::1", 5432, "alice", SECRET, "app"),
        ),
        (
            "postgresql://alice@[2001:db8::1]/app",
            ServerAddress("2001:db8::1", None, "alice", None, "app"),
        ),
        (
            "postgresql:///app?host=/var/run/postgresql",
            ServerAddress("/var/run/postgresql", None, None, None, "app"),
        ),
        (
            "postgresql://alice@/app?host=%2Ftmp%2Fpg%20sock&port=5433",
            ServerAddress("/tmp/pg sock", 5433, "alice", None, "app"),
        ),
        (
            "postgresql://%2Fvar%2Frun%2Fpostgresql/app",
            ServerAddress("/var/run/postgresql", None, None, None, "app"),
        ),
        (
            "host=/var/run/postgresql dbname=app",
            ServerAddress("/var/run/postgresql", None, None, None, "app"),
        ),
        (
            "postgresql://alice@localhost/app?sslmode=require&application_name=tests",
            ServerAddress(
                "localhost",
                None,
                "alice",
                None,
                "app",
                (("application_name", "tests"), ("sslmode", "require")),
            ),
        ),
        (
            "postgresql://localhost/my%20db",
            ServerAddress("localhost", None, None, None, "my db"),
        ),
    ],
)
def test_parse_accepts(text: str, expected: ServerAddress) -> None:
    parsed = ServerAddress.parse(text)
    assert parsed == expected
    # password is excluded from repr, so compare it explicitly
    assert parsed.password == expected.password


def test_parse_options_are_sorted_and_independent_of_order() -> None:
    a = ServerAddress.parse("postgresql://h/db?sslmode=require&connect_timeout=5")
    b = ServerAddress.parse("postgresql://h/db?connect_timeout=5&sslmode=require")
    assert a == b
    assert a.options == (("connect_timeout", "5"), ("sslmode", "require"))


BAD_INPUTS = [
    "not a url",
    "localhost:5432",
    f"localhost:5432/app?password={SECRET}",
    "",
    "   ",
    "localhost",
    f"http://alice:{SECRET}@db.example.com/app",
    f"mysql://alice:{SECRET}@db.example.com/app",
    f"jdbc:postgresql://alice:{SECRET}@db.example.com/app",
    f"alice:{SECRET}@db.example.com:5432/app",
]


@pytest.mark.parametrize("text", BAD_INPUTS)
def test_parse_rejects_non_urls(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerAddress.parse(text, where="environment variable DBBRANCH_URL")
    message = str(info.value)
    assert message.startswith("environment variable DBBRANCH_URL")
    assert SECRET not in message


BAD_PORTS = [
    f"postgresql://alice:{SECRET}@db.example.com:abc/app",
    f"postgresql://alice:{SECRET}@db.example.com/app?port=abc",
    f"host=db.example.com port=abc user=alice password={SECRET}",
    f"host=db.example.com port=5432x password={SECRET}",
    f"postgresql://alice:{SECRET}@db.example.com:99999/app",
    f"postgresql://alice:{SECRET}@db.example.com:65536/app",
    f"postgresql://alice:{SECRET}@db.example.com:-1/app",
    f"postgresql://alice:{SECRET}@db.example.com:0/app",
    f"host=db.example.com port=70000 password={SECRET}",
    f"host=db.example.com port=-5 password={SECRET}",
]


@pytest.mark.parametrize("text", BAD_PORTS)
def test_parse_rejects_bad_ports_without_leaking_the_password(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerAddress.parse(text, where="--dbbranch-url")
    message = str(info.value)
    assert message.startswith("--dbbranch-url")
    assert "port" in message
    assert SECRET not in message


UNPARSABLE = [
    f"host=db.example.com password={SECRET} dbname",
    f"host=db.example.com password='{SECRET}",
    f"postgresql://alice:{SECRET}@db.example.com/app?nosuchparam=1",
    f"postgresql://alice:{SECRET}@db.example.com/app?sslmode",
    f"postgresql://alice:{SECRET}%zz@db.example.com/app",
    f"postgresql://alice:{SECRET}@db.example.com/app%zz",
]


@pytest.mark.parametrize("text", UNPARSABLE)
def test_parse_errors_never_contain_the_password(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerAddress.parse(text, where="ini option dbbranch_url")
    message = str(info.value)
    assert message.startswith("ini option dbbranch_url")
    assert SECRET not in message
    assert SECRET not in repr(info.value)


def test_parse_error_does_not_chain_the_libpq_exception() -> None:
    # The original psycopg exception may carry the raw conninfo; it must not be chained.
    with pytest.raises(ConfigError) as info:
        ServerAddress.parse(f"host=h password='{SECRET}")
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_password_is_not_in_repr() -> None:
    address = ServerAddress.parse(f"postgresql://alice:{SECRET}@db.example.com/app")
    assert SECRET not in repr(address)
    assert SECRET not in str(address)


def test_server_address_is_frozen() -> None:
    address = ServerAddress.parse("postgresql://h/db")
    with pytest.raises(dataclasses.FrozenInstanceError):
        address.host = "other"  # type: ignore[misc]


# ------------------------------------------------------------------------------ round trip

ROUND_TRIP = [
    f"postgresql://alice:{SECRET}@db.example.com:5433/app",
    "postgresql://alice@db.example.com/app",
    "postgresql://db.example.com/app",
    "postgresql:///app",
    "postgresql://us%40er%3Aname:p%40ss%3Aw%2Frd%20%25%C3%A9%26%3F%23@db.example.com/app",
    f"postgresql://alice:{SECRET}@[::1]:5432/app",
    "postgresql://alice@[2001:db8::1]:6543/app",
    "postgresql:///app?host=/var/run/postgresql",
    "postgresql://alice@/app?host=%2Ftmp%2Fpg%20sock&port=5433",
    "postgresql://alice@localhost/app?sslmode=require&application_name=my%20tests%26more",
    "host=db.example.com user=alice password='se cret' dbname=app",
    f"host=db.example.com password={SECRET} dbname=app",  # password without a user name
    f"postgresql://:{SECRET}@db.example.com/app",  # same, as a URL
]


def _with_dbname(address: ServerAddress, dbname: str) -> ServerAddress:
    return dataclasses.replace(address, dbname=dbname)


@pytest.mark.parametrize("text", ROUND_TRIP)
@pytest.mark.parametrize("dbname", ["dbb-abc12345-gw0-f-test-x-0123456789", "my db/ü?#"])
def test_url_round_trips_through_parse(text: str, dbname: str) -> None:
    address = ServerAddress.parse(text)
    again = ServerAddress.parse(address.url(dbname))
    assert again == _with_dbname(address, dbname)
    assert again.password == address.password


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_sqlalchemy_url_round_trips_through_parse(text: str) -> None:
    address = ServerAddress.parse(text)
    url = address.sqlalchemy_url("branch1")
    assert url.startswith("postgresql+psycopg://")
    again = ServerAddress.parse(url)
    assert again == _with_dbname(address, "branch1")
    assert again.password == address.password


@pytest.mark.parametrize("text", ROUND_TRIP)
@pytest.mark.parametrize("dbname", ["branch1", "my 'db'\\x"])
def test_conninfo_round_trips_through_parse(text: str, dbname: str) -> None:
    address = ServerAddress.parse(text)
    again = ServerAddress.parse(address.conninfo(dbname))
    assert again == _with_dbname(address, dbname)
    assert again.password == address.password


def test_url_without_dbname_uses_the_maintenance_database() -> None:
    address = ServerAddress.parse("postgresql://alice@db.example.com/maint")
    assert ServerAddress.parse(address.url()).dbname == "maint"
    assert ServerAddress.parse(address.conninfo()).dbname == "maint"


def test_url_scheme_can_be_chosen() -> None:
    address = ServerAddress.parse("postgres://alice@db.example.com/app")
    assert address.url().startswith("postgresql://")
    assert address.url(scheme="postgres").startswith("postgres://")


def test_kwargs_carry_the_password_and_options() -> None:
    address = ServerAddress.parse(f"postgresql://alice:{SECRET}@h:5433/app?sslmode=require")
    assert address.kwargs("x") == {
        "dbname": "x",
        "host": "h",
        "port": 5433,
        "user": "alice",
        "password": SECRET,
        "sslmode": "require",
    }
    assert "password" not in ServerAddress.parse("postgresql://h/app").kwargs()


# ---------------------------------------------------------------------------- display_url


@pytest.mark.parametrize("text", [t for t in ROUND_TRIP if SECRET in t or "password" in t])
def test_display_url_hides_the_password(text: str) -> None:
    address = ServerAddress.parse(text)
    assert address.password
    shown = address.display_url("branch1")
    if address.user:
        assert "***" in shown
    assert address.password not in shown
    assert SECRET not in shown
    assert "branch1" in shown


def test_display_url_keeps_everything_else() -> None:
    address = ServerAddress.parse(f"postgresql://alice:{SECRET}@db.example.com:5433/app")
    assert address.display_url() == "postgresql://alice:***@db.example.com:5433/app"
    assert address.display_url("b") == "postgresql://alice:***@db.example.com:5433/b"


def test_display_url_hides_a_percent_encoded_password() -> None:
    address = ServerAddress.parse("postgresql://alice:p%40ss%2Fw0rd@db.example.com/app")
    shown = address.display_url()
    assert "p@ss/w0rd" not in shown
    assert "p%40ss%2Fw0rd" not in shown
    assert "***" in shown


def test_display_url_without_password_shows_no_stars() -> None:
    address = ServerAddress.parse("postgresql://alice@db.example.com/app")
    assert "***" not in address.display_url()


def test_url_with_hide_false_contains_the_encoded_password() -> None:
    address = ServerAddress.parse("postgresql://alice:p%40ss@db.example.com/app")
    assert "p%40ss" in address.url()


# ---------------------------------------------------------------------------- redact_text


@pytest.mark.parametrize(
    "text",
    [
        f"password={SECRET}",
        f"host=h password={SECRET} dbname=app",
        f"PASSWORD = {SECRET}",
        f"password='{SECRET}'",
        f"password='se cret {SECRET}'",
        f"password='{SECRET} with spaces' dbname=x",
        f"connection failed: postgresql://alice:{SECRET}@db.example.com:5432/app (timeout)",
        f"postgres://alice:{SECRET}@h/app",
        f"postgresql+psycopg://alice:{SECRET}@h/app",
        f"two urls postgresql://a:{SECRET}@h/x and postgresql://b:{SECRET}@h/y",
        f"postgresql://:{SECRET}@db.example.com/app",
        f"password='it\\'s {SECRET}'",
    ],
)
def test_redact_text_hides_passwords_without_knowing_them(text: str) -> None:
    redacted = redact_text(text, None)
    assert SECRET not in redacted
    assert "***" in redacted


def test_redact_text_hides_quoted_password_with_space() -> None:
    redacted = redact_text("host=h password='se cret' dbname=app", None)
    assert "se cret" not in redacted
    assert "cret" not in redacted
    assert redacted == "host=h password=*** dbname=app"


def test_redact_text_keeps_the_rest_of_a_url() -> None:
    redacted = redact_text(f"postgresql://alice:{SECRET}@db.example.com:5432/app", None)
    assert redacted == "postgresql://alice:***@db.example.com:5432/app"


@pytest.mark.parametrize("password", [SECRET, "p@ss/w rd", "çé€"])
def test_redact_text_hides_a_known_password_anywhere(password: str) -> None:
    from urllib.parse import quote

    text = f'FATAL: bad thing near "{password}" and {quote(password, safe="")} again'
    redacted = redact_text(text, password)
    assert password not in redacted
    assert quote(password, safe="") not in redacted


def test_redact_text_leaves_harmless_text_alone() -> None:
    text = 'connection to server at "db.example.com" (10.0.0.1), port 5432 failed'
    assert redact_text(text, None) == text
    assert redact_text("postgresql://alice@h/app", None) == "postgresql://alice@h/app"


def test_address_redact_uses_its_own_password() -> None:
    address = ServerAddress.parse(f"postgresql://alice:{SECRET}@h/app")
    assert SECRET not in address.redact(f"error: authentication failed with {SECRET}")
