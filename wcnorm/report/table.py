"""`wcnorm table`: result tables in the papers' layouts, with their provenance.

Every cell is a final number (classification: the last epoch's test accuracy), mean ±
sample std over seeds, with the number of finished runs it rests on. The best epoch is
reported in a separate table, labelled as such, and never used to pick anything. Cells
that the grid expects but no finished run fills are written as "missing" and listed by
name.

Neural-field runs get the field papers' layout: one row per scene (NeRF) or shape,
one column per normalization, one block of rows per metric: test PSNR and SSIM of the
test views rendered at the end of a run (NeRF); test IoU of the held-out points and
the Chamfer distance of the extracted surface, lower is better (shapes).
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..outputs import atomic_write_text, write_json
from .cells import Cell
from .claims_files import write_claims  # noqa: F401  (re-exported)
from .declared import not_run, split_keys
from .labels import (  # noqa: F401  (re-exported: the table's labels are the report's)
    ACT_LABELS,
    ENORM_CYCLES,
    ENORM_SETTINGS,
    NORM_LABELS,
    NORM_ORDER,
    enorm_variant,
    equal_to,
    norm_label,
    norm_sort_key,
    weight_variant,
)
from .relabel import load_report_runs, relabel
from .runs import CLASSIFICATION, FIELD_TASKS
from .runs_table import runs_table, verdicts
from .table_markdown import to_markdown
from .table_provenance import cell_id as _cell_id
from .table_provenance import distinct as _distinct
from .table_provenance import provenance as _provenance
from .task_tables import (  # noqa: F401  (re-exported)
    BEST_METRIC,
    FINAL_METRIC,
    TASK_TABLES,
    Block,
    TableResult,
    TaskTables,
)

NO_EXPERIMENT = "(none)"
LAYOUTS = ("auto", "wc", "enorm_fc", "nerf", "shape", "long")


def _fmt(mean: float, std: float, n: int, n_expected, spec: str = ".2f") -> str:
    count = f"n={n}" if n_expected is None or n >= n_expected else f"n={n}/{n_expected}"
    if n == 0:
        return "missing"
    if n == 1 or pd.isna(std):
        return f"{mean:{spec}} ({count})"
    return f"{mean:{spec}} ± {std:{spec}} ({count})"


def _values(s: pd.Series) -> str:
    """Distinct non-null values of a column as "a;b" (a cell that pools settings shows it)."""
    vals = sorted({str(v) for v in s.dropna()})
    return ";".join(vals)


def _task(df: pd.DataFrame) -> str:
    """The one task of the runs: a table never mixes accuracies with PSNRs or IoUs."""
    tasks = sorted(df["task"].dropna().unique())
    if len(tasks) > 1:
        raise ValueError(f"runs of several tasks ({', '.join(tasks)}): make one table per "
                         "task (e.g. one per preset, --preset)")
    return tasks[0] if tasks else CLASSIFICATION


def _resolve_layout(df: pd.DataFrame, layout: str, task: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    suits = TASK_TABLES[task].layouts
    if layout == "auto":
        fc = task == CLASSIFICATION and (df["model"] == "enorm_fc").all() \
            and df["depth"].notna().all()
        return "enorm_fc" if fc else suits[0]
    if layout not in suits:
        raise ValueError(f"layout {layout!r} does not suit {task} runs; "
                         f"use one of {', '.join(suits)}")
    return layout


def _row_keys(df: pd.DataFrame, layout: str, split_by, task: str) -> list[str]:
    if task in FIELD_TASKS:
        # The field papers' tables: one row per scene or shape. A scene's name implies
        # its dataset and model; name those only where one name spans several.
        subject = FIELD_TASKS[task]
        keys = [k for k in ("model", "dataset")
                if df.groupby(subject)[k].nunique().max() > 1] + [subject]
    elif layout == "enorm_fc":
        # The paper's FC table: one row per depth p. Name the model/dataset only when
        # several are mixed, so rows never silently pool different set-ups.
        keys = [k for k in ("model", "dataset") if df[k].nunique() > 1] + ["depth"]
    else:
        keys = ["model", "dataset"]
        if df["depth"].notna().any():
            keys.append("depth")
    if df["experiment"].nunique() > 1:
        keys.insert(0, "experiment")
    return keys + [k for k in split_by if k not in keys]


def _cell_stats(g: pd.DataFrame, tables: TaskTables) -> dict:
    head = tables.blocks[0]
    cell, best = Cell.of(g, head.column), Cell.of(g, tables.best.column)
    stats = {
        "n": cell.n, "n_unfinished": cell.unfinished,
        "mean": cell.mean, "std": cell.std, "min": cell.min, "max": cell.max,
        "seeds": " ".join(str(s) for s in sorted(cell.seeds)),
        "best_epoch_mean": best.mean, "best_epoch_std": best.std,
        # a run whose loss became NaN: a result of the method at this rate, shown, never dropped
        "_diverged": cell.diverged,
    }
    for b in _other_blocks(tables):
        # Each metric over the finished runs that report it (a run may lack one).
        other = Cell.of(g, b.column)
        stats.update({f"{b.key}_n": other.n, f"{b.key}_mean": other.mean, f"{b.key}_std": other.std,
                      f"_{b.key}_infinite": int(np.isinf(other.values).sum())})
    return stats | {
        "budget": _values(g["budget"]), "epochs": _values(g["epochs"]),
        "lr": _values(g["lr"]), "batch_size": _values(g["batch_size"]),
        "enorm_variant": _values(g["enorm_variant"]),
        "weight_variant": _values(g["weight_variant"]),
        "_found": cell.seeds,
    }


def _other_blocks(tables: TaskTables) -> tuple[Block, ...]:
    """Every metric of the task but the headline, in table order."""
    return (*tables.blocks[1:], *tables.extra)


def _cell_column(tables: TaskTables, b: Block) -> str:
    return "cell" if b == tables.blocks[0] else f"{b.key}_cell"


def _block_cells(s: dict, tables: TaskTables, n_exp) -> dict:
    """Each wide-table block's text for one cell, and the best-epoch one."""
    head, best = tables.blocks[0], tables.best
    cells = {"cell": _fmt(s["mean"], s["std"], s["n"], n_exp, head.spec)}
    for b in tables.blocks[1:]:
        cells[_cell_column(tables, b)] = _fmt(s[f"{b.key}_mean"], s[f"{b.key}_std"],
                                              s[f"{b.key}_n"], n_exp, b.spec)
    cells["best_cell"] = _fmt(s["best_epoch_mean"], s["best_epoch_std"], s["n"], n_exp,
                              best.spec)
    return cells


