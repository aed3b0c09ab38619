"""A paper or records table as the table model (bench.analysis.table.model: ours, the paper's line, the delta), and the
header and gap lists. Numbers come from bench.analysis.table.frame.cell_stats; nothing here computes a statistic."""

from __future__ import annotations

from typing import Optional

import pandas as pd

from bench.analysis.stats import t_bounds
from bench.analysis.table.frame import STAT_COLUMNS, count_range
from bench.analysis.table.model import Cell, Column, Row, Table
from bench.analysis.table.protocol import Selection


def _fmt(mean: float, std: float, n: int, expected: Optional[int] = None) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    s = f"{mean:.2f}" if n < 2 or pd.isna(std) else f"{mean:.2f} ± {std:.2f}"
    if expected and n < expected:
        s += f" (n={n})"
    return s


def _signed(x: float) -> str:
    return "-" if x is None or pd.isna(x) else f"{x:+.2f}"


FORGETTING_COLUMN = "Forgetting (Δ loss)"


def has_forgetting(runs: pd.DataFrame) -> bool:
    """Some run of the table measured forgetting (train.forgetting=true): the table gets its cost column."""
    return "forgetting" in runs.columns and bool(runs["forgetting"].notna().any())


def forgetting_text(runs: pd.DataFrame) -> str:
    """Mean rise of the generic-text loss (nats per token) over a row's runs that measured it, and how many did."""
    vals = pd.to_numeric(runs["forgetting"], errors="coerce").dropna() if "forgetting" in runs.columns else []
    if len(vals) == 0:
        return "-"
    return f"{vals.mean():+.3f} (n={len(vals)})"


def _num(x) -> Optional[float]:
    return None if x is None or pd.isna(x) else float(x)


