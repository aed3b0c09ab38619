"""The table model (bench.analysis.table.model): built once from the records, rendered to Markdown and to the HTML
report, and the same numbers in both - the page reads the model's numbers, it never parses a rendered string."""

import html
import json
import re
import statistics
from pathlib import Path

import pytest
from conftest import ROOT

from bench.analysis import stats
from bench.analysis.table import frame as table_frame
from bench.analysis.table import model as table_model
from bench.analysis.table import protocol as table_protocol
from bench.analysis.table import render as table_render
from bench.records import store as records
from bench.report import command

TASKS = ["rte", "sst2"]
ROWS = {"lora": 1_234_567, "ia3": 16_898}   # trainable (method); the head adds 1,538


def score(method: str, task: str, seed: int) -> float:
    return round(0.55 + 0.07 * (method == "ia3") + 0.1 * TASKS.index(task) + 0.0123 * seed ** 1.5, 6)


def plant(folder: Path) -> Path:
    """2 methods x 2 tasks x 3 seeds (ia3 / sst2 has 2 seeds), every run measuring forgetting."""
    for m, trainable in ROWS.items():
        for t in TASKS:
            for seed in (1, 2, 3):
                if (m, t, seed) == ("ia3", "sst2", 3):
                    continue
                cfg = {"method": {"name": m}, "task": {"name": t}, "model": {"name": "tiny"}, "seed": seed,
                       "experiment_name": None}
                chash = records.config_hash(cfg)
                s = score(m, t, seed)
                records.write_json_atomic(records.record_path(folder, cfg, chash), {
                    "schema": 1, "status": "ok", "method": m, "task": t, "model": "tiny", "seed": seed,
                    "config_hash": chash, "config": cfg, "main_metric": "accuracy", "main_score": s,
                    "metrics": {"accuracy": s},
                    "params": {"trainable": trainable + 1538, "trainable_method": trainable, "trainable_head": 1538,
                               "total": 10**7},
                    "train": {"loss_curve": [[1, 0.7], [2, 0.6]], "final_loss": 0.6, "steps": 2,
                              "step_time_median_s": 0.1},
                    "forgetting": {"increase": round(0.01 * seed + 0.001 * len(m), 6)}})
    return folder


def markdown_rows(md: str) -> dict[str, list[str]]:
    lines = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("|--")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(head, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}


def html_row(page: str, label: str) -> list[tuple[str, str]]:
    """(data-value, shown text) of every cell of the main table's row `label`, in column order."""
    tr = re.search(r'<tr class="method-row[^"]*" data-row="%s".*?</tr>' % re.escape(label), page, re.S).group(0)
    return [(v, html.unescape(t)) for v, t in
            re.findall(r'<td[^>]*data-value="([^"]*)"[^>]*>\s*<span class="cell-main">([^<]*)</span>', tr)]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model")
    runs = plant(tmp / "runs")
    sel = table_protocol.select([f"results_dir={runs}"], runs)
    table = table_render.build(sel, table_frame.cell_stats(sel))
    page, _ = command.build([f"results_dir={runs}", f"report_dir={tmp / 'report'}"])
    return table, table_model.to_markdown(table), page.read_text()


def test_the_model_holds_the_numbers_of_the_records(rendered):
    table, _, _ = rendered
    row = next(r for r in table.rows if r.label == "ia3")
    xs = [score("ia3", "sst2", s) * 100 for s in (1, 2)]
    cell = row.cells["sst2"]
    assert cell.value == pytest.approx(statistics.mean(xs)) and cell.std == pytest.approx(statistics.stdev(xs))
    assert cell.n == 2 and cell.trainable == 16_898 + 1538
    _, _, low, high = stats.t_interval(xs)  # the 95% t-interval over seeds, which the report's figures draw
    assert (cell.low, cell.high) == (pytest.approx(low), pytest.approx(high)) and low < cell.value < high
    assert row.cells["seeds"].value == 3 and row.cells["trainable"].value == 16_898
    assert row.cells["forgetting"].value == pytest.approx(statistics.mean(0.01 * s + 0.003 for s in (1, 2, 3, 1, 2)))
    csv = table.csv()  # the long form: the same numbers
    line = csv[(csv["row"] == "ia3") & (csv["task"] == "sst2")].iloc[0]
    assert line["mean"] == cell.value and line["std"] == cell.std and line["n"] == 2


