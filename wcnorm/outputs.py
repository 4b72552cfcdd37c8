"""What a run leaves on disk: the output contract.

    <run_dir>/config.yaml      the resolved config
    <run_dir>/metrics.csv      one row per epoch (METRIC_COLUMNS, then method extras)
    <run_dir>/result.json      final and best (marked) test accuracy, provenance, config
    <run_dir>/last.pt          model, optimizer, scheduler, scaler, RNG states, epoch
    <run_dir>/conditioning.csv per-layer condition numbers (weight-method runs)

The run directory is derived from the config (not the clock): the same command lands
in the same directory, so rerunning it resumes an interrupted run or skips a
finished one, and two different configs never share a directory. A directory
belongs to one run: last.pt and result.json carry its identity (`run_identity`: the
config's hash and the data's fingerprint), and a command whose identity differs is
refused (`check_identity`) instead of resuming, skipping or overwriting someone
else's run. docs/guarantees.md states what holds, and which test shows it.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from .errors import CheckpointError, DiskFull, RunMismatchError, WcnormError
from .provenance import device_name, environment, git_commit  # noqa: F401 - where callers find them

log = logging.getLogger("wcnorm")

TMP_SUFFIX = ".tmp"  # atomic writes' temporary files: `.<name>.<random>.tmp` beside the target
METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s", "images_per_s"]

# The files of a run (the contract above), in the order `discard_run` deletes them: the
# result first, so an interrupted discard never leaves a finished-looking run. The neural
# fields add pictures: a NeRF its rendered views (RENDERS/epoch_<n>/, RENDERS/test/), an
# occupancy field the marching-cubes surface and a picture of it.
RENDERS, MESH_FILE, MESH_PICTURE = "renders", "mesh.obj", "mesh.png"
RUN_FILES = ("result.json", "last.pt", "metrics.csv", "conditioning.csv", "config.yaml", MESH_FILE, MESH_PICTURE)
RUN_FOLDERS = (RENDERS,)

# Keys that say where or how visibly a run happens, or how this command treats the
# directory, not what it computes: they stay out of the run's identity, so e.g.
# `trainer.stop_after` can interrupt a run that a later command (without it) resumes,
# and a tracker (`logger`) can be added to a run half way. `dataset.root` says where
# the files lie, not what they are: the data's fingerprint (`data_fingerprint`) stands
# for them instead, so a copied dataset still resumes.
VOLATILE_KEYS = ("out_dir", "run_dir", "dataset.root", "dataset.download", "trainer.progress",
                 "trainer.stop_after", "trainer.checkpoint_every", "trainer.num_workers", "trainer.restart",
                 "logger", "hydra")

# A preset's lookup tables, read through interpolations: its budgets' numbers
# (`protocol`), learning rates per method and depth or batch size (`lr_table`,
# `lr_by_batch`) and network sizes per budget (`sizes`). What a run takes from them is
# resolved into the keys it sets (trainer.epochs, model.width, optim.lr, size), which
# name the run; the tables themselves do not, so editing one budget's numbers or one
# method's rate renames no run that does not use them.
LOOKUP_KEYS = ("protocol", "lr_table", "lr_by_batch", "sizes")
NOT_IDENTITY = VOLATILE_KEYS + LOOKUP_KEYS

# Datasets whose files are checked against known checksums whenever they load
# (torchvision's md5 sums): their name says what their data is, wherever it lies.
CHECKSUMMED_DATASETS = ("cifar10", "cifar100")

# Data files up to this size are identified by their bytes, larger ones by size and
# modification time. An array file is read whole when it loads, so hashing it costs
# about one more read, from the page cache.
CONTENT_HASH_LIMIT = 1 << 30


def _drop(d: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.get(p) if isinstance(d, dict) else None
        if d is None:
            return
    if isinstance(d, dict):
        d.pop(leaf, None)


# Options added after runs already existed, at the value that computes what those runs
# computed: left out of the identity at that value, so an existing run directory keeps
# its name (and resumes) when wcnorm gains an option.
NEUTRAL_DEFAULTS = {"model.width": 1, "dataset.val_split": 0, "norm.enorm.fused": False}


def dotted_get(d: dict, dotted: str):
    """``d["a"]["b"]`` for ``"a.b"`` in a plain config dict; None where any level is absent."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def config_identity(cfg: DictConfig, not_identity=NOT_IDENTITY, neutral_defaults=None) -> dict:
    """The config less what does not name a run (`not_identity`, `neutral_defaults`:
    today's rules unless older ones are asked for)."""
    ident = OmegaConf.to_container(cfg, resolve=True)
    for key in not_identity:
        _drop(ident, key)
    neutral_defaults = NEUTRAL_DEFAULTS if neutral_defaults is None else neutral_defaults
    for key, neutral in neutral_defaults.items():
        value = dotted_get(ident, key)
        if value is not None and isinstance(value, bool) == isinstance(neutral, bool) and value == neutral:
            _drop(ident, key)
    return ident


