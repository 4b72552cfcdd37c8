"""The papers' qualitative claims, as data, tested on our runs.

Only the claims the project knows are encoded (figure captions and the abstract of the
WC paper, the ENorm paper's statements as the methods spec records them); no paper
number is. A claim is a set of comparisons "cell A beats cell B", a cell being the
final numbers of the finished runs (one per seed) of one method. Each comparison is a
Welch t-test (two-sided, ``stats.welch``); the comparisons one claim makes form one
family for Holm's correction; the claim gets one verdict:

- supported: every comparison in the claimed direction and significant at ALPHA
  after correction;
- direction only: every comparison in the claimed direction, not all significant;
- not supported: some comparison in the wrong direction (or tied), none of those
  significantly;
- contradicted: some comparison significantly in the wrong direction; one such
  comparison refutes the claim whatever its other cells hold, so this verdict is
  reached even where another cell still lacks runs;
- not enough runs: a needed cell has fewer than MIN_RUNS finished runs (a variance
  needs two); the report says how many seeds per cell would do (``_seeds_needed``);
- equivalent by construction: two cells the claim compares train the same function of
  the raw weights (their runs recorded the same ``method_class``, e.g. BN + WC whose
  every conditioned layer a BatchNorm cancels, and BN). No test is run: their gap is
  seed noise, whatever the numbers say. Decided from what the runs recorded, never from
  their numbers.

A claim made "at most depths" is tested depth by depth, each depth its own Holm family,
and gets the strongest verdict that more than half of its testable depths reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .catalogue import ALIAS_NOTE, ALIASES, CLAIMS, METRICS, Claim
from .cells import Cell, number
from .stats import Welch, holm, seeds_for_power, welch

SUPPORTED, DIRECTION_ONLY = "supported", "direction only"
NOT_SUPPORTED, CONTRADICTED, NOT_ENOUGH = "not supported", "contradicted", "not enough runs"
EQUIVALENT = "equivalent by construction"
# Strongest first: the scale on which "at most depths" takes its majority.
STRENGTH = (SUPPORTED, DIRECTION_ONLY, NOT_SUPPORTED, CONTRADICTED)

ALPHA = 0.05  # family-wise error rate of one claim's comparisons (Holm)
LEVEL = 0.95  # confidence level of the intervals
POWER = 0.8  # power the seed-count estimate aims at
MIN_RUNS = 2  # finished runs a cell needs for a t-test
SEEDS_CAP = 1000  # the seed-count estimate searches no further

VERDICT_RULES = (
    f"{SUPPORTED}: every comparison in the claimed direction and significant at "
    f"{ALPHA:g} after Holm's correction over the claim's comparisons; "
    f"{DIRECTION_ONLY}: all in the claimed direction, not all significant; "
    f"{NOT_SUPPORTED}: some comparison in the wrong direction (or tied), not "
    f"significantly; {CONTRADICTED}: some comparison significantly in the wrong "
    f"direction (even while another cell lacks runs: it refutes the claim whatever they "
    f"show); {NOT_ENOUGH}: a needed cell has fewer than {MIN_RUNS} finished runs; "
    f"{EQUIVALENT}: two compared cells train the same function of the raw weights (as their "
    f"runs recorded it), so no test is run.")
SEEDS_RULE = (
    f"seeds needed: per cell, for {POWER:.0%} power of Welch's two-sided test at the "
    f"first Holm step ({ALPHA:g}/m, m = comparisons in the family) to detect the "
    f"observed gap given the observed spreads (a cell with one run borrows the other "
    f"cell's spread), the largest over the comparisons not yet significant; "
    f"'>= {MIN_RUNS} per cell' where no gap or spread is observed yet; none where an "
    f"observed gap runs against the claim (more seeds would not be expected to support "
    f"it). A planning estimate: observed gaps and spreads are themselves noisy.")

# How a level of a grid key is written: p is the ENorm paper's name for the depth.
LEVEL_NAMES = {"depth": ("p", "depths"), "batch_size": ("batch", "batch sizes"),
               "scene": ("scene", "scenes"), "shape": ("shape", "shapes")}


def _cell(runs: pd.DataFrame, norm: str, metric: str) -> Cell:
    names = ALIASES.get(norm, (norm,))
    return Cell.of(runs[runs["norm"].isin(names)], metric, "|".join(names))


@dataclass
class _Comparison:
    """Cell `a` claimed better than cell `b`, at one level of the claim's grid key."""

    level: object
    a: Cell
    b: Cell
    higher_is_better: bool
    test: Welch | None = None
    p_holm: float = math.nan
    family_size: int = 1

    @property
    def equivalent(self) -> bool:
        """Both cells train one function of the raw weights, by what their runs recorded."""
        return self.a.method_class is not None and self.a.method_class == self.b.method_class

    @property
    def testable(self) -> bool:
        # An infinite value has no t-test; its cell's mean (infinite) still gives the
        # direction. Two equivalent cells differ by seed noise alone: never tested.
        return self.a.n >= MIN_RUNS and self.b.n >= MIN_RUNS and self.a.finite and self.b.finite \
            and not self.equivalent

    @property
    def in_direction(self) -> bool:
        diff = self.a.mean - self.b.mean
        return bool(diff > 0 if self.higher_is_better else diff < 0)

    @property
    def against(self) -> bool:
        """A gap, not a tie, in the wrong direction."""
        diff = self.a.mean - self.b.mean
        return bool(diff < 0 if self.higher_is_better else diff > 0)

    @property
    def significant(self) -> bool:
        return bool(self.p_holm < ALPHA)  # NaN (untested, or no spread) is not

    @property
    def seeds(self) -> int | None:
        """Seeds per cell for POWER at the first Holm step (see SEEDS_RULE); None where
        no gap or no spread is observed, SEEDS_CAP + 1 for more than SEEDS_CAP."""
        diff, sd_a, sd_b = self.a.mean - self.b.mean, self.a.std, self.b.std
        if not math.isfinite(diff) or diff == 0 or (math.isnan(sd_a) and math.isnan(sd_b)):
            return None
        sd_a, sd_b = (sd_b if math.isnan(sd_a) else sd_a), (sd_a if math.isnan(sd_b) else sd_b)
        if sd_a == sd_b == 0:
            return None
        n = seeds_for_power(diff, sd_a, sd_b, ALPHA / self.family_size, POWER, SEEDS_CAP)
        return SEEDS_CAP + 1 if n is None else n


