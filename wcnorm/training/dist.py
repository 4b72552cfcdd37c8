"""Data-parallel training with torch.distributed (DDP), and one GPU per parallel job.

`torchrun --nproc_per_node=N -m wcnorm train ...` sets RANK / WORLD_SIZE /
LOCAL_RANK; `init` then joins the process group (NCCL on CUDA, gloo on CPU) and
returns the run's `DistContext`. A SLURM job started by submitit with several tasks
(`hydra/launcher=slurm hydra.launcher.tasks_per_node=N`) gets the same variables from
submitit. Without them everything here is a no-op.

The rule for batch and learning rate: `trainer.batch_size` is the GLOBAL batch,
split evenly over the ranks, and `optim.lr` is the learning rate for that global
batch. Nothing is rescaled behind your back, so N processes train the same
trajectory as one process with the same global batch (and land in the same run
directory: the number of processes is not part of a run's identity).

Who does what: rank 0 alone decides from the disk (run directory, finished or not,
the run lock) and hands its decision to the others (`DistContext.on_main`); rank 0
alone writes; every rank resumes from the same last.pt. Weights and optimizer state
stay identical on all ranks because DDP averages the gradients before every step (WC's
raw weights), and anything that edits weights outside backward (ENorm, which also
rescales the optimizer state) computes the same thing from the same weights on every
rank, with deterministic ops only; `ReplicaCheck` verifies both after every epoch.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as td
from torch import nn

from ..errors import ConfigError, WcnormError
from ..modules import unwrap
from .trainer import Callback, Trainer

log = logging.getLogger("wcnorm")

__all__ = ["DistContext", "init", "ReplicaCheck", "param_checksums", "state_checksums", "job_gpu", "gpu_slot",
           "nullcontext"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None  # None: let the trainer config decide
    sync_bn: bool = False
    owns_group: bool = False  # `init` created the process group, so `close` destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def all_reduce(self):
        return None if self.world_size == 1 else (lambda t: td.all_reduce(t))

    def barrier(self) -> None:
        if self.world_size > 1:
            td.barrier()

    def on_main(self, fn):
        """`fn()` on rank 0 alone; its result (or its error) reaches every rank.

        Decisions read from files (where the run lives, whether it is finished, the
        lock) are taken once, so no rank can skip or stop while the others train."""
        if self.world_size == 1:
            return fn()
        box, error = [None], None
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as err:  # noqa: BLE001 - re-raised below, after telling the others
                error, box[0] = err, ("error", f"{type(err).__name__}: {err}")
        td.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        status, value = box[0]
        if status == "error":
            raise WcnormError(f"rank 0 failed: {value}")
        return value

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        if self.sync_bn:
            if self.device.type == "cuda":
                # Reuses the BN modules' parameters and buffers, so the optimizer and ENorm
                # (both built on the plain model) still hold the right tensors.
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif self.is_main:
                log.warning("trainer.sync_bn=true needs CUDA (SyncBatchNorm has no CPU kernel); "
                            "on CPU each process normalizes with the statistics of its own share of the batch")
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def close(self) -> None:
        if self.owns_group and td.is_initialized():
            td.destroy_process_group()
            self.owns_group = False


def _env_from_submitit() -> None:
    """A submitit job with several tasks (SLURM tasks_per_node > 1): export torchrun's variables."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    try:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return
    if JobEnvironment().num_tasks > 1:
        # Every task sees all the node's GPUs and takes cuda:LOCAL_RANK (see `init`).
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init(trainer_cfg) -> DistContext:
    """Join the process group when launched by torchrun (or submitit); else a single-process context.

    A process group that already exists (made by the caller) is used and left open."""
    _env_from_submitit()
    if td.is_available() and td.is_initialized():
        rank, world = td.get_rank(), td.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistContext()
    local = int(os.environ.get("LOCAL_RANK", rank))
    if trainer_cfg.batch_size % world:
        raise ConfigError(f"trainer.batch_size={trainer_cfg.batch_size} is the global batch and must "
                          f"divide evenly over {world} processes")
    use_cuda = torch.cuda.is_available() and str(trainer_cfg.device) != "cpu"
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    owns = not td.is_initialized()
    if owns:
        td.init_process_group("nccl" if use_cuda else "gloo")
    if rank:
        log.setLevel(logging.WARNING)  # one voice: rank 0 reports progress, the others only problems
    return DistContext(rank, world, device, bool(trainer_cfg.get("sync_bn", False)), owns)


# ----------------------------------------------------------------------------- replica checks