def config_digest(cfg: DictConfig, *rules) -> str:
    """The sha1 of the config's identity; the run directory's name carries its first 8 digits."""
    blob = json.dumps(config_identity(cfg, *rules), sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()


# The identity rules of earlier wcnorm versions: which keys they left out (the volatile
# keys as they grew; with or without the lookup tables) and whether they dropped the
# neutral defaults. A run directory's files record the digest its config had under the
# rules of the wcnorm that wrote them.
_FORMER_VOLATILE = (
    VOLATILE_KEYS,
    tuple(k for k in VOLATILE_KEYS if k != "trainer.checkpoint_every"),
    tuple(k for k in VOLATILE_KEYS if k not in ("trainer.checkpoint_every", "trainer.restart", "logger")),
)
IDENTITY_RULES = tuple((volatile + lookup, neutral) for volatile in _FORMER_VOLATILE
                       for lookup in (LOOKUP_KEYS, ()) for neutral in (NEUTRAL_DEFAULTS, {}))


def digests_under_any_rules(cfg: DictConfig) -> set[str]:
    """The digests `cfg` had under today's identity rules and every earlier one."""
    return {config_digest(cfg, *rules) for rules in IDENTITY_RULES}


def config_hash(cfg: DictConfig) -> str:
    return config_digest(cfg)[:8]


def run_dir_for(cfg: DictConfig) -> Path:
    """`out_dir/<dataset>/<model>/<norm>/seed<seed>-<hash of the config>`, or `run_dir`."""
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    model = cfg.model.name + (f"-d{cfg.model.depth}" if "depth" in cfg.model else "")
    return Path(cfg.out_dir) / cfg.dataset.name / model / cfg.norm.name / f"seed{cfg.seed}-{config_hash(cfg)}"


# ----------------------------------------------------------------------------- run identity


def listing_fingerprint(root: Path, depth: int = 3) -> dict:
    """The names of the files under `root`, `depth` levels down (split/class/image), hashed,
    and their count. Cheap (no file is opened or stat'ed), it changes when files are
    added, removed or renamed, and not when the tree is copied elsewhere; an edit inside
    a file that keeps its name goes unseen. Hidden entries (.DS_Store, .nfs*) come and go
    without the data changing, so they are left out."""
    digest, count = hashlib.sha256(), 0

    def walk(folder: str, prefix: str, level: int) -> None:
        nonlocal count
        with os.scandir(folder) as entries:
            for entry in sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name):
                name = prefix + entry.name
                if level < depth and entry.is_dir():
                    walk(entry.path, name + "/", level + 1)
                else:
                    digest.update(name.encode() + b"\n")
                    count += 1

    walk(str(root), "", 1)
    return {"files": count, "names_sha256": digest.hexdigest()}