@dataclass
class _Level:
    """The comparisons a claim makes at one level, and its cells short of runs."""

    level: object
    comparisons: list[_Comparison]
    cells: list[Cell]
    short: list[Cell]  # needed cells with fewer than MIN_RUNS finished runs
    verdict: str = NOT_ENOUGH


def _at_level(c: Claim, runs: pd.DataFrame, level) -> _Level:
    higher = METRICS[c.metric][1]
    if c.order:
        cells = [_cell(runs, m, c.metric) for m in c.order]
        pairs, needed = list(zip(cells, cells[1:])), cells
    else:
        best = _cell(runs, c.better, c.metric)
        others = [_cell(runs, w, c.metric) for w in c.worse]
        have = [o for o in others if o.n > 0]
        # Too few rivals with runs: every named rival is needed, and counts in the family.
        rivals = have if len(have) >= (c.min_worse or len(c.worse)) else others
        cells, pairs, needed = [best, *others], [(best, o) for o in rivals], [best, *rivals]
    comparisons = [_Comparison(level, a, b, higher) for a, b in pairs]
    return _Level(level, comparisons, cells, [x for x in needed if x.n < MIN_RUNS])


def _test_family(comparisons: list[_Comparison]) -> None:
    """Welch-test every comparison that has the runs, then Holm over the family. An
    untestable comparison counts in the family as p = 1, so a later run can only keep
    or lower the others' adjusted p; it keeps p_holm = NaN itself."""
    for x in comparisons:
        x.test = welch(x.a.values, x.b.values, LEVEL) if x.testable else None
        x.family_size = len(comparisons)
    p = [x.test.p if x.test and not math.isnan(x.test.p) else 1.0 for x in comparisons]
    for x, adjusted in zip(comparisons, holm(p) if p else []):
        x.p_holm = adjusted if x.test and not math.isnan(x.test.p) else math.nan


def _verdict(comparisons: list[_Comparison], complete: bool) -> str:
    if any(x.equivalent for x in comparisons):  # a method cannot beat itself
        return EQUIVALENT
    if any(x.significant and not x.in_direction for x in comparisons):
        return CONTRADICTED
    if not complete or not comparisons:
        return NOT_ENOUGH
    if not all(x.in_direction for x in comparisons):
        return NOT_SUPPORTED
    return SUPPORTED if all(x.significant for x in comparisons) else DIRECTION_ONLY


def _most(verdicts: list[str]) -> str:
    """The strongest verdict that more than half of ``verdicts`` reach or exceed."""
    rank = [STRENGTH.index(v) for v in verdicts]
    return next(v for i, v in enumerate(STRENGTH) if sum(r <= i for r in rank) > len(rank) / 2)


def _levels(c: Claim, sel: pd.DataFrame) -> list[_Level]:
    if not c.per:
        return [_at_level(c, sel, None)]
    if c.per not in sel.columns:
        return []
    return [_at_level(c, sel[sel[c.per] == lv], lv)
            for lv in sorted(sel[c.per].dropna().unique())]


