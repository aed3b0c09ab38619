"""Golden test: every committed run record keeps its identity.

Records are the suite's data: a study's table matches records to its protocol by config hash, so a change to a
YAML default, to the hash's rules or to the composition that moves the hash of an existing record silently orphans
it. For every committed record this test (a) rehashes the record's own stored config and (b) recomposes the run
from its overrides with today's conf/ (study lr and per-method settings applied as a run applies them), and both
must give the record's config_hash. A new semantic key must be added with its do-nothing value in
bench.records.store.HASH_NEUTRAL_DEFAULTS (and noted in CHANGELOG.md) to keep this green.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from bench.config.compose import compose
from bench.config.identity import run_identity
from bench.records import store as records

REPO = Path(__file__).resolve().parents[1]


def _committed(paths):
    """Only files git tracks: a local sweep's records (results/runs/, ignored) are not the suite's data."""
    import subprocess

    try:
        tracked = subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True, text=True, check=True)
        keep = {REPO / line for line in tracked.stdout.splitlines()}
    except (OSError, subprocess.CalledProcessError):  # no git (an unpacked copy): the ignored folders by name
        keep = {p for p in paths if "runs" not in p.relative_to(REPO).parts}
    return [p for p in paths if p in keep]


def committed_records() -> list[tuple[str, dict]]:
    out = []
    for path in _committed(sorted((REPO / "results").rglob("records.jsonl.gz"))):
        with gzip.open(path, "rt") as f:
            for i, line in enumerate(f):
                rec = json.loads(line)
                out.append((f"{path.relative_to(REPO)}:{i}", rec))
    for path in _committed(sorted((REPO / "results").rglob("*.json"))):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and rec.get("config_hash") and rec.get("overrides") is not None:
            out.append((str(path.relative_to(REPO)), rec))
    return out


RECORDS = committed_records()


def test_there_are_committed_records():
    assert len(RECORDS) >= 90, "the golden set shrank: results/studies/glue_study_cpu has 90 records"


@pytest.mark.parametrize("name,rec", RECORDS, ids=[n for n, _ in RECORDS])
def test_stored_config_rehashes(name, rec):
    assert records.config_hash(rec["config"]) == rec["config_hash"], name


def _recomposed_hash(rec: dict) -> str:
    identity = run_identity(compose(list(rec["overrides"])))  # the run's identity, as bench run computes it
    if (identity.config.get("study") or {}).get("lr_grid"):  # a reporting seed's study.lr_index=tuned
        identity = identity.at(int(rec["seed"]), int(rec["study"]["index"]))
    return identity.hash


@pytest.mark.parametrize("name,rec", RECORDS, ids=[n for n, _ in RECORDS])
def test_recomposed_config_keeps_the_hash(name, rec):
    assert _recomposed_hash(rec) == rec["config_hash"], (
        f"{name}: today's conf/ composes {rec['overrides']} to another hash; a new key needs its do-nothing value "
        "in bench.records.store.HASH_NEUTRAL_DEFAULTS")


def test_a_neutral_key_is_hashed_only_off_its_neutral_value(monkeypatch):
    name, rec = RECORDS[0]
    cfg = json.loads(json.dumps(rec["config"]))
    monkeypatch.setitem(records.HASH_NEUTRAL_DEFAULTS, "train.some_new_switch", False)
    cfg["train"]["some_new_switch"] = False
    assert records.config_hash(cfg) == rec["config_hash"]
    cfg["train"]["some_new_switch"] = True
    assert records.config_hash(cfg) != rec["config_hash"]
