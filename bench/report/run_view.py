"""One record -> what the page shows of that run: its score and costs, a short config, the loss curve,
the evaluation history, the chosen epoch, where its logs went and the command that reruns it."""

from __future__ import annotations

import math
import shlex
from typing import Any, Optional

from bench.records.provenance import data_fingerprint, hardware_label

SCALE = 100.0
MAX_CURVE_POINTS = 300   # longer loss curves are thinned (every k-th point, the last kept): the page stays small
TRAIN_KEYS = ("lr", "batch_size", "grad_accum", "epochs", "max_steps", "scheduler", "warmup_ratio", "weight_decay",
              "precision", "eval_strategy", "selection")
DATA_KEYS = ("max_train_samples", "max_eval_samples", "dev_from_train")


def as_number(x) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def score(rec: dict, metric: Optional[str] = None) -> Optional[float]:
    """The cell's score x100: the named metric when the table names one, else the record's main score."""
    v = (rec.get("metrics") or {}).get(metric) if metric else rec.get("main_score")
    v = as_number(v)
    return None if v is None else v * SCALE


def quote(parts: list[str]) -> str:
    return " ".join(shlex.quote(str(p)) for p in parts)


def run_command(overrides: list[str], force: bool = False) -> str:
    """`python -m bench run ...` with the record's own overrides (force=true: an ok record would be skipped)."""
    parts = [o for o in overrides if o.split("=", 1)[0] != "force"]
    return "python -m bench run " + quote([*parts, *(["force=true"] if force else [])])


def overrides_of(rec: dict) -> list[str]:
    ov = rec.get("overrides")
    if isinstance(ov, list) and ov:
        return [str(o) for o in ov]
    return [f"method={rec.get('method')}", f"task={rec.get('task')}", f"model={rec.get('model')}",
            f"seed={rec.get('seed')}"]


def thin(curve: Any, limit: int = MAX_CURVE_POINTS) -> list[list[float]]:
    pts = [p for p in (curve or []) if isinstance(p, (list, tuple)) and len(p) == 2 and as_number(p[1]) is not None]
    if len(pts) <= limit:
        return [[p[0], p[1]] for p in pts]
    step = math.ceil(len(pts) / limit)
    kept = pts[::step]
    if kept[-1] is not pts[-1]:
        kept.append(pts[-1])
    return [[p[0], p[1]] for p in kept]


def config_brief(rec: dict) -> dict[str, Any]:
    """The settings a reader compares runs by (the full config is in the record)."""
    cfg = rec.get("config") or {}
    out: dict[str, Any] = {"model": rec.get("model")}
    for k, v in (cfg.get("method") or {}).items():
        if k != "name" and v is not None:
            out[f"method.{k}"] = v
    for k in TRAIN_KEYS:
        if (cfg.get("train") or {}).get(k) is not None:
            out[f"train.{k}"] = (cfg["train"])[k]
    for k in DATA_KEYS:
        if (cfg.get("data") or {}).get(k) is not None:
            out[f"data.{k}"] = cfg["data"][k]
    if (cfg.get("model") or {}).get("pooling"):
        out["model.pooling"] = cfg["model"]["pooling"]
    return out


def view(rec: dict, source: str, run_id: str, row: str, task: str, metric: Optional[str] = None) -> dict:
    tr, sel = rec.get("train") or {}, rec.get("selection") or {}
    step = as_number(tr.get("step_time_median_s"))
    git = rec.get("git") or {}
    study = rec.get("study") or {}
    return {
        "id": run_id, "row": row, "task": task, "method": rec.get("method"), "model": rec.get("model"),
        "seed": rec.get("seed"), "score": score(rec, metric), "main_metric": metric or rec.get("main_metric"),
        "trainable": as_number((rec.get("params") or {}).get("trainable")),
        "step_ms": None if step is None else step * 1000,
        "peak_mb": as_number((rec.get("memory") or {}).get("peak_rss_mb")),
        "hardware": hardware_label(rec.get("device")),  # what step_ms / peak_mb were measured on
        "data": data_fingerprint(rec),  # what the run read (bench.records.provenance)
        "forgetting": as_number((rec.get("forgetting") or {}).get("increase")),  # train.forgetting: nats per token
        "lr": as_number(study.get("lr")) if study else as_number(((rec.get("config") or {}).get("train") or {}).get("lr")),
        "steps": tr.get("steps"), "final_loss": as_number(tr.get("final_loss")), "wall_s": as_number(rec.get("wall_s")),
        "loss_curve": thin(tr.get("loss_curve")),
        "eval_history": [{"epoch": h.get("epoch"), "step": h.get("step"),
                          "metrics": {k: as_number(v) for k, v in (h.get("metrics") or {}).items()}}
                         for h in (rec.get("eval_history") or []) if isinstance(h, dict)],
        "chosen": {"epoch": sel.get("epoch"), "step": sel.get("step"), "on": sel.get("chosen_on"),
                   "protocol": sel.get("protocol")},
        "config": config_brief(rec),
        "hash": rec.get("config_hash"), "source": source,
        "git": ((git.get("commit") or "")[:10] + (" (dirty)" if git.get("dirty") else "")) or None,
        "finished_at": rec.get("finished_at"),
        "logging": rec.get("logging"),
        "rerun": run_command(overrides_of(rec), force=True),
    }