def param_checksums(model: nn.Module) -> torch.Tensor:
    """(sum, sum of squares) of every parameter, in float64: equal iff the replicas agree (in practice)."""
    ps = [p.detach().double() for p in unwrap(model).parameters()]
    return torch.stack([torch.stack([p.sum(), p.square().sum()]) for p in ps]).flatten()


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor of the optimizer's state (momentum, Adam's moments, step counts), in
    parameter order: the same list on every rank."""
    return [value for group in optimizer.param_groups for p in group["params"]
            for _, value in sorted(optimizer.state.get(p, {}).items()) if isinstance(value, torch.Tensor)]


def state_checksums(optimizer: torch.optim.Optimizer, device: torch.device) -> torch.Tensor:
    """(sum, sum of squares) of every optimizer state tensor, in float64, on `device` (Adam's
    step counts live on the CPU next to moments on the GPU)."""
    sums = [torch.stack([t.sum(), t.square().sum()]).to(device)
            for t in (s.detach().double() for s in _state_tensors(optimizer))]
    return torch.cat(sums) if sums else torch.zeros(0, dtype=torch.float64, device=device)


def gather(t: torch.Tensor) -> torch.Tensor:
    """`t` from every rank, stacked (rank-major)."""
    out = [torch.empty_like(t) for _ in range(td.get_world_size())]
    td.all_gather(out, t)
    return torch.stack(out)


def _broadcast_from_main(t: torch.Tensor, device: torch.device) -> None:
    """Rank 0's `t` into every rank's `t`, through `device` (NCCL sends CUDA tensors only)."""
    if t.device == device:
        td.broadcast(t, src=0)
    else:
        on_device = t.to(device)
        td.broadcast(on_device, src=0)
        t.copy_(on_device)


class ReplicaCheck(Callback):
    """DDP only: every rank resumed from the same epoch, and the weights and the optimizer
    state agree after each epoch.

    DDP keeps gradients in sync, not weights: an in-place edit that differs between ranks
    (of the weights, or of the momentum and moments ENorm rescales with them) would go
    unnoticed. On a mismatch we warn and copy rank 0's tensors to the others."""

    def on_fit_start(self, trainer: Trainer) -> None:
        mine = torch.tensor([trainer.epoch, len(trainer.train_loader)], device=trainer.device)
        epochs, batches = gather(mine).T.tolist()
        if len(set(epochs)) > 1:
            raise WcnormError(f"the ranks resumed from different epochs {epochs} (from '{trainer.ckpt_path}'): "
                              "every process must see the same run directory (a shared filesystem)")
        if len(set(batches)) > 1:  # a rank with an extra step would wait forever in its all-reduce
            raise WcnormError(f"the ranks have different numbers of training batches per epoch {batches}; "
                              "choose a dataset size and trainer.batch_size that split evenly over the processes")

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> dict:
        device = trainer.device
        params = param_checksums(trainer.model).to(device)
        state = state_checksums(trainer.optimizer, device)
        sizes = gather(torch.tensor([state.numel()], device=device)).flatten().tolist()
        if len(set(sizes)) > 1:  # all_gather needs one size on every rank
            raise WcnormError(f"epoch {epoch}: the ranks hold differently shaped optimizer states "
                              f"({sizes} checksums)")
        sums = gather(torch.cat([params, state]))
        gap = (sums - sums[0]).abs()
        weights_gap = gap[:, : len(params)].max().item()
        state_gap = gap[:, len(params) :].max().item() if len(state) else 0.0
        if weights_gap > 0:
            log.warning("epoch %d: the weights differ across ranks (largest checksum gap %.3g); "
                        "copying rank 0's weights to every rank", epoch, weights_gap)
            for p in unwrap(trainer.model).parameters():
                _broadcast_from_main(p.data, device)
        if state_gap > 0:
            log.warning("epoch %d: the optimizer state differs across ranks (largest checksum gap %.3g); "
                        "copying rank 0's state to every rank", epoch, state_gap)
            for t in _state_tensors(trainer.optimizer):
                _broadcast_from_main(t, device)
        return {}


# ----------------------------------------------------------------------------- one GPU per job


def _lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"wcnorm-gpus-{os.getuid()}"


@contextmanager
def gpu_slot(names: list[str], lock_dir: Path | None = None, poll_s: float = 5.0):
    """Hold the first free GPU of `names` (an exclusive file lock each), waiting while all
    are taken; yields its index. Released when the block ends, or when the process dies."""
    lock_dir = Path(lock_dir or _lock_dir())
    lock_dir.mkdir(parents=True, exist_ok=True)
    waiting = False
    while True:
        for k, name in enumerate(names):
            f = open(lock_dir / f"gpu-{name}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            try:
                yield k
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()
            return
        if not waiting:
            log.info("all %d GPUs are held by other jobs; waiting for one", len(names))
            waiting = True
        time.sleep(poll_s)


def _gpu_per_job() -> bool:
    if os.environ.get("WCNORM_GPU_PER_JOB", "") not in ("", "0"):
        return True
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and HydraConfig.get().runtime.choices.get("hydra/launcher") == "local_parallel"


@contextmanager
def job_gpu(trainer_cfg):
    """With `hydra/launcher=local_parallel` (or WCNORM_GPU_PER_JOB=1) and `trainer.device=auto|cuda`:
    hold a GPU no other job of this user holds, for the whole job, and yield it as `cuda:k`.

    Assigning GPUs by job number would put two jobs on one GPU as soon as jobs take unequal
    times; a lock per GPU cannot. Otherwise yields None (the trainer config decides)."""
    if str(trainer_cfg.device) not in ("auto", "cuda") or not torch.cuda.is_available() or not _gpu_per_job():
        yield None
        return
    # Locks are named by the GPUs' UUIDs, so jobs with different CUDA_VISIBLE_DEVICES still agree.
    names = [str(getattr(torch.cuda.get_device_properties(k), "uuid", k)) for k in range(torch.cuda.device_count())]
    with gpu_slot(names) as k:
        device = torch.device("cuda", k)
        torch.cuda.set_device(device)
        log.info("this job holds GPU %d (%s)", k, torch.cuda.get_device_name(device))
        yield device
