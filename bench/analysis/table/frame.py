"""Run records -> one pandas DataFrame, and the per-cell statistics of a table.

The one place that knows where a record keeps what: `bench table` (both modes), the study table
(bench.analysis.study_table), `bench plot` and the study's records export all read records through `load_records`
(a folder, recursively, or one records file: ``*.json``, ``*.json.gz``, ``*.jsonl.gz``).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterable, Iterator, Optional

import pandas as pd

from bench.errors import BenchError
from bench.records import store as records
from bench.records.provenance import data_fingerprint, hardware_label

SCALE = 100.0  # the papers print scores x 100
# kept on the frame for matching, plots, paired tests and the records export; never written to runs.csv
OBJECT_COLUMNS = ("config", "loss_curve", "predictions", "record")


def iter_records(results: str | Path) -> Iterator[tuple[str, dict]]:
    """Every record under a folder (*.json, *.json.gz, *.jsonl.gz) or in one such file: (source, dict).
    An unreadable file yields {"status": "unreadable", "error": ...}."""
    results = Path(results)
    if not results.exists():
        raise BenchError(f"no results at {results}; run the study first (python -m bench run -m experiment=...) "
                         "or point results_dir= at a folder or a records.jsonl.gz")
    files = [results] if results.is_file() else sorted(
        p for p in [*results.rglob("*.json"), *results.rglob("*.json.gz"), *results.rglob("*.jsonl.gz")]
        if records.is_record_file(p, results))
    for path in files:
        try:
            if path.name.endswith(".jsonl.gz"):
                with gzip.open(path, "rt") as f:
                    for i, line in enumerate(f):
                        if line.strip():
                            yield f"{path}:{i + 1}", json.loads(line)
                continue
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt") as f:
                yield str(path), json.load(f)
        except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as e:
            yield str(path), {"status": "unreadable", "error": f"{type(e).__name__}: {e}"}


def record_row(source: str, rec: dict) -> dict:
    """One record as one flat row (metrics as ``metric.<key>`` fractions, as stored)."""
    params = rec.get("params") or {}
    train = rec.get("train") or {}
    config = rec.get("config") or {}
    selection = rec.get("selection") or {}
    return {
        "path": source,
        "status": rec.get("status"),
        "method": rec.get("method"),
        "task": rec.get("task"),
        "model": rec.get("model"),
        "seed": rec.get("seed"),
        "tag": rec.get("tag"),
        "experiment": config.get("experiment_name"),
        "config_hash": rec.get("config_hash"),
        "main_metric": rec.get("main_metric"),
        "main_score": rec.get("main_score"),
        "selection": selection.get("protocol"),
        "dev_score": selection.get("dev_score"),
        "chosen_on": selection.get("chosen_on"),
        "epoch": selection.get("epoch"),
        "trainable": params.get("trainable"),
        "trainable_method": params.get("trainable_method"),
        "trainable_head": params.get("trainable_head"),
        "total": params.get("total"),
        "steps": train.get("steps"),
        "final_loss": train.get("final_loss"),
        "step_time_s": train.get("step_time_median_s"),
        "samples_per_s": train.get("samples_per_s"),
        "optimizer_state_bytes": train.get("optimizer_state_bytes"),
        "peak_rss_mb": (rec.get("memory") or {}).get("peak_rss_mb"),
        "hardware": hardware_label(rec.get("device")),  # what step_time_s / peak_rss_mb were measured on
        "data_fingerprint": data_fingerprint(rec),  # equal exactly when the record read the same data
        "forgetting": (rec.get("forgetting") or {}).get("increase"),  # train.forgetting: generic-text loss rise
        "wall_s": rec.get("wall_s"),
        "finished_at": rec.get("finished_at"),
        "git": (rec.get("git") or {}).get("commit"),
        "error": rec.get("error"),
        **{f"metric.{k}": v for k, v in (rec.get("metrics") or {}).items()},
        "config": config,
        "loss_curve": train.get("loss_curve"),
        "predictions": rec.get("predictions"),
        "record": rec,
    }


def load_records(results: str | Path, missing_ok: bool = True) -> pd.DataFrame:
    """Every run record as one row; unreadable files are rows with status "unreadable" (listed, not dropped).
    `bench perf` records and JSON files that are not run records are skipped. A results path that does not
    exist gives an empty frame (missing_ok) or the BenchError of iter_records."""
    if missing_ok and not Path(results).exists():
        return pd.DataFrame()
    rows = []
    for source, rec in iter_records(results):
        if not isinstance(rec, dict):
            continue
        if rec.get("status") == "unreadable" and "config_hash" not in rec:
            rows.append({"path": source, "status": "unreadable", "error": rec.get("error")})
        elif "config_hash" in rec and rec.get("kind") != "perf":
            rows.append(record_row(source, rec))
    return pd.DataFrame(rows)


def flat_csv(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in OBJECT_COLUMNS if c in df.columns])


def scores(runs: pd.DataFrame, metrics: dict[str, Optional[str]]) -> pd.Series:
    """Each run's score x100: the metric its task's column reports (metrics: task -> key, None = main_score)."""
    if runs.empty:
        return pd.Series(dtype=float)
    out = pd.to_numeric(runs.get("main_score", pd.Series(float("nan"), index=runs.index)), errors="coerce")
    for task, metric in metrics.items():
        if metric:
            rows = runs["task"] == task
            col = f"metric.{metric}"
            out[rows] = pd.to_numeric(runs.loc[rows, col], errors="coerce") if col in runs else float("nan")
    return out.astype(float) * SCALE


def score_of(rec: pd.Series, metric: Optional[str]) -> float:
    """One run's score x100 (a row of load_records)."""
    v = rec.get(f"metric.{metric}") if metric else rec.get("main_score")
    return float(v) * SCALE if v is not None and not pd.isna(v) else float("nan")


