"""`bench table` / `bench plot`: paper layout, protocol matching by config hash, gaps listed, numbers x100."""

import json
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest

from bench.analysis.table import command as table_command
from bench.analysis.table import frame as table_frame
from bench.analysis.table import protocol as table_protocol
from bench.analysis.table import render as table_render
from bench.errors import BenchError
from bench.analysis.table import protocol
from bench.analysis.table.protocol import Selection
from bench.config.compose import compose
from bench.config.identity import run_identity
from bench.records import store as records

PAPER = table_protocol.load_paper("lora_dash_glue")


def write_record(folder: Path, config: dict, chash: str, *, status="ok", metrics=None, main_metric="accuracy",
                 trainable_method=1000, trainable_head=10, loss_curve=None, error=None) -> Path:
    metrics = metrics or {}
    rec = {
        "schema": 1,
        "status": status,
        "method": config["method"]["name"],
        "task": config["task"]["name"],
        "model": config["model"]["name"],
        "seed": int(config["seed"]),
        "config_hash": chash,
        "config": config,
        "main_metric": main_metric,
        "main_score": metrics.get(main_metric),
        "metrics": metrics,
        "params": {"trainable": trainable_method + trainable_head, "trainable_method": trainable_method,
                   "trainable_head": trainable_head, "total": 10**6, "trainable_pct": 0.1},
        "train": {"loss_curve": loss_curve or [[1, 0.7], [2, 0.6]], "final_loss": 0.6, "steps": 2},
    }
    if error:
        rec["error"] = error
    path = records.record_path(folder, config, chash)
    records.write_json_atomic(path, rec)
    return path


def plain_config(method, task, seed, model="tiny", **extra):
    cfg = {"method": {"name": method}, "task": {"name": task}, "model": {"name": model}, "seed": seed,
           "experiment_name": None, **extra}
    return cfg, records.config_hash(cfg)


