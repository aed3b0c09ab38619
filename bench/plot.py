"""`python -m bench plot [experiment=<name>] [results_dir=...] [+figures_dir=...]`: PNG figures from the records.

* ``<stem>_score_vs_params.png``: score (x100, mean +- std over seeds) against trainable parameters (method +
  head, log scale), one point per method (table row), one panel per task and one for the average over tasks
  (drawn only for rows that have every task).
* ``<stem>_loss_curves.png``: training loss against optimizer step, one panel per task, one colour per method,
  one line per seed (records keep train.loss_curve = [[step, loss], ...]).

The runs are chosen exactly as `bench table` chooses them (same arguments, same protocol matching).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from bench.errors import BenchError


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _points(sel) -> dict[str, list[tuple[str, float, float, float]]]:
    """task (and 'avg') -> [(row, trainable, mean, std)]."""
    from bench.table.frame import score_of as _score

    runs = sel.runs
    out: dict[str, list] = {t: [] for t in [*sel.tasks, "avg"]}
    complete: dict[str, list[float]] = {}
    for row in sel.rows:
        sub_row = runs[runs["row"] == row] if not runs.empty else runs
        task_means, task_params = [], []
        for task in sel.tasks:
            sub = sub_row[sub_row["task"] == task] if len(sub_row) else sub_row
            scores = [s for s in (_score(r, sel.metrics.get(task)) for _, r in sub.iterrows()) if not math.isnan(s)]
            params = [float(r["trainable"]) for _, r in sub.iterrows() if r.get("trainable") == r.get("trainable")
                      and r.get("trainable") is not None]
            if not scores or not params:
                continue
            mean = sum(scores) / len(scores)
            std = (sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) ** 0.5 if len(scores) > 1 else 0.0
            p = sorted(params)[len(params) // 2]
            out[task].append((row, p, mean, std))
            task_means.append(mean)
            task_params.append(p)
        if sel.tasks and len(task_means) == len(sel.tasks):
            complete[row] = task_means
            out["avg"].append((row, sorted(task_params)[len(task_params) // 2], sum(task_means) / len(task_means), 0.0))
    return out


def score_vs_params(sel, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    points = _points(sel)
    panels = [t for t in [*sel.tasks, "avg"] if points.get(t)]
    if not panels:
        raise BenchError("no ok run has both a score and a parameter count: nothing to plot")
    nrows, ncols = _grid(len(panels))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    colors = {row: plt.cm.tab10(i % 10) for i, row in enumerate(sel.rows)}
    for ax, task in zip(axes.flat, panels):
        for row, p, mean, std in points[task]:
            ax.errorbar([p], [mean], yerr=[std] if std else None, fmt="o", color=colors[row], capsize=3, label=row)
            ax.annotate(row, (p, mean), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: readable, and far cheaper to lay out
        title = "average over tasks" if task == "avg" else sel.task_labels.get(task, task)
        metric = "" if task == "avg" else f" ({sel.metrics.get(task) or 'main metric'})"
        ax.set_title(title + metric, fontsize=10)
        ax.set_xlabel("trainable parameters (method + head, log)")
        ax.set_ylabel("score x100")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.suptitle(_title(sel, "score vs trainable parameters"), fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.97, top=1 - 0.55 / fig.get_figheight(), bottom=0.9 / fig.get_figheight(),
                        wspace=0.28, hspace=0.45)  # fixed margins: tight_layout measures every tick label
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    from bench.config.compose import compose
    from bench.table import gap_lines, select, split_filters

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
