"""The library's docstring examples run, and every public function carries one."""

from __future__ import annotations

import doctest
import importlib

import pytest

import wcnorm

# the modules whose examples are part of the documentation
MODULES = ["wcnorm.methods", "wcnorm.methods.wc", "wcnorm.methods.baselines",
           "wcnorm.methods.diagnostics", "wcnorm.methods.enorm.balance"]
# the public entry points that must show an example
DOCUMENTED = ["weight_conditioning", "row_equilibrate", "column_equilibrate", "ruiz_equilibrate",
              "apply_weight_method", "remove_weight_methods", "describe_weight_method",
              "weight_standardization", "weight_normalization", "condition_number",
              "condition_numbers", "summarize_conditioning", "hessian_top_eigenvalue", "ENorm"]


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             raise_on_error=False, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (see above)"


@pytest.mark.parametrize("name", DOCUMENTED)
def test_public_functions_carry_an_example(name):
    assert ">>> " in (getattr(wcnorm, name).__doc__ or ""), f"wcnorm.{name} has no Example::"


@pytest.mark.parametrize("method", ["step", "objective", "describe"])
def test_the_enorm_entry_points_carry_an_example(method):
    assert ">>> " in getattr(wcnorm.ENorm, method).__doc__
