"""wcnorm: Weight Conditioning and Equi-normalization, as a library and an experiment runner.

Library use, in your own training loop::

    import wcnorm
    model = wcnorm.weight_conditioning(model)            # W_eff = E(W) W on every layer
    enorm = wcnorm.ENorm(model, optimizer, c=1.0)        # ReLU nets: balance the weights
    ...; optimizer.step(); enorm.step()

Command line: `wcnorm train model=resnet18 norm=bn_wc` (see `wcnorm --help`).
"""

from importlib import import_module

__version__ = "0.1.0"

# Public names and the module that defines each; imported on first use so that
# `import wcnorm` stays cheap.
_EXPORTS = {
    "row_equilibrate": "methods.wc",
    "column_equilibrate": "methods.wc",
    "ruiz_equilibrate": "methods.wc",
    "WeightConditioning": "methods.wc",
    "weight_conditioning": "methods.wc",
    "weight_standardization": "methods.baselines",
    "weight_normalization": "methods.baselines",
    "WeightStandardization": "methods.baselines",
    "weight_layers": "methods.weight_method",
    "effective_weights": "methods.weight_method",
    "apply_weight_method": "methods",
    "describe_weight_method": "methods",
    "remove_weight_methods": "methods",
    "cancelled_layers": "methods.cancellation",
    "condition_numbers": "methods.diagnostics",
    "condition_number": "methods.diagnostics",
    "summarize_conditioning": "methods.diagnostics",
    "hessian_top_eigenvalue": "methods.diagnostics",
    "ENorm": "methods.enorm",
    "build_model": "models",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"wcnorm.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'wcnorm' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
