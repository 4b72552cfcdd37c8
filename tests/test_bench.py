"""`wcnorm bench`: the tiny size end to end, the FLOP count, the overhead ratios.
Nothing here asserts a speed: only that the figures exist and are sane."""

from __future__ import annotations

import csv
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from wcnorm import bench
from wcnorm.bench.fields import FIELDS, _plain_loss, field_config, field_data, write_bench_scene
from wcnorm.bench.setups import norm_preset
from wcnorm.data import synthetic_split
from wcnorm.fields.scenes import load_blender
from wcnorm.methods import describe_weight_method
from wcnorm.tasks import build_task

# The smallest plan that still exercises every code path: fast nets, 1 warm-up, 2 repeats.
MICRO = replace(bench.SIZES["tiny"], warmup=1, repeats=2, steps=1)
MAY_BE_NAN = {"mfu"}  # no bf16 peak is known for a CPU


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: no figure here is checked for speed, and two OpenMP threads on a
    machine whose other core is busy spin at every barrier (steps become 10-100x slower)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.mark.slow
def test_tiny_end_to_end(tmp_path, capsys):
    assert bench.main(["--size", "tiny", "--device", "cpu", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*.csv")
    assert path.name == f"{bench.slug('cpu')}.csv"
    with open(path) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == bench.COLUMNS
        rows = list(reader)
    assert {r["part"] for r in rows} == set(bench.PARTS)
    assert {r["torch_version"] for r in rows} == {torch.__version__}
    assert {r["threads"] for r in rows} == {"1"}
    # images (3 x px x px), or a field's network
    assert all(r["device_name"] and r["date"] and r["shape"].startswith("mlp " if r["part"] == "fields" else "3x")
               and int(r["batch"]) > 0 for r in rows)
    for r in rows:
        value = float(r["value"])
        if r["metric"] in MAY_BE_NAN or r["metric"] == "peak_mem":
            assert math.isnan(value) or value >= 0, r
        else:
            assert math.isfinite(value) and value > 0, r
    metrics = {(r["part"], r["metric"]) for r in rows}
    assert {("throughput", "images_per_s"), ("throughput", "speedup"), ("wc", "wc_over_bn"),
            ("enorm", "cycle_over_step"), ("enorm", "ops_per_cycle"), ("throughput", "epoch_s"),
            ("wc", "bn_ops_per_step"), ("wc", "wc_ops_per_step"),
            ("mfu", "achieved"), ("mfu", "mfu"), ("fields", "rays_per_s"), ("fields", "points_per_s"),
            ("fields", "wc_over_none")} <= metrics
    assert {r["model"] for r in rows if r["part"] == "fields"} == {"nerf", "occupancy"}
    assert "wcnorm/reference" in capsys.readouterr().out  # the table was printed


def test_only_and_bad_part(tmp_path):
    assert bench.main(["--size", "tiny", "--device", "cpu", "--only", "nope", "--out", str(tmp_path)]) == 2
    assert not list(tmp_path.glob("*.csv"))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_step_flops_closed_form(bias):
    n, fan_in, fan_out = 16, 24, 10
    model = nn.Linear(fan_in, fan_out, bias=bias)
    x = torch.randn(n, fan_in, requires_grad=True)  # so backward computes the input gradient too
    fwd, bwd = bench.step_flops(model, x, torch.randint(0, fan_out, (n,)))
    assert fwd == 2 * n * fan_in * fan_out
    assert bwd == 2 * fwd  # grad wrt input + grad wrt weight
    assert model.weight.grad is None  # the count leaves no gradients behind


def test_conv_step_flops_first_layer():
    # A first layer: no input gradient, so backward is the weight gradient alone (= forward).
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten())
    fwd, bwd = bench.step_flops(model, torch.randn(2, 3, 5, 5), torch.randint(0, 8, (2,)))
    assert fwd == 2 * 2 * 8 * 5 * 5 * 3 * 9
    assert bwd == fwd


def test_wc_overhead_ratio():
    plan = replace(MICRO, options={"enorm_fc": {"depth": 2, "width": 64}})
    r = bench.wc_overhead("enorm_fc", plan, "cpu")
    assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("ratio", "bn_ms", "wc_ms"))


@pytest.mark.parametrize("norm", ["enorm", "bn_enorm"])
def test_enorm_overhead_ratio(norm):
    r = bench.enorm_overhead("enorm_fc", MICRO, "cpu", norm=norm)
    assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("ratio", "loop_ratio", "step_ms", "cycle_ms"))
    assert r["units"] > 0


