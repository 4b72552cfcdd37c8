"""Learning-rate search per grid point: `wcnorm train -m experiment=NAME +search=lr`.

A normalizer that changes the effective step size (WC, ENorm) is judged on the wrong
learning rate when every method shares one, so each method gets its own: the search
tunes every point of the preset's grid (each normalizer; each model, dataset, depth or
batch size the preset varies) apart, one Optuna study per point. One study over the
whole grid, with the normalizer as one more parameter, would find the best pair
(normalizer, rate), not each normalizer's best rate.

* The sweep's overrides (`hydra.sweeper.params`, then the command line; the last one
  of a key wins, as in Hydra's sweepers) fall in three kinds: interval sweeps
  (`optim.lr: tag(log, interval(1e-4, 1))`) are the search space; the other sweeps
  make the grid, as the basic sweeper expands it; the rest is fixed. Seeds repeat a
  setting rather than vary it: a search trains the first of the sweep's seeds.
* A trial is an ordinary run, `optim.lr=<proposed>` with the validation split that
  conf/search/lr.yaml sets (`dataset.val_split`), in its own run directory. Its value
  is the final epoch's validation value of the run's headline metric
  (outputs.search_objective: a classifier's `final_val_acc`, a radiance field's
  `final_val_psnr` on held-out training views, an occupancy field's `final_val_iou` on
  held-out pool points); the test set never chooses (a trial scores it as every run
  does; nothing here reads it).
* Optuna's ask-and-tell interface drives the rounds: each round asks every study for
  `n_jobs` trials, launches them all together through the configured launcher (so a
  parallel launcher runs the points side by side), and tells each study its values.
* Every study samples with its own sampler, made from the configured one (a partial,
  `_partial_: true`): a point's proposals depend only on its own trials, and every
  point is offered the same first rates. A study that goes on after a rerun gets the
  seed plus its number of trials, so that it does not propose its first rates again.
  The studies live in Optuna's SQLite storage (`hydra.sweeper.storage`, in the
  sweeps folder of `out_dir`), named by their grid point and search space: a rerun
  loads them, trains only the trials still missing, and a trial that a signal or a
  crash interrupted is proposed again at its rate, so that its run resumes from its
  checkpoint.
* A trial whose loss diverged counts as 0 (0 % accuracy, 0 dB, IoU 0: its rate is too high,
  which the study must learn); a trial that failed otherwise is a failed trial, left
  out of the study and listed at the end of the sweep (training.sweep).

`wcnorm search` (report.search_table) makes the table of the best rates from the run
directories. The sweeper Hydra instantiates is `hydra_plugins.wcnorm_search`, a thin
plugin that hands every call to `Search`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
from enum import Enum
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ..outputs import search_objective
from .sweep import (
    JobFailure,
    NotStarted,
    expand_grid,
    invalid_jobs,
    own_overrides,
    stop_reason,
    swept_keys,
)

log = logging.getLogger("wcnorm")

DIVERGED_VALUE = 0.0  # the objective of a trial whose loss diverged: the worst accuracy, PSNR or IoU
DIVERGED = "diverged"  # a trial's user attribute, set once it has an outcome (True/False)
SEED = "seed"
SWEEPER = "hydra_plugins.wcnorm_search.PerPointSearch"  # conf/hydra/sweeper/per_point_search.yaml


class SpaceError(ValueError):
    """An interval that is no search space (said before any trial)."""


def distribution(o: Override) -> BaseDistribution:
    """The Optuna distribution of an interval sweep: `interval(a, b)` uniform, `tag(log,
    interval(a, b))` log-uniform; whole numbers with the tag `int` (Hydra reads an
    interval's bounds as floats)."""
    value = o.value()
    assert isinstance(value, IntervalSweep)
    key, low, high, log_scale = o.get_key_element(), value.start, value.end, "log" in value.tags
    if not low < high:
        raise SpaceError(f"{key}: the interval ({low}, {high}) is empty: give its lower bound first")
    if log_scale and low <= 0:
        raise SpaceError(f"{key}: a log-scaled interval must start above 0, not at {low} "
                         f"(e.g. 'tag(log,interval(1e-4,{high}))')")
    if "int" in value.tags:
        return IntDistribution(int(low), int(high), log=log_scale)
    return FloatDistribution(float(low), float(high), log=log_scale)


def split_sweep(overrides: list[Override], parser: OverridesParser) -> tuple[dict[str, Override],
                                                                                list[list[str]]]:
    """(the search space: each interval override by key, the grid points: each point's
    overrides) of a sweep's overrides."""
    by_key: dict[str, Override] = {}
    for o in overrides:
        by_key[o.get_key_element()] = o  # a later override of a key replaces it, in its place
    space, grid = {}, []
    for key, o in by_key.items():
        if o.is_interval_sweep():
            space[key] = o
        elif key == SEED and o.is_discrete_sweep():
            grid += parser.parse_overrides([f"{key}={next(iter(o.sweep_string_iterator()))}"])
        else:
            grid.append(o)
    return space, expand_grid(grid)


def trial_value(ret: JobReturn) -> tuple[float | None, bool]:
    """What a trial's run returned, as the study's objective (None: the trial failed), and
    whether its loss diverged."""
    result = ret.return_value  # re-raises an exception that escaped the job, as Hydra's sweepers do
    if isinstance(result, JobFailure):
        return (DIVERGED_VALUE if result.diverged else None), result.diverged
    if isinstance(result, NotStarted):
        return None, False
    return (result.get(search_objective(result)) if result.get("status") == "finished" else None), False


def was_stopped(ret: JobReturn) -> bool:
    """Whether a signal stopped the trial, or kept it from starting: not an outcome, the
    rerun trains it again at its rate (from its checkpoint)."""
    result = ret.return_value
    return (isinstance(result, NotStarted) or (isinstance(result, JobFailure) and result.interrupted)
            or (isinstance(result, dict) and result.get("status") == "interrupted"))


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial with an outcome (finished, diverged or failed): it counts towards n_trials."""
    return trial.state in (TrialState.COMPLETE, TrialState.FAIL) and DIVERGED in trial.user_attrs


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The highest value; of equal ones, the lowest first parameter (rate), as `wcnorm search`
    says. A diverged trial is no rate to recommend: None if every trial diverged or failed."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE and not t.user_attrs[DIVERGED]]
    return max(done, key=lambda t: (t.value, -next(iter(t.params.values())))) if done else None


def study_name(point: list[str], space: dict[str, Override], grid: dict | None = None) -> str:
    """A grid point's study: its overrides, the search space and the sampler's grid of
    rates if it has one (a grid search and a TPE search are other studies), as a stable
    name."""
    text = " ".join(sorted(point)) + " | " + " ".join(sorted(o.input_line for o in space.values()))
    if grid:
        text += " | grid " + " ".join(f"{k}={','.join(map(str, v))}" for k, v in sorted(grid.items()))
    return "point-" + hashlib.sha256(text.encode()).hexdigest()[:20]


RESUMES = "resumes"  # a trial's user attribute: the number of the stopped trial it runs again


def resume(study: optuna.Study) -> int:
    """Make a loaded study go on: every trial that never got an outcome (a signal or a
    crash stopped it) is closed and proposed again at its rate, once, so that its run
    resumes from its checkpoint. Returns how many."""
    trials = study.trials
    taken = {t.user_attrs.get(RESUMES) for t in trials}
    again = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.FAIL) and not counted(t)
             and t.number not in taken]
    for t in again:
        if t.state == TrialState.RUNNING:  # its process ended without telling
            study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={RESUMES: t.number})
    return len(again)


class Search:
    """One Optuna study per point of the sweep's grid (see the module docstring); what the
    sweeper plugin `hydra_plugins.wcnorm_search.PerPointSearch` runs."""

    def __init__(self, sampler, direction, n_trials: int, n_jobs: int,
                 storage: str | None = None, params: DictConfig | None = None) -> None:
        self.sampler = sampler  # a partial (conf: _partial_: true) or a sampler, never sampled from itself
        self.direction = direction.name if isinstance(direction, Enum) else str(direction)
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.storage = storage
        self.params = dict(params or {})
        self.grid = sampler_grid(sampler)

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space, points = split_sweep(parser.parse_overrides(
            [*(f"{k}={v}" for k, v in self.params.items()), *arguments]), parser)
        distributions, problems = self._space(space)
        problems += self._problems(space, points)
        if problems:  # said as the sweep's other checks say it (training.sweep), not as a traceback
            log.error("this search cannot start, so no trial starts:\n%s", "\n".join(problems))
            raise SystemExit(1)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # each point's outcome is logged below
        studies = self._studies(space, points)
        log.info("search: %d trials for each of %d grid points, over %s%s", self.n_trials, len(points),
                 ", ".join(space), f" (studies: {self.storage})" if self.storage else "")
        self._run(studies, points, distributions)
        self._report(points, studies)

    def _space(self, space: dict[str, Override]) -> tuple[dict[str, BaseDistribution], list[str]]:
        distributions, problems = {}, []
        for key, o in space.items():
            try:
                distributions[key] = distribution(o)
            except SpaceError as err:
                problems.append(f"  {err}")
        return distributions, problems

    def _studies(self, space: dict[str, Override], points: list[list[str]]) -> list[optuna.Study]:
        """Each point's study, loaded from the storage when a former search made it."""
        storage = None
        if self.storage:
            path = Path(self.storage).expanduser().resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            storage = f"sqlite:///{path}"
        studies = []
        for point in points:
            study = optuna.create_study(storage=storage, study_name=study_name(point, space, self.grid),
                                        load_if_exists=True,
                                        direction=self.direction)
            study.sampler = self._sampler(len(study.trials))
            study.set_user_attr("grid_point", point)
            again = resume(study)
            if again:
                log.info("search: %s: %d stopped trial(s) proposed again at their rates",
                         " ".join(point), again)
            studies.append(study)
        return studies

    def _sampler(self, trials_before: int) -> optuna.samplers.BaseSampler:
        """A study's own sampler: the configured one, its seed moved on by the trials the
        study has (a loaded study must not propose its first rates again)."""
        if not isinstance(self.sampler, functools.partial):
            return copy.deepcopy(self.sampler)
        seed = self.sampler.keywords.get("seed")
        return self.sampler(seed=None if seed is None else seed + trials_before)

    def _run(self, studies: list[optuna.Study], points: list[list[str]],
             distributions: dict[str, BaseDistribution]) -> None:
        """Rounds of ask, launch, tell until every study has its trials or the sweep stops."""
        job = 0
        while True:
            asked = [(study, point, study.ask(distributions)) for study, point in zip(studies, points)
                     for _ in range(min(self.n_jobs, self.n_trials - sum(map(counted, study.trials))))]
            if not asked:
                return
            jobs = [[*point, *(f"{k}={v}" for k, v in trial.params.items())] for _, point, trial in asked]
            returns = self.launcher.launch(jobs, initial_job_idx=job)
            job += len(returns)
            stopped = 0
            for (study, _, trial), ret in zip(asked, returns):
                if was_stopped(ret):  # no outcome: the rerun proposes it again (resume)
                    study.tell(trial, state=TrialState.FAIL)
                    stopped += 1
                    continue
                value, diverged = trial_value(ret)
                trial.set_user_attr(DIVERGED, diverged)
                study.tell(trial, value, state=TrialState.COMPLETE if value is not None else TrialState.FAIL)
            if stop_reason(self.config.hydra.sweep.dir) is not None:
                return  # a signal stopped the sweep: no further round (training.sweep)
            if stopped:  # without a signal: trainer.stop_after; asking on would never end
                log.warning("search: %d trials stopped before their last epoch (trainer.stop_after?); "
                            "no further round: run the same command again to resume them", stopped)
                return

    def _problems(self, space: dict, points: list[list[str]]) -> list[str]:
        """What stops the search before any trial: nothing to search or the wrong way, no
        trials, no validation split, a grid point that is not a classification run, a grid
        point that cannot run (each of its trials would fail)."""
        found = []
        if self.direction != "maximize":
            found.append(f"  hydra.sweeper.direction={self.direction}: a search maximizes the validation accuracy")
        if isinstance(self.n_trials, bool) or not isinstance(self.n_trials, int) or self.n_trials < 1:
            found.append(f"  hydra.sweeper.n_trials={self.n_trials!r}: must be a whole number >= 1 "
                         f"(trials per grid point)")
        if isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) or self.n_jobs < 1:
            found.append(f"  hydra.sweeper.n_jobs={self.n_jobs!r}: must be a whole number >= 1")
        if not space:
            found.append("  nothing to search: give an interval, e.g. 'optim.lr=tag(log,interval(1e-4,1))' "
                         "(conf/search/lr.yaml has one)")
        if not self.config.dataset.get("val_split"):
            found.append("  dataset.val_split is 0, and a search tunes on the validation split: set it "
                         "(conf/search/lr.yaml holds out 0.1)")
        swept = swept_keys(points)
        found += grid_problems(self.grid, space, self.n_trials)
        found += [point.describe(swept).replace("  #", "  grid point #", 1)
                  for point in invalid_jobs(self.config, points)]
        return found

    def _report(self, points: list[list[str]], studies: list[optuna.Study]) -> None:
        swept = swept_keys(points)
        for point, study in zip(points, studies):
            label = " ".join(own_overrides(point, swept)) or "the grid's only point"
            best = best_trial(study)
            if best is None:
                log.warning("search: %s: no trial has finished (every one diverged, failed or was stopped)", label)
                continue
            log.info("search: %s: best %s, validation accuracy %.2f %% (trial %d of %d)", label,
                     " ".join(f"{k}={v:.4g}" for k, v in best.params.items()), best.value,
                     best.number + 1, len(study.trials))
        log.info("search: the table of the best rates: wcnorm search %s", self.config.out_dir)


