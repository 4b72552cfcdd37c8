"""Load run directories (written by the trainer) into pandas.

A run directory holds ``config.yaml`` and ``metrics.csv`` while it trains and gains
``result.json`` when it finishes. Everything here reads only those files, so tables
and figures can be rebuilt anywhere from copied run folders.

Three tasks write run directories: classification, NeRF (a radiance field fitted to
one scene) and 3D shape modelling (an occupancy field fitted to one shape). A run's
``task`` column says which; a NeRF run names its scene in ``scene``, a shape run its
shape in ``shape`` (both empty for classification).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..outputs import dotted_get

# What a run's weight method acted on (`method_scope`).
SCOPE_COLUMNS = ["wm_layers", "wm_cancelled", "method_class", "cfg.norm.act"]
# Columns that identify a run's cell in a table or a line in a figure.
ID_COLUMNS = ["run_dir", "experiment", "budget", "task", "model", "dataset", "scene", "shape",
              "depth", "batch_size", "norm", "seed"]

CLASSIFICATION, NERF, SHAPE = "classification", "nerf", "shape"
# field task -> the run column that names what a run of it was fitted to.
FIELD_TASKS = {NERF: "scene", SHAPE: "shape"}
# A field run is known by its model: only a scene (dataset=blender or llff) trains a
# NeRF, only a mesh (dataset=mesh) an occupancy network; the trainer refuses the rest.
_FIELD_MODELS = {"nerf": NERF, "occupancy": SHAPE}

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

# The numbers of result.json: the last epoch's (final_*), the headline metric's best
# epoch (best_*), and what a field run measures once at the end (test views, the mesh).
METRIC_FIELDS = [
    "final_test_acc", "final_test_loss", "final_train_loss", "best_test_acc",  # classification
    "final_train_psnr", "final_val_psnr", "final_val_ssim", "best_val_psnr",  # NeRF, per epoch
    "final_test_psnr", "final_test_ssim",  # NeRF, the test views at the end
    "final_train_acc", "final_test_iou", "best_test_iou",  # shape, per epoch
    "final_test_chamfer",  # shape, the extracted surface at the end (lower is better)
]
_RESULT_FIELDS = [
    *METRIC_FIELDS, "metric", "best_epoch", "wall_time_s", "num_params", "torch_version",
    "cuda_version", "device_name", "git_commit", "date",
    "renders", "mesh", "mesh_picture",  # paths of a field run's pictures, below its directory
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


def run_task(cfg: dict) -> str:
    """classification, nerf or shape: the task a run's config describes."""
    return _FIELD_MODELS.get(dotted_get(cfg, "model.name"), CLASSIFICATION)


def _stem(path) -> str | None:
    if not isinstance(path, str) or not path:
        return None
    return Path(path).stem or None


def field_subject(cfg: dict) -> str | None:
    """The scene or shape a field run was fitted to: ``dataset.scene`` or
    ``dataset.shape``, else the name of its data file or folder (``.../lego`` -> lego,
    ``.../armadillo.ply`` -> armadillo). None for classification runs."""
    if run_task(cfg) == CLASSIFICATION:
        return None
    for key in ("dataset.scene", "dataset.shape"):
        if dotted_get(cfg, key) not in (None, ""):
            return str(dotted_get(cfg, key))
    return _stem(dotted_get(cfg, "dataset.root")) or _stem(dotted_get(cfg, "dataset.path"))


# The trainer names a render <view>_pred.png and its ground truth <view>_gt.png. Other
# namings are read by words that say what a PNG holds, wherever they stand in its name
# (gt_r_0.png, 000_rgb_gt.png) or as its folder's name (pred/r_0.png).
_ROLE_SUFFIX = re.compile(r"(.+)_(pred|gt)", re.IGNORECASE)
_TRUTH_WORDS = {"gt", "target", "truth", "groundtruth", "reference", "ref"}
_PREDICTION_WORDS = {"pred", "prediction", "rgb", "render", "rendered", "output", "est"}


def _view_and_role(png: Path) -> tuple[str, str] | None:
    """(view, "gt" | "pred") of a render: the file name without its role words names
    the view, so a prediction and its ground truth pair by their common rest."""
    exact = _ROLE_SUFFIX.fullmatch(png.stem)
    if exact:
        return exact[1], exact[2].lower()
    words = [w for w in re.split(r"[_\-.]+", png.stem) if w]
    lower = [w.lower() for w in words]
    view = "_".join(w for w, lw in zip(words, lower)
                    if lw not in _TRUTH_WORDS | _PREDICTION_WORDS) or png.parent.name or "view"
    for role, marks in (("gt", _TRUTH_WORDS), ("pred", _PREDICTION_WORDS)):
        if marks & set(lower) or png.parent.name.lower() in marks:
            return view, role
    return None


