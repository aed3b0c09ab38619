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
from bench.models.hub import hub_reachable


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
        try:
            ds = datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
        except Exception as e:  # noqa: BLE001 - ArrowInvalid, OSError, ...: one message naming the file
            first = str(e).splitlines()[0][:200] if str(e) else ""
            raise BenchError(
                f"{path} is not a readable parquet file ({type(e).__name__}: {first}); replace it with the hub's "
                f"parquet for {task.name}/{split}, or point data_dir= elsewhere"
            ) from None
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


DEV_ALIAS = "dev"  # evaluation alias of the dev split carved from train (metric keys end in _dev)


def dev_size(spec: Any, n_rows: int, task_name: str) -> int:
    """data.dev_from_train as a row count: a fraction in (0, 1) of train, or a count (int >= 1)."""
    if isinstance(spec, bool) or not isinstance(spec, (int, float)):
        raise BenchError(f"data.dev_from_train must be a fraction in (0, 1) or a row count (got {spec!r}); "
                         "e.g. data.dev_from_train=0.1 or data.dev_from_train=500")
    if 0 < spec < 1:
        n = int(round(float(spec) * n_rows))
    elif float(spec).is_integer() and spec >= 1:
        n = int(spec)
    else:
        raise BenchError(f"data.dev_from_train must be a fraction in (0, 1) or a whole count >= 1 (got {spec}); "
                         "0 or null turns the dev split off")
    if n < 1 or n >= n_rows:
        raise BenchError(
            f"data.dev_from_train={spec} asks for {n} dev rows but task {task_name!r} has {n_rows} training rows; "
            f"choose fewer than {n_rows} (e.g. data.dev_from_train={max(1, n_rows // 10)} or a fraction like 0.1)"
        )
    return n


def carve_dev(ds, n_dev: int, seed: int, stratify_field: Optional[str] = None, group_field: Optional[str] = None):
    """Rows of a dev split taken out of train: (train_rest, dev, info).

    Seeded by `seed` alone (not the training seed), so every method, seed and learning rate sees the same
    rows. Disjoint by group_field when given (whole groups go to one side, drawn in seeded order until
    n_dev rows are reached); otherwise stratified by stratify_field (each class gets its share of n_dev,
    largest remainders first), or a plain seeded draw.
    """
    import hashlib

    rng = np.random.default_rng(seed)
    n = len(ds)
    if group_field:
        keys = np.asarray(ds[group_field])
        groups, inverse = np.unique(keys, return_inverse=True)
        sizes = np.bincount(inverse)
        order = rng.permutation(len(groups))
        take = order[: int(np.searchsorted(np.cumsum(sizes[order]), n_dev) + 1)]
        is_dev = np.isin(inverse, take)
        method = f"groups of {group_field!r}"
    elif stratify_field:
        labels = np.asarray(ds[stratify_field])
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        share = counts / n * n_dev
        alloc = np.floor(share).astype(int)
        for c in np.argsort(-(share - alloc), kind="stable")[: n_dev - int(alloc.sum())]:
            alloc[c] += 1
        is_dev = np.zeros(n, dtype=bool)
        for c, k in enumerate(alloc):
            rows = np.flatnonzero(inverse == c)
            is_dev[rng.permutation(rows)[:k]] = True
        method = f"stratified by {stratify_field!r}"
    else:
        is_dev = np.zeros(n, dtype=bool)
        is_dev[rng.permutation(n)[:n_dev]] = True
        method = "random rows"
    dev_idx = np.flatnonzero(is_dev)
    train_idx = np.flatnonzero(~is_dev)
    info = {
        "from": "train",
        "size": int(len(dev_idx)),
        "train_rows_left": int(len(train_idx)),
        "seed": int(seed),
        "how": method,
        # row numbers within the training split as loaded: the same fingerprint means the same dev rows
        "fingerprint": hashlib.sha256(dev_idx.astype(np.int64).tobytes()).hexdigest()[:16],
    }
    if stratify_field and not group_field:
        vals, cnt = np.unique(np.asarray(ds[stratify_field])[dev_idx], return_counts=True)
        info["class_counts"] = {str(v): int(c) for v, c in zip(vals.tolist(), cnt.tolist())}
    return ds.select(train_idx.tolist()), ds.select(dev_idx.tolist()), info


def load_task_data(cfg: Any, required_columns: list[str], stratify_field: Optional[str] = None) -> TaskData:
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

    return assemble(cfg, train, evals, info, stratify_field)


def assemble(cfg: Any, train, evals: dict, info: dict, stratify_field: Optional[str] = None) -> TaskData:
    """Loaded train / eval splits -> TaskData: the dev carve, the seeded subsamples and their record in info.

    Every task family ends its loading here (also those that generate their data or train on another
    dataset), so data.dev_from_train, data.max_*_samples and the sizes in the record mean the same everywhere.
    """
    task, dcfg = cfg.task, cfg.data
    eval_splits = dict(task.eval_splits)
    seed = int(dcfg.subsample_seed)
    dev_spec = dcfg.get("dev_from_train")
    dev = None
    if dev_spec not in (None, 0):
        if DEV_ALIAS in eval_splits:
            raise BenchError(f"task {task.name!r} already names an evaluation split {DEV_ALIAS!r}; rename that alias")
        # carved before train is subsampled, so the dev rows do not depend on data.max_train_samples
        dev_seed = dcfg.get("dev_seed")
        dev_seed = seed if dev_seed is None else int(dev_seed)
        n_dev = dev_size(dev_spec, len(train), task.name)
        train, dev, info["dev"] = carve_dev(train, n_dev, dev_seed, stratify_field, task.get("group_field"))
        info["dev"]["spec"] = dev_spec
    info["train_size_full"] = len(train)
    train = subsample(train, dcfg.get("max_train_samples"), seed)
    info["train_size"] = len(train)
    info["eval_sizes_full"] = {a: len(d) for a, d in evals.items()}
    evals = {a: subsample(d, dcfg.get("max_eval_samples"), seed) for a, d in evals.items()}
    info["eval_sizes"] = {a: len(d) for a, d in evals.items()}
    info["reported_splits"] = list(evals)
    if dev is not None:  # the dev split is scored at every evaluation, beside the reported split(s)
        evals = {DEV_ALIAS: dev, **evals}
        info["eval_sizes"] = {DEV_ALIAS: len(dev), **info["eval_sizes"]}
    info["max_train_samples"] = dcfg.get("max_train_samples")
    info["max_eval_samples"] = dcfg.get("max_eval_samples")
    info["subsample_seed"] = seed
    from bench.records.provenance import source_fingerprints

    # what each source held: sha256 of its parquet (cached by path, size, mtime), the hub revision, None if generated
    info["fingerprints"] = source_fingerprints(info.get("sources") or {}, default_cache_dir(cfg.get("cache_dir")))
    return TaskData(train=train, evals=evals, info=info)


def default_cache_dir(cfg_value: Optional[str] = None) -> Path:
    path = cfg_value or os.environ.get("BENCH_CACHE_DIR") or "~/.cache/peft-bench"
    p = Path(path).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def example_lengths(dataset) -> list[int]:
    """Token count of each row: the dataset's 'length' column when it has one, else len(input_ids)."""
    names = getattr(dataset, "column_names", None) or []
    if "length" in names:
        return [int(n) for n in dataset["length"]]
    ids = dataset.with_format(None)["input_ids"] if hasattr(dataset, "with_format") else [r["input_ids"] for r in dataset]
    return [len(x) for x in ids]
