"""Runs on a file or folder of the user's, named after it: what every door of the report
(`wcnorm report`, `wcnorm table`, `wcnorm plot`) reads, so that none judges differently.

Runs on `dataset=npz` are labelled with the npz file's name (e.g. ``cifar10-partial``)
in tables and figures, runs on `dataset=imagefolder` with the folder's (e.g.
``imagenet-mini``). For the claims check, files and folders named ``cifar10*`` /
``cifar100*`` / ``imagenet*`` (real subsets of those datasets) count as CIFAR-10 /
CIFAR-100 / ImageNet, and every claim row that uses them says so.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pandas as pd

from .claims import evaluate_claims
from .runs import load_conditioning, load_curves, load_runs

# Datasets given as a file or folder of the user's: (the config key that names it, the
# form its label is shown in). A file's label is its stem, a folder's its name.
DATA_FILES = {"npz": ("cfg.dataset.path", "{}.npz"), "imagefolder": ("cfg.dataset.root", "{}/")}


def data_label(path) -> str | None:
    """`cifar10-partial` for `.../cifar10-partial.npz`, `imagenet-mini` for `.../imagenet-mini`."""
    if not isinstance(path, str) or not path:
        return None
    path = Path(path)
    return path.name if path.suffix != ".npz" else path.stem


def claim_dataset(label: str | None) -> str | None:
    """The dataset a claim names, for a file or folder that is a real subset of it."""
    if not label:
        return None
    for name in ("cifar100", "cifar10", "imagenet"):  # cifar100 first: "cifar10" is its prefix
        if label.startswith(name):
            return name
    return None


def with_dataset_file(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``dataset_file``: the name of the file or folder a run's data came from
    (``cifar10-partial.npz``, ``imagenet-mini``), empty for a named dataset."""
    if df.empty and "dataset" not in df:
        return df.assign(dataset_file=pd.Series(dtype=object))
    none = pd.Series("", index=df.index)
    paths = df.get("cfg.dataset.path", none).where(df["dataset"] != "imagefolder",
                                                   df.get("cfg.dataset.root", none))
    return df.assign(dataset_file=[Path(p).name if isinstance(p, str) and p else "" for p in paths])


def relabel(df: pd.DataFrame, for_claims: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Name npz and image-folder runs after their file or folder (tables, figures) or
    their source dataset (claims), from ``dataset_file``."""
    df = df.copy()
    notes = []
    for kind, (_, shown) in DATA_FILES.items():
        if df.empty or "dataset_file" not in df:
            continue
        for path, idx in df[df["dataset"] == kind].groupby("dataset_file").groups.items():
            label = data_label(path)
            new = claim_dataset(label) if for_claims else label
            if new:
                df.loc[idx, "dataset"] = new
                if for_claims:
                    notes.append(f"runs on dataset={kind} ({shown.format(label)}, real {new} images) "
                                 f"counted as {new}")
    return df, notes


def judge(runs: pd.DataFrame) -> pd.DataFrame:
    """The claims verdicts of runs (a frame with ``dataset_file``: ``load_report_runs``
    or ``read_runs_csv``), with the subsets counted as their datasets named in the notes."""
    claims_df, notes = relabel(runs, for_claims=True)
    claims = evaluate_claims(claims_df)
    if notes:
        used = claims["finished_runs"] > 0
        claims.loc[used, "note"] = [("; ".join(notes) + ("; " + n if n else "")) for n in claims.loc[used, "note"]]
    return claims


def load_report_runs(paths) -> pd.DataFrame:
    """Every run below ``paths`` (``load_runs``) but a search's trials, with ``dataset_file``."""
    return with_dataset_file(without_trials(load_runs(paths)))


def without_trials(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs less a search's trials (a validation split held out of the training set:
    `+search=lr`, `+search=lr_grid`), which choose rates and are never results; said.
    `wcnorm search` tables them."""
    col = "cfg.dataset.val_split"
    if runs.empty or col not in runs:
        return runs
    trial = pd.to_numeric(runs[col], errors="coerce").fillna(0) > 0
    if trial.any():
        print(f"wcnorm: {int(trial.sum())} run(s) with a validation split left out of the tables: a "
              f"search's trials choose rates and are not results (`wcnorm search` tables them)",
              file=sys.stderr)
    return runs[~trial].reset_index(drop=True)


def label_per_run(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Curves and condition numbers carry only id columns: give each row its run's
    label (``runs``: a relabelled frame), through ``run_dir``."""
    if not len(frame):
        return frame
    labels = dict(zip(runs["run_dir"], runs["dataset"]))
    return frame.assign(dataset=frame["run_dir"].map(labels).fillna(frame["dataset"]))


def load_report_curves(paths, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The curves and condition numbers of ``runs`` (a ``load_report_runs`` frame),
    labelled as ``relabel`` labels the runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable folders were reported with the runs
        curves, cond = load_curves(paths), load_conditioning(paths)
    labelled, _ = relabel(runs)
    return tuple(label_per_run(f[f["run_dir"].isin(runs["run_dir"])] if len(f) else f, labelled)
                 for f in (curves, cond))
