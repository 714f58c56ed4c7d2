"""A schema diff as a pull-request comment (Markdown) or for tools (JSON).

The Markdown is deterministic (re-running the job edits the comment without spurious
churn), grouped by table, and safe to paste into GitHub Markdown whatever the identifiers
and expressions contain.
"""

from __future__ import annotations

import json
import re

from .diff import Change, SchemaDiff

#: Longest text shown in a Markdown cell; JSON always carries the full text.
CELL_LIMIT = 160
_CONTEXT = 40
_WARNING = "⚠️"
#: Headings of the changes that belong to no table, in the order they are shown.
_SECTIONS = (
    ("schema", "Schemas"),
    ("extension", "Extensions"),
    ("view", "Views"),
    ("function", "Functions"),
    ("sequence", "Sequences"),
    ("enum", "Enums"),
    ("domain", "Domains"),
    ("composite type", "Composite types"),
    ("range type", "Range types"),
    ("comment", "Comments"),
    ("owner", "Owners"),
    ("grant", "Grants"),
)


def render_json(diff: SchemaDiff) -> str:
    return json.dumps(diff.to_dict(), indent=2, ensure_ascii=False) + "\n"


def render_markdown(
    diff: SchemaDiff,
    *,
    title: str = "Schema changes",
    old_label: str = "production",
    new_label: str = "migrated",
) -> str:
    """A GitHub comment: summary line, one section per table, then the other object kinds."""
    lines = [f"## {_text(title)}", ""]
    between = f"{_text(old_label)} → {_text(new_label)}"
    if diff.empty:
        lines.append(f"No schema changes ({between}).")
        return "\n".join(lines) + "\n"
    total, breaking = len(diff.changes), len(diff.breaking)
    summary = f"**{total} change{'s' if total != 1 else ''}, {breaking} breaking** ({between})"
    lines += [f"{_WARNING} {summary}" if breaking else summary, ""]
    tables: dict[str, list[Change]] = {}
    others: dict[str, list[Change]] = {}
    for change in diff.changes:
        if change.table is not None:
            tables.setdefault(change.table, []).append(change)
        else:
            others.setdefault(change.kind, []).append(change)
    for table, changes in tables.items():
        lines += _section(_code(table), changes, with_kind=True)
    for kind, heading in _SECTIONS:
        if kind in others:
            lines += _section(heading, others[kind], with_kind=False)
    return "\n".join(lines).rstrip("\n") + "\n"


def _section(heading: str, changes: list[Change], *, with_kind: bool) -> list[str]:
    lines = [f"### {heading}", "", "| change | object | before | after |", "| --- | --- | --- | --- |"]
    for change in changes:
        label = f"{change.kind} {change.action}" if with_kind else change.action
        if change.breaking:
            label = f"{_WARNING} **{label}**"
        before, after = _clip_pair(change.before, change.after)
        cells = (label, _code(change.name), _code(before), _code(after))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines.append("")
    reasons = [change for change in changes if change.breaking]
    if reasons:
        lines.append("Breaking for code still running against the old schema:")
        lines.append("")
        for change in reasons:
            lines.append(
                f"- {_WARNING} {change.kind} {_code(change.name)}: {_text(change.reason or 'breaking')}"
            )
        lines.append("")
    return lines


def _clip_pair(before: str | None, after: str | None) -> tuple[str | None, str | None]:
    """Long texts cut down to the part where they differ, so the cells show the change."""
    if before is None or after is None or max(len(before), len(after)) <= CELL_LIMIT:
        return _clip(before), _clip(after)
    shortest = min(len(before), len(after))
    prefix = 0
    while prefix < shortest and before[prefix] == after[prefix]:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and before[-1 - suffix] == after[-1 - suffix]:
        suffix += 1
    start, end = max(0, prefix - _CONTEXT), max(0, suffix - _CONTEXT)
    cut = []
    for text in (before, after):
        middle = text[start : len(text) - end]
        cut.append(("…" if start else "") + middle + ("…" if end else ""))
    return _clip(cut[0]), _clip(cut[1])


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= CELL_LIMIT:
        return text
    return text[: CELL_LIMIT - 1] + "…"


def _code(text: str | None) -> str:
    """An inline code span that survives backticks in the text; empty for no text."""
    if not text:
        return ""
    text = " ".join(text.split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~])")


def _text(text: str) -> str:
    """Plain text for Markdown: nothing in a label or reason can start formatting or a tag."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))
