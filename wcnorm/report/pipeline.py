"""`wcnorm report`: every table, figure and claims file of a results folder, from run
directories, in one pass: runs -> labels -> tables -> claims -> figures -> runs.csv.

    wcnorm report runs --out results                        # `make tables`
    wcnorm report runs --out results --presets enorm_fc
    wcnorm report --index results                           # only results/README.md's verdict index
    wcnorm report runs/tuned --out results --presets wc_fc --tuned results/wc_fc/tuned/search.csv

With ``--tuned``, the folder is ``<out>/<preset>/tuned/``: the same tables and claims
from the runs at each grid point's searched rate alone (report.tuned).

One folder per experiment preset, ``<out>/<preset>/``, holding what `wcnorm table`
and `wcnorm plot` write (table.md/.csv, table_best_epoch.csv, table_long.csv,
provenance.json, claims.csv, curves.png, fc_depth.png, conditioning.png; for the
neural-field presets wc_nerf and wc_shape, tables per scene or shape,
gallery_nerf.png / gallery_shape.png and, for the gallery's seed, every test render
(renders/<scene>/<norm>/) and surface picture (meshes/<shape>/<norm>.png)), plus runs.csv: one row per run directory the
numbers come from, at full precision, with every input of the tables and claims: the
claims are judged from runs.csv itself, and `tabulate` and `judge` rebuild the tables
and claims from it alone. A hand-written README.md in that folder (how the runs were
made) is never touched; ``<out>/README.md``'s verdict index, between its markers, is
regenerated from every folder's claims.csv.

Runs on data files and image folders are labelled after them (`relabel`); the grid
points a budget leaves out are the preset's declaration (`wcnorm.presets.not_run`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path

import pandas as pd

from .claims_files import write_claims
from .declared import not_run, split_keys
from .index import NoIndexMarkers, update_index
from .plot import copy_pictures, plot_conditioning, plot_curves, plot_fc_depth, plot_gallery
from .relabel import judge, label_per_run, load_report_curves, load_report_runs, relabel
from .runs import read_runs_csv
from .runs_table import carry_over, rel, runs_table, verdicts, write_runs_csv
from .table import TableResult, build_table, to_markdown, write_table
from .tuned import (
    TUNED_FOLDER,
    TunedRatesError,
    at_tuned_rates,
    points_without_runs,
    read_tuned_rates,
)

__all__ = ["judge", "tabulate", "write_claims", "make_preset", "main"]

SKIP_BY_DEFAULT = ("demo",)  # `make demo` writes its own table under runs/demo
# Budgets left out unless asked for: a smoke run is a pipeline check, never evidence
# beside real runs of the same preset (scripts/smoke_presets.sh tables them apart).
SEPARATE_BUDGETS = ("smoke",)


def tabulate(preset: str, runs: pd.DataFrame, command: str | None) -> TableResult:
    """The preset's tables, from its runs (a ``load_report_runs`` or ``read_runs_csv``
    frame)."""
    df, _ = relabel(runs)
    left_out = not_run(preset, runs)
    return build_table(df, layout="auto", split_by=split_keys(df, left_out), command=command,
                       not_run=left_out)


def _figures(df: pd.DataFrame, curves: pd.DataFrame, cond: pd.DataFrame, out: Path) -> list[Path]:
    curves, cond = label_per_run(curves, df), label_per_run(cond, df)
    return (plot_curves(curves, out) + plot_fc_depth(df, out) + plot_conditioning(cond, out)
            + plot_gallery(df, out) + copy_pictures(df, out))


def _drop_stale_figures(out: Path, drawn: list[Path]) -> None:
    """Remove the figures an earlier report left in ``out`` that this one did not draw (a
    folder rebuilt from ``--prior`` rows alone draws none): no figure may show runs its
    tables no longer hold. Every top-level PNG of a preset's folder is a report figure."""
    kept = {Path(f).resolve() for f in drawn}
    for f in out.glob("*.png"):
        if f.resolve() not in kept:
            f.unlink()
            print(f"wcnorm report: removed {f} (not drawn from this report's run directories)")


