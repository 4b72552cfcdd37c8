"""results/README.md's verdict index: generated from the folders' claims files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from wcnorm.report.index import BEGIN, END, NoIndexMarkers, update_index, verdict_index
from wcnorm.report.pipeline import main as report

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _claims(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True)
    base = {"claim": "A claim.", "numbers": "", "finished_runs": 0}
    pd.DataFrame([base | r for r in rows]).to_csv(folder / "claims.csv", index=False)


def test_the_index_lists_every_judged_claim_of_every_folder(tmp_path):
    _claims(tmp_path / "wc_resnet", [
        {"claim_id": "wc2", "claim": "ResNet: BN + WC | better.", "verdict": "not supported",
         "numbers": "bn_wc 49.20±2.12 (n=3) vs bn 50.34±1.64 (n=3), bn_wn: no finished run",
         "finished_runs": 6},
        {"claim_id": "wc1", "verdict": "not enough runs", "numbers": "bn_wc: no finished run vs bn: no finished run"}])
    _claims(tmp_path / "enorm_fc", [
        {"claim_id": "order", "verdict": "not enough runs", "finished_runs": 3,
         "numbers": "p=1: bn_enorm: no finished run > enorm 40.56 > bn 42.58 > none: no finished run (not enough runs)"}])
    # the tuned protocol's verdict beside the shared rate's, marked where it differs
    _claims(tmp_path / "wc_resnet" / "tuned", [
        {"claim_id": "wc2", "verdict": "supported", "finished_runs": 6}, {"claim_id": "wc1", "verdict": "x"}])
    _claims(tmp_path / "enorm_fc" / "tuned", [{"claim_id": "order", "verdict": "not enough runs", "finished_runs": 2}])
    lines = verdict_index(tmp_path).splitlines()
    assert lines[2:] == [
        "| [`enorm_fc/`](enorm_fc/claims.md) | A claim. (`order`) | not enough runs "
        "| [not enough runs](enorm_fc/tuned/claims.md) | p=1: enorm 40.56 > bn 42.58 (not enough runs) |",
        "| [`wc_resnet/`](wc_resnet/claims.md) | ResNet: BN + WC \\| better. (`wc2`) | not supported "
        "| [supported](wc_resnet/tuned/claims.md) (changed) "
        "| bn_wc 49.20±2.12 (n=3) vs bn 50.34±1.64 (n=3) |"]  # wc1: no run bears on it
    _claims(tmp_path / "wc_vit", [{"claim_id": "vit", "verdict": "direction only", "finished_runs": 6}])
    _claims(tmp_path / "wc_vit" / "tuned", [{"claim_id": "vit", "verdict": "not enough runs", "finished_runs": 1}])
    assert "| [not enough runs](wc_vit/tuned/claims.md) |" in verdict_index(tmp_path)  # no conclusion changed
    (tmp_path / "wc_resnet" / "tuned" / "claims.csv").unlink()
    assert "| not supported | not run |" in verdict_index(tmp_path)
    # a tuned/ folder that states why its preset was not tuned, and has no claims
    (tmp_path / "wc_resnet" / "tuned" / "README.md").write_text("# Not tuned: why\n")
    assert "| not supported | [not tuned](wc_resnet/tuned/README.md) |" in verdict_index(tmp_path)


def test_the_index_replaces_only_the_text_between_its_markers(tmp_path):
    _claims(tmp_path / "wc_vit", [{"claim_id": "vit", "verdict": "direction only", "finished_runs": 6,
                                   "numbers": "ln_wc 47.69±0.43 (n=3) vs ln 47.00±1.11 (n=3)"}])
    readme = tmp_path / "README.md"
    readme.write_text(f"# Results\n\nprose before\n\n{BEGIN}\nstale\n{END}\n\nprose after\n")
    assert update_index(tmp_path) == readme
    text = readme.read_text()
    assert "stale" not in text and "| direction only |" in text
    assert text.startswith("# Results\n\nprose before\n\n") and text.endswith(f"{END}\n\nprose after\n")
    assert update_index(tmp_path) == readme and readme.read_text() == text  # regenerating changes nothing
    readme.write_text("no markers\n")
    assert update_index(tmp_path) is None and readme.read_text() == "no markers\n"
    with pytest.raises(NoIndexMarkers, match="no verdict index markers"):
        update_index(tmp_path, required=True)
    assert report(["--index", str(tmp_path)]) == 1


def test_the_verdict_index_of_results_is_up_to_date():
    text = (RESULTS / "README.md").read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    assert text[start:end].strip() == verdict_index(RESULTS), (
        "results/README.md's verdict index is out of date: run `wcnorm report --index results`")
