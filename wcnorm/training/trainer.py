"""The training loop: epochs of SGD steps, evaluation after each epoch, an atomic
checkpoint after each epoch, and two hook points the methods plug into:

* `Callback.on_step_end` runs right after every optimizer step (ENorm's cycle);
* `Callback.on_epoch_end` returns extra metric columns (ENorm's objective, WC's
  conditioning diagnostics) and may write files of its own.

What is trained, on what, and how it is scored is the task's (`wcnorm.tasks`): the
loop asks it for each batch's loss and sums, and for the held-out metrics after each
epoch. The sums stay on the device and are read once per `sync_every` steps, so the
step loop does not wait on the host.
"""

from __future__ import annotations

import itertools
import logging
import random
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import DivergedError, Interrupted
from ..methods.weight_method import effective_weights
from ..modules import unwrap
from ..outputs import load_checkpoint, save_checkpoint, write_metrics
from ..tasks import Task

log = logging.getLogger("wcnorm")


class Callback:
    """Hooks into the loop; every method is optional."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> dict:
        return {}

    def on_epoch_logged(self, trainer: Trainer, row: dict) -> None:
        """The epoch's row is complete and saved (metrics.csv, last.pt)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """`fit` returns or raises (a tracker closes its run)."""


def rng_state() -> dict:
    """Every generator's state, in tensors and plain numbers only: a checkpoint is read
    back without unpickling objects (`outputs.load_checkpoint`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, model, optimizer, scheduler, task: Task, *, device: torch.device,
                 epochs: int, run_dir: Path | None = None, amp_dtype: torch.dtype | None = None,
                 grad_clip: float | None = None, callbacks=(),
                 progress: bool = False, stop_after: int | None = None, is_main: bool = True,
                 all_reduce=None, sync_every: int = 50, identity: dict | None = None,
                 checkpoint_every: int | None = None, batch_weights: bool = True):
        self.model, self.optimizer, self.scheduler, self.task = model, optimizer, scheduler, task
        self.train_loader = task.train_loader
        self.device, self.epochs, self.run_dir = torch.device(device), int(epochs), run_dir
        self.amp_dtype, self.grad_clip = amp_dtype, grad_clip
        self.callbacks, self.progress, self.stop_after = list(callbacks), progress, stop_after
        self.is_main, self.all_reduce, self.sync_every = is_main, all_reduce, max(1, int(sync_every))
        # fp16 needs loss scaling; bf16 (the default on CUDA) does not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16)
        self.epoch, self.step, self.history = 0, 0, []
        # The run's config and data (`outputs.run_identity`), saved with every checkpoint so
        # that a later command can tell whether last.pt is its run's.
        self.identity = identity
        self.last_loss: torch.Tensor | None = None  # the last step's loss, on the device
        # The effective weights all together before each step's forward (effective_weights);
        # False: each at its layer's first call, the lazy path the bench compares against.
        self.batch_weights = batch_weights
        # Mid-epoch checkpoints: every so many steps, and when SIGTERM/SIGINT asks to stop.
        self.checkpoint_every = int(checkpoint_every) if checkpoint_every else None
        self.stop_signal: str | None = None  # set by the signal handler, read by the step loop
        # The epoch in progress when a checkpoint is taken mid-epoch (None at epoch ends):
        # its number, batches done, accumulated sums, seconds spent and starting lr.
        self.in_progress: dict | None = None
        self.epoch_lr: float | None = None  # the lr the epoch in progress started with

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_path(self) -> Path | None:
        return self.run_dir / "last.pt" if self.run_dir else None

    def state_dict(self) -> dict:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "identity": self.identity,
            "in_progress": self.in_progress,
        }

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])
        self.in_progress = state.get("in_progress")

    def maybe_resume(self) -> bool:
        if self.ckpt_path and self.ckpt_path.exists():
            self.load_state_dict(load_checkpoint(self.ckpt_path))
            if self.in_progress:
                log.info("resumed from %s in epoch %d after batch %d", self.ckpt_path,
                         self.in_progress["epoch"], self.in_progress["batch"])
            else:
                log.info("resumed from %s at epoch %d", self.ckpt_path, self.epoch)
            return True
        return False

    def save(self, *, metrics: bool = True) -> None:
        if self.is_main and self.run_dir:
            # The checkpoint first, then the metrics rebuilt from its history: after a
            # crash anywhere, metrics.csv never runs ahead of last.pt.
            save_checkpoint(self.ckpt_path, self.state_dict())
            if metrics:
                write_metrics(self.run_dir, self.history)

    # ------------------------------------------------------------------ steps
    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, *batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on `batch`; returns the loss and the task's sums."""
        # Every parametrized weight (WC, WS, WN) computed once per step, all together before
        # the forward, and reused by every call of its layer within the step; a no-op for a
        # model without parametrizations.
        with self.autocast(), effective_weights(self.model, batched=self.batch_weights):
            loss, sums = self.task.loss(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.last_loss = loss.detach()
        for cb in self.callbacks:
            cb.on_step_end(self)
        return self.last_loss, sums

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.all_reduce is not None:
            self.all_reduce(t)
        return t

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int) -> None:
        if not torch.isfinite(loss_sum).item():
            where = f"'{self.ckpt_path}' (epoch {self.epoch})" if self.ckpt_path and self.epoch else "none (diverged in the first epoch)"
            raise DivergedError(
                f"the training loss became {loss_sum.item()} in epoch {epoch} (step {self.step}); "
                f"stopped. Last good checkpoint: {where}. Try a lower optim.lr, a warmup "
                f"(sched.warmup_epochs=...), or trainer.grad_clip=1.0.")

    def train_epoch(self, epoch: int) -> dict:
        """One epoch of steps; resumes inside it when a mid-epoch checkpoint says so (the
        loaders' order is a function of (seed, epoch), so the batches already done are
        skipped and the rest are the ones an uninterrupted run sees)."""
        self.model.train()
        self.train_loader.set_epoch(epoch)
        done = self.in_progress if self.in_progress and self.in_progress["epoch"] == epoch else None
        start = done["batch"] if done else 0
        sums = done["sums"].to(self.device) if done else None  # the task's sums, on the device
        spent = done["seconds"] if done else 0.0
        batches = itertools.islice(self.train_loader, start, None)
        bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not self.progress,
                   dynamic_ncols=True, initial=start, total=len(self.train_loader))
        t0 = time.perf_counter()
        for i, batch in enumerate(bar, start=start):
            _, batch_sums = self.train_step(*batch)
            sums = batch_sums if sums is None else sums + batch_sums
            if (i + 1) % self.sync_every == 0:
                # On the reduced sums: under DDP every rank must stop at the same step, or the
                # others would wait forever in their next all-reduce.
                self._check_finite(self._reduce(sums[:1].clone()), epoch)
                if self.progress:
                    bar.set_postfix(loss=f"{(sums[0] / sums[-1]).item():.3f}")
            stop = self._stop_requested(i + 1)
            if stop or (self.checkpoint_every and self.step % self.checkpoint_every == 0
                        and i + 1 < len(self.train_loader)):
                self.save_mid_epoch(epoch, i + 1, sums, spent + time.perf_counter() - t0)
            if stop:
                raise Interrupted(
                    f"stopped by {self.stop_signal} in epoch {epoch} after batch {i + 1} (step "
                    f"{self.step}); checkpoint saved to '{self.ckpt_path}'. Run the same command "
                    "again to resume from this step." if self.ckpt_path else
                    f"stopped by {self.stop_signal} in epoch {epoch} (no run directory: nothing saved)")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = spent + time.perf_counter() - t0
        sums = self._reduce(sums)
        self._check_finite(sums[0], epoch)
        self.in_progress = None
        return {**self.task.train_metrics(sums), f"{self.task.unit}_per_s": sums[-1].item() / seconds,
                "train_time_s": seconds}

    def _stop_requested(self, batches_done: int) -> bool:
        """Whether a signal asked to stop. Under DDP the ranks agree at sync points only
        (a rank that stopped alone would leave the others waiting in an all-reduce)."""
        if self.all_reduce is None:
            return self.stop_signal is not None
        if batches_done % self.sync_every:
            return False
        flag = torch.tensor([float(self.stop_signal is not None)], device=self.device)
        self.all_reduce(flag)
        if flag.item() > 0 and self.stop_signal is None:
            self.stop_signal = "another process's signal"
        return flag.item() > 0

    def save_mid_epoch(self, epoch: int, batches_done: int, sums: torch.Tensor, seconds: float) -> None:
        """A checkpoint inside epoch `epoch`: everything `save` stores, plus where the epoch
        stands. Under DDP the sums are reduced first and kept by rank 0 alone, so that the
        epoch's final reduction counts every rank's batches exactly once."""
        reduced = self._reduce(sums.clone())
        if self.all_reduce is not None and not self.is_main:
            sums.zero_()  # rank 0 carries the reduced sums from here on
        elif self.all_reduce is not None:
            sums.copy_(reduced)
        self.in_progress = {"epoch": epoch, "batch": batches_done, "sums": reduced.cpu(),
                            "seconds": seconds, "lr": self.epoch_lr}
        self.save(metrics=False)

    @torch.no_grad()
    def evaluate(self, epoch: int | None = None) -> dict:
        # Under DDP, evaluate the local replica: no collectives inside the model, so ranks
        # whose held-out shards differ by one batch cannot wait on each other.
        model = self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model
        model.eval()
        with effective_weights(model):  # the effective weights once per evaluation, not once per chunk
            return self.task.evaluate(model, autocast=self.autocast, reduce=self._reduce,
                                      epoch=self.epoch if epoch is None else epoch)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[dict]:
        self.maybe_resume()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            with self.stop_signals():
                return self._fit()
        finally:
            for cb in self.callbacks:
                cb.on_fit_end(self)

    @contextmanager
    def stop_signals(self):
        """SIGTERM (what SLURM sends before a preemption or the time limit) and Ctrl-C ask
        the loop to stop after the current step and checkpoint there; a second Ctrl-C
        stops at once. Only in the main thread, where Python delivers signals."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask_to_stop(signum, frame):
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signal.Signals(signum).name
            log.warning("%s received: stopping after this step and saving a checkpoint "
                        "(Ctrl-C again to stop at once)", self.stop_signal)

        previous = {s: signal.signal(s, ask_to_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _fit(self) -> list[dict]:
        epochs = tqdm(range(self.epoch + 1, self.epochs + 1), desc="epochs", initial=self.epoch,
                      total=self.epochs, disable=not self.progress, dynamic_ncols=True)
        for epoch in epochs:
            t0 = time.perf_counter()
            resumed = self.in_progress if self.in_progress and self.in_progress["epoch"] == epoch else None
            # The epoch's row reports its starting lr and its whole time, across a resume.
            lr = resumed["lr"] if resumed else self.optimizer.param_groups[0]["lr"]
            t0 -= resumed["seconds"] if resumed else 0.0
            self.epoch_lr = lr
            row = {"epoch": epoch, "lr": lr, **self.train_epoch(epoch), **self.evaluate(epoch)}
            self.epoch = epoch
            for cb in self.callbacks:
                row.update(cb.on_epoch_end(self, epoch))
            row["epoch_time_s"] = time.perf_counter() - t0
            self.history.append(row)
            self.save()
            for cb in self.callbacks:
                cb.on_epoch_logged(self, row)
            shown = " ".join(f"{k} {row[k]:.4g}" for k in self.task.log_keys if k in row)
            msg = f"epoch {epoch}/{self.epochs} {shown} ({row['epoch_time_s']:.1f}s)"
            if self.progress and self.task.metric in row:
                epochs.set_postfix({self.task.metric: f"{row[self.task.metric]:.4g}"})
                tqdm.write(msg)
            elif self.is_main:
                log.info(msg)
            if self.stop_after and epoch >= self.stop_after and epoch < self.epochs:
                log.info("stopping after epoch %d as asked (trainer.stop_after); rerun to resume", epoch)
                break
        return self.history

    @property
    def finished(self) -> bool:
        return self.epoch >= self.epochs
