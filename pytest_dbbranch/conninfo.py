"""Connection parameters of a server, and the URLs we hand out for a branch.

Passwords live only inside ``ServerAddress``; everything printed goes through
``display_url`` so a secret never reaches a terminal, a report or an exception message.
psycopg is imported where it is used: the settings module (which pytest loads for every
run) imports this one, and psycopg needs libpq.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

from .errors import ConfigError

_URL_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://", "postgresql+psycopg2://")


@dataclass(frozen=True)
class ServerAddress:
    """Where the server is and who we are on it; ``dbname`` is the maintenance database."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    dbname: str = "postgres"
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str, where: str = "--dbbranch-url") -> ServerAddress:
        """Accept a URL or a libpq keyword string; reject anything else up front."""
        raw = text.strip()
        shown = redact_text(_mask_userinfo(raw), None)
        looks_like_url = raw.startswith(_URL_SCHEMES)
        looks_like_keywords = "=" in raw and "://" not in raw
        if not (looks_like_url or looks_like_keywords):
            raise ConfigError(
                f"{where}: {shown!r} is not a PostgreSQL URL; expected "
                "postgresql://user:password@host:port/dbname or 'host=... dbname=...'"
            )
        if raw.startswith("postgresql+"):
            raw = "postgresql://" + raw.split("://", 1)[1]
        import psycopg.conninfo

        try:
            params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(raw)
        except psycopg.ProgrammingError as exc:
            message = redact_text(str(exc), _userinfo_password(raw))
            raise ConfigError(f"{where}: cannot parse {shown!r} ({message})") from None
        port_text = params.pop("port", None)
        port: int | None = None
        if port_text not in (None, ""):
            try:
                port = int(port_text)
            except ValueError:
                port = -1
            if not 0 < port < 65536:
                raise ConfigError(f"{where}: port {port_text!r} is not a port number (1-65535)")
        return cls(
            host=params.pop("host", None) or None,
            port=port,
            user=params.pop("user", None) or None,
            password=params.pop("password", None),
            dbname=params.pop("dbname", None) or "postgres",
            options=tuple(sorted((str(k), str(v)) for k, v in params.items())),
        )

    def kwargs(self, dbname: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.options)
        out["dbname"] = dbname or self.dbname
        for key in ("host", "port", "user", "password"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def conninfo(self, dbname: str | None = None) -> str:
        """libpq keyword string with the password: for psycopg.connect, never for printing."""
        import psycopg.conninfo

        return psycopg.conninfo.make_conninfo(**self.kwargs(dbname))

    def url(self, dbname: str | None = None, *, scheme: str = "postgresql", hide: bool = False) -> str:
        auth = quote(self.user, safe="") if self.user else ""
        if self.password:
            auth += ":" + ("***" if hide else quote(self.password, safe=""))
        if auth:
            auth += "@"
        host = self.host or ""
        query_items = list(self.options)
        if host.startswith("/"):
            query_items.append(("host", host))
            host = ""
        elif ":" in host:
            host = f"[{host}]"
        netloc = auth + host + (f":{self.port}" if self.port else "")
        query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query_items)
        path = quote(dbname or self.dbname, safe="")
        return f"{scheme}://{netloc}/{path}" + (f"?{query}" if query else "")

    def sqlalchemy_url(self, dbname: str | None = None) -> str:
        return self.url(dbname, scheme="postgresql+psycopg")

    def display_url(self, dbname: str | None = None) -> str:
        return self.url(dbname, hide=True)

    def redact(self, text: str) -> str:
        return redact_text(text, self.password)


def redact_text(text: str, password: str | None) -> str:
    """Hide a password in free text (error messages from libpq may echo a conninfo)."""
    if password:
        text = text.replace(password, "***")
        text = text.replace(quote(password, safe=""), "***")
    text = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text, flags=re.IGNORECASE)
    return re.sub(r"(://[^:/@\s]*:)[^@\s]+@", r"\1***@", text)


