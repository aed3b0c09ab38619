"""Data fingerprints in the record and the tables' provenance checks: a cell mixing data flagged, the hardware
beside step times (issue 26)."""

from __future__ import annotations

import hashlib
import json
import os

from bench.records import hardware, provenance, store as records
from conftest import compose_cfg
from test_precision import AVX2_ONLY, _plain, host


def test_a_run_records_precision_hardware_and_data_fingerprints(glue_dir, tmp_path, monkeypatch, capsys):
    from bench.run import runner

    host(monkeypatch, AVX2_ONLY)
    monkeypatch.setattr(hardware, "train_device", lambda: "cpu")
    base = ["model=tiny-bert", "method=lora", "task=rte", "train.max_steps=2", "train.batch_size=4",
            "train.progress=false", "data.max_eval_samples=8", f"data_dir={glue_dir}", f"results_dir={tmp_path}",
            f"cache_dir={tmp_path / 'cache'}"]
    rec = runner.run(compose_cfg([*base, "train.precision=auto"]), ["train.precision=auto"])
    assert rec["status"] == "ok"
    assert rec["precision"]["requested"] == "auto" and rec["precision"]["resolved"] == "fp32"
    assert rec["config"]["train"]["precision"] == "fp32"
    assert rec["config_hash"] == records.config_hash(_plain(compose_cfg([*base, "train.precision=fp32"])))
    assert rec["device"]["cpu_model"] == "AMD EPYC 7B12" and rec["device"]["cpu_flags"] == ["avx2"]
    assert rec["device"]["cpu_bf16"] is False
    train_file = glue_dir / "glue" / "rte" / "train.parquet"
    assert rec["data"]["fingerprints"]["train"] == "sha256:" + hashlib.sha256(train_file.read_bytes()).hexdigest()
    assert set(rec["data"]["fingerprints"]) == set(rec["data"]["sources"])
    assert "warning" not in capsys.readouterr().err

    rec = runner.run(compose_cfg([*base, "train.precision=bf16"]), ["train.precision=bf16"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "train.precision=bf16 on a CPU" in ln]
    assert len(err) == 1 and rec["status"] == "ok"  # warned once, and trained as asked
    assert rec["config"]["train"]["precision"] == "bf16"


# ------------------------------------------------------------------------------------------------
# data fingerprints
# ------------------------------------------------------------------------------------------------
def test_file_fingerprint_is_cached_by_path_size_and_mtime(tmp_path):
    f = tmp_path / "train.parquet"
    f.write_bytes(b"first copy")
    cache = tmp_path / "cache"
    want = hashlib.sha256(b"first copy").hexdigest()
    assert provenance.file_sha256(f, cache) == want
    (entry,) = (cache / "fingerprints").iterdir()
    held = json.loads(entry.read_text())
    entry.write_text(json.dumps({**held, "sha256": "from-the-cache"}))
    assert provenance.file_sha256(f, cache) == "from-the-cache"  # read back, the file is not hashed again
    f.write_bytes(b"another copy!")  # new size and mtime: hashed again
    os.utime(f, ns=(held["mtime_ns"] + 10**9, held["mtime_ns"] + 10**9))
    assert provenance.file_sha256(f, cache) == hashlib.sha256(b"another copy!").hexdigest()


def test_source_fingerprints_local_carved_hub_and_generated(tmp_path, monkeypatch):
    f = tmp_path / "validation.parquet"
    f.write_bytes(b"rows")
    monkeypatch.setattr(provenance, "hub_revision", lambda repo: "abc123" if repo == "nyu-mll/glue" else None)
    fps = provenance.source_fingerprints({
        "train": f"local:{f} (carved)", "eval:validation": f"local:{f} (carved, disjoint from train)",
        "eval:test": "hub:nyu-mll/glue/rte", "eval:other": "hub:gone/x", "gen": "reasoning_gym seed 1"})
    sha = "sha256:" + hashlib.sha256(b"rows").hexdigest()
    assert fps == {"train": sha, "eval:validation": sha, "eval:test": "hub:nyu-mll/glue@abc123",
                   "eval:other": None, "gen": None}


def _rec(method, task, seed, fingerprint, device=None):
    return {"method": method, "task": task, "seed": seed, "data": {"fingerprints": {"train": fingerprint}},
            "device": device or {"cpu_count": 2, "torch_threads": 2, "cpu_model": "AMD EPYC 7B12"}}


def test_a_cell_mixing_two_data_fingerprints_is_flagged_once():
    recs = [_rec("lora", "rte", 1, "sha256:aa"), _rec("lora", "rte", 2, "sha256:bb"),
            _rec("lora", "sst2", 1, "sha256:cc"), _rec("lora", "sst2", 2, "sha256:cc"),
            _rec("ia3", "rte", 1, None)]
    lines = provenance.mixed_data_lines((r["method"], r["task"], r) for r in recs)
    assert len(lines) == 1 and "lora / rte" in lines[0] and "\n" not in lines[0]
    summary = provenance.fingerprint_lines(recs)
    assert any("rte train" in ln and "sha256:aa" in ln and "sha256:bb" in ln for ln in summary)


def test_bench_table_warns_about_a_mixed_cell_and_shows_hardware(tmp_path, capsys):
    from bench.analysis.table import command as table_command

    runs = tmp_path / "runs"
    cpu_a = {"cpu_count": 2, "torch_threads": 2, "cpu_model": "AMD EPYC 7B12"}
    cpu_b = {"cpu_count": 2, "torch_threads": 2, "cpu_model": "Intel Xeon 8481C", "cpu_bf16": True}
    for seed, fp, dev in ((1, "sha256:aa", cpu_a), (2, "sha256:bb", cpu_b)):
        config = {"method": {"name": "lora"}, "task": {"name": "rte"}, "model": {"name": "tiny"}, "seed": seed,
                  "experiment_name": None}
        chash = records.config_hash(config)
        rec = {"schema": 1, "status": "ok", "method": "lora", "task": "rte", "model": "tiny", "seed": seed,
               "config_hash": chash, "config": config, "main_metric": "accuracy", "main_score": 0.5,
               "metrics": {"accuracy": 0.5}, "train": {"steps": 2, "step_time_median_s": 0.1},
               "data": {"fingerprints": {"train": fp}}, "device": dev}
        records.write_json_atomic(records.record_path(runs, config, chash), rec)
    table_command.main([f"results_dir={runs}", f"+tables_dir={tmp_path / 't'}"])
    out = capsys.readouterr().out
    assert sum("mixes records that read different data" in ln for ln in out.splitlines()) == 1
    assert "2 different machines" in out
    import pandas as pd

    csv = pd.read_csv(tmp_path / "t" / "runs.csv")
    assert set(csv["hardware"]) == {"AMD EPYC 7B12 (2 threads)", "Intel Xeon 8481C (2 threads, bf16 units)"}


def test_mixed_hardware_note_only_when_machines_differ():
    a = {"device": {"cpu_count": 2, "torch_threads": 2, "cpu_model": "AMD EPYC 7B12"}}
    b = {"device": {"gpu": "NVIDIA H100 80GB HBM3", "gpu_memory_gb": 79.1}}
    assert provenance.mixed_hardware_note([a, a]) is None
    note = provenance.mixed_hardware_note([a, b])
    assert note and "NVIDIA H100 80GB HBM3" in note and "\n" not in note
