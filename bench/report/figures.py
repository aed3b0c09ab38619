"""The page's plotly figures, as JSON: a Pareto view per task (score against trainable parameters, median step
time or peak memory, switched by plotly's own dropdown; one point per seed, the mean with its 95% interval) and
one loss-curve figure per cell. Drawn in the browser by the inlined plotly.js."""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative

AXES = (  # run key, axis title, axis type
    ("trainable", "trainable parameters (method + head, log)", "log"),
    ("step_ms", "median optimizer step time (ms)", "linear"),
    ("peak_mb", "process peak RSS (MB)", "linear"),
)
PALETTE = qualitative.D3 + qualitative.Set2


def colors(labels: list[str]) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def hover(run: dict) -> str:
    """Which run, its score and costs, and its settings (escaped: plotly renders hover text as HTML)."""
    e = html.escape
    head = [f"<b>{e(str(run['row']))}</b> · {e(str(run['task']))} · seed {e(str(run['seed']))}",
            f"score {_fmt(run['score'])} ({e(str(run['main_metric']))} x100)",
            f"trainable {_fmt(run['trainable'], ',.0f')} · step {_fmt(run['step_ms'], '.0f')} ms · "
            f"peak {_fmt(run['peak_mb'], '.0f')} MB"]
    cfg = [f"{e(k)}={e(str(v))}" for k, v in run["config"].items()]
    lines = [", ".join(cfg[i:i + 3]) for i in range(0, len(cfg), 3)]
    return "<br>".join([*head, *lines, f"hash {e(str(run['hash']))}"])


def _median(xs: list) -> Any:
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def pareto(task: dict, cells: list[dict], runs: dict[str, dict], color: dict[str, str]) -> str:
    """One task's figure: per row a trace of its seeds and a trace of its mean (meta says which, for the page's
    filters and tests)."""
    fig = go.Figure()
    xs_by_axis: dict[str, list] = {key: [] for key, _, _ in AXES}
    for cell in cells:
        rs = [runs[i] for i in cell["runs"] if runs[i]["score"] is not None]
        if not rs:
            continue
        meta = {"row": cell["row"], "model": cell["model"], "task": task["key"]}
        c = color[cell["row"]]
        fig.add_trace(go.Scatter(
            x=[r[AXES[0][0]] for r in rs], y=[r["score"] for r in rs], mode="markers", name=cell["row"],
            legendgroup=cell["row"], showlegend=False, marker={"color": c, "size": 8, "opacity": 0.55},
            customdata=[[r["id"], hover(r)] for r in rs], hovertemplate="%{customdata[1]}<extra></extra>",
            meta={**meta, "kind": "seed"}))
        for key, _, _ in AXES:
            xs_by_axis[key].append([r[key] for r in rs])
        err = None
        if cell["lo"] is not None and cell["mean"] is not None:
            err = {"type": "data", "symmetric": False, "array": [cell["hi"] - cell["mean"]],
                   "arrayminus": [cell["mean"] - cell["lo"]], "color": c, "thickness": 1.5, "width": 5}
        mean_hover = (f"<b>{html.escape(str(cell['row']))}</b> · {html.escape(task['label'])}<br>mean "
                      f"{_fmt(cell['mean'])} over {len(rs)} seed(s)"
                      + (f", 95% interval [{cell['lo']:.2f}, {cell['hi']:.2f}]" if err else "")
                      + f"<br>{html.escape(cell['text'])}")
        fig.add_trace(go.Scatter(
            x=[_median([r[AXES[0][0]] for r in rs])], y=[cell["mean"]], mode="markers", name=cell["row"],
            legendgroup=cell["row"], marker={"color": c, "size": 13, "symbol": "diamond",
                                             "line": {"color": "#222", "width": 1}},
            error_y=err, customdata=[[None, mean_hover]], hovertemplate="%{customdata[1]}<extra></extra>",
            meta={**meta, "kind": "mean"}))
        for key, _, _ in AXES:
            xs_by_axis[key].append([_median([r[key] for r in rs])])
    buttons = [{"label": title.split(" (")[0], "method": "update",
                "args": [{"x": xs_by_axis[key]}, {"xaxis.type": kind, "xaxis.title.text": title}]}
               for key, title, kind in AXES]
    fig.update_layout(
        title={"text": task["label"], "font": {"size": 14}, "x": 0.02, "xanchor": "left"},
        xaxis={"type": AXES[0][2], "title": {"text": AXES[0][1]}}, yaxis={"title": {"text": "score x100"}},
        height=380, margin={"l": 55, "r": 10, "t": 70, "b": 50}, template="plotly_white",
        legend={"font": {"size": 10}}, hoverlabel={"align": "left", "font": {"size": 11}},
        updatemenus=[{"buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right", "y": 1.2,
                      "yanchor": "top", "showactive": True}])
    return pio.to_json(fig, validate=True)


def loss_curves(cell: dict, runs: dict[str, dict]) -> str:
    """The training loss of the cell's seeds, the chosen evaluation's step marked."""
    fig = go.Figure()
    for i, rid in enumerate(cell["runs"]):
        r = runs[rid]
        if not r["loss_curve"]:
            continue
        c = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=[p[0] for p in r["loss_curve"]], y=[p[1] for p in r["loss_curve"]],
                                 mode="lines", name=f"seed {r['seed']}", line={"color": c, "width": 1.5}))
        step = r["chosen"].get("step")
        if step is not None:
            fig.add_vline(x=step, line={"color": c, "dash": "dot", "width": 1})
    fig.update_layout(height=260, margin={"l": 50, "r": 10, "t": 30, "b": 40}, template="plotly_white",
                      title={"text": "training loss (dotted: the chosen evaluation's step)", "font": {"size": 12}},
                      xaxis={"title": {"text": "optimizer step"}}, yaxis={"title": {"text": "loss"}})
    return pio.to_json(fig, validate=True)


def build(report) -> dict[str, Any]:
    """{'pareto': [{task, json}], 'loss': {cell index: json}}."""
    color = colors([r["label"] for r in report.rows])
    out: dict[str, Any] = {"pareto": [], "loss": {}}
    for task in report.tasks:
        cells = [c for c in report.cells if c["task"] == task["key"] and c["runs"]]
        if cells:
            out["pareto"].append({"task": task, "json": pareto(task, cells, report.runs, color)})
    for i, cell in enumerate(report.cells):
        if any(report.runs[r]["loss_curve"] for r in cell["runs"]):
            out["loss"][i] = loss_curves(cell, report.runs)
    return out