def _key(cell: tuple) -> tuple:
    """Cell tuple with every null (None, NaN, pd.NA) as None, so lookups agree."""
    return tuple(None if pd.isna(v) else v for v in cell)


def _expected_cells(df, keys) -> set[tuple]:
    """Cells the grid expects: per preset, every seen row x every seen column.

    Runs without a preset (ad-hoc runs) expect only the cells they fill.
    """
    cells = set()
    for exp, g in df.groupby("experiment", dropna=False):
        rows = {_key(r) for r in g[keys].itertuples(index=False, name=None)}
        if exp == NO_EXPERIMENT:
            cells |= {_key(c) for c in g[keys + ["norm"]].itertuples(index=False, name=None)}
        else:
            cells |= {(*r, n) for r, n in itertools.product(rows, g["norm"].unique())}
    return cells


def _sort_long(long: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    order = long["norm"].map(lambda n: norm_sort_key(n)[0])
    return (long.assign(_o=order).sort_values(keys + ["_o", "norm"], kind="stable")
            .drop(columns="_o").reset_index(drop=True))


def _pivot(long: pd.DataFrame, keys: list[str], value: str, metric: str,
           labels: Mapping[str, str]) -> pd.DataFrame:
    wide = long.pivot(index=keys, columns="norm", values=value)
    norms = sorted(wide.columns, key=norm_sort_key)
    # A blank cell is one the grid never expected (e.g. ad-hoc runs); expected but
    # empty cells already read "missing".
    wide = wide[norms].fillna("").rename(columns=lambda n: labels.get(n, norm_label(n))).reset_index()
    wide.columns.name = None
    if "depth" in wide:  # a null depth in the index turns the column to float
        wide["depth"] = wide["depth"].astype("Int64")
    wide.insert(0, "metric", metric)
    return wide


def _seed_expectation(df, expected_seeds) -> dict:
    """Expected seed set per preset: the union of seeds seen in that preset (counted
    to ``expected_seeds`` when given); ad-hoc runs expect nothing beyond themselves."""
    out = {}
    for exp, g in df.groupby("experiment", dropna=False):
        seen = set(g["seed"].dropna())
        out[exp] = None if exp == NO_EXPERIMENT and expected_seeds is None else seen
    return out


def build_table(df: pd.DataFrame, layout: str = "auto", expected_seeds: int | None = None,
                split_by: tuple[str, ...] | list[str] = (), command: str | None = None,
                not_run: Mapping[str, str] | None = None) -> TableResult:
    """Aggregate a ``load_runs`` frame into the paper-layout tables.

    ``split_by``: extra run columns that become row keys (e.g. ``batch_size``, or any
    config key as ``cfg.<dotted.key>``), for studies that vary them.
    ``not_run``: grid points the runs' budget leaves out, ``"COLUMN=VALUE[,VALUE...]"``
    of a row key (e.g. ``"dataset=cifar100"``) -> the reason. Their rows are written,
    every cell reading "no <budget> budget", rather than left out of the table.
    """
    df, split_by = _prepared(df, split_by)
    task = _task(df)
    tables = TASK_TABLES[task]
    layout = _resolve_layout(df, layout, task)
    keys = _row_keys(df, layout, split_by, task)
    stats = {_key(cell): _cell_stats(g, tables)
             for cell, g in df.groupby(keys + ["norm"], dropna=False, sort=False)}
    rows, missing, unfinished = _cell_rows(df, keys, stats, tables, expected_seeds)
    _name_rates(rows, keys, tables)
    rows += _not_run_rows(df, keys, {_key(c) for c in stats}, not_run or {}, tables)
    long, variant = _long_table(rows, df, keys, tables)
    wide, best = _wide_tables(long, df, keys, layout, variant, tables)
    prov = _provenance(df, long, layout, keys, expected_seeds, missing, unfinished, command,
                       task, [f"{point}: {reason}" for point, reason in (not_run or {}).items()])
    return TableResult(wide=wide, best=best,
                       long=long.drop(columns=[*_cell_titles(tables), "best_cell"]), provenance=prov,
                       missing=missing, layout=layout, task=task)


def _prepared(df: pd.DataFrame, split_by) -> tuple[pd.DataFrame, list[str]]:
    """The runs with their preset (or NO_EXPERIMENT) and method variants, and the split
    keys as run columns."""
    if df.empty:
        raise ValueError("no runs to tabulate")
    df = df.copy()
    df["experiment"] = df["experiment"].fillna(NO_EXPERIMENT)
    df["enorm_variant"] = [enorm_variant(run) for run in df.to_dict("records")]
    df["weight_variant"] = [weight_variant(run) for run in df.to_dict("records")]
    split_by = [k if k in df.columns else f"cfg.{k}" for k in split_by]
    for k in split_by:
        if k not in df.columns:
            raise ValueError(f"--split-by {k}: no such run column or config key")
    return df, split_by


def _cell_rows(df, keys, stats, tables, expected_seeds) -> tuple[list[dict], list[str], list[str]]:
    """One row per expected or filled cell, and what is missing or unfinished, said."""
    seed_sets = _seed_expectation(df, expected_seeds)
    exp_pos = keys.index("experiment") if "experiment" in keys else None
    only_exp = df["experiment"].iloc[0]
    rows, missing, unfinished = [], [], []
    for cell in sorted(_expected_cells(df, keys) | set(stats), key=str):
        s = stats.get(cell) or _cell_stats(df.iloc[0:0], tables)
        seen = seed_sets[cell[exp_pos] if exp_pos is not None else only_exp]
        n_exp = expected_seeds if expected_seeds is not None else (len(seen) if seen else None)
        cid = _cell_id(keys, cell[:-1], cell[-1])
        status = _cell_status(s, n_exp, seen, expected_seeds, cid, missing)
        missing += _metric_gaps(s, tables, cid)
        if s["n_unfinished"]:
            diverged = f", {s['_diverged']} of them diverged (loss NaN or inf)" if s["_diverged"] else ""
            unfinished.append(f"{cid}: {s['n_unfinished']} unfinished run(s){diverged}, "
                              "counted, not in the mean")
        rows.append(_cell_row(s, keys, cell, status, n_exp, tables))
    return rows, missing, unfinished


def _cell_status(s: dict, n_exp, seen, expected_seeds, cid: str, missing: list[str]) -> str:
    """ok, incomplete or missing; a cell short of runs is named in ``missing``."""
    lost = sorted(seen - s["_found"]) if seen and (expected_seeds is None
                                                     or len(seen) == expected_seeds) else []
    lost_txt = f" (missing seed {' '.join(map(str, lost))})" if lost else ""
    if s["n"] == 0:
        extra = f" ({s['n_unfinished']} unfinished)" if s["n_unfinished"] else ""
        missing.append(f"{cid}: missing, no finished run{extra}")
        return "missing"
    if n_exp is not None and s["n"] < n_exp:
        missing.append(f"seeds found {s['n']}/{n_exp} for {cid}{lost_txt}")
        return "incomplete"
    return "ok"


def _metric_gaps(s: dict, tables: TaskTables, cid: str) -> list[str]:
    """A metric some finished runs of the cell did not report, or reported infinite."""
    gaps = []
    for b in tables.blocks[1:]:
        if s[f"{b.key}_n"] < s["n"]:
            gaps.append(f"{b.key} found in {s[f'{b.key}_n']} of {s['n']} finished "
                        f"runs of {cid}")
        if s[f"_{b.key}_infinite"]:
            gaps.append(f"{b.key} infinite in {s[f'_{b.key}_infinite']} of "
                        f"{s[f'{b.key}_n']} finished runs of {cid}: its mean is "
                        "infinite")
    return gaps


def _cell_row(s: dict, keys: list[str], cell: tuple, status: str, n_exp, tables) -> dict:
    row = {k: v for k, v in s.items() if not k.startswith("_")}
    row.update(dict(zip(keys + ["norm"], cell)))  # a split key wins over its summary
    row.update(status=status, n_expected=n_exp, **_block_cells(s, tables, n_exp))
    if s["_diverged"]:  # the headline cell says so: "45.1 ± 0.3 (n=2/3, 1 diverged)"
        head = _cell_column(tables, tables.blocks[0])
        row[head] = row[head][:-1] + f", {s['_diverged']} diverged)" if row[head].endswith(")") \
            else f"{row[head]} ({s['_diverged']} diverged)"
    if s["n_unfinished"] and s["n"] == 0:
        for col in (*(_cell_column(tables, b) for b in tables.blocks), "best_cell"):
            row[col] = f"missing ({s['n_unfinished']} unfinished)"
    return row


def _name_rates(rows: list[dict], keys: list[str], tables: TaskTables) -> None:
    """Where the methods of one table row train at different learning rates (each at its
    own tuned rate, docs/search.md), each of that row's cells names its rate."""
    rates: dict[tuple, set] = {}
    for r in rows:
        rates.setdefault(tuple(str(r.get(k)) for k in keys), set()).add(r["lr"])
    for r in rows:
        if r["lr"] and len(rates[tuple(str(r.get(k)) for k in keys)] - {""}) > 1:
            for col in (*(_cell_column(tables, b) for b in tables.blocks), "best_cell"):
                r[col] = f"{r[col]} at lr {r['lr']}"


def _cell_titles(tables: TaskTables) -> dict[str, str]:
    """The long table's text column of each wide-table block -> the block's title."""
    return {_cell_column(tables, b): b.title for b in tables.blocks}


def _long_table(rows: list[dict], df, keys, tables) -> tuple[pd.DataFrame, list[str]]:
    """One row per cell, sorted, in the documented columns; and the variant columns."""
    long = _sort_long(pd.DataFrame(rows), keys)
    # The ENorm and WC/WN columns only where they ran: other tables keep their columns.
    variant = [v for v in ("enorm_variant", "weight_variant") if df[v].notna().any()]
    block_stats = [f"{b.key}_{x}" for b in _other_blocks(tables) for x in ("n", "mean", "std")]
    stat_cols = ["status", "n", "n_expected", "n_unfinished", "mean", "std", "min", "max",
                 "seeds", "best_epoch_mean", "best_epoch_std", *block_stats, "budget",
                 "epochs", "lr", "batch_size", *variant, *_cell_titles(tables), "best_cell"]
    long = long[keys + ["norm"] + [c for c in stat_cols if c not in keys]]
    long["n_expected"] = long["n_expected"].astype("Int64")
    return long, variant


def _wide_tables(long, df, keys, layout, variant, tables) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper-layout table of the final numbers and that of the best epoch."""
    cell_cols = _cell_titles(tables)
    if layout == "long":
        # One row per cell, readable: the numbers themselves are in the long CSV.
        base = keys + ["norm", "status", "n", "n_expected", "n_unfinished", *variant]
        wide = long[base + list(cell_cols)].rename(columns=cell_cols)
        best = long[base + ["best_cell"]].rename(columns={"best_cell": tables.best.title})
        return wide, best
    labels = {norm: norm_label(norm, df) for norm in df["norm"].unique()}
    wide = pd.concat([_pivot(long, keys, col, title, labels) for col, title in cell_cols.items()],
                     ignore_index=True)
    return wide, _pivot(long, keys, "best_cell", tables.best.title, labels)


def _not_run_rows(df, keys, cells, not_run: Mapping[str, str], tables) -> list[dict]:
    """One row per norm for each grid row the budget leaves out: every row seen with
    the left-out key set to each of its values, where no run fills it."""
    text = f"no {' / '.join(map(str, _distinct(df['budget'])))} budget"
    seen_rows = {c[:-1] for c in cells}
    rows = []
    for point in not_run:
        column, _, values = point.partition("=")
        if column not in keys or not values:
            raise ValueError(f"not_run {point!r}: expected COLUMN=VALUE with COLUMN one of "
                             f"the table's row keys ({', '.join(keys)})")
        at = keys.index(column)
        numeric = pd.api.types.is_numeric_dtype(df[column])  # batch sizes, depths
        left_out = [pd.to_numeric(v) if numeric else v for v in values.split(",")]
        for row in sorted({(*r[:at], v, *r[at + 1:]) for r in seen_rows for v in left_out},
                          key=str):
            for norm in sorted(df["norm"].unique(), key=norm_sort_key):
                if (*row, norm) in cells:
                    continue
                cell = dict(zip(keys + ["norm"], (*row, norm)), status="not run", n=0,
                            n_unfinished=0, budget=_values(df["budget"]))
                cell.update({_cell_column(tables, b): text for b in tables.blocks},
                            best_cell=text)
                rows.append(cell)
    return rows


def write_table(result: TableResult, out_dir) -> list[Path]:
    """Write table.csv, table_best_epoch.csv, table_long.csv, table.md, provenance.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"table.csv": result.wide, "table_best_epoch.csv": result.best,
             "table_long.csv": result.long}
    for name, frame in files.items():
        atomic_write_text(out / name, frame.to_csv(index=False, float_format="%.4g"))
    atomic_write_text(out / "table.md", to_markdown(result))
    write_json(out / "provenance.json", result.provenance)
    return [out / n for n in [*files, "table.md", "provenance.json"]]


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="wcnorm table", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories or folders holding them")
    ap.add_argument("--layout", choices=LAYOUTS, default="auto",
                    help="wc: rows model/dataset, columns norms; enorm_fc: rows depth p; "
                         "nerf / shape: rows scene / shape, one block per metric; "
                         "long: one row per cell (default: auto, from the runs)")
    ap.add_argument("--out", default="results/table", help="output folder")
    ap.add_argument("--expected-seeds", type=int, default=None,
                    help="seeds each cell should have (default: the union seen per preset)")
    ap.add_argument("--preset", default=None,
                    help="only runs of this experiment preset, with the grid points its budget "
                         "leaves out (as `wcnorm report` tables them)")
    ap.add_argument("--split-by", default="",
                    help="comma-separated extra row keys, e.g. batch_size or cfg keys")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    df = load_report_runs(args.runs)  # runs on data files named after them, as `wcnorm report` does
    if args.preset is not None and not df.empty:
        df = df[df["experiment"] == args.preset]
    if df.empty:
        print("wcnorm table: no run directories found"
              + (f" for preset {args.preset}" if args.preset else ""), file=sys.stderr)
        return 1
    # A preset's table as `wcnorm report` makes it: its left-out points, its split keys.
    left_out = not_run(args.preset, df) if args.preset else {}
    split = tuple(k for k in args.split_by.split(",") if k)
    split += tuple(k for k in split_keys(df, left_out) if args.preset and k not in split)
    try:
        result = build_table(relabel(df)[0], layout=args.layout, expected_seeds=args.expected_seeds,
                             split_by=split, command=shlex.join(["wcnorm", "table", *argv]),
                             not_run=left_out)
    except ValueError as e:  # mixed tasks, a layout that does not suit, an unknown key
        print(f"wcnorm table: {e}", file=sys.stderr)
        return 1
    files = write_table(result, args.out)
    # The claims judged as `wcnorm report` judges them: from the runs.csv rows of the runs.
    files.append(write_claims(verdicts(runs_table(df, Path.cwd())), Path(args.out) / "claims.csv"))
    print(to_markdown(result))
    print("wrote: " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
