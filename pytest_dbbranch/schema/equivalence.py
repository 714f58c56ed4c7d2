"""Differences in text that are no difference for the diff: the comparisons that need more
than ``==`` because two renderings, or two types, mean the same to code still running.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from .model import View

_INTEGERS = ("smallint", "integer", "bigint")
_VARCHAR = re.compile(r"character varying(?:\((\d+)\))?")
_NUMERIC = re.compile(r"numeric(?:\((\d+),(\d+)\))?")


def is_widening(old: str, new: str) -> bool:
    """True when every value of ``old`` fits ``new`` unchanged, so old code cannot notice.

    Only the conversions listed here count; anything else (including timestamp to
    timestamptz, which reinterprets stored values in the session time zone) is a change
    old code may trip over.
    """
    if old.endswith("[]") and new.endswith("[]"):
        return is_widening(old[:-2], new[:-2])
    if old in _INTEGERS and new in _INTEGERS:
        return _INTEGERS.index(new) > _INTEGERS.index(old)
    if (old, new) == ("real", "double precision"):
        return True
    varchar = _VARCHAR.fullmatch(old)
    if varchar:
        if new == "text":
            return True
        wider = _VARCHAR.fullmatch(new)
        if wider is None or varchar.group(1) is None:
            return False
        return wider.group(1) is None or int(wider.group(1)) > int(varchar.group(1))
    numeric, wider = _NUMERIC.fullmatch(old), _NUMERIC.fullmatch(new)
    if numeric and wider and numeric.group(1) is not None:
        if wider.group(1) is None:
            return True
        precision, scale = int(numeric.group(1)), int(numeric.group(2))
        new_precision, new_scale = int(wider.group(1)), int(wider.group(2))
        return (
            new_scale == scale
            and new_precision >= precision
            and new_precision - new_scale >= precision - scale
        )
    return False


_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|[^\W\d][\w$]*|.", re.DOTALL)


def same_view(was: View, now: View, schemas: Collection[str]) -> bool:
    """Equal, or different only in how column references are qualified.

    PostgreSQL 16 stopped qualifying column names in single-table queries when it prints a
    view, so a production server on 15 and a template on 18 print the same view
    differently. Qualifiers that name a schema are kept, so a view that now reads a table
    from another schema still shows; a view that switched a column between two joined
    tables without any other change does not, which is the price of that tolerance.
    """
    if (was.definition, was.materialized) == (now.definition, now.materialized):
        return True
    if was.materialized != now.materialized:
        return False
    return _unqualified(was.definition, schemas) == _unqualified(now.definition, schemas)


def _unqualified(text: str, schemas: Collection[str]) -> str:
    tokens = _TOKEN.findall(text)
    out: list[str] = []
    position = 0
    while position < len(tokens):
        token = tokens[position]
        qualifies = (
            _is_identifier(token)
            and position + 2 < len(tokens)
            and tokens[position + 1] == "."
            and _is_identifier(tokens[position + 2])
            and (position == 0 or tokens[position - 1] != ".")
            and _unquote(token) not in schemas
        )
        if qualifies:
            position += 2
            continue
        out.append(token)
        position += 1
    return "".join(out)


def _is_identifier(token: str) -> bool:
    return token.startswith('"') or token[:1].isalpha() or token[:1] == "_"


def _unquote(token: str) -> str:
    return token[1:-1].replace('""', '"') if token.startswith('"') else token


# -- keys: what an index, a unique key or a foreign key enforces, whatever it is called -------

_IDENT_PART = r'"(?:[^"]|"")*"|[^\s".(),]+'
_INDEX = re.compile(
    rf"CREATE (?:UNIQUE )?INDEX (?:{_IDENT_PART}) ON (?:ONLY )?(?:{_IDENT_PART})(?:\.(?:{_IDENT_PART}))?"
    r" USING (?P<method>\w+) "
)


@dataclass(frozen=True)
class IndexKey:
    """What a unique index enforces: uniqueness of ``parts`` (column names, or expression
    texts) over the rows matching ``where``; names and storage options do not matter."""

    method: str
    parts: tuple[str, ...]
    where: str | None
    nulls_not_distinct: bool

    def implies(self, other: IndexKey) -> bool:
        """Every write this key accepts, ``other`` accepts too (``self`` is at least as strict):
        fewer or equal columns, over the same rows or more, with NULLs treated no more loosely."""
        return (
            set(self.parts) <= set(other.parts)
            and (self.where is None or self.where == other.where)
            and (self.nulls_not_distinct or not other.nulls_not_distinct)
        )


def index_key(definition: str) -> IndexKey | None:
    """The key of a ``pg_get_indexdef`` text; ``None`` if it does not read as one."""
    head = _INDEX.match(definition)
    if head is None:
        return None
    keys, rest = _parenthesised(definition, head.end())
    if keys is None:
        return None
    where = None
    if " WHERE " in rest:
        rest, where = rest.split(" WHERE ", 1)
    parts = tuple(_key_part(part) for part in split_top_level(keys))
    return IndexKey(head.group("method"), parts, where, "NULLS NOT DISTINCT" in rest)


def _parenthesised(text: str, start: int) -> tuple[str | None, str]:
    """The text inside the parentheses that open at ``start``, and what follows them."""
    if text[start : start + 1] != "(":
        return None, text[start:]
    depth = 0
    for position, token in _tokens_from(text, start):
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
            if depth == 0:
                return text[start + 1 : position], text[position + 1 :]
    return None, ""


def _tokens_from(text: str, start: int) -> list[tuple[int, str]]:
    return [(match.start(), match.group()) for match in _TOKEN.finditer(text, start)]


def split_top_level(text: str) -> list[str]:
    """``a, lower(b), "c,d"`` into its three items: commas inside parentheses or quotes stay."""
    items: list[str] = []
    depth, begin = 0, 0
    for position, token in _tokens_from(text, 0):
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        elif token == "," and depth == 0:
            items.append(text[begin:position].strip())
            begin = position + 1
    items.append(text[begin:].strip())
    return [item for item in items if item]


_PLAIN_PART = re.compile(rf"(?P<name>{_IDENT_PART})(?: .*)?")


def _key_part(part: str) -> str:
    """A column reference as the column's name (whatever operator class or ordering follows);
    an expression as its text."""
    match = _PLAIN_PART.fullmatch(part)
    if match is None or part.startswith("("):
        return part
    return _unquote(match.group("name"))


def column_names(text: str) -> list[str]:
    """Names in a column list such as ``(a, "B c")``'s inside."""
    return [_unquote(item) for item in split_top_level(text)]


