"""The two training steps the bench compares, on the same model and the same images.

* wcnorm's: the run `wcnorm train` builds for `bench_config(...)`, from
  `wcnorm.training.assemble` (ArrayLoader on the device, then `Trainer.train_step` with
  the runner's settings: bf16 autocast, channels_last and a fused optimizer on CUDA,
  optionally torch.compile);
* the reference: a plain PyTorch loop (DataLoader with per-sample CPU transforms, fp32,
  torch.optim.SGD) training the same model on the same images.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ..data import load_dataset
from ..models import supported_act_norms
from ..tasks.classification import build_classifier
from ..training.assemble import Run, assemble, seed_everything
from ..training.config import validate

# The synthetic images are normalised with CIFAR-10's statistics, as CIFAR's would be.
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# The runner's SGD, except lr: no timing depends on it, and a small one keeps the no-BN
# nets finite over hundreds of steps on random labels (inf/NaN or denormals skew CPU times).
LR = 0.01
# A cosine schedule this long stays at its start for every step the bench takes.
EPOCHS = 10_000


def norm_preset(model: str, act_norm: str | None = None, weight: str = "none") -> str:
    """The `norm` preset of an activation normalizer (default: the model's usual one, BN,
    or LN for the ViT) with a weight-level method: bn, bn_wc, ln_wc, none, wc, ..."""
    act = act_norm or supported_act_norms(model)[0]
    if weight == "none":
        return act
    return weight if act == "none" else f"{act}_{weight}"


def _csv(values) -> str:
    return "[" + ",".join(map(str, values)) + "]"


def bench_config(model: str, px: int, *, batch: int, norm: str, device="cpu", compile: bool = False,
                 options: dict | None = None, data_batches: int = 8, overrides=()) -> DictConfig:
    """The config of `wcnorm train model=<model> norm=<norm> dataset=synthetic ...`:
    `batch x data_batches` random CIFAR-like images of `px` pixels, augmented, and the
    runner's defaults for everything the bench does not name."""
    args = [f"model={model}", f"norm={norm}", "dataset=synthetic", f"dataset.image_size={px}",
            f"dataset.train_size={batch * data_batches}", f"dataset.test_size={batch}",
            "dataset.augment=true", f"dataset.mean={_csv(CIFAR_MEAN)}", f"dataset.std={_csv(CIFAR_STD)}",
            f"trainer.batch_size={batch}", f"trainer.epochs={EPOCHS}", f"trainer.device='{device}'",
            f"trainer.compile={str(compile).lower()}", "trainer.progress=false",
            "diagnostics.conditioning=false", f"optim.lr={LR}",
            *(f"++model.{k}={v}" for k, v in (options or {}).items()), *overrides]
    with initialize_config_module(config_module="wcnorm.conf", version_base="1.3"):
        cfg = compose("train", overrides=args)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------- wcnorm's step


def build_run(model: str, px: int, *, batch: int, device, norm: str, compile: bool = False,
              options: dict | None = None, data_batches: int = 8, overrides=()) -> Run:
    device = torch.device(device)
    cfg = bench_config(model, px, batch=batch, norm=norm, device=device, compile=compile, options=options,
                       data_batches=data_batches, overrides=overrides)
    run = assemble(cfg, device)
    run.model.train()
    return run


def describe(run: Run) -> str:
    """wcnorm[...]: the settings the assembled run trains with."""
    t = run.trainer
    flags = [str(t.amp_dtype).removeprefix("torch.") if t.amp_dtype else "fp32", type(run.train_loader).__name__]
    flags += ["channels_last"] * getattr(run.train_loader, "channels_last", False)  # image loaders
    flags += ["fused" if run.optimizer.defaults.get("fused") else "foreach"]
    flags += ["compile"] * bool(run.cfg.trainer.compile)
    return f"wcnorm[{','.join(flags)}]"


def build_trainer(model: str, px: int, *, batch: int, device, act_norm: str | None = None,
                  weight: str = "none", compile: bool = False, options: dict | None = None,
                  data_batches: int = 8):
    """(Trainer, its description) of the run `wcnorm train` builds for this set-up."""
    run = build_run(model, px, batch=batch, device=device, norm=norm_preset(model, act_norm, weight),
                    compile=compile, options=options, data_batches=data_batches)
    return run.trainer, describe(run)


def forever(loader):
    """Batches across epoch boundaries (set_epoch for wcnorm's loaders)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def build_wcnorm(model: str, px: int, *, batch: int, device, compile: bool = False,
                 options: dict | None = None, data_batches: int = 8):
    """wcnorm's step: the next ArrayLoader batch, then Trainer.train_step."""
    trainer, setup = build_trainer(model, px, batch=batch, device=device, compile=compile, options=options,
                                   data_batches=data_batches)
    batches = forever(trainer.train_loader)

    def step():
        return trainer.train_step(*next(batches))[0]

    return step, setup, trainer


# ----------------------------------------------------------------------------- the reference


class AugmentedImages(Dataset):
    """uint8 images through torchvision.transforms.v2 one at a time, in DataLoader workers:
    the usual torchvision recipe (padded random crop, flip, to float, normalise)."""

    def __init__(self, split, px: int, *, pad: int, mean, std):
        self.x, self.y = split.x, split.y
        self.transform = v2.Compose([v2.RandomCrop(px, padding=pad), v2.RandomHorizontalFlip(),
                                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(self.x[i]), self.y[i]


def default_workers(device) -> int:
    # On CPU, workers would compete with the step for the same cores.
    return min(8, os.cpu_count() or 1) if torch.device(device).type == "cuda" else 0


def build_reference(model: str, px: int, *, batch: int, device, workers: int | None = None,
                    options: dict | None = None, data_batches: int = 8):
    """The reference step: the same model and images as wcnorm's (`bench_config`), in a
    plain loop: DataLoader with CPU transforms, fp32, torch.optim.SGD."""
    device = torch.device(device)
    cfg = bench_config(model, px, batch=batch, norm=norm_preset(model), device=device, options=options,
                       data_batches=data_batches)
    seed_everything(cfg.seed, bool(cfg.trainer.deterministic))  # as `assemble` does
    data = load_dataset(cfg.dataset)
    net = build_classifier(cfg, data).to(device)
    workers = default_workers(device) if workers is None else workers
    images = AugmentedImages(data.train, px, pad=cfg.dataset.crop_padding, mean=data.mean, std=data.std)
    loader = DataLoader(images, batch, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    o = cfg.optim
    opt = torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    batches = forever(loader)
    net.train()

    def step():
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step, f"reference[fp32,DataLoader(workers={workers}),SGD]"
