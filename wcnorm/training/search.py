"""Learning-rate search per grid point: `wcnorm train -m experiment=NAME +search=lr`.

A normalizer that changes the effective step size (WC, ENorm) is judged on the wrong
learning rate when every method shares one, so each method gets its own: the search
tunes every point of the preset's grid (each normalizer; each model, dataset, depth or
batch size the preset varies) apart, one Optuna study per point. One study over the
whole grid, with the normalizer as one more parameter, would find the best pair
(normalizer, rate), not each normalizer's best rate.

* The sweep's overrides (`hydra.sweeper.params`, then the command line; the last one
  of a key wins, as in Hydra's sweepers) fall in three kinds: interval sweeps
  (`optim.lr: tag(log, interval(1e-4, 1))`) are the search space, parsed by the Optuna
  sweeper plugin; the other sweeps make the grid, as the basic sweeper expands it; the
  rest is fixed. Seeds repeat a setting rather than vary it: a search trains the first
  of the sweep's seeds.
* A trial is an ordinary run, `optim.lr=<proposed>` with the validation split that
  conf/search/lr.yaml sets (`dataset.val_split`), in its own run directory. Its value
  is the validation accuracy of the final epoch (result.json `final_val_acc`); the
  test set is never looked at.
* Every study samples with its own copy of the configured (seeded) sampler: a point's
  proposals depend only on its own trials, and every point is offered the same first
  rates. Rerunning the search proposes the same rates, whose runs have finished, and
  `train` returns their stored results instead of training: a search resumes where it
  stopped.
* A trial whose loss diverged counts as 0 % validation accuracy (its rate is too high,
  which the study must learn); a trial that failed otherwise is a failed trial, left
  out of the study and listed at the end of the sweep (training.sweep).
* Each round launches `n_jobs` trials of every point together, so a parallel launcher
  runs the points side by side.

`wcnorm search` (report.search) makes the table of the best rates from the run
directories.

Hydra instantiates a sweeper only by a name in its plugin namespace (`hydra_plugins.*`),
and learns those names by scanning the installed packages, a scan that an editable
install escapes. So `wcnorm train` puts this sweeper there itself, under SWEEPER, when
a search is asked for (`register_sweeper`).
"""

from __future__ import annotations

import copy
import logging
import sys
import types
from enum import Enum

import optuna
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from .sweep import SEARCH_OBJECTIVE, JobFailure, invalid_jobs, own_overrides, swept_keys

log = logging.getLogger("wcnorm")

DIVERGED_VALUE = 0.0  # the objective of a trial whose loss diverged: the worst accuracy
DIVERGED = "diverged"  # a trial's user attribute
SEED = "seed"
SWEEPER = "hydra_plugins.wcnorm_search.PerPointSearch"  # conf/search/lr.yaml: hydra.sweeper._target_


def split_sweep(overrides: list[Override], parser: OverridesParser) -> tuple[dict[str, BaseDistribution],
                                                                                list[list[str]]]:
    """(the search space, the grid points: each point's overrides) of a sweep's overrides."""
    by_key: dict[str, Override] = {}
    for o in overrides:
        by_key[o.get_key_element()] = o  # a later override of a key replaces it, in its place
    space, grid = {}, []
    for key, o in by_key.items():
        if o.is_interval_sweep():
            space[key] = create_optuna_distribution_from_override(o)
        elif key == SEED and o.is_discrete_sweep():
            grid += parser.parse_overrides([f"{key}={next(iter(o.sweep_string_iterator()))}"])
        else:
            grid.append(o)
    return space, [job for batch in BasicSweeper.split_arguments(grid, None) for job in batch]


def trial_value(ret: JobReturn) -> tuple[float | None, bool]:
    """What a trial's run returned, as the study's objective (None: the trial failed), and
    whether its loss diverged."""
    result = ret.return_value  # re-raises an exception that escaped the job, as Hydra's sweepers do
    if isinstance(result, JobFailure):
        return (DIVERGED_VALUE if result.diverged else None), result.diverged
    return (result.get(SEARCH_OBJECTIVE) if result.get("status") == "finished" else None), False


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The highest value; of equal ones, the lowest first parameter (rate), as `wcnorm search`
    says. A diverged trial is no rate to recommend: None if every trial diverged or failed."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE and not t.user_attrs[DIVERGED]]
    return max(done, key=lambda t: (t.value, -next(iter(t.params.values())))) if done else None


