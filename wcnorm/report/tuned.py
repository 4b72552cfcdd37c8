"""The tuned-rate protocol: each grid point at the learning rate its search chose.

A search (`+search=lr_grid`, docs/search.md) picks each point's rate on the validation
split; `wcnorm search` writes them to search.csv. The preset's seeds then train at
those rates, and `wcnorm report --tuned search.csv` tables them in ``<preset>/tuned/``,
beside the shared-rate folder: only the runs at their point's chosen rate count (a run
of the shared-rate grid counts where the search chose that same rate), so no table can
mix the two protocols.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .runs_table import key_text
from .search_table import VALUES

# search.csv's columns that are no key of a grid point
NOT_POINT_KEYS = ("optim.lr", "optim.weight_decay", *VALUES, "trials", "finished", "best_run", "command")
# The run columns (runs.csv) of the config keys a grid varies under a name of their own.
RUN_COLUMN = {"model.depth": "depth", "trainer.batch_size": "batch_size"}
TUNED_FOLDER = "tuned"


class TunedRatesError(ValueError):
    """A search.csv that names no rate to train at."""


def read_tuned_rates(path: Path, preset: str) -> pd.DataFrame:
    """The rows of a search.csv (`wcnorm search`) for ``preset``, each with its rate."""
    rates = pd.read_csv(path)
    if "optim.lr" not in rates:
        raise TunedRatesError(f"{path}: no optim.lr column: not a search.csv of `wcnorm search`")
    rates = rates[(rates["experiment"] == preset) & rates["optim.lr"].notna()]
    if rates.empty:
        raise TunedRatesError(f"{path}: no grid point of preset {preset} with a chosen rate")
    return rates.reset_index(drop=True)


def point_keys(rates: pd.DataFrame) -> list[str]:
    return [c for c in rates.columns if c not in NOT_POINT_KEYS and c not in ("experiment", "budget")]


def _column(rows: pd.DataFrame, key: str) -> str | None:
    for col in (key, RUN_COLUMN.get(key), f"cfg.{key}"):
        if col is not None and col in rows:
            return col
    return None


def _rate_of(rows: pd.DataFrame, rates: pd.DataFrame) -> pd.Series:
    """Each row's point's chosen rate (NaN for a row of no searched point)."""
    keys = point_keys(rates)
    cols = [_column(rows, k) for k in keys]
    missing = [k for k, c in zip(keys, cols) if c is None]
    if missing:
        raise TunedRatesError(f"the runs have no column for the searched key(s) {', '.join(missing)}")
    chosen = {tuple(key_text(v) for v in r[keys]): r["optim.lr"] for _, r in rates.iterrows()}
    return pd.Series([chosen.get(tuple(key_text(v) for v in r), np.nan)
                      for r in rows[cols].itertuples(index=False)], index=rows.index, dtype=float)


def at_tuned_rates(rows: pd.DataFrame, rates: pd.DataFrame) -> pd.DataFrame:
    """The rows (runs.csv rows, or a runs frame) that trained at their point's chosen rate."""
    if rows.empty:
        return rows
    rate = _rate_of(rows, rates)
    lr = pd.to_numeric(rows["lr"], errors="coerce")
    return rows[np.isclose(lr, rate, rtol=1e-9, atol=0.0) & rate.notna()]


def _said(point: pd.Series, keys: list[str]) -> str:
    return " ".join(f"{k}={key_text(point[k])}" for k in keys) + f" at optim.lr={key_text(point['optim.lr'])}"


def _without_runs(rows: pd.DataFrame, rates: pd.DataFrame) -> pd.Series:
    """For each searched point, whether no row trains it at its chosen rate."""
    keys = point_keys(rates)
    found = {tuple(key_text(v) for v in r) for r in rows[[_column(rows, k) for k in keys]].itertuples(index=False)} \
        if len(rows) else set()
    return pd.Series([tuple(key_text(v) for v in r[keys]) not in found for _, r in rates.iterrows()],
                     index=rates.index)


def points_without_runs(rows: pd.DataFrame, rates: pd.DataFrame) -> list[str]:
    """The searched points that no row trains at their chosen rate, said."""
    keys = point_keys(rates)
    return [_said(r, keys) for _, r in rates[_without_runs(rows, rates)].iterrows()]


def points_to_train(rates: pd.DataFrame, shared: pd.DataFrame | None) -> pd.DataFrame:
    """The searched points whose chosen rate the shared-rate grid (its runs.csv rows) did
    not train: only these need runs of their own; the others' runs are carried over."""
    if shared is None or shared.empty:
        return rates
    return rates[_without_runs(at_tuned_rates(shared, rates), rates)]


def main(argv=None) -> int:
    """`python -m wcnorm.report.tuned SEARCH_CSV PRESET [RUNS_CSV...]`: the command of
    each grid point to train at its searched rate, one a line (scripts/run_cpu_budget.sh),
    leaving out the points that a RUNS_CSV (the shared grid's, an earlier part's tuned
    one; missing files are skipped) has runs of at that rate."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print(main.__doc__, file=sys.stderr)
        return 2
    try:
        rates = read_tuned_rates(Path(args[0]), args[1])
    except TunedRatesError as err:
        print(f"wcnorm: {err}", file=sys.stderr)
        return 1
    found = [pd.read_csv(f) for f in args[2:] if Path(f).is_file()]
    trained = pd.concat(found, ignore_index=True) if found else None
    for command in points_to_train(rates, trained)["command"]:
        print(command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