def test_time_step_interleaves_and_counts():
    calls = []
    t = bench.time_step({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                        warmup=1, repeats=3, steps=2, device="cpu")
    assert [len(v) for v in t.values()] == [3, 3]
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert bench.median_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0


def test_peaks_and_slugs():
    assert bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert bench.peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert math.isnan(bench.peak_flops("AMD EPYC 7B13"))
    assert bench.slug("cpu").startswith("cpu-")
    assert bench.parse_spec("resnet18@224", 32) == ("resnet18", 224)
    assert bench.parse_spec("vit", 32) == ("vit", 32)


def test_op_counter_counts_launches_not_views():
    a, b = torch.ones(3, 4), torch.ones(5)
    with bench.OpCounter() as counter:
        c = a + 1                       # 1
        c.view(-1).narrow(0, 0, 2)      # views: 0
        torch._foreach_mul_([a, b], 2)  # one per tensor: 2
        a.t().sum()                     # 1
    assert counter.ops == 4


def test_enorm_part_reports_ops_per_cycle():
    r = bench.enorm_overhead("enorm_fc", MICRO, "cpu")
    # a 3-layer chain: 2 waves, each a fixed handful of ops plus a few per piece
    assert 0 < r["ops"] < 200


@pytest.mark.slow
def test_a_run_cut_short_keeps_the_parts_it_measured(tmp_path, monkeypatch):
    def killed(*args):
        raise KeyboardInterrupt  # e.g. a time limit ends the run during the wc part

    monkeypatch.setitem(bench.RUNNERS, "wc", killed)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--size", "tiny", "--device", "cpu", "--only", "throughput,wc", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("*.csv")
    with open(path) as f:
        parts = {r["part"] for r in csv.DictReader(f)}
    assert parts == {"throughput"}


def test_the_bench_trains_what_wcnorm_train_assembles():
    fc = {"depth": 2, "width": 32}
    cfg = bench.bench_config("enorm_fc", 8, batch=4, norm="bn_wc", options=fc, data_batches=3)
    assert (cfg.model.depth, cfg.model.width, cfg.norm.weight, cfg.dataset.name) == (2, 32, "wc", "synthetic")
    run = bench.build_run("enorm_fc", 8, batch=4, device="cpu", norm="bn_wc", options=fc, data_batches=3)
    assert describe_weight_method(run.model)["method"] == "wc" and len(run.train_loader) == 3
    assert run.optimizer.param_groups[0]["lr"] == cfg.optim.lr and run.trainer.callbacks == []
    # the images of a `dataset=synthetic` run of that size, which the reference loop reads too
    assert torch.equal(run.data.train.x, synthetic_split(12, 8).x)
    _, setup = bench.build_trainer("enorm_fc", 8, batch=4, device="cpu", act_norm="none", weight="wc", options=fc)
    assert setup == "wcnorm[fp32,ArrayLoader,foreach]"
    # each model against its usual normalizer: BN for the CNNs, LayerNorm for the ViT
    assert [norm_preset("resnet18"), norm_preset("vit", weight="wc"), norm_preset("resnet18", "none", "wc")] \
        == ["bn", "ln_wc", "wc"]


# ----------------------------------------------------------------------------- the fields


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_the_field_bench_trains_its_presets_network_and_the_reference_the_same_loss(field, tmp_path):
    cfg = field_config(field, "smoke", field_data(tmp_path, field), norm="wc")
    assert cfg.experiment == FIELDS[field][0] and cfg.budget == "smoke" and cfg.norm.weight == "wc"
    task = build_task(cfg, torch.device("cpu"))
    batch = next(iter(task.train_loader))
    torch.manual_seed(0)  # NeRF samples its depths at random while training
    ours = task.loss(task.model, batch)[0]
    torch.manual_seed(0)
    assert torch.allclose(_plain_loss(task.model, batch), ours)  # what the plain loop minimises


def test_the_bench_scene_is_a_blender_scene_of_opaque_views_on_a_circle(tmp_path):
    scene = load_blender(write_bench_scene(tmp_path), "val")
    assert len(scene) == 4 and (scene.height, scene.width) == (32, 32)
    centres = scene.poses[:, :, 3]
    assert torch.allclose(centres.norm(dim=1), torch.full((4,), 4.0))  # four cameras 4 units out
    # each camera looks at the origin: its -z axis points from its centre to the centre of the scene
    assert torch.allclose(-scene.poses[:, :, 2], -centres / centres.norm(dim=1, keepdim=True), atol=1e-6)


def test_the_bench_flushes_denormals_only_while_it_measures():
    tiny = torch.tensor([1e-40])  # a float32 denormal
    with bench.flushed_denormals():
        assert (tiny * 1).item() == 0.0  # flushed: denormal arithmetic would skew CPU times
    assert (tiny * 1).item() > 0  # and IEEE arithmetic is back for whatever runs next
