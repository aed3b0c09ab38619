"""One setup path: `bench run`, `bench perf` and `bench params` all start from bench.run.runner.setup (a RunSetup), so
they build the same model, with the same head, and apply the same method with the same options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_cfg
from omegaconf import OmegaConf

from bench.perf import paramtable
from bench.perf import options, session
from bench.records import store as records
from bench.run import runner

TINY = ["model=tiny-bert", "task=rte"]
RUN = ["train.max_steps=1", "data.max_train_samples=8", "data.max_eval_samples=4", "train.progress=false"]
PERF = ["perf.steps=1", "perf.warmup=0", "perf.batch_size=2", "perf.seq_len=8", "perf.eval_steps=1", "perf.threads=1"]
H = 32  # tiny-bert's width: 2 layers of 32, MiniLM's 30,522-token vocabulary
TOTAL_CLS = 1_011_426  # tiny-bert with its 2-label head and BERT's pooler (dense 32 x 32 + bias)
LORA_QV = 2 * 2 * 8 * (H + H)  # r=8 on query and value of 2 layers


def _run(args, glue_dir, tmp_path) -> dict:
    rec = runner.run(compose_cfg([*args, *RUN, f"data_dir={glue_dir}", f"results_dir={tmp_path / 'runs'}",
                                  f"cache_dir={tmp_path / 'cache'}"]), list(args))
    assert rec["status"] == "ok", rec.get("error")
    return rec


def _perf(method: str, args) -> tuple[dict, dict]:
    """(the config perf's parent settles for the method, the worker's parameter counts)."""
    p = options.perf_options(PERF)
    method_ov = [a for a in args if a.startswith("method.")]
    rest = [a for a in [*args, *RUN] if not a.startswith(("method=", "method."))]
    cfg = options.method_configs([method], method_ov, rest, p)[method]
    s = session.Session(cfg, OmegaConf.to_container(p, resolve=True))
    try:
        return cfg, s.params
    finally:
        s.close()


def _params(args) -> dict:
    return paramtable.count_for(compose_cfg(args))


COUNTED = ("trainable_method", "trainable_head", "trainable", "total", "head_modules")


@pytest.mark.parametrize("args,method,total,trainable_method", [
    # mean pooling replaces BERT's pooler by a parameter-free mean: the run's model has no pooler weights
    ([*TINY, "method=full", "model.pooling=mean"], "full", TOTAL_CLS - (H * H + H), TOTAL_CLS - (H * H + H) - 66),
    # ID3 over LoRA gets LoRA's YAML defaults (r=8 on q, v) under method.base_cfg; budget=all selects every entry
    ([*TINY, "method=id3", "method.base=lora", "method.budget=all"], "id3", TOTAL_CLS, LORA_QV),
    ([*TINY, "method=lora", "method.r=4"], "lora", TOTAL_CLS, LORA_QV // 2),
])
def test_run_perf_and_params_identify_and_count_the_same_model(args, method, total, trainable_method, glue_dir,
                                                               tmp_path):
    rec = _run(args, glue_dir, tmp_path)
    perf_cfg, perf_counts = _perf(method, [*args, f"data_dir={glue_dir}", f"cache_dir={tmp_path / 'cache'}"])
    counts = _params(args)
    assert rec["params"]["total"] == total and rec["params"]["trainable_method"] == trainable_method  # closed form
    assert {k: perf_counts[k] for k in COUNTED} == {k: rec["params"][k] for k in COUNTED}, "bench perf"
    assert {k: counts[k] for k in COUNTED} == {k: rec["params"][k] for k in COUNTED}, "bench params (meta device)"
    assert counts["task_type"] == "seq_cls"
    # perf times the run's own config: the same identity (paths and perf.* are not part of it)
    assert records.config_hash(perf_cfg) == rec["config_hash"]


def test_a_change_planted_in_setup_reaches_run_perf_and_params(monkeypatch, glue_dir, tmp_path):
    """Plant one change in bench.run.runner.setup (LoRA's rank halved): all three commands see it, because none sets up
    a configuration on its own."""
    real = runner.setup
    calls = []

    def planted(cfg, *a, **kw):
        calls.append(str(cfg.method.name))
        if cfg.method.name == "lora":
            OmegaConf.update(cfg, "method.r", 4)
        return real(cfg, *a, **kw)

    monkeypatch.setattr(runner, "setup", planted)
    args = [*TINY, "method=lora"]
    rec = _run(args, glue_dir, tmp_path)
    _, perf_counts = _perf("lora", [*args, f"data_dir={glue_dir}", f"cache_dir={tmp_path / 'cache'}"])
    counts = _params(args)
    assert rec["params"]["trainable_method"] == perf_counts["trainable_method"] == counts["trainable_method"] \
        == LORA_QV // 2
    assert rec["config"]["method"]["r"] == 4
    assert calls.count("lora") >= 4  # the run, perf's parent and its worker, params


def test_bench_params_for_a_study_counts_what_its_runs_recorded():
    """The committed glue_study_cpu records (MiniLM, mean pooling): `bench params` of the same study gives their
    counts (before the shared setup it counted BERT's pooler, 147,840 more than the runs trained)."""
    import gzip

    source = records.committed_path("glue_study_cpu")
    if not source.is_file():
        pytest.skip("no committed glue_study_cpu records")
    seen = {}
    with gzip.open(source, "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["status"] == "ok" and r["task"] == "cola":
                seen.setdefault(r["method"], r["params"])
    df, info = paramtable.params_table(["experiment=glue_study_cpu", "task=cola", f"method={','.join(sorted(seen))}"])
    assert info["task_type"] == "seq_cls"
    for _, row in df.iterrows():
        want = seen[row["method"]]
        assert (row["trainable (method)"], row["trainable (head)"], row["total"]) == (
            want["trainable_method"], want["trainable_head"], want["total"]), row["method"]


def test_setup_settles_the_config_before_it_identifies_it(tmp_path):
    """train.precision=auto is resolved and the study's per-method settings merged before hashing; check() then
    resolves the method and the task family without reading data or weights."""
    cfg = compose_cfg([*TINY, "method=lora", "train.precision=auto", "+study.method_cfg.lora.r=2",
                       f"results_dir={tmp_path}"])
    s = runner.setup(cfg, device="cpu", check=False)
    assert s.cfg.train.precision in ("fp32", "bf16") and s.precision["requested"] == "auto"
    assert s.identity.config["method"]["r"] == 2 and s.identity.config["train"]["precision"] == s.precision["resolved"]
    assert s.method is None and s.family is None
    s.check()
    assert s.method.name == "lora" and s.task_type == "seq_cls"
    assert Path(s.identity.path).parent == tmp_path
