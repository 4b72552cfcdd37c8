"""The installed console script, run from a temporary directory as a user would.

Each run starts a process that imports PyTorch and composes the config: all but the
top-level help are `slow`."""

import json
import subprocess

import pandas as pd
import pytest
from conftest import WCNORM, cli_env, wcnorm

from wcnorm.outputs import METRIC_COLUMNS

SMOKE = ["dataset=synthetic", "model=enorm_fc", "trainer.device=cpu", "trainer.epochs=1", "trainer.batch_size=16",
         "trainer.limit_batches=2", "dataset.train_size=48", "dataset.test_size=16"]


def test_top_level_help_lists_the_commands(tmp_path):
    out = wcnorm("--help", cwd=tmp_path)
    for cmd in ("train", "table", "plot", "bench"):
        assert cmd in out


@pytest.mark.slow
def test_train_help_and_cfg_come_from_the_packaged_config(tmp_path):
    out = wcnorm("train", "--help", cwd=tmp_path)
    assert "norm" in out and "bn_wc" in out and "model" in out
    job = wcnorm("train", "norm=bn_wc", "--cfg", "job", cwd=tmp_path)
    assert "side: row" in job and "name: bn_wc" in job


@pytest.mark.slow
def test_a_one_epoch_run_from_any_directory_writes_the_four_files(tmp_path):
    wcnorm("train", *SMOKE, "out_dir=out", cwd=tmp_path)
    [result] = list((tmp_path / "out").rglob("result.json"))
    run = result.parent
    assert {"config.yaml", "metrics.csv", "result.json", "last.pt"} <= {p.name for p in run.iterdir()}
    assert list(pd.read_csv(run / "metrics.csv").columns[:8]) == METRIC_COLUMNS
    r = json.loads(result.read_text())
    assert {"final_test_acc", "best_test_acc", "wall_time_s", "num_params", "git_commit", "config"} <= set(r)
    assert not (tmp_path / "outputs").exists()  # Hydra leaves no stray folders behind


@pytest.mark.slow
def test_a_two_point_multirun_of_the_two_methods(tmp_path):
    wcnorm("train", "-m", *SMOKE, "norm=bn_wc,enorm", "seed=1", "out_dir=out", cwd=tmp_path)
    runs = sorted(p.parent for p in (tmp_path / "out").rglob("result.json"))
    assert [r.parent.name for r in runs] == ["bn_wc", "enorm"] and all(r.name.startswith("seed1-") for r in runs)
    assert json.loads((runs[0] / "result.json").read_text())["weight_method"]["method"] == "wc"
    assert "enorm_objective" in pd.read_csv(runs[1] / "metrics.csv").columns


@pytest.mark.slow
def test_an_unknown_model_lists_the_valid_ones(tmp_path):
    text = wcnorm("train", "model=resnet1000", cwd=tmp_path, status=1)
    assert "resnet1000" in text and "resnet18" in text and "densenet121" in text


@pytest.mark.slow
def test_an_invalid_value_fails_before_any_work(tmp_path):
    assert "trainer.epochs" in wcnorm("train", *SMOKE, "trainer.epochs=0", "out_dir=out", cwd=tmp_path, status=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_missing_dataset_offline_says_where_and_what_to_do(tmp_path):
    text = wcnorm("train", "dataset=cifar10", f"dataset.root={tmp_path / 'nodata'}", "dataset.download=false",
                  "trainer.device=cpu", "out_dir=out", cwd=tmp_path, status=1)
    assert str(tmp_path / "nodata") in text and "dataset=digits" in text and "dataset.root" in text


@pytest.mark.slow
def test_tab_completion_completes_train_overrides(tmp_path):
    install = wcnorm("train", "-sc", "install=bash", cwd=tmp_path)
    assert "-F hydra_bash_completion wcnorm" in install
    line = "wcnorm train norm=bn_"
    query = wcnorm("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert set(query.split()) >= {"norm=bn_wc", "norm=bn_e", "norm=bn_enorm"}


# ----------------------------------------------------------------------------- `wcnorm ... | head`


def _cut_short(*args, cwd, lines: int) -> subprocess.CompletedProcess:
    """Run wcnorm into a pipe whose reader closes it after `lines` lines, as `| head` does."""
    proc = subprocess.Popen([WCNORM, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    for _ in range(lines):
        proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return subprocess.CompletedProcess(proc.args, proc.wait(timeout=300), "", err)


@pytest.mark.parametrize("args", [("--help",), pytest.param(("train", "--help"), marks=pytest.mark.slow),
                                  pytest.param(("train", "--cfg", "job"), marks=pytest.mark.slow)])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path, args):
    proc = _cut_short(*args, cwd=tmp_path, lines=0)
    assert proc.returncode == 141 and proc.stderr == ""  # 128 + SIGPIPE, as for `yes | head`


@pytest.mark.slow
def test_a_run_whose_log_reader_has_gone_stops_quietly(tmp_path):
    proc = _cut_short("train", *SMOKE, "trainer.epochs=3", "out_dir=out", cwd=tmp_path, lines=1)
    assert proc.returncode == 141
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr and "BrokenPipe" not in proc.stderr
