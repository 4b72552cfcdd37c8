"""The papers' claims, tested on fabricated numbers; the statistics against hand values."""

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fabricate import (  # tests/ is on sys.path under pytest
    make_fc_grid,
    make_nerf_run,
    make_run,
    make_shape_run,
)

from wcnorm.report.claims import (
    ALIASES,
    CLAIMS,
    CONTRADICTED,
    DIRECTION_ONLY,
    NOT_ENOUGH,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    evaluate_claims,
)
from wcnorm.report.claims_files import write_claims
from wcnorm.report.runs import load_runs
from wcnorm.report.stats import holm, seeds_for_power, welch

FC_ORDER = ("bn_enorm", "enorm", "bn", "none")
PRESETS = Path(__file__).resolve().parents[1] / "conf" / "experiment"
VERDICTS = {SUPPORTED, DIRECTION_ONLY, NOT_SUPPORTED, CONTRADICTED, NOT_ENOUGH}


# --- statistics --------------------------------------------------------------------------

def test_welch_by_hand_df_2():
    # Two runs per cell, equal variances: the Welch-Satterthwaite df is exactly 2, where
    # Student's t has closed forms: two-sided p = 1 - t / sqrt(2 + t^2) and the
    # quantile t_q = (2q - 1) / sqrt(2 q (1 - q)).
    w = welch([10.0, 12.0], [7.0, 9.0])
    se = math.sqrt(2 / 2 + 2 / 2)  # s^2 = 2 in both cells
    t = 3 / se
    crit = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t_{2, 0.975} = 4.3027
    assert (w.diff, w.n_a, w.n_b) == (3.0, 2, 2)
    assert w.se == pytest.approx(se) and w.t == pytest.approx(t)
    assert w.df == pytest.approx(2.0)
    assert w.p == pytest.approx(1 - t / math.sqrt(2 + t * t))  # 0.1679
    assert (w.ci_low, w.ci_high) == pytest.approx((3 - crit * se, 3 + crit * se))
    assert crit == pytest.approx(4.3027, abs=1e-4)  # the printed t table


def test_welch_by_hand_df_4():
    # Three runs per cell, equal variances: df = 4, where the t CDF is
    # F(t) = 1/2 + (3/8) u (1 - t^2 / (12 (1 + t^2/4))), u = t / sqrt(1 + t^2/4).
    w = welch([92.0, 93.0, 94.0], [90.0, 91.0, 92.0])
    t = 2 / math.sqrt(1 / 3 + 1 / 3)
    u = t / math.sqrt(1 + t * t / 4)
    cdf = 0.5 + 3 / 8 * u * (1 - t * t / (12 * (1 + t * t / 4)))
    assert w.t == pytest.approx(t) and w.df == pytest.approx(4.0)
    assert w.p == pytest.approx(2 * (1 - cdf))  # 0.0705: not significant at 0.05
    # t_{4, 0.975} = 2.7764 from the printed t table.
    assert (w.ci_low, w.ci_high) == pytest.approx((2 - 2.7764 * w.se, 2 + 2.7764 * w.se),
                                                  abs=1e-3)


def test_welch_unequal_variances_and_sizes():
    a, b = [71.2, 73.5, 72.8, 74.1], [69.9, 70.4, 71.8]
    ma, mb = sum(a) / 4, sum(b) / 3
    va = sum((x - ma) ** 2 for x in a) / 3 / 4  # s_a^2 / n_a
    vb = sum((x - mb) ** 2 for x in b) / 2 / 3  # s_b^2 / n_b
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    w = welch(a, b)
    assert w.diff == pytest.approx(ma - mb) and w.se == pytest.approx(math.sqrt(va + vb))
    assert w.t == pytest.approx((ma - mb) / math.sqrt(va + vb))
    assert w.df == pytest.approx(df) and 4 < w.df < 5  # between min(n) - 1 and n_a + n_b - 2
    # Fixed values, verified independently with scipy.stats.ttest_ind(a, b,
    # equal_var=False) and its confidence_interval(0.95).
    assert w.p == pytest.approx(0.04867196278991883, rel=1e-9)
    assert (w.ci_low, w.ci_high) == pytest.approx((0.018928024217781836, 4.381071975782223),
                                                  rel=1e-9)
    assert welch(b, a).p == pytest.approx(w.p) and welch(b, a).diff == pytest.approx(-w.diff)


def test_welch_edges():
    with pytest.raises(ValueError, match=">= 2 values"):
        welch([1.0], [1.0, 2.0])
    w = welch([5.0, 5.0], [3.0, 3.0])  # no spread in either cell: undefined, not "certain"
    assert w.diff == 2.0 and math.isnan(w.p) and math.isnan(w.ci_low)


