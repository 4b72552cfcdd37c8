"""table.md: a table result as Markdown, with its provenance in words."""

from __future__ import annotations

import pandas as pd

from .labels import norm_label
from .task_tables import TASK_TABLES, TableResult


def _md_table(df: pd.DataFrame) -> str:
    df = df.drop(columns=["metric"], errors="ignore").astype(object).where(df.notna(), "")
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def to_markdown(result: TableResult) -> str:
    p = result.provenance
    join = lambda xs: ", ".join(map(str, xs)) or "unknown"  # noqa: E731
    runs = p["runs"]
    tables = TASK_TABLES[result.task]
    lines = [
        f"## {tables.heading}, {result.layout} layout", "",
        f"- budget: {join(p['budgets'])}; epochs: {join(p['epochs'])}; "
        f"preset: {join(p['experiments'])}",
        f"- seeds expected: {p['seeds_expected']}; seeds found: {join(p['seeds_found'])}",
        f"- runs: {runs['dirs']} directories ({runs['finished']} finished, "
        f"{runs['unfinished']} unfinished, not in the means"
        + (f"; {runs['skipped_unreadable']} unreadable folders skipped)"
           if runs["skipped_unreadable"] else ")"),
        f"- cells: {p['cells']['ok']} complete, {p['cells']['incomplete']} incomplete, "
        f"{p['cells']['missing']} missing"
        + (f", {p['cells']['not run']} not run at this budget" if "not run" in p["cells"] else ""),
        f"- devices: {join(p['device_names'])}; commits: {join(p['git_commits'])}; "
        f"dates: {' to '.join(p['date_range'] or ['unknown'])}",
    ]
    for norm, variants in p["enorm_variants"].items():
        lines.append(f"- ENorm in {norm_label(norm)}: {'; '.join(variants)}")
    for norm, variants in p.get("weight_variants", {}).items():
        lines.append(f"- weight method in {norm_label(norm)}: {'; '.join(variants)}")
    for norm, same in p.get("equal_by_construction", {}).items():
        lines.append(f"- {norm_label(norm)} is {same} by construction: a per-channel normalization "
                     "cancels its weight method on every layer it touches (the runs' record)")
    if p["command"]:
        lines.append(f"- command: `{p['command']}`")
    lines += ["", "Cells: mean ± sample std over seeds (n = finished runs, "
              "n=found/expected where seeds are missing).", ""]
    if "metric" in result.wide and len(tables.blocks) > 1:
        for b in tables.blocks:  # one table per metric block
            lines += [f"### {_capital(b.title)}", "",
                      _md_table(result.wide[result.wide["metric"] == b.title]), ""]
    else:
        lines += [_md_table(result.wide), ""]
    lines += [f"### {_capital(tables.best.title)}", "", _md_table(result.best), ""]
    for title, items in (("Not run at this budget", p["not_run"]), ("Incomplete grid", p["missing"]), ("Unfinished runs", p["unfinished"]),
                         ("Cells pooling different settings", p["mixed_settings"])):
        if items:
            lines += [f"### {title}", "", *[f"- {m}" for m in items], ""]
    return "\n".join(lines)