def _judge(c: Claim, levels: list[_Level]) -> str:
    if c.at == "most":
        for lv in levels:
            _test_family(lv.comparisons)
            lv.verdict = _verdict(lv.comparisons, not lv.short)
        judged = [lv.verdict for lv in levels if lv.verdict not in (NOT_ENOUGH, EQUIVALENT)]
        if not judged and any(lv.verdict == EQUIVALENT for lv in levels):
            return EQUIVALENT
        return _most(judged) if judged else NOT_ENOUGH
    comparisons = [x for lv in levels for x in lv.comparisons]
    _test_family(comparisons)
    for lv in levels:
        lv.verdict = _verdict(lv.comparisons, not lv.short)
    return _verdict(comparisons, bool(levels) and not any(lv.short for lv in levels))


def _seeds_needed(c: Claim, verdict: str, levels: list[_Level]) -> str:
    """Seeds per cell the claim would need to be supported, by SEEDS_RULE."""
    if verdict in (SUPPORTED, CONTRADICTED):
        return ""
    if verdict == EQUIVALENT:
        return "none: the compared methods are equal by construction"
    if verdict == NOT_SUPPORTED:
        return "none: an observed gap runs against the claim"
    # A claim about most levels needs only the levels that can still turn supported.
    pending = [lv for lv in levels
               if c.at != "most" or lv.verdict in (DIRECTION_ONLY, NOT_ENOUGH)]
    open_ = [x for lv in pending for x in lv.comparisons if not x.significant]
    known = [x.seeds for x in open_ if x.in_direction and x.seeds is not None]
    unknown = (not pending or any(x.n == 0 for lv in pending for x in lv.short)
               or any(x.seeds is None for x in open_))
    most = max(known, default=0)
    parts = [] if not known else [f"more than {SEEDS_CAP} per cell" if most > SEEDS_CAP
                                  else f"about {most} per cell"]
    if unknown or not known:
        parts.append(f">= {MIN_RUNS} per cell" + (" where no gap or spread is observed yet"
                                                  if known else ""))
    if any(x.against for x in open_):
        parts.append("an observed, untested gap runs against the claim")
    return "; ".join(parts)


def _level_label(per: str, level) -> str:
    return f"{LEVEL_NAMES.get(per, (per,))[0]}={level}" if per else ""


def _level_names(per: str) -> str:
    return LEVEL_NAMES.get(per, ("", f"levels of {per}"))[1]


def _cells_text(c: Claim, lv: _Level) -> str:
    if c.order:
        text = " > ".join(f"{x.name} {number(x.mean)}" if x.n else f"{x.name}: no finished run"
                          for x in lv.cells)
        return f"{text} ({lv.verdict})"
    best, *others = lv.cells
    return f"{best} vs " + ", ".join(map(str, others))


def _numbers(c: Claim, levels: list[_Level]) -> str:
    if not c.per:
        return _cells_text(c, levels[0])
    if not levels:
        return f"no run of {', '.join(c.methods())}"
    parts = [f"{_level_label(c.per, lv.level)}: {_cells_text(c, lv)}" for lv in levels]
    if c.at == "most":
        judged = [lv.verdict for lv in levels if lv.verdict not in (NOT_ENOUGH, EQUIVALENT)]
        counts = ", ".join(f"{judged.count(v)} {v}" for v in STRENGTH if v in judged)
        parts.append(f"of {len(judged)} {_level_names(c.per)} tested: "
                     + (counts or "none"))
    return "; ".join(parts)


@dataclass(frozen=True)
class ComparisonRow:
    """One comparison, flat: a row of claims_comparisons.csv (NaN where untested)."""

    claim_id: str
    level_key: str
    level: object
    better: str
    worse: str
    claimed: str  # which is better: "higher" or "lower"
    n_better: int
    n_worse: int
    mean_better: float
    mean_worse: float
    std_better: float
    std_worse: float
    diff: float  # mean_better - mean_worse
    ci_low: float
    ci_high: float
    t: float
    df: float
    p: float
    p_holm: float
    family_size: int
    in_direction: bool
    significant: bool
    seeds_for_power: int | None
    level_verdict: str
    equivalent: bool = False  # the two cells train one function of the raw weights: not tested

    @classmethod
    def of(cls, c: Claim, x: _Comparison, level_verdict: str) -> ComparisonRow:
        t, nan = x.test, math.nan
        return cls(
            c.id, c.per, x.level, x.a.name, x.b.name,
            "higher" if x.higher_is_better else "lower", x.a.n, x.b.n, x.a.mean, x.b.mean,
            x.a.std, x.b.std, x.a.mean - x.b.mean, t.ci_low if t else nan,
            t.ci_high if t else nan, t.t if t else nan, t.df if t else nan,
            t.p if t else nan, x.p_holm, x.family_size, x.in_direction, x.significant,
            None if x.equivalent else x.seeds, level_verdict, x.equivalent)

    def __str__(self) -> str:
        where = f"[{_level_label(self.level_key, self.level)}] " if self.level_key else ""
        head, n = f"{where}{self.better} - {self.worse}: ", f"n={self.n_better}/{self.n_worse}"
        if not math.isnan(self.p):
            return (f"{head}{self.diff:+.4g} [{self.ci_low:+.4g}, {self.ci_high:+.4g}], "
                    f"p={self.p:.3g}, p_holm={self.p_holm:.3g}, {n}")
        gap = "" if math.isnan(self.diff) else f"{self.diff:+.4g}, "
        why = ("equal by construction" if self.equivalent else f"fewer than {MIN_RUNS} runs" if min(self.n_better, self.n_worse) < MIN_RUNS
               else "an infinite value" if math.isinf(self.mean_better + self.mean_worse)
               else "no spread")
        return f"{head}{gap}not tested ({why}), {n}"