def test_holm_hand_worked():
    # Sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> 0.06
    # (kept non-decreasing), each back in its original place.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])  # a family of one: uncorrected
    assert holm([0.01, 0.01, 0.04]) == pytest.approx([0.03, 0.03, 0.04])  # ties
    with pytest.raises(ValueError):
        holm([0.01, float("nan")])


def test_seeds_for_power_matches_the_textbook():
    # Two-sided 0.05, 80 % power, equal spreads: Cohen's table gives 64, 26 and 17 per
    # group for standardized effects d = 0.5, 0.8 and 1.
    assert seeds_for_power(0.5, 1.0, 1.0) == 64
    assert seeds_for_power(0.8, 1.0, 1.0) == 26
    assert seeds_for_power(-2.0, 2.0, 2.0) == 17  # a gap either way, in any unit
    assert seeds_for_power(1.0, 1.0, 1.0, alpha=0.01) > 17  # a stricter level needs more
    assert seeds_for_power(0.0, 1.0, 1.0) is None and seeds_for_power(1.0, 0.0, 0.0) is None
    assert seeds_for_power(0.01, 1.0, 1.0, most=50) is None


# --- verdicts ------------------------------------------------------------------------------

def _cell(root, model, dataset, norm, accs, **kw):
    for seed, acc in enumerate(accs):
        make_run(root, model=model, dataset=dataset, norm=norm, seed=seed, final_acc=acc, **kw)


def _verdicts(root, claims=None) -> pd.DataFrame:
    return evaluate_claims(load_runs(root), claims).set_index("claim_id")


WC_VS = Claim(id="x", paper="WC", text="BN + WC beats BN and BN + WS.", model="resnet18",
              dataset="cifar10", better="bn_wc", worse=("bn", "bn_ws"))


@pytest.mark.parametrize("accs, verdict", [
    # Both gaps large against a spread of 1: significant after Holm.
    ({"bn_wc": [94, 95, 96], "bn": [90, 91, 92], "bn_ws": [89, 90, 91]}, SUPPORTED),
    # vs BN: +2 with p = 0.0705 (hand value above): right direction, not significant.
    ({"bn_wc": [92, 93, 94], "bn": [90, 91, 92], "bn_ws": [85, 86, 87]}, DIRECTION_ONLY),
    # vs BN: -0.5, far from significant.
    ({"bn_wc": [90, 91, 92], "bn": [90.5, 91.5, 92.5], "bn_ws": [80, 81, 82]}, NOT_SUPPORTED),
    # vs BN: -5, significant: refuted.
    ({"bn_wc": [85, 86, 87], "bn": [90, 91, 92], "bn_ws": [80, 81, 82]}, CONTRADICTED),
    # One run of BN + WC: no variance, no test.
    ({"bn_wc": [93], "bn": [90, 91, 92], "bn_ws": [85, 86, 87]}, NOT_ENOUGH),
    # A significant gap against the claim refutes it, even while a cell lacks runs.
    ({"bn_wc": [85, 86, 87], "bn": [90, 91, 92], "bn_ws": [80]}, CONTRADICTED),
])
def test_five_verdicts(tmp_path, accs, verdict):
    for norm, values in accs.items():
        _cell(tmp_path, "resnet18", "cifar10", norm, values)
    row = _verdicts(tmp_path, [WC_VS]).loc["x"]
    assert row["verdict"] == verdict
    # A settled claim needs no more seeds; every other verdict says how many.
    assert bool(row["seeds_needed"]) == (verdict not in (SUPPORTED, CONTRADICTED))


def test_comparisons_carry_welch_and_holm(tmp_path):
    for norm, values in {"bn_wc": [92, 93, 94], "bn": [90, 91, 92], "bn_ws": [85, 86, 87]}.items():
        _cell(tmp_path, "resnet18", "cifar10", norm, values)
    row = _verdicts(tmp_path, [WC_VS]).loc["x"]
    bn, ws = row["tests"]
    assert (bn.better, bn.worse, bn.n_better, bn.n_worse) == ("bn_wc", "bn", 3, 3)
    w = welch([92, 93, 94], [90, 91, 92])
    assert (bn.diff, bn.ci_low, bn.ci_high, bn.p) == pytest.approx(
        (2.0, w.ci_low, w.ci_high, w.p))
    # Holm over the claim's two comparisons: the smaller p (vs BN + WS) is doubled, the
    # larger one kept, since 2 x p_ws < p_bn.
    assert ws.p_holm == pytest.approx(2 * ws.p) and bn.p_holm == pytest.approx(bn.p)
    assert bn.family_size == ws.family_size == 2
    assert not bn.significant and ws.significant and bn.in_direction
    assert "bn_wc - bn: +2 [" in row["comparisons"] and "p=0.0705, p_holm=0.0705, n=3/3" \
        in row["comparisons"]
    # 80 % power at 0.05 / 2 for a gap of 2 with spreads 1 and 1.
    assert row["seeds_needed"] == f"about {seeds_for_power(2.0, 1.0, 1.0, alpha=0.025)} per cell"


