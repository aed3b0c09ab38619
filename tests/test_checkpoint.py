"""Mid-run checkpoints and exact resume; one claim per config (bench/run/checkpoint.py, bench/run/locks.py)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli, run_cli_here

BASE = ["model=tiny-bert", "task=rte", "train.batch_size=4", "train.logging_steps=1", "train.progress=false",
        "train.lr=5e-3"]
CASES = {
    # name: (overrides, step after which the first run is killed)
    "lora": (["method=lora", "train.max_steps=6"], 2),
    "propulsion": (["method=propulsion", "train.max_steps=6"], 4),
    "lora_dash_before_switch": (["method=lora_dash", "method.t=3", "method.s=2", "train.max_steps=6"], 2),
    "lora_dash_after_switch": (["method=lora_dash", "method.t=3", "method.s=2", "train.max_steps=6"], 4),
    "id3_mid_schedule": (["method=id3", "method.budget=2000", "train.max_steps=6"], 2),
    # a checkpoint at an epoch's last step is written before that epoch's evaluation: the resumed run makes it up
    "full_epoch_boundary": (["method=full", "train.epochs=2", "train.eval_strategy=epoch", "train.selection=best"], 6),
}


def _record(folder):
    files = list(Path(folder).glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def _same_result(a, b):
    assert b["train"]["loss_curve"] == a["train"]["loss_curve"]  # bit-identical on CPU with the same seed
    assert b["metrics"] == a["metrics"]
    assert b["predictions"] == a["predictions"]
    assert [h["step"] for h in b["eval_history"]] == [h["step"] for h in a["eval_history"]]
    assert b["config_hash"] == a["config_hash"]


@pytest.fixture(scope="module")
def references(tmp_path_factory, glue_dir):
    """Each case's configuration run once without interruption (and without checkpoints); cases that differ only
    in where they are killed share their reference."""
    out, by_args = {}, {}
    base = tmp_path_factory.mktemp("reference")
    for name, (args, _) in CASES.items():
        if tuple(args) not in by_args:
            r = run_cli(["run", *BASE, *args, f"data_dir={glue_dir}", f"results_dir={base / name}"])
            assert r.returncode == 0, r.stderr[-3000:]
            by_args[tuple(args)] = _record(base / name)
        out[name] = by_args[tuple(args)]
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_killed_run_resumes_to_the_same_result(case, references, tmp_path, glue_dir):
    args, kill_at = CASES[case]
    cmd = ["run", *BASE, *args, "train.save_every=2", f"data_dir={glue_dir}", f"results_dir={tmp_path}"]
    r = run_cli(cmd, env_extra={"BENCH_KILL_AFTER_CHECKPOINT": str(kill_at)})
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])  # SIGKILL: no record, checkpoints on disk
    assert not list(tmp_path.glob("*.json"))
    r = run_cli(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout and f"(optimizer step {kill_at})" in r.stdout
    assert "taking over a stale claim" in r.stdout  # the killed process never released its claim file
    rec = _record(tmp_path)
    assert rec["resume"]["from_step"] == kill_at and rec["train"]["segments"] == 2
    _same_result(references[case], rec)
    if case.startswith("lora_dash"):
        assert rec["method_state"]["switch_step"] == references[case]["method_state"]["switch_step"] == 3
    if case.startswith("id3"):
        for key in ("unmasked", "changed_entries", "steps", "updates_performed"):
            assert rec["method_state"][key] == references[case]["method_state"][key], key
    assert not any(p.is_dir() and p.name != ".claims" for p in tmp_path.iterdir())  # checkpoints deleted


@pytest.mark.parametrize("damage, why", [("corrupt", "checksum"), ("torn", "no manifest")])
def test_bad_newest_checkpoint_falls_back_to_the_previous(damage, why, references, tmp_path, glue_dir):
    args, _ = CASES["lora"]
    cmd = ["run", *BASE, *args, "train.save_every=2", f"data_dir={glue_dir}", f"results_dir={tmp_path}"]
    r = run_cli(cmd, env_extra={"BENCH_KILL_AFTER_CHECKPOINT": "4"})
    assert r.returncode == -9
    newest = next(tmp_path.glob("*/checkpoints/checkpoint-4"))
    if damage == "corrupt":
        f = newest / "run_state.safetensors"
        data = bytearray(f.read_bytes())
        data[-8:] = b"\xff" * 8
        f.write_bytes(bytes(data))
    else:
        (newest / "bench-checkpoint.json").unlink()
    r = run_cli(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint checkpoint-4 skipped" in r.stdout and why in r.stdout
    rec = _record(tmp_path)
    assert rec["resume"]["from_step"] == 2 and rec["resume"]["skipped"][0]["step"] == 4
    _same_result(references["lora"], rec)


def test_save_every_must_be_a_multiple_of_logging_steps(tmp_path, glue_dir):
    r = run_cli_here(["run", *BASE, "method=lora", "train.max_steps=6", "train.logging_steps=4", "train.save_every=6",
                      f"data_dir={glue_dir}", f"results_dir={tmp_path}"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "train.save_every=6 must be a multiple of train.logging_steps=4" in r.stderr
    assert not list(tmp_path.glob("*.json"))


# ------------------------------------------------------------------------------------------------
# claims
# ------------------------------------------------------------------------------------------------
HOLD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from bench.run.locks import claim
with claim(Path({record!r})):
    print("held", flush=True)
    time.sleep(60)
"""


