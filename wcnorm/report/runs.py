"""Load run directories (written by the trainer) into pandas.

A run directory holds ``config.yaml`` and ``metrics.csv`` while it trains and gains
``result.json`` when it finishes. Everything here reads only those files, so tables
and figures can be rebuilt anywhere from copied run folders.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

# Columns that identify a run's cell in a table or a line in a figure.
ID_COLUMNS = ["run_dir", "experiment", "budget", "model", "dataset", "depth", "norm", "seed"]

# (column, dotted config key)
_CONFIG_FIELDS = [
    ("model", "model.name"),
    ("dataset", "dataset.name"),
    ("norm", "norm.name"),
    ("depth", "model.depth"),
    ("seed", "seed"),
    ("experiment", "experiment"),
    ("budget", "budget"),
    ("epochs", "trainer.epochs"),
    ("batch_size", "trainer.batch_size"),
    ("lr", "optim.lr"),
]

_RESULT_FIELDS = [
    "final_test_acc", "final_test_loss", "final_train_loss", "best_test_acc",
    "best_epoch", "wall_time_s", "num_params", "torch_version", "cuda_version",
    "device_name", "git_commit", "date",
]


class RunReadError(ValueError):
    """A folder looked like a run directory but could not be read."""


def _as_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def find_runs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Run directories at or below ``paths``, sorted and without duplicates.

    A run directory has ``result.json`` (finished) or ``metrics.csv`` next to
    ``config.yaml`` (still training, or killed).
    """
    found: set[Path] = set()
    for root in _as_paths(paths):
        if not root.exists():
            warnings.warn(f"wcnorm: no such path: {root}", stacklevel=2)
            continue
        for marker in ("result.json", "metrics.csv"):
            hits = [root / marker] if (root / marker).is_file() else []
            for f in hits + sorted(root.rglob(marker)):
                d = f.parent
                if marker == "result.json" or (d / "config.yaml").is_file():
                    found.add(d.resolve())
                elif not (d / "result.json").is_file():
                    warnings.warn(f"wcnorm: skipping {d}: metrics.csv without config.yaml",
                                  stacklevel=2)
    return sorted(found)


