"""The pilot (bench/run/pilot.py): the budget rule on planted curves, the command on planted records, bad input."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, run_cli_here

from bench.errors import BenchError
from bench.run.pilot import _options, choose_budget, plan

TOL = 0.01


def test_smallest_budget_where_both_are_within_a_point_of_their_best():
    curves = {"full": {1: 0.80, 2: 0.845, 4: 0.85, 8: 0.852}, "lora": {1: 0.70, 2: 0.83, 4: 0.842, 8: 0.84}}
    b = choose_budget(curves, TOL)
    assert (b.budget, b.settled) == (4, True)  # at 2 lora is 0.012 below its best 0.842
    assert b.best == {"full": (0.852, 8), "lora": (0.842, 4)}


def test_a_plateau_reached_early_gives_the_early_budget():
    b = choose_budget({"full": {1: 0.5, 2: 0.6, 4: 0.595}, "lora": {1: 0.58, 2: 0.59, 4: 0.585}}, TOL)
    assert (b.budget, b.settled) == (2, True)


def test_still_rising_at_the_largest_budget_is_not_settled():
    b = choose_budget({"full": {1: 0.1, 2: 0.2, 4: 0.28}, "lora": {1: 0.05, 2: 0.15, 4: 0.3}}, TOL)
    assert (b.budget, b.settled) == (4, False)
    assert "add 8 epochs" in b.why


def test_within_tolerance_is_inclusive_and_ties_take_the_smaller_budget():
    b = choose_budget({"full": {1: 0.79, 2: 0.80}, "lora": {1: 0.70, 2: 0.70}}, TOL)
    assert b.budget == 1 and b.settled  # 0.79 >= 0.80 - 0.01 (within the tolerance counts)
    assert b.best["lora"] == (0.70, 1)


def test_methods_peaking_apart_take_the_smallest_shortfall_unsettled():
    b = choose_budget({"full": {1: 0.9, 2: 0.8, 4: 0.7}, "lora": {1: 0.6, 2: 0.7, 4: 0.8}}, TOL)
    assert (b.budget, b.settled) == (2, False)
    assert "peak at different budgets" in b.why


def test_a_budget_missing_for_one_method_is_no_candidate():
    b = choose_budget({"full": {1: 0.5, 2: 0.7, 4: 0.71}, "lora": {1: 0.5, 4: 0.70}}, TOL)
    assert b.budget == 4  # 2 is not known for lora
    assert choose_budget({"full": {1: 0.5}, "lora": {}}, TOL).budget is None


def _plant(points, scores, tmp_path):
    for p in points:
        dev = scores.get((p.task, p.method, p.budget))
        if dev is None:
            continue
        rec = {"status": "ok", "config_hash": p.hash, "main_metric": "accuracy", "main_score": dev - 0.02,
               "selection": {"dev_score": dev}, "wall_s": 100.0 * p.budget, "task": p.task, "method": p.method,
               "train": {"steps": int(10 * p.budget), "step_time_median_s": 0.5},
               "data": {"dev": {"class_counts": {"0": 60, "1": 40}}}}
        p.path.parent.mkdir(parents=True, exist_ok=True)
        p.path.write_text(json.dumps(rec))


def test_command_on_planted_records(tmp_path):
    args = ["experiment=glue_pilot_cpu", "task=rte,mrpc", f"results_dir={tmp_path}/runs"]
    _, points, tasks = plan(args)
    assert tasks == ["rte", "mrpc"] and len(points) == 2 * 2 * 3  # tasks x methods x budgets 1, 2, 4
    assert len({p.hash for p in points}) == len(points)
    scores = {}
    for p in points:
        if p.task == "rte":
            scores[(p.task, p.method, p.budget)] = {1: 0.55, 2: 0.60, 4: 0.605}[p.budget]
        elif p.budget < 4:  # mrpc: the 4-epoch runs still missing
            scores[(p.task, p.method, p.budget)] = {1: 0.70, 2: 0.75}[p.budget]
    _plant(points, scores, tmp_path)
    out = tmp_path / "pilot"
    r = run_cli_here(["pilot", *args, "pilot.run=false", f"pilot.out={out}"])
    assert r.returncode == 0, r.stderr
    assert "rte: 2 epoch(s) - every method within 0.01" in r.stdout
    assert "mrpc: 2 epoch(s) (not settled)" in r.stdout
    lines = {ln.split(":")[0]: ln for ln in r.stdout.splitlines() if ln.startswith("[pilot] ")}
    assert "full, lora never leave(s) chance on dev (0.600)" in lines["[pilot] rte"]  # 0.605 is within 0.01 of 0.6
    assert "never leave" not in lines["[pilot] mrpc"]
    md = (out / "pilot.md").read_text()
    assert "| rte | full | 2 | 0.600 | 0.580 | 0.600 |" in md  # chance on dev = majority share 60 / 100
    assert (out / "pilot.png").stat().st_size > 1000
    import yaml

    assert yaml.safe_load((out / "budgets.yaml").read_text()) == {
        "study": {"task_cfg": {"rte": {"train": {"epochs": 2.0}}, "mrpc": {"train": {"epochs": 2.0}}}}}
    import gzip

    assert len(gzip.open(out / "records.jsonl.gz", "rt").read().splitlines()) == 10


def test_a_method_that_never_leaves_chance_is_named(tmp_path):
    args = ["experiment=glue_pilot_cpu", "task=rte", f"results_dir={tmp_path}/runs"]
    _, points, _ = plan(args)
    _plant(points, {(p.task, p.method, p.budget): (0.6 if p.method == "lora" else 0.55 + 0.1 * p.budget / 4)
                    for p in points}, tmp_path)
    r = run_cli_here(["pilot", *args, "pilot.run=false", f"pilot.out={tmp_path}/out"])
    assert r.returncode == 0, r.stderr
    assert "lora never leave(s) chance on dev (0.600)" in r.stdout and "full never" not in r.stdout


def test_a_task_without_a_train_split_trains_nothing(tmp_path):
    """QNLI ships only its validation split in the data folder: one message, no run started."""
    data = tmp_path / "data" / "glue" / "qnli"
    data.mkdir(parents=True)
    r = run_cli(["pilot", "experiment=glue_pilot_cpu", "task=qnli", f"data_dir={tmp_path / 'data'}",
                 f"results_dir={tmp_path}/runs", f"pilot.out={tmp_path}/out"], env_extra={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: task qnli: the pilot trains on its 'train' split")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_bad_options():
    with pytest.raises(BenchError, match="unknown pilot option 'pilot.tolerence=0.02'"):
        _options(["experiment=glue_pilot_cpu", "pilot.tolerence=0.02"])
    with pytest.raises(BenchError, match="is not a float"):
        _options(["experiment=glue_pilot_cpu", "pilot.tolerance=abc"])
    with pytest.raises(BenchError, match="reads an experiment's sweep"):
        _options(["task=rte"])


def test_a_study_budget_the_pilot_has_not_set_stops_before_training():
    """glue5_study_cpu takes each task's epochs from the pilot ('???' until then): one message, no run."""
    from conftest import compose_cfg

    from bench.config import study
    from bench.run.preflight import check_sweep

    with pytest.raises(BenchError, match=r"study.task_cfg.rte leaves train.epochs unset \(\?\?\?\)"):
        study.apply_method_cfg(compose_cfg(["experiment=glue5_study_cpu", "task=rte", "method=lora"]))
    with pytest.raises(BenchError, match="the sweep was not started") as e:
        check_sweep(["experiment=glue5_study_cpu", "task=rte,cola", "study.task_cfg.cola.train.epochs=???"])
    assert str(e.value).count("leaves train.epochs unset") == 2
    with pytest.raises(BenchError, match="the sweep was not started") as e:  # RTE, left out by the pilot
        check_sweep(["experiment=glue5_study_cpu", "task=rte,cola"])
    assert str(e.value).count("leaves train.epochs unset") == 1 and "task_cfg.cola" not in str(e.value)
    cfg = compose_cfg(["experiment=glue5_study_cpu", "task=rte", "method=lora", "study.task_cfg.rte.train.epochs=3"])
    study.apply_method_cfg(cfg)
    assert cfg.train.epochs == 3