def _record_name(tmp_path, glue_dir, args):
    from conftest import compose_cfg
    from bench.records import store as records
    from bench.run import runner

    cfg = compose_cfg([*args, f"data_dir={glue_dir}", f"results_dir={tmp_path}"])
    config = runner.plain(cfg)
    return records.record_path(cfg.results_dir, config, records.config_hash(config))


def test_a_held_claim_makes_a_second_process_skip_with_who_holds_it(tmp_path, glue_dir):
    args = [*BASE, "method=lora", "train.max_steps=2"]
    record = _record_name(tmp_path, glue_dir, args)
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), record=str(record))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = run_cli(["run", *args, f"data_dir={glue_dir}", f"results_dir={tmp_path}"])
        assert r.returncode == 0, r.stderr[-2000:]
        assert "is being trained by" in r.stdout and f":{holder.pid} since" in r.stdout
        assert not record.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its claim is stale and the next run takes it over
    r = run_cli(["run", *args, f"data_dir={glue_dir}", f"results_dir={tmp_path}"])
    assert r.returncode == 0 and "taking over a stale claim" in r.stdout and f":{holder.pid}" in r.stdout
    assert json.loads(record.read_text())["claim_taken_over"]["pid"] == holder.pid


@pytest.mark.parametrize("mode", ["skip", "wait"])
def test_two_concurrent_processes_train_a_config_once(mode, tmp_path, glue_dir):
    cmd = [sys.executable, "-m", "bench", "run", *BASE, "method=full", "train.max_steps=60", f"claim={mode}",
           f"data_dir={glue_dir}", f"results_dir={tmp_path}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    stdout = [o[0] for o in outs]
    trained = [s for s in stdout if "[bench] ok:" in s]
    assert len(trained) == 1, stdout
    skipped = [s for s in stdout if "[bench] skip:" in s]
    assert len(skipped) == 1, stdout
    assert len(list(tmp_path.glob("*.json"))) == 1


# ------------------------------------------------------------------------------------------------
# preemption through submitit: USR2 -> the job requeues itself -> the requeued job resumes
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.cluster
def test_submitit_local_job_preempted_by_usr2_requeues_and_resumes(tmp_path, glue_dir):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    job = [*BASE, "method=full", "train.max_steps=300", "train.logging_steps=10", f"data_dir={glue_dir}"]
    ref = run_cli(["run", *job, f"results_dir={tmp_path}/ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    cmd = [sys.executable, "-m", "bench", "run", "-m", "launcher=submitit_local", *job, "train.save_every=10",
           f"results_dir={tmp_path}/runs", f"hydra.sweep.dir={tmp_path}/sweep"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    sweep = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list((tmp_path / "runs").glob("*/checkpoints/*/bench-checkpoint.json")):
            time.sleep(0.05)
        claim = next((tmp_path / "runs" / ".claims").glob("*.claim.json"))
        pid = json.loads(claim.read_text())["pid"]  # the submitit task's process, which trains
        os.kill(pid, signal.SIGUSR2)  # submitit's preemption / timeout signal
        out, err = sweep.communicate(timeout=600)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, err[-3000:]
    rec = _record(tmp_path / "runs")
    assert rec["status"] == "ok" and rec["resume"]["from_step"] >= 10 and rec["train"]["segments"] == 2
    _same_result(_record(tmp_path / "ref"), rec)
    logs = "".join(p.read_text() for p in (tmp_path / "sweep").glob(".submitit/*/*_log.*"))
    assert "Requeued job" in logs or "requeue" in logs.lower()