def make_preset(preset: str, runs: pd.DataFrame, curves: pd.DataFrame, cond: pd.DataFrame,
                runs_root: Path, out: Path, command: str, prior: list[Path] | None = None,
                rates: pd.DataFrame | None = None) -> list[Path]:
    """``out``: the preset's folder, from its runs (a ``load_report_runs`` frame), curves
    and condition numbers, and the rows of the ``prior`` runs.csv files that no run
    directory redoes (a run in two of them counted once); with ``rates`` (a search.csv's
    rows), only the runs at their grid point's tuned rate."""
    out.mkdir(parents=True, exist_ok=True)
    rows = runs_table(runs, runs_root)
    earlier = (pd.concat([pd.read_csv(f) for f in prior], ignore_index=True).drop_duplicates("run_dir")
               if prior else None)
    if rates is not None:  # the tuned protocol: no run at another rate counts
        rows = at_tuned_rates(rows, rates)
        earlier = at_tuned_rates(earlier, rates) if earlier is not None else None
        runs = runs[[rel(p, runs_root) in set(rows["run_dir"]) for p in runs["run_dir"]]]
        curves, cond = (f[f["run_dir"].isin(set(runs["run_dir"]))] if len(f) else f for f in (curves, cond))
    if earlier is not None:  # tables and claims from run directories and the carried rows
        rows = carry_over(rows, earlier)
    if rates is not None:
        for point in points_without_runs(rows, rates):
            print(f"wcnorm report: no run of the tuned grid point {point}")
    df, _ = relabel(runs)
    files = [write_runs_csv(rows, out / "runs.csv")]
    table_runs = read_runs_csv(out / "runs.csv") if earlier is not None or rates is not None else runs
    result = tabulate(preset, table_runs, command)
    files += write_table(result, out)
    claims = verdicts(rows)  # judged from runs.csv's rows
    files.append(write_claims(claims, out / "claims.csv"))
    figures = _figures(df, curves, cond, out) if len(runs) else []  # figures: run directories only
    _drop_stale_figures(out, figures)
    files += figures
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
    ap = argparse.ArgumentParser(prog="wcnorm report", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="?", default="runs",
                    help="folder holding the run directories (default: runs)")
    ap.add_argument("--out", default="results", help="results folder (default: results)")
    ap.add_argument("--budgets", default="",
                    help="comma-separated budgets whose runs count (default: every budget but "
                         f"{', '.join(SEPARATE_BUDGETS)}, whose runs are a pipeline check with "
                         "tables of their own, e.g. runs/smoke --out results/smoke --budgets smoke)")
    ap.add_argument("--presets", default="",
                    help="comma-separated presets to rebuild (default: every preset with runs, "
                         f"except {', '.join(SKIP_BY_DEFAULT)})")
    ap.add_argument("--prior", type=Path, action="append", default=None,
                    help="an earlier runs.csv of the one preset named by --presets: its runs "
                         "that no run directory redoes are carried over into the tables and "
                         "claims (their own commit and date kept); figures show the run "
                         "directories only. Give it again for more files (a tuned folder's "
                         "runs.csv beside the shared one's)")
    ap.add_argument("--index", type=Path, default=None, metavar="DIR",
                    help="only regenerate the verdict index of DIR/README.md from DIR/*/claims.csv "
                         "(no runs read)")
    ap.add_argument("--tuned", type=Path, default=None, metavar="SEARCH_CSV",
                    help="the search.csv of the one preset named by --presets (`wcnorm search`): "
                         "table only the runs at each grid point's searched rate, into "
                         f"<out>/<preset>/{TUNED_FOLDER}/ (docs/search.md, \"The tuned protocol\")")
    args = ap.parse_args(argv)
    for option in ("prior", "tuned"):
        files = getattr(args, option)
        files = files if isinstance(files, list) else [] if files is None else [files]
        if files and len([p for p in args.presets.split(",") if p]) != 1:
            ap.error(f"--{option} needs exactly one preset in --presets")
        for f in files:
            if not f.is_file():
                ap.error(f"--{option} {f}: no such file")
    return args


def _index_only(root: Path) -> int:
    try:
        print(f"wrote: {update_index(root, required=True)}")
    except NoIndexMarkers as err:
        print(f"wcnorm report: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.index is not None:
        return _index_only(args.index)
    runs_root, out_root = Path(args.runs), Path(args.out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable folders are counted in provenance.json
        runs = with_budgets(load_report_runs(runs_root), args.budgets)
    if runs.empty:
        print(f"wcnorm report: no run directories under {runs_root}"
              + (f" of budget(s) {args.budgets}" if args.budgets else ""), file=sys.stderr)
        return 1
    found = sorted(runs["experiment"].dropna().unique())
    wanted = [p for p in args.presets.split(",") if p] or [p for p in found if p not in SKIP_BY_DEFAULT]
    # a preset whose runs all come from --prior files (a tuned folder whose every point chose
    # the shared rate) needs no run directory here
    missing = [p for p in wanted if p not in found and not args.prior]
    if missing:
        print(f"wcnorm report: no runs of preset(s) {', '.join(missing)} under {runs_root}", file=sys.stderr)
        return 1
    try:
        rates = read_tuned_rates(args.tuned, wanted[0]) if args.tuned is not None else None
    except TunedRatesError as err:
        print(f"wcnorm report: --tuned {err}", file=sys.stderr)
        return 1
    curves, cond = load_report_curves(runs_root, runs)
    command = shlex.join(["wcnorm", "report", *argv])
    for preset in wanted:
        out = out_root / preset / (TUNED_FOLDER if rates is not None else "")
        print(f"\n==== {preset} -> {out}")
        runs_p, curves_p, cond_p = (df[df["experiment"] == preset] if len(df) else df
                                    for df in (runs, curves, cond))
        files = make_preset(preset, runs_p, curves_p, cond_p, runs_root, out, command,
                            args.prior, rates)
        print("wrote: " + ", ".join(str(f) for f in files))
    index = update_index(out_root)
    if index is not None:
        print(f"wrote: {index} (verdict index)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
