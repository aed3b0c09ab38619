"""Rendering a table: the display frame (ours, the paper's line, the delta), Markdown, LaTeX, the header and
the gap lists. Numbers come from bench.table.frame.cell_stats; nothing here computes a statistic."""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from bench.table.frame import count_range
from bench.table.protocol import Selection


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


def display_table(sel: Selection, stats: pd.DataFrame) -> pd.DataFrame:
    """Rows (ours, then the paper's and the delta where the paper reports the row), columns tasks + Avg + params."""
    cols = [sel.task_labels.get(t, t) for t in sel.tasks] + ["Avg", "Trainable (method + head)", "Seeds"]
    forgetting = has_forgetting(sel.runs)
    if forgetting:  # a cost column: the rise of the generic-text loss after training (train.forgetting=true)
        cols.append(FORGETTING_COLUMN)
    out = []
    nexp = len(sel.seeds) if sel.mode == "experiment" else None
    for label in sel.rows:
        st = stats[stats["row"] == label].set_index("task")
        runs = sel.runs[sel.runs["row"] == label] if not sel.runs.empty else sel.runs
        ours = {sel.task_labels.get(t, t): _fmt(st.loc[t, "mean"], st.loc[t, "std"], int(st.loc[t, "n"]), nexp)
                for t in sel.tasks}
        ours["Avg"] = "-" if pd.isna(st.loc["avg", "mean"]) else f"{st.loc['avg', 'mean']:.2f}"
        ours["Trainable (method + head)"] = (
            f"{count_range(runs['trainable_method'])} + {count_range(runs['trainable_head'])}" if len(runs) else "-")
        ours["Seeds"] = ",".join(str(int(s)) for s in sorted(runs["seed"].unique())) if len(runs) else "-"
        if forgetting:
            ours[FORGETTING_COLUMN] = forgetting_text(runs)
        out.append({"Method": label, **ours})
        spec = sel.row_specs.get(label, {})
        reported = spec.get("reported") or {}
        if reported:
            paper_line = {sel.task_labels.get(t, t): (f"{reported[t]:.2f}" if reported.get(t) is not None else "-")
                          for t in sel.tasks}
            paper_line["Avg"] = f"{reported['avg']:.2f}" if reported.get("avg") is not None else "-"
            paper_line["Trainable (method + head)"] = str(spec.get("params") or "-")
            paper_line["Seeds"] = str(spec.get("paper_seeds") or (sel.paper or {}).get("paper_seeds") or "-")
            if forgetting:
                paper_line[FORGETTING_COLUMN] = "-"
            if sel.meta.get("variant"):  # another scale: the paper's numbers for orientation, no delta
                out.append({"Method": "↳ paper (full scale)", **paper_line})
                continue
            out.append({"Method": "↳ paper", **paper_line})
            delta = {sel.task_labels.get(t, t): _signed(st.loc[t, "delta"]) for t in sel.tasks}
            delta["Avg"] = _signed(st.loc["avg", "delta"])
            delta["Trainable (method + head)"] = ""
            delta["Seeds"] = ""
            if forgetting:
                delta[FORGETTING_COLUMN] = ""
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
        return ["All ok records: rows = methods, columns = tasks; scores x100, mean ± std over seeds."]
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