def test_committed_records_are_restored_so_the_pilot_resumes(tmp_path):
    """A fresh checkout has no results/runs/: bench pilot writes the committed records back where the sweep looks,
    so only the runs still missing would train."""
    import gzip

    args = ["experiment=glue_pilot_cpu", "task=rte", f"results_dir={tmp_path}/runs"]
    _, points, _ = plan(args)
    scores = {(p.task, p.method, p.budget): 0.6 for p in points if p.budget < 4}
    _plant(points, scores, tmp_path)
    from bench.records import store as R

    for p in points:  # planted records need a config that hashes to their name, as real ones have
        if p.path.is_file():
            from bench.config.compose import compose
            from bench.config.identity import run_identity

            rec = json.loads(p.path.read_text())
            ident = run_identity(compose(["experiment=glue_pilot_cpu", "task=rte", f"method={p.method}",
                                          f"train.epochs={p.budget:g}", "study.lr_index=0",
                                          f"results_dir={tmp_path}/runs"]))
            assert ident.hash == p.hash
            rec["config"] = ident.config
            R.write_json_atomic(p.path, rec)
    out = tmp_path / "pilot"
    assert run_cli_here(["pilot", *args, "pilot.run=false", f"pilot.out={out}"]).returncode == 0
    committed = gzip.open(out / "records.jsonl.gz", "rt").read().splitlines()
    assert len(committed) == 4
    import shutil

    shutil.rmtree(tmp_path / "runs")  # the next session's fresh checkout
    r = run_cli_here(["pilot", *args, "pilot.run=false", f"pilot.out={out}"])
    assert r.returncode == 0 and "restored 4 committed pilot record(s)" in r.stdout
    assert sorted(p.path.name for p in points if p.path.is_file()) == sorted(
        p.path.name for p in points if p.budget < 4)