_FOREIGN_KEY = re.compile(
    r"FOREIGN KEY \((?P<columns>[^)]*)\) REFERENCES (?P<table>.+?)\((?P<references>[^)]*)\)(?P<rest>.*)",
    re.DOTALL,
)
_ACTION = r"(CASCADE|SET NULL(?: \([^)]*\))?|SET DEFAULT(?: \([^)]*\))?|RESTRICT|NO ACTION)"


@dataclass(frozen=True)
class ForeignKey:
    """What a foreign key enforces; two with equal ``target`` check the same references."""

    columns: tuple[str, ...]
    table: str
    references: tuple[str, ...]
    match_full: bool
    on_delete: str
    on_update: str
    deferral: int
    enforced: bool

    @property
    def target(self) -> tuple[tuple[str, ...], str, tuple[str, ...]]:
        return self.columns, self.table, self.references

    def at_most_as_strict_as(self, other: ForeignKey) -> bool:
        """Same references, and nothing ``other`` lets through is rejected by this one."""
        return (
            self.target == other.target
            and (other.match_full or not self.match_full)
            and _rejects(self.on_delete) <= _rejects(other.on_delete)
            and _rejects(self.on_update) <= _rejects(other.on_update)
            and self.deferral >= other.deferral
        )


def foreign_key(definition: str) -> ForeignKey | None:
    match = _FOREIGN_KEY.match(definition)
    if match is None:
        return None
    rest = match.group("rest")
    on_delete = re.search(rf"ON DELETE {_ACTION}", rest)
    on_update = re.search(rf"ON UPDATE {_ACTION}", rest)
    return ForeignKey(
        tuple(column_names(match.group("columns"))),
        match.group("table").strip(),
        tuple(column_names(match.group("references"))),
        "MATCH FULL" in rest,
        on_delete.group(1) if on_delete else "NO ACTION",
        on_update.group(1) if on_update else "NO ACTION",
        deferral(definition),
        enforced(definition),
    )


def _rejects(action: str) -> bool:
    """True when the action refuses the delete or update of a referenced row."""
    return action in ("NO ACTION", "RESTRICT")


def deferral(definition: str) -> int:
    """How late a constraint is checked: 0 at once, 1 deferrable, 2 deferred by default. Old
    code may rely on as late as it was; a lower value checks some of its writes earlier."""
    if "INITIALLY DEFERRED" in definition:
        return 2
    return 1 if "DEFERRABLE" in definition and "NOT DEFERRABLE" not in definition else 0


def enforced(definition: str) -> bool:
    """PostgreSQL 18's ``NOT ENFORCED`` constraints check nothing."""
    return not definition.endswith("NOT ENFORCED")


def same_check(was: str, now: str) -> bool:
    """Equal checks, whether or not one of them is still ``NOT VALID`` (it checks new rows
    all the same)."""
    return _validated(was) == _validated(now)


def _validated(definition: str) -> str:
    return definition.removesuffix(" NOT VALID")


def identifiers(text: str) -> set[str]:
    """The bare and quoted names an expression mentions (columns among them)."""
    return {_unquote(token) for token in _TOKEN.findall(text) if _is_identifier(token) and token[:1] != "'"}