def count_range(values: Iterable) -> str:
    """'1,000' or '1,000–2,000' (a row's runs may count differently, e.g. a head per task); '?' when unknown."""
    vals = sorted({int(v) for v in values if v is not None and not pd.isna(v)})
    if not vals:
        return "?"
    return f"{vals[0]:,}" if len(vals) == 1 else f"{vals[0]:,}–{vals[-1]:,}"


STAT_COLUMNS = ["row", "task", "metric", "n", "seeds", "mean", "std", "paper", "delta", "trainable_method",
                "trainable_head"]


def cell_stats(sel) -> pd.DataFrame:
    """Long form: one line per (row, task) with n, mean, std (x100), the paper's number and the delta, then one
    'avg' line per row (the mean over the table's tasks, only when every task has a score)."""
    grid = pd.MultiIndex.from_product([sel.rows, sel.tasks], names=["row", "task"])
    runs = sel.runs
    if not runs.empty:
        runs = runs[runs["row"].isin(sel.rows) & runs["task"].isin(sel.tasks)]
        runs = runs.assign(score=scores(runs, sel.metrics))
    if runs.empty:
        runs = pd.DataFrame(columns=["row", "task", "score", "seed", "trainable_method", "trainable_head"])
    cells = runs.groupby(["row", "task"]).agg(
        n=("score", "count"), mean=("score", "mean"), std=("score", "std"),
        seeds=("seed", lambda s: ",".join(str(int(x)) for x in sorted(s))),
        trainable_method=("trainable_method", count_range), trainable_head=("trainable_head", count_range),
    ).reindex(grid).reset_index()
    cells["n"] = cells["n"].fillna(0).astype(int)
    texts = ["seeds", "trainable_method", "trainable_head"]
    cells[texts] = cells[texts].fillna("")
    cells[["mean", "std"]] = cells[["mean", "std"]].astype(float)
    cells["metric"] = cells["task"].map(lambda t: sel.metrics.get(t) or "main_score")
    reported = {r["label"]: (r.get("reported") or {}) for r in (sel.paper or {}).get("rows", [])}
    cells["paper"] = [reported.get(r, {}).get(t) for r, t in zip(cells["row"], cells["task"])]
    cells["delta"] = cells["mean"] - pd.to_numeric(cells["paper"], errors="coerce")  # NaN without scores or paper

    # the average over the table's tasks: only when every task has a score
    per_row = cells.groupby("row").agg(n=("n", "min"), mean=("mean", "mean"),
                                       complete=("n", lambda n: bool((n > 0).all()))).reindex(sel.rows)
    complete = per_row["complete"].fillna(False).astype(bool)
    avg = pd.DataFrame({"row": sel.rows, "task": "avg", "metric": "mean over tasks",
                        "n": per_row["n"].fillna(0).astype(int).to_numpy(), "seeds": "",
                        "mean": per_row["mean"].where(complete).astype(float).to_numpy(), "std": float("nan"),
                        "paper": [reported.get(r, {}).get("avg") for r in sel.rows],
                        "trainable_method": "", "trainable_head": ""})
    avg["delta"] = avg["mean"] - pd.to_numeric(avg["paper"], errors="coerce")
    if set(sel.tasks) != set((sel.paper or {}).get("tasks", {})):
        avg["delta"] = float("nan")  # the paper's average covers the paper's columns: compare only those
    order = pd.MultiIndex.from_product([sel.rows, [*sel.tasks, "avg"]], names=["row", "task"])
    out = pd.concat([cells, avg], ignore_index=True).set_index(["row", "task"]).reindex(order).reset_index()
    return out[STAT_COLUMNS]
