"""The results folders' earlier command, kept for the commands their READMEs quote:
`python scripts/make_tables.py --runs RUNS --out DIR ...` is `wcnorm report RUNS --out DIR ...`
(wcnorm/report/pipeline.py; `make tables` calls `wcnorm report`)."""

from __future__ import annotations

import sys

from wcnorm.report.pipeline import main


def report_argv(argv: list[str]) -> list[str]:
    """The `wcnorm report` arguments of a make_tables.py command line: `--runs X` -> `X`."""
    out, runs, it = [], [], iter(argv)
    for arg in it:
        if arg == "--runs":
            runs.append(next(it, "runs"))
        elif arg.startswith("--runs="):
            runs.append(arg.split("=", 1)[1])
        else:
            out.append(arg)
    return runs[-1:] + out


if __name__ == "__main__":
    sys.exit(main(report_argv(sys.argv[1:])))
