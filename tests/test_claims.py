"""The papers' claims, checked on fabricated numbers."""

import pandas as pd
import pytest

try:
    from tests.fabricate import make_fc_grid, make_run
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from fabricate import make_fc_grid, make_run

from wcnorm.report.claims import (
    CLAIMS,
    NOT_ENOUGH,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    evaluate_claims,
    write_claims,
)
from wcnorm.report.runs import load_runs

FC_ORDER = ("bn_enorm", "enorm", "bn", "none")


def _cell(root, model, dataset, norm, accs, **kw):
    for seed, acc in enumerate(accs):
        make_run(root, model=model, dataset=dataset, norm=norm, seed=seed, final_acc=acc, **kw)


def _verdicts(root, claims=None) -> pd.Series:
    return evaluate_claims(load_runs(root), claims).set_index("claim_id")


@pytest.fixture
def wc_root(tmp_path):
    # ResNet-18 / CIFAR-10: BN + WC best -> supported.
    _cell(tmp_path, "resnet18", "cifar10", "bn_wc", [93, 94])
    _cell(tmp_path, "resnet18", "cifar10", "bn", [91, 92])
    # DenseNet / CIFAR-10, named BN + E: below BN -> not supported.
    _cell(tmp_path, "densenet121", "cifar10", "bn_e", [90, 91])
    for norm, accs in (("bn", [92, 93]), ("bn_ws", [89, 90]), ("bn_wn", [88, 89])):
        _cell(tmp_path, "densenet121", "cifar10", norm, accs)
    # GoogLeNet / CIFAR-100: BN + WC only unfinished -> not enough runs.
    _cell(tmp_path, "googlenet", "cifar100", "bn", [70, 71])
    _cell(tmp_path, "googlenet", "cifar100", "bn_ws", [69, 70])
    _cell(tmp_path, "googlenet", "cifar100", "bn_wc", [99], finished=False)
    # GoogLeNet / CIFAR-10 training loss: BN + WC (alias of BN + E) falls fastest.
    for norm, scale in (("bn_wc", 0.5), ("bn", 1.0), ("bn_ws", 1.1), ("bn_wn", 1.2)):
        _cell(tmp_path, "googlenet", "cifar10", norm, [80, 81], loss_scale=scale)
    return tmp_path


def test_pair_claim_verdicts(wc_root):
    v = _verdicts(wc_root)
    assert list(v.index) == [c.id for c in CLAIMS]
    assert set(v["verdict"]) <= {SUPPORTED, NOT_SUPPORTED, NOT_ENOUGH}
    assert v.loc["wc2_resnet18_cifar10", "verdict"] == SUPPORTED
    assert v.loc["wc2_resnet18_cifar10", "numbers"] == (
        "bn_wc 93.50±0.71 (n=2) vs bn 91.50±0.71 (n=2), bn_ws: no finished run, "
        "bn_wn: no finished run")
    assert v.loc["wc4_densenet121_cifar10", "verdict"] == NOT_SUPPORTED
    assert v.loc["wc1_googlenet_cifar100", "verdict"] == NOT_ENOUGH  # unfinished only
    assert v.loc["wc2_resnet50_cifar10", "verdict"] == NOT_ENOUGH  # no runs at all
    assert v.loc["wc3_googlenet_cifar10_train_loss", "verdict"] == SUPPORTED
    assert v.loc["enorm_fc_order", "verdict"] == NOT_ENOUGH


def test_bn_e_alias_pools_bn_wc(wc_root):
    v = _verdicts(wc_root)
    # The loss claim names BN + E; only bn_wc runs exist, and they count.
    loss = v.loc["wc3_googlenet_cifar10_train_loss"]
    assert loss["numbers"].startswith("bn_e|bn_wc ") and "(n=2)" in loss["numbers"]
    assert "BN + E read as BN + WC" in loss["note"]
    assert "BN + E" not in v.loc["wc2_resnet18_cifar10", "note"]


def test_all_four_schemes_needed_where_claim_names_them(tmp_path):
    _cell(tmp_path, "densenet121", "cifar10", "bn_wc", [95])
    _cell(tmp_path, "densenet121", "cifar10", "bn", [90])
    v = _verdicts(tmp_path)
    assert v.loc["wc4_densenet121_cifar10", "verdict"] == NOT_ENOUGH


def _fc(root, holds_at, depths=(1, 3, 5, 7)):
    accs = {}
    for d in depths:
        ranks = FC_ORDER if d in holds_at else ("enorm", "bn_enorm", "bn", "none")
        accs.update({(d, m): 60 - 2 * i for i, m in enumerate(ranks)})
    return make_fc_grid(root, accs)


def test_most_depths_rule(tmp_path):
    fc = [c for c in CLAIMS if c.id == "enorm_fc_order"]
    v = _verdicts(_fc(tmp_path / "a", holds_at={1, 3, 5}), fc).iloc[0]
    assert v["verdict"] == SUPPORTED and v["numbers"].endswith("holds at 3/4 depths")
    assert "p=7: bn_enorm 58.00 > enorm 60.00" in v["numbers"] and "fails" in v["numbers"]
    # Exactly half is not "most".
    v = _verdicts(_fc(tmp_path / "b", holds_at={1, 3}), fc).iloc[0]
    assert v["verdict"] == NOT_SUPPORTED
    # A depth lacking a method is left out of the count, and said so.
    root = _fc(tmp_path / "c", holds_at={1, 3})
    make_run(root, model="enorm_fc", norm="bn", depth=9, final_acc=50, experiment="enorm_fc")
    v = _verdicts(root, fc).iloc[0]
    assert v["numbers"].endswith("holds at 2/4 depths") and "lacking a method: 9" in v["note"]


def test_custom_claim_and_csv(wc_root, tmp_path):
    claim = Claim(id="x", paper="WC", text="BN beats BN + WC on ResNet-18.",
                  model="resnet18", dataset="cifar10", better="bn", worse=("bn_wc",))
    table = evaluate_claims(load_runs(wc_root), [claim])
    assert table.loc[0, "verdict"] == NOT_SUPPORTED
    path = write_claims(table, tmp_path / "out" / "claims.csv")
    back = pd.read_csv(path)
    assert list(back.columns[:6]) == ["claim_id", "paper", "claim", "verdict", "metric",
                                      "numbers"]
    assert back.loc[0, "budgets"] == "short" and back.loc[0, "finished_runs"] == 4
