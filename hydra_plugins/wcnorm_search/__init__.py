"""wcnorm's learning-rate search as a Hydra sweeper plugin (`+search=lr`).

Hydra instantiates a sweeper only by a class in its plugin namespace, `hydra_plugins`,
which it finds by scanning the installed packages; wcnorm ships this package in that
namespace (no `__init__.py` in `hydra_plugins/`), as Hydra's plugin guide does. It
stays light, since every Hydra application imports it while scanning: the search
itself, and Optuna, load only when a search is configured (wcnorm.training.lr_search).
"""

from __future__ import annotations

from hydra.plugins.sweeper import Sweeper


class PerPointSearch(Sweeper):
    """One Optuna study per point of the sweep's grid: see wcnorm.training.lr_search."""

    def __init__(self, **options) -> None:
        from wcnorm.training.lr_search import Search

        self.search = Search(**options)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        self.search.sweep(arguments)
