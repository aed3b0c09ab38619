"""The fair-comparison protocol: dev split, selection on dev, the two-stage lr choice, statistics, the study table."""

import json

import numpy as np
import pytest

from conftest import compose_cfg, run_cli, run_cli_here

STUDY = "experiment=glue_study_cpu"


def _cfg(glue_dir, *extra):
    return compose_cfg([STUDY, "model=tiny-bert", f"data_dir={glue_dir}", "data.max_train_samples=null", *extra])


def _data(cfg):
    from bench.tasks.families import get_family

    return get_family(cfg.task.family)(cfg, None).load_data()


# ------------------------------------------------------------------------------------------------
# the dev split
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big_glue(tmp_path_factory):
    from conftest import write_glue_fixture

    return write_glue_fixture(tmp_path_factory.mktemp("glue_big"), n_train=400, n_eval=60, seed=3)


def test_dev_split_disjoint_stratified_and_the_same_for_every_method_seed_and_lr(big_glue):
    base = _data(_cfg(big_glue, "task=rte", "data.dev_from_train=100"))
    dev, train, val = base.evals["dev"], base.train, base.evals["default"]
    assert len(dev) == 100 and len(train) == 300
    # disjoint from train (row ids of the train file) and from the reported split (another file)
    assert not set(dev["idx"]) & set(train["idx"])
    assert set(dev["idx"]) | set(train["idx"]) == set(range(400))
    pair = lambda d: {(a, b) for a, b in zip(d["sentence1"], d["sentence2"])}  # noqa: E731
    assert not pair(dev) & pair(val) - pair(train)
    # stratified: each class within one row of its share of train
    import collections

    full = collections.Counter(base.train["label"]) + collections.Counter(dev["label"])
    for c, k in collections.Counter(dev["label"]).items():
        assert abs(k - 100 * full[c] / 400) <= 1
    info = base.info["dev"]
    assert info["size"] == 100 and info["how"] == "stratified by 'label'"
    # the same rows for every method, training seed, lr index and train subsample
    for extra in (["method=ia3"], ["seed=3"], ["study.lr_index=2"], ["data.max_train_samples=50"], ["method=full", "seed=2"]):
        other = _data(_cfg(big_glue, "task=rte", "data.dev_from_train=100", *extra))
        assert other.info["dev"]["fingerprint"] == info["fingerprint"]
        assert list(other.evals["dev"]["idx"]) == list(dev["idx"])
    # another dev seed, other rows
    assert _data(_cfg(big_glue, "task=rte", "data.dev_from_train=100", "data.dev_seed=5")).info["dev"]["fingerprint"] != info["fingerprint"]
    # a fraction works too; regression is drawn unstratified
    assert len(_data(_cfg(big_glue, "task=rte", "data.dev_from_train=0.25")).evals["dev"]) == 100
    assert _data(_cfg(big_glue, "task=stsb", "data.dev_from_train=40")).info["dev"]["how"] == "random rows"


def test_dev_split_keeps_groups_on_one_side():
    import datasets

    from bench.tasks.data import carve_dev

    rng = np.random.default_rng(0)
    ds = datasets.Dataset.from_dict({"title": [f"t{rng.integers(0, 30)}" for _ in range(300)], "x": list(range(300))})
    train, dev, info = carve_dev(ds, 60, seed=1, stratify_field=None, group_field="title")
    assert not set(train["title"]) & set(dev["title"])
    assert len(dev) >= 60 and len(train) + len(dev) == 300
    assert info["how"] == "groups of 'title'"


def test_dev_split_larger_than_train_is_one_clear_message(big_glue):
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="asks for 500 dev rows but task 'rte' has 400 training rows"):
        _data(_cfg(big_glue, "task=rte", "data.dev_from_train=500"))
    with pytest.raises(BenchError, match="fraction in"):
        _data(_cfg(big_glue, "task=rte", "data.dev_from_train=1.5"))


