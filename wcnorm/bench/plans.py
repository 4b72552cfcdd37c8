"""The bench's sizes: which models it measures, at which batches, how many times."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models import CIFAR_MAX_SIZE

COMPILE_MODELS = ("nerf", "occupancy", "enorm_fc")  # the networks the compile part can time


@dataclass(frozen=True)
class Plan:
    batch: int            # throughput batch at CIFAR size
    big_batch: int        # throughput batch at ImageNet size (above CIFAR_MAX_SIZE px)
    overhead_batch: int   # WC and ENorm ratios
    px: int               # "CIFAR" image size
    warmup: int
    repeats: int
    steps: int            # calls per timed block
    models: tuple[str, ...]
    enorm_models: tuple[str, ...]
    enorm_norms: tuple[str, ...]  # norm presets with ENorm on
    wc_model: str = "resnet18"
    data_batches: int = 8  # synthetic images = data_batches x batch (an epoch boundary every so many steps)
    options: dict = field(default_factory=dict)  # model options per model name
    # the neural fields' network and batch: their presets' (wc_nerf, wc_shape) at this budget
    field_budget: str = "cpu"
    fields: tuple[str, ...] = ("nerf", "occupancy")
    # the batch of a model's ENorm ratio where it is not overhead_batch: the FC net at the
    # ENorm paper's batch (256)
    enorm_batches: dict = field(default_factory=dict)
    # the networks `--only compile` times eager and compiled: the field MLPs, and the FC
    # net at p = 15
    compile_models: tuple[str, ...] = ("nerf", "occupancy", "enorm_fc")  # among COMPILE_MODELS

    def batch_at(self, px: int) -> int:
        return self.big_batch if px > CIFAR_MAX_SIZE else self.batch

    def batch_of(self, model: str) -> int:
        """The batch of `model`'s ENorm ratio."""
        return self.enorm_batches.get(model, self.overhead_batch)


SIZES = {
    # the test suite's: the smallest shapes that reach every code path (ResNet-18 at 8 px,
    # a narrow ViT, a short ENorm FC net)
    "tiny": Plan(8, 2, 8, 8, 2, 3, 1, ("resnet18", "vit"), ("enorm_fc",), ("enorm",), wc_model="vit",
                 options={"vit": {"dim": 64, "depth": 2, "heads": 2}, "enorm_fc": {"depth": 2, "width": 128}},
                 field_budget="smoke"),
    # CPU-size batches of the real models
    "cpu": Plan(16, 4, 16, 32, 2, 3, 2, ("resnet18", "densenet121", "vit", "resnet18@224"),
                ("resnet18", "densenet121", "enorm_fc"), ("enorm", "bn_enorm"),
                options={"enorm_fc": {"depth": 15}}, enorm_batches={"enorm_fc": 256}),
    # the real shapes
    "gpu": Plan(512, 128, 128, 32, 10, 5, 20, ("resnet18", "densenet121", "vit", "resnet18@224"),
                ("resnet18", "densenet121", "enorm_fc"), ("enorm", "bn_enorm"), data_batches=32,
                field_budget="paper", options={"enorm_fc": {"depth": 15}}, enorm_batches={"enorm_fc": 256}),
}


def parse_spec(spec: str, px: int) -> tuple[str, int]:
    """'resnet18' -> (resnet18, CIFAR px); 'resnet18@224' -> (resnet18, 224)."""
    name, _, size = spec.partition("@")
    return name, int(size) if size else px
