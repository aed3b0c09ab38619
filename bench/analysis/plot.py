"""`python -m bench plot [experiment=<name>] [results_dir=...] [+figures_dir=...]`: PNG figures from the records.

* ``<stem>_score_vs_params.png``: score (x100, mean +- std over seeds) against trainable parameters (method +
  head, log scale), one point per method (table row), one panel per task and one for the average over tasks
  (drawn only for rows that have every task).
* ``<stem>_loss_curves.png``: training loss against optimizer step, one panel per task, one colour per method,
  one line per seed (records keep train.loss_curve = [[step, loss], ...]).

The runs are chosen exactly as `bench table` chooses them (same arguments, same protocol matching).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.errors import BenchError


def _grid(n: int) -> tuple[int, int]:
    from bench.analysis.table.figure import grid

    return grid(n)


def _points(sel, table=None) -> dict[str, list[tuple[str, float, float, float]]]:
    """task (and 'avg') -> [(row, trainable, mean, std)], read from the table model (bench.analysis.table.render.build):
    a cell with a score and a parameter count; the average for rows that have every task."""
    from bench.analysis.table.frame import cell_stats
    from bench.analysis.table.render import build

    table = table if table is not None else build(sel, cell_stats(sel))
    out: dict[str, list] = {t: [] for t in [*sel.tasks, "avg"]}
    for row in table.rows:
        have = [row.cells[c.key] for c in table.tasks
                if row.cells[c.key].value is not None and row.cells[c.key].trainable is not None]
        for c in table.tasks:
            cell = row.cells[c.key]
            if cell.value is not None and cell.trainable is not None:
                out[c.key].append((row.label, cell.trainable, cell.value, cell.std or 0.0))
        if sel.tasks and len(have) == len(sel.tasks):
            out["avg"].append((row.label, row.cells["avg"].trainable, row.cells["avg"].value, 0.0))
    return out


def score_vs_params(sel, path: Path, table=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.analysis.table.figure import Panel, Point, Style, score_vs_cost

    points = _points(sel, table)
    panels = [t for t in [*sel.tasks, "avg"] if points.get(t)]
    if not panels:
        raise BenchError("no ok run has both a score and a parameter count: nothing to plot")
    colors = {row: plt.cm.tab10(i % 10) for i, row in enumerate(sel.rows)}

    def title(task):
        if task == "avg":
            return "average over tasks"
        return sel.task_labels.get(task, task) + f" ({sel.metrics.get(task) or 'main metric'})"

    drawn = [Panel(title(t), [Point(row, colors[row], p, mean, std if std else None) for row, p, mean, std in points[t]])
             for t in panels]
    return score_vs_cost(drawn, path, _title(sel, "score vs trainable parameters"),
                         Style(xlabel="trainable parameters (method + head, log)"))


def loss_curves(sel, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sel.runs
    tasks = [t for t in sel.tasks if not runs.empty and runs[(runs["task"] == t)]["loss_curve"].map(bool).any()]
    if not tasks:
        raise BenchError("no ok run has a training-loss curve (train.loss_curve): nothing to plot")
    nrows, ncols = _grid(len(tasks))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    colors = {row: plt.cm.tab10(i % 10) for i, row in enumerate(sel.rows)}
    for ax, task in zip(axes.flat, tasks):
        sub = runs[runs["task"] == task]
        for row in sel.rows:
            first = True
            for _, r in sub[sub["row"] == row].sort_values("seed").iterrows():
                curve = r["loss_curve"] or []
                if not curve:
                    continue
                steps, losses = zip(*[(float(s), float(v)) for s, v in curve])
                ax.plot(steps, losses, color=colors[row], alpha=0.8, lw=1.2, marker="." if len(steps) < 20 else None,
                        label=row if first else None)
                first = False
        ax.set_title(sel.task_labels.get(task, task), fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.suptitle(_title(sel, "training loss (one line per seed)"), fontsize=11)
    fig.subplots_adjust(left=0.08, right=0.97, top=1 - 0.55 / fig.get_figheight(), bottom=0.6 / fig.get_figheight(),
                        wspace=0.28, hspace=0.5)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _title(sel, what: str) -> str:
    if sel.mode == "experiment":
        return f"{sel.meta['experiment']} ({sel.meta['model']}): {what}"
    models = sorted(sel.runs["model"].unique()) if not sel.runs.empty else []
    return f"{', '.join(models)}: {what}"


def main(argv: list[str]) -> None:
    from bench.analysis.table.protocol import select, split_filters
    from bench.analysis.table.render import gap_lines
    from bench.config.compose import compose

    _, rest = split_filters(argv)
    cfg = compose(rest)
    try:
        sel = select(argv, cfg.results_dir)
        if sel.runs.empty:
            raise BenchError(f"no ok records under {cfg.results_dir} for these arguments; run `python -m bench run ...` first")
        out_dir = Path(cfg.get("figures_dir") or Path(cfg.results_dir).parent / "figures")
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = sel.meta.get("experiment") or "runs"
        written = [score_vs_params(sel, out_dir / f"{stem}_score_vs_params.png"),
                   loss_curves(sel, out_dir / f"{stem}_loss_curves.png")]
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    for line in gap_lines(sel):
        print(line)
    print(f"{len(sel.runs)} runs ({len(sel.rows)} methods x {len(sel.tasks)} tasks); wrote:")
    for p in written:
        print(f"  {p}")
