"""Server addresses: parsing, URLs handed out for branches, and never showing a password.

Every URL the plugin prints or hands to a test goes through ``ServerAddress``, so these rules
are what keeps a secret out of terminals, reports and exception messages.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

import pytest

from pytest_dbbranch.conninfo import ServerAddress, redact_text
from pytest_dbbranch.errors import ConfigError
from tests.helpers import SECRET


def parse_error(text: str, where: str) -> ConfigError:
    """The ConfigError ``parse`` raises for ``text`` (fails the test if it accepts it)."""
    with pytest.raises(ConfigError) as info:
        ServerAddress.parse(text, where=where)
    return info.value


# ----------------------------------------------------------------------------------- parse

ACCEPTED = {
    # The schemes users paste: libpq's, SQLAlchemy's, and surrounding whitespace from env files.
    f"postgresql://alice:{SECRET}@db.example.com:5433/app": ServerAddress(
        "db.example.com", 5433, "alice", SECRET, "app"
    ),
    f"postgres://alice:{SECRET}@db.example.com:5433/app": ServerAddress(
        "db.example.com", 5433, "alice", SECRET, "app"
    ),
    f"postgresql+psycopg://alice:{SECRET}@db.example.com:5433/app": ServerAddress(
        "db.example.com", 5433, "alice", SECRET, "app"
    ),
    f"postgresql+psycopg2://alice:{SECRET}@db.example.com/app": ServerAddress(
        "db.example.com", None, "alice", SECRET, "app"
    ),
    f"  postgresql://alice:{SECRET}@db.example.com/app \n": ServerAddress(
        "db.example.com", None, "alice", SECRET, "app"
    ),
    # No database: the maintenance database.
    "postgresql://localhost": ServerAddress("localhost", None, None, None, "postgres"),
    "postgresql://localhost/": ServerAddress("localhost", None, None, None, "postgres"),
    "postgresql://bob@localhost/app": ServerAddress("localhost", None, "bob", None, "app"),
    # libpq keyword strings, quoting included.
    f"host=db.example.com port=5433 user=alice password={SECRET} dbname=app": ServerAddress(
        "db.example.com", 5433, "alice", SECRET, "app"
    ),
    "host=db.example.com user=alice password='se cret' dbname=app": ServerAddress(
        "db.example.com", None, "alice", "se cret", "app"
    ),
    "host=localhost": ServerAddress("localhost", None, None, None, "postgres"),
    # Percent-encoded user and password: '@', ':', '/', space, '%' and unicode.
    "postgresql://us%40er%3Aname:p%40ss%3Aw%2Frd%20%25%C3%A9@db.example.com/app": ServerAddress(
        "db.example.com", None, "us@er:name", "p@ss:w/rd %é", "app"
    ),
    # IPv6 literals.
    f"postgresql://alice:{SECRET}@[::1]:5432/app": ServerAddress("::1", 5432, "alice", SECRET, "app"),
    "postgresql://alice@[2001:db8::1]/app": ServerAddress("2001:db8::1", None, "alice", None, "app"),
    # Unix sockets, in each place libpq allows them.
    "postgresql:///app?host=/var/run/postgresql": ServerAddress(
        "/var/run/postgresql", None, None, None, "app"
    ),
    "postgresql://alice@/app?host=%2Ftmp%2Fpg%20sock&port=5433": ServerAddress(
        "/tmp/pg sock", 5433, "alice", None, "app"
    ),
    "postgresql://%2Fvar%2Frun%2Fpostgresql/app": ServerAddress(
        "/var/run/postgresql", None, None, None, "app"
    ),
    "host=/var/run/postgresql dbname=app": ServerAddress("/var/run/postgresql", None, None, None, "app"),
    # Other parameters are kept, sorted.
    "postgresql://alice@localhost/app?sslmode=require&application_name=tests": ServerAddress(
        "localhost", None, "alice", None, "app", (("application_name", "tests"), ("sslmode", "require"))
    ),
    "postgresql://localhost/my%20db": ServerAddress("localhost", None, None, None, "my db"),
}


def test_parse_accepts_urls_and_keyword_strings() -> None:
    for text, expected in ACCEPTED.items():
        parsed = ServerAddress.parse(text)
        assert parsed == expected, text
        # Equality includes the password, but repr hides it: checked alone, a mismatch is visible.
        assert parsed.password == expected.password, text


def test_parse_options_are_sorted_and_independent_of_order() -> None:
    a = ServerAddress.parse("postgresql://h/db?sslmode=require&connect_timeout=5")
    b = ServerAddress.parse("postgresql://h/db?connect_timeout=5&sslmode=require")
    assert a == b
    assert a.options == (("connect_timeout", "5"), ("sslmode", "require"))


def test_parse_rejects_what_is_not_a_postgresql_url_without_leaking_the_password() -> None:
    """Rejected up front (not by libpq later), naming the setting the text came from."""
    rejected = [
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
    for text in rejected:
        message = str(parse_error(text, "environment variable DBBRANCH_URL"))
        assert message.startswith("environment variable DBBRANCH_URL"), message
        assert SECRET not in message, message


def test_parse_rejects_bad_ports_without_leaking_the_password() -> None:
    bad_ports = [
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
    for text in bad_ports:
        message = str(parse_error(text, "--dbbranch-url"))
        assert message.startswith("--dbbranch-url"), message
        assert "port" in message, message
        assert SECRET not in message, message


def test_libpq_parse_errors_never_contain_the_password() -> None:
    """libpq's own message may echo the conninfo; it is redacted, and not chained either."""
    unparsable = [
        f"host=db.example.com password={SECRET} dbname",
        f"host=db.example.com password='{SECRET}",
        f"postgresql://alice:{SECRET}@db.example.com/app?nosuchparam=1",
        f"postgresql://alice:{SECRET}@db.example.com/app?sslmode",
        f"postgresql://alice:{SECRET}%zz@db.example.com/app",
        f"postgresql://alice:{SECRET}@db.example.com/app%zz",
    ]
    for text in unparsable:
        error = parse_error(text, "ini option dbbranch_url")
        assert str(error).startswith("ini option dbbranch_url"), error
        assert SECRET not in str(error) and SECRET not in repr(error), error
        # The original psycopg exception may carry the raw conninfo: it must not be chained.
        assert error.__cause__ is None and error.__suppress_context__, text