# ------------------------------------------------------------------------------------------------
# mean pooling head
# ------------------------------------------------------------------------------------------------
def test_mean_pooling_head_is_the_masked_mean_and_ignores_padding(tiny_bert):
    import torch

    from bench.models.build import set_pooling

    model = set_pooling(tiny_bert, "mean").eval()
    ids = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        h = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        assert torch.allclose(logits, model.classifier(pooled), atol=1e-6)
        # the same sentence alone (no padding) gives the same logits
        alone = model(input_ids=ids[:1, :4], attention_mask=mask[:1, :4]).logits
    assert torch.allclose(alone, logits[:1], atol=1e-5)
    assert not any("pooler" in n for n, _ in model.named_parameters())


# ------------------------------------------------------------------------------------------------
# planted records: the lr is chosen on dev, the significance test
# ------------------------------------------------------------------------------------------------
def _plant(results, argv, score_fn, n_val=400, seed=0):
    """One ok record per expected hash of the study `argv`, with the dev score and reported predictions
    that score_fn(task, method, seed, lr_index) -> (dev_score, accuracy on the reported split) asks for."""
    from bench.analysis import study_table
    from bench.records.predictions import encode_splits

    st = study_table.expected_runs(argv)
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n_val)
    noise = {}
    results.mkdir(parents=True, exist_ok=True)
    for h, c in st.expected.items():
        dev, acc = score_fn(c["task"], c["method"], c["seed"], c["lr_index"])
        if dev is None:
            continue
        key = (c["task"], c["method"], c["seed"], c["lr_index"])
        r = np.random.default_rng(abs(hash(key)) % 2**32).random(n_val)
        noise[key] = r
        pred = np.where(r < acc, label, 1 - label)
        rec = {"status": "ok", "config_hash": h, "task": c["task"], "method": c["method"], "seed": c["seed"],
               "main_score": float((pred == label).mean()), "selection": {"dev_score": dev, "chosen_on": "dev"},
               "params": {"trainable": 10}, "train": {"step_time_median_s": 0.1}, "memory": {"peak_rss_mb": 1.0},
               "predictions": encode_splits({"default": {"pred": pred, "label": label}})}
        (results / f"{h}.json").write_text(json.dumps(rec))
    return st


ARGV = [STUDY, "task=rte", "method=lora,ia3,full", "seed=1,2,3"]


def test_table_chooses_the_lr_on_dev_even_when_the_reported_split_disagrees(tmp_path):
    from bench.analysis import study_table

    # dev prefers index 0; the reported split prefers index 2
    def score(task, method, seed, i):
        return {0: 0.9, 1: 0.6, 2: 0.5}[i], {0: 0.6, 1: 0.7, 2: 0.9}[i]

    _plant(tmp_path / "runs", ARGV, score)
    st = study_table.build(ARGV, tmp_path / "runs", n_boot=300)
    for m in ("lora", "ia3", "full"):
        c = st.cells[(st.cells["method"] == m)].iloc[0]
        assert c["lr_index"] == 0 and c["n"] == 3
        assert c["lr"] == st.grid[m][0]
        assert 50 < c["mean"] < 70  # the reported score of the dev choice, not the best reported one (~90)


def test_significance_flags_a_planted_difference_and_not_a_null_one(tmp_path):
    from bench.analysis import study_table

    acc = {"lora": 0.75, "ia3": 0.75, "full": 0.88}

    def score(task, method, seed, i):
        return (0.9 if i == 1 else 0.5), acc[method]

    _plant(tmp_path / "runs", ARGV, score)
    st = study_table.build(ARGV, tmp_path / "runs", n_boot=1000)
    real = study_table.vs(st, "full", "lora", "rte")
    null = study_table.vs(st, "ia3", "lora", "rte")
    assert real["significant"] and real["diff"] > 5 and real["low"] > 0
    assert not null["significant"] and null["low"] < 0 < null["high"]
    r = study_table.ranks(st)
    assert r[("rte", "full")] == 1 and r[("rte", "lora")] == r[("rte", "ia3")] == 2  # the null pair ties


def test_bootstrap_metrics_equal_the_metrics_on_the_whole_sample():
    from bench.analysis import stats
    from bench.tasks import metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.where(rng.random(500) < 0.8, y, 1 - y)
    full = np.arange(500)[None]
    for m in ("accuracy", "f1", "matthews"):
        assert stats.metric_on(m, p, y, full)[0] == pytest.approx(metrics.compute([m], p, y)[m])
    yr, pr = rng.random(200), rng.random(200)
    for m in ("pearson", "spearman"):
        assert stats.metric_on(m, pr, yr, np.arange(200)[None])[0] == pytest.approx(metrics.compute([m], pr, yr)[m])
    mean, std, lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0) and lo == pytest.approx(2 - 4.302653 / 3**0.5, rel=1e-5)