# ------------------------------------------------------------------------------------------------
# records mode
# ------------------------------------------------------------------------------------------------
def test_records_mode_mean_std_x100_and_numbers_kept_as_printed(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed, acc in ((1, 0.50), (2, 0.52)):
        write_record(runs, *plain_config("lora_dash", "rte", seed), metrics={"accuracy": acc})
    write_record(runs, *plain_config("lora_dash", "sst2", 1), metrics={"accuracy": 0.90})
    write_record(runs, *plain_config("ia3", "rte", 1), metrics={"accuracy": 0.51})
    write_record(runs, *plain_config("ia3", "sst2", 1), status="failed", error="RuntimeError: boom")

    table_command.main([f"results_dir={runs}", f"+tables_dir={tmp_path / 'tables'}"])
    out = capsys.readouterr().out
    md = (tmp_path / "tables" / "summary.md").read_text()
    lines = {l.split("|")[1].strip(): l for l in md.splitlines() if l.startswith("| ")}
    assert "51.00 ± 1.41" in lines["lora_dash"]            # (50 + 52) / 2, sample std sqrt(2)
    assert "| 90.00 " in lines["lora_dash"]
    assert "| 70.50 " in lines["lora_dash"]                # Avg over rte and sst2
    assert "| 51.00 " in lines["ia3"]                      # not "51": numbers are not re-parsed
    assert lines["ia3"].split("|")[4].strip() == "-"       # no sst2 for ia3 (its run failed) -> no Avg
    assert "1,000 + 10" in lines["ia3"]
    assert "RuntimeError: boom" in out and "Failed: 1 run(s)" in out
    tex = (tmp_path / "tables" / "summary.tex").read_text()
    assert r"lora\_dash" in tex and r"$\pm$" in tex and r"\toprule" in tex
    csv = pd.read_csv(tmp_path / "tables" / "summary.csv")
    row = csv[(csv["row"] == "lora_dash") & (csv["task"] == "rte")].iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(51.0) and row["std"] == pytest.approx(2**0.5)


def test_records_mode_filters_by_method(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_record(runs, *plain_config("lora", "rte", 1), metrics={"accuracy": 0.6})
    write_record(runs, *plain_config("ia3", "rte", 1), metrics={"accuracy": 0.7})
    table_command.main([f"results_dir={runs}", f"+tables_dir={tmp_path / 't'}", "method=ia3"])
    md = (tmp_path / "t" / "summary.md").read_text()
    assert "| ia3 " in md and "| lora " not in md


def test_records_mode_says_when_a_cell_mixes_configs(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_record(runs, *plain_config("lora", "rte", 1), metrics={"accuracy": 0.6})
    write_record(runs, *plain_config("lora", "rte", 1, lr=0.1), metrics={"accuracy": 0.8})
    table_command.main([f"results_dir={runs}", f"+tables_dir={tmp_path / 't'}"])
    out = capsys.readouterr().out
    assert "| 70.00 " in out and "Mixed: 1 cell(s)" in out and "lora / rte seed 1: 2 configs" in out


# ------------------------------------------------------------------------------------------------
# the paper layout, computed from a hand-built selection (no composition)
# ------------------------------------------------------------------------------------------------
def _selection(runs: pd.DataFrame, tasks, variant=None) -> Selection:
    rows = [r for r in PAPER["rows"] if r["label"] in ("LoRA-Dash", "Full FT")]
    return Selection(mode="experiment", runs=runs, rows=[r["label"] for r in rows], tasks=list(tasks),
                     task_labels={t: PAPER["tasks"][t]["label"] for t in tasks},
                     metrics={t: PAPER["tasks"][t]["metric"] for t in tasks}, seeds=[1, 2, 3], paper=PAPER,
                     row_specs={r["label"]: r for r in rows},
                     meta={"experiment": "x", "model": "m", "selection": "best", "eval_strategy": "epoch",
                           "extra_overrides": [], "variant": variant})


def _dash_runs(tasks, shift=1.0, drop=()):
    reported = next(r for r in PAPER["rows"] if r["label"] == "LoRA-Dash")["reported"]
    out = []
    for t in tasks:
        for seed, jitter in ((1, -0.5), (2, 0.0), (3, 0.5)):
            if (t, seed) in drop:
                continue
            v = (reported[t] + shift + jitter) / 100
            out.append({"row": "LoRA-Dash", "task": t, "seed": seed, f"metric.{PAPER['tasks'][t]['metric']}": v,
                        "main_score": v, "trainable_method": 295_104, "trainable_head": 1538, "trainable": 296_642,
                        "loss_curve": [[1, 0.9], [2, 0.5]]})
    return pd.DataFrame(out)


def test_paper_lines_and_delta():
    tasks = list(PAPER["tasks"])
    sel = _selection(_dash_runs(tasks), tasks)
    stats = table_frame.cell_stats(sel)
    dash = stats[stats["row"] == "LoRA-Dash"].set_index("task")
    for t in tasks:
        assert dash.loc[t, "delta"] == pytest.approx(1.0)
        assert dash.loc[t, "std"] == pytest.approx(0.5)
    assert dash.loc["avg", "mean"] == pytest.approx(89.6475 + 1.0)
    assert dash.loc["avg", "delta"] == pytest.approx(89.6475 + 1.0 - 89.65)
    shown = table_render.display_table(sel, stats)
    labels = list(shown["Method"])
    i = labels.index("LoRA-Dash")
    assert labels[i + 1] == "↳ paper" and labels[i + 2].startswith("↳ Δ")
    assert shown.iloc[i + 1]["MNLI"] == "90.14" and shown.iloc[i + 1]["Avg"] == "89.65"
    assert shown.iloc[i + 2]["RTE"] == "+1.00" and shown.iloc[i + 2]["Avg"] == "+1.00"
    assert shown.iloc[i]["Trainable (method + head)"] == "295,104 + 1,538"
    # Full FT has no runs: its own line is all '-', and its reported average is still shown beside
    j = labels.index("Full FT")
    assert shown.iloc[j]["MNLI"] == "-" and shown.iloc[j + 1]["Avg"] == "88.27" and shown.iloc[j + 2]["Avg"] == "-"


def test_fewer_seeds_are_marked_and_subset_average_not_compared():
    tasks = ["rte", "mrpc"]
    sel = _selection(_dash_runs(tasks, drop={("rte", 3)}), tasks)
    stats = table_frame.cell_stats(sel)
    shown = table_render.display_table(sel, stats)
    dash = shown[shown["Method"] == "LoRA-Dash"].iloc[0]
    assert dash["RTE"].endswith("(n=2)")
    assert "(n=" not in dash["MRPC"]
    delta = shown[shown["Method"].str.startswith("↳ Δ")].iloc[0]
    assert delta["Avg"] == "-"  # two of eight columns: the paper's average is not comparable


def test_other_scale_variant_shows_paper_without_delta():
    tasks = ["rte"]
    sel = _selection(_dash_runs(tasks), tasks, variant="cpu")
    shown = table_render.display_table(sel, table_frame.cell_stats(sel))
    assert "↳ paper (full scale)" in list(shown["Method"])
    assert not any(m.startswith("↳ Δ") for m in shown["Method"])


def test_paper_files_are_valid_and_cite_their_source():
    files = sorted(table_protocol.PAPER_DIR.glob("*.yaml"))
    assert len(files) >= 5
    for f in files:
        spec = table_protocol.load_paper(f.stem)
        src = spec["source"]
        if "arxiv" in src:  # a paper's table; without it this suite's own rows (a pilot's), which report nothing
            assert re.fullmatch(r"\d{4}\.\d{5}", str(src["arxiv"])), f
        else:
            assert not any(row.get("reported") for row in spec["rows"]), f
        assert src.get("title") and src.get("table"), f
        for row in spec["rows"]:
            if row["overrides"] is None:  # a baseline this suite cannot run: it says why
                assert str(row["not_runnable"]).strip(), (f, row["label"])
                continue
            assert any(o.startswith("method=") for o in row["overrides"]), (f, row["label"])
            for v in (row.get("reported") or {}).values():
                assert 0 < float(v) <= 100, (f, row["label"])  # printed x100, never fractions


def test_unknown_paper_table_is_an_actionable_error():
    with pytest.raises(BenchError, match="known: .*lora_dash_glue"):
        table_protocol.load_paper("no_such_table")


# ------------------------------------------------------------------------------------------------
# experiment mode end to end: configs composed like `bench run`, matched by hash
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # ~4 Hydra compositions per side: a few seconds, more on a loaded machine
def test_experiment_mode_matches_by_hash_and_lists_gaps(tmp_path, capsys):
    runs = tmp_path / "runs"
    exp = ["experiment=lora_dash_glue", "method=lora_dash_glue"]
    reported = next(r for r in PAPER["rows"] if r["label"] == "LoRA-Dash")["reported"]
    cells = {}
    for task in ("rte", "mrpc"):
        cfg = compose([*exp, f"task={task}"])
        for seed in (1, 2, 3):
            cfg.seed = seed
            identity = run_identity(cfg)
            cells[(task, seed)] = identity.config, identity.hash
    off_cfg = compose([*exp, "task=rte", "train.max_steps=5"])
    off_cfg.seed = 1
    off = run_identity(off_cfg).config, run_identity(off_cfg).hash
    for (task, seed), (config, chash) in cells.items():
        if (task, seed) == ("rte", 3):
            continue  # missing
        if (task, seed) == ("mrpc", 3):
            write_record(runs, config, chash, status="failed", error="ValueError: injected")
            continue
        v = (reported[task] + 1.0) / 100
        write_record(runs, config, chash, metrics={"accuracy": v})
    write_record(runs, *off, metrics={"accuracy": 0.99})  # same experiment, other settings

    table_command.main([*exp, "task=rte,mrpc", f"results_dir={runs}", f"+tables_dir={tmp_path / 't'}"])
    out = capsys.readouterr().out
    md = (tmp_path / "t" / "lora_dash_glue.md").read_text()
    dash = next(l for l in md.splitlines() if l.startswith("| LoRA-Dash"))
    assert f"{reported['rte'] + 1:.2f} ± 0.00 (n=2)" in dash  # the off-protocol 99.00 did not leak in
    assert "99.00" not in md.split("Missing")[0]
    assert "Off-protocol: 1 record(s)" in out and "train.max_steps=5 (protocol: None)" in out
    assert "ValueError: injected" in out
    assert "rte/seed3" in out and "mrpc/seed3 (failed)" in out

    # the printed command fills exactly the gaps: composing it gives the missing hashes
    cmd = next(l.strip() for l in out.splitlines() if l.strip().startswith("python -m bench run -m"))
    parts = shlex.split(cmd)[5:]
    sweep = {p.split("=", 1)[0]: p.split("=", 1)[1].split(",") for p in parts if p.split("=", 1)[0] in ("task", "seed")}
    fixed = [p for p in parts if p.split("=", 1)[0] not in ("task", "seed")]
    assert sweep == {"task": ["rte", "mrpc"], "seed": ["3"]}
    got = set()
    for task in sweep["task"]:
        cfg = compose([*fixed, f"task={task}"])
        cfg.seed = 3
        got.add(run_identity(cfg).hash)
    assert got == {cells[("rte", 3)][1], cells[("mrpc", 3)][1]}


# ------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------
def _plot_selection():
    tasks = ["rte", "mrpc"]
    runs = pd.concat([_dash_runs(tasks), _dash_runs(["rte"]).assign(row="Full FT", trainable=10**8)])
    return _selection(runs, tasks)


def test_plot_points():
    from bench.analysis import plot

    pts = plot._points(_plot_selection())
    assert [p[0] for p in pts["avg"]] == ["LoRA-Dash"]  # Full FT lacks MRPC: no average point
    dash = next(p for p in pts["rte"] if p[0] == "LoRA-Dash")
    assert dash[1] == 296_642 and dash[2] == pytest.approx(89.89 + 1.0) and dash[3] == pytest.approx(0.5)
    assert next(p for p in pts["rte"] if p[0] == "Full FT")[1] == 10**8


@pytest.mark.slow  # matplotlib renders four figures: seconds, tens of seconds on a loaded machine
def test_plot_pngs(tmp_path, capsys):
    from matplotlib.image import imread

    from bench.analysis import plot

    sel = _plot_selection()
    for f in (plot.score_vs_params(sel, tmp_path / "s.png"), plot.loss_curves(sel, tmp_path / "l.png")):
        img = imread(f)
        assert img.shape[0] > 200 and img.shape[1] > 400

    records_dir = tmp_path / "runs"
    for seed in (1, 2):
        write_record(records_dir, *plain_config("lora", "rte", seed), metrics={"accuracy": 0.6})
    plot.main([f"results_dir={records_dir}", f"+figures_dir={tmp_path / 'fig'}"])
    assert (tmp_path / "fig" / "runs_score_vs_params.png").stat().st_size > 5000
    assert (tmp_path / "fig" / "runs_loss_curves.png").stat().st_size > 5000
    assert "2 runs (1 methods x 1 tasks)" in capsys.readouterr().out


def test_runs_csv_is_flat(tmp_path):
    runs = tmp_path / "runs"
    write_record(runs, *plain_config("lora", "rte", 1), metrics={"accuracy": 0.6})
    table_command.main([f"results_dir={runs}", f"+tables_dir={tmp_path / 't'}"])
    csv = pd.read_csv(tmp_path / "t" / "runs.csv")
    assert "config" not in csv.columns and "loss_curve" not in csv.columns
    assert csv.loc[0, "metric.accuracy"] == pytest.approx(0.6)
    assert json.loads((runs / Path(csv.loc[0, "path"]).name).read_text())["status"] == "ok"


# ------------------------------------------------------------------------------------------------
# records -> frame in one place; composition through bench.config.compose
# ------------------------------------------------------------------------------------------------
def test_main_reads_the_records_once(tmp_path, monkeypatch):
    from bench.analysis.table import frame

    runs = tmp_path / "runs"
    write_record(runs, *plain_config("lora", "rte", 1), metrics={"accuracy": 0.6})
    calls = []
    real = frame.load_records

    def counting(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(frame, "load_records", counting)
    monkeypatch.setattr(table_command, "load_records", counting)
    monkeypatch.setattr(protocol, "load_records", counting)
    table_command.main([f"results_dir={runs}", f"+tables_dir={tmp_path / 't'}"])
    assert len(calls) == 1
    assert "| 60.00 " in (tmp_path / "t" / "summary.md").read_text()


def test_load_records_reads_gzip_and_json_lines_and_lists_unreadable_files(tmp_path):
    import gzip

    runs = tmp_path / "runs"
    path = write_record(runs, *plain_config("lora", "rte", 1), metrics={"accuracy": 0.6})
    rec = json.loads(path.read_text())
    with gzip.open(runs / "one.json.gz", "wt") as f:
        json.dump({**rec, "config_hash": "h2", "seed": 2}, f)
    with gzip.open(runs / "many.jsonl.gz", "wt") as f:
        for seed in (3, 4):
            f.write(json.dumps({**rec, "config_hash": f"h{seed}", "seed": seed}) + "\n")
    (runs / "torn.json").write_text("{not json")
    (runs / "perf__x.json").write_text(json.dumps({"kind": "perf", "config_hash": "p", "results": {}}))
    df = table_frame.load_records(runs)
    ok = df[df["status"] == "ok"]
    assert sorted(ok["seed"]) == [1, 2, 3, 4] and sorted(ok["main_score"]) == [0.6] * 4
    assert any(p.endswith("many.jsonl.gz:2") for p in ok["path"])
    bad = df[df["status"] == "unreadable"]
    assert list(bad["path"]) == [str(runs / "torn.json")] and "JSONDecodeError" in bad["error"].iloc[0]
    assert "p" not in set(df["config_hash"])  # a `bench perf` record is not a run
    assert df.loc[df["seed"] == 1, "record"].iloc[0]["config_hash"] == rec["config_hash"]  # the raw record, kept


def test_a_bad_override_is_one_bench_error():
    with pytest.raises(BenchError, match="cannot compose"):
        compose(["method=no_such_method"])
