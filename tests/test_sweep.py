"""Sweeps: launchers as one switch, resume by config hash, failures recorded, records never torn; experiments.

The slow tests run the issue's sweep for real (tiny-bert, RTE and SST-2 from ../shared/data, 3 methods x 2 tasks
x 2 seeds): through joblib (killed midway, then resumed; then a forced failure), submitit_local and Ray.
"""

import hashlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SHARED_DATA, compose_cfg, run_cli

from bench.errors import BenchError
from bench.records import store as records
from bench.run import runner

CONF = ROOT / "conf"
LAUNCHERS = {
    "local": "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "joblib": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "slurm": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "ray": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
}


def hydra_cfg(overrides):
    from bench.config.compose import compose

    return compose(list(overrides), hydra=True)


# ------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_switch_selects_an_importable_plugin(name):
    import importlib

    target = hydra_cfg([f"launcher={name}"]).hydra.launcher._target_
    assert target == LAUNCHERS[name]
    module, cls = target.rsplit(".", 1)
    assert isinstance(getattr(importlib.import_module(module), cls), type)  # the plugin imports with this hydra


def test_slurm_cluster_keys_are_there_and_overridable():
    cfg = hydra_cfg(["launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.array_parallelism=4"])
    launcher = cfg.hydra.launcher
    assert launcher.partition == "gpu" and launcher.array_parallelism == 4
    for key in ("gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "tasks_per_node", "setup", "account"):
        assert key in launcher, key
    assert "partition" in (ROOT / "docs" / "sweeps.md").read_text()


def test_launcher_files_override_hydra_launcher_globally():
    for f in sorted((CONF / "launcher").glob("*.yaml")):
        text = f.read_text()
        assert text.startswith("# @package _global_"), f
        if f.stem != "local":
            assert "override /hydra/launcher:" in text, f


# ------------------------------------------------------------------------------------------------
# resume / force / failures (the runner's logic, training stubbed out)
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def stub_training(monkeypatch):
    calls = []

    def fake(s, record, run_start):
        calls.append(int(s.cfg.seed))
        if float(s.cfg.train.weight_decay) == 0.5:  # the injected failure
            raise RuntimeError("injected failure")
        record["main_metric"] = "accuracy"
        record["main_score"] = 0.5
        record["metrics"] = {"accuracy": 0.5}

    monkeypatch.setattr(runner, "_train_and_evaluate", fake)
    return calls


def test_resume_skips_ok_records_force_reruns_failed_rerun(tmp_path, stub_training):
    from bench.config.compose import compose as compose_cfg

    base = ["method=lora", "task=rte", "model=tiny-bert", f"results_dir={tmp_path}", "train.progress=false"]
    first = runner.run(compose_cfg(base))
    path = Path(first["path"])
    stamp = path.stat().st_mtime_ns
    assert stub_training == [1] and json.loads(path.read_text())["status"] == "ok"

    again = runner.run(compose_cfg(base))  # same config hash, ok record: skipped
    assert stub_training == [1] and path.stat().st_mtime_ns == stamp and again["config_hash"] == first["config_hash"]

    runner.run(compose_cfg([*base, "train.num_threads=1", "train.logging_steps=1"]))  # non-semantic keys: still skip
    assert stub_training == [1]

    runner.run(compose_cfg([*base, "force=true"]))
    assert stub_training == [1, 1] and path.stat().st_mtime_ns != stamp

    other = runner.run(compose_cfg([*base, "train.lr=1e-3"]))  # another config: another record
    assert stub_training == [1, 1, 1] and Path(other["path"]) != path

    with pytest.raises(RuntimeError, match="injected"):
        runner.run(compose_cfg([*base, "train.weight_decay=0.5"]))
    failed = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    failed = [r for r in failed if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"] == "RuntimeError: injected failure" and failed[0]["traceback"]
    with pytest.raises(RuntimeError):  # a failed record is not "done": the rerun trains again
        runner.run(compose_cfg([*base, "train.weight_decay=0.5"]))
    assert len(stub_training) == 5


def test_invalid_config_is_recorded_in_a_sweep_but_not_in_a_single_run(tmp_path, stub_training):
    base = ["method=lora", "task=rte", "model=tiny-bert", f"results_dir={tmp_path}", "train.lr=-1"]
    with pytest.raises(BenchError, match="train.lr must be > 0"):
        runner.run(compose_cfg(base), sweep=False)
    assert not list(tmp_path.glob("*.json"))
    with pytest.raises(BenchError):
        runner.run(compose_cfg(base), sweep=True)
    (rec,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert rec["status"] == "failed" and "train.lr must be > 0" in rec["error"] and stub_training == []


@pytest.mark.slow  # a subprocess multirun: ~10 s of imports, more on a loaded machine
def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    """Both jobs are invalid (lr < 0): the second still runs after the first failed, each leaves a record;
    then the sweep exits 1 with one summary line."""
    r = run_cli(["run", "-m", "method=lora", "task=rte", "model=tiny-bert", "train.lr=-1,-2",
                 f"results_dir={tmp_path}/runs", f"hydra.sweep.dir={tmp_path}/sweep"])
    assert r.returncode == 1, r.stderr[-2000:]
    assert "[bench] sweep: 0 ok, 0 skipped, 2 failed; failed records: " in r.stderr
    recs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert sorted(x["config"]["train"]["lr"] for x in recs) == [-2.0, -1.0]
    assert all(x["status"] == "failed" and "train.lr must be > 0" in x["error"] for x in recs)
    assert r.stderr.count("run failed (the sweep goes on)") == 2


# ------------------------------------------------------------------------------------------------
# atomic records: concurrent writers never leave a torn file
# ------------------------------------------------------------------------------------------------
def _writer(folder: str, worker: int, n: int) -> None:
    big = "x" * 200_000
    for i in range(n):
        records.write_json_atomic(Path(folder) / "shared.json", {"worker": worker, "i": i, "pad": big})
        records.write_json_atomic(Path(folder) / f"own_{worker}.json", {"worker": worker, "i": i, "pad": big})


def test_concurrent_writers_never_tear_a_record(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        for f in tmp_path.glob("*.json"):
            rec = json.loads(f.read_text())  # raises on a partial file
            assert len(rec["pad"]) == 200_000
            reads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert reads > 0
    assert sorted(f.name for f in tmp_path.iterdir()) == ["own_0.json", "own_1.json", "own_2.json", "own_3.json",
                                                          "shared.json"]  # no temp file left behind
    assert all(json.loads((tmp_path / f"own_{w}.json").read_text())["i"] == 39 for w in range(4))


# ------------------------------------------------------------------------------------------------
# experiments: the papers' protocols
# ------------------------------------------------------------------------------------------------
def test_experiment_pins_the_protocol_and_may_set_root_keys():
    from bench.config.compose import compose

    rte = compose(["experiment=propulsion_glue_cpu", "task=rte"], hydra=True)
    stsb = compose(["experiment=propulsion_glue", "task=stsb"])
    # root keys set by an experiment reach the config (they did not while _self_ came last)
    assert rte.experiment_name == "propulsion_glue_cpu" and rte.data.max_train_samples == 256
    assert rte.model.name == "minilm" and rte.method.name == "propulsion" and rte.table_variant == "cpu"
    assert rte.train.lr == 2e-4 and rte.train.epochs == 3 and rte.task.max_length == 128  # per-task lr kept
    assert rte.train.eval_strategy == "epoch" and rte.train.selection == "last"
    assert rte.hydra.sweeper.params.task == "cola,sst2,qnli,rte"
    assert stsb.model.name == "roberta-base" and stsb.train.lr == 2e-5 and stsb.train.batch_size == 16
    assert stsb.train.epochs == 10 and stsb.train.scheduler == "cosine" and stsb.train.warmup_steps == 500


def test_every_experiment_has_a_paper_table_seeds_and_tasks():

    names = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert {"propulsion_glue", "lora_dash_glue", "id3_glue", "lora_dash_commonsense"} <= set(names)
    assert {f"{n}_cpu" for n in ("propulsion_glue", "lora_dash_glue", "id3_glue", "lora_dash_commonsense")} <= set(names)
    for name in names:
        text = (CONF / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name
        assert f"experiment_name: {name}" in text, name


def test_cpu_variants_only_use_tasks_whose_data_is_here(shared_data):
    from bench.config.compose import compose

    grids = {f.stem: compose([f"experiment={f.stem}"], hydra=True).hydra.sweeper.params.task
             for f in sorted((CONF / "experiment").glob("*_cpu.yaml"))}
    for name, grid in grids.items():
        for t in grid.split(","):
            task = yaml.safe_load((CONF / "task" / f"{t}.yaml").read_text())
            assert (shared_data / task["local_dir"]).is_dir(), (name, t)


@pytest.mark.slow  # about 40 Hydra compositions
def test_every_row_of_every_experiment_composes():
    from methods import available

    from bench.analysis.table.protocol import load_paper
    from bench.config.compose import compose
    from bench.config.overrides import merge_overrides

    have = set(available())
    for f in sorted((CONF / "experiment").glob("*.yaml")):
        root = compose([f"experiment={f.stem}"], hydra=True)
        if root.study.lr_grid:  # a study: every swept method at every grid entry (its rows are its methods)
            from omegaconf import OmegaConf

            from bench.config import study

            # budgets a pilot has still to set ('???', tests/test_pilot.py checks they stop a run): any value here
            pending = [f"study.task_cfg.{t}.{sec}.{k}=1" for t, node in (root.study.get("task_cfg") or {}).items()
                       for sec in node for k in node[sec] if OmegaConf.is_missing(node[sec], k)]
            for method in root.hydra.sweeper.params.method.split(","):
                for i in range(len(root.study.lr_grid[method])):
                    cfg = compose([f"experiment={f.stem}", f"method={method}", f"study.lr_index={i}", "seed=1",
                                   *pending])
                    study.resolve(cfg)
                    assert cfg.train.lr == root.study.lr_grid[method][i]
                    runner.validate_config(cfg)
                    runner.resolve_method(cfg)
            continue
        paper = load_paper(root.paper_table)
        first = root.hydra.sweeper.params.task.split(",")[0]
        for row in paper["rows"]:
            if row["overrides"] is None:  # not_runnable: the paper's numbers only
                continue
            extra = (row.get("variants") or {}).get(root.table_variant) or [] if root.table_variant else []
            overrides = merge_overrides([*row["overrides"], *extra])
            method = next(o.split("=", 1)[1] for o in overrides if o.startswith("method="))
            if not (CONF / "method" / f"{method}.yaml").is_file():
                continue
            cfg = compose([f"experiment={f.stem}", *overrides, f"task={first}"])
            assert cfg.method.name in have, (f.stem, row["label"])
            runner.validate_config(cfg)
            runner.resolve_method(cfg)  # the method accepts the row's options


# ------------------------------------------------------------------------------------------------
# the sweep, for real (slow)
# ------------------------------------------------------------------------------------------------
SWEEP = ["method=lora,ia3,full", "task=rte,sst2", "seed=1,2", "model=tiny-bert", "data.max_train_samples=32",
         "data.max_eval_samples=32", "train.max_steps=2", "train.progress=false", "train.num_threads=1",
         "train.logging_steps=1"]


def sweep_cmd(launcher, out: Path, *extra):
    return [sys.executable, "-m", "bench", "run", "-m", f"launcher={launcher}", *SWEEP, *extra,
            f"results_dir={out / 'runs'}", f"hydra.sweep.dir={out / 'sweep'}", f"cache_dir={out / 'cache'}"]


def env():
    return {**os.environ, "BENCH_DATA_DIR": str(SHARED_DATA), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def expected_names(out: Path) -> set[str]:
    from bench.config.compose import compose
    from bench.config.identity import run_identity

    names = set()
    for m in ("lora", "ia3", "full"):
        for t in ("rte", "sst2"):
            cfg = compose([*(o for o in SWEEP if o.split("=")[0] not in ("method", "task", "seed")),
                           f"method={m}", f"task={t}", f"results_dir={out / 'runs'}"])
            for s in (1, 2):
                cfg.seed = s
                names.add(run_identity(cfg, out / "runs").path.name)
    return names


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in folder.glob("*.json")}


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory):
    """Start the joblib sweep, kill it (process group, SIGKILL) once 3 records exist, rerun it, then force a failure."""
    if not (SHARED_DATA / "glue" / "rte").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("joblib")
    runs = out / "runs"
    log = open(out / "first.log", "w")
    proc = subprocess.Popen(sweep_cmd("joblib", out), cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 1200
    while time.time() < deadline and proc.poll() is None and len(list(runs.glob("*.json"))) < 3:
        time.sleep(0.5)
    killed_midway = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    before = snapshot(runs)
    kill_time_ns = time.time_ns()
    second = subprocess.run(sweep_cmd("joblib", out), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=1800)
    after = snapshot(runs)

    # a forced failure in a further sweep: a task whose label column does not exist (fails at run time)
    extra = out / "extra_conf" / "task"
    extra.mkdir(parents=True)
    (extra / "rte_broken.yaml").write_text("defaults:\n  - rte\n  - _self_\nname: rte_broken\nlabel_field: no_such_column\n")
    failing = [sys.executable, "-m", "bench", "run", "-m", "launcher=joblib", "method=lora,ia3", "task=rte,rte_broken",
               "seed=1", *SWEEP[3:], f"hydra.searchpath=[file://{out / 'extra_conf'}]", f"results_dir={runs}",
               f"hydra.sweep.dir={out / 'sweep3'}", f"cache_dir={out / 'cache'}"]
    third = subprocess.run(failing, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=1800)
    return {"out": out, "runs": runs, "killed_midway": killed_midway, "before": before, "after": after,
            "kill_time_ns": kill_time_ns, "second": second, "third": third, "final": snapshot(runs)}


@pytest.mark.slow
def test_joblib_sweep_killed_midway_resumes_only_the_missing_runs(joblib_sweep):
    s = joblib_sweep
    assert s["killed_midway"], "the sweep finished before it could be killed"
    assert s["second"].returncode == 0, s["second"].stderr[-3000:]
    before, after = s["before"], s["after"]
    assert 3 <= len(before) < 12
    assert set(after) == expected_names(s["out"])  # the 12 records, named by their config hashes
    for name, stamp in before.items():
        assert after[name] == stamp, f"{name} was rerun or rewritten"
    rerun = set(after) - set(before)
    assert len(rerun) == 12 - len(before)
    for name in rerun:
        assert after[name][0] > s["kill_time_ns"]
    out = s["second"].stdout + s["second"].stderr
    assert out.count("[bench] skip:") == len(before)
    assert out.count("[bench] ok:") == len(rerun)
    recs = [json.loads((s["runs"] / n).read_text()) for n in after]
    assert all(r["status"] == "ok" for r in recs)


@pytest.mark.slow
def test_forced_failure_is_recorded_and_leaves_other_records_intact(joblib_sweep):
    s = joblib_sweep
    third = s["third"]
    # the sweep went on, then exits non-zero with one summary line naming the failed records
    assert third.returncode == 1, third.stderr[-3000:]
    assert "[bench] sweep: 0 ok, 2 skipped, 2 failed; failed records: " in third.stderr
    assert third.stderr.count("rte_broken__") >= 2
    final = s["final"]
    for name, stamp in s["after"].items():
        assert final[name] == stamp, f"{name} changed"  # rte lora / ia3 seed 1 were skipped, nothing rewritten
    new = [json.loads((s["runs"] / n).read_text()) for n in set(final) - set(s["after"])]
    assert sorted(r["method"] for r in new) == ["ia3", "lora"]
    for r in new:
        assert r["task"] == "rte_broken" and r["status"] == "failed" and "no_such_column" in r["error"]
    assert (third.stdout + third.stderr).count("[bench] skip:") == 2


def _same_records_as_joblib(launcher, joblib_sweep, tmp_path):
    r = subprocess.run(sweep_cmd(launcher, tmp_path), cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=2400)
    if r.returncode != 0:  # say which job failed and why (submitit keeps each job's stderr in its folder)
        logs = sorted((tmp_path / "sweep").glob(".submitit/*/*_log.err"))
        tails = "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in logs if "Traceback" in p.read_text())
        pytest.fail(f"{launcher} sweep exited {r.returncode}\n{r.stderr[-3000:]}\n{tails}")
    ours = {p.name: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")}
    ref = {n: json.loads((joblib_sweep["runs"] / n).read_text()) for n in joblib_sweep["after"]}
    assert set(ours) == set(ref)  # same runs, same config hashes
    for name, rec in ours.items():
        assert rec["status"] == "ok"
        assert rec["main_score"] == ref[name]["main_score"]
        curve, ref_curve = rec["train"]["loss_curve"], ref[name]["train"]["loss_curve"]
        assert [s for s, _ in curve] == [s for s, _ in ref_curve]
        assert [v for _, v in curve] == pytest.approx([v for _, v in ref_curve], rel=1e-5)
        assert rec["params"] == ref[name]["params"]


@pytest.mark.slow
@pytest.mark.cluster
def test_submitit_local_sweep_writes_the_same_records(joblib_sweep, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    _same_records_as_joblib("submitit_local", joblib_sweep, tmp_path)
    assert list((tmp_path / "sweep" / ".submitit").iterdir())  # submitit's job folders


@pytest.mark.slow
@pytest.mark.cluster
def test_ray_sweep_writes_the_same_records(joblib_sweep, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    pytest.importorskip("ray")
    _same_records_as_joblib("ray", joblib_sweep, tmp_path)