def test_reference_row_not_in_the_table_is_one_clear_message(tmp_path):
    r = run_cli_here(["table", STUDY, "reference=lroa", f"results_dir={tmp_path}"])
    assert r.returncode == 2
    assert "reference='lroa' is not a row of this table" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------------
# the two stages of a sweep
# ------------------------------------------------------------------------------------------------
def test_reporting_seed_runs_only_the_entry_chosen_on_dev(tmp_path):
    from bench.config import study
    from bench.config.identity import run_identity
    from bench.errors import BenchError
    from bench.records import store as records

    base = [STUDY, "task=rte", "method=lora", f"results_dir={tmp_path}"]
    with pytest.raises(study.TuningIncomplete, match="run the tuning seeds"):
        study.resolve(compose_cfg([*base, "seed=2", "study.lr_index=0"]))
    for i, dev in enumerate([0.6, 0.8, 0.7]):  # tuning records of seed 1: index 1 wins on dev
        cfg = compose_cfg([*base, "seed=1", f"study.lr_index={i}"])
        study.resolve(cfg)
        identity = run_identity(cfg)
        h = identity.hash
        records.write_json_atomic(identity.path,
                                  {"status": "ok", "config_hash": h, "selection": {"dev_score": dev}})
    with pytest.raises(study.NotChosen, match="not the entry chosen on dev"):
        study.resolve(compose_cfg([*base, "seed=2", "study.lr_index=0"]))
    cfg = compose_cfg([*base, "seed=2", "study.lr_index=1"])
    how = study.resolve(cfg)
    assert how["stage"] == "report" and cfg.train.lr == 1e-3 and how["chosen_on_dev"]["index"] == 1
    cfg = compose_cfg([*base, "seed=3", "study.lr_index=tuned"])
    study.resolve(cfg)
    assert cfg.study.lr_index == 1 and cfg.train.lr == 1e-3
    with pytest.raises(BenchError, match="tuning seed"):
        study.resolve(compose_cfg([*base, "seed=1", "study.lr_index=tuned"]))


@pytest.mark.parametrize("bad, message", [
    ("~study.lr_grid.id3", "study.lr_grid has no learning rates for method(s) ['id3']"),
    ("study.reference=lroa", "study.reference='lroa' is not among the swept methods"),
    ("data.dev_from_train=100000", "asks for 100000 dev rows"),
])
def test_bad_sweep_stops_before_anything_trains(tmp_path, glue_dir, bad, message):
    r = run_cli_here(["run", "-m", STUDY, bad, f"data_dir={glue_dir}", f"results_dir={tmp_path}/runs",
                 f"hydra.sweep.dir={tmp_path}/hydra"])
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------
# a run: every evaluation scores dev and the reported split; the epoch is chosen on dev
# ------------------------------------------------------------------------------------------------
def test_run_selects_the_epoch_on_dev_and_saves_per_example_predictions(tmp_path, big_glue):
    from bench.records.predictions import decode_splits
    from bench.run import runner

    cfg = compose_cfg(["model=tiny-bert", "method=lora", "task=sst2", f"data_dir={big_glue}", f"results_dir={tmp_path}",
                       "data.dev_from_train=40", "data.max_train_samples=48", "train.epochs=3", "train.batch_size=8",
                       "train.eval_strategy=epoch", "train.selection=best", "train.lr=5e-3", "train.progress=false",
                       "model.pooling=mean"])
    rec = runner.run(cfg)
    hist = rec["eval_history"]
    assert len(hist) == 3 and all({"accuracy", "accuracy_dev"} <= set(h["metrics"]) for h in hist)
    best = max(range(3), key=lambda i: hist[i]["metrics"]["accuracy_dev"])
    sel = rec["selection"]
    assert sel["chosen_on"] == "dev" and sel["metric"] == "accuracy_dev"
    assert sel["step"] == hist[best]["step"] and sel["dev_score"] == hist[best]["metrics"]["accuracy_dev"]
    assert rec["main_score"] == hist[best]["metrics"]["accuracy"]
    preds = decode_splits(rec["predictions"])
    assert set(preds) == {"dev", "default"} and len(preds["dev"]["pred"]) == 40 and len(preds["default"]["pred"]) == 60
    # the saved predictions are the chosen epoch's: they reproduce its scores
    for alias, key in (("dev", "accuracy_dev"), ("default", "accuracy")):
        p = preds[alias]
        assert (p["pred"] == p["label"]).mean() == pytest.approx(hist[best]["metrics"][key])
    assert rec["data"]["dev"]["size"] == 40 and rec["data"]["reported_splits"] == ["default"]


