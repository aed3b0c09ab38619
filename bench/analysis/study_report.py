"""Render a Study (bench.analysis.study_table): its table model (study_table, bench.analysis.table.model), the Markdown
+ CSV summary, claims, plots (bench.analysis.table.figure), compressed records.

Written to ``results/studies/<name>/`` (``+tables_dir=`` to change):
summary.md, summary.csv (one line per task x method), lr_choice.csv (every grid entry's dev mean),
pairs.csv (every pairwise test), score_vs_params.png, score_vs_step_time.png, records.jsonl.gz.
"""

from __future__ import annotations

import gzip
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Optional

import pandas as pd

from bench.analysis.study_table import Study, ranks, reported_runs, vs
from bench.analysis.table.model import Cell, Column, Row, Table, to_markdown
from bench.analysis.table.protocol import REPO_ROOT
from bench.records.provenance import hardware_text

CLAIMS = REPO_ROOT / "results" / "paper" / "claims" / "study_claims.yaml"
TASK_LABELS = {"sst2": "SST-2", "cola": "CoLA", "rte": "RTE", "qnli": "QNLI", "mrpc": "MRPC", "stsb": "STS-B",
               "qqp": "QQP", "mnli": "MNLI"}
METRIC_LABELS = {"accuracy": "acc", "matthews": "MCC", "pearson": "Pearson", "spearman": "Spearman", "f1": "F1"}