def _get(cfg: dict, dotted: str):
    """``cfg["a"]["b"]`` for ``"a.b"``; None where any level is absent."""
    node = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _flatten(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            # Lists become strings so that every cell is hashable (groupby, unique).
            out[key] = repr(v) if isinstance(v, (list, tuple)) else v
    return out


def _read_metrics(run_dir: Path) -> pd.DataFrame | None:
    f = run_dir / "metrics.csv"
    if not f.is_file() or f.stat().st_size == 0:
        return None
    df = pd.read_csv(f)
    if "epoch" not in df.columns:
        raise RunReadError(f"{f} has no 'epoch' column")
    return df


def read_run(run_dir: str | Path) -> dict:
    """One run as a flat dict (the row ``load_runs`` makes). Raises RunReadError."""
    run_dir = Path(run_dir)
    result = None
    if (run_dir / "result.json").is_file():
        try:
            result = json.loads((run_dir / "result.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunReadError(f"{run_dir}/result.json: {e}") from e
        if not isinstance(result, dict):
            raise RunReadError(f"{run_dir}/result.json is not an object")
    cfg = None
    if (run_dir / "config.yaml").is_file():
        try:
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        except yaml.YAMLError as e:
            raise RunReadError(f"{run_dir}/config.yaml: {e}") from e
    if not isinstance(cfg, dict):
        cfg = (result or {}).get("config")
    if not isinstance(cfg, dict):
        raise RunReadError(f"{run_dir}: no readable config")
    try:
        metrics = _read_metrics(run_dir)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise RunReadError(f"{run_dir}/metrics.csv: {e}") from e

    row: dict = {"run_dir": str(run_dir)}
    row.update({col: _get(cfg, key) for col, key in _CONFIG_FIELDS})
    if row["model"] is None or row["norm"] is None:
        raise RunReadError(f"{run_dir}: config lacks model.name or norm.name")
    finished = result is not None and result.get("status") == "finished"
    row["finished"] = finished
    row["status"] = (result or {}).get("status", "unfinished")
    for key in _RESULT_FIELDS:
        row[key] = result.get(key) if result else None
    if not finished:
        # Partial numbers must never leak into a mean: blank them.
        for key in ("final_test_acc", "final_test_loss", "final_train_loss",
                    "best_test_acc", "best_epoch"):
            row[key] = np.nan
    n_done = 0 if metrics is None else len(metrics)
    row["epochs_done"] = n_done
    row["last_test_acc"] = metrics["test_acc"].iloc[-1] if n_done and "test_acc" in metrics else np.nan
    # Mean training loss over epochs = area under the loss curve: small when the loss
    # falls fast. Used by the "fastest-falling training loss" claim.
    row["mean_train_loss"] = (metrics["train_loss"].mean()
                              if finished and n_done and "train_loss" in metrics else np.nan)
    for when, stats in ((result or {}).get("conditioning") or {}).items():
        for key, value in (stats or {}).items():
            row[f"cond_{when}_{key}"] = value
    row.update({f"cfg.{k}": v for k, v in _flatten(cfg).items()})
    return row


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for col in ("depth", "seed", "epochs", "batch_size", "epochs_done", "best_epoch", "num_params"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("lr", "final_test_acc", "final_test_loss", "final_train_loss", "best_test_acc",
                "wall_time_s"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["finished"] = df["finished"].astype(bool)
    return df


def _load(run_dirs: Iterable[Path]) -> tuple[pd.DataFrame, list[Path]]:
    rows, ok, skipped = [], [], []
    for d in run_dirs:
        try:
            rows.append(read_run(d))
            ok.append(d)
        except (RunReadError, OSError) as e:
            skipped.append(str(d))
            warnings.warn(f"wcnorm: skipping unreadable run directory: {e}", stacklevel=3)
    cols = ID_COLUMNS + ["finished", "final_test_acc", "best_test_acc"]
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=cols + ["epochs_done"])
    df = _typed(df)
    df.attrs["skipped"] = skipped  # junk folders, reported in a table's provenance
    return df, ok


def load_runs(paths) -> pd.DataFrame:
    """One row per run directory found below ``paths`` (finished or not)."""
    df, _ = _load(find_runs(paths))
    return df


def _attach(runs: pd.DataFrame, per_run: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-run frames, each prefixed with its run's identifying columns."""
    ids = runs.set_index("run_dir")
    keys = ID_COLUMNS[1:] + ["finished"]
    parts = [frame.assign(run_dir=run_dir, **{c: ids.at[run_dir, c] for c in keys})
             for run_dir, frame in per_run.items()]
    if not parts:
        return pd.DataFrame(columns=ID_COLUMNS + ["finished"])
    out = pd.concat(parts, ignore_index=True)
    for col in ("depth", "seed"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("Int64")
    # Keep the id columns first, in the documented order.
    rest = [c for c in out.columns if c not in ID_COLUMNS + ["finished"]]
    return out[ID_COLUMNS + ["finished"] + rest]


def load_curves(paths) -> pd.DataFrame:
    """All ``metrics.csv`` rows, each with its run's identifying columns."""
    runs, dirs = _load(find_runs(paths))
    per_run = {}
    for d in dirs:
        try:
            m = _read_metrics(d)
        except (RunReadError, pd.errors.ParserError) as e:
            warnings.warn(f"wcnorm: skipping curves of {d}: {e}", stacklevel=2)
            continue
        if m is not None and len(m):
            per_run[str(d)] = m
    return _attach(runs, per_run)


def load_conditioning(paths) -> pd.DataFrame:
    """All ``conditioning.csv`` rows (epoch 0 = before training), with id columns."""
    runs, dirs = _load(find_runs(paths))
    per_run = {}
    for d in dirs:
        f = d / "conditioning.csv"
        if not f.is_file() or f.stat().st_size == 0:
            continue
        try:
            per_run[str(d)] = pd.read_csv(f)
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            warnings.warn(f"wcnorm: skipping {f}: {e}", stacklevel=2)
    return _attach(runs, per_run)
