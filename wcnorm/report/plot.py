"""`wcnorm plot`: the papers' figures from run directories.

- curves: training loss and the held-out metric vs epoch (test accuracy; NeRF's
  validation PSNR; a shape's test IoU), one line per normalizer (mean over seeds,
  shaded band = ±1 std), one panel per model/dataset, scene or shape;
- fc_depth: the ENorm fully connected study, final test accuracy vs depth p;
- conditioning: median condition number over layers of the effective (solid) and raw
  (dashed) weights vs epoch, for runs that logged conditioning.csv;
- gallery_nerf, gallery_shape: for one seed, each normalizer's result side by side:
  a test view rendered by each NeRF beside its ground truth (one view per scene), the
  picture of each shape's extracted surface (`copy_pictures` copies all of that
  seed's test renders and surface pictures beside them).

Figures are drawn on bare ``Figure`` objects with the Agg canvas, so importing this
module never changes the caller's matplotlib backend.
"""

from __future__ import annotations

import argparse
import io
import math
import shutil
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..outputs import atomic_write_bytes
from .labels import norm_label, norm_sort_key
from .relabel import label_per_run, load_report_runs, relabel
from .runs import (
    CLASSIFICATION,
    FIELD_TASKS,
    NERF,
    SHAPE,
    load_conditioning,
    load_curves,
    mesh_picture,
    rendered_views,
    view_order,
)

# The studied method is red in both papers' figures, its main baseline blue.
COLORS = {
    "none": "#444444", "bn": "tab:blue", "bn_ws": "tab:green", "bn_wn": "tab:purple",
    "bn_wc": "tab:red", "bn_e": "#8b0000", "gn": "tab:cyan", "gn_wc": "tab:pink",
    "ln": "tab:olive", "ln_wc": "tab:brown", "ws": "tab:green", "wn": "tab:purple",
    "wc": "tab:red", "enorm": "tab:orange", "bn_enorm": "tab:red",
}
# The held-out curve of each task: (metrics.csv column, axis label).
HELD_OUT = {CLASSIFICATION: ("test_acc", "test accuracy (%)"),
            NERF: ("val_psnr", "validation PSNR (dB)"), SHAPE: ("test_iou", "test IoU")}
_SPARE = ["#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"]
MAX_COLS = 4


def _color(norm) -> str:
    # crc32, not hash(): str hashes change between processes, colours must not.
    return COLORS.get(norm) or _SPARE[zlib.crc32(str(norm).encode()) % len(_SPARE)]


def _panel_keys(df: pd.DataFrame) -> list[str]:
    # A field run is named by its scene or shape (which implies model and dataset).
    subjects = [c for c in FIELD_TASKS.values() if c in df and df[c].notna().any()]
    fields_only = bool(subjects) and df[subjects].notna().any(axis=1).all()
    keys = ([] if fields_only else ["model", "dataset"]) + subjects
    if df["depth"].notna().any():
        keys.append("depth")  # ENorm FC: one panel per depth, never pooled
    if df["batch_size"].nunique() > 1:
        keys.append("batch_size")  # the small-batch studies: one panel per batch size
    if df["experiment"].nunique(dropna=False) > 1:
        keys.insert(0, "experiment")  # different protocols are never pooled either
    return keys


def _title(keys, values) -> str:
    values = values if isinstance(values, tuple) else (values,)
    label = {"depth": "p={}", "batch_size": "batch {}"}
    parts = [label.get(k, "{}").format(v) for k, v in zip(keys, values)
             if not (k in ("depth", *FIELD_TASKS.values()) and pd.isna(v))]
    return " / ".join(parts)


def _panel_order(values) -> tuple:
    """Panels in reading order: numbers (depths, batch sizes) by value, names by name."""
    values = values if isinstance(values, tuple) else (values,)
    return tuple((0, float(v), "") if isinstance(v, (int, float, np.number)) and not pd.isna(v)
                 else (1, 0.0, str(v)) for v in values)


def _panels(df: pd.DataFrame):
    keys = _panel_keys(df)
    return keys, sorted(df.groupby(keys, dropna=False, sort=False), key=lambda kv: _panel_order(kv[0]))


def _grid(n: int, rows_per_panel: int, w=4.2, h=3.2):
    ncols = min(n, MAX_COLS)
    nrows = math.ceil(n / ncols) * rows_per_panel
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes, ncols


def _norms(df) -> list:
    return sorted(df["norm"].dropna().unique(), key=norm_sort_key)


