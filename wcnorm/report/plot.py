"""`wcnorm plot`: the papers' figures from run directories.

- curves: training loss and test accuracy vs epoch, one line per normalizer (mean over
  seeds, shaded band = ±1 std), one panel per model/dataset;
- fc_depth: the ENorm fully connected study, final test accuracy vs depth p;
- conditioning: median condition number over layers of the effective (solid) and raw
  (dashed) weights vs epoch, for runs that logged conditioning.csv.

Figures are drawn on bare ``Figure`` objects with the Agg canvas, so importing this
module never changes the caller's matplotlib backend.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import warnings
import zlib
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..outputs import atomic_write_bytes
from .runs import load_conditioning, load_curves, load_runs
from .table import norm_label, norm_sort_key

# The studied method is red in both papers' figures, its main baseline blue.
COLORS = {
    "none": "#444444", "bn": "tab:blue", "bn_ws": "tab:green", "bn_wn": "tab:purple",
    "bn_wc": "tab:red", "bn_e": "#8b0000", "gn": "tab:cyan", "gn_wc": "tab:pink",
    "ln": "tab:olive", "ln_wc": "tab:brown", "wc": "tab:gray", "enorm": "tab:orange",
    "bn_enorm": "tab:red",
}
_SPARE = ["#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"]
MAX_COLS = 4


def _color(norm) -> str:
    # crc32, not hash(): str hashes change between processes, colours must not.
    return COLORS.get(norm) or _SPARE[zlib.crc32(str(norm).encode()) % len(_SPARE)]


def _panel_keys(df: pd.DataFrame) -> list[str]:
    keys = ["model", "dataset"]
    if df["depth"].notna().any():
        keys.append("depth")  # ENorm FC: one panel per depth, never pooled
    if df["experiment"].nunique(dropna=False) > 1:
        keys.insert(0, "experiment")  # different protocols are never pooled either
    return keys


def _title(keys, values) -> str:
    values = values if isinstance(values, tuple) else (values,)
    parts = [f"p={v}" if k == "depth" else str(v) for k, v in zip(keys, values)
             if not (k == "depth" and pd.isna(v))]
    return " / ".join(parts)


def _panels(df: pd.DataFrame):
    keys = _panel_keys(df)
    return keys, sorted(df.groupby(keys, dropna=False, sort=False), key=lambda kv: str(kv[0]))


def _grid(n: int, rows_per_panel: int, w=4.2, h=3.2):
    ncols = min(n, MAX_COLS)
    nrows = math.ceil(n / ncols) * rows_per_panel
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes, ncols


def _norms(df) -> list:
    return sorted(df["norm"].dropna().unique(), key=norm_sort_key)


def _band(ax, df, x, y, norm, label=None, ls="-", spread="std"):
    """Mean over runs at each x, with a shaded ±std (or min-max) band."""
    agg = df.groupby(x)[y].agg(["mean", "std", "min", "max", "count"]).dropna(subset=["mean"])
    if agg.empty:
        return
    c = _color(norm)
    ax.plot(agg.index, agg["mean"], ls=ls, color=c, lw=1.8, label=label)
    lo, hi = ((agg["mean"] - agg["std"], agg["mean"] + agg["std"]) if spread == "std"
              else (agg["min"], agg["max"]))
    ok = agg["count"] > 1
    if ok.any():
        ax.fill_between(agg.index[ok], lo[ok], hi[ok], color=c, alpha=0.2, lw=0)


def _save(fig: Figure, out: Path, stem: str, formats) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150)
        atomic_write_bytes(path, buf.getvalue())
        files.append(path)
    return files


def _hide_unused(axes, used_cols: int, ncols: int, row_block: slice):
    for ax in axes[row_block, used_cols:ncols].ravel():
        ax.set_visible(False)


def _safe(name) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name))


def plot_curves(curves: pd.DataFrame, out, formats=("png",),
                include_unfinished: bool = False) -> list[Path]:
    """Training loss (top) and test accuracy (bottom) vs epoch, per model/dataset.

    One figure per experiment preset (``curves.png``, or ``curves_<preset>.png`` when
    several are given). Unfinished runs are left out by default, as in the tables:
    a mean over a seed set that shrinks mid-curve would jump.
    """
    if not include_unfinished and len(curves):
        curves = curves[curves["finished"].astype(bool)]
    if curves.empty:
        return []
    exps = sorted(curves.groupby(curves["experiment"].fillna("none")), key=lambda kv: kv[0])
    files = []
    for exp, df in exps:
        stem = "curves" if len(exps) == 1 else f"curves_{_safe(exp)}"
        files += _curves_figure(df, Path(out), stem, formats, exp)
    return files


def _curves_figure(curves, out, stem, formats, exp) -> list[Path]:
    keys, panels = _panels(curves)
    fig, axes, ncols = _grid(len(panels), 2)
    for i, (values, g) in enumerate(panels):
        r, c = 2 * (i // ncols), i % ncols
        loss_ax, acc_ax = axes[r, c], axes[r + 1, c]
        for norm in _norms(g):
            gn = g[g["norm"] == norm]
            label = f"{norm_label(norm)} ({gn['run_dir'].nunique()} runs)"
            _band(loss_ax, gn, "epoch", "train_loss", norm, label)
            _band(acc_ax, gn, "epoch", "test_acc", norm, label)
        if (g["train_loss"] > 0).all():
            loss_ax.set_yscale("log")
        title = _title(keys, values)
        loss_ax.set(title=title, xlabel="epoch", ylabel="training loss (log)")
        acc_ax.set(title=title, xlabel="epoch", ylabel="test accuracy (%)")
        loss_ax.legend(fontsize=7, loc="upper right")
        acc_ax.legend(fontsize=7, loc="lower right")
        for ax in (loss_ax, acc_ax):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    last = len(panels) % ncols
    if last:
        _hide_unused(axes, last, ncols, slice(-2, None))
    fig.suptitle(f"{exp}: training loss and test accuracy "
                 "(mean over seeds, band = ±1 std)", fontsize=10)
    return _save(fig, out, stem, formats)


def plot_fc_depth(runs: pd.DataFrame, out, formats=("png",)) -> list[Path]:
    """ENorm FC study: final test accuracy vs depth p, one line per method."""
    fc = runs[(runs["model"] == "enorm_fc") & runs["finished"] & runs["depth"].notna()]
    if fc.empty:
        return []
    groups = sorted(fc.groupby("dataset"), key=lambda kv: str(kv[0]))
    fig, axes, ncols = _grid(len(groups), 1, w=5.5, h=4.0)
    for i, (dataset, g) in enumerate(groups):
        ax = axes[i // ncols, i % ncols]
        for norm in _norms(g):
            agg = (g[g["norm"] == norm].groupby("depth")["final_test_acc"]
                   .agg(["mean", "std", "count"]))
            ax.errorbar(agg.index.astype(int), agg["mean"], yerr=agg["std"].fillna(0),
                        color=_color(norm), marker="o", ms=4, capsize=3, lw=1.5,
                        label=f"{norm_label(norm)} (n={int(agg['count'].min())}"
                              f"-{int(agg['count'].max())} per depth)"
                        if agg["count"].nunique() > 1 else
                        f"{norm_label(norm)} (n={int(agg['count'].iloc[0])})")
        ax.set_xticks(sorted(g["depth"].astype(int).unique()))
        ax.set(title=f"ENorm FC on {dataset}: final test accuracy vs depth",
               xlabel="intermediary 500x500 layers p", ylabel="final test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if len(groups) % ncols:
        _hide_unused(axes, len(groups) % ncols, ncols, slice(-1, None))
    fig.suptitle("Mean over seeds, error bars = ±1 std", fontsize=9)
    return _save(fig, Path(out), "fc_depth", formats)


def plot_conditioning(cond: pd.DataFrame, out, formats=("png",),
                      include_unfinished: bool = False) -> list[Path]:
    """Median (over layers) condition number of effective and raw weights vs epoch."""
    if not include_unfinished and len(cond):
        cond = cond[cond["finished"].astype(bool)]
    if cond.empty:
        return []
    # One number per run and epoch: the median over that run's layers.
    med = (cond.groupby(["run_dir", "epoch"], dropna=False)[["kappa_eff", "kappa_raw"]]
           .median().reset_index()
           .merge(cond.drop_duplicates("run_dir").drop(
               columns=["epoch", "kappa_eff", "kappa_raw"], errors="ignore"), on="run_dir"))
    keys, panels = _panels(med)
    fig, axes, ncols = _grid(len(panels), 1, w=5.0, h=3.8)
    for i, (values, g) in enumerate(panels):
        ax = axes[i // ncols, i % ncols]
        for norm in _norms(g):
            gn = g[g["norm"] == norm]
            _band(ax, gn, "epoch", "kappa_eff", norm,
                  f"{norm_label(norm)} ({gn['run_dir'].nunique()} runs)", spread="minmax")
            _band(ax, gn, "epoch", "kappa_raw", norm, None, ls="--", spread="minmax")
        ax.set_yscale("log")
        ax.set(title=_title(keys, values), xlabel="epoch (0 = before training)",
               ylabel="median layer condition number κ₂ (log)")
        ax.grid(alpha=0.3, which="both")
        styles = [Line2D([], [], color="k", ls="-", label="effective weight E(W)W"),
                  Line2D([], [], color="k", ls="--", label="raw weight W")]
        ax.legend(handles=ax.get_legend_handles_labels()[0] + styles, fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(panels) % ncols:
        _hide_unused(axes, len(panels) % ncols, ncols, slice(-1, None))
    fig.suptitle("Median over layers, mean over seeds (band = seed min-max)", fontsize=9)
    return _save(fig, Path(out), "conditioning", formats)


def plot_all(paths, out, formats=("png",)) -> list[Path]:
    """Every figure the runs below ``paths`` support; returns the written files."""
    files = plot_curves(load_curves(paths), out, formats)
    with warnings.catch_warnings():  # unreadable folders were reported once already
        warnings.simplefilter("ignore")
        runs, cond = load_runs(paths), load_conditioning(paths)
    files += plot_fc_depth(runs, out, formats)
    files += plot_conditioning(cond, out, formats)
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="wcnorm plot", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories or folders holding them")
    ap.add_argument("--out", default="results/plots", help="output folder")
    ap.add_argument("--formats", default="png", help="comma-separated, e.g. png,pdf")
    args = ap.parse_args(argv)
    formats = [f.strip().lstrip(".") for f in args.formats.split(",") if f.strip()]
    files = plot_all(args.runs, args.out, formats)
    if not files:
        print("wcnorm plot: no run data to plot", file=sys.stderr)
        return 1
    print("wrote: " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