def _notes(c: Claim, levels: list[_Level], used: pd.DataFrame) -> list[str]:
    notes = [c.note] if c.note else []
    if any(m in ALIASES for m in c.methods()):
        notes.append(ALIAS_NOTE)
    short = [str(lv.level) for lv in levels if c.per and lv.verdict == NOT_ENOUGH]
    if short:
        notes.append(f"{_level_names(c.per)} {'left out' if c.at == 'most' else 'untested'}"
                     f", a cell with fewer than {MIN_RUNS} finished runs: {', '.join(short)}")
    same = sorted({f"{x.a.name} and {x.b.name}" for lv in levels for x in lv.comparisons if x.equivalent})
    if same:
        notes.append(f"{'; '.join(same)} train the same function of the raw weights (a per-channel "
                     "normalization cancels the weight method on every layer it touches, as the "
                     "runs recorded): equivalent by construction, not tested")
    lost = sorted({f"{x.name}" + (f" at {_level_label(c.per, lv.level)}" if c.per else "")
                   + f" ({x.diverged})" for lv in levels for x in lv.cells if x.diverged})
    if lost:
        notes.append("runs that diverged (loss NaN or inf) are counted as diverged, not in the "
                     f"means: {', '.join(lost)}")
    if any(x.test and math.isnan(x.test.p) for lv in levels for x in lv.comparisons):
        notes.append("a comparison of two cells without spread is not tested")
    if len(used) and used[["budget", "epochs"]].astype(str).nunique().max() > 1:
        notes.append("pools runs of different budgets or epoch counts")
    presets = sorted(used.get("experiment", pd.Series(dtype=object)).dropna().astype(str).unique())
    if len(presets) > 1:  # said, never silent: presets may train with other recipes
        notes.append(f"pools runs of the presets {', '.join(presets)}")
    return notes


def _runs_of(c: Claim, runs: pd.DataFrame) -> pd.DataFrame:
    if not len(runs):
        return runs.assign(**{c.metric: pd.Series(dtype=float)}) \
            if c.metric not in runs.columns else runs
    names = [n for m in c.methods() for n in ALIASES.get(m, (m,))]
    keep = (runs["model"] == c.model) & runs["norm"].isin(names)
    if c.dataset:
        keep &= runs["dataset"] == c.dataset
    if c.experiment:
        keep &= runs["experiment"] == c.experiment
    sel = runs[keep]
    return sel if c.metric in sel.columns else sel.assign(**{c.metric: math.nan})


def evaluate_claims(runs: pd.DataFrame, claims: list[Claim] | None = None) -> pd.DataFrame:
    """One row per claim: id, paper, claim, verdict, metric, numbers, comparisons (text),
    seeds_needed, finished_runs, budgets, epochs, note; and ``tests``, the comparisons
    as records (written to claims_comparisons.csv by ``write_claims``)."""
    rows = []
    for c in CLAIMS if claims is None else claims:
        sel = _runs_of(c, runs)
        levels = _levels(c, sel)
        verdict = _judge(c, levels)
        used = sel[sel["finished"]] if len(sel) else sel
        tests = [ComparisonRow.of(c, x, lv.verdict) for lv in levels for x in lv.comparisons]
        rows.append({
            "claim_id": c.id, "paper": c.paper, "claim": c.text, "verdict": verdict,
            "metric": METRICS[c.metric][0], "numbers": _numbers(c, levels),
            "comparisons": "; ".join(map(str, tests)),
            "seeds_needed": _seeds_needed(c, verdict, levels),
            "finished_runs": len(used),
            "budgets": ";".join(sorted({str(b) for b in used.get("budget", []) if b})),
            "epochs": ";".join(sorted({str(e) for e in used.get("epochs", []) if pd.notna(e)})),
            "note": "; ".join(_notes(c, levels, used)),
            "tests": tests,
        })
    return pd.DataFrame(rows)