def _band(ax, df, x, y, norm, label=None, ls="-", spread="std", marker=None):
    """Mean over runs at each x, with a shaded ±std (or min-max) band."""
    agg = df.groupby(x)[y].agg(["mean", "std", "min", "max", "count"]).dropna(subset=["mean"])
    if agg.empty:
        return
    c = _color(norm)
    ax.plot(agg.index, agg["mean"], ls=ls, color=c, lw=1.8, label=label, marker=marker)
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
    """Training loss (top) and the held-out metric (bottom, `HELD_OUT`) vs epoch, per
    model/dataset, scene or shape.

    One figure per experiment preset (``curves.png``, or ``curves_<preset>.png`` when
    several are given; ``curves_<preset>_<task>.png`` for a preset of several tasks).
    Unfinished runs are left out by default, as in the tables: a mean over a seed set
    that shrinks mid-curve would jump.
    """
    if not include_unfinished and len(curves):
        curves = curves[curves["finished"].astype(bool)]
    if curves.empty:
        return []
    task = curves["task"].fillna(CLASSIFICATION) if "task" in curves else CLASSIFICATION
    curves = curves.assign(experiment=curves["experiment"].fillna("none"), task=task)
    groups = sorted(curves.groupby(["experiment", "task"]), key=lambda kv: kv[0])
    files = []
    for (exp, task), df in groups:
        stem = "curves" if len(groups) == 1 else f"curves_{_safe(exp)}"
        if (curves["experiment"] == exp).sum() > len(df):  # the preset mixes tasks
            stem += f"_{task}"
        files += _curves_figure(df, Path(out), stem, formats, exp, task)
    return files


