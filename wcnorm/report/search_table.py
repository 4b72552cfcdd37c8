"""`wcnorm search`: the best learning rate of each grid point of a search, from its runs.

A search (`wcnorm train -m experiment=NAME +search=lr`, training.lr_search) leaves one
run directory per trial. Its trials are the runs with a validation split
(`dataset.val_split` > 0); runs whose configs differ in nothing but the tuned keys
(TUNED) are the trials of one grid point. For each point: the trial with the highest
validation value at the final epoch (a classifier's accuracy, a radiance field's PSNR, an
occupancy field's IoU: outputs.search_objective), the trials behind it, and the command
that runs the preset at that rate, on the whole training set and with all its seeds.

    search.csv          one row per grid point
    search_trials.csv   one row per trial
    search.md           both, and the commands

A search run in parts (run directories that did not outlive an earlier part) is tabled
whole with ``--prior`` an earlier search_trials.csv: its trials of the grid points that
no run directory here has are carried over, as `wcnorm report --prior` carries runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

from ..outputs import NOT_IDENTITY, atomic_write_text, read_result, search_objective
from ..presets import swept_keys
from .runs import load_runs
from .runs_table import rel
from .table import norm_label, norm_sort_key

# What a search tunes: trials of one grid point differ in these alone.
TUNED = ("optim.lr", "optim.weight_decay")
VAL_SPLIT = "dataset.val_split"
# A point's keys that every table names (the run columns of report.runs), then those the grid varies.
NAMED = ("experiment", "budget", "model", "dataset", "norm")
# The tables' column of the objective, by the run's headline metric: result.json's
# final_val_acc -> val_acc (%), final_val_psnr -> val_psnr (dB), final_val_iou -> val_iou.
VALUES = {"val_acc": "validation accuracy (%)", "val_psnr": "validation PSNR (dB)",
          "val_iou": "validation IoU"}


def value_column(trials: pd.DataFrame) -> str:
    """The objective's column of a trials table (the one of VALUES it has)."""
    return next(c for c in VALUES if c in trials)


def _cfg(column: str) -> str:
    return column.removeprefix("cfg.")


def _point_keys(df: pd.DataFrame) -> list[str]:
    """The config keys that make a grid point: all but the tuned ones and those outside
    a run's identity (outputs.NOT_IDENTITY)."""
    return [c for c in df.columns if c.startswith("cfg.") and _cfg(c) not in TUNED
            and not any(_cfg(c) == k or _cfg(c).startswith(k + ".") for k in NOT_IDENTITY)]


def varying_keys(points: pd.DataFrame) -> list[str]:
    """The config keys that tell the points apart, less those a group's name implies
    (the classes of `dataset=cifar100`) and those every table names already."""
    varying = [_cfg(c) for c in points.columns if points[c].nunique(dropna=False) > 1]
    # config groups chosen by name (`dataset=cifar100`): the keys under them follow from it
    chosen = {k.split(".")[0] for k in varying if k.count(".") == 1 and k.endswith(".name")}
    return [k for k in varying if k.split(".")[0] not in chosen and k not in NAMED]


def preset_keys(trials: pd.DataFrame) -> list[str]:
    """The keys the trials' preset sweeps (`trainer.batch_size`, `model.depth`), those the
    trials have: a point names them even where a narrowed search kept one value, so that
    its rate and command say which of the preset's points it is."""
    keys = []
    for preset in trials["experiment"].dropna().unique():
        try:
            keys += [k for k in swept_keys(str(preset)) if f"cfg.{k}" in trials and k not in keys]
        except ValueError:  # no preset of that name: the keys the trials vary name its points
            pass
    return keys


def load_trials(paths, preset: str | None = None) -> pd.DataFrame:
    """One row per trial: its run's columns (report.runs), `point` (its grid point's
    number) and its objective (`val_acc`, `val_psnr` or `val_iou`: VALUES; NaN for a
    trial that did not finish). Trials of tasks with different objectives are refused."""
    df = load_runs(paths)
    col = f"cfg.{VAL_SPLIT}"
    if df.empty or col not in df:
        return df.iloc[0:0]
    df = df[pd.to_numeric(df[col], errors="coerce").fillna(0) > 0]
    if preset is not None:
        df = df[df["experiment"] == preset]
    df = df.reset_index(drop=True)
    if df.empty:
        return df
    results = [read_result(Path(d) / "result.json") or {} for d in df["run_dir"]]
    objectives = {search_objective(r) for r in results if r}
    if len(objectives) > 1:
        raise ValueError(f"the trials maximize different objectives "
                         f"({', '.join(sorted(objectives))}): give --preset, one preset at a time")
    value = (objectives.pop() if objectives else "final_val_acc").removeprefix("final_")
    df[value] = [r.get(f"final_{value}") if done else None for r, done in zip(results, df["finished"])]
    df[value] = pd.to_numeric(df[value], errors="coerce")
    keys = _point_keys(df)
    df["point"] = df.groupby(df[keys].astype(str).apply(tuple, axis=1), sort=False).ngroup()
    return df


