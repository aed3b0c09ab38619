"""Grid extension (study.max_extensions): an lr chosen on dev at an edge of its grid moves the grid one step that way,
up to the same maximum for every method (bench.config.study.walk), in the sweep and in the tables alike."""

from __future__ import annotations

import pytest
from conftest import compose_cfg

from bench.config import study
from bench.errors import BenchError
from bench.records import store as records

STUDY = "experiment=glue_study_cpu"


def test_lr_at_continues_the_grids_own_spacing():
    grid = [1e-4, 3e-4, 1e-3, 3e-3]  # a 1-3-10 grid continues 3e-5, 1e-5 below and 1e-2, 3e-2 above
    assert [study.lr_at(grid, i) for i in range(4)] == grid
    assert [study.lr_at(grid, i) for i in (-1, -2, 4, 5)] == [3e-5, 1e-5, 1e-2, 3e-2]
    assert [study.lr_at([3e-4, 1e-3, 3e-3], i) for i in (-1, 3)] == [1e-4, 1e-2]
    geometric = [1e-4, 2e-4, 4e-4]
    assert [study.lr_at(geometric, i) for i in (-2, -1, 3, 4)] == pytest.approx([2.5e-5, 5e-5, 8e-4, 1.6e-3])
    assert study.lr_at([1e-3, 1e-2], 3) == pytest.approx(1.0)


def test_walk_picks_the_neighbour_on_the_chosen_side():
    base = {0: 0.5, 1: 0.7, 2: 0.6}
    assert study.walk(base, 3, 1) == (1, [0, 1, 2], None)             # interior: nothing to extend
    low = {0: 0.8, 1: 0.7, 2: 0.6}
    assert study.walk(low, 3, 1) == (None, [0, 1, 2], -1)             # at the low edge: needs index -1
    assert study.walk({**low, -1: 0.75}, 3, 1) == (0, [-1, 0, 1, 2], None)
    assert study.walk({**low, -1: 0.9}, 3, 1) == (-1, [-1, 0, 1, 2], None)  # the maximum reached: stop there
    assert study.walk({**low, -1: 0.9}, 3, 2) == (None, [-1, 0, 1, 2], -2)
    high = {0: 0.5, 1: 0.6, 2: 0.7}
    assert study.walk(high, 3, 1) == (None, [0, 1, 2], 3)
    assert study.walk({**high, 3: 0.65}, 3, 1) == (2, [0, 1, 2, 3], None)
    assert study.walk(low, 3, 0) == (0, [0, 1, 2], None)              # no extension declared: as before
    assert study.walk({0: 0.5, 2: 0.7}, 3, 1) == (None, [0, 1, 2], None)  # a base entry without a score
    assert study.walk({0: 0.7, 1: 0.7, 2: 0.1}, 3, 1)[2] == -1          # ties: the lower index (as choose_index)
    assert study.at_unextendable_edge(-1, [-1, 0, 1, 2], 3, 1)
    assert not study.at_unextendable_edge(0, [-1, 0, 1, 2], 3, 1)


def test_walk_never_extends_more_than_the_maximum_whatever_the_scores():
    import itertools
    import random

    rng = random.Random(0)
    for n, ext in itertools.product((3, 4, 5), (0, 1, 2)):
        for _ in range(200):
            scores = {i: rng.random() for i in range(-ext, n + ext)}
            chosen, entries, needed = study.walk(scores, n, ext)
            assert needed is None and chosen in entries
            assert len(entries) <= n + ext and all(-ext <= i < n + ext for i in entries)
            assert entries == sorted(set(entries)) and set(range(n)) <= set(entries)
            assert chosen == max(entries, key=lambda i: (scores[i], -i))
            if chosen in (min(entries), max(entries)) and len(entries) > 1:
                assert study.at_unextendable_edge(chosen, entries, n, ext)


def _base(tmp_path, *extra):
    return [STUDY, "task=rte", "method=lora", f"results_dir={tmp_path}", "study.max_extensions=1", *extra]