def path_fingerprint(path) -> dict:
    """What identifies the data at `path`: a file by its bytes (by size and modification
    time above CONTENT_HASH_LIMIT), a folder by the names in it (`listing_fingerprint`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return listing_fingerprint(path)
    try:
        st = path.stat()
    except OSError:
        return {"missing": str(path)}  # loading the dataset will say what is wrong
    if st.st_size > CONTENT_HASH_LIMIT:
        return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return {"bytes": st.st_size, "sha256": digest.hexdigest()}


def data_fingerprint(dataset: DictConfig) -> dict:
    """What identifies the data a run trains on beyond its config: the file (or folder)
    `dataset.path` names, the folder `dataset.root` names (an image tree, a scene). The
    other datasets are fixed by their name and config: checksummed ones (CIFAR), digits
    (shipped with scikit-learn), synthetic data (generated)."""
    if dataset.get("path"):
        return path_fingerprint(dataset.path)
    if dataset.get("root") and dataset.name not in CHECKSUMMED_DATASETS:
        return path_fingerprint(dataset.root)
    return {"builtin": dataset.name}


def run_identity(cfg: DictConfig) -> dict:
    """What a run directory belongs to: the config (its digest, whose first 8 digits name
    the directory) and the data (its fingerprint). Stored in last.pt and result.json."""
    return {"config_sha1": config_digest(cfg), "data": data_fingerprint(cfg.dataset)}


def check_identity(found, expected: dict, source: Path) -> None:
    """Refuse `source` (a last.pt or result.json) if it belongs to another config or was
    trained on other data. A file without an identity, from before run directories
    recorded one, is accepted with a warning: its directory's name carries the config's
    hash already, unless `run_dir` pinned it."""
    if found is None:
        log.warning("'%s' records no config or data identity (an older wcnorm wrote it): "
                    "taking it as this run's", source)
        return
    found = found if isinstance(found, dict) else {}
    restart = "or rerun with trainer.restart=true to delete that run and train this one there"
    if found.get("config_sha1") != expected["config_sha1"] \
            and not _named_under_older_rules(source, found.get("config_sha1"), expected):
        raise RunMismatchError(
            f"'{source}' belongs to another config (config sha1 {found.get('config_sha1')}, this "
            f"config's {expected['config_sha1']}; that run's config.yaml is beside it), so it was left "
            f"alone. Leave `run_dir` unset (every config then gets a directory of its own) or choose "
            f"another one, {restart}.")
    if found.get("data") != expected["data"]:
        raise RunMismatchError(
            f"'{source}' was trained on other data than the dataset the config names now (then "
            f"{found.get('data')}, now {expected['data']}), so it was left alone. Put that data back, "
            f"train on the new data in another directory (`run_dir=...`), {restart}.")


# ----------------------------------------------------------------------------- runs named by older rules
# When what names a run changes (e.g. the lookup tables left the identity), a run made
# before gets another digest under today's rules. It is still this config's run: the
# config.yaml beside its files, read under today's rules, says so. Such a run keeps
# resuming (or being skipped) instead of being trained again beside itself.


def _stored_config(run_dir: Path) -> DictConfig | None:
    """`run_dir/config.yaml`; None where there is none, or it is not a readable config."""
    try:
        cfg = OmegaConf.load(Path(run_dir) / "config.yaml")
        return cfg if isinstance(cfg, DictConfig) else None
    except (OSError, ValueError, YAMLError, OmegaConfBaseException):  # absent, unreadable, not a config
        return None


def stored_config_digest(run_dir: Path, recorded: str | None) -> str | None:
    """The digest, under today's identity rules, of the config in `run_dir/config.yaml`,
    if that file is the config the run trained with: some identity rules (today's or
    older) give it the digest `recorded` that its last.pt or result.json holds. A
    config.yaml edited since (a text file anyone can change) matches no recorded digest
    and gives None, as does a missing or unreadable one."""
    cfg = _stored_config(run_dir)
    if cfg is None or not isinstance(recorded, str):
        return None
    try:
        authentic = recorded in digests_under_any_rules(cfg)
        return config_digest(cfg) if authentic else None
    except OmegaConfBaseException:  # an interpolation that does not resolve
        return None


def recorded_identity(run_dir: Path) -> dict | None:
    """The identity the run in `run_dir` recorded when it trained: result.json's, else
    last.pt's; None where neither can be read or records one."""
    for read in (lambda: read_result(Path(run_dir) / "result.json"),
                 lambda: load_checkpoint(Path(run_dir) / "last.pt", mmap=True)):
        try:
            identity = (read() or {}).get("identity")
        except (CheckpointError, OSError):
            continue
        if isinstance(identity, dict):
            return identity
    return None


def _named_under_older_rules(source: Path, found: str | None, expected: dict) -> bool:
    """`source` records another config digest (`found`) only because older rules computed
    it: the config.yaml beside it has that digest under those rules, and this config's
    under today's."""
    if stored_config_digest(Path(source).parent, found) != expected["config_sha1"]:
        return False
    log.info("'%s' records its config digest under older identity rules; its config.yaml is "
             "this config: taking it as this run's", source)
    return True


def former_run_dir(run_dir: Path, digest: str) -> Path | None:
    """The directory beside `run_dir` (same seed) that holds the run of the config with
    `digest` under the name older identity rules gave it; None if `run_dir` exists. What
    the run recorded when it trained decides, not its config.yaml alone."""
    run_dir = Path(run_dir)
    if run_dir.exists() or not run_dir.parent.is_dir():
        return None
    seed = run_dir.name.rsplit("-", 1)[0]
    for sibling in sorted(run_dir.parent.glob(f"{seed}-*")):
        if sibling.is_dir() and stored_config_digest(sibling, (recorded_identity(sibling) or {}).get("config_sha1")) == digest:
            return sibling
    return None


