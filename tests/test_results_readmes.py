"""Words match numbers: every result a results/ README quotes is in its folder's CSVs.

The rule. A number quoted as a result is one written with a decimal point (47.66,
0.09, +2.5, -10.6) in the README's prose or tables; code (fenced, indented or inline)
is configuration and is not read, nor are version numbers (2.14.1). Such a number is
found when some number of the folder's CSVs rounds to it at the precision the README
writes it (1.3 needs a value in [1.25, 1.35)), sign aside (a gap "3.3 points below"
is a difference of -3.31). The CSVs' numbers are those of table*.csv and claims*.csv,
cells written as text included ("47.66 ± 0.74 (n=3)"), and the results columns of
runs.csv (a run's learning rate, wall time and losses are not what a README quotes).
A few decimal numbers are configuration a README states in prose (a recipe's
momentum); CONFIGURATION lists the phrases that state them, each saying what it is:
a number is allowed only inside one of those phrases, and every phrase must be used.
Numbers a README derives (a gap between two table cells, a spread of seeds) are not
in the CSVs: a README quotes the numbers they come from instead.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

RESULTS = Path(__file__).resolve().parents[1] / "results"
# runs.csv columns whose numbers a README may quote as results.
RESULT_COLUMNS = ("final_test_acc", "best_test_acc", "final_test_psnr", "final_test_ssim",
                  "final_val_psnr", "final_val_ssim", "best_val_psnr", "final_test_iou",
                  "best_test_iou", "final_test_chamfer", "mean_train_loss")
# A phrase of a README that states configuration, not a result -> what it is.
CONFIGURATION = {
    "momentum 0.9": "SGD's momentum in the CNN recipes",
    "betas (0.9, 0.999)": "AdamW's betas in the ViT recipe",
    "weight decay 0.05": "AdamW's weight decay in the ViT recipe",
    "label smoothing 0.1": "the ViT recipe's label smoothing",
}

_CODE_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_INDENTED_CODE = re.compile(r"(?:^\n)((?: {4}.*\n?)+)", re.MULTILINE)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
# A decimal number (9.32e-3 with its exponent) not part of a longer dotted token (a
# version, a file name).
_DECIMAL = re.compile(r"(?<![\w.])[-+]?(\d+\.\d+(?:e[-+]?\d+)?)(?![\w.]*\d)(?!\.\w)")
_ANY_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def quoted_numbers(text: str) -> list[str]:
    """The decimal numbers of a README's prose and tables, as written."""
    for code in (_CODE_FENCE, _INDENTED_CODE, _INLINE_CODE):
        text = code.sub(" ", text)
    for phrase in CONFIGURATION:
        text = text.replace(phrase, " ")
    return [m.group(1) for m in _DECIMAL.finditer(text)]


def folder_numbers(folder: Path) -> list[float]:
    """Every number of the folder's tables and claims files, and of runs.csv's results."""
    values: list[float] = []
    for f in sorted(folder.glob("*.csv")):
        frame = pd.read_csv(f, dtype=str, keep_default_na=False)
        if f.name == "runs.csv":
            frame = frame[[c for c in RESULT_COLUMNS if c in frame]]
        elif not f.name.startswith(("table", "claims", "search")):
            continue
        for cell in frame.to_numpy().ravel():
            values += [float(x) for x in _ANY_NUMBER.findall(cell)]
    return [abs(v) for v in values if math.isfinite(v)]


def found(number: str, values: list[float]) -> bool:
    """Some value rounds to ``number`` at its written precision (either rounding of a
    tie, and a little slack for the binary representation)."""
    mantissa, _, exponent = number.partition("e")
    x = float(number)
    half = 0.5 * 10.0 ** (int(exponent or 0) - len(mantissa.split(".")[1]))
    return any(abs(v - x) <= half * (1 + 1e-9) for v in values)


