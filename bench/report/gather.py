"""What the page shows, as plain JSON-ready data: the paper-shaped table(s), every cell's runs, the costs of
`bench perf`, and the gaps (failed, missing, unreadable, off-protocol) with the commands that fill them.

Three modes, the same as `bench table`'s: a study (an experiment with ``study.lr_grid``: bench.analysis.study_table /
bench.analysis.study_report), a paper experiment (``experiment=<name>``: bench.analysis.table's protocol matching) and
plain records (no experiment: rows = methods, columns = tasks). The table code is reused through its public
functions, so the page shows exactly the numbers `bench table` prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from bench.analysis import stats
from bench.report import run_view as R
from bench.report.sources import Records


@dataclass
class Report:
    title: str
    mode: str                                   # study | experiment | records
    results: str
    notes: list[str] = field(default_factory=list)
    tasks: list[dict] = field(default_factory=list)          # {key, label}
    extra_columns: list[str] = field(default_factory=list)   # table columns after the tasks
    rows: list[dict] = field(default_factory=list)           # one per method (table row)
    baseline: list[dict] = field(default_factory=list)       # reference lines that are no method (majority class)
    tables: list[dict] = field(default_factory=list)         # further tables: {title, note, columns, rows}
    cells: list[dict] = field(default_factory=list)          # (row, task): the seeds' runs and their mean
    runs: dict[str, dict] = field(default_factory=dict)      # run id -> runs.view(...)
    failed: list[dict] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)        # commands that fill every gap
    off_protocol: list[dict] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)
    perf: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)        # said at the top of the page

    @property
    def models(self) -> list[str]:
        return sorted({str(r["model"]) for r in self.rows if r.get("model")})


def _seed(x):
    """A seed as an int (pandas keeps a column with gaps as float: 4.0)."""
    v = R.as_number(x)
    return int(v) if v is not None and v == int(v) else x


def _cell(report: Report, row: dict, task: str, views: list[dict], cell=None) -> None:
    """One (row, task) of the page: its runs, and the mean, std and 95% interval the table model's cell holds (the
    Pareto figures plot these numbers, not a second computation)."""
    for v in views:
        report.runs[v["id"]] = v
    report.cells.append({"row": row["label"], "task": task, "model": row.get("model"), "runs": [v["id"] for v in views],
                         "mean": getattr(cell, "value", None), "std": getattr(cell, "std", None),
                         "lo": getattr(cell, "low", None), "hi": getattr(cell, "high", None),
                         "text": (row["cells"].get(task) or {}).get("text", "-")})


def _cell_view(row, column) -> dict:
    """A cell of the table model (bench.analysis.table.model) as the page shows it: its text, its number to sort by, its
    significance mark and the lines under it (the paper's number, the delta)."""
    cell = row.cells.get(column.key)
    under = [(u.label.lstrip("↳ ").strip(), u.cells.get(column.key)) for u in row.under]
    return {"text": cell.text if cell else "-", "sort": cell.value if cell else None, "sig": cell.sig if cell else None,
            "sub": [f"{name}: {c.text}" for name, c in under if c is not None and c.text.strip()]}


# ------------------------------------------------------------------------------------------------
# a study
# ------------------------------------------------------------------------------------------------
def from_study(argv: list[str], results: str | Path, recs: Records, n_boot: int = stats.N_BOOT) -> Report:
    from bench.analysis import study_report as SR
    from bench.analysis import study_table as ST

    st = ST.build(argv, results, n_boot=n_boot)
    rep = Report(title=f"Study {st.name}: {len(st.methods)} methods on {st.model}", mode="study", results=str(results))
    table = SR.study_table(st)  # the table model summary.md renders: the page reads its numbers
    rep.tasks = [{"key": c.key, "label": c.label} for c in table.tasks]
    rep.extra_columns = [c.label for c in table.extra]
    rep.notes = [
        f"Scores x100 on the reported split: mean ± std over seeds {', '.join(map(str, st.seeds))} [95% t-interval]; "
        f"▲ / ▼ significantly better / worse than the reference row {st.reference!r}, ≈ no significant "
        "difference "
        "(two-level paired bootstrap over seeds and examples, α = 0.05); the lr chosen on dev (tuning seeds "
        f"{st.tune_seeds}); #rank = 1 + the rows significantly better (ties share a rank).",
        "Step ms: median over the method's runs of each run's median step time; process peak RSS: an upper bound "
        "(a worker that ran several jobs reports its peak so far). docs/protocol.md has the protocol.",
    ]
    from bench.records.store import NON_SEMANTIC_KEYS

    matched = [o for o in st.protocol.get("extra_overrides") or []
               if o.split("=", 1)[0].lstrip("+~") not in NON_SEMANTIC_KEYS]
    if matched:
        rep.notes.append("Extra settings matched: " + " ".join(matched) + ".")
    for line in table.rows:
        label = line.label
        extra = {c.label: _cell_view(line, c) for c in table.extra}
        if line.kind == "baseline":   # the majority-class line
            rep.baseline.append({"label": label, "cells": {c.key: _cell_view(line, c) for c in table.tasks},
                                 "extra": extra})
            continue
        row = {"label": label, "method": line.method, "model": line.model, "extra": extra,
               "cells": {c.key: _cell_view(line, c) for c in table.tasks}, "reference": line.reference}
        rep.rows.append(row)
        for t in st.tasks:
            views = []
            for _, r in ST.reported_runs(st, t, label).iterrows():
                rec = recs.by_hash.get(r["hash"]) or recs.by_source.get(r["source"])
                if rec is not None:
                    views.append(R.view(rec, r["source"], f"r{len(rep.runs) + len(views)}", label, t))
            _cell(rep, row, t, views, line.cells.get(t))
    _study_tables(st, rep)
    _study_gaps(st, rep, recs)
    return rep


def _study_tables(st, rep: Report) -> None:
    from bench.analysis import study_report as SR
    from bench.analysis import study_table as ST

    lines = []
    for t in st.tasks:
        for m in st.methods:
            v = ST.vs(st, m, st.reference, t) if m != st.reference else None
            if not v:
                continue
            low = v.get("low")
            has_ci = low is not None and not (isinstance(low, float) and math.isnan(low))
            lines.append({"task": t, "model": st.model, "cells": [
                {"text": m}, {"text": t},
                {"text": f"{v['diff']:+.2f}", "sort": v["diff"]},
                {"text": f"[{v['low']:+.2f}, {v['high']:+.2f}]" if has_ci else "-", "sort": low if has_ci else None},
                {"text": f"{v['p']:.3f}", "sort": v["p"]},
                {"text": "yes" if v["significant"] else "no"}, {"text": str(v.get("test", ""))}]})
    if lines:
        rep.tables.append({"title": f"Against the reference row ({st.reference})", "note":
                           "Difference x100 (row − reference) on the reported split, its 95% interval and p-value.",
                           "columns": ["method", "task", f"Δ vs {st.reference}", "95% interval", "p", "significant",
                                       "test"], "rows": lines})
    lr = SR.lr_table(st)
    if not lr.empty:
        rep.tables.append({"title": "Learning rate chosen on dev",
                           "note": f"Mean dev score x100 (seeds {st.tune_seeds}) of every grid entry; * = chosen.",
                           "columns": list(lr.columns),
                           "rows": [{"task": r["task"], "model": st.model, "cells": [{"text": str(x)} for x in r]}
                                    for _, r in lr.iterrows()]})


def _study_gaps(st, rep: Report, recs: Records) -> None:
    from bench.analysis import study_report as SR

    extra = list(st.protocol.get("extra_overrides") or [])
    for g in SR.gaps(st):
        index = g["lr_index"] if g["tune"] else "tuned"
        cmd = R.run_command([f"experiment={st.name}", *extra, f"task={g['task']}", f"method={g['method']}",
                             f"seed={g['seed']}", f"study.lr_index={index}"])
        rep.missing.append({"row": g["method"], "task": g["task"], "seed": g["seed"],
                            "what": f"tuning run, lr {st.grid[g['method']][g['lr_index']]:g}" if g["tune"]
                            else "reporting seed (at the lr chosen on dev)", "command": cmd})
    for f in st.failed:
        rec = recs.by_source.get(f.get("source"))
        cmd = R.run_command(R.overrides_of(rec)) if rec else R.run_command(
            [f"experiment={st.name}", *extra, f"task={f['task']}", f"method={f['method']}", f"seed={f['seed']}",
             f"study.lr_index={f['lr_index']}"])
        rep.failed.append({"row": f["method"], "task": f["task"], "seed": f["seed"], "error": f.get("error"),
                           "source": f.get("source"), "command": cmd})
    if rep.missing or rep.failed:
        # a sweep resumes by config hash: it runs exactly what is missing or failed
        rep.commands = ["python -m bench run -m " + R.quote([f"experiment={st.name}", *extra])]


# ------------------------------------------------------------------------------------------------
# a paper experiment, or plain records (bench.analysis.table)
# ------------------------------------------------------------------------------------------------
def from_table(argv: list[str], results: str | Path, recs: Records) -> Report:
    from bench.analysis.table import frame as table_frame
    from bench.analysis.table import protocol as table_protocol
    from bench.analysis.table import render as table_render
    from bench.records import store as records

    sel = table_protocol.select(argv, results)
    experiment = sel.mode == "experiment"
    title = (f"Experiment {sel.meta.get('experiment')} ({sel.meta.get('model')})" if experiment
             else f"All records under {results}")
    rep = Report(title=title, mode=sel.mode, results=str(results))
    rep.notes = list(table_render.header_lines(sel))
    if sel.meta.get("mixed"):
        rep.notes.append(f"Mixed: {len(sel.meta['mixed'])} cell(s) average records of different configs: "
                         + "; ".join(sel.meta["mixed"]))
    rep.tasks = [{"key": t, "label": sel.task_labels.get(t, t)} for t in sel.tasks]
    if sel.rows:
        table = table_render.build(sel, table_frame.cell_stats(sel))  # the table model bench table renders: numbers, not strings
        rep.extra_columns = [c.label for c in table.extra]
        for row in table.rows:
            current = {"label": row.label, "method": row.method, "model": row.model,
                       "cells": {c.key: _cell_view(row, c) for c in table.tasks},
                       "extra": {c.label: _cell_view(row, c) for c in table.extra}}
            runs = sel.runs[sel.runs["row"] == row.label] if not sel.runs.empty else sel.runs
            label = row.label
            rep.rows.append(current)
            for t in sel.tasks:
                sub = runs[runs["task"] == t].sort_values("seed") if len(runs) else runs
                views = []
                for _, r in sub.iterrows():
                    rec = recs.by_source.get(r["path"]) or records.read_record(Path(r["path"]))
                    if rec is not None:
                        views.append(R.view(rec, r["path"], f"r{len(rep.runs) + len(views)}", label, t,
                                            sel.metrics.get(t)))
                _cell(rep, current, t, views, row.cells.get(t))
    unreadable = {u["source"] for u in recs.unreadable}
    for f in sel.failed:
        if f.get("status") == "unreadable" or f.get("path") in unreadable:
            continue
        rec = recs.by_source.get(f.get("path")) or {}
        rep.failed.append({"row": f.get("row") or f.get("method"), "task": f.get("task"),
                           "seed": _seed(f.get("seed")), "error": f.get("error"), "source": f.get("path"),
                           "command": R.run_command(R.overrides_of(rec)) if rec else None})
    for m in sel.missing:
        rep.missing.append({"row": m["row"], "task": m["task"], "seed": _seed(m["seed"]),
                            "what": "failed (see below)" if m.get("failed") else "no ok record", "command": None})
    rep.commands = list(sel.meta.get("commands") or [])
    rep.off_protocol = [{"row": o.get("method"), "task": o.get("task"), "seed": _seed(o.get("seed")),
                         "why": o.get("why"), "source": o.get("path")} for o in sel.off_protocol]
    if not sel.rows or (sel.runs.empty and not experiment):
        rep.problems.append(f"No ok run records under {results} for this table yet: run "
                            "`python -m bench run method=<m> task=<t>` (or a sweep, -m) first.")
    return rep


def _perf_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """`bench perf`'s own table of a record (header, rows of display strings)."""
    from bench.perf.report import frame

    df = frame(summary)
    return [str(c) for c in df.columns], df.astype(str).values.tolist()


def add_provenance(rep: Report) -> None:
    """Problems at the top of the page: a cell whose runs read different data; notes: step times and memory from
    different hardware (each run's row names its hardware)."""
    from bench.records.provenance import mixed_data_lines, mixed_hardware_note

    rep.problems += mixed_data_lines((c["row"], c["task"], rep.runs[r].get("data")) for c in rep.cells
                                     for r in c["runs"] if r in rep.runs)
    note = mixed_hardware_note([v.get("hardware") for v in rep.runs.values() if v.get("hardware")],
                               "step times and peak memory (figures and runs)")
    if note:
        rep.notes.append(note)


def add_sources(rep: Report, recs: Records, perf: list[dict]) -> None:
    """The files that could not be read, and the cost table of every `bench perf` record."""
    rep.unreadable = list(recs.unreadable)
    if rep.unreadable:
        rep.problems.append(f"{len(rep.unreadable)} record file(s) could not be read and are left out "
                            "(listed under Failed and missing).")
    for p in perf:
        from bench.records.provenance import hardware_label

        header, rows = _perf_table(p["results"])
        dev = p.get("device") or {}
        rep.perf.append({
            "title": f"{p.get('model')} / {p.get('task')}: batch {p.get('batch_size')} x {p.get('seq_len')}, "
                     f"{p.get('precision')}, gradient checkpointing {p.get('gradient_checkpointing')}",
            "model": p.get("model"), "command": p.get("command"), "created_at": p.get("created_at"),
            "device": hardware_label(dev),
            "source": p["_source"], "columns": header, "rows": rows})
