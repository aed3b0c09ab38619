"""Which runs a table holds: the experiment / paper protocol matched by config hash, or every ok record.

* ``experiment=<name>``: the experiment config (conf/experiment/<name>.yaml) pins the protocol and its sweep
  grid (``hydra.sweeper.params``: tasks, seeds); results/paper/<paper_table>.yaml gives the rows (each a label
  plus the overrides that reproduce it), the column order, the metric the paper reports per column and the
  paper's numbers with their source. Every expected run (row x task x seed) is composed exactly as `bench run`
  composes it (bench.config.compose) and identified by its config hash - the hash that makes sweeps resume - so a
  record counts only when it ran the pinned protocol. Missing, failed and off-protocol runs (the experiment's
  records whose config differs, with the differing keys) are listed, never silently dropped, together with
  the commands that fill the gaps. Any further key=value given to `bench table` is part of the protocol.
* no experiment: every ok record, rows = methods, columns = tasks (method=, task=, model=, seed= filter).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from bench.analysis.table.frame import load_records
from bench.config.compose import compose
from bench.config.identity import run_identity
from bench.config.overrides import merge_overrides, sweep_values
from bench.errors import BenchError
from bench.records import store as records

REPO_ROOT = Path(__file__).resolve().parents[3]
PAPER_DIR = REPO_ROOT / "results" / "paper"
FILTER_KEYS = ("method", "task", "model", "seed")
TABLE_ONLY_KEYS = ("tables_dir", "figures_dir")  # keys of `bench table` / `bench plot`, not of a run


# ------------------------------------------------------------------------------------------------
# the paper files
# ------------------------------------------------------------------------------------------------
def load_paper(name: str) -> dict:
    """results/paper/<name>.yaml: source, columns, rows with overrides and reported numbers.

    A row this suite cannot run (a method it does not have, or one the model family cannot take) has
    ``overrides: null`` and ``not_runnable: <why>``: the table shows its reported numbers, lists it with the
    reason, and expects no runs of it. A file whose source names no paper (no ``source.arxiv``: this suite's own
    rows, e.g. a pilot's) reports no numbers."""
    import yaml

    path = PAPER_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PAPER_DIR.glob("*.yaml"))) or "none"
        raise BenchError(f"no paper table {path.relative_to(REPO_ROOT)} (known: {known})")
    spec = yaml.safe_load(path.read_text())
    problems = []
    for key in ("source", "tasks", "rows"):
        if key not in spec:
            problems.append(f"missing key {key!r}")
    for i, row in enumerate(spec.get("rows") or []):
        if "label" not in row or "overrides" not in row:
            problems.append(f"rows[{i}] needs label and overrides")
        elif row["overrides"] is None and not str(row.get("not_runnable") or "").strip():
            problems.append(f"rows[{i}] ({row['label']}): overrides: null needs not_runnable: <why>")
        elif row["overrides"] is not None and row.get("not_runnable"):
            problems.append(f"rows[{i}] ({row['label']}): not_runnable with overrides (drop one)")
        for t in (row.get("reported") or {}):
            if t not in spec.get("tasks", {}) and t != "avg":
                problems.append(f"rows[{i}] ({row.get('label')}): reported task {t!r} is not a column")
        if row.get("reported") and not (spec.get("source") or {}).get("arxiv"):
            problems.append(f"rows[{i}] ({row.get('label')}): reported numbers need a paper (source.arxiv)")
    if problems:
        raise BenchError(f"{path.relative_to(REPO_ROOT)}: " + "; ".join(problems))
    spec["path"] = str(path.relative_to(REPO_ROOT))
    return spec


