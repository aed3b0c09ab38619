"""The table model: every table of this suite as rows of cells that hold numbers, built once from the records,
and the renderers that read it (Markdown, LaTeX, the long-form CSV).

A cell keeps its numbers (the mean x100, the std, the seeds it counts, the 95% interval, the paper's value and
the delta, the significance against the reference row, a count or a cost) and its display text, formatted once
from those numbers by the builder. Markdown and LaTeX print the text; the CSV writes the numbers; the PNG figures
(bench.analysis.table.figure) and the HTML report (bench.report.gather) read the numbers - nothing parses a rendered
string back into a number.

Builders: bench.analysis.table.render.build (a paper or records table, from bench.analysis.table.frame.cell_stats) and
bench.analysis.study_report.study_table (a study, from bench.analysis.study_table's choices and tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd


@dataclass
class Cell:
    text: str = "-"                    # the display, formatted once from the numbers below
    value: Optional[float] = None      # the cell's number: what a column sorts by and a figure plots (x100 for scores)
    std: Optional[float] = None        # sample std over seeds (x100)
    n: int = 0                         # runs (seeds) the cell counts
    low: Optional[float] = None        # 95% t-interval over seeds
    high: Optional[float] = None
    paper: Any = None                  # the paper's number for this cell, as transcribed
    delta: Optional[float] = None      # ours - paper
    sig: Optional[str] = None          # against the reference row: up | down | tie (None: no test, or the reference)
    trainable: Optional[float] = None  # the cell's trainable parameter count (method + head; the figures' x axis)
    step_ms: Optional[float] = None    # its median optimizer-step time (ms), where the table keeps it
    scores: list = field(default_factory=list)   # the single seeds' scores (x100), where the table keeps them
    csv: dict = field(default_factory=dict)  # the cell's line of the long-form CSV (numbers), when the table has one


@dataclass
class Row:
    label: str
    cells: dict[str, Cell] = field(default_factory=dict)   # column key -> cell
    method: Optional[str] = None
    model: Optional[str] = None
    kind: str = "method"               # method | baseline (a reference line that is no method: majority class)
    reference: bool = False            # the study's reference row
    under: list["Row"] = field(default_factory=list)      # lines printed under it: the paper's, the delta


@dataclass
class Column:
    key: str                           # a task name, or the name of a further column
    label: str                         # its header
    task: bool = False                 # a task's score column (else: an average, a cost, a count)


@dataclass
class Table:
    columns: list[Column]
    rows: list[Row]
    first: str = "Method"              # the header of the label column
    csv_columns: list[str] = field(default_factory=list)   # the long-form CSV's columns (numbers per cell)

    @property
    def tasks(self) -> list[Column]:
        return [c for c in self.columns if c.task]

    @property
    def extra(self) -> list[Column]:
        return [c for c in self.columns if not c.task]

    def lines(self) -> list[Row]:
        """Every printed line in order: each row, then the lines under it."""
        return [x for r in self.rows for x in (r, *r.under)]

    def frame(self) -> pd.DataFrame:
        """The display frame (texts): the label column, then one column per Column."""
        data = [[line.label, *((line.cells.get(c.key) or Cell()).text for c in self.columns)] for line in self.lines()]
        return pd.DataFrame(data, columns=[self.first, *(c.label for c in self.columns)])

    def csv(self, by_column: bool = False) -> pd.DataFrame:
        """The long form: one line per cell that has one (rows in order, then columns in order; by_column: columns
        outer, as a study's summary.csv lists tasks)."""
        pairs = ([(r, c) for c in self.columns for r in self.rows] if by_column
                 else [(r, c) for r in self.rows for c in self.columns])
        recs = [cell.csv for r, c in pairs if (cell := r.cells.get(c.key)) and cell.csv]
        return pd.DataFrame(recs, columns=self.csv_columns)


def _frame(table: Table | pd.DataFrame) -> pd.DataFrame:
    return table.frame() if isinstance(table, Table) else table


def to_markdown(table: Table | pd.DataFrame) -> str:
    from tabulate import tabulate

    df = _frame(table)
    # disable_numparse: "51.00" stays "51.00" (tabulate would print 51)
    return tabulate(df.values.tolist(), headers=list(df.columns), tablefmt="github", disable_numparse=True)


def _tex(s: Any) -> str:
    s = str(s)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"),
                 ("{", r"\{"), ("}", r"\}")):
        s = s.replace(a, b)
    return (s.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("−", "$-$").replace("–", "--")
            .replace("↳", r"\quad"))


def to_latex(table: Table | pd.DataFrame, caption: str = "") -> str:
    """A booktabs tabular (no pandas Styler / jinja needed)."""
    df = _frame(table)
    ncol = len(df.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "c" * (ncol - 1) + "}",
             r"\toprule", " & ".join(_tex(c) for c in df.columns) + r" \\", r"\midrule"]
    for row in df.values.tolist():
        lines.append(" & ".join(_tex(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + _tex(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines)