def test_password_is_not_in_repr_or_str() -> None:
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


def test_every_form_handed_out_round_trips_through_parse() -> None:
    """What a branch's URL, SQLAlchemy URL or conninfo says is exactly the server we parsed,
    with the branch as database, whatever the user, password, host or database name hold."""
    for text in ROUND_TRIP:
        address = ServerAddress.parse(text)
        forms = {
            "url": [(dbname, address.url(dbname)) for dbname in ("dbb-abc-gw0-f-x-0123", "my db/ü?#")],
            "sqlalchemy_url": [("branch1", address.sqlalchemy_url("branch1"))],
            "conninfo": [(dbname, address.conninfo(dbname)) for dbname in ("branch1", "my 'db'\\x")],
        }
        for form, produced in forms.items():
            for dbname, out in produced:
                again = ServerAddress.parse(out)
                assert again == dataclasses.replace(address, dbname=dbname), (text, form, dbname)
                assert again.password == address.password, (text, form, dbname)
        assert address.sqlalchemy_url("b").startswith("postgresql+psycopg://"), text


def test_without_dbname_the_maintenance_database_is_used() -> None:
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


def test_display_url_hides_the_password_in_every_form() -> None:
    with_password = [text for text in ROUND_TRIP if ServerAddress.parse(text).password]
    assert len(with_password) >= 5  # precondition: percent-encoded, quoted, user-less...
    for text in with_password:
        address = ServerAddress.parse(text)
        assert address.password
        shown = address.display_url("branch1")
        if address.user:
            assert "***" in shown, shown
        assert address.password not in shown, text
        assert quote(address.password, safe="") not in shown, text
        assert "branch1" in shown, shown


def test_display_url_keeps_everything_else() -> None:
    address = ServerAddress.parse(f"postgresql://alice:{SECRET}@db.example.com:5433/app")
    assert address.display_url() == "postgresql://alice:***@db.example.com:5433/app"
    assert address.display_url("b") == "postgresql://alice:***@db.example.com:5433/b"
    assert "***" not in ServerAddress.parse("postgresql://alice@db.example.com/app").display_url()


def test_display_url_hides_a_percent_encoded_password_that_url_keeps() -> None:
    address = ServerAddress.parse("postgresql://alice:p%40ss%2Fw0rd@db.example.com/app")
    shown = address.display_url()
    assert "p@ss/w0rd" not in shown
    assert "p%40ss%2Fw0rd" not in shown
    assert "***" in shown
    assert "p%40ss%2Fw0rd" in address.url()  # the real URL, for connecting, keeps it


# ---------------------------------------------------------------------------- redact_text


def test_redact_text_hides_passwords_without_knowing_them() -> None:
    """Error messages from libpq and drivers echo conninfo and URLs in many shapes."""
    texts = [
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
    ]
    for text in texts:
        redacted = redact_text(text, None)
        assert SECRET not in redacted, redacted
        assert "***" in redacted, redacted


def test_redact_text_keeps_the_rest_of_the_text() -> None:
    """Only the secret goes: the message must stay useful."""
    assert redact_text("host=h password='se cret' dbname=app", None) == "host=h password=*** dbname=app"
    assert (
        redact_text(f"postgresql://alice:{SECRET}@db.example.com:5432/app", None)
        == "postgresql://alice:***@db.example.com:5432/app"
    )
    harmless = 'connection to server at "db.example.com" (10.0.0.1), port 5432 failed'
    assert redact_text(harmless, None) == harmless
    assert redact_text("postgresql://alice@h/app", None) == "postgresql://alice@h/app"


def test_redact_text_hides_a_known_password_anywhere() -> None:
    for password in (SECRET, "p@ss/w rd", "çé€"):
        text = f'FATAL: bad thing near "{password}" and {quote(password, safe="")} again'
        redacted = redact_text(text, password)
        assert password not in redacted, password
        assert quote(password, safe="") not in redacted, password


def test_address_redact_uses_its_own_password() -> None:
    address = ServerAddress.parse(f"postgresql://alice:{SECRET}@h/app")
    assert SECRET not in address.redact(f"error: authentication failed with {SECRET}")