@pytest.mark.slow
def test_protocol_runs_unchanged_on_glue_tasks_outside_the_study(tmp_path, glue_dir):
    """MRPC, STS-B (regression), QQP and MNLI (two reported splits): one sweep, one table with intervals."""
    import pandas as pd

    common = [STUDY, "model=tiny-bert", f"data_dir={glue_dir}", "task=mrpc,stsb,qqp,mnli", "method=lora,ia3",
              "seed=1,2", "data.dev_from_train=8", "data.max_train_samples=null",
              "study.lr_grid={lora:[1.0e-3,3.0e-3],ia3:[1.0e-2,3.0e-2]}", f"results_dir={tmp_path}/runs"]
    r = run_cli(["run", "-m", *common, "launcher=local", "study.lr_index=0,1", "train.num_threads=1",
                 f"hydra.sweep.dir={tmp_path}/hydra"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("[bench] ok") == 4 * 2 * 3  # 2 tuning entries + 1 reporting seed per cell
    assert r.stdout.count("[bench] skip") == 4 * 2 * 1
    t = run_cli(["table", *[c for c in common if not c.startswith("task=")], "task=mrpc,stsb,qqp,mnli",
                 f"+tables_dir={tmp_path}/tables", "n_boot=200"])
    assert t.returncode == 0, t.stderr[-3000:]
    df = pd.read_csv(tmp_path / "tables" / "summary.csv")
    assert len(df) == 8 and (df["n"] == 2).all() and df["ci_low"].notna().all()
    ia3 = df[df["method"] == "ia3"]
    assert ia3["p_bootstrap"].notna().all() and set(ia3["task"]) == {"mrpc", "stsb", "qqp", "mnli"}
    md = (tmp_path / "tables" / "summary.md").read_text()
    assert "MRPC acc" in md and "STS-B Pearson" in md and "MNLI acc" in md


def test_claims_agree_disagree_or_cannot_tell(tmp_path):
    from bench.analysis import study_report, study_table

    claims = tmp_path / "claims.yaml"
    claims.write_text(
        "claims:\n"
        "  - {paper: P, claim: full above lora, paper_numbers: x, a: full, b: lora, relation: above}\n"
        "  - {paper: P, claim: lora above full, paper_numbers: x, a: lora, b: full, relation: above}\n"
        "  - {paper: P, claim: ia3 above lora, paper_numbers: x, a: ia3, b: lora, relation: above}\n"
        "  - {paper: P, claim: ia3 close to lora, paper_numbers: x, a: ia3, b: lora, relation: close, margin: 20}\n")
    acc = {"lora": 0.75, "ia3": 0.75, "full": 0.88}
    _plant(tmp_path / "runs", ARGV, lambda t, m, s, i: (0.9 if i == 1 else 0.5, acc[m]))
    st = study_table.build(ARGV, tmp_path / "runs", n_boot=500)
    verdicts = [c["per_task"]["rte"][0] for c in study_report.claims(st, claims)]
    assert verdicts == ["agrees", "disagrees", "cannot tell", "agrees"]
    # rows at or below the majority class: nothing can be said, whatever the intervals
    acc2 = {"lora": 0.2, "ia3": 0.2, "full": 0.3}
    _plant(tmp_path / "runs2", ARGV, lambda t, m, s, i: (0.9 if i == 1 else 0.5, acc2[m]))
    st2 = study_table.build(ARGV, tmp_path / "runs2", n_boot=200)
    out = study_report.claims(st2, claims)
    assert all(c["per_task"]["rte"][0] == "cannot tell" and "majority-class" in c["per_task"]["rte"][1] for c in out)


def test_compute_section_sums_the_runs_own_times(tmp_path):
    """The summary's Compute table: runs, summed and median wall time, median step time, from the records."""
    from bench.analysis import study_report, study_table

    _plant(tmp_path / "runs", ARGV, lambda t, m, s, i: (0.9 if i == 1 else 0.5, 0.7))
    walls, steps = {"lora": 100.0, "ia3": 200.0, "full": 900.0}, {"lora": 0.1, "ia3": 0.2, "full": 0.5}
    for p in (tmp_path / "runs").glob("*.json"):
        rec = json.loads(p.read_text())
        rec["wall_s"] = walls[rec["method"]]
        rec["train"] = {"step_time_median_s": steps[rec["method"]], "steps": 40}
        p.write_text(json.dumps(rec))
    st = study_table.build(ARGV, tmp_path / "runs", n_boot=200)
    table = study_report.compute_table(st).set_index("task")
    n = {m: int((st.runs["method"] == m).sum()) for m in walls}
    assert table.loc["RTE", "runs"] == sum(n.values()) == len(st.runs)
    assert table.loc["RTE", "run-hours"] == f"{sum(walls[m] * n[m] for m in walls) / 3600:.2f}"
    expect_step = float(np.median([steps[m] for m in walls for _ in range(n[m])]))
    assert table.loc["RTE", "median step s"] == f"{expect_step:.3f}" and table.loc["RTE", "steps per run"] == "40"
    assert table.loc["all"].tolist() == table.loc["RTE"].tolist()
    md = "\n".join(study_report.compute_lines(st))
    assert "## Compute" in md and "not the study's elapsed time" in md
    assert table.loc["RTE", "busy hours"] == "-"        # planted records without times: nothing to claim


def test_busy_hours_are_the_union_of_the_runs_intervals(tmp_path):
    """Two runs side by side count once, a gap between runs counts not at all, a record without times is skipped."""
    from bench.analysis import study_report

    def rec(start, end):
        return {"started_at": f"2026-01-01T{start}+00:00", "finished_at": f"2026-01-01T{end}+00:00"}

    recs = [rec("10:00:00", "11:00:00"), rec("10:30:00", "11:30:00"),   # overlap: 1.5 h
            rec("13:00:00", "13:15:00"), rec("13:05:00", "13:10:00"),   # nested: 0.25 h
            {"started_at": "2026-01-01T14:00:00+00:00"}, "not a record"]
    assert study_report._busy_hours(recs) == 1.75
    assert study_report._busy_hours(recs[4:]) is None


def test_protocol_sentence_says_each_tasks_own_budget_and_dev_split(tmp_path):
    """Read from the records: tasks that ran differently are named with their own value (STS-B's dev rows are random,
    not stratified; SST-2 ran 2 epochs on a subsample), tasks that agree share one."""
    from bench.analysis import study_report, study_table

    argv = [STUDY, "task=sst2,stsb,cola", "method=lora", "seed=1"]
    _plant(tmp_path / "runs", argv, lambda t, m, s, i: (0.5, 0.7))
    for p in (tmp_path / "runs").glob("*.json"):
        rec = json.loads(p.read_text())
        sst2 = rec["task"] == "sst2"
        rec["config"] = {"train": {"epochs": 2 if sst2 else 4, "precision": "bf16"},
                         "data": {"max_train_samples": 4000 if sst2 else None}}
        rec["data"] = {"dev": {"how": "random rows" if rec["task"] == "stsb" else "stratified by 'label'"}}
        p.write_text(json.dumps(rec))
    facts = study_report.protocol_facts(study_table.build(argv, tmp_path / "runs", n_boot=100))
    assert facts["epochs"] == "2 on SST-2 / 4 on STS-B, CoLA"
    assert facts["dev_how"] == "stratified by label on SST-2, CoLA / random rows on STS-B"
    assert facts["max_train_samples"] == "4000 on SST-2 / none (whole train set) on STS-B, CoLA"
    assert facts["precision"] == "bf16"
