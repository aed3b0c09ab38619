"""The run record's shape, defined once (bench.records.store.RunRecord, SCHEMA_VERSION): every writer of a record and
every committed record match it, and a record that lacks a key its status needs does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_cfg
from test_golden_hash import RECORDS

from bench.errors import BenchError
from bench.records import store as records
from bench.run import runner

TINY = ["model=tiny-bert", "task=rte", "method=lora", "train.max_steps=1", "data.max_train_samples=8",
        "data.max_eval_samples=4", "train.progress=false"]


def _written(tmp_path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(tmp_path).glob("*.json"))]


@pytest.fixture(scope="module")
def ok_record(glue_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    rec = runner.run(compose_cfg([*TINY, "train.eval_strategy=epoch", "train.selection=best", f"data_dir={glue_dir}",
                                  f"results_dir={out}", f"cache_dir={out / 'cache'}"]))
    assert rec["status"] == "ok"
    (written,) = _written(out)
    return written


def test_a_run_writes_a_record_of_the_schema(ok_record):
    assert records.record_problems(ok_record) == []
    assert ok_record["schema"] == records.SCHEMA_VERSION == 1
    assert list(ok_record)[:10] == list(records.RecordHead.__annotations__)  # the head first, in its order


@pytest.mark.parametrize("key", [*records.RecordHead.__annotations__, *records.RUN_KEYS, *records.OK_KEYS])
def test_a_missing_key_fails_the_schema(ok_record, key):
    rec = {k: v for k, v in ok_record.items() if k != key}
    problems = records.record_problems(rec)
    assert any(f"missing key {key!r}" in p for p in problems), problems


def test_an_unknown_key_or_a_wrong_type_fails_the_schema(ok_record):
    assert records.record_problems({**ok_record, "metric": 1}) == [
        "unknown key 'metric' (declare it in bench.records.store.RunRecord)"]
    assert records.record_problems({**ok_record, "seed": "1"}) == ["seed='1' is not int"]
    assert records.record_problems({**ok_record, "main_score": None}) == ["main_score=None is not float"]
    assert records.record_problems({**ok_record, "status": "running"})[-1] == (
        "status 'running' is not one of ok, failed, interrupted")
    assert records.record_problems({**ok_record, "schema": 2}) == ["schema 2 is not 1"]
    assert records.record_problems([]) == ["a record is a JSON object, not list"]


def test_failed_records_match_the_schema(glue_dir, tmp_path, monkeypatch):
    base = [*TINY, f"data_dir={glue_dir}", f"results_dir={tmp_path}"]
    # bad input in a sweep: recorded before anything ran (and no record without a sweep)
    with pytest.raises(BenchError, match="train.lr must be > 0"):
        runner.run(compose_cfg([*base, "train.lr=-1"]), ["train.lr=-1"], sweep=True)
    (pre,) = _written(tmp_path)
    assert records.record_problems(pre) == [] and pre["failed_before_training"] is True
    assert list(pre) == [*records.RecordHead.__annotations__, "error", "failed_before_training", "finished_at"]
    assert pre["error"] == "BenchError: Invalid configuration: train.lr must be > 0 (got -1); e.g. train.lr=1e-4"
    # a failure during training
    monkeypatch.setattr(runner, "_train_and_evaluate", lambda s, record, run_start: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        runner.run(compose_cfg([*base, "seed=2"]))
    (failed,) = [r for r in _written(tmp_path) if r["seed"] == 2]
    assert failed["status"] == "failed" and records.record_problems(failed) == []
    assert records.record_problems({k: v for k, v in failed.items() if k != "traceback"}) == [
        "missing key 'traceback' (status failed)"]


def test_a_record_off_the_schema_is_still_written_with_a_warning(tmp_path, capsys):
    path = tmp_path / "r.json"
    records.write_record(path, {"status": "ok"})
    assert json.loads(path.read_text()) == {"status": "ok"}  # the run's results are never dropped
    assert "does not match bench.records.store.RunRecord: missing key 'schema'" in capsys.readouterr().err


@pytest.mark.parametrize("name,rec", RECORDS, ids=[n for n, _ in RECORDS])
def test_every_committed_record_matches_the_schema(name, rec):
    assert records.record_problems(rec) == [], name


def test_generation_predictions_pair_only_on_the_same_examples():
    """Generation keeps 1 / 0 per example against labels of 1: two sets of the same size would share the labels'
    fingerprint, so a split brings the fingerprint of its examples and that one is kept."""
    from bench.records.predictions import decode_splits, encode_splits, examples_fingerprint, fingerprint

    ones = [1, 1, 1]
    a = examples_fingerprint([["2+2?", "4"], ["3+3?", "6"], ["1+1?", "2"]])
    b = examples_fingerprint([["2+2?", "4"], ["3+3?", "6"], ["1+2?", "3"]])
    assert a != b
    enc = encode_splits({"default": {"pred": [1, 0, 1], "label": ones, "label_fingerprint": a},
                         "other": {"pred": [0, 0, 1], "label": ones}})
    dec = decode_splits(enc)
    assert dec["default"]["label_fingerprint"] == a and dec["default"]["pred"].tolist() == [1, 0, 1]
    assert dec["other"]["label_fingerprint"] == fingerprint(ones)  # classification: the labels' own