def test_not_enough_runs_says_how_many_seeds(tmp_path):
    # One run vs three: the single run borrows the other cell's spread for the estimate.
    _cell(tmp_path / "a", "resnet18", "cifar10", "bn_wc", [93])
    _cell(tmp_path / "a", "resnet18", "cifar10", "bn", [90, 91, 92])
    claim = Claim(id="x", paper="WC", text="", model="resnet18", dataset="cifar10",
                  better="bn_wc", worse=("bn",))
    row = _verdicts(tmp_path / "a", [claim]).loc["x"]
    assert row["verdict"] == NOT_ENOUGH
    assert row["seeds_needed"] == f"about {seeds_for_power(2.0, 1.0, 1.0)} per cell"
    assert "not tested (fewer than 2 runs), n=1/3" in row["comparisons"]
    # One run each: no spread to plan with.
    _cell(tmp_path / "b", "resnet18", "cifar10", "bn_wc", [93])
    _cell(tmp_path / "b", "resnet18", "cifar10", "bn", [90])
    row = _verdicts(tmp_path / "b", [claim]).loc["x"]
    assert row["verdict"] == NOT_ENOUGH and row["seeds_needed"] == ">= 2 per cell"


@pytest.fixture
def wc_root(tmp_path):
    # ResNet-18 / CIFAR-10 (the wc_resnet preset): BN + WC well above BN -> supported.
    _cell(tmp_path, "resnet18", "cifar10", "bn_wc", [93, 94, 95], experiment="wc_resnet")
    _cell(tmp_path, "resnet18", "cifar10", "bn", [90, 91, 92], experiment="wc_resnet")
    # BN on ResNet-18 / CIFAR-10 at small batches, another preset: never pooled in.
    _cell(tmp_path, "resnet18", "cifar10", "bn", [10, 11, 12],
          experiment="enorm_resnet_small_batch", batch_size=2)
    # DenseNet / CIFAR-10, named BN + E: below BN, not significantly -> not supported.
    _cell(tmp_path, "densenet121", "cifar10", "bn_e", [90, 91])
    for norm, accs in (("bn", [92, 93]), ("bn_ws", [89, 90]), ("bn_wn", [88, 89])):
        _cell(tmp_path, "densenet121", "cifar10", norm, accs)
    # GoogLeNet / CIFAR-100: BN + WC only unfinished -> not enough runs.
    _cell(tmp_path, "googlenet", "cifar100", "bn", [70, 71])
    _cell(tmp_path, "googlenet", "cifar100", "bn_ws", [69, 70])
    _cell(tmp_path, "googlenet", "cifar100", "bn_wc", [99], finished=False)
    # GoogLeNet / CIFAR-10 training loss: BN + WC (alias of BN + E) falls fastest; the
    # loss scale varies a little by seed so that every cell has a spread.
    for norm, scale in (("bn_wc", 0.5), ("bn", 1.0), ("bn_ws", 1.1), ("bn_wn", 1.2)):
        for seed, s in enumerate((scale, scale * 1.05)):
            make_run(tmp_path, model="googlenet", dataset="cifar10", norm=norm, seed=seed,
                     final_acc=80, loss_scale=s)
    return tmp_path


def test_paper_claim_verdicts(wc_root):
    v = _verdicts(wc_root)
    assert list(v.index) == [c.id for c in CLAIMS]
    assert set(v["verdict"]) <= VERDICTS
    r18 = v.loc["wc2_resnet18_cifar10"]
    assert r18["verdict"] == SUPPORTED and r18["finished_runs"] == 6
    assert r18["numbers"] == ("bn_wc 94.00±1.00 (n=3) vs bn 91.00±1.00 (n=3), bn_ws: no "
                              "finished run, bn_wn: no finished run")
    assert v.loc["wc4_densenet121_cifar10", "verdict"] == NOT_SUPPORTED
    assert v.loc["wc4_densenet121_cifar10", "seeds_needed"].startswith("none")
    assert v.loc["wc1_googlenet_cifar100", "verdict"] == NOT_ENOUGH  # unfinished only
    assert v.loc["wc2_resnet50_cifar10", "verdict"] == NOT_ENOUGH  # no runs at all
    assert v.loc["wc2_resnet50_cifar10", "seeds_needed"] == ">= 2 per cell"
    assert v.loc["wc3_googlenet_cifar10_train_loss", "verdict"] == SUPPORTED
    assert v.loc["enorm_fc_order", "verdict"] == NOT_ENOUGH
    # Equal accuracies of every scheme: no gap in the claimed direction.
    assert v.loc["wc_vs_weight_norms_googlenet_cifar10", "verdict"] == NOT_SUPPORTED


