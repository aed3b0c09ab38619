"""GLUE family: every task's data mapping, tokenization cache, metrics keys, and carving."""

import pytest
from conftest import GLUE_SCHEMAS, compose_cfg

from bench.errors import BenchError, DataUnavailable
from bench.tasks.data import carve
from bench.tasks.families import get_family

TASKS = sorted(GLUE_SCHEMAS)


def family_for(task, data_dir, tmp_path, extra=()):
    cfg = compose_cfg([f"task={task}", "model=tiny-bert", f"data_dir={data_dir}", f"cache_dir={tmp_path}/cache", *extra])
    fam = get_family(cfg.task.family)(cfg, tmp_path / "cache")
    fam.validate()
    return cfg, fam


@pytest.mark.parametrize("task", TASKS)
def test_task_maps_hub_schema_to_features(task, glue_dir, tmp_path):
    cfg, fam = family_for(task, glue_dir, tmp_path)
    data = fam.load_data()
    fields, kind, splits = GLUE_SCHEMAS[task]
    assert set(data.evals) == set(cfg.task.eval_splits)
    assert sorted(cfg.task.eval_splits.values()) == sorted(s for s in splits if s != "train")
    tok = fam.load_tokenizer()
    ds = fam.train_dataset(data, tok)
    row = ds[0]
    raw = data.train[0]
    # the encoded pair is exactly what the tokenizer makes of the hub columns, in order
    expected = tok(*[raw[f] for f in fields], truncation=True, max_length=cfg.task.max_length)
    assert row["input_ids"].tolist() == expected["input_ids"]
    if len(fields) == 2:
        assert 1 in row["token_type_ids"].tolist(), "second sentence must be segment B"
    if kind == "float":
        assert row["labels"].dtype.is_floating_point and cfg.task.num_labels == 1
        assert float(row["labels"]) == pytest.approx(raw["label"])
    else:
        assert int(row["labels"]) == raw["label"]
    model = fam.build_model(tok)
    assert model.config.num_labels == cfg.task.num_labels
    metrics = fam.evaluate(model, data, tok)
    assert cfg.task.main_metric in metrics
    if task == "mnli":
        assert {"accuracy_m", "accuracy_mm"} <= set(metrics)
    if task in ("mrpc", "qqp"):
        assert {"accuracy", "f1"} <= set(metrics)
    if task == "stsb":
        assert {"pearson", "spearman"} <= set(metrics)
    if task == "cola":
        assert set(metrics) == {"matthews"}


def test_tokenization_is_cached_across_runs(glue_dir, tmp_path):
    _, fam = family_for("rte", glue_dir, tmp_path)
    data = fam.load_data()
    tok = fam.load_tokenizer()
    fam.train_dataset(data, tok)
    assert fam.last_cache_hit is False
    _, fam2 = family_for("rte", glue_dir, tmp_path)
    fam2.train_dataset(fam2.load_data(), tok)
    assert fam2.last_cache_hit is True
    # a different max_length is a different cache entry
    _, fam3 = family_for("rte", glue_dir, tmp_path, ["task.max_length=16"])
    fam3.train_dataset(fam3.load_data(), tok)
    assert fam3.last_cache_hit is False


def test_subsampling_is_recorded_and_seed_independent(glue_dir, tmp_path):
    cfg, fam = family_for("sst2", glue_dir, tmp_path, ["data.max_train_samples=5", "data.max_eval_samples=3", "seed=7"])
    data = fam.load_data()
    assert len(data.train) == 5 and data.info["train_size"] == 5 and data.info["eval_sizes"] == {"default": 3}
    _, fam_b = family_for("sst2", glue_dir, tmp_path, ["data.max_train_samples=5", "seed=8"])
    assert fam_b.load_data().train["idx"] == data.train["idx"], "training seed must not change the subset"


def test_missing_columns_is_a_clear_error(tmp_path):
    import pandas as pd

    d = tmp_path / "glue" / "rte"
    d.mkdir(parents=True)
    for split in ("train", "validation"):
        pd.DataFrame({"premise": ["a"], "label": [0]}).to_parquet(d / f"{split}.parquet")
    _, fam = family_for("rte", tmp_path, tmp_path)
    with pytest.raises(BenchError, match=r"lacks column\(s\) \['sentence1', 'sentence2'\]"):
        fam.load_data()


def test_no_data_anywhere_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from bench.models.hub import hub_reachable

    hub_reachable.cache_clear()
    _, fam = family_for("rte", tmp_path / "empty", tmp_path)
    with pytest.raises(DataUnavailable) as e:
        fam.load_data()
    hub_reachable.cache_clear()
    assert "BENCH_DATA_DIR" in str(e.value) and "hub" in str(e.value)


def test_carve_is_disjoint_by_group():
    import datasets

    ds = datasets.Dataset.from_dict({"title": [f"t{i % 7}" for i in range(70)], "x": list(range(70))})
    train, ev, info = carve(ds, "title", 0.3, seed=0)
    assert set(train["title"]).isdisjoint(set(ev["title"]))
    assert len(train) + len(ev) == 70 and info["groups_eval"] == 2


def test_real_glue_data_loads(shared_data, tmp_path):
    for task, n_eval in (("sst2", 872), ("cola", 1043), ("rte", 277)):
        _, fam = family_for(task, shared_data, tmp_path)
        data = fam.load_data()
        assert data.info["eval_sizes"]["default"] == n_eval
        assert data.info["sources"]["train"].startswith("local:")