def with_prior(trials: pd.DataFrame, prior: pd.DataFrame) -> pd.DataFrame:
    """``trials`` (a `load_trials` frame) and the trials of an earlier search_trials.csv
    (``prior``) that ``trials`` did not redo (another grid point, or another rate of the
    same point): their rows as the table wrote them, their config keys made `cfg.` columns again, every key they do not name
    taken from ``trials`` where it is the same for all of them (the same preset's config).
    A point is named by the table's own columns: the named keys and the keys it varied."""
    value = value_column(trials)
    if value not in prior:
        raise ValueError(f"the prior trials have no {value} column: they are of another search")
    prior = prior.rename(columns={c: f"cfg.{c}" for c in prior.columns if "." in c})
    keys = [c for c in prior.columns if c in trials and (c in NAMED or (c.startswith("cfg.") and _cfg(c) not in TUNED))]
    fill = {c: trials[c].iloc[0] for c in trials.columns
            if c.startswith("cfg.") and c not in prior and trials[c].astype(str).nunique() == 1}
    prior = pd.concat([prior, pd.DataFrame(fill, index=prior.index)], axis=1).assign(finished=prior[value].notna())

    rates = [c for c in (f"cfg.{k}" for k in TUNED) if c in prior and c in trials]

    def name(df: pd.DataFrame, cols: list[str]) -> pd.Series:
        return df[cols].astype(str).apply(tuple, axis=1) if len(df) else pd.Series(dtype=object)

    # a rate this part trained again at a point: this part's trial; other rates are kept
    prior = prior[~name(prior, keys + rates).isin(set(name(trials, keys + rates)))]
    points = dict(zip(name(trials, keys), trials["point"]))
    fresh = trials["point"].max() + 1 + prior.groupby(name(prior, keys), sort=False).ngroup()
    prior = prior.assign(point=[points.get(n, i) for n, i in zip(name(prior, keys), fresh)])
    return pd.concat([trials, prior], ignore_index=True)


def _tuned(df: pd.DataFrame) -> list[str]:
    """The tuned keys the trials vary (optim.lr; optim.weight_decay if it was searched too)."""
    return [k for k in TUNED if f"cfg.{k}" in df and df[f"cfg.{k}"].nunique() > 1] or [TUNED[0]]


