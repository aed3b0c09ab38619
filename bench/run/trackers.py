"""`train.report_to=none|tensorboard|wandb|mlflow`: the run's Trainer logs to an experiment tracker too.

The value is handed to the Trainer (TrainingArguments.report_to), which adds transformers' own integration
callback. Every tracker writes beside the run's record (<results_dir>/<record name>/logs/), offline:

* tensorboard: event files under logs/tensorboard (`tensorboard --logdir <results_dir>` shows every run);
* wandb: WANDB_MODE=offline, files under logs/wandb (`wandb sync` uploads them later);
* mlflow: a local file store, MLFLOW_TRACKING_URI=file:<...>/logs/mlruns (`mlflow ui --backend-store-uri ...`);
  MLflow 3.x keeps that store in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE=true, which is set
  too (a database store such as sqlite needs SQLAlchemy, which mlflow-skinny does not bring).

A WANDB_* / MLFLOW_* variable the user set before the run wins (e.g. an online W&B project or an MLflow
server). The record keeps where the logs went (record["logging"]). The trackers do not change what is trained,
so report_to is not part of the config hash (bench.records.store.NON_SEMANTIC_TRAIN_KEYS).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Optional

CHOICES = ("none", "tensorboard", "wandb", "mlflow")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # tracker -> module to import
_OURS: dict[str, str] = {}   # environment variables this process set (and may set again for the next run)


def _value(cfg) -> str:
    v = cfg.train.get("report_to") if cfg is not None else None
    return "none" if v is None or str(v) in ("", "null", "None") else str(v)


def installed(name: str) -> bool:
    return importlib.util.find_spec(PACKAGES[name]) is not None


def problems(value: Any) -> list[str]:
    """What is wrong with a train.report_to value (an empty list when fine), one line each."""
    v = "none" if value is None else str(value)
    if v not in CHOICES:
        return [f"train.report_to must be one of {' | '.join(CHOICES)} (got {value!r}); "
                "e.g. train.report_to=tensorboard"]
    if v != "none" and not installed(v):
        return [f"train.report_to={v} needs the {PACKAGES[v]} package, which is not installed: "
                f"pip install 'peft-bench[trackers]' (or pip install {PACKAGES[v]}), or train.report_to=none"]
    return []


def _set_env(key: str, value: str) -> None:
    """Set a variable unless the user set it (a value this process set for an earlier run is replaced)."""
    if key in os.environ and os.environ[key] != _OURS.get(key):
        return
    os.environ[key] = _OURS[key] = value


def log_root(output_dir: str | Path) -> Path:
    """<results_dir>/<record name>/logs: beside the run's checkpoints folder (which goes when the run is done)."""
    return Path(output_dir).resolve().parent / "logs"


def trainer_args(cfg, output_dir: str | Path) -> dict[str, Any]:
    """The TrainingArguments keys for the tracker (report_to, run_name); sets the offline / local-file
    destinations of W&B and MLflow."""
    v = _value(cfg)
    if v == "none":
        return {"report_to": "none"}
    root = log_root(output_dir)
    if v == "wandb":
        root.mkdir(parents=True, exist_ok=True)
        _set_env("WANDB_MODE", "offline")
        _set_env("WANDB_DIR", str(root))
        _set_env("WANDB_PROJECT", "peft-bench")
    elif v == "mlflow":
        _set_env("MLFLOW_TRACKING_URI", (root / "mlruns").as_uri())
        _set_env("MLFLOW_ALLOW_FILE_STORE", "true")
        _set_env("MLFLOW_EXPERIMENT_NAME", "peft-bench")
    return {"report_to": [v], "run_name": root.parent.name}


def attach(trainer, output_dir: str | Path) -> None:
    """Point the Trainer's TensorBoard callback at logs/tensorboard (its default is under output_dir, the
    checkpoints folder, which is deleted when the run completes)."""
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "TensorBoardCallback":
            cb.logging_dir = str(log_root(output_dir) / "tensorboard")


def where(trainer) -> Optional[dict]:
    """Where the Trainer's tracker callbacks write (for the record), or None when there is none."""
    for cb in trainer.callback_handler.callbacks:
        name = type(cb).__name__
        if name == "TensorBoardCallback":
            return {"report_to": "tensorboard", "dir": cb.logging_dir}
        if name == "WandbCallback":
            return {"report_to": "wandb", "mode": os.environ.get("WANDB_MODE", "online"),
                    "dir": os.environ.get("WANDB_DIR"), "project": os.environ.get("WANDB_PROJECT"),
                    "run_name": trainer.args.run_name}
        if name == "MLflowCallback":
            return {"report_to": "mlflow", "uri": os.environ.get("MLFLOW_TRACKING_URI"),
                    "experiment": os.environ.get("MLFLOW_EXPERIMENT_NAME"), "run_name": trainer.args.run_name}
    return None