def _curves_figure(curves, out, stem, formats, exp, task) -> list[Path]:
    held_out, held_label = HELD_OUT[task]
    keys, panels = _panels(curves)
    fig, axes, ncols = _grid(len(panels), 2)
    for i, (values, g) in enumerate(panels):
        r, c = 2 * (i // ncols), i % ncols
        loss_ax, eval_ax = axes[r, c], axes[r + 1, c]
        for norm in _norms(g):
            gn = g[g["norm"] == norm]
            label = f"{norm_label(norm, gn)} ({gn['run_dir'].nunique()} runs)"
            _band(loss_ax, gn, "epoch", "train_loss", norm, label)
            # Epochs without evaluation hold no value: the line joins those that do,
            # each marked.
            if held_out in gn:
                sparse = gn[held_out].isna().any()
                _band(eval_ax, gn, "epoch", held_out, norm, label, marker="." if sparse else None)
        if (g["train_loss"] > 0).all():
            loss_ax.set_yscale("log")
        title = _title(keys, values)
        loss_ax.set(title=title, xlabel="epoch", ylabel="training loss (log)")
        eval_ax.set(title=title, xlabel="epoch", ylabel=held_label)
        loss_ax.legend(fontsize=7, loc="upper right")
        if eval_ax.lines:
            eval_ax.legend(fontsize=7, loc="lower right")
        else:
            eval_ax.text(0.5, 0.5, f"no {held_out} logged", ha="center", va="center",
                         transform=eval_ax.transAxes)
        for ax in (loss_ax, eval_ax):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    last = len(panels) % ncols
    if last:
        _hide_unused(axes, last, ncols, slice(-2, None))
    # One column of panels is narrow: the title then takes two lines.
    fig.suptitle(f"{exp}: training loss and {held_label.split(' (')[0]}"
                 f"{' ' if ncols > 1 else chr(10)}(mean over seeds, band = ±1 std)", fontsize=10)
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
                        label=f"{norm_label(norm, g)} (n={int(agg['count'].min())}"
                              f"-{int(agg['count'].max())} per depth)"
                        if agg["count"].nunique() > 1 else
                        f"{norm_label(norm, g)} (n={int(agg['count'].iloc[0])})")
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
        reparametrized = False
        for norm in _norms(g):
            gn = g[g["norm"] == norm]
            _band(ax, gn, "epoch", "kappa_eff", norm,
                  f"{norm_label(norm, gn)} ({gn['run_dir'].nunique()} runs)", spread="minmax")
            # Without a weight reparametrization the effective weight is the raw one.
            if not np.allclose(gn["kappa_eff"], gn["kappa_raw"], equal_nan=True):
                _band(ax, gn, "epoch", "kappa_raw", norm, None, ls="--", spread="minmax")
                reparametrized = True
        ax.set_yscale("log")
        ax.set(title=_title(keys, values), xlabel="epoch (0 = before training)",
               ylabel="median layer condition number κ₂ (log)")
        ax.grid(alpha=0.3, which="both")
        styles = [Line2D([], [], color="k", ls="-", label="effective weight E(W)W"),
                  Line2D([], [], color="k", ls="--", label="raw weight W")] if reparametrized else []
        ax.legend(handles=ax.get_legend_handles_labels()[0] + styles, fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(panels) % ncols:
        _hide_unused(axes, len(panels) % ncols, ncols, slice(-1, None))
    fig.suptitle("Median over layers, mean over seeds (band = seed min-max)", fontsize=9)
    return _save(fig, Path(out), "conditioning", formats)


@dataclass
class GalleryRow:
    """One row of a gallery: a scene or shape, each norm's run and its picture (a test
    render, or the surface's mesh.png), and for NeRF the view and its ground truth."""

    name: str
    runs: dict = field(repr=False)  # norm -> its run (a load_runs row)
    pictures: dict = field(default_factory=dict)  # norm -> PNG path, or None
    view: str | None = None
    truth: Path | None = None


# What a gallery shows per task, and where a run keeps it.
_PICTURES = {NERF: ("test renders", lambda run: rendered_views(run.run_dir, run.renders)),
             SHAPE: ("mesh pictures",
                     lambda run: mesh_picture(run.run_dir, run.mesh, run.mesh_picture))}


def _pick_view(views: list[dict[str, dict[str, Path]]]) -> str | None:
    """The first view (natural order) that every run rendered beside its ground truth;
    else the first that any run has in a pair; else the first of any."""
    paired = [{v for v, files in vs.items() if {"pred", "gt"} <= set(files)} for vs in views]
    pool = (set.intersection(*paired) if paired else set()) or set().union(*paired) \
        or set().union(*views)
    return min(pool, key=view_order) if pool else None


def _gallery_row(name: str, g: pd.DataFrame, found: dict, task: str) -> GalleryRow:
    # One seed has one run per norm; the first by directory should there be more.
    by_norm = {n: runs.iloc[0] for n, runs in g.sort_values("run_dir").groupby("norm")}
    if task == SHAPE:
        return GalleryRow(name, by_norm, {n: found[r.run_dir] for n, r in by_norm.items()})
    view = _pick_view([found[r.run_dir] for r in by_norm.values()])
    shots = {n: found[r.run_dir].get(view, {}) for n, r in by_norm.items()}
    truth = next((shot["gt"] for shot in shots.values() if "gt" in shot), None)
    return GalleryRow(name, by_norm, {n: shot.get("pred") for n, shot in shots.items()},
                      view, truth)


def gallery_rows(runs: pd.DataFrame, task: str, seed: int | None = None
                 ) -> tuple[int | None, list[GalleryRow]]:
    """The pictures a gallery of ``task`` (nerf or shape) shows: the finished runs of one
    seed (``seed``, else the seed whose runs have the most pictures, the lowest on a
    tie), a row per scene or shape; no rows where that seed's runs have no picture."""
    runs = runs[runs["finished"].astype(bool) & (runs["task"] == task)]
    found = {run.run_dir: _PICTURES[task][1](run) for run in runs.itertuples()}
    has = runs["run_dir"].map(lambda d: bool(found[d]))
    if seed is None and has.any():
        counts = has.groupby(runs["seed"]).sum()
        seed = int(counts.idxmax())  # the first (lowest) seed of the most pictures
    chosen = runs[runs["seed"].eq(seed).fillna(False)]
    if not has[chosen.index].any():
        return seed, []
    groups = sorted(chosen.groupby(FIELD_TASKS[task]), key=lambda kv: str(kv[0]))
    return seed, [_gallery_row(str(name), g, found, task) for name, g in groups]


def _imshow(ax, png: Path | None, title: str, missing: str) -> None:
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    if png is None:
        ax.text(0.5, 0.5, missing, ha="center", va="center", fontsize=8, color="0.4",
                transform=ax.transAxes)
    else:
        ax.imshow(mpimg.imread(png))


def _scores(run, task: str) -> str:
    """A panel's numbers: NeRF's test PSNR; a shape's IoU and Chamfer distance (CD)."""
    if run is None:
        return ""
    shown = ([("test PSNR {:.2f} dB", run.final_test_psnr)] if task == NERF else
             [("IoU {:.4f}", run.final_test_iou), ("CD {:.2e}", run.final_test_chamfer)])
    text = ", ".join(fmt.format(v) for fmt, v in shown if pd.notna(v))
    return f"\n{text}" if text else ""


def _gallery_figure(rows: list[GalleryRow], norms: list, task: str, seed, out: Path,
                    formats) -> list[Path]:
    lead = 1 if task == NERF else 0  # NeRF: the ground truth first
    fig = Figure(figsize=(2.6 * (lead + len(norms)), 2.9 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), lead + len(norms), squeeze=False)
    for row, row_axes in zip(rows, axes):
        if lead:
            _imshow(row_axes[0], row.truth, f"{row.name}: ground truth\nview {row.view}",
                    "no ground truth")
        for ax, norm in zip(row_axes[lead:], norms):
            run = row.runs.get(norm)
            _imshow(ax, row.pictures.get(norm), f"{row.name}: {norm_label(norm)}"
                    f"{_scores(run, task)}", "no run" if run is None else "no picture")
    fig.suptitle(f"Test renders, seed {seed} (one view per scene)" if task == NERF else
                 f"Extracted surfaces, seed {seed} (CD: Chamfer distance, lower is better)",
                 fontsize=10)
    return _save(fig, out, f"gallery_{task}", formats)


def plot_gallery(runs: pd.DataFrame, out, formats=("png",), seed: int | None = None
                 ) -> list[Path]:
    """For one seed, each normalizer's result side by side, a row per scene or shape
    (`gallery_rows`): ``gallery_nerf`` (a test view per scene, its ground truth first)
    and ``gallery_shape`` (each extracted surface's ``mesh.png``).

    Field runs whose directories hold no such pictures get no figure, with a warning
    that says so; a panel whose run or picture is absent says so.
    """
    files = []
    for task, (what, _) in _PICTURES.items():
        done = runs[runs["finished"].astype(bool) & (runs["task"] == task)] \
            if "task" in runs else runs.iloc[0:0]
        if done.empty:
            continue
        chosen, rows = gallery_rows(done, task, seed)
        if not rows:
            warnings.warn(f"wcnorm: no {what} in the {task} runs"
                          + (f" of seed {chosen}" if chosen is not None else "")
                          + f": no gallery_{task} figure", stacklevel=2)
            continue
        # Every norm of the task gets its column: one without a run of this seed says so.
        files += _gallery_figure(rows, _norms(done), task, chosen, Path(out), formats)
    return files


# Where `copy_pictures` puts a task's pictures, below the output folder.
PICTURE_FOLDERS = {NERF: "renders", SHAPE: "meshes"}
GROUND_TRUTH = "ground_truth"


def _copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest, Path(src).read_bytes())
    return dest