def _number(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def tuned_command(best: pd.Series, extra: list[str], tuned: list[str]) -> str:
    """`wcnorm train -m experiment=... model=... norm=... optim.lr=...`: the point at its best
    rate, for the preset's seeds and without the validation split (the rate was chosen on
    it; the preset trains on the whole training set and reports the test set)."""
    words = ["wcnorm", "train", "-m"]
    words += [f"{k}={best[k]}" for k in NAMED if pd.notna(best[k])]
    words += [f"{k}={_number(best[f'cfg.{k}'])}" for k in (*extra, *tuned)]
    return shlex.join(words)


def search_tables(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per grid point: its keys, the best trial's rate and validation accuracy, the
    trials it rests on, the command for the preset at that rate; one row per trial)."""
    tuned, value = _tuned(trials), value_column(trials)
    extra = varying_keys(trials.groupby("point").first()[_point_keys(trials)])
    extra += [k for k in preset_keys(trials) if k not in extra]
    order = trials["norm"].map(lambda n: norm_sort_key(n)[0])
    keys = ["experiment", "budget", "model", "dataset", *(f"cfg.{k}" for k in extra), "_o", "norm",
            f"cfg.{tuned[0]}"]
    trials = trials.assign(_o=order).sort_values(keys, kind="stable", na_position="first")
    rows = []
    for _, g in trials.groupby("point", sort=False):
        done = g[g[value].notna()]
        # the highest validation value; of equal ones, the lowest rate
        best = done.sort_values([value, f"cfg.{tuned[0]}"], ascending=[False, True]).iloc[0] if len(done) else None
        row = {k: g.iloc[0][k] for k in NAMED} | {k: g.iloc[0][f"cfg.{k}"] for k in extra}
        row |= {k: best[f"cfg.{k}"] if best is not None else None for k in tuned}
        row |= {value: best[value] if best is not None else None, "trials": len(g), "finished": len(done),
                "best_run": best["run_dir"] if best is not None else None,
                "command": tuned_command(best, extra, tuned) if best is not None else None}
        rows.append(row)
    columns = {f"cfg.{k}": k for k in (*extra, *tuned)}
    timed = ["wall_time_s"] if "wall_time_s" in trials else []
    table = trials.rename(columns=columns)[[*NAMED, *extra, *tuned, value, "status", *timed, "run_dir"]]
    return pd.DataFrame(rows), table.reset_index(drop=True)


def _md(df: pd.DataFrame) -> str:
    df = df.drop(columns=[c for c in ("experiment", "budget") if df[c].isna().all()])  # no preset
    cells = df.astype(object).where(df.notna(), "")
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(_number(v) for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def _cost(trials: pd.DataFrame) -> list[str]:
    """The search's cost: the trials' training time summed (each trial's wall clock, from
    its result.json), as a line; none where no trial recorded it."""
    if "wall_time_s" not in trials or trials["wall_time_s"].isna().all():
        return []
    t = pd.to_numeric(trials["wall_time_s"], errors="coerce")
    return [f"- cost: {t.sum() / 60:.1f} minutes of training in all ({t.notna().sum()} trials timed, "
            f"{t.median():.0f} s each at the median; each trial's own wall clock)"]


def to_markdown(points: pd.DataFrame, trials: pd.DataFrame, split: list[float], command: str) -> str:
    shown = points.drop(columns=["best_run", "command"]).assign(norm=points["norm"].map(norm_label))
    value = value_column(trials)
    return "\n".join([
        "## Learning-rate search: the best rate of each grid point", "",
        f"- value of a trial: the {VALUES[value]} at the final epoch, on dataset.val_split="
        f"{', '.join(map(str, split))} of the training set; the test set is not used",
        f"- trials: {len(trials)} run directories, {int(trials[value].notna().sum())} finished "
        "(the others diverged, failed or are still running)", *_cost(trials),
        f"- command: `{command}`", "",
        _md(shown), "",
        "### Run the preset at these rates", "",
        "Each line trains one grid point at its rate on the whole training set, for all the "
        "preset's seeds. Add any other override the search had (not `+search=lr`).", "",
        "```", *points["command"].dropna(), "```", "",
        "### Trials", "", _md(trials.drop(columns=["run_dir"])), ""])


def write_search(trials: pd.DataFrame, command: str, out_dir, runs_root=None,
                 prior: pd.DataFrame | None = None) -> tuple[str, list[Path]]:
    """Write search.csv, search_trials.csv and search.md; return the Markdown and the files.
    Run directories are written relative to ``runs_root`` (no machine's paths in results/);
    ``prior``: an earlier search_trials.csv, its points that ``trials`` has not carried over."""
    if runs_root is not None:
        trials = trials.assign(run_dir=[rel(d, Path(runs_root)) for d in trials["run_dir"]])
    if prior is not None:
        trials = with_prior(trials, prior)
    points, table = search_tables(trials)
    text = to_markdown(points, table, sorted(set(trials[f"cfg.{VAL_SPLIT}"])), command)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"search.csv": points.to_csv(index=False, float_format="%.4g"),
             "search_trials.csv": table.to_csv(index=False, float_format="%.4g"), "search.md": text}
    for name, content in files.items():
        atomic_write_text(out / name, content)
    return text, [out / name for name in files]


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="wcnorm search", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="the search's run directories, or folders holding them "
                                            "(a search writes below runs/lr_search)")
    ap.add_argument("--out", default="results/lr_search", help="output folder")
    ap.add_argument("--preset", default=None, help="only the trials of this experiment preset")
    ap.add_argument("--prior", type=Path, default=None, metavar="SEARCH_TRIALS_CSV",
                    help="an earlier part's search_trials.csv: its trials of the grid points "
                         "that no run directory here has are tabled too")
    args = ap.parse_args(argv)
    if args.prior is not None and not args.prior.is_file():
        ap.error(f"--prior {args.prior}: no such file")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        trials = load_trials(args.runs, args.preset)
        if trials.empty:
            print("wcnorm search: no trials found (run directories with dataset.val_split > 0)"
                  + (f" of preset {args.preset}" if args.preset else ""), file=sys.stderr)
            return 1
        prior = pd.read_csv(args.prior) if args.prior is not None else None
        root = args.runs[0] if len(args.runs) == 1 else None
        text, files = write_search(trials, shlex.join(["wcnorm", "search", *argv]), args.out, root, prior)
    except ValueError as e:
        print(f"wcnorm search: {e}", file=sys.stderr)
        return 2
    print(text)
    print("wrote: " + ", ".join(map(str, files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
