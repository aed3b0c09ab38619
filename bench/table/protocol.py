"""Records -> tables: `python -m bench table [experiment=<name>] [results_dir=...] [key=value ...]`.

Two modes.

* ``experiment=<name>``: the paper's layout. The experiment config (conf/experiment/<name>.yaml) pins the
  protocol and its sweep grid (``hydra.sweeper.params``: tasks, seeds); results/paper/<paper_table>.yaml
  gives the rows (each a label plus the overrides that reproduce it), the column order, the metric the
  paper reports per column, and the paper's numbers with their source. Every expected run (row x task x
  seed) is composed exactly as `bench run` would compose it and identified by its config hash - the same
  hash that makes sweeps resume - so a record counts only when it ran the pinned protocol. Missing, failed
  and off-protocol runs (the experiment's records whose config differs, with the differing keys) are
  listed, never silently dropped, together with the commands that fill the gaps. Any further key=value
  given to `bench table` is part of the protocol being matched (e.g. the shrunken settings of a smoke run).
* no experiment: every ok record, rows = methods, columns = tasks (records of other methods / tasks are
  kept out with method=..., task=..., model=... filters).

Records store metrics as fractions; tables print them x100, mean +- sample std over seeds.
Output: Markdown, LaTeX and CSV under ``+tables_dir=...`` (default: <results_dir>/../tables).
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

from bench import records
from bench.errors import BenchError

SCALE = 100.0  # the papers print scores x 100
REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_DIR = REPO_ROOT / "results" / "paper"
FILTER_KEYS = ("method", "task", "model", "seed")
TABLE_ONLY_KEYS = ("tables_dir", "figures_dir")  # keys of `bench table` / `bench plot`, not of a run


# ------------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------------
def load_records(results_dir: str | Path) -> pd.DataFrame:
    """Every record under results_dir (recursively) as one row; unreadable files are listed, not dropped."""
    rows = []
    for path in sorted(Path(results_dir).rglob("*.json")):
        if not records.is_record_file(path, results_dir):
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            rows.append({"path": str(path), "status": "unreadable", "error": str(e)})
            continue
        if not isinstance(rec, dict) or "config_hash" not in rec:
            continue
        params = rec.get("params") or {}
        train = rec.get("train") or {}
        config = rec.get("config") or {}
        rows.append(
            {
                "path": str(path),
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
                "selection": (rec.get("selection") or {}).get("protocol"),
                "trainable": params.get("trainable"),
                "trainable_method": params.get("trainable_method"),
                "trainable_head": params.get("trainable_head"),
                "total": params.get("total"),
                "steps": train.get("steps"),
                "final_loss": train.get("final_loss"),
                "step_time_s": train.get("step_time_median_s"),
                "samples_per_s": train.get("samples_per_s"),
                "peak_rss_mb": (rec.get("memory") or {}).get("peak_rss_mb"),
                "wall_s": rec.get("wall_s"),
                "finished_at": rec.get("finished_at"),
                "error": rec.get("error"),
                **{f"metric.{k}": v for k, v in (rec.get("metrics") or {}).items()},
                # kept for matching and plots; dropped from runs.csv
                "config": config,
                "loss_curve": train.get("loss_curve"),
            }
        )
    return pd.DataFrame(rows)


def flat_csv(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in ("config", "loss_curve") if c in df.columns])


# ------------------------------------------------------------------------------------------------
# composing configs (the same composition `bench run` does)
# ------------------------------------------------------------------------------------------------
class Composer:
    """Compose many configs under one Hydra initialisation (fast enough for rows x tasks)."""

    def __enter__(self):
        from hydra import initialize_config_dir

        from bench.cli import CONF_DIR

        self._ctx = initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    def __call__(self, overrides: list[str], hydra: bool = False):
        from hydra import compose
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)
        except (HydraException, OmegaConfBaseException) as e:
            raise BenchError(f"cannot compose {' '.join(overrides)}: {e}") from e


def run_config(cfg) -> tuple[dict, str]:
    """(resolved config dict, config hash) exactly as bench.runner.run computes them."""
    from omegaconf import OmegaConf

    from bench import records

    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    return config, records.config_hash(config)


def sweep_values(key: str, value: Any) -> list[str]:
    """The values of a Hydra sweep string such as '1,2,3' or 'range(1,4)'."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(f"{key}={value}")
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [str(override.get_value_element_as_str())]


