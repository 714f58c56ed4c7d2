"""Differences in text that are no difference for the diff: the comparisons that need more
than ``==`` because two renderings, or two types, mean the same to code still running.
"""

from __future__ import annotations

import re
from collections.abc import Collection

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
    if was == now:
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