def test_bn_e_alias_pools_bn_wc(wc_root):
    v = _verdicts(wc_root)
    # The loss claim names BN + E; only bn_wc runs exist, and they count.
    loss = v.loc["wc3_googlenet_cifar10_train_loss"]
    assert loss["numbers"].startswith("bn_e|bn_wc ") and "(n=2)" in loss["numbers"]
    assert "BN + E read as BN + WC" in loss["note"]
    assert "BN + E" not in v.loc["wc2_resnet18_cifar10", "note"]


def test_all_four_schemes_needed_where_claim_names_them(tmp_path):
    _cell(tmp_path, "densenet121", "cifar10", "bn_wc", [95, 96])
    _cell(tmp_path, "densenet121", "cifar10", "bn", [90, 91])
    v = _verdicts(tmp_path)
    assert v.loc["wc4_densenet121_cifar10", "verdict"] == NOT_ENOUGH
    assert v.loc["wc4_densenet121_cifar10", "seeds_needed"].endswith(
        ">= 2 per cell where no gap or spread is observed yet")


# --- most depths -------------------------------------------------------------------------

def _fc(root, verdicts: dict[int, str]):
    """FC grid, three seeds at mean +-1: per depth the order holds with gaps of 10
    ("supported"), or its first pair is swapped by 10 ("contradicted") or by 1 ("not
    supported")."""
    accs = {}
    for depth, verdict in verdicts.items():
        means = dict(zip(FC_ORDER, (60, 50, 40, 30)))
        if verdict == CONTRADICTED:
            means["bn_enorm"] = 40
        elif verdict == NOT_SUPPORTED:
            means["bn_enorm"] = 49
        accs.update({(depth, m): acc for m, acc in means.items()})
    return make_fc_grid(root, accs, seeds=(0, 1, 2))


FC = [c for c in CLAIMS if c.id == "enorm_fc_order"]


@pytest.mark.parametrize("per_depth, verdict", [
    ((SUPPORTED, SUPPORTED, SUPPORTED, CONTRADICTED), SUPPORTED),
    # Exactly half is not most; half significantly against refutes "most depths".
    ((SUPPORTED, SUPPORTED, CONTRADICTED, CONTRADICTED), CONTRADICTED),
    ((SUPPORTED, SUPPORTED, NOT_SUPPORTED, NOT_SUPPORTED), NOT_SUPPORTED),
    ((SUPPORTED, NOT_SUPPORTED, NOT_SUPPORTED, CONTRADICTED), NOT_SUPPORTED),
])
def test_most_depths_rule(tmp_path, per_depth, verdict):
    depths = dict(zip((1, 3, 5, 7), per_depth))
    v = _verdicts(_fc(tmp_path, depths), FC).iloc[0]
    assert v["verdict"] == verdict
    for depth, expected in depths.items():
        assert f"p={depth}: " in v["numbers"]
        assert [r.level_verdict for r in v["tests"] if r.level == depth] == [expected] * 3
        # Holm within the depth: three comparisons per family.
        assert {r.family_size for r in v["tests"]} == {3}


def test_most_depths_counts_and_leaves_out_short_depths(tmp_path):
    root = _fc(tmp_path, {1: SUPPORTED, 3: SUPPORTED, 5: SUPPORTED, 7: CONTRADICTED})
    make_run(root, model="enorm_fc", norm="bn", depth=9, final_acc=50, experiment="enorm_fc")
    v = _verdicts(root, FC).iloc[0]
    assert v["verdict"] == SUPPORTED
    assert "p=7: bn_enorm 40.00 > enorm 50.00 > bn 40.00 > none 30.00 (contradicted)" \
        in v["numbers"]
    assert v["numbers"].endswith("of 4 depths tested: 3 supported, 1 contradicted")
    assert "depths left out, a cell with fewer than 2 finished runs: 9" in v["note"]


def test_most_depths_direction_only(tmp_path):
    # Gaps of 1 against a spread of 1 at every depth: the order holds, untested at 0.05.
    accs = {(d, m): 60 - i for d in (1, 3, 5) for i, m in enumerate(FC_ORDER)}
    v = _verdicts(make_fc_grid(tmp_path, accs, seeds=(0, 1, 2)), FC).iloc[0]
    assert v["verdict"] == DIRECTION_ONLY
    assert v["seeds_needed"] == f"about {seeds_for_power(1.0, 1.0, 1.0, alpha=0.05 / 3)} per cell"


