"""Ratios, the Markdown report and the PNG plot, all computed from the JSON result alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MATRIX_KEYS = (
    "raw_floor",
    "db_branch_pool0",
    "db_branch_pool2",
    "db_branch_module",
    "rollback",
    "truncate",
    "pytest_postgresql",
)
SHORT = {
    "pytest_empty": "pytest alone",
    "raw_floor": "raw",
    "db_branch_pool0": "pool 0",
    "db_branch_pool2": "pool 2",
    "db_branch_module": "module",
    "rollback": "rollback",
    "truncate": "TRUNCATE",
    "pytest_postgresql": "pytest-postgresql",
    "lakebase": "Lakebase emu",
    "db_branch_cold": "pool 0, cold",
}


def measured(entry: Any) -> bool:
    return isinstance(entry, dict) and "median_ms" in entry


def compute_ratios(per_test: dict[str, Any]) -> dict[str, Any]:
    """Each scenario's median against the raw floor, and every pair of alternatives."""
    raw = per_test.get("raw_floor", {})
    vs_raw: dict[str, float] = {}
    if measured(raw):
        for key, entry in per_test.items():
            if measured(entry):
                vs_raw[key] = round(entry["median_ms"] / raw["median_ms"], 3)
                entry["ratio_to_raw"] = vs_raw[key]
    keys = [k for k in MATRIX_KEYS if measured(per_test.get(k))]
    matrix = {
        row: {col: round(per_test[row]["median_ms"] / per_test[col]["median_ms"], 3) for col in keys}
        for row in keys
    }
    return {"vs_raw_floor": vs_raw, "matrix": matrix, "matrix_note": "row median ÷ column median"}


def add_lakebase_ratio(result: dict[str, Any]) -> None:
    """The emulator's branch against the raw floor and against db_branch on PostgreSQL."""
    lakebase = result.get("lakebase", {})
    per_test = result.get("per_test", {})
    if "per_branch" not in lakebase:
        return
    for key, name in (("raw_floor", "ratio_to_raw"), ("db_branch_pool0", "ratio_to_db_branch_pool0")):
        if measured(per_test.get(key)):
            lakebase["per_branch"][name] = round(
                lakebase["per_branch"]["median_ms"] / per_test[key]["median_ms"], 3
            )


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ms(entry: dict[str, Any]) -> str:
    return f"{_num(entry['median_ms'])} ({_num(entry['min_ms'])}–{_num(entry['max_ms'])})"


