"""Issue 25's pilot (conf/experiment/ll_pilot_cpu.yaml, rows in results/paper/ll_pilot_cpu.yaml): its sixteen runs
compose to sixteen distinct configs; the generate and the log-likelihood run of one model differ only in how they
are scored (so they train the same way); every run reads the same evaluation rows; the committed records are the
protocol's runs. Compositions only: no model is loaded."""

from __future__ import annotations

import gzip
import json

import pytest

from bench.analysis.table import command as table_command
from bench.analysis.table import protocol
from bench.config.compose import compose
from bench.config.identity import run_identity
from bench.records import store as records
from conftest import ROOT

EXPERIMENT = "ll_pilot_cpu"
MODES = ("generate", "loglikelihood")


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, str], tuple[dict, str]]:
    """(row label, task) -> (config, hash), composed as `bench table experiment=ll_pilot_cpu` expects them."""
    root = compose([f"experiment={EXPERIMENT}"], hydra=True)
    spec = protocol.load_paper(str(root.paper_table))
    out = {}
    for row in spec["rows"]:
        for task in root.hydra.sweeper.params.task.split(","):
            cfg = compose([f"experiment={EXPERIMENT}", *row["overrides"], f"task={task}"])
            identity = run_identity(cfg)
            out[(row["label"], task)] = (identity.config, identity.hash)
    return out


def test_the_pilot_is_sixteen_distinct_runs(runs):
    assert len(runs) == 16  # (3 models x 2 modes + 2 models scored on their trained answer) x 2 tasks
    assert len({h for _, h in runs.values()}) == 16
    for (label, task), (cfg, _) in runs.items():
        assert cfg["experiment_name"] == EXPERIMENT and cfg["model"]["name"] == "smollm2"
        mode = "loglikelihood" if "log-likelihood" in label else "generate"
        assert cfg["task"]["eval_mode"] == mode and cfg["task"]["name"] == task, (label, task)
        assert (cfg["task"]["loglikelihood"]["prompt_format"] == "model") == label.endswith("trained answer")


def test_both_modes_of_a_model_train_the_same_way(runs):
    """A generate and a log-likelihood run of one model differ in the scoring keys only: same training, same rows."""
    pairs = [(m, "log-likelihood") for m in ("Zero-shot", "LoRA (r=32)", "LoRA-Dash (r=32)")]
    pairs += [(m, "log-likelihood of the trained answer") for m in ("Zero-shot", "LoRA (r=32)")]
    for model, scoring in pairs:
        for task in ("boolq", "arc_easy"):
            gen, ll = (protocol.flatten(records.semantic_config(runs[(f"{model}, {m}", task)][0])) for m in
                       ("generate", scoring))
            differ = {k for k in set(gen) | set(ll) if gen.get(k) != ll.get(k)}
            assert differ and all(k == "task.eval_mode" or k.startswith("task.loglikelihood.") for k in differ), \
                (model, task, sorted(differ))


def test_rows_are_the_methods_and_budgets_they_say(runs):
    for task in ("boolq", "arc_easy"):
        zero, lora, dash = (runs[(f"{m}, log-likelihood", task)][0] for m in ("Zero-shot", "LoRA (r=32)",
                                                                               "LoRA-Dash (r=32)"))
        assert zero["train"]["max_steps"] == 0 and zero["method"]["name"] == "lora"
        assert lora["train"]["max_steps"] == dash["train"]["max_steps"] == 40
        assert lora["method"]["name"] == "lora" and dash["method"]["name"] == "lora_dash"
        # LoRA-Dash is LoRA plus the dash term: the same rank, scaling, dropout and targets
        for key in ("r", "alpha", "dropout", "target_roles"):
            assert lora["method"][key] == dash["method"][key], key
        assert 0 < dash["method"]["t"] < dash["train"]["max_steps"]  # the dash phase happens within the run
        # one evaluation subsample and one training subsample for every row
        for cfg in (zero, lora, dash):
            assert cfg["data"]["max_eval_samples"] == 100 and cfg["data"]["subsample_seed"] == 0
            assert cfg["data"]["max_train_samples"] == 320 and cfg["train"]["forgetting"] is True


def test_committed_records_are_the_protocols_runs(runs):
    path = ROOT / "results" / "studies" / EXPERIMENT / "records.jsonl.gz"
    if not path.is_file():
        pytest.skip("no committed pilot records")
    with gzip.open(path, "rt") as f:
        recs = [json.loads(line) for line in f]
    expected = {h for _, h in runs.values()}
    assert recs and all(r["status"] == "ok" and r["config_hash"] in expected for r in recs)
    assert len({r["config_hash"] for r in recs}) == len(recs)


def test_a_planted_record_fills_its_cell_and_the_header_names_no_paper(runs, tmp_path, capsys):
    from test_table import write_record

    config, chash = runs[("LoRA (r=32), log-likelihood", "boolq")]
    write_record(tmp_path / "runs", config, chash, metrics={"accuracy": 0.58, "acc": 0.58, "acc_norm": 0.44})
    table_command.main([f"experiment={EXPERIMENT}", f"results_dir={tmp_path / 'runs'}", f"+tables_dir={tmp_path / 't'}"])
    out = capsys.readouterr().out
    md = (tmp_path / "t" / f"{EXPERIMENT}.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| LoRA (r=32), log-likelihood"))
    assert "58.00" in row
    assert "Rows: Pilot of issue 25" in md and "Paper:" not in md and "ours − paper" not in md and "↳" not in md
    assert "Missing: 15 of 16 expected runs" in out


def test_a_table_without_a_paper_reports_no_numbers(tmp_path, monkeypatch):
    import yaml

    from bench.errors import BenchError

    spec = yaml.safe_load((protocol.PAPER_DIR / f"{EXPERIMENT}.yaml").read_text())
    spec["rows"][0]["reported"] = {"boolq": 60.0}
    monkeypatch.setattr(protocol, "PAPER_DIR", tmp_path)
    monkeypatch.setattr(protocol, "REPO_ROOT", tmp_path)
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(BenchError, match=r"Zero-shot, generate\): reported numbers need a paper \(source.arxiv\)"):
        protocol.load_paper("own")