# --- the claims added from the papers' text ------------------------------------------------

def _claim(cid):
    return next(c for c in CLAIMS if c.id == cid)


def test_enorm_interleaved_with_sgd(tmp_path):
    _cell(tmp_path, "enorm_fullconv", "cifar10", "bn_enorm", [91, 92, 93])
    _cell(tmp_path, "enorm_fullconv", "cifar10", "bn", [88, 89, 90])
    pre = "enorm_resnet_small_batch"
    for b, (with_enorm, bn) in {2: (70, 60), 8: (85, 80)}.items():
        _cell(tmp_path, "resnet18", "cifar10", "bn_enorm", [with_enorm - 1, with_enorm,
                                                             with_enorm + 1],
              experiment=pre, batch_size=b, tag=f"_b{b}")
        _cell(tmp_path, "resnet18", "cifar10", "bn", [bn - 1, bn, bn + 1], experiment=pre,
              batch_size=b, tag=f"_b{b}")
    # BN alone at batch 16: that batch size cannot be tested.
    _cell(tmp_path, "resnet18", "cifar10", "bn", [80, 81], experiment=pre, batch_size=16,
          tag="_b16")
    # ImageNet: one seed per cell (the preset's protocol).
    for norm, acc in (("bn", 60), ("bn_enorm", 61), ("enorm", 59), ("gn", 59)):
        _cell(tmp_path, "resnet18", "imagenet", norm, [acc],
              experiment="enorm_resnet_imagenet_small_batch", batch_size=8)
    v = _verdicts(tmp_path)
    assert v.loc["enorm_sgd_enorm_fullconv_cifar10", "verdict"] == SUPPORTED
    r18 = v.loc["enorm_sgd_resnet18_cifar10"]
    assert r18["verdict"] == NOT_ENOUGH
    assert [(r.level, r.level_verdict) for r in r18["tests"]] == [
        (2, SUPPORTED), (8, SUPPORTED), (16, NOT_ENOUGH)]
    assert "batch sizes untested, a cell with fewer than 2 finished runs: 16" in r18["note"]
    assert "only runs of the enorm_resnet_small_batch preset" in r18["note"]
    net = v.loc["enorm_sgd_resnet18_imagenet"]
    assert net["verdict"] == NOT_ENOUGH and net["seeds_needed"] == ">= 2 per cell"
    # Below BN on one run, tied with GN: a gap against the claim, and a tie, untested.
    small = v.loc["enorm_small_batch_resnet18_imagenet"]
    assert small["verdict"] == NOT_ENOUGH
    assert small["seeds_needed"] == (">= 2 per cell; an observed, untested gap runs "
                                     "against the claim")


@pytest.mark.parametrize("gn_at_4, verdict", [(78, SUPPORTED), (95, CONTRADICTED)])
def test_enorm_small_batch_alternative(tmp_path, gn_at_4, verdict):
    pre = "enorm_resnet_small_batch"
    means = {2: {"enorm": 80, "bn": 60, "gn": 70}, 4: {"enorm": 85, "bn": 75, "gn": gn_at_4}}
    for b, cell in means.items():
        for norm, m in cell.items():
            _cell(tmp_path, "resnet18", "cifar10", norm, [m - 1, m, m + 1], experiment=pre,
                  batch_size=b, tag=f"_b{b}")
    # BN at batch 128 from the WC preset: not one of this claim's batch sizes.
    _cell(tmp_path, "resnet18", "cifar10", "bn", [94, 95], experiment="wc_resnet")
    claim = _claim("enorm_small_batch_resnet18_cifar10")
    row = _verdicts(tmp_path, [claim]).loc[claim.id]
    assert row["verdict"] == verdict
    assert [(r.level, r.worse) for r in row["tests"]] == [(2, "bn"), (2, "gn"), (4, "bn"),
                                                         (4, "gn")]
    assert {r.family_size for r in row["tests"]} == {4}  # Holm over every batch size
    assert row["numbers"].startswith("batch=2: enorm 80.00±1.00 (n=3) vs bn 60.00±1.00")
    assert "'an alternative' read in its testable strong sense" in row["note"]


