"""What the tables of each task show: the metrics, their order and format, which is the
headline (it decides a cell's status) and which goes in the best-epoch table."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .runs import CLASSIFICATION, NERF, SHAPE

FINAL_METRIC = "final-epoch test accuracy (%)"
BEST_METRIC = "best-epoch test accuracy (%), best epoch (not used for selection)"


@dataclass(frozen=True)
class Block:
    """One metric of a table: a block of rows of the wide table (its ``metric`` column
    holds ``title``), mean ± std (n) per cell."""

    column: str  # the run column it averages (see `runs.METRIC_FIELDS`)
    title: str
    spec: str = ".2f"  # number format of its cells
    higher_is_better: bool = True

    @property
    def key(self) -> str:
        """Prefix of its columns in table_long.csv: test_ssim_mean, test_ssim_std, ..."""
        return self.column.removeprefix("final_")


@dataclass(frozen=True)
class TaskTables:
    """What the tables of one task show: ``blocks`` in the wide table (the first is the
    headline: its numbers are the long table's plain mean, std, min, max and decide a
    cell's status), ``extra`` in the long table only, ``best`` in the best-epoch table."""

    heading: str
    blocks: tuple[Block, ...]
    best: Block
    best_name: str  # what the best-epoch table holds, in the provenance's words
    layouts: tuple[str, ...]  # the layouts that suit the task, the first chosen by auto
    extra: tuple[Block, ...] = ()


_AFTER_RUN = "the test views rendered after the last epoch"
TASK_TABLES = {
    CLASSIFICATION: TaskTables(
        "Final-epoch test accuracy (%)", (Block("final_test_acc", FINAL_METRIC),),
        Block("best_test_acc", BEST_METRIC), "accuracy", ("wc", "enorm_fc", "long")),
    NERF: TaskTables(
        "NeRF: test PSNR and SSIM",
        (Block("final_test_psnr", f"test PSNR (dB), {_AFTER_RUN}"),
         Block("final_test_ssim", f"test SSIM, {_AFTER_RUN}", ".4f")),
        Block("best_val_psnr", "best-epoch validation PSNR (dB), best epoch "
                               "(not used for selection)"),
        "validation PSNR", (NERF, "long"),
        extra=(Block("final_val_psnr", "validation PSNR (dB), last epoch"),
               Block("final_val_ssim", "validation SSIM, last epoch", ".4f"))),
    SHAPE: TaskTables(
        "3D shapes: test IoU and Chamfer distance",
        (Block("final_test_iou", "test IoU of the held-out points, last epoch", ".4f"),
         Block("final_test_chamfer", "Chamfer-L1 distance of the extracted surface to the "
                                     "mesh, lower is better", ".2e", higher_is_better=False)),
        Block("best_test_iou", "best-epoch test IoU, best epoch (not used for selection)",
              ".4f"),
        "test IoU", (SHAPE, "long"),
        extra=(Block("final_test_acc", "test occupancy accuracy (%), last epoch"),)),
}


@dataclass
class TableResult:
    wide: pd.DataFrame  # paper layout, the task's final numbers (a block per metric)
    best: pd.DataFrame  # same layout, the best epoch's number (information only)
    long: pd.DataFrame  # one row per cell, machine-readable
    provenance: dict
    missing: list[str] = field(default_factory=list)
    layout: str = "wc"
    task: str = CLASSIFICATION