def _plant_tuning(tmp_path, scores, *extra):
    """The seed-1 tuning records of lora on rte, written where a run of that config writes its record (with the
    config it hashes from, as a real record)."""
    from omegaconf import OmegaConf

    for i, dev in scores.items():
        cfg = compose_cfg([*_base(tmp_path, *extra), "seed=1", f"study.lr_index={i}"])
        cfg.study.lr_index = i
        study.apply_method_cfg(cfg)
        config = OmegaConf.to_container(cfg, resolve=True)
        config = study.grid_config(config, 1, i)
        h = records.config_hash(config)
        records.write_json_atomic(records.record_path(tmp_path, config, h),
                                  {"status": "ok", "config_hash": h, "config": config, "task": config["task"]["name"],
                                   "method": config["method"]["name"], "seed": config["seed"],
                                   "selection": {"dev_score": dev}})


def test_the_sweep_runs_an_extension_only_at_the_chosen_edge(tmp_path):
    # lora's grid [3e-4, 1e-3, 3e-3] extends to 1e-4 (index -1) and 1e-2 (index 3)
    # before the grid's own entries are done, an extension job waits (an error the resumed sweep clears)
    with pytest.raises(study.TuningIncomplete, match="grid's own entries choose an edge"):
        study.resolve(compose_cfg([*_base(tmp_path), "seed=1", "study.lr_index=3"]))
    _plant_tuning(tmp_path, {0: 0.6, 1: 0.7, 2: 0.8})  # lora's grid [3e-4, 1e-3, 3e-3]: the top entry wins
    with pytest.raises(study.NotChosen, match="not needed"):
        study.resolve(compose_cfg([*_base(tmp_path), "seed=1", "study.lr_index=-1"]))
    cfg = compose_cfg([*_base(tmp_path), "seed=1", "study.lr_index=3"])
    how = study.resolve(cfg)
    assert how["extension"] and how["stage"] == "tune"
    assert cfg.train.lr == 1e-2 and cfg.study.lr_index == 3
    # a reporting seed waits for the extension, then runs at the entry chosen over all four
    with pytest.raises(study.TuningIncomplete, match="extended to lr 0.01 "):
        study.resolve(compose_cfg([*_base(tmp_path), "seed=2", "study.lr_index=tuned"]))
    _plant_tuning(tmp_path, {3: 0.85})
    cfg = compose_cfg([*_base(tmp_path), "seed=2", "study.lr_index=tuned"])
    how = study.resolve(cfg)
    assert cfg.study.lr_index == 3 and cfg.train.lr == 1e-2
    info = how["chosen_on_dev"]
    assert info["extended"] and info["entries"] == [0, 1, 2, 3]
    with pytest.raises(study.NotChosen):
        study.resolve(compose_cfg([*_base(tmp_path), "seed=2", "study.lr_index=2"]))


def test_an_extension_that_loses_sends_the_reporting_seeds_back_to_the_edge(tmp_path):
    _plant_tuning(tmp_path, {0: 0.9, 1: 0.7, 2: 0.6, -1: 0.8})
    cfg = compose_cfg([*_base(tmp_path), "seed=3", "study.lr_index=tuned"])
    study.resolve(cfg)
    assert cfg.study.lr_index == 0 and cfg.train.lr == pytest.approx(3e-4)


def test_the_grid_without_extensions_hashes_and_chooses_as_before(tmp_path):
    """max_extensions=0 (the default) leaves the first study's runs and choices as they were."""
    cfg = compose_cfg([STUDY, "task=rte", "method=lora", "seed=1", "study.lr_index=2"])
    assert "max_extensions" in cfg.study and cfg.study.max_extensions == 0
    with pytest.raises(BenchError, match="study.max_extensions"):  # an extension index without a declared maximum
        study.resolve(compose_cfg([STUDY, "task=rte", "method=lora", "seed=1", "study.lr_index=3"]))


@pytest.mark.parametrize("extra, message", [
    (["study.lr_index=-2"], "study.lr_index=-2 is beyond the grid of lora extended by study.max_extensions=1"),
    (["study.lr_index=4"], "study.lr_index=4 is beyond the grid of lora extended by study.max_extensions=1"),
    (["study.lr_grid.lora=[1e-4,3e-4,1e-3,2e-3]", "study.lr_index=0"], "is not increasing and log-spaced"),
    (["study.max_extensions=-1", "study.lr_index=0"], "study.max_extensions must be a whole number >= 0"),
])
def test_bad_extensions_are_one_message(tmp_path, extra, message):
    with pytest.raises(BenchError, match=message.replace("[", r"\[").replace(".", r"\.")):
        study.resolve(compose_cfg([*_base(tmp_path), "seed=1", *extra]))