# ------------------------------------------------------------------------------------------------
# selecting the runs of a table
# ------------------------------------------------------------------------------------------------
@dataclass
class Selection:
    mode: str                                  # "experiment" | "records"
    runs: pd.DataFrame                         # ok runs in the table, with a "row" column
    rows: list[str]                            # row labels in order
    tasks: list[str]                           # task names in order
    task_labels: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Optional[str]] = field(default_factory=dict)   # task -> metric key (None = main_score)
    seeds: list[int] = field(default_factory=list)
    paper: Optional[dict] = None
    row_specs: dict[str, dict] = field(default_factory=dict)
    missing: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    off_protocol: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def split_filters(argv: list[str], keys: tuple[str, ...] = FILTER_KEYS) -> tuple[dict[str, list[str]], list[str]]:
    """Filters (method=, task=, model=, seed= with comma lists) and the remaining overrides."""
    filters: dict[str, list[str]] = {}
    rest = []
    for a in argv:
        key, _, value = a.partition("=")
        if key in keys and value:
            filters[key] = [v for v in value.split(",") if v]
        else:
            rest.append(a)
    return filters, rest


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys ({'train': {'lr': 1}} -> {'train.lr': 1}); an empty dict stays one key."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_diff(actual: dict, expected: dict, limit: int = 6) -> str:
    """The semantic keys where a record's config differs from the protocol's: 'key=actual (protocol: x)'."""

    a, e = flatten(records.semantic_config(actual)), flatten(records.semantic_config(expected))
    diffs = [f"{k}={a.get(k)!r} (protocol: {e.get(k)!r})" for k in sorted(set(a) | set(e)) if a.get(k) != e.get(k)]
    more = f" ... and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more if diffs else "same settings, different config hash"


def select_experiment(argv: list[str], df: pd.DataFrame) -> Selection:
    filters, rest = split_filters(argv, ("method", "task", "seed"))  # model= is part of the protocol here
    rest = [o for o in rest if o.split("=", 1)[0].lstrip("+") not in TABLE_ONLY_KEYS]  # not part of any run
    experiment = next(a.split("=", 1)[1] for a in rest if a.split("=", 1)[0] == "experiment")
    root = compose(rest, hydra=True)
    name = root.get("experiment_name") or experiment
    paper = load_paper(str(root.get("paper_table") or name))
    params = root.hydra.sweeper.get("params") or {}
    tasks = sweep_values("task", params["task"]) if "task" in params else list(paper["tasks"])
    seeds = [int(s) for s in sweep_values("seed", params["seed"])] if "seed" in params else [int(root.seed)]
    order = list(paper["tasks"])
    tasks = sorted(tasks, key=lambda t: order.index(t) if t in order else len(order))
    if "task" in filters:
        tasks = [t for t in tasks if t in filters["task"]]
    if "seed" in filters:
        seeds = [s for s in seeds if str(s) in filters["seed"]]
    variant = root.get("table_variant")
    rows = [{**r, "overrides": merge_overrides([*r["overrides"], *((r.get("variants") or {}).get(variant) or [])])}
            if r["overrides"] is not None else r for r in paper["rows"]] if variant else list(paper["rows"])
    if "method" in filters:  # filter by row label or by method name
        rows = [r for r in rows if r["label"] in filters["method"]
                or any(o in (f"method={m}" for m in filters["method"]) for o in r["overrides"] or [])]
    expected: dict[str, dict] = {}   # hash -> cell
    by_cell: dict[tuple, dict] = {}
    for row in rows:
        if row["overrides"] is None:  # not runnable here: the paper's numbers only, no expected runs
            continue
        for task in tasks:
            overrides = [*rest, *row["overrides"], f"task={task}"]
            cfg = compose(overrides)
            for seed in seeds:
                cfg.seed = seed
                identity = run_identity(cfg)
                config, chash = identity.config, identity.hash
                cell = {"row": row["label"], "task": task, "seed": seed, "hash": chash, "config": config,
                        "overrides": [*row["overrides"], f"task={task}", f"seed={seed}"]}
                expected[chash] = cell
                by_cell[(row["label"], task, seed)] = cell
    sel = Selection(
        mode="experiment",
        runs=pd.DataFrame(),
        rows=[r["label"] for r in rows],
        tasks=tasks,
        task_labels={t: (paper["tasks"].get(t) or {}).get("label", t) for t in tasks},
        metrics={t: (paper["tasks"].get(t) or {}).get("metric") for t in tasks},
        seeds=seeds,
        paper=paper,
        row_specs={r["label"]: r for r in rows},
        meta={
            "experiment": name,
            "model": str(root.model.name),
            "selection": str(root.train.selection),
            "eval_strategy": str(root.train.eval_strategy),
            "variant": variant,
            "extra_overrides": [a for a in rest if a.split("=", 1)[0] != "experiment"],
            "not_runnable": {r["label"]: str(r["not_runnable"]).strip() for r in rows if r["overrides"] is None},
        },
    )
    ok_runs, seen = [], set()
    if not df.empty:
        df = df[df["config_hash"].notna()] if "config_hash" in df else df
        for _, rec in df.iterrows():
            cell = expected.get(rec["config_hash"])
            if cell is not None:
                if rec["status"] == "ok":
                    ok_runs.append({**rec.to_dict(), "row": cell["row"]})
                    seen.add(rec["config_hash"])
                else:
                    sel.failed.append({**_brief(rec), "row": cell["row"]})
            elif rec.get("experiment") == name and rec["status"] == "ok":
                near = [c for c in by_cell.values()
                        if c["task"] == rec["task"] and c["seed"] == rec["seed"]
                        and c["config"]["method"]["name"] == rec["method"]]
                if (tasks and rec["task"] not in tasks) or ("seed" in filters and str(rec["seed"]) not in filters["seed"]):
                    continue
                why = min((config_diff(rec["config"], c["config"]) for c in near), key=len) if near else (
                    "no row of this table runs this method / task / seed")
                sel.off_protocol.append({**_brief(rec), "why": why})
    sel.runs = pd.DataFrame(ok_runs)
    failed_hashes = {f["config_hash"] for f in sel.failed}
    for (label, task, seed), cell in by_cell.items():
        if cell["hash"] not in seen:
            sel.missing.append({"row": label, "task": task, "seed": seed, "hash": cell["hash"],
                                "failed": cell["hash"] in failed_hashes})
    sel.meta["commands"] = fill_commands(sel, experiment)
    return sel