def test_wc_outperforms_weight_norms(tmp_path):
    # The FC net at two depths (wc_fc): BN + WC above BN + WS and BN + WN at both.
    for depth in (1, 3):
        for norm, m in (("bn_wc", 60), ("bn_ws", 50), ("bn_wn", 52)):
            _cell(tmp_path, "enorm_fc", "cifar10", norm, [m - 1, m, m + 1], depth=depth,
                  experiment="wc_fc")
    # ResNet-18 (wc_resnet runs no BN + WN): BN + WC vs BN + WS alone.
    _cell(tmp_path, "resnet18", "cifar10", "bn_wc", [93, 94, 95], experiment="wc_resnet")
    _cell(tmp_path, "resnet18", "cifar10", "bn_ws", [90, 91, 92], experiment="wc_resnet")
    v = _verdicts(tmp_path)
    fc = v.loc["wc_vs_weight_norms_enorm_fc_cifar10"]
    assert fc["verdict"] == SUPPORTED
    assert [(r.level, r.worse) for r in fc["tests"]] == [(1, "bn_ws"), (1, "bn_wn"),
                                                        (3, "bn_ws"), (3, "bn_wn")]
    r18 = v.loc["wc_vs_weight_norms_resnet18_cifar10"]
    assert r18["verdict"] == SUPPORTED and [r.worse for r in r18["tests"]] == ["bn_ws"]


def test_fc_claims_never_pool_the_two_fc_presets(tmp_path):
    # Both FC presets tabled together, at one depth. enorm_fc: the ENorm order holds
    # (ENorm + BN 60 > ENorm 50 > BN 40 > Baseline 30); wc_fc: BN + WC 70 above BN + WS
    # 60 and BN + WN 62. Each preset also runs cells the other's claim names, with
    # numbers that would flip its verdict if pooled: wc_fc's BN at 90 (above ENorm),
    # enorm_fc's BN + WN at 95 (above BN + WC).
    make_fc_grid(tmp_path, {(1, "bn_enorm"): 60, (1, "enorm"): 50, (1, "bn"): 40,
                            (1, "none"): 30, (1, "bn_wn"): 95}, seeds=(0, 1, 2))
    for norm, m in (("bn_wc", 70), ("bn_ws", 60), ("bn_wn", 62), ("bn", 90)):
        _cell(tmp_path, "enorm_fc", "cifar10", norm, [m - 1, m, m + 1], depth=1,
              experiment="wc_fc")
    v = _verdicts(tmp_path)
    order, wc = v.loc["enorm_fc_order"], v.loc["wc_vs_weight_norms_enorm_fc_cifar10"]
    assert order["verdict"] == SUPPORTED and order["finished_runs"] == 12
    assert "bn 40.00" in order["numbers"] and "only runs of the enorm_fc preset" in order["note"]
    assert wc["verdict"] == SUPPORTED and wc["finished_runs"] == 9
    assert [(r.worse, r.n_worse, r.mean_worse) for r in wc["tests"]] == [("bn_ws", 3, 60.0),
                                                                         ("bn_wn", 3, 62.0)]
    assert "pools runs of the presets" not in order["note"] + wc["note"]


def test_a_claim_without_a_preset_says_when_it_pools_presets(tmp_path):
    # DenseNet's claim names no preset: runs of two presets both count, and it says so.
    for norm, m in (("bn_e", 95), ("bn", 90), ("bn_ws", 89), ("bn_wn", 88)):
        _cell(tmp_path, "densenet121", "cifar10", norm, [m - 1, m, m + 1],
              experiment="wc_densenet" if norm != "bn" else "other_study")
    row = _verdicts(tmp_path).loc["wc4_densenet121_cifar10"]
    assert row["finished_runs"] == 12
    assert "pools runs of the presets other_study, wc_densenet" in row["note"]


def _sweep(preset: str) -> dict[str, set[str]]:
    """model, dataset, norm and swept keys of a preset file."""
    cfg = yaml.safe_load((PRESETS / f"{preset}.yaml").read_text())
    base = {k.split("/")[-1]: {v} for d in cfg["defaults"] if isinstance(d, dict)
            for k, v in d.items() if k.startswith("override /")}
    for key, values in cfg["hydra"]["sweeper"]["params"].items():
        base[key] = set(str(values).split(","))
    return base


def test_claims_name_what_the_presets_run():
    presets = {p.stem: _sweep(p.stem) for p in PRESETS.glob("*.yaml")}
    keys = {"batch_size": "trainer.batch_size", "depth": "model.depth"}
    for c in CLAIMS:
        if c.per in FIELD_KEYS:
            continue  # test_field_claims_name_what_the_field_presets_run
        candidates = [presets[c.experiment]] if c.experiment else presets.values()
        runs = [g for g in candidates if c.model in g["model"] and c.dataset in g["dataset"]
                and any(n in g["norm"] for n in ALIASES.get(c.methods()[0],
                                                            (c.methods()[0],)))]
        assert runs, f"{c.id}: no preset runs {c.model}/{c.dataset}/{c.methods()[0]}"
        ran = set().union(*(g["norm"] for g in runs))
        for m in c.methods():
            if m not in c.worse or not c.min_worse:
                assert ran & set(ALIASES.get(m, (m,))), f"{c.id}: no preset runs {m}"
        assert not c.per or all(keys[c.per] in g for g in runs), c.id


