"""Regenerate every table, figure and claims file in results/ from run directories.

    python scripts/make_tables.py --runs runs --out results        # `make tables`
    python scripts/make_tables.py --runs runs --out results --presets enorm_fc

One folder per experiment preset, ``<out>/<preset>/``, holding what `wcnorm table`
and `wcnorm plot` write (table.md/.csv, table_best_epoch.csv, table_long.csv,
provenance.json, claims.csv, curves.png, fc_depth.png, conditioning.png; for the
neural-field presets wc_nerf and wc_shape, tables per scene or shape,
gallery_nerf.png / gallery_shape.png and, for the gallery's seed, every test render
(renders/<scene>/<norm>/) and surface picture (meshes/<shape>/<norm>.png)), plus runs.csv: one row per run directory the
numbers come from, at full precision, with every input of the tables and claims: the
claims are judged from runs.csv itself, and `tabulate` and `judge` rebuild the tables
and claims from it alone. A hand-written README.md in that folder (how the runs were
made) is never touched.

Runs on `dataset=npz` are labelled with the npz file's name (e.g.
``cifar10-partial``) in tables and figures, runs on `dataset=imagefolder` with the
folder's (e.g. ``imagenet-mini``). For the claims check, files and folders named
``cifar10*`` / ``cifar100*`` / ``imagenet*`` (real subsets of those datasets) count as
CIFAR-10 / CIFAR-100 / ImageNet, and every claim row that uses them says so.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from pathlib import Path

import pandas as pd
import yaml

from wcnorm.outputs import atomic_write_text
from wcnorm.report.claims import evaluate_claims
from wcnorm.report.claims_files import write_claims
from wcnorm.report.plot import (
    copy_pictures,
    plot_conditioning,
    plot_curves,
    plot_fc_depth,
    plot_gallery,
)
from wcnorm.report.runs import (
    CLASSIFICATION,
    load_conditioning,
    load_curves,
    load_runs,
    read_runs_csv,
)
from wcnorm.report.table import TableResult, build_table, to_markdown, write_table

PRESETS = Path(__file__).resolve().parents[1] / "conf" / "experiment"
SKIP_BY_DEFAULT = ("demo",)  # `make demo` writes its own table under runs/demo
# Budgets left out unless asked for: a smoke run is a pipeline check, never evidence
# beside real runs of the same preset (scripts/smoke_presets.sh tables them apart).
SEPARATE_BUDGETS = ("smoke",)
# Extra row keys of a table when a preset varies them (e.g. the small-batch studies).
SPLIT_CANDIDATES = ("batch_size",)
# runs.csv: every number a table or a claim of the folder reads, at full precision, so
# that the whole folder can be rebuilt from it alone (`wcnorm.report.runs.read_runs_csv`).
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


def write_runs_csv(rows: pd.DataFrame, path: Path) -> Path:
    # No float format: every number as Python writes it, the shortest text that reads
    # back to the same double, so that a rebuild from runs.csv is exact.
    atomic_write_text(path, rows.to_csv(index=False))
    return path


def not_run(preset: str, runs: pd.DataFrame) -> dict[str, str]:
    """The grid points the runs' budget leaves out, with the reason, as the preset
    declares them (`protocol.<budget>.not_run` in conf/experiment/<preset>.yaml)."""
    budgets = runs["budget"].dropna().unique()
    f = PRESETS / f"{preset}.yaml"
    if len(budgets) != 1 or not f.is_file():
        return {}
    protocol = yaml.safe_load(f.read_text()).get("protocol") or {}
    return dict((protocol.get(budgets[0]) or {}).get("not_run") or {})


def tabulate(preset: str, runs: pd.DataFrame, command: str | None) -> TableResult:
    """The preset's tables, from its runs (a ``load_runs`` or ``read_runs_csv`` frame
    with ``dataset_file``)."""
    df, _ = relabel(runs)
    left_out = not_run(preset, runs)
    # A key the budget leaves values of out is a row key even while one value has runs
    # (a small-batch grid whose first batch size alone has finished).
    split = tuple(k for k in SPLIT_CANDIDATES if df[k].nunique(dropna=True) > 1
                  or any(point.startswith(f"{k}=") for point in left_out))
    return build_table(df, layout="auto", split_by=split, command=command, not_run=left_out)


def judge(runs: pd.DataFrame) -> pd.DataFrame:
    """The claims verdicts of runs (a ``read_runs_csv`` frame: the report judges the
    claims from runs.csv, so that runs.csv alone rebuilds every test)."""
    claims_df, notes = relabel(runs, for_claims=True)
    claims = evaluate_claims(claims_df)
    if notes:
        used = claims["finished_runs"] > 0
        claims.loc[used, "note"] = [("; ".join(notes) + ("; " + n if n else "")) for n in claims.loc[used, "note"]]
    return claims


CELL_KEYS = ("experiment", "model", "dataset", "dataset_file", "scene", "shape", "depth",
             "batch_size", "norm", "seed")


def _text(v) -> str:
    """A cell key's value as text, the same whether read from a file or a frame (7, 7.0)."""
    if pd.isna(v):
        return ""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _cell_keys(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    return df[keys].astype(object).apply(lambda r: "|".join(_text(v) for v in r), axis=1)


def carry_over(rows: pd.DataFrame, prior: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (runs.csv rows of run directories) plus the rows of an earlier runs.csv
    whose run (its cell and seed) no run directory fills: a grid rerun in part keeps
    the runs it did not redo, each with its own commit and date. A rerun run replaces
    its earlier row (e.g. a method whose defaults changed)."""
    keys = [k for k in CELL_KEYS if k in rows.columns and k in prior.columns]
    kept = prior[~_cell_keys(prior, keys).isin(set(_cell_keys(rows, keys)))]
    return pd.concat([rows, kept], ignore_index=True)[list(rows.columns) + [
        c for c in kept.columns if c not in rows.columns]]


def make_preset(preset: str, runs: pd.DataFrame, curves: pd.DataFrame, cond: pd.DataFrame,
                runs_root: Path, out: Path, command: str, prior: Path | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    runs = with_dataset_file(runs)
    df, _ = relabel(runs)
    rows = runs_table(runs, runs_root)
    if prior is not None:  # tables and claims from run directories and the carried rows
        rows = carry_over(rows, pd.read_csv(prior))
    files = [write_runs_csv(rows, out / "runs.csv")]
    table_runs = read_runs_csv(out / "runs.csv") if prior is not None else runs
    result = tabulate(preset, table_runs, command)
    files += write_table(result, out)
    claims = judge(read_runs_csv(out / "runs.csv"))
    files.append(write_claims(claims, out / "claims.csv"))

    # Curves and condition numbers carry only id columns: label them through run_dir.
    labels = dict(zip(df["run_dir"], df["dataset"]))
    curves, cond = (f.assign(dataset=f["run_dir"].map(labels).fillna(f["dataset"])) if len(f) else f
                    for f in (curves, cond))
    files += plot_curves(curves, out)
    files += plot_fc_depth(df, out)
    files += plot_conditioning(cond, out)
    files += plot_gallery(df, out)
    files += copy_pictures(df, out)
    print(to_markdown(result))
    print(claims[["claim_id", "verdict", "numbers"]][claims["finished_runs"] > 0].to_string(index=False))
    return files


def with_budgets(runs: pd.DataFrame, budgets: str) -> pd.DataFrame:
    """The runs of the budgets asked for (comma-separated), else of all but SEPARATE_BUDGETS."""
    if runs.empty or "budget" not in runs:
        return runs
    wanted = [b for b in budgets.split(",") if b]
    keep = runs["budget"].isin(wanted) if wanted else ~runs["budget"].isin(SEPARATE_BUDGETS)
    return runs[keep]


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="make_tables.py", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs", help="folder holding the run directories (default: runs)")
    ap.add_argument("--out", default="results", help="results folder (default: results)")
    ap.add_argument("--budgets", default="",
                    help="comma-separated budgets whose runs count (default: every budget but "
                         f"{', '.join(SEPARATE_BUDGETS)}, whose runs are a pipeline check with "
                         "tables of their own, e.g. --runs runs/smoke --out results/smoke --budgets smoke)")
    ap.add_argument("--presets", default="",
                    help="comma-separated presets to rebuild (default: every preset with runs, "
                         f"except {', '.join(SKIP_BY_DEFAULT)})")
    ap.add_argument("--prior", type=Path, default=None,
                    help="an earlier runs.csv of the one preset named by --presets: its runs "
                         "that no run directory redoes are carried over into the tables and "
                         "claims (their own commit and date kept); figures show the run "
                         "directories only")
    args = ap.parse_args(argv)
    if args.prior is not None and len([p for p in args.presets.split(",") if p]) != 1:
        ap.error("--prior needs exactly one preset in --presets")
    if args.prior is not None and not args.prior.is_file():
        ap.error(f"--prior {args.prior}: no such file")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    runs_root, out_root = Path(args.runs), Path(args.out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable folders are counted in provenance.json
        runs = load_runs(runs_root)
        curves, cond = load_curves(runs_root), load_conditioning(runs_root)
    runs = with_budgets(runs, args.budgets)
    curves, cond = (df[df["run_dir"].isin(runs["run_dir"])] if len(df) else df for df in (curves, cond))
    if runs.empty:
        print(f"make_tables: no run directories under {runs_root}"
              + (f" of budget(s) {args.budgets}" if args.budgets else ""), file=sys.stderr)
        return 1
    found = sorted(runs["experiment"].dropna().unique())
    wanted = [p for p in args.presets.split(",") if p] or [p for p in found if p not in SKIP_BY_DEFAULT]
    missing = [p for p in wanted if p not in found]
    if missing:
        print(f"make_tables: no runs of preset(s) {', '.join(missing)} under {runs_root}", file=sys.stderr)
        return 1
    command = shlex.join(["python", "scripts/make_tables.py", *argv])
    for preset in wanted:
        print(f"\n==== {preset} -> {out_root / preset}")
        runs_p, curves_p, cond_p = (df[df["experiment"] == preset] if len(df) else df
                                    for df in (runs, curves, cond))
        files = make_preset(preset, runs_p, curves_p, cond_p, runs_root, out_root / preset, command,
                            args.prior)
        print("wrote: " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