def unmatched(folder: Path) -> list[str]:
    values = folder_numbers(folder)
    return sorted({n for n in quoted_numbers((folder / "README.md").read_text())
                   if not found(n, values)}, key=float)


FOLDERS = sorted(p.parent for pattern in ("*/README.md", "*/tuned/README.md") for p in RESULTS.glob(pattern)
                 if (p.parent / "runs.csv").is_file())


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_number_a_results_readme_quotes_is_in_its_csvs(folder):
    missing = unmatched(folder)
    assert not missing, (f"results/{folder.name}/README.md quotes numbers no CSV of the "
                         f"folder holds at that precision: {', '.join(missing)}")


ROOT = RESULTS.parent
# Documents that quote results of several folders: each paragraph or list item is read
# against the folders it names (`wc_vit/`, `results/enorm_fc/table.md`).
SUMMARIES = ("README.md", "results/README.md", "docs/reproducing.md")
_ITEM = re.compile(r"\n\s*\n|\n(?=\s*- )")


def summary_unmatched(text: str) -> list[str]:
    """Numbers of the paragraphs and list items that name results folders, not found in
    those folders' CSVs."""
    names = {f.name: f for f in FOLDERS}
    missing = []
    for item in _ITEM.split(text):
        named = {m for m in re.findall(r"(?<![\w-])(\w+)/", item) if m in names}
        if not named:
            continue
        values = [v for name in sorted(named) for v in folder_numbers(names[name])]
        missing += [f"{n} ({', '.join(sorted(named))})" for n in quoted_numbers(item)
                    if not found(n, values)]
    return missing


@pytest.mark.parametrize("name", SUMMARIES)
def test_every_number_a_summary_quotes_is_in_the_folders_it_names(name):
    missing = summary_unmatched((ROOT / name).read_text())
    assert not missing, f"{name} quotes numbers its folders' CSVs do not hold: {missing}"


def test_the_configuration_allow_list_is_short_and_used():
    assert len(CONFIGURATION) <= 8
    readmes = " ".join((f / "README.md").read_text() for f in FOLDERS)
    for phrase in CONFIGURATION:
        assert re.search(r"\d+\.\d+", phrase), f"{phrase!r} holds no decimal number"
        assert phrase in readmes, f"{phrase!r} is in no README: drop it from CONFIGURATION"


def test_the_rule_reads_numbers_as_written(tmp_path):
    text = ("BN + E is 3.3 points below (95 % CI [-10.6, +4.0], Holm p = 0.45), torch "
            "2.14.1, `model.width=0.125`, file a1.5.npz.\n\n    lr 0.1 in code\n\n"
            "| 47.66 ± 0.74 |\n")
    assert quoted_numbers(text) == ["3.3", "10.6", "4.0", "0.45", "47.66", "0.74"]
    assert quoted_numbers("p = 3.6e-5, 9.32e-3 ± 0.63e-3, momentum 0.9") == [
        "3.6e-5", "9.32e-3", "0.63e-3"]
    assert found("3.6e-5", [3.64e-5]) and not found("3.6e-5", [3.7e-5])
    assert found("1.2", [1.24549]) and not found("1.3", [1.24549])
    assert found("0.09", [0.092539]) and found("4.0", [3.96]) and not found("4.0", [3.94])
    (tmp_path / "README.md").write_text("A gap of 1.3 and of 0.25.\n")
    (tmp_path / "runs.csv").write_text("lr,final_test_acc\n1.3,0.2549\n")
    (tmp_path / "claims_comparisons.csv").write_text("diff\n-1.24549\n")
    assert unmatched(tmp_path) == ["1.3"]  # the learning rate is not a result
    item = "- `wc_vit/`: LN + WC is 0.7 points above LN (47.7 vs 47.0 %)\n- Python 3.10\n"
    assert summary_unmatched(item) == []
    assert summary_unmatched(item.replace("47.7", "77.7")) == ["77.7 (wc_vit)"]
