"""Bad input and fault cases: one line that says what to do, exit code 2, no record outside a sweep."""

import os
import shutil
from pathlib import Path

import pytest

from conftest import compose_cfg, run_cli_here

TINY = ["model=tiny-bert", "train.max_steps=2", "train.batch_size=4", "train.progress=false"]


def _one_line_error(r, fragment):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], r.stderr[-2000:]


def _no_records(folder):
    assert not list(Path(folder).rglob("*.json")) if Path(folder).exists() else True


@pytest.fixture
def broken_glue(tmp_path, glue_dir):
    """A copy of the generated GLUE data with a corrupt SST-2 train file and a CoLA label outside its classes."""
    import pandas as pd

    root = tmp_path / "data"
    shutil.copytree(glue_dir, root)
    (root / "glue" / "sst2" / "train.parquet").write_bytes(b"PAR1 this is not parquet")
    df = pd.read_parquet(root / "glue" / "cola" / "train.parquet")
    df.loc[3, "label"] = 7
    df.to_parquet(root / "glue" / "cola" / "train.parquet", index=False)
    return root


@pytest.mark.parametrize("args, fragment", [
    (["method=lora", "task=rte", "train.lr=abc"], "train.lr must be a number (got 'abc')"),
    (["method=lora", "task=sst2"], "is not a readable parquet file"),
    (["method=lora", "task=cola"], "labels [7]"),
    (["method=lora_dash", "task=rte", "method.s=500", "method.r=500"], "LoRA-Dash s=500 exceeds min(d_out, d_in)=32"),
    (["method=id3", "task=rte", "method.budget=1e10"], "method.budget=10000000000.0 exceeds the"),
])
def test_bad_run_input_is_one_line(tmp_path, broken_glue, args, fragment):
    r = run_cli_here(["run", *TINY, *args, f"data_dir={broken_glue}", f"results_dir={tmp_path}/runs"])
    _one_line_error(r, fragment)
    _no_records(tmp_path / "runs")


def test_results_dir_under_a_file_is_one_line(tmp_path, glue_dir):
    (tmp_path / "afile").write_text("x")
    r = run_cli_here(["run", *TINY, "method=lora", "task=rte", f"data_dir={glue_dir}", f"results_dir={tmp_path}/afile/runs"])
    _one_line_error(r, "which is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through folder permissions")
def test_unwritable_results_dir_is_one_line(tmp_path, glue_dir):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r = run_cli_here(["run", *TINY, "method=lora", "task=rte", f"data_dir={glue_dir}", f"results_dir={ro}/runs"])
    _one_line_error(r, "cannot be written")


def test_params_of_an_unknown_method_is_one_line():
    r = run_cli_here(["params", "model=minilm", "method=lroa"])
    _one_line_error(r, "unknown method 'lroa' (did you mean 'lora'?)")


def test_record_is_group_readable_and_leaves_no_empty_artifact_folder(tmp_path, glue_dir):
    from bench.run import runner

    old = os.umask(0o022)
    try:
        rec = runner.run(compose_cfg([*TINY, "method=lora", "task=rte", f"data_dir={glue_dir}", f"results_dir={tmp_path}"]))
    finally:
        os.umask(old)
    path = Path(rec["path"])
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no empty <record>/ folder beside it
