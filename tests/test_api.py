"""The public library surface: `import wcnorm` and its names."""

import re
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import wcnorm

# The documented library API; a name dropped or renamed breaks user code.
PUBLIC = {
    "row_equilibrate", "column_equilibrate", "ruiz_equilibrate", "WeightConditioning",
    "weight_conditioning", "weight_standardization", "weight_normalization", "WeightStandardization",
    "weight_layers", "apply_weight_method", "describe_weight_method", "remove_weight_methods",
    "condition_numbers", "condition_number", "summarize_conditioning", "hessian_top_eigenvalue",
    "ENorm", "build_model", "cancelled_layers", "effective_weights",
}


def test_the_public_names_are_the_documented_ones():
    assert set(wcnorm.__all__) == PUBLIC | {"__version__"}
    assert isinstance(wcnorm.__version__, str)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_name_is_the_object_of_its_defining_module(name):
    module = import_module(f"wcnorm.{wcnorm._EXPORTS[name]}")
    obj = getattr(wcnorm, name)
    assert obj is getattr(module, name)
    assert callable(obj) and (obj.__module__ + ".").startswith(module.__name__ + ".")


def test_dir_lists_the_names_and_an_unknown_one_is_an_attribute_error():
    assert PUBLIC <= set(dir(wcnorm)) and "__version__" in dir(wcnorm)
    with pytest.raises(AttributeError, match="no attribute 'weight_condition'"):
        wcnorm.weight_condition  # noqa: B018


def test_import_is_cheap_until_a_name_is_used():
    code = ("import sys, wcnorm; assert 'torch' not in sys.modules, 'torch'; "
            "wcnorm.weight_conditioning; assert 'wcnorm.methods.wc' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_round_trip_through_the_library_changes_the_model_as_documented():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-2, 2, 16).unsqueeze(1))  # badly scaled rows
    x = torch.randn(4, 8)
    plain = model(x)
    assert wcnorm.weight_conditioning(model) is model
    for layer in (model[0], model[2]):  # hidden layers: rows unit-norm, raw weight kept
        torch.testing.assert_close(layer.weight.norm(dim=1), torch.ones(16))
    assert not parametrize.is_parametrized(model[4])  # the classifier is left alone
    assert not torch.allclose(model(x), plain)  # the function changed: no norm layer follows
    d = wcnorm.describe_weight_method(model)
    assert (d["method"], d["layers"], d["untouched_layers"]) == ("wc", ["0", "2"], ["4"])
    first = wcnorm.condition_numbers(model)[0]
    assert first["layer"] == "0" and first["kappa_eff"] < 0.1 * first["kappa_raw"]
    conditioned = model(x)
    assert wcnorm.remove_weight_methods(model) is model
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    torch.testing.assert_close(model(x), conditioned)  # baked in: same outputs, plain layers
    assert wcnorm.describe_weight_method(model)["method"] == "none"
    wcnorm.apply_weight_method(model, "ws", {"include_classifier": True})
    assert [n for n, _ in wcnorm.weight_layers(model, include_classifier=True)] == ["0", "2", "4"]
    assert wcnorm.describe_weight_method(model)["layers"] == ["0", "2", "4"]


def test_the_two_methods_drop_into_a_plain_training_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    wc_model = wcnorm.weight_conditioning(nn.Sequential(*[m for m in model]))
    assert wcnorm.describe_weight_method(wc_model)["num_layers"] == 2
    plain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    enorm = wcnorm.ENorm(plain, opt)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    before = enorm.objective()
    for _ in range(5):
        loss = nn.functional.cross_entropy(plain(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        enorm.step()
    assert torch.isfinite(loss) and enorm.imbalance()[1] < 1.0 and torch.isfinite(before)


def readme_library_example() -> str:
    """The README's library example: its first Python block after "As a library"."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.search(r"As a library.*?```python\n(.*?)```", text, re.S).group(1)


def test_the_readme_library_example_runs_as_it_is(capsys):
    exec(compile(readme_library_example(), "README.md", "exec"), {"__name__": "readme"})
    assert re.fullmatch(r"final loss \d+\.\d{3}\n", capsys.readouterr().out)