# ------------------------------------------------------------------------------------------------
# the paper files
# ------------------------------------------------------------------------------------------------
def load_paper(name: str) -> dict:
    """results/paper/<name>.yaml: source, columns, rows with overrides and reported numbers."""
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
        for t in (row.get("reported") or {}):
            if t not in spec.get("tasks", {}) and t != "avg":
                problems.append(f"rows[{i}] ({row.get('label')}): reported task {t!r} is not a column")
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


def _explicit(argv: list[str], keys: tuple[str, ...] = FILTER_KEYS) -> tuple[dict[str, list[str]], list[str]]:
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


def _score(rec: pd.Series, metric: Optional[str]) -> float:
    if metric:
        v = rec.get(f"metric.{metric}")
        return float(v) * SCALE if v is not None and not pd.isna(v) else float("nan")
    v = rec.get("main_score")
    return float(v) * SCALE if v is not None and not pd.isna(v) else float("nan")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def config_diff(actual: dict, expected: dict, limit: int = 6) -> str:
    """The semantic keys where a record's config differs from the protocol's: 'key=actual (protocol: x)'."""
    from bench import records

    a, e = _flatten(records.semantic_config(actual)), _flatten(records.semantic_config(expected))
    diffs = [f"{k}={a.get(k)!r} (protocol: {e.get(k)!r})" for k in sorted(set(a) | set(e)) if a.get(k) != e.get(k)]
    more = f" ... and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more if diffs else "same settings, different config hash"


def select_experiment(argv: list[str], df: pd.DataFrame) -> Selection:
    filters, rest = _explicit(argv, ("method", "task", "seed"))  # model= is part of the protocol here
    rest = [o for o in rest if o.split("=", 1)[0].lstrip("+") not in TABLE_ONLY_KEYS]  # not part of any run
    experiment = next(a.split("=", 1)[1] for a in rest if a.split("=", 1)[0] == "experiment")
    with Composer() as compose:
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
                for r in paper["rows"]] if variant else list(paper["rows"])
        if "method" in filters:  # filter by row label or by method name
            rows = [r for r in rows if r["label"] in filters["method"]
                    or any(o in (f"method={m}" for m in filters["method"]) for o in r["overrides"])]
        expected: dict[str, dict] = {}   # hash -> cell
        by_cell: dict[tuple, dict] = {}
        for row in rows:
            for task in tasks:
                overrides = [*rest, *row["overrides"], f"task={task}"]
                cfg = compose(overrides)
                for seed in seeds:
                    cfg.seed = seed
                    config, chash = run_config(cfg)
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


def merge_overrides(overrides: list[str]) -> list[str]:
    """Later overrides of the same key replace earlier ones (in place): one clean command line."""
    out: dict[str, str] = {}
    for o in overrides:
        out[o.split("=", 1)[0].lstrip("+~")] = o
    return list(out.values())


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
    filters, _ = _explicit(argv)
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


def select(argv: list[str], results_dir: str | Path) -> Selection:
    df = load_records(results_dir)
    if any(a.split("=", 1)[0] == "experiment" and a.split("=", 1)[1] not in ("", "null") for a in argv):
        return select_experiment(argv, df)
    return select_records(argv, df)


# ------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------
def _fmt(mean: float, std: float, n: int, expected: Optional[int] = None) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    s = f"{mean:.2f}" if n < 2 or pd.isna(std) else f"{mean:.2f} ± {std:.2f}"
    if expected and n < expected:
        s += f" (n={n})"
    return s


def _signed(x: float) -> str:
    return "-" if x is None or pd.isna(x) else f"{x:+.2f}"


def _count_range(values: Iterable) -> str:
    vals = sorted({int(v) for v in values if v is not None and not pd.isna(v)})
    if not vals:
        return "?"
    return f"{vals[0]:,}" if len(vals) == 1 else f"{vals[0]:,}–{vals[-1]:,}"