def view_order(view: str) -> list:
    """Natural order of view names: r_2 before r_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", view)]


# What result.json may name inside its run directory (paths relative to it).
_NAMED_PATHS = ("renders", "mesh", "mesh_picture")


def inside_run(run_dir, path, what: str) -> Path | None:
    """``path`` if it lies inside ``run_dir``, else None with a warning naming the run.
    A run directory may come from someone else: what it names is read (and copied into
    a report) only within it, never an absolute path, a ``..`` or a symlink out of it."""
    run_dir, path = Path(run_dir), Path(path)
    full = path if path.is_absolute() else run_dir / path
    try:
        inside = ".." not in path.parts and full.resolve().is_relative_to(run_dir.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if inside:
        return full
    warnings.warn(f"wcnorm: {run_dir}: {what} '{path}' lies outside the run directory; "
                  "ignored (a run directory names nothing outside itself)", stacklevel=2)
    return None


def rendered_views(run_dir, renders=None) -> dict[str, dict[str, Path]]:
    """A NeRF run's rendered test views, ``{view: {"pred": png, "gt": png}}`` (either may
    be absent), in natural view order: the PNGs below result.json's ``renders`` folder
    (its ``test/`` subfolder where it has one), else below ``renders/``. Left out: the
    val views rendered after an epoch (``epoch_<NNN>/``), and files whose name says
    neither prediction nor ground truth (depth maps, say)."""
    named = renders if isinstance(renders, str) and renders else "renders"
    base = inside_run(run_dir, named, "result.json's renders")
    folder = base / "test" if base is not None and (base / "test").is_dir() else base
    views: dict[str, dict[str, Path]] = {}
    for png in sorted(folder.rglob("*.png")) if folder is not None and folder.is_dir() else []:
        rel = png.relative_to(folder)
        found = _view_and_role(rel)
        if found and not any(part.startswith("epoch_") for part in rel.parts[:-1]) \
                and inside_run(run_dir, png.relative_to(run_dir), "the render"):
            views.setdefault(found[0], {}).setdefault(found[1], png)
    return dict(sorted(views.items(), key=lambda kv: view_order(kv[0])))


def mesh_picture(run_dir, mesh=None, picture=None) -> Path | None:
    """A shape run's picture of its extracted surface: result.json's ``mesh_picture``,
    else ``mesh.png`` (or ``<stem>.png``) beside its ``mesh``, else the first
    ``mesh.png`` in the run directory; None where there is none."""
    run_dir = Path(run_dir)
    named = [run_dir / picture] if isinstance(picture, str) and picture else []
    if isinstance(mesh, str) and mesh:
        named += [(run_dir / mesh).with_name("mesh.png"), (run_dir / mesh).with_suffix(".png")]
    found = [png for png in named if png.is_file()] + sorted(run_dir.rglob("mesh.png"))
    return next((png for png in found
                 if inside_run(run_dir, png.relative_to(run_dir) if png.is_relative_to(run_dir) else png,
                               "the mesh picture")), None)


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
    for column in df.columns:  # the trainer writes numbers only: anything else was edited in
        numbers = pd.to_numeric(df[column], errors="coerce")
        bad = numbers.isna() & df[column].notna()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise RunReadError(f"{f}: row {row + 1}, column '{column}' holds {df[column].iloc[row]!r}, "
                               "not a number")
        df[column] = numbers
    return df


def _cross_check(run_dir: Path, result: dict, metrics: pd.DataFrame) -> None:
    """Refuse a finished run whose result.json disagrees with its metrics.csv: the trainer
    writes both from one history, so a disagreement means one was edited by hand."""
    last = metrics.iloc[-1]
    pairs = [("epochs", "epoch")] + [(f"final_{c}", c) for c in metrics.columns if c != "epoch"]
    for key, column in pairs:
        said, logged = result.get(key), pd.to_numeric(last.get(column), errors="coerce")
        if key not in result or pd.isna(logged):
            continue
        try:
            agree = bool(np.isclose(float(said), float(logged), rtol=1e-6, atol=1e-9))
        except (TypeError, ValueError):
            agree = False
        if not agree:
            raise RunReadError(
                f"{run_dir}: result.json and metrics.csv disagree on {key} (result.json {said!r}, "
                f"metrics.csv's last epoch {logged!r}); one was edited, so the run is left out")


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
    row.update({col: dotted_get(cfg, key) for col, key in _CONFIG_FIELDS})
    if row["model"] is None or row["norm"] is None:
        raise RunReadError(f"{run_dir}: config lacks model.name or norm.name")
    row["task"] = run_task(cfg)
    for task, column in FIELD_TASKS.items():
        row[column] = field_subject(cfg) if row["task"] == task else None
    finished = result is not None and result.get("status") == "finished"
    if finished and metrics is not None and len(metrics):
        _cross_check(run_dir, result, metrics)
    row["finished"] = finished
    row["status"] = (result or {}).get("status", "unfinished")
    for key in _RESULT_FIELDS:
        row[key] = result.get(key) if result else None
    for key in _NAMED_PATHS:  # refused here once, with a warning; the pictures are then looked for inside
        if row[key] is not None and (not isinstance(row[key], str)
                                     or inside_run(run_dir, row[key], f"result.json's {key}") is None):
            row[key] = None
    if not finished:
        # Partial numbers must never leak into a mean: blank them.
        for key in (*METRIC_FIELDS, "best_epoch"):
            row[key] = np.nan
    n_done = 0 if metrics is None else len(metrics)
    row["epochs_done"] = n_done
    row["last_test_acc"] = metrics["test_acc"].iloc[-1] if n_done and "test_acc" in metrics else np.nan
    # Mean training loss over epochs = area under the loss curve: small when the loss
    # falls fast. Used by the "fastest-falling training loss" claim.
    row["mean_train_loss"] = (metrics["train_loss"].mean()
                              if finished and n_done and "train_loss" in metrics else np.nan)
    row.update(method_scope(result, cfg))
    for when, stats in ((result or {}).get("conditioning") or {}).items():
        for key, value in (stats or {}).items():
            row[f"cond_{when}_{key}"] = value
    row.update({f"cfg.{k}": v for k, v in _flatten(cfg).items()})
    return row


def method_scope(result: dict | None, cfg: dict) -> dict:
    """What a run's weight method acted on, from the record the run wrote (result.json's
    ``weight_method``): ``wm_layers`` (layers carrying it), ``wm_cancelled`` (those a
    following per-channel normalization cancels exactly), and ``method_class``, the
    function of the raw weights the run trained: two runs of one model and data with the
    same class are the same method by construction, whatever their names (BN + WC with
    the classifier skipped is BN). A method cancelled on every layer counts as absent.
    A run without the record (unfinished, or older than it) gets no class: it is never
    declared equivalent to anything."""
    record = (result or {}).get("weight_method") or {}
    if "cancelled_layers" not in record:
        return {"wm_layers": record.get("num_layers"), "wm_cancelled": None, "method_class": None}
    norm = cfg.get("norm") or {}
    acting = record.get("acting_layers") or []
    weight = "none" if not acting else \
        f"{record.get('method')}{json.dumps(record.get('options') or {}, sort_keys=True)}"
    enorm = norm.get("enorm") if (norm.get("enorm") or {}).get("enabled") else None
    klass = f"act={norm.get('act')}|weight={weight}|enorm={json.dumps(enorm, sort_keys=True)}"
    return {"wm_layers": record.get("num_layers"), "wm_cancelled": len(record["cancelled_layers"]),
            "method_class": klass}


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for col in ("depth", "seed", "epochs", "batch_size", "epochs_done", "best_epoch", "num_params",
                "wm_layers", "wm_cancelled"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("lr", *METRIC_FIELDS, "wall_time_s"):
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
    # and what labels a line: the method's scope (a method cancelled everywhere is "= BN")
    keys = ID_COLUMNS[1:] + ["finished"] + [c for c in SCOPE_COLUMNS if c in ids.columns]
    parts = [frame.assign(run_dir=run_dir, **{c: ids.at[run_dir, c] for c in keys})
             for run_dir, frame in per_run.items()]
    if not parts:
        return pd.DataFrame(columns=ID_COLUMNS + ["finished"])
    out = pd.concat(parts, ignore_index=True)
    for col in ("depth", "batch_size", "seed"):
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


# The columns a runs table must have to be read as runs (the rest are optional).
_RUNS_CSV_NEEDS = ("run_dir", "experiment", "model", "dataset", "norm", "seed", "status")


def read_runs_csv(path: str | Path) -> pd.DataFrame:
    """The runs of a results folder's ``runs.csv`` as ``load_runs`` frames them
    (``finished`` from ``status``, a missing id column empty, ``task`` classification
    where absent), for tables and claims rebuilt from it alone."""
    df = pd.read_csv(path)
    lacking = [c for c in _RUNS_CSV_NEEDS if c not in df.columns]
    if lacking:
        raise RunReadError(f"{path} is not a runs table: no column {', '.join(lacking)} "
                           "(write it with `wcnorm report`)")
    df["finished"] = df["status"] == "finished"
    for col in ID_COLUMNS:
        if col not in df.columns:
            df[col] = CLASSIFICATION if col == "task" else None
    df["task"] = df["task"].fillna(CLASSIFICATION)
    return _typed(df)
