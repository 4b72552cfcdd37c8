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
    "row_equilibrate": "wc",
    "column_equilibrate": "wc",
    "ruiz_equilibrate": "wc",
    "WeightConditioning": "wc",
    "weight_conditioning": "wc",
    "weight_standardization": "weight_methods",
    "weight_normalization": "weight_methods",
    "remove_weight_methods": "weight_methods",
    "weight_layers": "weight_methods",
    "WeightStandardization": "weight_methods",
    "apply_weight_method": "weight_methods",
    "describe_weight_method": "weight_methods",
    "condition_numbers": "diagnostics",
    "condition_number": "diagnostics",
    "summarize_conditioning": "diagnostics",
    "hessian_top_eigenvalue": "diagnostics",
    "ENorm": "enorm",
    "build_model": "models",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"wcnorm.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'wcnorm' has no attribute {name!r}")


def __dir__():
    return __all__
