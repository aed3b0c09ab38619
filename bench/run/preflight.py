"""Checks of a whole sweep before its first job trains: one clear message instead of a failure hours in.

`bench run -m ...` composes the sweep's root config, collects the values every swept key takes (from the
command line and from the experiment's hydra.sweeper.params) and checks what can be checked for all jobs at
once: the study's lr grid covers every swept method with the same size, its reference row is swept, its
lr_index values exist, and a dev split carved from train is smaller than each task's training split.
"""

from __future__ import annotations

from pathlib import Path

from bench.config.overrides import first_values, sweep_lists
from bench.errors import BenchError


def _train_rows(task, data_dir) -> int | None:
    if not data_dir:
        return None
    path = Path(data_dir).expanduser() / task.local_dir / f"{task.train_split}.parquet"
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - a broken file is reported by the run that reads it
        return None


def check_sweep(argv: list[str]) -> None:
    """Raise BenchError naming every problem of the sweep given by argv (the overrides of `bench run -m`)."""
    from bench.config import study as S
    from bench.config.compose import compose
    from bench.tasks.data import dev_size

    root = compose(first_values(argv), hydra=True)
    lists = sweep_lists(argv, root.hydra.sweeper.get("params"))
    problems = []
    methods = lists.get("method", [str(root.method.name)])
    tasks = lists.get("task", [str(root.task.name)])
    method_names = []
    for m in methods:
        try:
            method_names.append(str(compose([*first_values(argv), f"method={m}"]).method.name))
        except BenchError:
            method_names.append(m)  # an unknown method: its run says so with the known names
    st = root.get("study")
    if st is not None and st.get("lr_grid"):
        problems += S.grid_problems(st.lr_grid, sorted(set(method_names)))
        ref = st.get("reference")
        if ref and ref not in method_names:
            problems.append(f"study.reference={ref!r} is not among the swept methods {sorted(set(method_names))}; "
                            f"sweep it too or set study.reference to one of them")
        n = min((len(v) for v in st.lr_grid.values()), default=0)
        ext = st.get("max_extensions") or 0
        ext_problems = S.extension_problems(st.lr_grid, ext)
        problems += ext_problems
        ext = 0 if ext_problems else int(ext)
        for v in lists.get("study.lr_index", []):
            try:
                ok = v == S.TUNED or -ext <= int(v) < n + ext
            except ValueError:
                ok = False
            if not ok:
                span = f"0..{n - 1}" if not ext else f"{-ext}..{n - 1 + ext}, with study.max_extensions={ext}"
                problems.append(f"study.lr_index={v} is not a grid entry ({span} or tuned)")
        for t in tasks:  # a per-task setting the pilot has not filled in yet (???) stops the whole sweep
            try:
                S.apply_method_cfg(compose([*first_values(argv), f"task={t}"]))
            except BenchError as e:
                problems.append(str(e))
    spec = root.data.get("dev_from_train")
    if spec not in (None, 0):
        for t in tasks:
            cfg = compose([*first_values(argv), f"task={t}"])
            if cfg.data.get("carve_train_from"):
                continue
            rows = _train_rows(cfg.task, cfg.get("data_dir"))
            if rows is None:
                continue
            try:
                dev_size(cfg.data.dev_from_train, rows, t)
            except BenchError as e:
                problems.append(str(e))
    if problems:
        raise BenchError("the sweep was not started:\n  - " + "\n  - ".join(problems))