# ------------------------------------------------------------------------------------------------
# the study table: planted records
# ------------------------------------------------------------------------------------------------
TABLE = [STUDY, "task=rte", "method=lora,full", "seed=1,2,3", "study.max_extensions=1"]


def _dev(method, i):
    # lora: dev rises to the top of its grid [3e-4, 1e-3, 3e-3] and beyond (1e-2); full: interior (index 1)
    return {"lora": {-1: 0.50, 0: 0.55, 1: 0.6, 2: 0.7, 3: 0.75}, "full": {-1: 0.5, 0: 0.6, 1: 0.8, 2: 0.7, 3: 0.6}}[method][i]


def test_table_asks_for_the_needed_extension_only(tmp_path):
    from test_study import _plant

    from bench.analysis import study_table

    def score(task, method, seed, i):
        return (None, None) if not 0 <= i < 3 else (_dev(method, i), 0.7)

    _plant(tmp_path / "runs", TABLE, score)
    st = study_table.build(TABLE, tmp_path / "runs", n_boot=200)
    cells = st.cells.set_index("method")
    assert not cells.loc["lora", "tuning_complete"] and cells.loc["full", "tuning_complete"]
    missing = [(m["method"], m["seed"], m["lr_index"]) for m in st.missing]
    assert missing == [("lora", 1, 3)]  # not index -1, not full's extensions, not the other seeds' entries


def test_table_chooses_over_the_extended_grid_and_marks_the_cell(tmp_path):
    from test_study import _plant

    from bench.analysis import study_report, study_table

    def score(task, method, seed, i):
        return _dev(method, i), 0.65 + 0.05 * (i == 3)

    _plant(tmp_path / "runs", TABLE, score)
    st = study_table.build(TABLE, tmp_path / "runs", n_boot=200)
    cells = st.cells.set_index("method")
    assert cells.loc["lora", "lr_index"] == 3 and cells.loc["lora", "lr"] == 1e-2
    assert cells.loc["lora", "extended"] and cells.loc["lora", "at_edge"]  # the maximum (1) is reached
    assert cells.loc["full", "lr_index"] == 1 and not cells.loc["full", "extended"] and not cells.loc["full", "at_edge"]
    # equal tuning budget: at most n + max_extensions entries per cell, the same maximum for every method
    assert len(cells.loc["lora", "entries"]) == 4 and len(cells.loc["full", "entries"]) == 3
    assert st.missing == []
    rank_of = study_table.ranks(st)
    assert "(ext) (edge)" in study_report.cell_text(st, "rte", "lora", rank_of)
    assert "(ext)" not in study_report.cell_text(st, "rte", "full", rank_of)
    lr = study_report.lr_table(st).set_index("method")
    assert lr.loc["lora", "lr3"].startswith("1e-2:") and lr.loc["lora", "lr3"].endswith("*")
    assert lr.loc["full", "lr3"] == "" and lr.loc["full", "lr-1"] == ""
    md = study_report.markdown(st, "bench table")
    assert "1 cell(s) extended, marked (ext); 1 cell(s) still at an edge" in md


def test_adding_a_method_later_runs_only_its_runs_and_grows_the_table(tmp_path):
    """Additive: the records of the first methods stay; a new method's runs are the only ones missing, and the
    first methods' cells are unchanged when the table grows."""
    from test_study import _plant

    from bench.analysis import study_report, study_table

    argv2 = [STUDY, "task=rte", "method=lora,full", "seed=1,2,3"]
    argv3 = [STUDY, "task=rte", "method=lora,full,ia3", "seed=1,2,3"]

    def score(task, method, seed, i):
        return {0: 0.6, 1: 0.8, 2: 0.7}[i], {"lora": 0.7, "full": 0.75, "ia3": 0.72}[method]

    _plant(tmp_path / "runs", argv2, score)
    before = study_table.build(argv2, tmp_path / "runs", n_boot=200)
    grown = study_table.build(argv3, tmp_path / "runs", n_boot=200)
    todo = study_report.gaps(grown)  # what `bench run -m experiment=... method=ia3` would run
    assert {g["method"] for g in todo} == {"ia3"}
    assert len([g for g in todo if g["tune"]]) == 3 and len([g for g in todo if not g["tune"]]) == 2
    _plant(tmp_path / "runs", argv3, score)  # the new method's runs (the first two methods' files are rewritten equal)
    after = study_table.build(argv3, tmp_path / "runs", n_boot=200)
    assert study_report.gaps(after) == [] and list(after.cells["method"].unique()) == ["lora", "full", "ia3"]
    cols = ["task", "method", "lr_index", "mean", "std", "n"]
    old = before.cells[cols].reset_index(drop=True)
    new = after.cells[after.cells["method"] != "ia3"][cols].reset_index(drop=True)
    assert old.equals(new)


