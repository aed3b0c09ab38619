"""Task data: local parquet in the hub's schema when a data directory is set, otherwise the hub.

Also: reproducible subsampling, and carving a training part out of another split (disjoint by a
group column such as a SQuAD article title) for tasks whose training split is not available.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from bench.errors import BenchError, DataUnavailable
from bench.hub import hub_reachable


@dataclass
class TaskData:
    train: Any  # datasets.Dataset
    evals: dict  # alias -> datasets.Dataset
    info: dict = field(default_factory=dict)  # recorded in the result: sources, sizes, subsampling, carving


def _local_path(data_dir: Optional[str], task: Any, split: str) -> Optional[Path]:
    if not data_dir:
        return None
    return Path(data_dir).expanduser() / task.local_dir / f"{split}.parquet"


def load_split(task: Any, split: str, data_dir: Optional[str]):
    """One split of a task: (dataset, source string). Raises DataUnavailable naming both ways to fix it."""
    import datasets

    path = _local_path(data_dir, task, split)
    if path is not None and path.is_file():
        ds = datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
        return ds, f"local:{path}"
    hub = task.get("hub")
    hub_error = "hub not configured for this task"
    if hub and hub_reachable():
        try:
            ds = datasets.load_dataset(hub.path, hub.get("name"), split=split)
            return ds, f"hub:{hub.path}/{hub.get('name')}"
        except Exception as e:  # noqa: BLE001 - any hub failure becomes one actionable message
            hub_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    elif hub:
        hub_error = "the Hugging Face hub is not reachable from this machine"
    where = (
        f"no file {path}" if path is not None else "no data directory is set (data_dir=null, BENCH_DATA_DIR unset)"
    )
    raise DataUnavailable(
        f"Cannot load split {split!r} of task {task.name!r}: {where}, and {hub_error}. Fix one of: "
        f"(1) point data_dir=<dir> (or the BENCH_DATA_DIR environment variable) at a folder holding "
        f"{task.local_dir}/{split}.parquet in the hub schema (e.g. ../shared/data); or "
        f"(2) make the hub reachable so {hub.path if hub else '<dataset>'} can be downloaded."
    )


def check_columns(ds, required: list[str], task_name: str, source: str) -> None:
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise BenchError(
            f"Task {task_name!r}: data from {source} lacks column(s) {missing} (has {ds.column_names}). "
            f"Files under the data directory must use the hub schema: columns {required}."
        )


def subsample(ds, n: Optional[int], seed: int):
    """The first n rows of a seeded permutation: the same subset for every method and training seed."""
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise BenchError(f"subsample size must be positive (got {n}); use null for the whole split")
    order = np.random.default_rng(seed).permutation(len(ds))[:n]
    return ds.select(sorted(order.tolist()))


def carve(ds, group_field: Optional[str], eval_fraction: float, seed: int):
    """Split one dataset into (train_part, eval_part), disjoint by group_field (rows if None)."""
    if not 0.0 < eval_fraction < 1.0:
        raise BenchError(f"data.carve_eval_fraction must be in (0, 1) (got {eval_fraction})")
    if group_field:
        keys = np.asarray(ds[group_field])
        groups = np.unique(keys)
    else:
        keys = np.arange(len(ds))
        groups = keys
    perm = np.random.default_rng(seed).permutation(len(groups))
    n_eval = max(1, int(round(eval_fraction * len(groups))))
    eval_groups = set(groups[perm[:n_eval]].tolist())
    is_eval = np.fromiter((k in eval_groups for k in keys.tolist()), dtype=bool, count=len(keys))
    train_idx = np.flatnonzero(~is_eval).tolist()
    eval_idx = np.flatnonzero(is_eval).tolist()
    info = {
        "group_field": group_field,
        "groups_total": int(len(groups)),
        "groups_eval": int(n_eval),
        "eval_fraction": eval_fraction,
        "seed": seed,
    }
    return ds.select(train_idx), ds.select(eval_idx), info


def load_task_data(cfg: Any, required_columns: list[str]) -> TaskData:
    """Train + eval splits of cfg.task, subsampled / carved as cfg.data says; every choice lands in info."""
    task, dcfg = cfg.task, cfg.data
    data_dir = cfg.get("data_dir")
    info: dict = {"data_dir": data_dir, "sources": {}, "carved": None}
    evals: dict = {}
    carve_from = dcfg.get("carve_train_from")
    eval_splits = dict(task.eval_splits)
    if not carve_from and task.get("carve_if_missing"):
        # the task may carve its training part out of another split when its train split is unavailable
        try:
            load_split(task, task.train_split, data_dir)
        except DataUnavailable as e:
            carve_from = task.carve_if_missing
            info["carve_reason"] = f"train split unavailable ({str(e).split(':')[0]})"

    if carve_from:
        whole, source = load_split(task, carve_from, data_dir)
        check_columns(whole, required_columns, task.name, source)
        train, carved_eval, carve_info = carve(
            whole, task.get("group_field"), float(dcfg.carve_eval_fraction), int(dcfg.subsample_seed)
        )
        info["sources"]["train"] = f"{source} (carved)"
        info["carved"] = {"from": carve_from, **carve_info}
        for alias, split in eval_splits.items():
            if split == carve_from:
                evals[alias] = carved_eval
                info["sources"][f"eval:{alias}"] = f"{source} (carved, disjoint from train)"
    else:
        train, source = load_split(task, task.train_split, data_dir)
        check_columns(train, required_columns, task.name, source)
        info["sources"]["train"] = source

    for alias, split in eval_splits.items():
        if alias in evals:
            continue
        ds, source = load_split(task, split, data_dir)
        check_columns(ds, required_columns, task.name, source)
        evals[alias] = ds
        info["sources"][f"eval:{alias}"] = source

    seed = int(dcfg.subsample_seed)
    info["train_size_full"] = len(train)
    train = subsample(train, dcfg.get("max_train_samples"), seed)
    info["train_size"] = len(train)
    info["eval_sizes_full"] = {a: len(d) for a, d in evals.items()}
    evals = {a: subsample(d, dcfg.get("max_eval_samples"), seed) for a, d in evals.items()}
    info["eval_sizes"] = {a: len(d) for a, d in evals.items()}
    info["max_train_samples"] = dcfg.get("max_train_samples")
    info["max_eval_samples"] = dcfg.get("max_eval_samples")
    info["subsample_seed"] = seed
    return TaskData(train=train, evals=evals, info=info)


def default_cache_dir(cfg_value: Optional[str] = None) -> Path:
    path = cfg_value or os.environ.get("BENCH_CACHE_DIR") or "~/.cache/peft-bench"
    p = Path(path).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p