def _brief(rec: pd.Series) -> dict:
    return {k: rec.get(k) for k in ("path", "status", "method", "task", "model", "seed", "config_hash", "error")}


def fill_commands(sel: Selection, experiment: str) -> list[str]:
    """One `bench run -m` per row that has missing runs (tasks x seeds of that row's gaps)."""
    cmds = []
    extra = sel.meta.get("extra_overrides", [])
    for label in sel.rows:
        gaps = [m for m in sel.missing if m["row"] == label]
        if not gaps:
            continue
        tasks = [t for t in sel.tasks if any(g["task"] == t for g in gaps)]
        seeds = [s for s in sel.seeds if any(g["seed"] == s for g in gaps)]
        parts = [f"experiment={experiment}", *sel.row_specs[label]["overrides"],
                 f"task={','.join(tasks)}", f"seed={','.join(map(str, seeds))}", *extra]
        cmds.append("python -m bench run -m " + " ".join(shlex.quote(p) if any(c in p for c in " []{}'\"") else p for p in parts))
    return cmds


def select_records(argv: list[str], df: pd.DataFrame) -> Selection:
    filters, _ = split_filters(argv)
    runs = df[df["status"] == "ok"].copy() if not df.empty else df
    bad = df[df["status"] != "ok"] if not df.empty else df
    for key, values in filters.items():
        if not runs.empty:
            runs = runs[runs[key].astype(str).isin(values)]
        if not bad.empty:
            bad = bad[bad[key].astype(str).isin(values) | bad[key].isna()]
    if not runs.empty:
        several_models = runs["model"].nunique() > 1
        runs["row"] = runs.apply(lambda r: f"{r['method']} ({r['model']})" if several_models else r["method"], axis=1)
    rows = sorted(runs["row"].unique()) if not runs.empty else []
    tasks = sorted(runs["task"].unique()) if not runs.empty else []
    sel = Selection(mode="records", runs=runs, rows=rows, tasks=tasks, task_labels={t: t for t in tasks},
                    metrics={t: None for t in tasks},
                    seeds=sorted({int(s) for s in runs["seed"].dropna()}) if not runs.empty else [])
    sel.failed = [_brief(r) for _, r in bad.iterrows()]
    if not runs.empty:  # one cell, several configs (e.g. two lr of one method): averaged, so say so
        n_cfg = runs.groupby(["row", "task", "seed"])["config_hash"].nunique()
        sel.meta["mixed"] = [f"{r} / {t} seed {s}: {n} configs" for (r, t, s), n in n_cfg.items() if n > 1]
    return sel


def select(argv: list[str], results_dir: str | Path, df: Optional[pd.DataFrame] = None) -> Selection:
    """The table's runs for `bench table` / `bench plot` arguments; df: the records already loaded (load_records)."""
    df = load_records(results_dir) if df is None else df
    if any(a.split("=", 1)[0] == "experiment" and a.split("=", 1)[1] not in ("", "null") for a in argv):
        return select_experiment(argv, df)
    return select_records(argv, df)