def _n(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _lr(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")


def _params(x) -> str:
    if _n(x):
        return "?"
    if isinstance(x, list):
        return f"{x[0]:,}–{x[-1]:,}"
    return f"{int(x):,}"


def _col(st: Study, task: str) -> str:
    metric = st.task_info[task]["metric"]
    return f"{TASK_LABELS.get(task, task)} {METRIC_LABELS.get(metric, metric)}"


def majority(st: Study, task: str) -> Optional[float]:
    r = st.runs[st.runs["task"] == task] if not st.runs.empty else st.runs
    r = r[r["label"].notna()] if len(r) else r
    if r.empty:
        return None
    import numpy as np

    from bench.tasks import metrics as M

    y = r.iloc[0]["label"]
    vals, counts = np.unique(y, return_counts=True)
    pred = np.full_like(y, vals[counts.argmax()])
    return M.compute([st.task_info[task]["metric"]], pred, y)[st.task_info[task]["metric"]] * 100


def _sig(st: Study, task: str, method: str) -> Optional[str]:
    """The cell's mark against the reference row: up / down (significant), tie, None (the reference or no test)."""
    if method == st.reference:
        return None
    t = vs(st, method, st.reference, task)
    if not t:
        return None
    return ("up" if t["diff"] > 0 else "down") if t["significant"] else "tie"


def cell_text(st: Study, task: str, method: str, rank_of: dict) -> str:
    c = st.cells[(st.cells["task"] == task) & (st.cells["method"] == method)]
    if c.empty or not bool(c.iloc[0]["tuning_complete"]):
        return "tuning incomplete"
    c = c.iloc[0]
    s = f"{c['mean']:.2f}"
    if not _n(c["std"]):
        s += f" ± {c['std']:.2f} [{c['ci_low']:.1f}, {c['ci_high']:.1f}]"
    if int(c["n"]) < len(st.seeds):
        s += f" (n={int(c['n'])})"
    sig = _sig(st, task, method)
    s += " ref" if method == st.reference else {"up": " ▲", "down": " ▼", "tie": " ≈", None: " ?"}[sig]
    s += f" · lr {_lr(c['lr'])}"
    if st.max_extensions:  # grid extension: say when the grid moved, and when the choice still sits at its limit
        s += " (ext)" if c.get("extended") else ""
        s += " (edge)" if c.get("at_edge") else ""
    s += f" · #{rank_of.get((task, method), '-')}"
    return s


def _first(v) -> Optional[float]:
    """A count or cost of a cell (the first of several, where its runs differ); None when unknown."""
    v = v[0] if isinstance(v, list) else v
    return None if _n(v) else float(v)


def study_table(st: Study) -> Table:
    """The study's main table as the table model (bench.analysis.table.model): per method its trainable count, one cell
    per task (mean, std, interval, seeds, the mark against the reference, in the text also the lr and the rank), the
    average, the mean rank and the costs; then the majority-class line. summary.md, the figures and the HTML report
    read it."""
    rank_of = ranks(st)
    columns = [Column("trainable", "trainable"), *(Column(t, _col(st, t), task=True) for t in st.tasks),
               *(Column(k, k) for k in ("avg", "mean rank", "step ms", "optimizer state MB", "process peak RSS MB",
                                         "hardware"))]
    rows = []
    for m in st.methods:
        c = st.cells[st.cells["method"] == m]
        first = c[c["tuning_complete"]].iloc[0] if (not c.empty and c["tuning_complete"].any()) else None
        tr = first["trainable"] if first is not None else None
        cells = {"trainable": Cell(_params(tr) if first is not None else "?",
                                   value=None if _n(tr) else float(tr[0] if isinstance(tr, list) else tr))}
        means = []
        for t in st.tasks:
            line = c[c["task"] == t]
            csv = _csv_line(st, line.iloc[0], rank_of.get((t, m))) if not line.empty else {}
            ok = not line.empty and bool(line.iloc[0]["tuning_complete"])
            if not ok:
                cells[t] = Cell(cell_text(st, t, m, rank_of), csv=csv)
                continue
            x = line.iloc[0]
            means.append(x["mean"])
            cells[t] = Cell(cell_text(st, t, m, rank_of), value=float(x["mean"]),
                            std=None if _n(x["std"]) else float(x["std"]), n=int(x["n"]),
                            low=None if _n(x["ci_low"]) else float(x["ci_low"]),
                            high=None if _n(x["ci_high"]) else float(x["ci_high"]), sig=_sig(st, t, m),
                            trainable=_first(x["trainable"]), step_ms=_first(x["step_time_ms"]),
                            scores=list(reported_runs(st, t, m)["score"]), csv=csv)
        avg = sum(means) / len(means) if len(means) == len(st.tasks) and means else None
        cells["avg"] = Cell("-" if avg is None else f"{avg:.2f}", value=avg)
        rks = [rank_of[(t, m)] for t in st.tasks if (t, m) in rank_of]
        mean_rank = sum(rks) / len(rks) if len(rks) == len(st.tasks) and rks else None
        cells["mean rank"] = Cell("-" if mean_rank is None else f"{mean_rank:.2f}", value=mean_rank)
        runs = st.runs[st.runs["method"] == m] if not st.runs.empty else st.runs  # every run of the method
        step = pd.to_numeric(runs["step_time_s"]).dropna() if len(runs) else []
        mem = pd.to_numeric(runs["peak_rss_mb"]).dropna() if len(runs) else []
        opt = pd.to_numeric(runs["optimizer_state_bytes"]).dropna() if len(runs) else []
        step_ms = float(step.median()) * 1000 if len(step) else None
        opt_mb = float(opt.median()) / 2**20 if len(opt) else None
        rss = float(mem.max()) if len(mem) else None
        cells["step ms"] = Cell("-" if step_ms is None else f"{step_ms:.0f}", value=step_ms)
        cells["optimizer state MB"] = Cell("-" if opt_mb is None else f"{opt_mb:.1f}", value=opt_mb)
        cells["process peak RSS MB"] = Cell("-" if rss is None else f"{rss:.0f}", value=rss)
        # what step ms / RSS were measured on
        cells["hardware"] = Cell(hardware_text(runs["record"]) if len(runs) else "-")
        rows.append(Row(m, cells, method=m, model=st.model, reference=m == st.reference))
    base = {"trainable": Cell("0", value=0.0)}
    for t in st.tasks:
        v = majority(st, t)
        base[t] = Cell("-" if v is None else f"{v:.2f}", value=v)
    rows.append(Row("majority class", base, kind="baseline"))
    return Table(columns, rows, first="method", csv_columns=list(SUMMARY_CSV))


def main_table(st: Study) -> pd.DataFrame:
    """The display frame of study_table (texts)."""
    return study_table(st).frame()


def lr_table(st: Study) -> pd.DataFrame:
    """Every grid entry's mean dev score per cell; with grid extension, the columns lr-1 ... / lrN ... are the
    extension entries (blank where the choice did not need them)."""
    lines = []
    for _, c in st.cells.iterrows():
        line = {"task": c["task"], "method": c["method"]}
        n = len(st.grid[c["method"]])
        for i in range(-st.max_extensions, n + st.max_extensions):
            lr = st.lr_of(c["method"], i)
            v = (c["dev_means"] or {}).get(lr)
            mark = " *" if c.get("tuning_complete") and c.get("lr_index") == i else ""
            if not 0 <= i < n and v is None:
                line[f"lr{i}"] = ""
                continue
            line[f"lr{i}"] = f"{_lr(lr)}: {v:.2f}{mark}" if v is not None else f"{_lr(lr)}: -"
        lines.append(line)
    return pd.DataFrame(lines)


def claims(st: Study, path: Path = CLAIMS) -> list[dict]:
    import yaml

    if not path.is_file():
        return []
    out = []
    for cl in yaml.safe_load(path.read_text()).get("claims", []):
        if cl["a"] not in st.methods or cl["b"] not in st.methods:
            continue
        per_task = {}
        for t in st.tasks:
            v = vs(st, cl["a"], cl["b"], t)
            maj = majority(st, t)
            means = [_cell_mean(st, t, m) for m in (cl["a"], cl["b"])]
            if maj is not None and any(x is None or x <= maj for x in means):
                # two rows at the trivial baseline are "close" only in a meaningless way
                per_task[t] = ("cannot tell", "a row is not above the majority-class baseline "
                                              f"{maj:.2f}: " + ", ".join("-" if x is None else f"{x:.2f}" for x in means))
                continue
            if not v or _n(v.get("low")):
                per_task[t] = ("cannot tell", "no paired predictions")
                continue
            lo, hi, d = v["low"], v["high"], v["diff"]
            if cl["relation"] == "close":
                mg = float(cl.get("margin", 1.0))
                verdict = "agrees" if lo > -mg else ("disagrees" if hi < -mg else "cannot tell")
            else:
                verdict = "agrees" if lo > 0 else ("disagrees" if hi < 0 else "cannot tell")
            per_task[t] = (verdict, f"{_s(d)} [{_s(lo)}, {_s(hi)}]")
        ratio = None
        if cl.get("params_ratio"):
            num, den = (_cell_first(st, m, "trainable") for m in cl["params_ratio"])
            ratio = num / den if num and den else None
        out.append({**cl, "per_task": per_task, "ratio": ratio})
    return out


def _cell_mean(st: Study, task: str, method: str):
    c = st.cells[(st.cells["task"] == task) & (st.cells["method"] == method)]
    return None if c.empty or not bool(c.iloc[0]["tuning_complete"]) else float(c.iloc[0]["mean"])


def _s(x: float) -> str:
    """Signed, two decimals, no negative zero."""
    return f"{round(x, 2) + 0.0:+.2f}"


def _cell_first(st: Study, method: str, key: str):
    c = st.cells[(st.cells["method"] == method) & (st.cells["tuning_complete"])] if not st.cells.empty else st.cells
    if c.empty or _n(c.iloc[0].get(key)):
        return None
    v = c.iloc[0][key]
    return float(v[0] if isinstance(v, list) else v)


def markdown(st: Study, command: str, table: Optional[Table] = None) -> str:
    ran = set(st.runs["hash"]) if len(st.runs) else set()
    needed = {m["hash"] for m in st.missing}
    tune_n = sum(1 for h, c in st.expected.items() if c["tune"] and (not c.get("extension") or h in ran | needed))
    rep_needed = len(st.tasks) * len(st.methods) * (len(st.seeds) - len(st.tune_seeds))
    todo = gaps(st)
    p = st.protocol
    d, t = p["dev"], p["train"]
    facts = protocol_facts(st)
    lines = [
        f"# Study `{st.name}`: {len(st.methods)} methods on {st.model}, {', '.join(TASK_LABELS.get(x, x) for x in st.tasks)}",
        "",
        f"Rebuilt by `{command}` from {len(st.runs)} records (of {tune_n} tuning + {rep_needed} reporting runs "
        f"planned; {len(todo)} still to run).",
        "",
        "**Protocol.** "
        f"A dev split of {d.get('dev_from_train')} training rows (seed {d.get('dev_seed')}, {facts['dev_how']}) is carved "
        "from train before anything else; the reported split (GLUE validation) is never used to choose anything. "
        f"Every method gets the same budget on a task (epochs: {facts['epochs']}; batch {t['batch_size']}; train "
        f"subsample: {facts['max_train_samples']}; {facts['precision']}; selection {t['selection']} on dev) and a grid of "
        f"{len(next(iter(st.grid.values())))} learning rates{extension_text(st)}. Stage 1: seed(s) {st.tune_seeds} run every grid entry; the entry "
        f"with the best mean dev score is chosen per task and method. Stage 2: seeds "
        f"{[s for s in st.seeds if s not in st.tune_seeds]} run at that entry only. Cells report the chosen entry's "
        f"{len(st.seeds)} seeds on the reported split. Head input: {p['pooling']} pooling for every method.",
        "",
        "**Cells**: mean ± std over seeds [95% t-interval], then against the reference row "
        f"(`{st.reference}`): ▲ significantly better, ▼ significantly worse, ≈ no significant difference "
        f"(two-level paired bootstrap over seeds and examples of the reported split, {st.n_boot:,} resamples, α = 0.05); "
        "the lr chosen on dev; #rank = 1 + the number of rows significantly better on that task (ties share a rank). "
        "Scores x100. Trainable = method + task head. Step ms = the median, over all the method's runs, of each "
        "run's median optimizer-step time; optimizer state MB = the optimizer's state tensors of one run (exact); "
        "process peak RSS MB = the largest peak RSS of the processes that ran the method's runs (a process that ran "
        "several jobs - a joblib worker - reports its peak so far, so this is an upper bound, not a per-run figure).",
        "",
        to_markdown(table if table is not None else study_table(st)),
        "",
        *across_tasks_lines(st),
        *provenance_lines(st),
        "## Learning rate chosen on dev",
        "",
        f"Mean dev score (x100, seeds {st.tune_seeds}) of every grid entry; * = chosen.",
        "",
        to_markdown(lr_table(st)),
        "",
        "## Against the reference row",
        "",
    ]
    ref_lines = []
    for task in st.tasks:
        for m in st.methods:
            if m == st.reference:
                continue
            v = vs(st, m, st.reference, task)
            if not v:
                continue
            ref_lines.append({"task": task, "method": m, f"Δ vs {st.reference}": _s(v["diff"]),
                              "95% interval": "-" if _n(v.get("low")) else f"[{_s(v['low'])}, {_s(v['high'])}]",
                              "p (bootstrap)": f"{v['p']:.3f}", "p (seed-paired t)":
                              "-" if _n(v.get("p_seed")) else f"{v['p_seed']:.3f}",
                              "significant": "yes" if v["significant"] else "no", "seeds": len(v["seeds"])})
    lines += [to_markdown(pd.DataFrame(ref_lines)) if ref_lines else "(no complete pair yet)", ""]
    cl = claims(st)
    if cl:
        lines += ["## The papers' claims at this scale", "",
                  "Each paper's headline claim, tested here on MiniLM at CPU scale (far from the papers' models and "
                  "budgets: a verdict here says what holds at this scale, not whether the paper is right). "
                  "close = not worse by more than the margin: agrees when the whole interval of the difference is "
                  "above -margin; above = agrees when the interval is above 0; cannot tell when the interval "
                  "straddles the boundary.", ""]
        for c in cl:
            ratio = f"; trainable {c['params_ratio'][0]} / {c['params_ratio'][1]} = {c['ratio']:.1f}x" if c.get("ratio") else ""
            per = "; ".join(f"{TASK_LABELS.get(t, t)}: {v[0]} ({v[1]})" for t, v in c["per_task"].items())
            lines.append(f"- **{c['claim']}** ({c['paper']}; paper: {c['paper_numbers']}). "
                         f"Here ({c['a']} - {c['b']}{', margin ' + str(c['margin']) if c['relation'] == 'close' else ''}"
                         f"{ratio}): {per}.")
        lines.append("")
    lines += compute_lines(st)
    if todo or st.failed:
        lines += ["## Missing or failed runs", ""]
        n_tune = sum(1 for g in todo if g["tune"])
        lines.append(f"{n_tune} tuning runs and {len(todo) - n_tune} reporting runs still to run "
                     "(reporting seeds run only at the entry chosen on dev; the other entries are not expected).")
        for f in st.failed[:20]:
            lines.append(f"- failed: {f['task']} / {f['method']} seed {f['seed']} lr {_lr(f['lr'])}: {f.get('error')}")
        lines.append(f"Fill the gaps: `python -m bench run -m experiment={st.name}` (resumes by config hash).")
        lines.append("")
    return "\n".join(lines)


def compute_table(st: Study) -> pd.DataFrame:
    """Per task, from the records: the runs that landed, their summed and median wall time, the median over runs of
    each run's median optimizer-step time, and the median steps per run; then all tasks."""
    runs = st.runs
    if runs.empty:
        return pd.DataFrame()
    rows = []
    for label, sub in [*((TASK_LABELS.get(t, t), runs[runs["task"] == t]) for t in st.tasks), ("all", runs)]:
        if sub.empty:
            continue
        wall = pd.to_numeric(sub["wall_s"], errors="coerce")
        step = pd.to_numeric(sub["step_time_s"], errors="coerce")
        steps = pd.to_numeric(sub["steps"], errors="coerce")
        busy = _busy_hours(sub["record"]) if "record" in sub else None
        rows.append({"task": label, "runs": len(sub), "run-hours": f"{wall.sum() / 3600:.2f}",
                     "busy hours": "-" if busy is None else f"{busy:.2f}",
                     "median run s": f"{wall.median():.0f}", "median step s": f"{step.median():.3f}",
                     "steps per run": "-" if steps.isna().all() else f"{steps.median():.0f}"})
    return pd.DataFrame(rows)


def _busy_hours(records) -> float | None:
    """Hours during which at least one of these runs was in progress: the union of their [started_at, finished_at]
    intervals (the study's elapsed time, less what no record covers: preflight, runs cut off before they recorded).
    None when no record carries both times."""
    spans = []
    for rec in records:
        if not isinstance(rec, dict):
            continue
        try:
            a, b = (datetime.fromisoformat(rec["started_at"]), datetime.fromisoformat(rec["finished_at"]))
        except (KeyError, TypeError, ValueError):
            continue
        spans.append((a.timestamp(), max(a, b).timestamp()))
    if not spans:
        return None
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total / 3600


def compute_lines(st: Study) -> list[str]:
    """The study's compute, from the records (run-hours sum each run's own wall time: runs side by side count each)."""
    table = compute_table(st)
    if table.empty:
        return []
    recs = list(st.runs["record"]) if "record" in st.runs else []
    return ["## Compute", "",
            "From the records: each run's wall time (start to record, evaluation included) and the median of its "
            "optimizer-step times. Run-hours add the runs' own times, so two runs side by side count twice; they "
            "are not the study's elapsed time. Busy hours are the hours in which at least one of the runs was in "
            "progress (the union of their start-to-record intervals): the study's elapsed time, less what no record "
            "covers (preflight, runs cut off before they recorded, pauses between sessions). "
            f"Measured on: {hardware_text(recs)}.", "",
            to_markdown(table), ""]


def provenance_lines(st: Study) -> list[str]:
    """Under the main table: one warning per cell whose records read different data, a note when its step times
    come from different hardware, and the data fingerprints the study's records read."""
    from bench.records.provenance import fingerprint_lines, mixed_data_lines, mixed_hardware_note

    recs = list(st.runs["record"]) if len(st.runs) and "record" in st.runs else []
    warn = mixed_data_lines((r.get("method"), r.get("task"), r) for r in recs if isinstance(r, dict))
    note = mixed_hardware_note(recs, "step ms and process peak RSS")
    out = [*(f"**{w}**" for w in warn), *([note] if note else [])]
    return [*out, *([""] if out else []), "**Data read** (fingerprint of each source, records):", "",
            *fingerprint_lines(recs), ""]


def gaps(st: Study) -> list[dict]:
    """The runs the protocol still needs: missing tuning runs, and the reporting seeds of each cell at its
    chosen entry (a cell whose tuning is incomplete needs every reporting seed, entry not yet known)."""
    out = [m for m in st.missing if m["tune"]]
    have = st.runs
    for _, c in st.cells.iterrows():
        for seed in st.seeds:
            if seed in st.tune_seeds:
                continue
            if not c["tuning_complete"]:
                out.append({"task": c["task"], "method": c["method"], "seed": seed, "tune": False, "lr_index": None})
                continue
            hit = have[(have["task"] == c["task"]) & (have["method"] == c["method"]) & (have["seed"] == seed)
                       & (have["lr_index"] == c["lr_index"])] if not have.empty else have
            if hit.empty:
                out.append({"task": c["task"], "method": c["method"], "seed": seed, "tune": False,
                            "lr_index": int(c["lr_index"])})
    return out


def _task_values(st: Study, get) -> dict[str, set]:
    """{task: {value of get(record) over the task's matched records}}."""
    out: dict[str, set] = {}
    if st.runs.empty or "record" not in st.runs:
        return out
    for task, rec in zip(st.runs["task"], st.runs["record"]):
        if isinstance(rec, dict):
            try:
                v = get(rec)
            except (KeyError, TypeError, AttributeError):
                v = None
            out.setdefault(task, set()).add(json.dumps(v, sort_keys=True, default=str))
    return out


def _per_task(st: Study, get, fallback, fmt=lambda v: str(v)) -> str:
    """One value when every task's records agree, else 'value on task, task / value on task' (records first, the
    composed protocol when there are none)."""
    vals = _task_values(st, get)
    if not vals:
        return fmt(fallback)
    by_value: dict[str, list[str]] = {}
    for task in st.tasks:
        for v in sorted(vals.get(task, ())):
            by_value.setdefault(v, []).append(TASK_LABELS.get(task, task))
    if len(by_value) == 1:
        return fmt(json.loads(next(iter(by_value))))
    return " / ".join(f"{fmt(json.loads(v))} on {', '.join(ts)}" for v, ts in by_value.items())


def protocol_facts(st: Study) -> dict:
    """The protocol sentence's facts read from the records (what the runs did), per task where they differ."""
    p = st.protocol
    d, t = p["dev"], p["train"]

    def how(v):
        v = str(v)
        return v.replace("stratified by '", "stratified by ").rstrip("'") if v.startswith("stratified by '") else v

    return {
        "dev_how": _per_task(st, lambda r: r["data"]["dev"]["how"], "stratified by 'label'", how),
        "epochs": _per_task(st, lambda r: r["config"]["train"]["epochs"], t["epochs"],
                            lambda v: f"{v:g}" if isinstance(v, (int, float)) else str(v)),
        "max_train_samples": _per_task(st, lambda r: r["config"]["data"]["max_train_samples"],
                                       d.get("max_train_samples"), lambda v: "none (whole train set)" if v is None else str(v)),
        "precision": _per_task(st, lambda r: r["config"]["train"]["precision"], t["precision"]),
    }


def extension_text(st: Study) -> str:
    if not st.max_extensions:
        return ""
    n_ext = int(st.cells["extended"].sum()) if len(st.cells) and "extended" in st.cells else 0
    edge = int(st.cells.get("at_edge", pd.Series(dtype=bool)).fillna(False).astype(bool).sum()) if len(st.cells) else 0
    return (f", extended by up to {st.max_extensions} step(s) past an edge chosen on dev (the same maximum for every "
            f"method; {n_ext} cell(s) extended, marked (ext); {edge} cell(s) still at an edge the maximum does not let "
            "move, marked (edge))")


def across_tasks(st: Study) -> pd.DataFrame:
    """Per method: the average over tasks with a 95% t-interval over seeds (each seed's average over the tasks,
    tasks sharing seeds), the mean rank, and the count of tasks where it is significantly better / worse than the
    reference row."""
    rank_of = ranks(st)
    lines = []
    for m in st.methods:
        per_seed: dict[int, list[float]] = {}
        complete = True
        for task in st.tasks:
            rep = reported_runs(st, task, m)
            if rep.empty:
                complete = False
                break
            for seed, score in zip(rep["seed"], rep["score"]):
                per_seed.setdefault(int(seed), []).append(float(score))
        line = {"method": m}
        seeds = [s for s, v in per_seed.items() if len(v) == len(st.tasks)] if complete else []
        if seeds:
            from bench.analysis import stats

            mean, std, lo, hi = stats.t_interval([sum(per_seed[s]) / len(st.tasks) for s in seeds])
            line["avg over tasks"] = f"{mean:.2f}" + ("" if _n(lo) else f" [{lo:.1f}, {hi:.1f}]")
            line["seeds"] = len(seeds)
        else:
            line["avg over tasks"], line["seeds"] = "-", 0
        rks = [rank_of[(t, m)] for t in st.tasks if (t, m) in rank_of]
        line["mean rank"] = f"{sum(rks) / len(rks):.2f}" if len(rks) == len(st.tasks) and rks else "-"
        if m == st.reference:
            line["wins / losses vs ref"] = "ref"
        else:
            tests = [vs(st, m, st.reference, t) for t in st.tasks]
            wins = [t for t, v in zip(st.tasks, tests) if v and v["significant"] and v["diff"] > 0]
            losses = [t for t, v in zip(st.tasks, tests) if v and v["significant"] and v["diff"] < 0]
            line["wins / losses vs ref"] = f"{len(wins)} / {len(losses)} of {sum(1 for v in tests if v)}"
        lines.append(line)
    return pd.DataFrame(lines)


def shows(st: Study) -> list[str]:
    """"What this study shows", written from the numbers: significant differences against the reference, the
    tasks where nothing separates, the size of difference the study could detect, and what it cannot tell."""
    out = []
    tested = [(t, m, vs(st, m, st.reference, t)) for t in st.tasks for m in st.methods if m != st.reference]
    tested = [(t, m, v) for t, m, v in tested if v]
    if not tested:
        return ["No complete pair against the reference yet: nothing to say."]
    label = lambda t: TASK_LABELS.get(t, t)  # noqa: E731
    sig = [(t, m, v) for t, m, v in tested if v["significant"]]
    better = [f"{m} on {label(t)} ({_s(v['diff'])})" for t, m, v in sig if v["diff"] > 0]
    worse = [f"{m} on {label(t)} ({_s(v['diff'])})" for t, m, v in sig if v["diff"] < 0]
    out.append(f"Against `{st.reference}`, {len(sig)} of {len(tested)} method-task comparisons are significant "
               f"(α = 0.05, not corrected for the {len(tested)} comparisons). Significantly better: "
               f"{'; '.join(better) or 'none'}. Significantly worse: {'; '.join(worse) or 'none'}.")
    quiet = [label(t) for t in st.tasks if not any(v["significant"] for tt, _, v in sig if tt == t)
             and any(tt == t for tt, _, _ in tested)]
    if quiet:
        out.append(f"On {', '.join(quiet)} no method differs significantly from `{st.reference}`.")
    halves = {}
    for t in st.tasks:
        hw = [(v["high"] - v["low"]) / 2 for tt, _, v in tested if tt == t and not _n(v.get("low"))]
        if hw:
            halves[t] = sorted(hw)[len(hw) // 2]
    if halves:
        out.append("The median half-width of the 95% intervals of a difference against the reference, in points: "
                   + ", ".join(f"{label(t)} {h:.1f}" for t, h in halves.items())
                   + "; a true difference smaller than about that is not detectable with these seeds and examples.")
    out.append(f"It cannot tell how these methods compare on other models than {st.model}, with the full training "
               "sets, at other budgets, or on other tasks; a tie here is a difference this study could not detect, "
               "not evidence of equality.")
    return out


def across_tasks_lines(st: Study) -> list[str]:
    table = across_tasks(st)
    return ["## Across tasks", "",
            "Average over the tasks (scores x100) with a 95% t-interval over seeds (each seed's average over the "
            "tasks); wins / losses = tasks where the method is significantly better / worse than the reference row "
            "(of the tasks with a test).", "", to_markdown(table), "", "## What this study shows", "",
            *[f"- {x}" for x in shows(st)], ""]


CELL_CSV = ("task", "method", "tuning_complete", "lr_index", "lr", "dev_mean", "n", "mean", "std", "ci_low", "ci_high",
            "trainable", "trainable_method", "total", "step_time_ms", "peak_rss_mb")  # as the study's cells hold them
SUMMARY_CSV = (*CELL_CSV, "seeds", "reference", "diff_vs_ref", "diff_low", "diff_high", "p_bootstrap", "p_seed_t",
               "significant", "rank")


def _csv_line(st: Study, c, rank: Optional[int]) -> dict:
    """One cell's line of summary.csv (its numbers as the study holds them), kept in the table model's cell."""
    r = {k: c.get(k) for k in CELL_CSV}
    r["seeds"] = " ".join(map(str, c.get("seeds") or [])) if isinstance(c.get("seeds"), list) else ""
    v = vs(st, c["method"], st.reference, c["task"]) if c["method"] != st.reference else None
    r.update({"reference": st.reference, "diff_vs_ref": v["diff"] if v else None,
              "diff_low": v.get("low") if v else None, "diff_high": v.get("high") if v else None,
              "p_bootstrap": v["p"] if v else None, "p_seed_t": v.get("p_seed") if v else None,
              "significant": v["significant"] if v else None, "rank": rank})
    return r


def summary_csv(st: Study, table: Optional[Table] = None) -> pd.DataFrame:
    """summary.csv: the study table model's long form, one line per task x method (tasks outer)."""
    return (table if table is not None else study_table(st)).csv(by_column=True)


def plots(st: Study, out: Path, table: Optional[Table] = None) -> list[Path]:
    """score_vs_params.png and score_vs_step_time.png from the table model (study_table): per task, each method's
    mean with its 95% interval and its seeds at the lr chosen on dev (bench.analysis.table.figure, the figure `bench
    plot` draws)."""
    from bench.analysis.table.figure import Panel, Point, Style, score_vs_cost

    table = table if table is not None else study_table(st)
    rows = [r for r in table.rows if r.kind == "method"]
    paths = []
    for key, xlabel, fname, logx in (("trainable", "trainable parameters (method + head)", "score_vs_params.png", True),
                                     ("step_ms", "median step time (ms)", "score_vs_step_time.png", False)):
        panels = []
        for col in table.tasks:
            points = []
            for i, row in enumerate(rows):
                c = row.cells[col.key]
                x = getattr(c, key)
                if c.value is None or x is None:  # tuning incomplete, or no such cost recorded
                    continue
                err = None if c.low is None else (c.value - c.low, c.high - c.value)
                points.append(Point(row.label, f"C{i}", x, c.value, err, c.scores))
            maj = next(r.cells[col.key].value for r in table.rows if r.kind == "baseline")
            info = st.task_info[col.key]
            title = f"{TASK_LABELS.get(col.key, col.key)} ({METRIC_LABELS.get(info['metric'], info['metric'])} x100)"
            panels.append(Panel(title, points, None if maj is None else (maj, "majority class")))
        style = Style(xlabel=xlabel, logx=logx, ncols=len(panels), panel_size=(4.2, 3.6), title_size=None, ylabel=None,
                      annotate=False, decades_only=False, grid_both=False, figure_legend=False, suptitle_size=9,
                      margins=None, dpi=110)
        title = f"{st.name}: mean and 95% interval over seeds (dots: seeds), lr chosen on dev"
        paths.append(score_vs_cost(panels, out / fname, title, style))
    return paths


def export_records(st: Study, out: Path) -> Path:
    """The matched records as one gzip JSON-lines file (sorted, no timestamp: the same records give the same bytes)."""
    recs = {} if st.runs.empty else dict(zip(st.runs["hash"], st.runs["record"]))
    path = out / "records.jsonl.gz"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for h in sorted(recs, key=lambda h: (recs[h]["task"], recs[h]["method"], recs[h]["seed"], h)):
            f.write((json.dumps(recs[h], sort_keys=True) + "\n").encode())
    tmp.replace(path)
    return path


def write(st: Study, results, out: Path, command: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    md = out / "summary.md"
    table = study_table(st)  # the table model: summary.md's main table and the figures read it
    md.write_text(markdown(st, command, table))
    paths.append(md)
    summary_csv(st, table).to_csv(out / "summary.csv", index=False)
    lr_table(st).to_csv(out / "lr_choice.csv", index=False)
    pairs = st.pairs.drop(columns=[c for c in ("seeds",) if c in st.pairs.columns]) if not st.pairs.empty else st.pairs
    pairs.to_csv(out / "pairs.csv", index=False)
    paths += [out / "summary.csv", out / "lr_choice.csv", out / "pairs.csv"]
    if not st.runs.empty:
        paths += plots(st, out, table)
        src = Path(results).resolve()
        if not (src.is_file() and src == (out / "records.jsonl.gz").resolve()):
            paths.append(export_records(st, out))
    return paths
