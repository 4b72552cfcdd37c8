"""Fabricate run directories with known numbers, following the trainer's contract.

Used by the table, plot and claims tests: no training, only files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def make_run(root, *, model="resnet18", dataset="cifar10", norm="bn", seed=0,
             final_acc=90.0, best_gap=0.5, depth=None, experiment="test_preset",
             budget="short", epochs=4, finished=True, conditioning=False,
             loss_scale=1.0, lr=0.1, batch_size=128, device="Fake GPU",
             commit="abc1234", date="2024-10-01T12:00:00", tag="") -> Path:
    """Write one run directory and return it.

    The final-epoch test accuracy is exactly ``final_acc`` and the best-epoch one
    ``final_acc + best_gap``. An unfinished run stops half-way with absurd accuracies
    (0 %), so a test notices if they ever enter a mean.
    """
    name = f"{model}_{dataset}_{norm}" + (f"_p{depth}" if depth is not None else "") + tag
    run_dir = Path(root) / str(experiment) / name / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = {"name": model} | ({"depth": depth} if depth is not None else {})
    config = {
        "model": model_cfg, "dataset": {"name": dataset}, "norm": {"name": norm},
        "seed": seed, "experiment": experiment, "budget": budget,
        "trainer": {"epochs": epochs, "batch_size": batch_size},
        "optim": {"name": "sgd", "lr": lr},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    done = epochs if finished else max(1, epochs // 2)
    ep = np.arange(1, done + 1)
    test_acc = final_acc - 10.0 * (epochs - ep) / epochs
    if finished:
        test_acc[-2 if done > 1 else -1] = final_acc + best_gap  # the best epoch
        test_acc[-1] = final_acc
    else:
        test_acc[:] = 0.0
    train_loss = loss_scale * 2.0 * 0.6 ** ep
    metrics = pd.DataFrame({
        "epoch": ep, "lr": lr * (1 - (ep - 1) / epochs), "train_loss": train_loss,
        "train_acc": test_acc + 5, "test_loss": train_loss * 1.2, "test_acc": test_acc,
        "epoch_time_s": 1.0, "images_per_s": 5000.0,
        "enorm_objective": 1.0 / ep,  # an extra column the loader must tolerate
    })
    metrics.to_csv(run_dir / "metrics.csv", index=False)

    if conditioning:
        rows = []
        for e in range(done + 1):
            for layer, base in (("conv1", 40.0), ("layer1.0.conv1", 80.0), ("fc", 20.0)):
                raw = base * (1 + 0.1 * e)
                eff = raw / (2.0 if "wc" in norm or norm == "bn_e" else 1.0)
                rows.append({"epoch": e, "layer": layer, "shape": "64x27", "kappa_eff": eff,
                             "kappa_raw": raw, "row_norm_spread": 1.0})
        pd.DataFrame(rows).to_csv(run_dir / "conditioning.csv", index=False)

    if finished:
        result = {
            "status": "finished", "epochs": epochs, "final_test_acc": final_acc,
            "final_test_loss": float(metrics.test_loss.iloc[-1]),
            "final_train_loss": float(metrics.train_loss.iloc[-1]),
            "best_test_acc": final_acc + max(best_gap, 0.0),
            "best_epoch": done - 1 if best_gap > 0 else done,
            "wall_time_s": 10.0 * epochs, "num_params": 11_000_000,
            "torch_version": "2.4.0", "cuda_version": None, "device_name": device,
            "git_commit": commit, "date": date, "config": config,
        }
        (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    return run_dir


# The WC-layout grid the table tests use: (model, dataset, norm) -> finished accuracies
# by seed. googlenet/cifar100/bn_wc is absent on purpose (a missing cell), and
# resnet18/cifar10/bn_ws lacks seed 2 (a missing seed).
WC_GRID = {
    ("resnet18", "cifar10", "bn"): {0: 90.0, 1: 91.0, 2: 92.0},
    ("resnet18", "cifar10", "bn_wc"): {0: 92.0, 1: 93.0, 2: 94.0},
    ("resnet18", "cifar10", "bn_ws"): {0: 89.0, 1: 90.0},
    ("googlenet", "cifar100", "bn"): {0: 70.0, 1: 72.0, 2: 74.0},
    ("googlenet", "cifar100", "bn_ws"): {0: 60.0, 1: 62.0},
}


def make_wc_grid(root) -> Path:
    """WC_GRID as run dirs, plus one unfinished run (googlenet/cifar100/bn_ws seed 2)
    and one junk folder."""
    for (model, dataset, norm), accs in WC_GRID.items():
        for seed, acc in accs.items():
            make_run(root, model=model, dataset=dataset, norm=norm, seed=seed,
                     final_acc=acc, experiment="wc_test", conditioning="wc" in norm,
                     date=f"2024-10-0{seed + 1}T12:00:00")
    make_run(root, model="googlenet", dataset="cifar100", norm="bn_ws", seed=2,
             final_acc=99.0, experiment="wc_test", finished=False)
    junk = Path(root) / "wc_test" / "junk"
    junk.mkdir(parents=True, exist_ok=True)
    (junk / "result.json").write_text("{not json")
    return Path(root)


def make_fc_grid(root, accs: dict[tuple[int, str], float], seeds=(0, 1)) -> Path:
    """ENorm FC runs: ``accs[(depth, norm)]`` is the mean accuracy; seeds spread +-0.5."""
    for (depth, norm), acc in accs.items():
        for i, seed in enumerate(seeds):
            make_run(root, model="enorm_fc", dataset="cifar10", norm=norm, seed=seed,
                     depth=depth, final_acc=acc + (i - (len(seeds) - 1) / 2),
                     experiment="enorm_fc", lr=0.05)
    return Path(root)
