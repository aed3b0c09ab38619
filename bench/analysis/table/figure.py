"""The score-against-cost figure (PNG), drawn from the table model's numbers: one panel per task, per row its mean
with an error bar at its cost (trainable parameters, step time), optionally its seeds as dots and a baseline line.

One drawing function for both of its uses: `bench plot` (a paper or records table: mean ± std, every row labelled,
an average panel) and a study's summary (bench.analysis.study_report: mean with its 95% interval, the seeds, the
majority class). What differs between them is data (the panels) and the Style; the drawing is this one function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass
class Point:
    label: str
    color: Any
    x: float
    y: float                                      # the mean x100
    err: float | tuple[float, float] | None = None   # a half-width, or (below, above) the mean; None: no bar
    seeds: list[float] = field(default_factory=list)   # the single seeds' scores, drawn as dots at x


@dataclass
class Panel:
    title: str
    points: list[Point]
    baseline: Optional[tuple[float, str]] = None  # (y, label): a dashed line (the majority class)


@dataclass
class Style:
    xlabel: str
    logx: bool = True
    ncols: int = 3                     # panels per line
    panel_size: tuple[float, float] = (4.6, 3.6)
    title_size: Optional[float] = 10   # None: matplotlib's default
    ylabel: Optional[str] = "score x100"
    annotate: bool = True              # write each row's label beside its point
    decades_only: bool = True          # on a log axis: no minor tick labels (readable, and far cheaper to lay out)
    grid_both: bool = True             # the grid on minor ticks too
    figure_legend: bool = True         # one legend under the panels (else: in the first panel)
    suptitle_size: float = 11
    margins: Optional[dict] = field(default_factory=lambda: {"left": 0.07, "right": 0.97, "wspace": 0.28,
                                                             "hspace": 0.45})  # None: tight_layout
    dpi: int = 120


def grid(n: int, ncols: int = 3) -> tuple[int, int]:
    cols = min(n, ncols)
    return -(-n // cols), cols


def score_vs_cost(panels: list[Panel], path: Path, title: str, style: Style) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    nrows, ncols = grid(len(panels), style.ncols)
    w, h = style.panel_size
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for p in panel.points:
            if p.seeds:
                ax.scatter([p.x] * len(p.seeds), p.seeds, s=10, alpha=0.35, color=p.color)
            yerr = p.err if p.err is None else [[p.err[0]], [p.err[1]]] if isinstance(p.err, tuple) else [p.err]
            ax.errorbar([p.x], [p.y], yerr=yerr, fmt="o", color=p.color, capsize=3, label=p.label)
            if style.annotate:
                ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(5, 4), fontsize=7)
        if panel.baseline is not None:
            ax.axhline(panel.baseline[0], color="grey", lw=0.8, ls="--", label=panel.baseline[1])
        if style.logx:
            ax.set_xscale("log")
            if style.decades_only:
                ax.xaxis.set_minor_formatter(NullFormatter())
        if style.title_size is None:
            ax.set_title(panel.title)
        else:
            ax.set_title(panel.title, fontsize=style.title_size)
        ax.set_xlabel(style.xlabel)
        if style.ylabel:
            ax.set_ylabel(style.ylabel)
        if style.grid_both:
            ax.grid(True, which="both", alpha=0.3)
        else:
            ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if style.figure_legend:
        handles, labels = [], []
        for ax in axes.flat:
            for hd, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(hd)
                    labels.append(lab)
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    elif axes[0][0].get_legend_handles_labels()[1]:  # nothing plotted (no reported cell yet): no empty legend
        axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=style.suptitle_size)
    if style.margins is None:
        fig.tight_layout()
    else:  # fixed margins: tight_layout measures every tick label
        fig.subplots_adjust(top=1 - 0.55 / fig.get_figheight(), bottom=0.9 / fig.get_figheight(), **style.margins)
    fig.savefig(path, dpi=style.dpi)
    plt.close(fig)
    return path