def cell_stats(sel: Selection) -> pd.DataFrame:
    """Long form: one line per (row, task) with n, mean, std (x100), the paper's number and the delta."""
    reported = {r["label"]: (r.get("reported") or {}) for r in (sel.paper or {}).get("rows", [])}
    lines = []
    runs = sel.runs
    for label in sel.rows:
        for task in [*sel.tasks, "avg"]:
            if task == "avg":
                continue
            sub = runs[(runs["row"] == label) & (runs["task"] == task)] if not runs.empty else runs
            scores = [_score(r, sel.metrics.get(task)) for _, r in sub.iterrows()] if len(sub) else []
            scores = [s for s in scores if not math.isnan(s)]
            mean = float(pd.Series(scores).mean()) if scores else float("nan")
            std = float(pd.Series(scores).std()) if len(scores) > 1 else float("nan")
            paper = reported.get(label, {}).get(task)
            lines.append({
                "row": label, "task": task, "metric": sel.metrics.get(task) or "main_score",
                "n": len(scores), "seeds": ",".join(str(int(s)) for s in sorted(sub["seed"])) if len(sub) else "",
                "mean": mean, "std": std, "paper": paper,
                "delta": mean - paper if paper is not None and scores else float("nan"),
                "trainable_method": _count_range(sub["trainable_method"]) if len(sub) else "",
                "trainable_head": _count_range(sub["trainable_head"]) if len(sub) else "",
            })
        # the average over the table's tasks: only when every task has a score
        per_task = [l for l in lines if l["row"] == label and l["task"] in sel.tasks]
        complete = bool(per_task) and all(l["n"] > 0 for l in per_task)
        avg = float(sum(l["mean"] for l in per_task) / len(per_task)) if complete else float("nan")
        paper_avg = reported.get(label, {}).get("avg")
        # the paper's average covers the paper's columns: compare only when this table has exactly those
        comparable = paper_avg is not None and complete and set(sel.tasks) == set((sel.paper or {}).get("tasks", {}))
        lines.append({"row": label, "task": "avg", "metric": "mean over tasks",
                      "n": min((l["n"] for l in per_task), default=0), "seeds": "", "mean": avg, "std": float("nan"),
                      "paper": paper_avg, "delta": avg - paper_avg if comparable else float("nan"),
                      "trainable_method": "", "trainable_head": ""})
    return pd.DataFrame(lines)


def display_table(sel: Selection, stats: pd.DataFrame) -> pd.DataFrame:
    """Rows (ours, then the paper's and the delta where the paper reports the row), columns tasks + Avg + params."""
    cols = [sel.task_labels.get(t, t) for t in sel.tasks] + ["Avg", "Trainable (method + head)", "Seeds"]
    out = []
    nexp = len(sel.seeds) if sel.mode == "experiment" else None
    for label in sel.rows:
        st = stats[stats["row"] == label].set_index("task")
        runs = sel.runs[sel.runs["row"] == label] if not sel.runs.empty else sel.runs
        ours = {sel.task_labels.get(t, t): _fmt(st.loc[t, "mean"], st.loc[t, "std"], int(st.loc[t, "n"]), nexp)
                for t in sel.tasks}
        ours["Avg"] = "-" if pd.isna(st.loc["avg", "mean"]) else f"{st.loc['avg', 'mean']:.2f}"
        ours["Trainable (method + head)"] = (
            f"{_count_range(runs['trainable_method'])} + {_count_range(runs['trainable_head'])}" if len(runs) else "-")
        ours["Seeds"] = ",".join(str(int(s)) for s in sorted(runs["seed"].unique())) if len(runs) else "-"
        out.append({"Method": label, **ours})
        spec = sel.row_specs.get(label, {})
        reported = spec.get("reported") or {}
        if reported:
            paper_line = {sel.task_labels.get(t, t): (f"{reported[t]:.2f}" if reported.get(t) is not None else "-")
                          for t in sel.tasks}
            paper_line["Avg"] = f"{reported['avg']:.2f}" if reported.get("avg") is not None else "-"
            paper_line["Trainable (method + head)"] = str(spec.get("params") or "-")
            paper_line["Seeds"] = str(spec.get("paper_seeds") or (sel.paper or {}).get("paper_seeds") or "-")
            if sel.meta.get("variant"):  # another scale: the paper's numbers for orientation, no delta
                out.append({"Method": "↳ paper (full scale)", **paper_line})
                continue
            out.append({"Method": "↳ paper", **paper_line})
            delta = {sel.task_labels.get(t, t): _signed(st.loc[t, "delta"]) for t in sel.tasks}
            delta["Avg"] = _signed(st.loc["avg", "delta"])
            delta["Trainable (method + head)"] = ""
            delta["Seeds"] = ""
            out.append({"Method": "↳ Δ (ours − paper)", **delta})
    return pd.DataFrame(out, columns=["Method", *cols])


