"""`wcnorm plot` draws non-empty, sane figures from fabricated runs."""

import matplotlib.image as mpimg
import pytest

try:
    from tests.fabricate import make_fc_grid, make_wc_grid
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from fabricate import make_fc_grid, make_wc_grid

from wcnorm.report.plot import main, plot_all, plot_conditioning, plot_curves, plot_fc_depth
from wcnorm.report.runs import load_conditioning, load_curves, load_runs

FC_ACCS = {(d, m): 50 + 2 * i + 0.1 * d
           for d in (1, 3, 5, 7) for i, m in enumerate(("none", "bn", "enorm", "bn_enorm"))}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return make_wc_grid(base / "wc"), make_fc_grid(base / "fc", FC_ACCS)


def _assert_png(path, min_kb=15):
    assert path.suffix == ".png" and path.stat().st_size > min_kb * 1024, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 300 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05  # something was drawn, not a blank canvas


def test_wc_curves(roots, tmp_path):
    with pytest.warns(UserWarning):
        curves = load_curves(roots[0])
    files = plot_curves(curves, tmp_path)
    assert [f.name for f in files] == ["curves.png"]
    _assert_png(files[0])


def test_fc_depth_plot(roots, tmp_path):
    files = plot_fc_depth(load_runs(roots[1]), tmp_path, formats=("png", "pdf"))
    assert [f.name for f in files] == ["fc_depth.png", "fc_depth.pdf"]
    _assert_png(files[0])
    assert files[1].read_bytes()[:4] == b"%PDF"


def test_conditioning_plot(roots, tmp_path):
    with pytest.warns(UserWarning):
        cond = load_conditioning(roots[0])
    files = plot_conditioning(cond, tmp_path)
    assert [f.name for f in files] == ["conditioning.png"]
    _assert_png(files[0])


def test_plot_all_and_cli(roots, tmp_path):
    with pytest.warns(UserWarning):
        files = plot_all(list(roots), tmp_path / "a")
    # Two presets: one curves figure each, never pooled.
    assert sorted(f.name for f in files) == ["conditioning.png", "curves_enorm_fc.png",
                                             "curves_wc_test.png", "fc_depth.png"]
    for f in files:
        _assert_png(f)
    assert main([str(roots[1]), "--out", str(tmp_path / "b"), "--formats", "png,pdf"]) == 0
    assert {f.name for f in (tmp_path / "b").iterdir()} == {
        "curves.png", "curves.pdf", "fc_depth.png", "fc_depth.pdf"}


def test_nothing_to_plot(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert "no run data" in capsys.readouterr().err
