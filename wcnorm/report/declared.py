"""What a preset's table takes from the preset's declaration, the same in every door
(`wcnorm report`, `wcnorm table --preset`): the grid points the runs' budget leaves out
(`protocol.<budget>.not_run`), and the extra row keys its grid varies."""

from __future__ import annotations

import pandas as pd

from .. import presets

# Extra row keys of a table when a preset varies them (e.g. the small-batch studies).
SPLIT_CANDIDATES = ("batch_size",)


def not_run(preset: str | None, runs: pd.DataFrame) -> dict[str, str]:
    """The grid points the runs' budget leaves out, with the reason, as the preset
    declares them; none for runs of several budgets or of no preset."""
    budgets = runs["budget"].dropna().unique()
    if len(budgets) != 1 or preset not in presets.preset_names():
        return {}
    return presets.not_run(preset, str(budgets[0]))


def split_keys(runs: pd.DataFrame, left_out) -> tuple[str, ...]:
    """The SPLIT_CANDIDATES the runs vary, and those whose values the budget leaves out
    (a row key even while one value has runs: a small-batch grid whose first batch size
    alone has finished)."""
    return tuple(k for k in SPLIT_CANDIDATES if runs[k].nunique(dropna=True) > 1
                 or any(point.startswith(f"{k}=") for point in left_out))
