"""The CUDA fast path: GPU-resident data, bf16, channels_last, fused SGD, no host sync in
the step loop, ENorm's CUDA-graph replay, torch.compile. Skipped without a GPU; run them
on one with `pytest -m cuda` (scripts/device_check.sh does, with the benchmark)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from wcnorm.bench import build_trainer
from wcnorm.data import synthetic_split as synthetic
from wcnorm.loaders import ArrayLoader
from wcnorm.methods.enorm import ENorm
from wcnorm.models import build_model
from wcnorm.training.callbacks import ENormCallback
from wcnorm.training.train import train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA_RUN = ["trainer.device=cuda", "dataset.train_size=256", "dataset.test_size=64", "trainer.batch_size=64",
            "trainer.limit_batches=null", "trainer.limit_eval_batches=null", "optim.lr=0.01"]  # no-BN nets too


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)


def _train_steps(model, opt, enorm, x, y, steps):
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        enorm.step()


def test_cycle_graph_replays_the_eager_cycle():
    """Warm-up, capture, replays, and a new capture after the optimizer state is
    reallocated (load_state_dict): the weights and momentum follow the eager cycle."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, image_size=32, act_norm="none").cuda()
    ref = copy.deepcopy(model)
    opts = [_sgd(model), _sgd(ref)]
    graphed, eager = ENorm(model, opts[0], cuda_graph=True), ENorm(ref, opts[1])
    x, y = torch.randn(8, 3, 32, 32, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    _train_steps(model, opts[0], graphed, x, y, 6)
    _train_steps(ref, opts[1], eager, x, y, 6)
    assert graphed.graph.captures == 1
    opts[0].load_state_dict(copy.deepcopy(opts[0].state_dict()))  # new state tensors: a stale graph
    _train_steps(model, opts[0], graphed, x, y, 4)
    _train_steps(ref, opts[1], eager, x, y, 4)
    assert graphed.graph.captures == 2
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), n
        a, b = opts[0].state[p]["momentum_buffer"], opts[1].state[q]["momentum_buffer"]
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * b.abs().max()), n


@pytest.mark.parametrize("weight, enorm, store_on_device", [
    ("none", False, True), ("wc", False, True), ("none", True, True), ("none", False, False)])
def test_the_step_loop_never_waits_on_the_host(weight, enorm, store_on_device):
    """Batches (GPU-resident or copied from pinned host memory), bf16 forward/backward,
    fused SGD, the schedule and the ENorm cycle (as a CUDA graph): after warm-up, no step
    synchronises with the host (torch's sync debug mode raises if one does)."""
    act = "none" if enorm else "bn"
    trainer, _ = build_trainer("resnet18", 32, batch=32, device="cuda", act_norm=act, weight=weight)
    if not store_on_device:
        loader = trainer.train_loader
        trainer.train_loader = ArrayLoader(synthetic(8 * 32, 32), 32, mean=(0.5,) * 3, std=(0.25,) * 3,
                                           device="cuda", augment=True, channels_last=True,
                                           store_on_device=False)
        assert loader.x.is_cuda and not trainer.train_loader.x.is_cuda
    cycle = ENorm(trainer.model, trainer.optimizer, cuda_graph=True) if enorm else None
    if cycle is not None:
        trainer.callbacks.append(ENormCallback(cycle))
    batches = iter(trainer.train_loader)
    for _ in range(4):  # warm-up: cudnn autotuning, lazy index tensors, the graph's capture
        trainer.train_step(*next(batches))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step(*next(batches))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert cycle is None or cycle.graph.captures == 1  # the replay ran, not the eager cycle
    assert trainer.amp_dtype == torch.bfloat16
    convs = [p for p in trainer.model.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


def test_gpu_batches_equal_cpu_batches():
    """Shuffling, crops and flips are drawn on the host from (seed, epoch): the GPU loader,
    device- or host-stored, yields the CPU loader's batches."""
    split = synthetic(40, 8)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, augment=True, pad=2, seed=3)
    cpu = list(ArrayLoader(split, 16, device="cpu", **kw))
    for store in (True, False):
        gpu = list(ArrayLoader(split, 16, device="cuda", store_on_device=store, **kw))
        assert len(gpu) == len(cpu)
        for (xc, yc), (xg, yg) in zip(cpu, gpu):
            assert xg.is_cuda and yg.is_cuda
            assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6)


@pytest.mark.parametrize("norm, extra", [("bn_wc", []), ("enorm", ["norm.enorm.cuda_graph=true"]),
                                         ("bn_enorm", []), ("bn", ["trainer.data_on_device=false"])])
def test_runner_trains_on_the_gpu(cfg_factory, norm, extra):
    result = train(cfg_factory("model=resnet18", f"norm={norm}", "dataset.augment=true", *CUDA_RUN, *extra))
    assert result["status"] == "finished" and result["device"].startswith("cuda")
    assert result["cuda_version"] and math.isfinite(result["final_train_loss"])


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["bn_wc", "enorm"])
def test_compiled_training_on_the_gpu(cfg_factory, tmp_path, norm):
    """torch.compile with WC's custom autograd Function and ENorm's in-place cycle: in fp32
    with deterministic kernels, the compiled run follows the eager one."""
    common = ["model=resnet18", f"norm={norm}", *CUDA_RUN, "trainer.epochs=2", "trainer.amp=false",
              "trainer.deterministic=true"]
    eager = train(cfg_factory(*common, f"run_dir={tmp_path / 'eager'}"))
    compiled = train(cfg_factory(*common, "trainer.compile=true", f"run_dir={tmp_path / 'compiled'}"))
    for key in ("final_train_loss", "final_test_loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-2), key
