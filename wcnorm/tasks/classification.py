"""Image classification: images, a classifier shaped for them, (x, y) batches,
cross-entropy, accuracy on the test split after every epoch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ..data import DataBundle, load_dataset
from ..loaders import ArrayLoader, FolderLoader, make_loaders, make_val_loader
from ..models import build_model
from .task import Task, sums_tensor

# Models without convolutions: channels_last ("auto") would only cost them copies.
CONV_FREE = ("vit", "enorm_fc")


def use_channels_last(cfg: DictConfig, device: torch.device) -> bool:
    """trainer.channels_last; "auto": on CUDA, for models with convolutions."""
    spec = cfg.trainer.channels_last
    if spec == "auto":
        return device.type == "cuda" and cfg.model.name not in CONV_FREE
    return bool(spec)


def keep_data_on_device(cfg: DictConfig, data: DataBundle, device: torch.device) -> bool:
    """trainer.data_on_device (array datasets only); "auto": on CUDA."""
    spec = cfg.trainer.data_on_device
    return data.is_array and (device.type == "cuda" if spec == "auto" else bool(spec))


def build_classifier(cfg: DictConfig, data: DataBundle) -> nn.Module:
    """The model `cfg.model` names, shaped for the dataset, with the config's
    activation normalizer (the weight-level method is the run assembly's)."""
    options = {k: v for k, v in cfg.model.items() if k != "name"}
    return build_model(cfg.model.name, num_classes=data.num_classes, image_size=data.image_size,
                       in_channels=data.in_channels, act_norm=cfg.norm.act, **options)


class Classification(Task):
    metric, higher_is_better, unit = "test_acc", True, "images"
    log_keys = ("train_loss", "train_acc", "val_acc", "test_loss", "test_acc")

    def __init__(self, data: DataBundle, model: nn.Module, train_loader: ArrayLoader | FolderLoader,
                 test_loader: ArrayLoader | FolderLoader, *, label_smoothing: float = 0.0,
                 val_loader: ArrayLoader | FolderLoader | None = None):
        self.data, self.model = data, model
        self.train_loader, self.test_loader, self.val_loader = train_loader, test_loader, val_loader
        self.label_smoothing = float(label_smoothing)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        correct = (logits.argmax(1) == y).sum()
        return loss, sums_tensor(loss.detach() * len(y), correct, len(y), device=loss.device)

    def train_metrics(self, sums: Tensor) -> dict:
        n = max(sums[2].item(), 1)
        return {"train_loss": sums[0].item() / n, "train_acc": 100 * sums[1].item() / n}

    def evaluate(self, model, *, autocast, reduce, epoch: int) -> dict:
        """val_loss/val_acc on the validation split (`dataset.val_split`: held out of the
        training set, the one to tune on), then test_loss/test_acc on the test split."""
        scores = {}
        if self.val_loader is not None:
            scores |= {f"val_{k}": v for k, v in self.score(model, self.val_loader, autocast, reduce).items()}
        scores |= {f"test_{k}": v for k, v in self.score(model, self.test_loader, autocast, reduce).items()}
        return scores

    @staticmethod
    def score(model, loader, autocast, reduce) -> dict:
        loader.set_epoch(0)
        sums = None
        for x, y in loader:
            with autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            batch = sums_tensor(loss, (logits.argmax(1) == y).sum(), len(y), device=loss.device)
            sums = batch if sums is None else sums + batch
        sums = reduce(sums)
        n = max(sums[2].item(), 1)
        return {"loss": sums[0].item() / n, "acc": 100 * sums[1].item() / n}


def classification(cfg: DictConfig, device: torch.device, *, rank: int = 0, world_size: int = 1) -> Classification:
    """The classification task of `cfg`, its model on `device`."""
    data = load_dataset(cfg.dataset)
    model = build_classifier(cfg, data).to(device)
    channels_last = use_channels_last(cfg, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    on_device = keep_data_on_device(cfg, data, device)
    train_loader, test_loader = make_loaders(
        data, cfg.dataset, cfg.trainer, device=device, seed=cfg.seed, data_on_device=on_device,
        channels_last=channels_last, rank=rank, world_size=world_size)
    val_loader = make_val_loader(data, cfg.trainer, device=device, data_on_device=on_device,
                                 channels_last=channels_last, rank=rank, world_size=world_size)
    return Classification(data, model, train_loader, test_loader, val_loader=val_loader,
                          label_smoothing=cfg.trainer.label_smoothing)
