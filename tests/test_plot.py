"""`wcnorm plot` draws non-empty, sane figures from fabricated runs."""

import shutil

import matplotlib.image as mpimg
import pytest
from fabricate import (
    make_fc_grid,
    make_nerf_grid,
    make_nerf_run,
    make_run,
    make_shape_grid,
    make_shape_run,
    make_wc_grid,
)  # tests/ is on sys.path under pytest

from wcnorm.report.plot import (
    copy_pictures,
    gallery_rows,
    main,
    plot_all,
    plot_conditioning,
    plot_curves,
    plot_fc_depth,
    plot_gallery,
)
from wcnorm.report.runs import load_conditioning, load_curves, load_runs, rendered_views

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


def test_curves_of_different_batch_sizes_are_never_pooled(tmp_path):
    from wcnorm.report import plot

    for b in (4, 16, 64):  # a small-batch study: one panel per batch size, in order
        for norm in ("bn", "enorm"):
            for seed in (0, 1):
                make_run(tmp_path / "runs", norm=norm, seed=seed, batch_size=b, tag=f"_b{b}",
                         experiment="enorm_resnet_small_batch", conditioning=True)
    for load in (load_curves, load_conditioning):
        keys, panels = plot._panels(load(tmp_path / "runs"))
        assert [plot._title(keys, v) for v, _ in panels] == [
            f"resnet18 / cifar10 / batch {b}" for b in (4, 16, 64)]
        assert all(g["run_dir"].nunique() == 4 for _, g in panels)
    _assert_png(plot_curves(load_curves(tmp_path / "runs"), tmp_path / "out")[0])


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


def test_conditioning_plot_draws_raw_weights_only_where_they_differ(roots, tmp_path, monkeypatch):
    import pandas as pd

    from wcnorm.report import plot

    with pytest.warns(UserWarning):
        cond = load_conditioning(roots[0])
    assert (cond["kappa_eff"] != cond["kappa_raw"]).any()  # the fabricated WC runs differ
    plain = cond.assign(norm="bn", kappa_raw=cond["kappa_eff"], run_dir=cond["run_dir"] + "-bn")
    drawn = []
    band = plot._band
    monkeypatch.setattr(plot, "_band", lambda ax, g, x, y, norm, *a, **k: (drawn.append((norm, y)),
                                                                          band(ax, g, x, y, norm, *a, **k)))
    plot_conditioning(pd.concat([cond, plain], ignore_index=True), tmp_path)
    wc = set(cond["norm"])
    assert {(n, y) for n, y in drawn} == {("bn", "kappa_eff"), *((n, y) for n in wc
                                                                 for y in ("kappa_eff", "kappa_raw"))}


@pytest.mark.slow
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


# --- neural fields -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def field_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("fields")
    return make_nerf_grid(base / "nerf"), make_shape_grid(base / "shape")


def test_field_curves(field_roots, tmp_path):
    curves = load_curves(list(field_roots))
    nerf = curves[curves["task"] == "nerf"]
    assert nerf["val_psnr"].isna().any() and nerf["val_psnr"].notna().any()  # sparse evals
    files = plot_curves(curves, tmp_path)
    assert [f.name for f in files] == ["curves_wc_nerf.png", "curves_wc_shape.png"]
    for f in files:
        _assert_png(f)


def test_nerf_gallery_picks_one_seed_one_view_per_scene(field_roots):
    seed, rows = gallery_rows(load_runs(field_roots[0]), "nerf")
    assert seed == 0 and [r.name for r in rows] == ["fern", "lego"]
    fern, lego = rows
    assert set(fern.runs) == {"none", "wn", "wc"} and set(lego.runs) == {"none", "wn", "ws", "wc"}
    assert lego.view == "r_0" and lego.truth.name == "r_0_gt.png"
    for norm, png in lego.pictures.items():
        # The test render (not the val render of the last epoch) of that norm's own run.
        assert png.parts[-5:] == (f"nerf_lego_{norm}", "seed0", "renders", "test", "r_0_pred.png")


@pytest.mark.parametrize("names", ["{view}_{role}.png", "{role}_{view}.png",
                                   "{role}/{view}.png", "{view}-rgb-{role}.png"])
def test_render_pairs_by_common_name(tmp_path, names):
    names_gt = names.replace("{role}", "gt")
    run = make_nerf_run(tmp_path, views=("r_10", "r_2"), render_names=names)
    # A depth map beside the renders names neither role: it is no view's picture.
    (run / "renders" / "test" / "r_2_depth.png").write_bytes(b"")
    views = rendered_views(run, "renders/test")
    assert list(views) == ["r_2", "r_10"]  # natural order; the epoch renders are no test views
    assert rendered_views(run) == rendered_views(run, "renders") == views  # result.json silent
    for view in views:
        assert set(views[view]) == {"pred", "gt"}
        assert views[view]["gt"] == run / "renders" / "test" / names_gt.format(view=view)
    assert "r_2_depth" not in " ".join(p.name for v in views.values() for p in v.values())


def test_trainer_render_names_are_read_exactly(tmp_path):
    # <view>_pred.png / <view>_gt.png, as the trainer writes them: the view is the rest,
    # whatever words it holds (a view named "ref_3" is no ground truth).
    run = make_nerf_run(tmp_path, views=("ref_3", "IMG_4026"))
    views = rendered_views(run, "renders/test")
    assert {v: sorted(f) for v, f in views.items()} == {"IMG_4026": ["gt", "pred"],
                                                        "ref_3": ["gt", "pred"]}
    assert views["ref_3"]["pred"].name == "ref_3_pred.png"
    # Without its test renders, a run's val renders of an epoch are not taken for them.
    shutil.rmtree(run / "renders" / "test")
    assert (run / "renders" / "epoch_006").is_dir() and rendered_views(run) == {}