def test_markdown_and_html_show_the_same_numbers(rendered):
    """Every cell: the same text in Markdown and on the page, and the page's number (what a column sorts by) is the
    model's number - the mean behind "64.52 ± 1.07", the 3 seeds of "1,2,3" (a parse of that string reads 123), the
    method's 1,234,567 trainable parameters, the exact forgetting mean behind "+0.023 (n=3)"."""
    table, md, page = rendered
    shown = markdown_rows(md)
    for row in table.rows:
        cells = html_row(page, row.label)
        columns = [*table.tasks, *table.extra]
        assert len(cells) == len(columns)
        for col, (value, text) in zip(columns, cells):
            cell = row.cells[col.key]
            assert text == shown[row.label][col.label] == cell.text
            assert (float(value) if value else None) == (None if cell.value is None else pytest.approx(cell.value))
        by_label = dict(zip([c.label for c in columns], cells))
        runs = [(t, s) for t in TASKS for s in (1, 2, 3) if (row.label, t, s) != ("ia3", "sst2", 3)]
        assert float(by_label["Seeds"][0]) == 3 and by_label["Seeds"][1] == "1,2,3"
        assert float(by_label["Trainable (method + head)"][0]) == ROWS[row.label]
        assert float(by_label["Forgetting (Δ loss)"][0]) == pytest.approx(
            statistics.mean(0.01 * s + 0.001 * len(row.label) for _, s in runs))
        for t in TASKS:  # the task cells: the mean of the planted scores, shown to 2 decimals in both
            mean = statistics.mean(score(row.label, t, s) * 100 for tt, s in runs if tt == t)
            assert float(by_label[t][0]) == pytest.approx(mean)
            assert shown[row.label][t].startswith(f"{mean:.2f}")


def test_study_page_reads_the_study_table_model():
    """The committed study: the page's main-table cells are the texts of the model summary.md prints, and their
    numbers (means, significance marks) are the model's."""
    from bench.analysis import study_report, study_table
    from bench.report import gather, sources

    recs_file = ROOT / "results" / "studies" / "glue_study_cpu" / "records.jsonl.gz"
    st = study_table.build(["experiment=glue_study_cpu"], recs_file, n_boot=200)
    table = study_report.study_table(st)
    shown = markdown_rows(table_model.to_markdown(table))
    rep = gather.from_study(["experiment=glue_study_cpu"], recs_file, sources.read(recs_file), n_boot=200)
    for row in rep.rows:
        model_row = next(r for r in table.rows if r.label == row["label"])
        for col in table.tasks:
            cell = model_row.cells[col.key]
            assert row["cells"][col.key]["text"] == shown[row["label"]][col.label] == cell.text
            assert row["cells"][col.key]["sort"] == cell.value and row["cells"][col.key]["sig"] == cell.sig
            mark = {"up": "▲", "down": "▼", "tie": "≈", None: "ref"}[cell.sig]
            assert f" {mark} " in cell.text
        for col in table.extra:
            assert row["extra"][col.label]["text"] == shown[row["label"]][col.label]
            assert row["extra"][col.label]["sort"] == model_row.cells[col.key].value
    assert json.dumps([b["label"] for b in rep.baseline]) == '["majority class"]'


def test_the_pareto_figures_plot_the_models_numbers(rendered, tmp_path):
    """The report's figure cells (a mean with its interval per row and task) are the table model's cells, and the
    figure's mean marker and error bar carry them."""
    from bench.report import figures, gather, sources

    table, _, _ = rendered
    runs = plant(tmp_path / "runs")
    rep = gather.from_table([f"results_dir={runs}"], runs, sources.read(runs))
    assert len(rep.cells) == len(table.rows) * len(TASKS)
    for c in rep.cells:
        cell = next(r for r in table.rows if r.label == c["row"]).cells[c["task"]]
        assert (c["mean"], c["std"], c["lo"], c["hi"]) == (cell.value, cell.std, cell.low, cell.high)
    fig = json.loads(next(f["json"] for f in figures.build(rep)["pareto"] if f["task"]["key"] == "sst2"))
    mean = next(t for t in fig["data"] if t["meta"] == {"row": "ia3", "model": "tiny", "task": "sst2", "kind": "mean"})
    cell = next(r for r in table.rows if r.label == "ia3").cells["sst2"]
    assert mean["y"] == [pytest.approx(cell.value)]
    assert mean["error_y"]["array"] == [pytest.approx(cell.high - cell.value)]
    assert mean["error_y"]["arrayminus"] == [pytest.approx(cell.value - cell.low)]
