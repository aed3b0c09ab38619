"""A study's records -> the protocol's choices and statistics (`bench table experiment=<study>`).

The study experiment (conf/experiment/<name>.yaml, with ``study.lr_grid``) says which runs exist: tasks x
methods x grid entries for the tuning seeds, then the other seeds. Every expected run is identified by its
config hash, composed exactly as `bench run` composes it. Per (task, method) the grid entry with the best
mean dev score over the tuning seeds is chosen (bench.config.study.walk, the same function the sweep uses, with the
grid extended where the choice sits at an edge);
that entry's runs over all seeds are reported on the reported split. Then: mean, std and a 95% t-interval
over seeds; against a reference row, a seed-paired t-test and a two-level paired bootstrap over seeds and
the saved per-example predictions (bench.analysis.stats); a ranking in which differences that are not significant
are ties. Rendering lives in bench.analysis.study_report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from bench.analysis import stats
from bench.analysis.table.frame import SCALE, load_records
from bench.errors import BenchError
from bench.records.predictions import decode_splits

# the record fields a study keeps per run (bench.analysis.table.frame.record_row names them)
RUN_COLUMNS = ["dev_score", "chosen_on", "epoch", "trainable", "trainable_method", "total", "step_time_s",
               "optimizer_state_bytes", "peak_rss_mb", "wall_s", "steps", "git"]


@dataclass
class Study:
    name: str
    model: str
    tasks: list[str]
    methods: list[str]
    seeds: list[int]
    tune_seeds: list[int]
    grid: dict[str, list[float]]
    reference: str
    n_boot: int = stats.N_BOOT  # bootstrap resamples of the paired tests
    max_extensions: int = 0  # study.max_extensions: grid extension steps allowed past each edge
    task_info: dict[str, dict] = field(default_factory=dict)   # task -> main_metric, metric, alias
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)   # matched ok records
    missing: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    expected: dict[str, dict] = field(default_factory=dict)    # hash -> cell
    protocol: dict = field(default_factory=dict)
    cells: pd.DataFrame = field(default_factory=pd.DataFrame)  # one line per (task, method)
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)  # pairwise tests per task

    def lr_of(self, method: str, index: int) -> float:
        from bench.config.study import lr_at

        return lr_at(self.grid[method], index)


def is_study(root) -> bool:
    st = root.get("study")
    return bool(st is not None and st.get("lr_grid"))


# ------------------------------------------------------------------------------------------------
# the task's main metric
# ------------------------------------------------------------------------------------------------
def _main_metric_parts(task_cfg) -> dict:
    from bench.tasks.glue import metric_key

    for m in task_cfg.get("metrics") or []:
        for alias in task_cfg.eval_splits:
            if metric_key(m, alias) == task_cfg.main_metric:
                return {"main_metric": task_cfg.main_metric, "metric": m, "alias": alias}
    return {"main_metric": task_cfg.main_metric, "metric": None, "alias": None}


# ------------------------------------------------------------------------------------------------
# the expected runs
# ------------------------------------------------------------------------------------------------
def expected_runs(argv: list[str]) -> Study:
    from bench.analysis.table.protocol import TABLE_ONLY_KEYS, split_filters
    from bench.config import study as S
    from bench.config.compose import compose
    from bench.config.identity import run_identity
    from bench.config.overrides import sweep_values

    filters, rest = split_filters(argv, ("method", "task", "seed"))
    rest = [o for o in rest if o.split("=", 1)[0].lstrip("+") not in (*TABLE_ONLY_KEYS, "reference", "n_boot")]
    root = compose(rest, hydra=True)
    params = root.hydra.sweeper.get("params") or {}

    def values(key, default):
        return sweep_values(key, params[key]) if key in params else default

    tasks = values("task", [str(root.task.name)])
    methods = values("method", [str(root.method.name)])
    seeds = [int(s) for s in values("seed", [str(root.seed)])]
    # task= / method= / seed= given to `bench table` name the table's tasks, rows and seeds (as they
    # name a sweep's): the protocol also tables tasks the experiment does not sweep
    tasks = filters.get("task", tasks)
    methods = filters.get("method", methods)
    seeds = [int(s) for s in filters["seed"]] if "seed" in filters else seeds
    problems = S.grid_problems(root.study.lr_grid, methods)
    problems += S.extension_problems(root.study.lr_grid, root.study.get("max_extensions") or 0)
    if problems:
        raise BenchError("; ".join(problems))
    grid = {m: [float(x) for x in root.study.lr_grid[m]] for m in methods}
    st = Study(name=str(root.experiment_name), model=str(root.model.name), tasks=tasks, methods=methods,
               seeds=seeds, tune_seeds=[int(s) for s in root.study.tune_seeds], grid=grid,
               reference=str(root.study.get("reference") or "lora"),
               max_extensions=int(root.study.get("max_extensions") or 0))
    st.protocol = {"dev": dict(root.data), "train": {k: root.train[k] for k in (
        "epochs", "max_steps", "batch_size", "selection", "eval_strategy", "precision", "warmup_ratio")},
        "pooling": root.model.get("pooling", "cls"), "extra_overrides": [o for o in rest if not o.startswith("experiment=")]}
    for task in tasks:
        for method in methods:
            cfg = compose([*rest, f"task={task}", f"method={method}"])
            identity = run_identity(cfg)  # the study's settings applied to cfg too
            st.task_info.setdefault(task, _main_metric_parts(cfg.task))
            n = len(grid[method])
            for seed in seeds:
                for i in range(-st.max_extensions, n + st.max_extensions):
                    h = identity.at(seed, i).hash
                    st.expected[h] = {"task": task, "method": method, "seed": seed, "lr_index": i,
                                      "lr": S.lr_at(grid[method], i), "tune": seed in st.tune_seeds,
                                      "extension": not 0 <= i < n}
    return st


def match(st: Study, results: str | Path, df: Optional[pd.DataFrame] = None) -> None:
    """The study's runs among the records (bench.analysis.table.frame.load_records, or df when already loaded): ok
    records of expected hashes (one per hash), the failed ones, and the expected runs still missing."""
    df = load_records(results, missing_ok=False) if df is None else df
    if "config_hash" not in df:  # no run record at all
        df = pd.DataFrame(columns=["config_hash", "status", "path", "error"])
    hits = df[df["config_hash"].isin(list(st.expected))]
    failed = hits[hits["status"] != "ok"]
    st.failed = [{**st.expected[h], "source": s, "error": e}
                 for h, s, e in zip(failed["config_hash"], failed["path"], failed["error"])]
    ok = hits[hits["status"] == "ok"].drop_duplicates("config_hash")  # a copy in two folders counts once
    cells = pd.DataFrame.from_dict(st.expected, orient="index")
    keep = ["config_hash", "path", "main_score", *RUN_COLUMNS, "predictions", "record"]
    runs = pd.DataFrame()
    if len(ok):
        runs = ok[keep].rename(columns={"config_hash": "hash", "path": "source"}).join(cells, on="hash")
        runs = runs.reset_index(drop=True)
        runs["score"] = pd.to_numeric(runs.pop("main_score"), errors="coerce") * SCALE
        # the reported split's per-example predictions, for the paired tests
        preds = [decode_splits(p).get(st.task_info[t]["alias"]) or {} for p, t in zip(runs.pop("predictions"), runs["task"])]
        for col, key in (("pred", "pred"), ("label", "label"), ("label_fp", "label_fingerprint")):
            runs[col] = pd.Series([p.get(key) for p in preds], index=runs.index, dtype=object)
    st.runs = runs
    have = set(runs["hash"]) if not runs.empty else set()
    failed_hashes = set(failed["config_hash"])
    # an extension entry is expected only once the choice on dev needs it (choose adds those)
    st.missing = [{**c, "hash": h, "failed": h in failed_hashes} for h, c in st.expected.items()
                  if h not in have and not c.get("extension")]


# ------------------------------------------------------------------------------------------------
# the protocol: choose on dev, report on the reported split
# ------------------------------------------------------------------------------------------------
def choose(st: Study) -> None:
    """Per cell, the entry chosen on dev by the tuning seeds (bench.config.study.walk, the function the sweep uses, with
    the grid extended where the choice sits at an edge); the extension entries the choice still needs join
    st.missing."""
    from bench.config.study import at_unextendable_edge, walk

    lines = []
    runs = st.runs
    for task in st.tasks:
        for method in st.methods:
            sub = runs[(runs["task"] == task) & (runs["method"] == method)] if not runs.empty else runs
            tune = sub[sub["tune"]] if len(sub) else sub
            n = len(st.grid[method])
            dev: dict[int, list[float]] = {}
            for _, r in tune.iterrows():
                if r["dev_score"] is not None and not pd.isna(r["dev_score"]):
                    dev.setdefault(int(r["lr_index"]), []).append(float(r["dev_score"]))  # raw, as the sweep chose
            scores = {i: sum(v) / len(v) for i, v in dev.items() if len(v) == len(st.tune_seeds)}
            idx, entries, needed = walk(scores, n, st.max_extensions)
            complete = idx is not None
            # the entries the choice is made over (an extension run that the choice does not need is left out)
            dev_means = {i: sum(v) / len(v) * SCALE for i, v in sorted(dev.items()) if i in entries}
            line: dict[str, Any] = {"task": task, "method": method, "tuning_complete": complete,
                                    "dev_means": {st.lr_of(method, i): m for i, m in dev_means.items()},
                                    "entries": entries, "extended": any(not 0 <= i < n for i in entries)}
            if needed is not None:
                have = set(sub["hash"]) if len(sub) else set()
                st.missing += [{**c, "hash": h, "failed": False} for h, c in st.expected.items()
                               if (c["task"], c["method"], c["lr_index"]) == (task, method, needed) and c["tune"]
                               and h not in have]
            if complete:
                rep = sub[sub["lr_index"] == idx]
                mean, std, lo, hi = stats.t_interval(rep["score"].tolist())
                line.update(lr_index=idx, lr=st.lr_of(method, idx), dev_mean=dev_means[idx],
                            at_edge=at_unextendable_edge(idx, entries, n, st.max_extensions),
                            n=len(rep), seeds=sorted(int(s) for s in rep["seed"]), mean=mean, std=std,
                            ci_low=lo, ci_high=hi,
                            trainable=_one(rep["trainable"]), trainable_method=_one(rep["trainable_method"]),
                            total=_one(rep["total"]),
                            step_time_ms=float(pd.to_numeric(sub["step_time_s"]).median() * 1000) if len(sub) else None,
                            peak_rss_mb=float(pd.to_numeric(sub["peak_rss_mb"]).max()) if len(sub) else None)
            lines.append(line)
    st.cells = pd.DataFrame(lines)


def _one(series):
    vals = sorted({int(v) for v in series.dropna()})
    return vals[0] if len(vals) == 1 else (vals if vals else None)


def reported_runs(st: Study, task: str, method: str) -> pd.DataFrame:
    c = st.cells[(st.cells["task"] == task) & (st.cells["method"] == method)]
    if c.empty or not bool(c.iloc[0]["tuning_complete"]):
        return pd.DataFrame()
    idx = int(c.iloc[0]["lr_index"])
    r = st.runs
    return r[(r["task"] == task) & (r["method"] == method) & (r["lr_index"] == idx)].sort_values("seed")


def compare(st: Study, a: str, b: str, task: str, n_boot: int = stats.N_BOOT) -> Optional[dict]:
    """Row a against row b on one task: seed-paired t and the two-level paired bootstrap (x100)."""
    ra, rb = reported_runs(st, task, a), reported_runs(st, task, b)
    if ra.empty or rb.empty:
        return None
    common = sorted(set(ra["seed"]) & set(rb["seed"]))
    if not common:
        return None
    ra, rb = ra.set_index("seed").loc[common], rb.set_index("seed").loc[common]
    out = {"task": task, "a": a, "b": b, "seeds": common,
           "diff_seed_mean": float((ra["score"] - rb["score"]).mean()),
           "p_seed": stats.seed_paired_t(ra["score"].tolist(), rb["score"].tolist())}
    metric = st.task_info[task]["metric"]
    fps = set(ra["label_fp"].dropna()) | set(rb["label_fp"].dropna())
    have = ra["pred"].notna().all() and rb["pred"].notna().all() if "pred" in ra else False
    if metric and have and len(fps) == 1:
        boot = stats.paired_bootstrap(metric, list(ra["pred"]), list(rb["pred"]), ra["label"].iloc[0], n_boot=n_boot)
        out.update(diff=boot["diff"] * SCALE, low=boot["low"] * SCALE, high=boot["high"] * SCALE, p=boot["p"],
                   n_examples=boot["n_examples"], n_boot=n_boot, test="two-level paired bootstrap")
    else:
        why = "runs scored different examples" if len(fps) > 1 else "no per-example predictions saved"
        out.update(diff=out["diff_seed_mean"], low=None, high=None, p=out["p_seed"], test=f"seed-paired t ({why})")
    out["significant"] = bool(out["p"] is not None and not pd.isna(out["p"]) and out["p"] < stats.ALPHA)
    return out


def pairwise(st: Study, n_boot: int = stats.N_BOOT) -> None:
    lines = []
    for task in st.tasks:
        for i, a in enumerate(st.methods):
            for b in st.methods[i + 1:]:
                c = compare(st, a, b, task, n_boot)
                if c:
                    lines.append(c)
    st.pairs = pd.DataFrame(lines)


def vs(st: Study, a: str, b: str, task: str) -> Optional[dict]:
    """The stored test of a against b (either order; the difference signed as a - b)."""
    if st.pairs.empty:
        return None
    p = st.pairs[(st.pairs["task"] == task) & (((st.pairs["a"] == a) & (st.pairs["b"] == b)) |
                                               ((st.pairs["a"] == b) & (st.pairs["b"] == a)))]
    if p.empty:
        return None
    d = p.iloc[0].to_dict()
    if d["a"] != a:
        flip = {"diff": -d["diff"], "diff_seed_mean": -d["diff_seed_mean"], "a": a, "b": b}
        if d.get("low") is not None and not pd.isna(d.get("low")):
            flip.update(low=-d["high"], high=-d["low"])
        d.update(flip)
    return d


def ranks(st: Study) -> dict[tuple[str, str], int]:
    """Per task: 1 + the number of rows significantly better than this one (non-significant = tie)."""
    out = {}
    for task in st.tasks:
        present = [m for m in st.methods if not reported_runs(st, task, m).empty]
        for m in present:
            better = 0
            for o in present:
                if o == m:
                    continue
                t = vs(st, o, m, task)
                if t and t["significant"] and t["diff"] > 0:
                    better += 1
            out[(task, m)] = 1 + better
    return out


def build(argv: list[str], results: str | Path, n_boot: int = stats.N_BOOT, df: Optional[pd.DataFrame] = None) -> Study:
    """The study table's content; df: the records when already loaded (bench.analysis.table.frame.load_records)."""
    st = expected_runs(argv)
    for a in argv:
        if a.startswith("reference="):
            st.reference = a.split("=", 1)[1]
    if st.reference not in st.methods:
        raise BenchError(f"reference={st.reference!r} is not a row of this table (rows: {', '.join(st.methods)}); "
                         f"choose one of them, e.g. reference={st.methods[0]}")
    st.n_boot = n_boot
    match(st, results, df)
    choose(st)
    pairwise(st, n_boot)
    return st
