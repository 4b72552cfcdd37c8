"""`wcnorm bench`: the tiny size end to end, the FLOP count, the overhead ratios.
Nothing here asserts a speed: only that the figures exist and are sane."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from wcnorm import bench
from wcnorm.bench.field_steps import (
    FIELDS,
    _plain_loss,
    field_config,
    field_data,
    write_bench_scene,
)
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
    assert {r["part"] for r in rows} == set(bench.DEFAULT_PARTS)
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
            ("fields", "wc_over_none"), ("fields", "none_over_none"), ("fields", "wc_lazy_over_none"),
            ("wc", "wc_kernels_over_bn_step"),
            ("fields", "wc_kernels_over_none_step"),
            ("enorm", "cycle_fused_over_step"), ("enorm", "ops_per_cycle_fused"),
            ("enorm", "weight_pass_over_step"), ("enorm", "step_with_weight_pass_over_step")} <= metrics
    assert {r["model"] for r in rows if r["part"] == "fields"} == {"nerf", "occupancy"}
    assert "wcnorm/reference" in capsys.readouterr().out  # the table was printed


def test_only_and_bad_part(tmp_path):
    assert bench.main(["--size", "tiny", "--device", "cpu", "--only", "nope", "--out", str(tmp_path)]) == 2
    assert not list(tmp_path.glob("*.csv"))


@pytest.mark.parametrize("args, says", [
    (["--only", ","], "names no part"),
    (["--only", "wc,nope"], "unknown part"),
    (["--threads", "-1"], "--threads must be a positive integer"),
    (["--threads", "0"], "--threads must be a positive integer"),
    (["--models", "nosuch"], "unknown model 'nosuch'"),
    (["--models", ","], "names no model"),
    (["--models", "resnet18@x"], "after @"),
    (["--repeats", "0"], "--repeats must be"),
    (["--overhead-batch", "-4"], "--overhead-batch must be"),
    (["--only", "compile", "--models", "resnet18"], "unknown model 'resnet18'; choose among nerf"),
    (["--only", "wc", "--models", "nerf"], "unknown model 'nerf'"),
])
def test_bad_command_lines_get_one_line_errors_before_any_work(args, says, tmp_path, capsys):
    threads = torch.get_num_threads()
    assert bench.main(["--size", "tiny", "--device", "cpu", "--out", str(tmp_path), *args]) == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith("wcnorm bench: ") and says in out and "\n" not in out, out
    assert not list(tmp_path.glob("*.csv")) and torch.get_num_threads() == threads


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
    # warm-up, then a block of each per repeat, the order turning by one each repeat
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"] + ["a", "a", "b", "b"]
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
    # the chain's one-visit cycle is timed with it
    assert r["fused_ops"] > 0 and r["fused_ms"] > 0 and r["fused_ratio"] > 0


def test_models_pick_the_enorm_parts_networks(tmp_path):
    assert bench.main(["--size", "tiny", "--device", "cpu", "--only", "enorm", "--models", "enorm_fc",
                       "--repeats", "1", "--out", str(tmp_path)]) == 0
    with open(next(tmp_path.glob("*.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == {"enorm_fc"}
    assert {"cycle_fused_over_step", "step_with_cycle_fused_over_step"} <= {r["metric"] for r in rows}


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


def test_a_compile_failure_is_a_row_that_says_why(tmp_path, monkeypatch):
    """Where the CPU compile toolchain fails, the compile part reports the error as its
    figure's note (NaN value) and the bench goes on."""
    from wcnorm.bench import parts

    def broken(model, plan, device, folder):
        raise RuntimeError("InductorError: no C++ compiler\nmore lines")

    monkeypatch.setattr(parts, "compile_vs_eager", broken)
    assert bench.main(["--size", "tiny", "--device", "cpu", "--only", "compile", "--out", str(tmp_path)]) == 0
    with open(next(tmp_path.glob("*.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == set(bench.SIZES["tiny"].compile_models)
    assert bench.main(["--size", "tiny", "--device", "cpu", "--only", "compile", "--models", "enorm_fc",
                       "--out", str(tmp_path)]) == 0  # --models picks the compile part's networks
    with open(next(tmp_path.glob("*.csv"))) as f:
        assert {r["model"] for r in csv.DictReader(f)} == {"enorm_fc"}
    assert all(math.isnan(float(r["value"])) and "compile failed: RuntimeError: InductorError: no C++ compiler"
               == r["note"] for r in rows)


def test_wc_kernels_time_the_parametrizations_alone(monkeypatch):
    """method_kernels computes each conditioned weight once, as a step does (batched), and
    runs its backward, leaving no gradient behind for the optimizer."""
    from wcnorm.bench.measure import method_kernels
    from wcnorm.methods import wc

    net = wc.weight_conditioning(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)))
    calls, inner, grads = [], wc._row_equilibrated, []
    monkeypatch.setattr(wc, "_row_equilibrated", lambda W, eps: calls.append(W.shape) or inner(W, eps))
    monkeypatch.setattr(wc, "_row_equilibrate_grad", lambda W, *a: grads.append(W.shape) or W)
    run = method_kernels(net)
    calls.clear()
    run()
    assert calls == grads == [(6, 4), (5, 6)]  # the two conditioned layers (the classifier is left alone)
    assert all(p.grad is None for p in net.parameters())  # nothing left behind for the optimizer


@pytest.mark.slow
def test_startup_reaches_the_first_step_without_the_tools_it_does_not_need():
    """`wcnorm train experiment=demo` in a fresh process: the times are ordered, and at
    its first step it has imported no plotting, mesh or tracker library and no torchvision."""
    from wcnorm.bench.startup import RUNS, first_step

    r = first_step(RUNS["demo"], threads=1)
    assert 0 < r["import_s"] < r["ready_s"] < r["first_step_s"]
    loaded = set(r["modules"].split())
    assert not loaded & {"matplotlib", "trimesh", "igl", "skimage", "torchvision", "optuna", "mlflow", "wandb",
                         "tensorboard"}, loaded


def test_the_cpu_clock_times_the_threads_own_work(tmp_path):
    """--clock cpu: the rows say so, and a step that sleeps costs its work, not its wait."""
    import time

    from wcnorm.bench import timing

    assert bench.main(["--size", "tiny", "--device", "cpu", "--only", "wc", "--clock", "cpu",
                       "--out", str(tmp_path)]) == 0
    with open(next(tmp_path.glob("*.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert {r["clock"] for r in rows} == {"cpu"}
    # the allocator as `wcnorm train` sets it on the CPU (keep on glibc, else system), said in every row
    assert len({r["malloc"] for r in rows}) == 1 and rows[0]["malloc"] in ("keep", "system")
    assert timing._clock["now"] is time.perf_counter  # the wall clock again after the command
    timing.use_clock("cpu")
    try:
        assert timing.time_block(lambda: time.sleep(0.05), 2, "cpu") < 0.02
    finally:
        timing.use_clock("wall")
    assert timing.time_block(lambda: time.sleep(0.05), 2, "cpu") >= 0.05


@pytest.mark.slow
def test_wc_step_profile_splits_the_gap_into_wc_own_ops_and_shared_ones():
    """scripts/wc_step_profile.py in a fresh process: one row per op, WC's own autograd
    node only in the WC step, and the two parts of the gap adding up to the whole."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "wc_step_profile.py"
    out = subprocess.run([sys.executable, str(script), "--steps", "1", "--rounds", "1"],
                         capture_output=True, text=True, check=True).stdout
    rows = {r["op"]: r for r in csv.DictReader(line for line in out.splitlines() if not line.startswith("#"))}
    own = rows["_RowEquilibrateManyBackward"]  # all conditioned weights as one autograd node
    assert float(own["none_us"]) == 0 and float(own["wc_us"]) > 0 and own["wc_own"] == "True"
    assert rows["aten::addmm"]["wc_own"] == "False" and float(rows["aten::addmm"]["none_us"]) > 0
    total, mine, shared = (float(rows[k]["diff_us"]) for k in ("total", "total_wc_own", "total_shared"))
    assert total == pytest.approx(mine + shared, abs=0.2)


@pytest.mark.slow
@pytest.mark.parametrize("option", ["--steps", "--rounds"])
def test_wc_step_profile_refuses_a_count_below_one_before_any_work(option):
    script = Path(__file__).resolve().parents[1] / "scripts" / "wc_step_profile.py"
    done = subprocess.run([sys.executable, str(script), option, "0"], capture_output=True, text=True)
    assert done.returncode == 2 and f"{option} must be a positive integer" in done.stderr and not done.stdout