def _median(values) -> Optional[float]:
    vals = sorted(float(v) for v in values if v is not None and not pd.isna(v))
    return vals[len(vals) // 2] if vals else None


def build(sel: Selection, stats: pd.DataFrame) -> Table:
    """The table model of a paper or records table: per row its cells (numbers from cell_stats; the paper's line and
    the delta's under it where the paper reports the row), columns tasks + Avg + params + seeds (+ forgetting)."""
    columns = [Column(t, sel.task_labels.get(t, t), task=True) for t in sel.tasks]
    columns += [Column("avg", "Avg"), Column("trainable", "Trainable (method + head)"), Column("seeds", "Seeds")]
    forgetting = has_forgetting(sel.runs)
    if forgetting:  # a cost column: the rise of the generic-text loss after training (train.forgetting=true)
        columns.append(Column("forgetting", FORGETTING_COLUMN))
    nexp = len(sel.seeds) if sel.mode == "experiment" else None
    csv = {(r["row"], r["task"]): r for r in stats.to_dict("records")}
    out = []
    for label in sel.rows:
        st = stats[stats["row"] == label].set_index("task")
        runs = sel.runs[sel.runs["row"] == label] if not sel.runs.empty else sel.runs
        cells = {}
        for t in sel.tasks:
            mean, std, n = st.loc[t, "mean"], st.loc[t, "std"], int(st.loc[t, "n"])
            sub = runs[runs["task"] == t] if len(runs) else runs
            low, high = t_bounds(mean, std, n)  # the 95% t-interval over seeds (the report's figures)
            cells[t] = Cell(_fmt(mean, std, n, nexp), value=_num(mean), std=_num(std), n=n, low=_num(low),
                            high=_num(high), paper=st.loc[t, "paper"], delta=_num(st.loc[t, "delta"]),
                            trainable=_median(sub["trainable"]) if len(sub) and "trainable" in sub else None,
                            csv=csv[(label, t)])
        avg = st.loc["avg", "mean"]
        cells["avg"] = Cell("-" if pd.isna(avg) else f"{avg:.2f}", value=_num(avg), n=int(st.loc["avg", "n"]),
                            paper=st.loc["avg", "paper"], delta=_num(st.loc["avg", "delta"]),
                            trainable=_median(cells[t].trainable for t in sel.tasks), csv=csv[(label, "avg")])
        low = [v for v in runs["trainable_method"] if v is not None and not pd.isna(v)] if len(runs) else []
        cells["trainable"] = Cell(  # sorted by the method's smallest count
            f"{count_range(runs['trainable_method'])} + {count_range(runs['trainable_head'])}" if len(runs) else "-",
            value=float(min(low)) if low else None)
        seeds = sorted(int(s) for s in runs["seed"].unique()) if len(runs) else []
        cells["seeds"] = Cell(",".join(map(str, seeds)) if seeds else "-", value=float(len(seeds)) if seeds else None,
                              n=len(seeds))
        if forgetting:
            vals = pd.to_numeric(runs["forgetting"], errors="coerce").dropna() if "forgetting" in runs.columns else []
            cells["forgetting"] = Cell(forgetting_text(runs), value=float(vals.mean()) if len(vals) else None,
                                       n=len(vals))
        models = sorted({str(m) for m in runs["model"].dropna()}) if len(runs) and "model" in runs else []
        row = Row(label, cells, method=str(runs["method"].iloc[0]) if len(runs) and "method" in runs else label,
                  model=sel.meta.get("model") or (models[0] if len(models) == 1 else ", ".join(models)))
        spec = sel.row_specs.get(label, {})
        reported = spec.get("reported") or {}
        if reported:
            paper = {t: Cell(f"{reported[t]:.2f}" if reported.get(t) is not None else "-", value=_num(reported.get(t)))
                     for t in [*sel.tasks, "avg"]}
            paper["trainable"] = Cell(str(spec.get("params") or "-"))
            paper["seeds"] = Cell(str(spec.get("paper_seeds") or (sel.paper or {}).get("paper_seeds") or "-"))
            if forgetting:
                paper["forgetting"] = Cell("-")
            if sel.meta.get("variant"):  # another scale: the paper's numbers for orientation, no delta
                row.under.append(Row("↳ paper (full scale)", paper, kind="paper"))
            else:
                row.under.append(Row("↳ paper", paper, kind="paper"))
                delta = {t: Cell(_signed(cells[t].delta), value=cells[t].delta) for t in [*sel.tasks, "avg"]}
                delta.update({c.key: Cell("") for c in columns if c.key not in delta})
                row.under.append(Row("↳ Δ (ours − paper)", delta, kind="delta"))
        out.append(row)
    return Table(columns, out, csv_columns=list(STAT_COLUMNS))


def display_table(sel: Selection, stats: pd.DataFrame) -> pd.DataFrame:
    """The display frame of build (texts): rows (ours, the paper's, the delta), columns tasks + Avg + params."""
    return build(sel, stats).frame()


def header_lines(sel: Selection) -> list[str]:
    if sel.mode != "experiment":
        return ["All ok records: rows = methods, columns = tasks; scores x100, mean ± std over seeds."]
    from bench.records.store import NON_SEMANTIC_KEYS

    src = sel.paper["source"]
    meta = sel.meta
    matched = [o for o in meta["extra_overrides"] if o.split("=", 1)[0].lstrip("+~") not in NON_SEMANTIC_KEYS]
    first = (
        f"Experiment {meta['experiment']} ({meta['model']}"
        + (f", {meta['variant']}-scale variant: the paper's numbers are for orientation only" if meta.get("variant") else "")
        + f"); protocol: eval_strategy={meta['eval_strategy']}, "
        f"selection={meta['selection']}; seeds {','.join(map(str, sel.seeds))}."
        + (f" Extra settings matched: {' '.join(matched)}." if matched else ""))
    if not src.get("arxiv"):  # this suite's own table (a pilot): rows of ours only, no paper to compare with
        out = [first, f"Rows: {src.get('title')}, {src.get('table')}.",
               "Scores x100, mean ± sample std over seeds ((n=k): fewer seeds than the protocol's)."]
    else:
        out = [
            first,
            f"Paper: {src.get('title')} ({src.get('authors')}, arXiv {src.get('arxiv')}), {src.get('table')}"
            + (f"; numbers transcribed from {str(src['transcribed_from']).rstrip('.')}" if src.get("transcribed_from")
               else "")
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
    not_runnable = sel.meta.get("not_runnable") or {}
    if not_runnable:
        out.append(f"Not runnable here: {len(not_runnable)} row(s) of the paper, shown with its numbers only:")
        out += [f"  - {row}: {why}" for row, why in not_runnable.items()]
    if sel.missing:
        runnable = len(sel.rows) - len(not_runnable)
        out.append(f"Missing: {len(sel.missing)} of {runnable * len(sel.tasks) * len(sel.seeds)} expected runs "
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