def _userinfo_password(raw: str) -> str | None:
    """The password part of ``[scheme://]user:password@host...``, if there is one."""
    rest = raw.split("://", 1)[1] if "://" in raw else raw
    if "@" not in rest:
        return None
    userinfo = rest.rsplit("@", 1)[0]
    return userinfo.split(":", 1)[1] if ":" in userinfo else None


def _mask_userinfo(raw: str) -> str:
    password = _userinfo_password(raw)
    return raw.replace(":" + password + "@", ":***@") if password else raw


def describe_connect_error(address: ServerAddress, dbname: str | None, exc: Exception) -> str:
    """A refused connection in words that say what to fix (the most common causes first)."""
    text = address.redact(str(exc)).strip()
    target = address.display_url(dbname)
    lower = text.lower()
    if "too many clients" in lower or "connection slots are reserved" in lower:
        hint = (
            "the server has no free connection slot (max_connections): run fewer xdist workers "
            "or concurrent runs, or raise max_connections"
        )
    elif "password authentication failed" in lower or "no password supplied" in lower:
        hint = "check the user and password in the server URL (--dbbranch-url / DBBRANCH_URL)"
    elif "does not exist" in lower and "database" in lower:
        hint = "the maintenance database in the server URL does not exist; name one that does"
    elif "role" in lower and "does not exist" in lower:
        hint = "the user in the server URL does not exist on the server"
    else:
        hint = (
            "is the server running and reachable? Set --dbbranch-url / DBBRANCH_URL to a "
            "running server, or unset it to let the plugin start its own"
        )
    return f"cannot connect to PostgreSQL at {target}: {text}\n  -> {hint}"


@runtime_checkable
class AddressSource(Protocol):
    """Where a server is *now*: for services whose passwords are short-lived tokens (Lakebase
    OAuth credentials), every new connection asks again instead of reusing a frozen copy."""

    def current(self) -> ServerAddress:
        """The address with a password valid for a login starting now."""

    def refresh(self) -> bool:
        """Forget the cached credential after a refused login; False when there is nothing
        to refresh (a static password), so the refusal is final."""


class StaticAddress:
    """An ``AddressSource`` whose password never changes (a URL, the embedded server)."""

    def __init__(self, address: ServerAddress) -> None:
        self.address = address

    def current(self) -> ServerAddress:
        return self.address

    def refresh(self) -> bool:
        return False


def as_source(address: ServerAddress | AddressSource) -> AddressSource:
    return StaticAddress(address) if isinstance(address, ServerAddress) else address


def connect_fresh(source: AddressSource, dbname: str | None = None, **kwargs: Any) -> Any:
    """The one place that retries a refused login, once, with a fresh credential (a rotated
    or expired token shows up only at login); psycopg's own error otherwise."""
    import psycopg

    try:
        return psycopg.connect(source.current().conninfo(dbname), **kwargs)
    except psycopg.OperationalError as exc:
        if not (login_refused(exc) and source.refresh()):
            raise
    return psycopg.connect(source.current().conninfo(dbname), **kwargs)


#: SQLSTATEs of a refused login: invalid_password, invalid_authorization_specification.
LOGIN_REFUSED = frozenset({"28P01", "28000"})


def login_refused(exc: BaseException) -> bool:
    """Whether a failed connect was the server refusing the credential (an expired or rotated
    token), decided by SQLSTATE: the wording differs between servers and languages."""
    state = getattr(exc, "sqlstate", None)
    if state is not None:
        return state in LOGIN_REFUSED
    # libpq keeps no SQLSTATE for a failed connection attempt. A connection that failed
    # after the server asked for the password and got one is most often a refused
    # credential; when it was something else (a missing database), the one retry with a
    # fresh credential fails again and reports that.
    pgconn = getattr(exc, "pgconn", None)
    return bool(pgconn is not None and getattr(pgconn, "used_password", False))