FIELD_KEYS = ("scene", "shape")
FIELD_CLAIMS = [c for c in CLAIMS if c.per in FIELD_KEYS]


def test_field_claims_name_what_the_field_presets_run():
    assert {c.experiment for c in FIELD_CLAIMS} == {"wc_nerf", "wc_shape"}
    files = [PRESETS / f"{c.experiment}.yaml" for c in FIELD_CLAIMS]
    if not all(f.is_file() for f in files):
        pytest.skip("the neural-field presets wc_nerf and wc_shape are not in conf/experiment")
    for c in FIELD_CLAIMS:
        g = _sweep(c.experiment)
        assert c.model in g["model"], c.id
        # Its scenes or shapes are swept: by dataset (a scene per layout) or by name.
        assert any(len(g.get(k, ())) > 1 for k in ("dataset", f"dataset.{c.per}")), c.id
        assert "wc" in g["norm"] and set(c.worse) & g["norm"], c.id
        if not c.min_worse:
            assert set(c.worse) <= g["norm"], c.id


def _field_cells(root, cells: dict, metric: str):
    """``cells[(scene or shape, norm)]`` = the metric's values, one run per seed."""
    for (subject, norm), values in cells.items():
        for seed, v in enumerate(values):
            if metric == "final_test_psnr":
                make_nerf_run(root, scene=subject, norm=norm, seed=seed, test_psnr=v, views=())
            else:
                kw = {"test_iou": v} if metric == "final_test_iou" else {"chamfer": v}
                make_shape_run(root, shape=subject, norm=norm, seed=seed, mesh_picture=False, **kw)


def _field_verdicts(root) -> pd.DataFrame:
    return evaluate_claims(load_runs(root), FIELD_CLAIMS).set_index("claim_id")


def test_nerf_claims_per_scene(tmp_path):
    # lego: WC 5 dB above WN and WS, 7 above none. fern: WC 5 dB above WN (WS did not
    # run), but 5 dB below the plain MLP.
    _field_cells(tmp_path, {("lego", "wc"): [33, 34, 35], ("lego", "wn"): [28, 29, 30],
                            ("lego", "ws"): [28, 29, 30], ("lego", "none"): [26, 27, 28],
                            ("fern", "wc"): [26, 27, 28], ("fern", "wn"): [21, 22, 23],
                            ("fern", "none"): [31, 32, 33]}, "final_test_psnr")
    v = _field_verdicts(tmp_path)
    norms = v.loc["wc_vs_weight_norms_nerf_psnr"]
    assert norms["verdict"] == SUPPORTED
    # WS is compared where it ran, and its absence elsewhere costs nothing (WN suffices).
    assert [(r.level, r.worse) for r in norms["tests"]] == [("fern", "wn"), ("lego", "wn"),
                                                           ("lego", "ws")]
    assert {r.family_size for r in norms["tests"]} == {3}  # one Holm family over the scenes
    assert norms["numbers"].startswith("scene=fern: wc 27.00±1.00 (n=3) vs wn 22.00±1.00")
    none = v.loc["wc_vs_none_nerf_psnr"]
    assert none["verdict"] == CONTRADICTED
    assert [(r.level, r.level_verdict) for r in none["tests"]] == [("fern", CONTRADICTED),
                                                                  ("lego", SUPPORTED)]
    # The claim of the abstract and the reading of the baseline say how they were read.
    assert "'outperforms existing weight normalization techniques'" in norms["note"]
    assert "not in the abstract's words" in none["note"]
    # The shape claims have no runs here.
    assert v.loc["wc_vs_weight_norms_shape_iou", "verdict"] == NOT_ENOUGH


@pytest.mark.parametrize("wc_chamfer, verdict", [(1e-3, SUPPORTED), (6e-3, CONTRADICTED)])
def test_chamfer_claim_lower_is_better(tmp_path, wc_chamfer, verdict):
    spread = [0.95, 1.0, 1.05]
    cells = {(shape, norm): [cd * f for f in spread]
             for shape in ("armadillo", "bunny")
             for norm, cd in (("wc", wc_chamfer), ("wn", 3e-3), ("ws", 3.5e-3), ("none", 4e-3))}
    _field_cells(tmp_path, cells, "final_test_chamfer")
    v = _field_verdicts(tmp_path)
    for cid in ("wc_vs_weight_norms_shape_chamfer", "wc_vs_none_shape_chamfer"):
        row = v.loc[cid]
        assert row["verdict"] == verdict, cid
        assert {r.claimed for r in row["tests"]} == {"lower"}
        assert all((r.diff < 0) == (verdict == SUPPORTED) for r in row["tests"])
    assert len(v.loc["wc_vs_weight_norms_shape_chamfer", "tests"]) == 4  # 2 shapes x WN, WS
    assert "(lower is better)" in v.loc["wc_vs_weight_norms_shape_chamfer", "claim"]


