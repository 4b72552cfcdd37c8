"""What a paper preset declares about itself, read through Hydra's composition.

Each preset (conf/experiment/<name>.yaml) states, per budget, under `protocol.<budget>`:

- `stand_in`: the real subset that replaces the dataset of its grid at that budget,
  e.g. ``{replaces: cifar10, dataset: npz, path: cifar10-partial.npz}``: `dataset`
  is the dataset group that loads it, `path` (a file) or `root` (a folder) its
  location inside the data folder, any other key a `dataset.<key>` setting;
- `not_run`: the grid points the budget leaves out, ``{"dataset=cifar100": reason}``.

`scripts/run_cpu_budget.sh` turns the stand-in into overrides
(``python -m wcnorm.presets PRESET... --budget cpu --data DIR``), the report writes the
left-out points' rows, and the tests read the same declarations. `protocol` is one of
the preset's lookup tables, which no run's identity includes (`outputs.LOOKUP_KEYS`):
declaring more there renames no run.
"""

from __future__ import annotations

import argparse
import functools
import sys
from importlib.resources import files
from pathlib import PurePath

CONFIG_MODULE = "wcnorm.conf"
# Keys of a stand-in that name a location inside the data folder.
LOCATIONS = ("path", "root")


def preset_names() -> list[str]:
    """Every preset of conf/experiment/, by name."""
    folder = files(CONFIG_MODULE) / "experiment"
    return sorted(p.name[:-len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


@functools.cache
def _composed(preset: str):
    """The preset's config composed with its Hydra settings (unresolved where read)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    # Hydra holds one global config source: one already set up (a caller composing
    # configs of its own) is set aside while the preset is read, and put back after.
    held = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose("train", overrides=[f"experiment={preset}"], return_hydra_config=True)
    finally:
        if held is not None:
            GlobalHydra.instance().initialize(held)


def _protocol(preset: str) -> dict:
    from omegaconf import OmegaConf

    node = _composed(preset).get("protocol")
    return OmegaConf.to_container(node, resolve=False) if node is not None else {}


def swept_keys(preset: str) -> tuple[str, ...]:
    """The config keys below a group that the preset's sweep varies (`trainer.batch_size`,
    `model.depth`, `dataset.shape`; not the seed, not a group chosen by name such as
    `norm`): what names a grid point of it besides its model, dataset and normalizer.
    Raises ValueError for a name that is no preset."""
    protocol(preset)  # the name is checked
    params = _composed(preset).hydra.sweeper.get("params") or {}
    return tuple(k for k in params if "." in k)


def protocol(preset: str) -> dict:
    """The preset's `protocol`: its budgets and what each declares. Raises ValueError
    for a name that is no preset."""
    if preset not in preset_names():
        raise ValueError(f"no preset {preset!r} in conf/experiment/ (presets: "
                         f"{', '.join(preset_names())})")
    return _protocol(preset)


def declared(preset: str, budget: str) -> dict:
    """What `protocol.<budget>` of the preset declares ({} for a budget it has not)."""
    return dict(protocol(preset).get(budget) or {})


def not_run(preset: str, budget: str) -> dict[str, str]:
    """The grid points the budget leaves out, each with its reason."""
    return dict(declared(preset, budget).get("not_run") or {})


def stand_in(preset: str, budget: str) -> dict:
    """The subset that replaces the grid's dataset at the budget ({} for none)."""
    return dict(declared(preset, budget).get("stand_in") or {})


def stand_in_overrides(preset: str, budget: str, data: str) -> list[str]:
    """The command-line overrides that put the budget's stand-in in place, its file or
    folder found in ``data``: ``["dataset=npz", "dataset.path=DATA/cifar10-partial.npz"]``."""
    spec = stand_in(preset, budget)
    if not spec:
        return []
    if "dataset" not in spec or "replaces" not in spec:
        raise ValueError(f"protocol.{budget}.stand_in of preset {preset} needs `dataset` (the "
                         f"group that loads it) and `replaces` (the dataset it stands in for)")
    overrides = [f"dataset={spec['dataset']}"]
    for key, value in spec.items():
        if key in ("dataset", "replaces"):
            continue
        value = str(PurePath(data) / str(value)) if key in LOCATIONS else value
        overrides.append(f"dataset.{key}={value}")
    return overrides


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wcnorm.presets",
                                 description="Each preset's stand-in data at a budget: one line a "
                                             "preset, its name and the overrides that put its "
                                             "subset in place, tab-separated (the name alone: "
                                             "the preset's own data).")
    ap.add_argument("presets", nargs="+")
    ap.add_argument("--budget", default="cpu")
    ap.add_argument("--data", default="../shared/data", help="the folder holding the subsets")
    args = ap.parse_args(argv)
    status = 0
    for preset in args.presets:  # one process for all: composing is the slow part
        try:
            overrides = stand_in_overrides(preset, args.budget, args.data)
        except ValueError as err:  # said, and no line: the caller runs nothing for it
            print(f"wcnorm.presets: {err}", file=sys.stderr)
            status = 2
            continue
        print("\t".join([preset, *overrides]))
    return status


if __name__ == "__main__":
    sys.exit(main())