def test_committed_study_records_are_restored_so_the_sweep_resumes(tmp_path, monkeypatch):
    """A fresh checkout has no results/runs/: the first `bench run` of a study writes its committed records
    (results/studies/<name>/records.jsonl.gz) back where its runs look, so tuning is not rerun; a record whose
    config no longer hashes to its name, a failed one, or another experiment's is left out."""
    import gzip
    import json

    runs = tmp_path / "runs"
    _plant_tuning(runs, {0: 0.6, 1: 0.7, 2: 0.65})
    planted = sorted(runs.glob("*.json"))
    recs = [json.loads(p.read_text()) for p in planted]
    assert all(records.config_hash(r["config"]) == r["config_hash"] for r in recs)
    tampered = json.loads(json.dumps(recs[0]))
    tampered["config"]["train"]["lr"] = 0.5  # no longer hashes to its name
    failed = {**recs[1], "status": "failed"}
    other = json.loads(json.dumps(recs[2]))
    other["config"]["experiment_name"] = "another_study"
    other["config_hash"] = records.config_hash(other["config"])
    committed = tmp_path / "studies" / "glue_study_cpu" / "records.jsonl.gz"
    committed.parent.mkdir(parents=True)
    with gzip.open(committed, "wt") as f:
        for r in [*recs, tampered, failed, other]:
            f.write(json.dumps(r) + "\n")
    for p in planted:
        p.unlink()
    monkeypatch.setattr(records, "committed_path", lambda name: tmp_path / "studies" / name / "records.jsonl.gz")
    monkeypatch.setattr(records, "_RESTORED", set())
    assert records.restore_experiment(runs, "glue_study_cpu") == 3
    assert sorted(runs.glob("*.json")) == planted
    assert records.restore_experiment(runs, "glue_study_cpu") == 0  # once per process
    scores, missing = study.tuning_scores(recs[0]["config"], runs)
    assert scores == {0: 0.6, 1: 0.7, 2: 0.65}


def test_bench_table_restores_committed_records_before_it_reads(tmp_path, monkeypatch):
    """`bench table experiment=<study>` on a fresh checkout (no results/runs/) rebuilds from the committed records,
    and a results folder that lost records cannot make the rewritten records.jsonl.gz lose them too."""
    import gzip
    import json

    from conftest import run_cli_here

    runs = tmp_path / "runs"
    _plant_tuning(runs, {0: 0.6, 1: 0.7, 2: 0.65, 3: 0.5})
    recs = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    committed = tmp_path / "studies" / "glue_study_cpu" / "records.jsonl.gz"
    committed.parent.mkdir(parents=True)
    with gzip.open(committed, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    for p in runs.glob("*.json"):
        p.unlink()
    monkeypatch.setattr(records, "committed_path", lambda name: tmp_path / "studies" / name / "records.jsonl.gz")
    monkeypatch.setattr(records, "_RESTORED", set())
    out = tmp_path / "out"
    res = run_cli_here(["table", *_base(runs), "seed=1", f"+tables_dir={out}"])
    assert res.returncode == 0, res.stderr
    assert f"restored {len(recs)} committed record(s) of glue_study_cpu" in res.stdout
    assert len(list(runs.glob("*.json"))) == len(recs) and "no records of study" not in res.stdout
    with gzip.open(out / "records.jsonl.gz", "rt") as f:
        assert sorted(json.loads(line)["config_hash"] for line in f) == sorted(r["config_hash"] for r in recs)
