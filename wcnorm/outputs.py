"""What a run leaves on disk: the output contract.

    <run_dir>/config.yaml      the resolved config
    <run_dir>/metrics.csv      one row per epoch (METRIC_COLUMNS, then method extras)
    <run_dir>/result.json      final and best (marked) test accuracy, provenance, config
    <run_dir>/last.pt          model, optimizer, scheduler, scaler, RNG states, epoch
    <run_dir>/conditioning.csv per-layer condition numbers (weight-method runs)

The run directory is derived from the config (not the clock): the same command lands
in the same directory, so rerunning it resumes an interrupted run or skips a
finished one, and two different configs never share a directory.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import platform
import subprocess
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import CheckpointError, WcnormError

TMP_SUFFIX = ".tmp"  # atomic writes' temporary files: `.<name>.<random>.tmp` beside the target

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s", "images_per_s"]

# Keys that say where or how visibly a run happens, not what it computes: they stay
# out of the run's identity, so e.g. `trainer.stop_after` can interrupt a run that a
# later command (without it) resumes.
VOLATILE_KEYS = ("out_dir", "run_dir", "dataset.root", "dataset.download", "trainer.progress",
                 "trainer.stop_after", "trainer.num_workers", "hydra")


def _drop(d: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.get(p) if isinstance(d, dict) else None
        if d is None:
            return
    if isinstance(d, dict):
        d.pop(leaf, None)


def config_identity(cfg: DictConfig) -> dict:
    ident = OmegaConf.to_container(cfg, resolve=True)
    for key in VOLATILE_KEYS:
        _drop(ident, key)
    return ident


def config_hash(cfg: DictConfig) -> str:
    blob = json.dumps(config_identity(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:8]


def run_dir_for(cfg: DictConfig) -> Path:
    """`out_dir/<dataset>/<model>/<norm>/seed<seed>-<hash of the config>`, or `run_dir`."""
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    model = cfg.model.name + (f"-d{cfg.model.depth}" if "depth" in cfg.model else "")
    return Path(cfg.out_dir) / cfg.dataset.name / model / cfg.norm.name / f"seed{cfg.seed}-{config_hash(cfg)}"


# ----------------------------------------------------------------------------- atomic files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`:
    a reader (or a crash) sees the old file or the new one, never half of one. The
    file gets the permissions the user's umask gives (mkstemp's are 0600, which would
    hide shared run directories from the rest of a team)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete what interrupted atomic writes left behind (`.<name>.*.tmp`). Only safe
    while holding the run's lock: no other writer can be mid-write then."""
    stale = sorted(Path(run_dir).glob(f".*{TMP_SUFFIX}"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint without unpickling arbitrary objects: a `last.pt` may come
    from someone else (a shared run directory), and a pickle can run code. Tensors,
    numbers, strings and containers load; anything else is refused with a message
    that names the file and says how to start over."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by cause
        raise CheckpointError(
            f"'{path}' is not a readable wcnorm checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'empty or truncated file'}). It was not "
            f"loaded. Move it aside (e.g. `mv '{path}' '{path}.bad'`) to start this run over.") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' holds a {type(state).__name__}, not a wcnorm checkpoint. "
                              f"Move it aside (e.g. `mv '{path}' '{path}.bad'`) to start this run over.")
    return state


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def metric_columns(history: list[dict]) -> list[str]:
    extra = sorted({k for row in history for k in row} - set(METRIC_COLUMNS))
    return METRIC_COLUMNS + extra


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    write_csv(run_dir / "metrics.csv", history, metric_columns(history))


def write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------- provenance


def git_commit() -> str | None:
    """The project's commit when it runs from a checkout (with '+dirty' for local edits)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device) -> str:
    """The GPU's name, or the CPU's model name (e.g. 'AMD EPYC 7B13')."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        model = ""
    return model or platform.processor() or platform.machine() or "cpu"


def environment(device: torch.device) -> dict:
    from . import __version__

    return {
        "wcnorm_version": __version__,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda if device.type == "cuda" else None,
        "device": str(device),
        "device_name": device_name(device),
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- locking


@contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on the run directory (released even if the process dies)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WcnormError(f"another process is training in '{run_dir}' (same config); "
                              "wait for it, or choose another `run_dir`") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
