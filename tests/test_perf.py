"""`python -m bench perf`: option parsing, the frozen floor, the JSON record's shape and numbers."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from bench.errors import BenchError
from bench.perf import driver as perf
from bench.perf import driver, options, session

TINY = ["model=tiny-bert", "task=sst2"]
SMALL = ["perf.batch_size=2", "perf.seq_len=8", "perf.eval_steps=1", "perf.threads=1"]


def _session(method: str, extra=()):
    p = options.perf_options(["perf.steps=2", "perf.warmup=0", *SMALL])
    cfg = options.method_configs([method], [], [*TINY, *extra], p)[method]
    return session.Session(cfg, OmegaConf.to_container(p, resolve=True))


# --- options --------------------------------------------------------------------------------------
def test_parse_argv_splits_methods_perf_method_and_hydra_overrides():
    methods, p_ov, m_ov, rest = options.parse_argv(
        ["method=full,lora", "perf.steps=3", "method.r=4", "model=tiny-bert", "train.precision=bf16"])
    assert methods == ["full", "lora"]
    assert p_ov == ["perf.steps=3"]
    assert m_ov == ["method.r=4"]  # as given: the one splitter (bench.config.overrides.split_overrides) keeps the prefix
    assert rest == ["model=tiny-bert", "train.precision=bf16"]


def test_unknown_perf_option_suggests_the_right_one():
    with pytest.raises(BenchError, match=r"perf\.stepz.*did you mean perf\.steps"):
        options.perf_options(["perf.stepz=3"])


@pytest.mark.parametrize("bad", ["perf.steps=0", "perf.warmup=-1", "perf.rounds=5", "perf.device=tpu"])
def test_bad_perf_values_are_rejected(bad):
    with pytest.raises(BenchError, match="perf"):
        options.perf_options(["perf.steps=4", bad])


def test_unknown_method_is_an_actionable_error():
    p = options.perf_options([])
    with pytest.raises(BenchError, match="Did you mean 'lora'"):
        options.method_configs(["lorra"], [], TINY, p)


def test_method_override_reaches_only_methods_that_have_the_key():
    p = options.perf_options([])
    cfgs = options.method_configs(["frozen", "full", "lora"], ["method.r=4"], TINY, p)
    assert cfgs["lora"]["method"]["r"] == 4
    assert "r" not in cfgs["full"]["method"]
    assert cfgs["frozen"]["method"] == {"name": "frozen"}
    assert cfgs["full"]["model"]["name"] == "tiny-bert"
    with pytest.raises(BenchError, match="method.nosuch"):
        options.method_configs(["full", "lora"], ["method.nosuch=1"], TINY, p)


def test_split_steps_and_rotation():
    assert driver.split_steps(7, 3) == [3, 2, 2]
    assert sum(driver.split_steps(20, 20)) == 20
    assert driver.rotated(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert driver.rotated(["a", "b", "c"], 3) == ["a", "b", "c"]


def test_synthetic_batches_per_task_type():
    b = session.synthetic_batch("causal_lm", 50000, 3, 7, None, False, 0)
    assert b["input_ids"].shape == (3, 7) and torch.equal(b["labels"], b["input_ids"])
    assert b["input_ids"].min() >= 1000  # clear of special tokens
    b = session.synthetic_batch("seq_cls", 50000, 3, 7, 3, False, 0)
    assert b["labels"].shape == (3,) and b["labels"].max() < 3
    b = session.synthetic_batch("qa", 50000, 3, 7, None, False, 0)
    assert (b["start_positions"] <= b["end_positions"]).all() and b["end_positions"].max() < 7


# --- the frozen floor -----------------------------------------------------------------------------
def test_frozen_floor_trains_no_weight_but_backward_runs_through_every_layer():
    s = _session("frozen")
    model = s.model
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    seen = {}

    def keep(module, inputs, output):
        output.retain_grad()
        seen["emb"] = output

    model.get_input_embeddings().register_forward_hook(keep)
    reached = set()
    layers = model.bert.encoder.layer
    for i, layer in enumerate(layers):
        layer.register_full_backward_hook(lambda m, gi, go, i=i: reached.add(i))

    times, cpu = s.train(2)
    assert len(times) == len(cpu) == 2 and all(t > 0 for t in times) and all(c > 0 for c in cpu)
    assert s.optimizer is None and s.params["trainable"] == 0
    assert not any(q.requires_grad for q in model.parameters())
    assert all(q.grad is None for q in model.parameters())
    assert all(torch.equal(before[n], q) for n, q in model.named_parameters())
    # the gradient reached the input embeddings' output: backward crossed every layer
    assert seen["emb"].grad is not None and seen["emb"].grad.abs().sum() > 0
    assert reached == set(range(len(layers)))


def test_full_fine_tuning_session_changes_weights_with_the_trainers_adamw():
    s = _session("full")
    w = s.model.bert.encoder.layer[0].attention.self.query.weight
    before = w.detach().clone()
    s.train(1)
    assert not torch.equal(before, w)
    assert type(s.optimizer).__name__ == "AdamW"
    # the Trainer's weight-decay groups: biases / LayerNorm apart
    assert len(s.optimizer.param_groups) == 2
    rep = s.report()
    n = s.params["trainable"]
    assert rep["optimizer_state_bytes"] >= 2 * 4 * n  # exp_avg + exp_avg_sq in fp32


@pytest.mark.parametrize("method", ["frozen", "lora"])
def test_bf16_autocast_and_gradient_checkpointing_apply_to_every_method(method):
    s = _session(method, extra=["train.precision=bf16", "train.gradient_checkpointing=true"])
    base = s.model.get_base_model() if hasattr(s.model, "get_base_model") else s.model
    on = getattr(base, "is_activation_checkpointing", None)
    assert (on if on is not None else base.is_gradient_checkpointing) is True
    inside = []
    base.bert.encoder.layer[0].attention.self.query.register_forward_hook(lambda m, i, o: inside.append(o.dtype))
    trained = [q.detach().clone() for q in s.trainable]
    s.train(1)
    assert torch.bfloat16 in inside  # the linear layers ran under bf16 autocast
    if method == "frozen":
        assert not trained
    else:  # LoRA B starts at 0 and moves on the first step
        assert any(not torch.equal(a, b) for a, b in zip(trained, s.trainable))


# --- the whole command (in-process workers: fast) ----------------------------------------------------
def test_perf_record_shape_and_ratios(tmp_path, capsys):
    rec = perf.main([*TINY, "method=full,lora,ia3", "perf.steps=2", "perf.warmup=1", *SMALL,
                     "perf.isolate=false", f"perf.results_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "x frozen" in out and "lora" in out
    path = tmp_path / next(p.name for p in tmp_path.glob("perf__tiny-bert__sst2__*.json"))
    on_disk = json.loads(path.read_text())
    assert path.with_suffix(".md").is_file()
    assert on_disk["methods"] == ["frozen", "full", "lora", "ia3"]
    assert on_disk["batch_size"] == 2 and on_disk["seq_len"] == 8
    res = on_disk["results"]
    assert rec["results"].keys() == res.keys()
    for name, r in res.items():
        assert r["status"] == "ok", (name, r.get("error"))
        assert r["timed_steps"] == 2 and len(r["step_times_s"]) == 2 and len(r["warmup_times_s"]) == 1
        assert r["step_time_median_s"] > 0 and r["step_cpu_median_s"] > 0 and r["eval_examples_per_s"] > 0
        assert len(r["eval_times_s"]) == 1  # perf.eval_steps; the untimed warm-up batch is not among them
        assert r["memory"]["peak_rss_mb"] > 0
        assert r["ratio_to_frozen"] == pytest.approx(r["step_time_median_s"] / res["frozen"]["step_time_median_s"], rel=1e-2)
    assert res["frozen"]["ratio_to_frozen"] == 1.0 and res["full"]["ratio_to_full"] == 1.0
    assert res["frozen"]["cpu_ratio_to_frozen"] == 1.0 and res["full"]["cpu_ratio_to_full"] == 1.0
    assert "x frozen (CPU)" in out
    assert res["frozen"]["params"]["trainable"] == 0 and res["frozen"]["optimizer_state_bytes"] == 0
    assert res["full"]["params"]["trainable"] == res["full"]["params"]["total"]
    assert 0 < res["ia3"]["params"]["trainable"] < res["lora"]["params"]["trainable"] < res["full"]["params"]["trainable"]
    assert res["full"]["optimizer_state_bytes"] > res["lora"]["optimizer_state_bytes"] > 0


def test_a_failing_method_is_recorded_and_the_others_still_run(tmp_path):
    rec = perf.main([*TINY, "method=full,lora", "method.r=0", "perf.steps=1", "perf.warmup=0", *SMALL,
                     "perf.isolate=false", "perf.floor=false", f"perf.results_dir={tmp_path}"])
    res = rec["results"]
    assert "frozen" not in res
    assert res["full"]["status"] == "ok" and res["full"]["ratio_to_frozen"] is None
    assert res["lora"]["status"] == "failed" and "method.r" in res["lora"]["error"]


def test_short_workers_per_round_merge_their_figures(tmp_path):
    rec = perf.main([*TINY, "method=lora", "perf.steps=3", "perf.warmup=1", *SMALL, "perf.keep_alive=false",
                     "perf.isolate=false", "perf.results_dir=null"])
    assert rec["perf"]["keep_alive"] is False
    for r in rec["results"].values():
        assert r["status"] == "ok", r.get("error")
        # 2 rounds (the default without keep_alive): 2 + 1 timed steps, a fresh worker with its own warm-up each
        assert r["timed_steps"] == 3 and len(r["warmup_times_s"]) == 2


def test_lora_dash_is_timed_after_its_switch():
    from methods import available

    if "lora_dash" not in available():
        pytest.skip("lora_dash is not registered in this checkout")
    rec = perf.main([*TINY, "method=lora_dash", "perf.steps=1", "perf.warmup=2", *SMALL, "perf.isolate=false",
                     "perf.floor=false", "perf.results_dir=null"])
    r = rec["results"]["lora_dash"]
    assert r["status"] == "ok", r.get("error")
    assert r["method_state"]["switched"] is True and r["method_state"]["switch_step"] <= 2


# --- real worker processes ----------------------------------------------------------------------------
@pytest.mark.slow
def test_subprocess_workers_report_their_own_memory(tmp_path):
    rec = perf.main([*TINY, "method=lora", "perf.steps=2", "perf.warmup=1", *SMALL, "perf.rounds=2",
                     f"perf.results_dir={tmp_path}"])
    res = rec["results"]
    assert set(res) == {"frozen", "lora"}
    for r in res.values():
        assert r["status"] == "ok", r.get("error")
        assert r["timed_steps"] == 2 and r["memory"]["rss_after_build_mb"] > 0
        assert r["threads"] == 1


# --- cost figures of every run (bench/run/cost.py) ----------------------------------------------------------
def test_startup_counts_from_process_start_for_the_first_run_only(monkeypatch):
    import time

    from bench.run import cost

    start = cost.process_start()
    now = time.perf_counter()
    # this process began before pytest imported torch and this module: well over 0.2 s ago, and not days ago
    assert start is not None and 0.2 < now - start < 24 * 3600
    monkeypatch.setattr(cost, "_process_start_claimed", False)
    run_start = now
    assert cost.startup_origin(run_start) == pytest.approx(start, abs=0.05)  # first run: imports count
    later = time.perf_counter()
    assert cost.startup_origin(later) == later  # a second run of a sweep counts from its own start


# --- one training step: perf times the Trainer's own step, built by the run's Trainer factory -------------------
def test_perf_times_the_step_bench_run_trains_with(monkeypatch):
    """perf has no training step of its own: patching the Trainer's step (what `bench run` trains with) changes what
    perf calls and times, and perf's Trainer comes from the run's factory (bench.run.training.make_trainer)."""
    import time

    from bench.run import checkpoint, training

    calls = []
    real_step = checkpoint.CheckpointTrainer.training_step

    def slow_step(self, model, inputs, num_items_in_batch=None):
        calls.append(tuple(inputs["input_ids"].shape))
        time.sleep(0.25)
        return real_step(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(checkpoint.CheckpointTrainer, "training_step", slow_step)
    built = []
    real_make = training.make_trainer
    monkeypatch.setattr(training, "make_trainer", lambda *a, **kw: built.append(a[0]) or real_make(*a, **kw))
    s = _session("lora")
    assert len(built) == 1 and built[0].train.batch_size == 2 and built[0].train.max_steps == 2
    assert calls == []  # built and waiting before step 1
    times, cpu = s.train(2)
    assert calls == [(2, 8), (2, 8)]  # perf.batch_size x perf.seq_len, one Trainer step per timed step
    assert all(t >= 0.25 for t in times)  # the patched step is what the clock measured
    s.close()


def test_a_session_closes_its_trainer_loop():
    s = _session("frozen")
    s.train(1)
    s.close()
    assert not s._thread.is_alive() and s.pacer.error is None


@pytest.mark.slow  # dynamo traces the model twice (about a minute on a loaded 2-core CPU)
def test_compiled_perf_reports_compile_time_apart_from_the_steps():
    rec = driver.main([*TINY, "method=lora", "perf.steps=2", "perf.warmup=2", *SMALL, "perf.isolate=false",
                       "perf.floor=false", "perf.results_dir=null", "train.compile=true",
                       "train.compile_backend=aot_eager"])
    r = rec["results"]["lora"]
    assert r["status"] == "ok", r.get("error")
    assert rec["compile"] is True and r["compiled"] is True
    c = r["compile"]
    assert c["frames"] >= 1 and c["compile_s"] > 0 and c["graph_breaks"] == 0
    assert c["frames_in_timed_steps"] == 0 and c["compile_s_in_timed_steps"] == 0  # all in the warm-up
    # the first step carries the compilation: far slower than the timed steps, and reported apart from them
    assert r["first_step_s"] > 3 * r["step_time_median_s"] and r["warmup_excess_s"] > 0
    assert r["compile_s"] == c["compile_s"]


def test_the_training_rows_end_where_they_say():
    # a sampler that iterates the dataset (the Trainer's length-grouped one) must reach its end
    rows = session.Rows(session.synthetic_batch("causal_lm", 50000, 2, 5, None, False, 0), 6)
    assert len(list(rows)) == len(rows) == 6
    assert torch.equal(rows[4]["input_ids"], rows[0]["input_ids"])  # the batch's rows over and over
