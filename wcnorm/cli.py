"""The `wcnorm` command: `wcnorm <command> [args]`.

`train` is a Hydra app (overrides, `--help`, `--cfg job`, `-m` multirun, shell
completion); the others are plain argparse tools that read run directories.
"""

from __future__ import annotations

import logging
import sys

COMMANDS = {
    "train": "train one run, or a sweep with -m (Hydra overrides: `wcnorm train --help`)",
    "table": "tables like the papers' (CSV + Markdown) and the claims check, from run directories",
    "plot": "figures like the papers' (curves, accuracy vs depth, condition numbers)",
    "bench": "measure step throughput, WC and ENorm overheads and MFU against a plain PyTorch loop",
}

USAGE = "usage: wcnorm <command> [args]\n\ncommands:\n" + "\n".join(
    f"  {name:<7} {text}" for name, text in COMMANDS.items()) + (
    "\n\nexamples:\n"
    "  wcnorm train model=resnet18 norm=bn_wc\n"
    "  wcnorm train -m norm=bn,bn_wc,enorm seed=0,1,2\n"
    "  wcnorm table runs/ --out results/table\n")


def _train(argv: list[str]) -> int:
    import hydra
    from omegaconf import DictConfig

    from .errors import WcnormError
    from .models import ModelConfigError
    from .train import train

    @hydra.main(config_path="pkg://wcnorm.conf", config_name="train", version_base="1.3")
    def app(cfg: DictConfig) -> None:
        try:
            train(cfg)
        except (WcnormError, ModelConfigError) as err:
            logging.getLogger("wcnorm").error("%s", err)
            sys.exit(1)

    # Hydra reads sys.argv; present the subcommand as the program name.
    saved = sys.argv
    sys.argv = [f"{saved[0]} train" if saved else "wcnorm train", *argv]
    try:
        app()
    finally:
        sys.argv = saved
    return 0


def _tool(module: str, argv: list[str]) -> int:
    import importlib

    return importlib.import_module(f"wcnorm.{module}").main(argv) or 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        return _train(rest)
    if cmd in COMMANDS:
        return _tool(cmd, rest)
    print(f"wcnorm: unknown command '{cmd}'\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
