"""Before a run directory is written: which directory a run takes, and whether it may
be written there. The same config on other data (another image folder or scene, which
`dataset.root` does not name) gets a directory of its own (`run_dir_for_data`); a
folder of someone else's files is never written into (`check_holds_a_run`); a name the
file system cannot hold is refused first (`check_name_lengths`). docs/guarantees.md
states what holds, and which test shows it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import ConfigError, RunMismatchError
from .outputs import recorded_identity


def run_dir_for_data(run_dir: Path, identity: dict) -> Path:
    """Where this config's run on this data lies, `run_dir` unpinned: `run_dir` itself,
    unless that holds this config's run on other data (another image folder or scene,
    the `dataset.root` that does not name a run), or a run on this data was given its
    own directory before: then `<run_dir>-data<8 digits of the data's fingerprint>`."""
    run_dir = Path(run_dir)
    blob = json.dumps(identity["data"], sort_keys=True, default=str).encode()
    own = run_dir.with_name(f"{run_dir.name}-data{hashlib.sha1(blob).hexdigest()[:8]}")
    if own.is_dir():
        return own
    found = recorded_identity(run_dir)
    if found is not None and found.get("config_sha1") == identity["config_sha1"] \
            and found.get("data") != identity["data"]:
        return own
    return run_dir


# What shows a folder holds a wcnorm run: its lock file (made before anything else is
# written), its checkpoint or its result.
RUN_MARKERS = (".lock", "last.pt", "result.json")


def check_holds_a_run(run_dir: Path) -> None:
    """Refuse a run directory that holds files but no wcnorm run (a folder of someone's
    own, pinned with `run_dir=`): training there would overwrite its config.yaml or
    metrics.csv, and `trainer.restart` delete its mesh.png or renders/. A new, empty
    folder, or one holding only hidden files, is free."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any((run_dir / marker).exists() for marker in RUN_MARKERS):
        return
    visible = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    if visible:
        shown = ", ".join(visible[:4]) + (", ..." if len(visible) > 4 else "")
        raise RunMismatchError(
            f"'{run_dir}' holds files ({shown}) but no wcnorm run (no .lock, last.pt or result.json), "
            f"so it was left alone. Choose a new or empty folder as `run_dir`, or leave it unset.")


def check_name_lengths(path: Path) -> None:
    """Refuse a path with a component longer than its file system allows (checked against
    the nearest existing folder), before anything is made: the command says which key
    to shorten instead of failing half way with ENAMETOOLONG."""
    path = Path(path)
    existing = path
    while existing != existing.parent:
        try:
            if existing.exists():
                break
        except OSError:  # a name too long to even look up
            pass
        existing = existing.parent
    try:
        limit = os.pathconf(existing if existing.is_dir() else existing.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise ConfigError(f"the run directory '{path}' has a component {len(os.fsencode(part))} bytes long "
                              f"('{part[:24]}...'), over this file system's limit of {limit}: shorten "
                              f"`out_dir` or `run_dir` (or the experiment's names in it)")