def _s(entry: dict[str, Any]) -> str:
    return f"{entry['median_s']:.2f} ({entry['min_s']:.2f}–{entry['max_s']:.2f})"


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The speed targets this project set itself (issue 15), each with this run's figure;
    a target whose scenario did not run is left out."""
    found: list[dict[str, Any]] = []

    def add(name: str, measured: float, limit: float, unit: str, *, at_least: bool = False) -> None:
        met = measured >= limit if at_least else measured <= limit
        found.append(
            {"target": name, "measured": round(measured, 3), "limit": limit, "unit": unit, "met": met}
        )

    per_test = result.get("per_test", {})
    pool0, floor = per_test.get("db_branch_pool0", {}), per_test.get("raw_floor", {})
    if measured(pool0) and measured(floor):
        add(
            "plugin cost without the warm pool ÷ raw SQL floor",
            pool0["median_ms"] / floor["median_ms"],
            1.05,
            "×",
        )
    runs = result.get("suite", {}).get("runs", {})
    default, other = runs.get("db_branch_pool2", {}), runs.get("pytest_postgresql", {})
    if "n2" in default and "n2" in other:
        add(
            "test-visible cost at -n 2 (default settings), median",
            default["n2"]["per_test"]["median_ms"],
            10,
            "ms",
        )
        add(
            "300-test suite at -n 2: pytest-postgresql ÷ pytest-dbbranch (default settings)",
            other["n2"]["median_s"] / default["n2"]["median_s"],
            3,
            "×",
            at_least=True,
        )
    rerun = result.get("rerun", {})
    if "overhead_idle_s" in rerun:
        add("one-test rerun, kept server: wall time over pytest alone", rerun["overhead_idle_s"], 0.15, "s")
    return found


def targets_markdown(found: list[dict[str, Any]]) -> list[str]:
    if not found:
        return []
    lines = ["### Targets", "", "| target | this run | limit | met |", "|---|---|---|---|"]
    for entry in found:
        sign = "≥" if "÷ pytest-dbbranch" in entry["target"] else "≤"
        lines.append(
            f"| {entry['target']} | {entry['measured']:g} {entry['unit']} | {sign} {entry['limit']:g} "
            f"{entry['unit']} | {'yes' if entry['met'] else 'no'} |"
        )
    return [*lines, ""]


def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    machine = result["machine"]
    lines.append(
        f"Machine: {machine.get('cores')} cores ({machine.get('cpu', '?')}), Python {machine.get('python')}, "
        f"PostgreSQL {machine.get('postgres_version')}, data dir on {machine.get('data_dir_storage')}, "
        f"load average {machine.get('load_average_at_start', ['?'])[0]} at the start. "
        "Times are median (min–max)."
    )
    lines.append("")
    lines += targets_markdown(result.get("targets", []))
    per_test = result["per_test"]
    if per_test.get("skipped"):
        lines += ["### Per-test cost", "", str(per_test["skipped"]), ""]
    else:
        lines += [
            "### Per-test cost: fixture setup + teardown around an empty test (ms)",
            "",
            "| scenario | median (min–max) ms | n | × raw floor |",
            "|---|---|---|---|",
        ]
        for key, entry in per_test.items():
            if measured(entry):
                ratio = entry.get("ratio_to_raw")
                shown = "" if ratio is None else f"{ratio:.2f}"
                label = entry["label"]
                if "tests_per_module" in entry:
                    label += f", {entry['tests_per_module']} tests per module"
                lines.append(f"| {label} | {_ms(entry)} | {entry['n']} | {shown} |")
            else:
                lines.append(f"| {entry.get('label', key)} | {entry.get('skipped', 'skipped')} | | |")
        matrix = result.get("ratios", {}).get("matrix", {})
        if matrix:
            keys = list(matrix)
            lines += [
                "",
                "Ratios between alternatives (row median ÷ column median; > 1: the row is slower):",
                "",
                "| | " + " | ".join(SHORT[k] for k in keys) + " |",
                "|---|" + "---|" * len(keys),
            ]
            for row in keys:
                lines.append(f"| {SHORT[row]} | " + " | ".join(f"{matrix[row][c]:.2f}" for c in keys) + " |")
        lines.append("")
    suite = result["suite"]
    if "skipped" in suite:
        lines += ["### Suite wall time", "", str(suite["skipped"]), ""]
    else:
        lines += [
            f"### Suite of {suite['tests']} function-scope tests: wall time of the pytest process (s)",
            "",
            "| alternative | -n 0 | -n 2 | × pytest-postgresql (-n 0) | × pytest-postgresql (-n 2) "
            "| per test at -n 2 (setup + teardown, ms) |",
            "|---|---|---|---|---|---|",
        ]
        for key, entry in suite["runs"].items():
            if "skipped" in entry:
                lines.append(f"| {entry['label']} | {entry['skipped']} | | | | |")
                continue
            ratio = suite["ratio_vs_pytest_postgresql"].get(key, {})
            n0 = _s(entry["n0"]) if "n0" in entry else "not run"
            lines.append(
                f"| {entry['label']} | {n0} | {_s(entry['n2'])} | "
                f"{ratio.get('n0', float('nan')):.2f} | {ratio.get('n2', float('nan')):.2f} | "
                f"{_ms(entry['n2']['per_test'])} |"
            )
        lines.append("")
    lines += rerun_markdown(result.get("rerun", {"skipped": "not run"}))
    sizes = result["size_growth"]
    if "skipped" in sizes:
        lines += ["### Branch cost vs source size", "", str(sizes["skipped"]), ""]
    else:
        lines += [
            "### One branch (create + connect + drop) vs the source's size (ms)",
            "",
            "| data | database size | raw SQL | BranchManager | of which CREATE (raw) "
            "| template build (once) |",
            "|---|---|---|---|---|---|",
        ]
        for label, entry in sizes["by_size"].items():
            lines.append(
                f"| {label.replace('mb', ' MB')} | {entry['source']['database_bytes'] / 2**20:.0f} MB | "
                f"{_ms(entry['raw'])} | {_ms(entry['manager'])} | {_ms(entry['raw_create'])} | "
                f"{_num(entry['manager_template_build_ms'])} |"
            )
        lines.append("")
    migrations = result["migration_growth"]
    if "skipped" in migrations:
        lines += ["### Migrations", "", str(migrations["skipped"]), ""]
    else:
        lines += [
            "### Number of migrations: build a template once vs migrate per test (ms)",
            "",
            "| revisions | template build (once) | branch per test | migrate a fresh DB per test | "
            "per-test ratio | break-even (tests) |",
            "|---|---|---|---|---|---|",
        ]
        for count, entry in migrations["by_count"].items():
            even = entry["break_even_tests"]
            lines.append(
                f"| {count} | {_num(entry['template_build_ms'])} | {_ms(entry['branch_per_test'])} | "
                f"{_ms(entry['migrate_per_test'])} | {entry['per_test_ratio_migrate_vs_branch']:.1f} | "
                f"{'—' if even is None else f'{even:.1f}'} |"
            )
        lines.append("")
    reflink = result["reflink"]
    lines += ["### Reflink: `file_copy_method = clone` vs `copy` on XFS (ms)", ""]
    if "skipped" in reflink or "skipped" in reflink.get("by_size", {}):
        lines += [str(reflink.get("skipped") or reflink["by_size"]["skipped"]), ""]
    else:
        lines += [
            "| data | CREATE, copy | CREATE, clone | copy ÷ clone | DROP, copy | DROP, clone "
            "| CREATE on the main server (tmpfs) |",
            "|---|---|---|---|---|---|---|",
        ]
        tmpfs = result["size_growth"].get("by_size", {})
        for label, entry in reflink["by_size"].items():
            main = _ms(tmpfs[label]["raw_create"]) if label in tmpfs else "—"
            lines.append(
                f"| {label.replace('mb', ' MB')} | {_ms(entry['copy']['create'])} | "
                f"{_ms(entry['clone']['create'])} | "
                f"{entry['create_ratio_copy_vs_clone']:.1f} | {_ms(entry['copy']['drop'])} | "
                f"{_ms(entry['clone']['drop'])} | {main} |"
            )
        lines.append("")
    lakebase = result["lakebase"]
    lines += ["### Lakebase emulator (operation delay 0)", ""]
    if "skipped" in lakebase:
        lines += [str(lakebase["skipped"]), ""]
    else:
        kinds = ", ".join(
            f"{name} {count:g}" for name, count in lakebase["api_calls_per_branch_by_kind"].items()
        )
        ratio = lakebase["per_branch"].get("ratio_to_raw")
        lines += [
            "| per branch (setup + teardown) | × raw floor | API calls per branch life | of which |",
            "|---|---|---|---|",
            f"| {_ms(lakebase['per_branch'])} | {'' if ratio is None else f'{ratio:.1f}'} | "
            f"{lakebase['api_calls_per_branch']:.1f} | {kinds} |",
            "",
        ]
    return "\n".join(lines)


def rerun_markdown(rerun: dict[str, Any]) -> list[str]:
    """Scenario 11: one test rerun with a warm template, against pytest without the plugin."""
    title = "### Rerunning one test (warm template, embedded server): wall time of pytest (s)"
    if "skipped" in rerun:
        return [title, "", str(rerun["skipped"]), ""]
    return [
        title,
        "",
        "| variant | median (min–max) s | n | over pytest alone |",
        "|---|---|---|---|",
        f"| pytest alone (-p no:dbbranch, no database) | {_s(rerun['bare'])} | {rerun['bare']['n']} | |",
        f"| db_branch, server kept between runs (embedded_idle, the local default) | {_s(rerun['idle'])} "
        f"| {rerun['idle']['n']} | +{rerun['overhead_idle_s']:.2f} s |",
        (
            f"| db_branch, server started and stopped by the run (embedded_idle = 0, CI) | "
            f"{_s(rerun['stop'])} | {rerun['stop']['n']} | +{rerun['overhead_stop_s']:.2f} s |"
            if "skipped" not in rerun["stop"]
            else f"| db_branch, server started and stopped by the run | {rerun['stop']['skipped']} | | |"
        ),
        "",
        f"{rerun['idle_runs_attached']} of {rerun['idle']['n']} kept-server runs attached to the "
        f"running server (same postmaster); target: at most +{rerun['target_overhead_s']:.2f} s.",
        "",
    ]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    _plot_per_test(axes[0][0], result["per_test"])
    _plot_suite(axes[0][1], result["suite"])
    _plot_sizes(axes[0][2], result["size_growth"])
    _plot_migrations(axes[1][0], result["migration_growth"])
    _plot_reflink(axes[1][1], result["reflink"])
    _plot_lakebase(axes[1][2], result["lakebase"], result["per_test"])
    fig.suptitle("pytest-dbbranch benchmark (medians; bars: min–max)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _skipped(ax: Any, title: str, reason: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, reason, ha="center", va="center", wrap=True, fontsize=9)
    ax.set_axis_off()


def _plot_per_test(ax: Any, per_test: dict[str, Any]) -> None:
    title = "Per-test cost (setup + teardown)"
    entries = [(k, e) for k, e in per_test.items() if measured(e)]
    if not entries:
        _skipped(ax, title, str(per_test.get("skipped", "no data")))
        return
    names = [SHORT.get(k, k) for k, _ in entries]
    medians = [e["median_ms"] for _, e in entries]
    low = [e["median_ms"] - e["min_ms"] for _, e in entries]
    high = [e["max_ms"] - e["median_ms"] for _, e in entries]
    ax.barh(names, medians, xerr=[low, high], color="tab:blue", ecolor="grey", capsize=3)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("ms per test (log)")
    ax.set_title(title)


def _plot_suite(ax: Any, suite: dict[str, Any]) -> None:
    title = "Suite wall time"
    if "skipped" in suite:
        _skipped(ax, title, str(suite["skipped"]))
        return
    entries = [(k, e) for k, e in suite["runs"].items() if "skipped" not in e]
    positions = range(len(entries))
    for offset, mode, color in ((-0.2, "n0", "tab:orange"), (0.2, "n2", "tab:green")):
        none = {"median_s": 0.0, "min_s": 0.0, "max_s": 0.0}  # a mode --smoke did not run
        runs = [e.get(mode, none) for _, e in entries]
        values = [run["median_s"] for run in runs]
        errors = [
            [run["median_s"] - run["min_s"] for run in runs],
            [run["max_s"] - run["median_s"] for run in runs],
        ]
        ax.bar(
            [p + offset for p in positions],
            values,
            0.4,
            yerr=errors,
            label=f"-{mode[0]} {mode[1]}",
            color=color,
            capsize=3,
        )
    ax.set_xticks(list(positions), [SHORT.get(k, k) for k, _ in entries], rotation=20)
    ax.set_ylabel("s")
    ax.set_title(f"{title}, {suite['tests']} tests")
    ax.legend()


def _plot_sizes(ax: Any, sizes: dict[str, Any]) -> None:
    title = "One branch vs source data size"
    if "skipped" in sizes:
        _skipped(ax, title, str(sizes["skipped"]))
        return
    entries = list(sizes["by_size"].values())
    xs = [e["source"]["table_bytes"] / 2**20 for e in entries]
    for key, label in (("raw", "raw SQL"), ("manager", "BranchManager")):
        ax.plot(xs, [e[key]["median_ms"] for e in entries], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("data MB (log)")
    ax.set_ylabel("ms per branch (log)")
    ax.set_title(title)
    ax.legend()


def _plot_migrations(ax: Any, migrations: dict[str, Any]) -> None:
    title = "Template once vs migrating per test"
    if "skipped" in migrations:
        _skipped(ax, title, str(migrations["skipped"]))
        return
    counts = [int(c) for c in migrations["by_count"]]
    entries = list(migrations["by_count"].values())
    ax.plot(counts, [e["template_build_ms"] for e in entries], marker="o", label="template build (once)")
    ax.plot(counts, [e["branch_per_test"]["median_ms"] for e in entries], marker="o", label="branch per test")
    ax.plot(
        counts, [e["migrate_per_test"]["median_ms"] for e in entries], marker="o", label="migrate per test"
    )
    ax.set_yscale("log")
    ax.set_xlabel("revisions")
    ax.set_ylabel("ms (log)")
    ax.set_title(title)
    ax.legend()


def _plot_reflink(ax: Any, reflink: dict[str, Any]) -> None:
    title = "CREATE DATABASE on XFS: copy vs clone"
    by_size = reflink.get("by_size", {})
    if "skipped" in reflink or "skipped" in by_size:
        _skipped(ax, title, str(reflink.get("skipped") or by_size.get("skipped")))
        return
    labels = list(by_size)
    positions = range(len(labels))
    for offset, method in ((-0.2, "copy"), (0.2, "clone")):
        ax.bar(
            [p + offset for p in positions],
            [by_size[x][method]["create"]["median_ms"] for x in labels],
            0.4,
            label=method,
        )
    ax.set_xticks(list(positions), [x.replace("mb", " MB") for x in labels])
    ax.set_ylabel("ms")
    ax.set_title(title)
    ax.legend()


def _plot_lakebase(ax: Any, lakebase: dict[str, Any], per_test: dict[str, Any]) -> None:
    title = "Lakebase emulator: per branch"
    if "skipped" in lakebase:
        _skipped(ax, title, str(lakebase["skipped"]))
        return
    bars = [("Lakebase emu", lakebase["per_branch"]["median_ms"])]
    if measured(per_test.get("db_branch_pool0")):
        bars.append(("db_branch, PostgreSQL", per_test["db_branch_pool0"]["median_ms"]))
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=["tab:purple", "tab:blue"][: len(bars)])
    ax.set_ylabel("ms per test")
    ax.set_title(f"{title} ({lakebase['api_calls_per_branch']:.1f} API calls per branch)")
