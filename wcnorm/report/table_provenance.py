"""What a table rests on, written beside it: each cell's name, and the provenance record
(provenance.json) of the runs, cells, settings and machines behind the numbers."""

from __future__ import annotations

import pandas as pd

from .labels import equal_to
from .runs import FIELD_TASKS
from .task_tables import TASK_TABLES


def cell_id(keys: list[str], row: tuple, norm) -> str:
    named = ("model", "dataset", "experiment", *FIELD_TASKS.values())
    parts = [f"{k}={v}" if k not in named else str(v) for k, v in zip(keys, row)]
    return "/".join(parts + [str(norm)])


def distinct(s: pd.Series) -> list:
    return sorted({v.item() if hasattr(v, "item") else v for v in s.dropna()}, key=str)


# Config keys that legitimately differ between the seeds of one cell.
_BOOKKEEPING = ("seed", "out_dir", "run_dir", "diagnostics.", "trainer.progress",
                "trainer.num_workers", "hydra.")


def _pooled_differences(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """Cells whose runs differ in some config value (e.g. epochs, norm.wc.p): said, not hidden."""
    cfg_cols = [c for c in df.columns if c.startswith("cfg.")
                and not c[4:].startswith(_BOOKKEEPING)
                and not c.endswith(("root", "dir", "path"))]
    notes = []
    for cell, g in df.groupby(keys + ["norm"], dropna=False, sort=True):
        if len(g) < 2:
            continue
        diff = [f"{c[4:]} ({', '.join(sorted(g[c].astype(str).unique()))})" for c in cfg_cols
                if g[c].astype(str).nunique() > 1]
        if diff:
            notes.append(f"{cell_id(keys, cell[:-1], cell[-1])} pools runs that differ in "
                         + "; ".join(diff))
    return notes


def provenance(df, long, layout, keys, expected_seeds, missing, unfinished, command,
                task, not_run: list[str]) -> dict:
    """The provenance.json record of a table: what its numbers rest on, and what they lack."""
    mixed = _pooled_differences(df, keys)
    dates = pd.to_datetime(df["date"], errors="coerce", utc=True, format="ISO8601").dropna()
    counts = long["status"].value_counts()
    tables = TASK_TABLES[task]
    return {
        "command": command,
        "metric": "; ".join(b.title for b in tables.blocks)
                  + ": mean ± sample std over seeds of finished runs; best-epoch "
                  f"{tables.best_name} is reported for information only (not used for selection)",
        "task": task,
        "metrics": [{"column": b.column, "title": b.title,
                     "better": "higher" if b.higher_is_better else "lower",
                     "table": "wide" if b in tables.blocks else "long"}
                    for b in (*tables.blocks, *tables.extra)],
        "layout": layout, "row_keys": keys, "column_key": "norm",
        "experiments": distinct(df["experiment"]),
        "budgets": distinct(df["budget"]), "epochs": distinct(df["epochs"]),
        "seeds_expected": expected_seeds if expected_seeds is not None
        else "union of seeds seen per preset",
        "seeds_found": distinct(df.loc[df["finished"], "seed"]),
        "enorm_variants": {norm: distinct(g["enorm_variant"])
                           for norm, g in df.groupby("norm", sort=True) if g["enorm_variant"].notna().any()},
        "weight_variants": {norm: distinct(g["weight_variant"])
                            for norm, g in df.groupby("norm", sort=True) if g["weight_variant"].notna().any()},
        "equal_by_construction": {norm: same for norm, g in df.groupby("norm", sort=True)
                                  if (same := equal_to(g))},
        "runs": {"dirs": len(df), "finished": int(df["finished"].sum()),
                 "unfinished": int((~df["finished"]).sum()),
                 "skipped_unreadable": len(df.attrs.get("skipped", []))},
        "cells": {"expected": len(long), **{k: int(counts.get(k, 0))
                                            for k in ("ok", "incomplete", "missing")},
                  **({"not run": int(counts["not run"])} if "not run" in counts else {})},
        "not_run": not_run, "missing": missing, "unfinished": unfinished, "mixed_settings": mixed,
        "device_names": distinct(df["device_name"]),
        "git_commits": distinct(df["git_commit"]),
        "torch_versions": distinct(df["torch_version"]),
        "date_range": [dates.min().isoformat(), dates.max().isoformat()] if len(dates) else None,
    }
