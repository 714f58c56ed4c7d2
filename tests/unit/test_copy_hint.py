"""The run's summary says when branch copies were bound by the template's size, and how to
make them size-independent; it stays quiet when copies were fast or files were cloned."""

from __future__ import annotations

from pytest_dbbranch.branching.stats import Stats


def _stats(fork_ms: float, *, cloned: bool = False, postgres: bool = True) -> Stats:
    stats = Stats(branches_created=10, fork_seconds=10 * fork_ms / 1000)
    stats.postgres_templates = int(postgres)
    stats.cloned_templates = int(cloned)
    return stats


def test_slow_copies_point_at_reflink() -> None:
    lines = _stats(400).summary_lines()
    assert any("400 ms each to copy" in line and "reflink" in line for line in lines), lines
    assert any("dbbranch_embedded_dir" in line for line in lines)


def test_fast_copies_say_nothing() -> None:
    assert not any("reflink" in line for line in _stats(20).summary_lines())


def test_slow_clones_are_not_blamed_on_size() -> None:
    lines = _stats(400, cloned=True).summary_lines()
    assert any("although files were cloned" in line for line in lines), lines


def test_lakebase_branches_get_no_copy_hint() -> None:
    assert not any("copy" in line for line in _stats(2000, postgres=False).summary_lines()[3:])


def test_the_counters_add_up_across_xdist_workers() -> None:
    controller = _stats(400)
    controller.merge(_stats(400, cloned=True).to_dict())
    assert (controller.postgres_templates, controller.cloned_templates) == (2, 1)