def test_shape_iou_claim_and_preset_only(tmp_path):
    # WC's IoU above WN, WS and none on both shapes, but above WS by a hair on bunny.
    means = {"wc": 0.95, "wn": 0.92, "ws": 0.91, "none": 0.90}
    cells = {(shape, norm): [m - 0.005, m, m + 0.005] for shape in ("armadillo", "bunny")
             for norm, m in means.items()}
    cells[("bunny", "ws")] = [0.944, 0.949, 0.954]
    _field_cells(tmp_path, cells, "final_test_iou")
    # Ad-hoc occupancy runs outside the preset do not count, however good.
    make_shape_run(tmp_path, norm="ws", seed=5, test_iou=0.99, experiment=None)
    v = _field_verdicts(tmp_path)
    assert v.loc["wc_vs_weight_norms_shape_iou", "verdict"] == DIRECTION_ONLY
    assert v.loc["wc_vs_weight_norms_shape_iou", "finished_runs"] == 18
    assert v.loc["wc_vs_none_shape_iou", "verdict"] == SUPPORTED
    assert v.loc["wc_vs_weight_norms_shape_iou", "seeds_needed"].startswith("about ")


# --- files -------------------------------------------------------------------------------

def test_custom_claim_and_files(wc_root, tmp_path):
    claim = Claim(id="x", paper="WC", text="BN beats BN + WC on ResNet-18.",
                  model="resnet18", dataset="cifar10", better="bn", worse=("bn_wc",),
                  experiment="wc_resnet")
    table = evaluate_claims(load_runs(wc_root), [claim])
    assert table.loc[0, "verdict"] == CONTRADICTED
    path = write_claims(table, tmp_path / "out" / "claims.csv")
    back = pd.read_csv(path)
    assert list(back.columns[:8]) == ["claim_id", "paper", "claim", "verdict", "metric",
                                      "numbers", "comparisons", "seeds_needed"]
    assert back.loc[0, "budgets"] == "short" and back.loc[0, "finished_runs"] == 6
    long = pd.read_csv(tmp_path / "out" / "claims_comparisons.csv")
    assert len(long) == 1 and long.loc[0, "diff"] == -3 and long.loc[0, "claimed"] == "higher"
    assert long.loc[0, "p_holm"] == pytest.approx(welch([90, 91, 92], [93, 94, 95]).p, rel=1e-5)
    md = (tmp_path / "out" / "claims.md").read_text()
    assert "## x (WC): contradicted" in md and "> BN beats BN + WC on ResNet-18." in md
    assert "| bn > bn_wc | -3 | [-5.27, -0.733] | 0.0213 | 0.0213 | 3/3 | contradicted |" in md


def test_claims_md_details_the_claims_with_runs_and_lists_the_others(wc_root, tmp_path):
    table = evaluate_claims(load_runs(wc_root))
    write_claims(table, tmp_path / "claims.csv")
    md = (tmp_path / "claims.md").read_text()
    summary, rest = md.split("## Claims without a finished run here", 1)
    ran = table[table["finished_runs"] > 0]
    assert 0 < len(ran) < len(table)
    for r in ran.itertuples():  # a summary row and a section each
        assert f"| {r.claim_id} | {r.verdict} | {r.numbers} |" in summary
        assert f"## {r.claim_id} ({r.paper}): {r.verdict}" in summary
    for r in table[table["finished_runs"] == 0].itertuples():  # one line each, no section
        assert f"- {r.claim_id} ({r.paper}): {r.claim}" in rest
        assert f"## {r.claim_id} " not in md
    assert len(pd.read_csv(tmp_path / "claims.csv")) == len(table)  # the CSV keeps every claim


def test_infinite_chamfer_counts_against_wc(tmp_path):
    # One WC run extracted no surface: its Chamfer distance is infinite. No t-test is
    # defined, but WC's mean (infinite) stands against the claim.
    _field_cells(tmp_path, {("bunny", "wc"): [float("inf"), 1e-3, 1.1e-3],
                            ("bunny", "wn"): [3e-3, 3.1e-3, 3.2e-3]}, "final_test_chamfer")
    row = _field_verdicts(tmp_path).loc["wc_vs_weight_norms_shape_chamfer"]
    assert row["verdict"] == NOT_SUPPORTED
    assert "wc - wn: +inf, not tested (an infinite value), n=3/3" in row["comparisons"]
    assert row["numbers"].startswith("shape=bunny: wc inf (n=3) vs wn 0.0031±0.0001 (n=3)")