def test_gallery_seed_with_most_pictures_and_missing_pictures(tmp_path):
    for norm in ("none", "wc"):
        make_nerf_run(tmp_path, norm=norm, seed=0, views=())  # seed 0 rendered nothing
        make_nerf_run(tmp_path, norm=norm, seed=1)
    make_nerf_run(tmp_path, norm="wn", seed=0, views=())
    seed, rows = gallery_rows(load_runs(tmp_path), "nerf")
    assert seed == 1 and set(rows[0].pictures) == {"none", "wc"}
    files = plot_gallery(load_runs(tmp_path), tmp_path / "out")
    assert [f.name for f in files] == ["gallery_nerf.png"]
    _assert_png(files[0])
    # The seed asked for has no renders: no figure, and a warning says why.
    with pytest.warns(UserWarning, match="no test renders in the nerf runs of seed 0"):
        assert plot_gallery(load_runs(tmp_path), tmp_path / "none", seed=0) == []


def test_shape_gallery(field_roots, tmp_path):
    runs = load_runs(field_roots[1])
    seed, rows = gallery_rows(runs, "shape")
    assert seed == 0 and [r.name for r in rows] == ["armadillo", "bunny"]
    for row in rows:
        for norm, png in row.pictures.items():
            assert png.name == "mesh.png" and f"occupancy_{row.name}_{norm}" in png.parts
    files = plot_gallery(runs, tmp_path / "all")
    assert [f.name for f in files] == ["gallery_shape.png"]
    _assert_png(files[0])


def test_shape_gallery_missing_picture(tmp_path):
    for seed in (0, 1):
        make_shape_run(tmp_path, norm="none", seed=seed)
        make_shape_run(tmp_path, norm="wc", seed=seed, mesh_picture=seed == 1)
    runs = load_runs(tmp_path)
    # Seed 1 has both pictures, seed 0 one: the gallery shows seed 1.
    seed, rows = gallery_rows(runs, "shape")
    assert seed == 1 and all(rows[0].pictures.values())
    # Asked for seed 0: the run without a mesh picture gets an empty panel, not a hole.
    seed, rows = gallery_rows(runs, "shape", seed=0)
    assert rows[0].pictures["wc"] is None and rows[0].pictures["none"].name == "mesh.png"
    files = plot_gallery(runs, tmp_path / "out", seed=0)
    assert [f.name for f in files] == ["gallery_shape.png"]
    _assert_png(files[0])


def test_plot_all_field_runs(field_roots, tmp_path):
    files = plot_all(list(field_roots), tmp_path)
    assert sorted(f.name for f in files) == ["curves_wc_nerf.png", "curves_wc_shape.png",
                                             "gallery_nerf.png", "gallery_shape.png"]
    for f in files:
        _assert_png(f)
    # Classification runs: no gallery, and no warning about one.
    assert plot_gallery(load_runs(make_run(tmp_path / "cls")), tmp_path / "cls_out") == []


def test_the_pictures_of_the_gallerys_seed_are_copied_whole(field_roots, tmp_path):
    (tmp_path / "renders" / "gone").mkdir(parents=True)  # left from runs no longer there
    files = copy_pictures(load_runs(list(field_roots)), tmp_path)
    rel = sorted(str(f.relative_to(tmp_path)) for f in files)
    # every test view of every seed-0 lego run, the ground truth once per view
    lego = [r for r in rel if r.startswith("renders/lego/")]
    assert lego == sorted(f"renders/lego/{who}/{view}.png" for who in ("ground_truth", "none", "wc", "wn", "ws")
                          for view in ("r_0", "r_1"))
    assert "renders/fern/wc/r_0.png" in rel and not (tmp_path / "renders" / "gone").exists()
    assert sorted(r for r in rel if r.startswith("meshes/")) == sorted(
        f"meshes/{shape}/{norm}.png" for shape in ("armadillo", "bunny") for norm in ("none", "wn", "ws", "wc"))
    seed0 = gallery_rows(load_runs(field_roots[0]), "nerf")[1][1].pictures["wc"]  # lego, wc, r_0
    assert (tmp_path / "renders/lego/wc/r_0.png").read_bytes() == seed0.read_bytes()


def test_a_non_numeric_cell_in_one_metrics_csv_leaves_that_run_out_only(tmp_path):
    runs = make_wc_grid(tmp_path / "runs")
    bad = sorted(runs.rglob("metrics.csv"))[0]
    lines = bad.read_text().splitlines()
    cells = lines[2].split(",")
    cells[lines[0].split(",").index("train_loss")] = "oops"  # epoch 2's train_loss
    bad.write_text("\n".join(lines[:2] + [",".join(cells)] + lines[3:]) + "\n")
    with pytest.warns(UserWarning, match=rf"{bad}: row 2, column 'train_loss' holds 'oops', not a number"):
        files = plot_all(runs, tmp_path / "out")
    assert [f.name for f in files if f.name.startswith("curves")]  # the other runs are drawn
    assert str(bad.parent) not in set(load_curves(runs)["run_dir"])
