"""The claims check as files: claims.md (a report to read), claims.csv (one row per
claim) and claims_comparisons.csv (one row per comparison)."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd

from ..outputs import atomic_write_text
from .claims import LEVEL, SEEDS_RULE, VERDICT_RULES, ComparisonRow, _level_label


def _fmt(x: float, spec: str) -> str:
    return "" if math.isnan(x) else format(x, spec)


def to_markdown(claims: pd.DataFrame) -> str:
    """claims.md: a summary of the claims these runs bear on, one section per such
    claim with its comparisons as a table, and the claims without runs here listed."""
    ran = claims["finished_runs"] > 0
    lines = ["# The papers' claims tested on these runs", ""]
    if ran.any():
        lines += ["| claim | verdict | cells |", "|---|---|---|",
                  *[f"| {r.claim_id} | {r.verdict} | {r.numbers} |"
                    for r in claims[ran].itertuples(index=False)], ""]
    lines += ["Each comparison: the difference of the final-epoch means (first method "
              f"minus second), its {LEVEL:.0%} Welch confidence interval, Welch's two-sided "
              "p, Holm's adjusted p over the claim's family, and the finished runs (n) of "
              "each cell.", "", f"Verdicts: {VERDICT_RULES}", "", f"Rule for the {SEEDS_RULE}",
              ""]
    for row in claims[ran].itertuples(index=False):
        lines += [f"## {row.claim_id} ({row.paper}): {row.verdict}", "", f"> {row.claim}", "",
                  f"- metric: {row.metric}; finished runs: {row.finished_runs}; budgets: "
                  f"{row.budgets or '-'}; epochs: {row.epochs or '-'}",
                  f"- cells: {row.numbers}"]
        if row.seeds_needed:
            lines.append(f"- seeds needed: {row.seeds_needed}")
        if row.note:
            lines.append(f"- how it was read: {row.note}")
        if row.tests:
            lines += ["", "| level | claimed | diff | 95 % CI | p | p_holm | n | verdict at this level |",
                      "|---|---|---|---|---|---|---|---|"]
        for r in row.tests:
            ci = "" if math.isnan(r.ci_low) else f"[{r.ci_low:+.3g}, {r.ci_high:+.3g}]"
            lines.append(
                f"| {_level_label(r.level_key, r.level)} | {r.better} "
                f"{'>' if r.claimed == 'higher' else '<'} {r.worse} | {_fmt(r.diff, '+.3g')} "
                f"| {ci} | {'equal by construction' if r.equivalent else _fmt(r.p, '.3g')} "
                f"| {_fmt(r.p_holm, '.3g')} "
                f"| {r.n_better}/{r.n_worse} | {r.level_verdict} |")
        lines.append("")
    if not ran.all():
        lines += ["## Claims without a finished run here (not enough runs)", "",
                  *[f"- {r.claim_id} ({r.paper}): {r.claim}"
                    for r in claims[~ran].itertuples(index=False)], ""]
    return "\n".join(lines)


def write_claims(claims: pd.DataFrame, path) -> Path:
    """Write ``path`` (claims.csv, one row per claim) and, beside it, claims.md and
    claims_comparisons.csv (one row per comparison); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, claims.drop(columns="tests").to_csv(index=False))
    rows = [asdict(r) for rs in claims["tests"] for r in rs]
    comparisons = pd.DataFrame(rows, columns=[f.name for f in fields(ComparisonRow)])
    atomic_write_text(path.with_name(f"{path.stem}_comparisons.csv"),
                      comparisons.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(path.with_suffix(".md"), to_markdown(claims))
    return path
