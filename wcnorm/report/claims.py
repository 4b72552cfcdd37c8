"""The papers' qualitative claims, as data, checked against our runs.

Only the claims the project knows (figure captions of the WC paper, the reported
outcome of the ENorm fully connected study) are encoded; no paper number is. A claim
is checked on final-epoch means over seeds of finished runs and gets one verdict:
"supported", "not supported" or "not enough runs".
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

SUPPORTED, NOT_SUPPORTED, NOT_ENOUGH = "supported", "not supported", "not enough runs"

# The WC paper labels BN + WC "BN + E" in some figures (E is its symbol for the row
# equilibration matrix); where a claim names BN + E, runs of either name count.
ALIASES = {"bn_e": ("bn_e", "bn_wc")}
ALIAS_NOTE = ("BN + E read as BN + WC (E is the paper's row equilibration matrix): "
              "runs named bn_e and bn_wc pooled")

# metric column -> (label, higher is better)
METRICS = {
    "final_test_acc": ("final test acc %", True),
    "mean_train_loss": ("train loss averaged over epochs", False),
}

_BN_SCHEMES = ("bn", "bn_ws", "bn_wn")


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str  # "WC" or "ENorm"
    text: str
    model: str
    dataset: str
    # kind "pair": `better` beats each of `worse` (at least `min_worse` of them need runs).
    better: str = ""
    worse: tuple[str, ...] = ()
    min_worse: int | None = None
    # kind "order_most_depths": `order` (best first) holds at more than half the depths.
    kind: str = "pair"
    order: tuple[str, ...] = ()
    metric: str = "final_test_acc"
    note: str = ""


def _resnet_claim(model: str, label: str, dataset: str, ds_label: str) -> Claim:
    return Claim(
        id=f"wc2_{model}_{dataset}", paper="WC",
        text=f"{label} on {ds_label}: BN + WC performs better.",
        model=model, dataset=dataset, better="bn_wc", worse=_BN_SCHEMES, min_worse=1,
        note="the caption says CIFAR without naming 10 or 100: both are checked; 'better' "
             "read as a higher mean than every other BN scheme that has runs")


CLAIMS: list[Claim] = [
    Claim(id="wc1_googlenet_cifar100", paper="WC",
          text="GoogLeNet on CIFAR-100: BN + WC reaches a much higher accuracy than the "
               "other two normalizations tested.",
          model="googlenet", dataset="cifar100", better="bn_wc", worse=_BN_SCHEMES,
          min_worse=2,
          note="which two schemes the figure shows is unknown: checked against those of "
               "BN, BN + WS, BN + WN that have runs (at least two); 'much' is not "
               "quantified, checked as a higher mean"),
    _resnet_claim("resnet18", "ResNet-18", "cifar10", "CIFAR-10"),
    _resnet_claim("resnet18", "ResNet-18", "cifar100", "CIFAR-100"),
    _resnet_claim("resnet50", "ResNet-50", "cifar10", "CIFAR-10"),
    _resnet_claim("resnet50", "ResNet-50", "cifar100", "CIFAR-100"),
    *[Claim(id=f"wc3_googlenet_{ds}_train_loss", paper="WC",
            text=f"GoogLeNet on {lab}, four schemes: BN + E has the fastest-falling "
                 "training loss.",
            model="googlenet", dataset=ds, better="bn_e", worse=_BN_SCHEMES,
            metric="mean_train_loss",
            note="'fastest-falling' read as the lowest training loss averaged over "
                 "epochs (area under the curve)")
      for ds, lab in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100"))],
    Claim(id="wc4_densenet121_cifar10", paper="WC",
          text="DenseNet on CIFAR-10, four schemes: BN + E reaches higher top-1 than the "
               "other three.",
          model="densenet121", dataset="cifar10", better="bn_e", worse=_BN_SCHEMES),
    Claim(id="enorm_fc_order", paper="ENorm",
          text="Fully connected network on CIFAR-10: ENorm + BN > ENorm > BN > Baseline "
               "for most depths p.",
          model="enorm_fc", dataset="cifar10", kind="order_most_depths",
          order=("bn_enorm", "enorm", "bn", "none"),
          note="'most' read as more than half of the depths that have all four methods"),
]


@dataclass
class _Cell:
    name: str
    n: int
    mean: float
    std: float

    def __str__(self) -> str:
        if self.n == 0:
            return f"{self.name}: no finished run"
        std = "" if self.n < 2 else f"±{self.std:.2f}" if abs(self.mean) >= 1 \
            else f"±{self.std:.3g}"
        mean = f"{self.mean:.2f}" if abs(self.mean) >= 1 else f"{self.mean:.4g}"
        return f"{self.name} {mean}{std} (n={self.n})"


def _cell(runs: pd.DataFrame, norm: str, metric: str) -> _Cell:
    names = ALIASES.get(norm, (norm,))
    vals = runs.loc[runs["norm"].isin(names) & runs["finished"], metric].dropna()
    return _Cell("|".join(names), len(vals), vals.mean(), vals.std())


def _beats(a: _Cell, b: _Cell, metric: str) -> bool:
    return a.mean > b.mean if METRICS[metric][1] else a.mean < b.mean


def _check_pair(c: Claim, runs: pd.DataFrame) -> tuple[str, str, list[str]]:
    best = _cell(runs, c.better, c.metric)
    others = [_cell(runs, w, c.metric) for w in c.worse]
    have = [o for o in others if o.n > 0]
    numbers = f"{best} vs " + ", ".join(map(str, others))
    notes = []
    if best.n == 0 or len(have) < (c.min_worse or len(c.worse)):
        return NOT_ENOUGH, numbers, notes
    ok = all(_beats(best, o, c.metric) for o in have)
    # Means decide, as specified; a gap inside the seed spread is flagged as weak.
    weak = [o.name for o in have if abs(best.mean - o.mean) <= max(best.std, o.std)]
    if ok and weak:
        notes.append("gap within one seed std vs " + ", ".join(weak))
    if min([best.n] + [o.n for o in have]) < 2:
        notes.append("a cell rests on a single run")
    return (SUPPORTED if ok else NOT_SUPPORTED), numbers, notes


def _check_order(c: Claim, runs: pd.DataFrame) -> tuple[str, str, list[str]]:
    parts, holds, incomplete = [], [], []
    for depth, g in sorted(runs.groupby("depth"), key=lambda kv: kv[0]):
        cells = [_cell(g, n, c.metric) for n in c.order]
        if any(x.n == 0 for x in cells):
            incomplete.append(str(depth))
            continue
        ok = all(_beats(a, b, c.metric) for a, b in zip(cells, cells[1:]))
        holds.append(ok)
        parts.append(f"p={depth}: " + " > ".join(f"{x.name} {x.mean:.2f}" for x in cells)
                     + (" holds" if ok else " fails"))
    notes = [f"depths lacking a method: {', '.join(incomplete)}"] if incomplete else []
    if not holds:
        return NOT_ENOUGH, "no depth has all of " + ", ".join(c.order), notes
    parts.append(f"holds at {sum(holds)}/{len(holds)} depths")
    return (SUPPORTED if sum(holds) > len(holds) / 2 else NOT_SUPPORTED), "; ".join(parts), notes


def evaluate_claims(runs: pd.DataFrame, claims: list[Claim] | None = None) -> pd.DataFrame:
    """One row per claim: id, paper, claim, verdict, numbers, runs, budgets, epochs, note."""
    rows = []
    for c in CLAIMS if claims is None else claims:
        sel = runs[(runs["model"] == c.model) & (runs["dataset"] == c.dataset)] \
            if len(runs) else runs
        if c.metric not in sel.columns:
            sel = sel.assign(**{c.metric: float("nan")})
        check = _check_order if c.kind == "order_most_depths" else _check_pair
        verdict, numbers, notes = check(c, sel)
        used = sel[sel["finished"]] if len(sel) else sel
        if any(n in ALIASES for n in (c.better, *c.worse, *c.order)):
            notes.insert(0, ALIAS_NOTE)
        if len(used) and used[["budget", "epochs"]].astype(str).nunique().max() > 1:
            notes.append("pools runs of different budgets or epoch counts")
        rows.append({
            "claim_id": c.id, "paper": c.paper, "claim": c.text, "verdict": verdict,
            "metric": METRICS[c.metric][0], "numbers": numbers, "finished_runs": len(used),
            "budgets": ";".join(sorted({str(b) for b in used.get("budget", []) if b})),
            "epochs": ";".join(sorted({str(e) for e in used.get("epochs", []) if pd.notna(e)})),
            "note": "; ".join([c.note, *notes] if c.note else notes),
        })
    return pd.DataFrame(rows)


def write_claims(claims: pd.DataFrame, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    claims.to_csv(path, index=False)
    return path


def main(argv=None) -> int:
    from .runs import load_runs

    ap = argparse.ArgumentParser(prog="wcnorm claims", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories or folders holding them")
    ap.add_argument("--out", default="results/table", help="folder for claims.csv")
    args = ap.parse_args(argv)
    table = evaluate_claims(load_runs(args.runs))
    path = write_claims(table, Path(args.out) / "claims.csv")
    print(table[["claim_id", "verdict", "numbers"]].to_string(index=False))
    print(f"wrote: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