def to_markdown(table: pd.DataFrame) -> str:
    from tabulate import tabulate

    # disable_numparse: "51.00" stays "51.00" (tabulate would print 51)
    return tabulate(table.values.tolist(), headers=list(table.columns), tablefmt="github", disable_numparse=True)


def _tex(s: Any) -> str:
    s = str(s)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"),
                 ("{", r"\{"), ("}", r"\}")):
        s = s.replace(a, b)
    return (s.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("−", "$-$").replace("–", "--")
            .replace("↳", r"\quad"))


def to_latex(table: pd.DataFrame, caption: str = "") -> str:
    """A booktabs tabular (no pandas Styler / jinja needed)."""
    ncol = len(table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "c" * (ncol - 1) + "}",
             r"\toprule", " & ".join(_tex(c) for c in table.columns) + r" \\", r"\midrule"]
    for row in table.values.tolist():
        lines.append(" & ".join(_tex(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + _tex(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines)


def header_lines(sel: Selection) -> list[str]:
    if sel.mode != "experiment":
        return [f"All ok records: rows = methods, columns = tasks; scores x100, mean ± std over seeds."]
    from bench.records import NON_SEMANTIC_KEYS

    src = sel.paper["source"]
    meta = sel.meta
    matched = [o for o in meta["extra_overrides"] if o.split("=", 1)[0].lstrip("+~") not in NON_SEMANTIC_KEYS]
    out = [
        f"Experiment {meta['experiment']} ({meta['model']}"
        + (f", {meta['variant']}-scale variant: the paper's numbers are for orientation only" if meta.get("variant") else "")
        + f"); protocol: eval_strategy={meta['eval_strategy']}, "
        f"selection={meta['selection']}; seeds {','.join(map(str, sel.seeds))}."
        + (f" Extra settings matched: {' '.join(matched)}." if matched else ""),
        f"Paper: {src.get('title')} ({src.get('authors')}, arXiv {src.get('arxiv')}), {src.get('table')}"
        + (f"; numbers transcribed from {str(src['transcribed_from']).rstrip('.')}" if src.get("transcribed_from") else "")
        + ".",
        "Scores x100, mean ± sample std over seeds ((n=k): fewer seeds than the protocol's); Δ = ours − paper.",
    ]
    if sel.paper.get("note"):
        out.append(f"Note: {sel.paper['note'].strip()}")
    return out


def gap_lines(sel: Selection) -> list[str]:
    out = []
    if sel.meta.get("mixed"):
        out.append(f"Mixed: {len(sel.meta['mixed'])} cell(s) average records of different configs (use "
                   "experiment=<name> for a protocol-exact table, or filter):")
        out += [f"  - {m}" for m in sel.meta["mixed"]]
    if sel.missing:
        out.append(f"Missing: {len(sel.missing)} of {len(sel.rows) * len(sel.tasks) * len(sel.seeds)} expected runs "
                   "have no ok record with the protocol's config hash:")
        by_row: dict[str, list[str]] = {}
        for m in sel.missing:
            by_row.setdefault(m["row"], []).append(f"{m['task']}/seed{m['seed']}" + (" (failed)" if m["failed"] else ""))
        out += [f"  - {row}: {', '.join(items)}" for row, items in by_row.items()]
        if sel.meta.get("commands"):
            out.append("To run them:")
            out += [f"  {c}" for c in sel.meta["commands"]]
    if sel.failed:
        out.append(f"Failed: {len(sel.failed)} run(s) (records kept; rerun the sweep to retry them):")
        out += [f"  - {f.get('method')} / {f.get('task')} seed {f.get('seed')}: {f.get('error')} ({f.get('path')})"
                for f in sel.failed]
    if sel.off_protocol:
        out.append(f"Off-protocol: {len(sel.off_protocol)} record(s) of this experiment ran other settings "
                   "(not in the table):")
        out += [f"  - {o['method']} / {o['task']} seed {o['seed']}: {o['why']} ({o['path']})" for o in sel.off_protocol]
    return out


STUDY_ONLY_KEYS = ("reference", "n_boot")  # `bench table` options of a study table, not config keys


def main(argv: list[str]) -> None:
    from bench.cli import compose

    filters, rest = _explicit(argv)
    study_opts = [a for a in rest if a.split("=", 1)[0] in STUDY_ONLY_KEYS]
    rest = [a for a in rest if a not in study_opts]
    cfg = compose(rest)
    from bench import study_table

    if study_table.is_study(cfg):
        return _study_main(argv, cfg)
    if study_opts:
        print(f"error: {', '.join(study_opts)} apply to study tables only (an experiment with study.lr_grid)",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        sel = select(argv, cfg.results_dir)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    out_dir = Path(cfg.get("tables_dir") or Path(cfg.results_dir).parent / "tables")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = sel.meta.get("experiment") or "summary"
    df = load_records(cfg.results_dir)
    if not df.empty:
        flat_csv(df).to_csv(out_dir / "runs.csv", index=False)
    if not sel.rows or (sel.runs.empty and sel.mode != "experiment"):
        print(f"no ok records under {cfg.results_dir} for this table; run `python -m bench run ...` first")
        for line in gap_lines(sel):
            print(line)
        return
    stats = cell_stats(sel)
    table = display_table(sel, stats)
    head = header_lines(sel)
    gaps = gap_lines(sel)
    md = to_markdown(table)
    (out_dir / f"{stem}.md").write_text("\n\n".join(["\n".join(head), md, "\n".join(gaps)]).rstrip() + "\n")
    (out_dir / f"{stem}.tex").write_text(to_latex(table, caption=" ".join(head[:2])) + "\n")
    stats.to_csv(out_dir / f"{stem}.csv", index=False)
    print("\n".join(head))
    print()
    print(md)
    if gaps:
        print()
        print("\n".join(gaps))
    print(f"\nwrote {out_dir}/{stem}.md, {stem}.tex, {stem}.csv, runs.csv ({len(df)} records read)")


def _study_main(argv: list[str], cfg) -> None:
    import shlex as _shlex

    from bench import study_report, study_table

    n_boot = int(next((a.split("=", 1)[1] for a in argv if a.startswith("n_boot=")), 2000))
    try:
        st = study_table.build(argv, cfg.results_dir, n_boot=n_boot)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    out_dir = Path(cfg.get("tables_dir") or REPO_ROOT / "results" / "studies" / st.name)
    command = "python -m bench table " + " ".join(_shlex.quote(a) for a in argv)
    if st.runs.empty:
        print(f"no records of study {st.name!r} under {cfg.results_dir}; run `python -m bench run -m experiment={st.name}`")
        return
    paths = study_report.write(st, cfg.results_dir, out_dir, command)
    print((out_dir / "summary.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths))


# kept for callers of the first version (rows = methods, columns = tasks)
def summary_table(df: pd.DataFrame, methods: Iterable[str] | None = None, tasks: Iterable[str] | None = None):
    sel = select_records([], df)
    if methods:
        sel.rows = [m for m in methods if m in sel.rows]
    if tasks:
        sel.tasks = [t for t in tasks if t in sel.tasks]
    stats = cell_stats(sel)
    numeric = stats.pivot(index="row", columns="task", values="mean") if not stats.empty else pd.DataFrame()
    return display_table(sel, stats).set_index("Method"), numeric