class RateGrid(optuna.samplers.GridSampler):
    """Optuna's grid sampler for ask-and-tell: every setting of the grid once, in an order
    drawn from the seed. Optuna's own ends `study.optimize` when its grid is used up by
    calling `Study.stop`, which only works inside `optimize`; here the search's rounds end
    a study at n_trials (grid_problems makes that at most the grid's size)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def sampler_grid(sampler) -> dict[str, list] | None:
    """The rates a grid sampler tries (Optuna's GridSampler, conf/hydra/sweeper/sampler/
    wcnorm_grid.yaml: `+search=lr_grid`), by key; None for a sampler that draws them."""
    factory = sampler.func if isinstance(sampler, functools.partial) else type(sampler)
    if not (isinstance(factory, type) and issubclass(factory, optuna.samplers.GridSampler)):
        return None
    if isinstance(sampler, functools.partial):
        space = sampler.keywords.get("search_space", sampler.args[0] if sampler.args else {})
    else:
        space = sampler._search_space
    return {k: list(v) for k, v in dict(space).items()}


def grid_problems(grid: dict[str, list] | None, space: dict[str, Override], n_trials) -> list[str]:
    """A grid sampler must try exactly the searched keys, inside their intervals, and no
    more trials than its grid has (more would train its rates again)."""
    if grid is None:
        return []
    found = []
    if set(grid) != set(space):
        found.append(f"  the grid sampler tries {', '.join(sorted(grid)) or 'nothing'}, the search "
                     f"space is {', '.join(sorted(space)) or 'empty'}: give both the same keys")
    for key in set(grid) & set(space):
        try:
            dist = distribution(space[key])
        except SpaceError:
            continue  # said by _space
        outside = [v for v in grid[key] if not dist.low <= v <= dist.high]
        if outside:
            found.append(f"  {key}: the grid's {', '.join(map(str, outside))} lie outside the searched "
                         f"interval [{dist.low:g}, {dist.high:g}]")
    size = 1
    for values in grid.values():
        size *= len(values)
    if isinstance(n_trials, int) and not isinstance(n_trials, bool) and n_trials > size:
        found.append(f"  hydra.sweeper.n_trials={n_trials}: the grid has {size} settings, and more "
                     f"trials would train them again: set n_trials={size}")
    return found
