"""Install layers: the library imports neither Hydra nor pandas (nor the search's or the
neural fields' packages), and a shape run without the `fields` extra is refused, naming
the extra, before it trains."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_cfg

from wcnorm.fields import tooling
from wcnorm.tasks.field_common import field_config_problems

WCNORM = shutil.which("wcnorm") or str(Path(sys.executable).parent / "wcnorm")
# What only the runner, the reports, the search or the neural fields need.
NOT_FOR_THE_LIBRARY = ("hydra", "omegaconf", "pandas", "optuna", "trimesh", "igl", "skimage", "matplotlib")

LIBRARY_USE = """
import sys, torch
from torch import nn
import wcnorm

torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                    nn.Linear(8 * 6 * 6, 10))
wcnorm.weight_conditioning(net)
net(torch.randn(2, 3, 8, 8)).sum().backward()
print(wcnorm.describe_weight_method(net))
wcnorm.remove_weight_methods(net)
wcnorm.apply_weight_method(net, "ws")
wcnorm.condition_numbers(net)
mlp = nn.Sequential(nn.Linear(4, 16, bias=False), nn.ReLU(), nn.Linear(16, 3, bias=False))
opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
enorm = wcnorm.ENorm(mlp, opt, c=1.0)
mlp(torch.randn(5, 4)).sum().backward()
opt.step()
enorm.step()
wcnorm.build_model
print("imported:", sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:])))
"""


@pytest.mark.slow
def test_the_library_imports_neither_hydra_nor_pandas():
    proc = subprocess.run([sys.executable, "-c", LIBRARY_USE, *NOT_FOR_THE_LIBRARY], capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "imported: []", proc.stdout


def test_a_missing_mesh_package_is_named_with_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "igl", None)  # import igl now raises ImportError
    assert tooling.missing() == ["libigl"]
    with pytest.raises(tooling.FieldToolingMissing, match=r"libigl, not installed here: pip install 'wcnorm\[fields\]'"):
        tooling.require("igl")
    assert tooling.require("trimesh").__name__ == "trimesh"
    cfg = compose_cfg(["experiment=wc_shape", "budget=smoke"], smoke=False)
    found = field_config_problems(cfg, check_files=False)
    assert found == ["dataset=mesh: neural fields need libigl, not installed here: pip install 'wcnorm[fields]'"]
    monkeypatch.delitem(sys.modules, "igl")
    assert tooling.missing() == [] and field_config_problems(cfg, check_files=False) == []


@pytest.mark.slow
def test_a_shape_run_without_the_fields_extra_is_refused_before_it_trains(tmp_path):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "igl.py").write_text("raise ImportError('not installed')\n")  # as if libigl were absent
    proc = subprocess.run([WCNORM, "train", "experiment=wc_shape", "budget=smoke", "out_dir=out"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": str(Path(WCNORM).parent) + ":/usr/bin:/bin", "CI": "1",
                               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(hidden)})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "pip install 'wcnorm[fields]'" in out and "libigl" in out, out
    assert "Traceback" not in out and not (tmp_path / "out").exists()