class PerPointSearch(Sweeper):
    """One Optuna study per point of the sweep's grid (see the module docstring).

    Configured as the Optuna sweeper plugin is (`hydra/sweeper=optuna`: sampler,
    direction, n_trials per point, n_jobs, params). Its persistence, custom spaces and
    failure limit are not taken: each study lives in memory, since finished trials are
    found again by their run directories, and a failed trial never stops the search."""

    def __init__(self, sampler: optuna.samplers.BaseSampler, direction, n_trials: int, n_jobs: int,
                 params: DictConfig | None = None, storage=None, study_name=None, search_space=None,
                 custom_search_space=None, max_failure_rate: float = 0.0) -> None:
        self.unsupported = [k for k, v in {"storage": storage, "study_name": study_name, "search_space": search_space,
                                           "custom_search_space": custom_search_space}.items() if v is not None]
        self.sampler = sampler  # never sampled from itself: each study gets a copy
        self.direction = direction.name if isinstance(direction, Enum) else str(direction)
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.params = dict(params or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space, points = split_sweep(parser.parse_overrides(
            [*(f"{k}={v}" for k, v in self.params.items()), *arguments]), parser)
        problems = self._problems(space, points)
        if problems:  # said as the sweep's other checks say it (training.sweep), not as a traceback
            log.error("this search cannot start, so no trial starts:\n%s", "\n".join(problems))
            raise SystemExit(1)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # each point's outcome is logged below
        studies = [optuna.create_study(sampler=copy.deepcopy(self.sampler), direction=self.direction)
                   for _ in points]
        log.info("search: %d trials for each of %d grid points, over %s", self.n_trials, len(points),
                 ", ".join(space))
        job, left = 0, self.n_trials
        while left > 0:
            batch = min(self.n_jobs, left)
            asked = [(study, point, study.ask(space)) for study, point in zip(studies, points)
                     for _ in range(batch)]
            jobs = [[*point, *(f"{k}={v}" for k, v in trial.params.items())] for _, point, trial in asked]
            returns = self.launcher.launch(jobs, initial_job_idx=job)
            job, left = job + len(returns), left - batch
            for (study, _, trial), ret in zip(asked, returns):
                value, diverged = trial_value(ret)
                trial.set_user_attr(DIVERGED, diverged)
                study.tell(trial, value, state=TrialState.COMPLETE if value is not None else TrialState.FAIL)
        self._report(points, studies)

    def _problems(self, space: dict, points: list[list[str]]) -> list[str]:
        """What stops the search before any trial: an option it does not take, nothing to
        search or the wrong way, no validation split, a grid point that cannot run (each
        of its trials would fail)."""
        found = [f"  hydra.sweeper.{k} is not taken: the studies live in memory, the space is "
                 f"hydra.sweeper.params" for k in self.unsupported]
        if self.direction != "maximize":
            found.append(f"  hydra.sweeper.direction={self.direction}: a search maximizes the validation accuracy")
        if not space:
            found.append("  nothing to search: give an interval, e.g. 'optim.lr=tag(log,interval(1e-4,1))' "
                         "(conf/search/lr.yaml has one)")
        if not self.config.dataset.get("val_split"):
            found.append("  dataset.val_split is 0, and a search tunes on the validation split: set it "
                         "(conf/search/lr.yaml holds out 0.1)")
        swept = swept_keys(points)
        found += [point.describe(swept).replace("  #", "  grid point #", 1)
                  for point in invalid_jobs(self.config, points)]
        return found

    def _report(self, points: list[list[str]], studies: list[optuna.Study]) -> None:
        swept = swept_keys(points)
        for point, study in zip(points, studies):
            label = " ".join(own_overrides(point, swept)) or "the grid's only point"
            best = best_trial(study)
            if best is None:
                log.warning("search: %s: every trial diverged or failed", label)
                continue
            log.info("search: %s: best %s, validation accuracy %.2f %% (trial %d of %d)", label,
                     " ".join(f"{k}={v:.4g}" for k, v in best.params.items()), best.value,
                     best.number + 1, len(study.trials))
        log.info("search: the table of the best rates: wcnorm search %s", self.config.out_dir)


def register_sweeper() -> None:
    """Make `hydra.sweeper._target_: SWEEPER` name PerPointSearch (see the module docstring):
    a module of that name holding it, and Hydra's record of it as a plugin."""
    module, _, name = SWEEPER.rpartition(".")
    PerPointSearch.__module__ = module
    sys.modules[module] = types.ModuleType(module, f"wcnorm's search sweeper ({__name__})")
    setattr(sys.modules[module], name, PerPointSearch)
    Plugins.instance().register(PerPointSearch)