def copy_pictures(runs: pd.DataFrame, out, seed: int | None = None) -> list[Path]:
    """The pictures behind the galleries, whole, for the gallery's seed: every test view
    each NeRF run rendered, ``renders/<scene>/<norm>/<view>.png``, their ground truth in
    ``renders/<scene>/ground_truth/``, and the picture of each shape run's surface,
    ``meshes/<shape>/<norm>.png``. A task's folder is written anew (no picture of a run
    that is gone stays behind). Returns the files written."""
    files = []
    for task, folder in PICTURE_FOLDERS.items():
        done = runs[runs["finished"].astype(bool) & (runs["task"] == task)] \
            if "task" in runs else runs.iloc[0:0]
        rows = gallery_rows(done, task, seed)[1] if len(done) else []
        if not rows:
            continue
        root = Path(out) / folder
        shutil.rmtree(root, ignore_errors=True)
        for row in rows:
            for norm, run in row.runs.items():
                if task == SHAPE:
                    png = row.pictures.get(norm)
                    files += [_copy(png, root / row.name / f"{norm}.png")] if png else []
                    continue
                for view, shots in rendered_views(run.run_dir, run.get("renders")).items():
                    for role, png in shots.items():
                        dest = root / row.name / (GROUND_TRUTH if role == "gt" else str(norm)) / f"{view}.png"
                        if not dest.exists():  # the ground truth: once per view
                            files.append(_copy(png, dest))
    return files


def plot_all(paths, out, formats=("png",)) -> list[Path]:
    """Every figure the runs below ``paths`` support, their runs labelled as `wcnorm
    report` labels them (a data file's runs after the file); returns the written files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable folders: reported with the curves
        runs = load_report_runs(paths)
    curves = load_curves(paths)  # its warnings: once, here
    runs = relabel(runs)[0]
    curves = label_per_run(curves, runs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cond = label_per_run(load_conditioning(paths), runs)
    files = plot_curves(curves, out, formats)
    files += plot_fc_depth(runs, out, formats)
    files += plot_conditioning(cond, out, formats)
    files += plot_gallery(runs, out, formats)
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