def adopt_run(former: Path, run_dir: Path) -> None:
    """Rename a run found under its former name (`former_run_dir`) to today's, unless a
    process (an older wcnorm) is training in it."""
    with _locked(Path(former)):
        os.rename(former, run_dir)  # the lock file moves with it, still held


def discard_run(run_dir: Path) -> list[Path]:
    """Delete the run in `run_dir` (`trainer.restart=true`), so it trains from scratch.
    Deleted, not moved aside: a copy with a result.json in it would count as another
    run wherever run directories are searched for (`wcnorm table`). Under the lock."""
    gone = [run_dir / name for name in (*RUN_FILES, *RUN_FOLDERS) if (run_dir / name).exists()]
    for path in gone:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return gone


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
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"no space left on the device to write '{path}' ({os.strerror(err.errno)}): the write "
                           f"was abandoned and the previous '{path.name}', if any, is whole, so nothing written "
                           "before is lost. Free some space and rerun the same command: it resumes.") from None
        raise


# The temporary file of an atomic write of one of the run's own files: `.<name>.<random>.tmp`
# (the random part as `tempfile.mkstemp` makes it). Any other `.tmp` file is not the run's.
_RUN_TEMPORARY = re.compile(r"\.(" + "|".join(map(re.escape, RUN_FILES)) + r")\.[a-z0-9_]+"
                            + re.escape(TMP_SUFFIX))


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete what interrupted atomic writes of the run's own files left behind
    (`.<name>.<random>.tmp`, <name> one of RUN_FILES); a hidden `.tmp` file of anyone
    else stays. Only safe while holding the run's lock: no other writer can be mid-write
    then."""
    stale = sorted(p for p in Path(run_dir).glob(f".*{TMP_SUFFIX}") if _RUN_TEMPORARY.fullmatch(p.name))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _move_aside(path: Path) -> str:
    return f"Move it aside (e.g. `mv '{path}' '{path}.bad'`)"


def load_checkpoint(path: Path, *, mmap: bool = False) -> dict:
    """Read a checkpoint without unpickling arbitrary objects: a `last.pt` may come
    from someone else (a shared run directory), and a pickle can run code. Tensors,
    numbers, strings and containers load; anything else is refused with a message
    that names the file and says how to start over. `mmap`: map the tensors instead
    of reading them (to look at the small entries of a large checkpoint)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by cause
        raise CheckpointError(
            f"'{path}' is not a readable wcnorm checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'empty or truncated file'}). It was not "
            f"loaded. {_move_aside(path)} to start this run over.") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' holds a {type(state).__name__}, not a wcnorm checkpoint. "
                              f"{_move_aside(path)} to start this run over.")
    return state


def check_checkpoint(run_dir: Path, identity: dict) -> None:
    """Refuse a run directory whose last.pt is another run's (read without its tensors)."""
    path = Path(run_dir) / "last.pt"
    if path.exists():
        check_identity(load_checkpoint(path, mmap=True).get("identity"), identity, path)


def search_objective(result: dict) -> str:
    """What a search maximizes, never a test score: test_acc -> final_val_acc, val_psnr -> final_val_psnr."""
    return "final_val_" + str(result.get("metric") or "test_acc").split("_", 1)[1]


def read_result(path: Path) -> dict | None:
    """A run's result.json, None if there is none; an unreadable one is refused, named."""
    path = Path(path)
    try:
        result = json.loads(path.read_bytes())
        problem = None if isinstance(result, dict) else f"it holds a JSON {type(result).__name__}"
    except FileNotFoundError:
        return None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        problem = f"{type(err).__name__}: {err}"
    if problem:
        raise CheckpointError(
            f"'{path}' is not a readable wcnorm result ({problem}). {_move_aside(path)}: the run then "
            f"resumes from its last.pt and writes it again. Or rerun with trainer.restart=true to train "
            f"the run from scratch.")
    return result


def finished_result(run_dir: Path, identity: dict) -> dict | None:
    """The run's result if it has finished (after checking it is this run's), else None."""
    path = Path(run_dir) / "result.json"
    result = read_result(path)
    if result is not None:
        check_identity(result.get("identity"), identity, path)
    return result


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


# ----------------------------------------------------------------------------- locking


@contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on the run directory (released even if the process dies)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with _locked(run_dir):
        yield


@contextmanager
def _locked(run_dir: Path):
    with open(run_dir / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WcnormError(f"another process is training in '{run_dir}' (same config); "
                              "wait for it, or choose another `run_dir`") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
