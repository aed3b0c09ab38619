"""train.report_to: handed to the Trainer; TensorBoard event files hold the run's loss; W&B / MLflow offline
where installed; bad values and missing packages as one-line errors; not part of the config hash."""

import glob
import os
from pathlib import Path

import pytest
from conftest import compose_cfg, run_cli_here

from bench.errors import BenchError
from bench.records import store as records
from bench.run import runner
from bench.run import trackers

TINY = ["model=tiny-bert", "train.max_steps=4", "train.logging_steps=1", "data.max_train_samples=16",
        "data.max_eval_samples=8", "train.progress=false", "method=lora", "task=sst2"]


def _cfg(tmp_path, glue_dir, *extra):
    return compose_cfg([*TINY, f"data_dir={glue_dir}", f"results_dir={tmp_path}/runs", f"cache_dir={tmp_path}/cache",
                        *extra])


def test_tensorboard_event_files_hold_the_records_loss(glue_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rec = runner.run(_cfg(tmp_path, glue_dir, "train.report_to=tensorboard"))
    assert rec["status"] == "ok"
    logdir = Path(rec["logging"]["dir"])
    assert rec["logging"]["report_to"] == "tensorboard"
    # beside the record, not in the checkpoints folder (deleted when the run completes)
    assert logdir == Path(rec["path"]).with_suffix("").resolve() / "logs" / "tensorboard"
    assert glob.glob(str(logdir / "events.out.tfevents.*"))
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
    logged = {e.step: e.value for e in acc.Scalars("train/loss")}
    curve = {int(s): v for s, v in rec["train"]["loss_curve"]}
    assert sorted(logged) == sorted(curve) == [1, 2, 3, 4]
    for step, v in curve.items():
        assert logged[step] == pytest.approx(v, rel=1e-5)


def test_report_to_is_not_part_of_the_config_hash(glue_dir, tmp_path):
    def chash(*extra):
        config = runner.plain(_cfg(tmp_path, glue_dir, *extra))
        config.pop("hydra", None)
        return records.config_hash(config)

    assert chash("train.report_to=tensorboard") == chash() == chash("train.report_to=none")


def test_default_is_none_and_nothing_is_logged(glue_dir, tmp_path):
    cfg = _cfg(tmp_path, glue_dir)
    assert cfg.train.report_to == "none"
    rec = runner.run(cfg)
    assert rec["status"] == "ok" and "logging" not in rec
    assert not (Path(rec["path"]).with_suffix("") / "logs").exists()


@pytest.mark.parametrize("value", ["comet", "tensorbord", "all"])
def test_bad_value_is_one_line(glue_dir, tmp_path, value):
    with pytest.raises(BenchError) as e:
        runner.validate_config(_cfg(tmp_path, glue_dir, f"train.report_to={value}"))
    msg = str(e.value)
    assert "\n" not in msg and "train.report_to must be one of none | tensorboard | wandb | mlflow" in msg
    assert repr(value) in msg


def test_bad_value_at_the_command_line(glue_dir, tmp_path):
    r = run_cli_here(["run", *TINY, f"data_dir={glue_dir}", f"results_dir={tmp_path}/runs", "train.report_to=neptune"])
    assert r.returncode == 2
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert lines == ["error: Invalid configuration: train.report_to must be one of none | tensorboard | wandb | "
                     "mlflow (got 'neptune'); e.g. train.report_to=tensorboard"]
    assert not list((tmp_path / "runs").glob("*.json"))  # stopped before anything ran


@pytest.mark.parametrize("tracker", ["wandb", "mlflow", "tensorboard"])
def test_missing_package_is_one_line(glue_dir, tmp_path, tracker, monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec",
                        lambda name, *a: None if name == trackers.PACKAGES[tracker] else real(name, *a))
    with pytest.raises(BenchError) as e:
        runner.validate_config(_cfg(tmp_path, glue_dir, f"train.report_to={tracker}"))
    msg = str(e.value)
    assert "\n" not in msg
    assert f"train.report_to={tracker} needs the {trackers.PACKAGES[tracker]} package" in msg
    assert "pip install 'peft-bench[trackers]'" in msg


def test_offline_destinations_and_the_users_own_settings(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    for k in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME",
              "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(trackers, "_OURS", {})
    out = tmp_path / "runs" / "sst2__lora__x" / "checkpoints"
    cfg = OmegaConf.create({"train": {"report_to": "mlflow"}})
    args = trackers.trainer_args(cfg, out)
    assert args == {"report_to": ["mlflow"], "run_name": "sst2__lora__x"}
    assert os.environ["MLFLOW_TRACKING_URI"] == (out.resolve().parent / "logs" / "mlruns").as_uri()
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"   # MLflow 3 refuses a file store without it
    # the next run of the same process gets its own folder; a value the user set is left alone
    trackers.trainer_args(cfg, tmp_path / "runs" / "other" / "checkpoints")
    assert os.environ["MLFLOW_TRACKING_URI"].endswith("/runs/other/logs/mlruns")
    monkeypatch.setenv("WANDB_MODE", "online")
    args = trackers.trainer_args(OmegaConf.create({"train": {"report_to": "wandb"}}), out)
    assert args["report_to"] == ["wandb"] and os.environ["WANDB_MODE"] == "online"
    assert os.environ["WANDB_DIR"] == str(out.resolve().parent / "logs")
    assert trackers.trainer_args(OmegaConf.create({"train": {"report_to": "none"}}), out) == {"report_to": "none"}


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_wandb_and_mlflow_log_offline_where_installed(glue_dir, tmp_path, tracker, monkeypatch):
    if not trackers.installed(tracker):
        pytest.skip(f"{tracker} is not installed (optional: pip install 'peft-bench[trackers]')")
    for k in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME",
              "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(trackers, "_OURS", {})
    rec = runner.run(_cfg(tmp_path, glue_dir, f"train.report_to={tracker}"))
    assert rec["status"] == "ok" and rec["logging"]["report_to"] == tracker
    logs = Path(rec["path"]).with_suffix("").resolve() / "logs"
    if tracker == "wandb":
        assert rec["logging"]["mode"] == "offline"
        assert glob.glob(str(logs / "wandb" / "offline-run-*"))
    else:
        import mlflow

        assert rec["logging"]["uri"] == (logs / "mlruns").as_uri()
        client = mlflow.tracking.MlflowClient(tracking_uri=rec["logging"]["uri"])
        exp = client.get_experiment_by_name("peft-bench")
        (run,) = client.search_runs([exp.experiment_id])
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [int(m.step) for m in history] == [int(s) for s, _ in rec["train"]["loss_curve"]]
