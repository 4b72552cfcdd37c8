"""runs.csv: one row per run directory a results folder's numbers come from, at full
precision, with every input of its tables and claims, so that the whole folder can be
rebuilt from it alone (`read_runs_csv`). The claims are judged from these rows, by every
door of the report alike (`verdicts`)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd

from ..outputs import atomic_write_text
from .relabel import judge
from .runs import CLASSIFICATION, read_runs_csv

RUN_COLUMNS = ["run_dir", "experiment", "budget", "task", "model", "dataset", "dataset_file", "scene",
               "shape", "depth", "norm", "seed", "epochs", "batch_size", "lr", "status", "metric",
               "final_test_acc", "best_test_acc", "final_test_psnr", "final_test_ssim",
               "final_val_psnr", "final_val_ssim", "best_val_psnr", "final_test_iou", "best_test_iou",
               "final_test_chamfer", "best_epoch", "final_train_loss", "mean_train_loss",
               "wm_layers", "wm_cancelled", "method_class",  # the weight method's scope (equivalence)
               "wall_time_s", "device_name", "torch_version", "git_commit", "date"]
# Columns only the neural-field presets fill: written where some run of the preset does.
FIELD_COLUMNS = ("task", "scene", "shape", "metric", "final_test_psnr", "final_test_ssim",
                 "final_val_psnr", "final_val_ssim", "best_val_psnr", "final_test_iou",
                 "best_test_iou", "final_test_chamfer")
# Config columns after the columns above: the normalization's settings (every
# `cfg.norm.*` key: the ENorm cycle a table names), and every other key whose value
# differs between the preset's runs (what the grid varies, and any setting a cell pools,
# which the table's provenance reports) but the seed and file or folder locations.
NORM_SETTINGS = "cfg.norm."
NOT_SETTINGS = ("cfg.seed", "cfg.hydra.")
# What names a run's cell and seed, for carrying earlier rows over.
CELL_KEYS = ("experiment", "model", "dataset", "dataset_file", "scene", "shape", "depth",
             "batch_size", "norm", "seed")


def rel(path, base: Path) -> str:
    """A run directory relative to the runs folder: no machine paths in results/."""
    try:
        return os.path.relpath(path, base.resolve())
    except ValueError:
        return Path(path).name


def runs_table(df: pd.DataFrame, runs_root: Path) -> pd.DataFrame:
    """The rows of runs.csv: one per run directory (``with_dataset_file`` frame), its
    directory relative to ``runs_root``."""
    fields = "task" in df and (df["task"] != CLASSIFICATION).any()
    settings = sorted(c for c in df if c.startswith(NORM_SETTINGS) or (
        c.startswith("cfg.") and not c.startswith(NOT_SETTINGS)
        and not c.endswith(("root", "dir", "path", "uri")) and df[c].astype(str).nunique() > 1))
    out = df[[c for c in RUN_COLUMNS if c in df and (c not in FIELD_COLUMNS
                                                     or fields and df[c].notna().any())]
             + settings].copy()
    out["run_dir"] = [rel(p, runs_root) for p in out["run_dir"]]
    keys = [k for k in ("dataset", "model", "scene", "shape", "depth", "norm", "seed") if k in out]
    return out.sort_values([*keys, "run_dir"], na_position="first")


def runs_csv_text(rows: pd.DataFrame) -> str:
    # No float format: every number as Python writes it, the shortest text that reads
    # back to the same double, so that a rebuild from runs.csv is exact.
    return rows.to_csv(index=False)


def write_runs_csv(rows: pd.DataFrame, path: Path) -> Path:
    atomic_write_text(path, runs_csv_text(rows))
    return path


def verdicts(rows: pd.DataFrame) -> pd.DataFrame:
    """The claims verdicts of runs.csv rows (``runs_table``), judged from the rows as
    runs.csv holds them: what `wcnorm report` writes to a folder and `wcnorm table`
    prints are the same judgement of the same numbers."""
    return judge(read_runs_csv(io.StringIO(runs_csv_text(rows))))


def key_text(v) -> str:
    """A cell key's value as text, the same whether read from a file or a frame (7, 7.0)."""
    if pd.isna(v):
        return ""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _cell_keys(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    return df[keys].astype(object).apply(lambda r: "|".join(key_text(v) for v in r), axis=1)


def carry_over(rows: pd.DataFrame, prior: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (runs.csv rows of run directories) plus the rows of an earlier runs.csv
    whose run (its cell and seed) no run directory fills: a grid rerun in part keeps
    the runs it did not redo, each with its own commit and date. A rerun run replaces
    its earlier row (e.g. a method whose defaults changed)."""
    keys = [k for k in CELL_KEYS if k in rows.columns and k in prior.columns]
    kept = prior[~_cell_keys(prior, keys).isin(set(_cell_keys(rows, keys)))]
    return pd.concat([rows, kept], ignore_index=True)[list(rows.columns) + [
        c for c in kept.columns if c not in rows.columns]]
