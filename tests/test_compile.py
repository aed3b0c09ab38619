"""train.compile: every method trains and evaluates under torch.compile exactly as it does eagerly (issue 14).

Per method, 3 training steps (forward, backward, clipping unless the optimizer clips itself, optimizer step, the
method's callbacks at each step end, as the Trainer runs them) and one evaluation forward on a tiny BERT built in
code (1 layer, hidden 32, no dropout: compiled code draws other random numbers than eager code), once eager and
once through ``torch.compile(model, backend=...)``, which is what the Trainer's ``torch_compile`` does (accelerate
wraps the model the same way). Compared:

- the 3 losses and the evaluation logits: ``aot_eager`` (dynamo + AOTAutograd, no code generation) to rtol 1e-6 /
  atol 1e-7 (the same kernels run, only traced); ``inductor`` (generated C++ kernels, which fuse and reorder float
  sums) to rtol 1e-4 / atol 1e-5; the trained tensors the same, except inductor's to atol 1e-4 (see TOL_TRAINED);
- ID3's masks (the selected flat indices of every tensor) and LoRA-Dash's directions (chosen indices, U_s, V_s^T)
  and d, with the switch at t=2 inside the 3 steps;
- the compiled frames: one training graph, one evaluation graph (no_grad is a guard), and for LoRA-Dash one more
  at the switch (the forward reads the layer's switch flag): recompiles 1, LoRA-Dash 2; no graph break.

The inductor cases are marked slow (a few minutes of C++ compilation on a 2-core CPU; `make test` runs them, the
compiled kernels are cached on disk by inductor for later runs).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_bert_config

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
DASH_T = 2
TOL = {"aot_eager": dict(rtol=1e-6, atol=1e-7), "inductor": dict(rtol=1e-4, atol=1e-5)}
# trained tensors after 3 AdamW steps at lr 1e-2: Adam's normalised step turns a rounding difference in a near-zero
# gradient into up to ~lr of movement (seen: 4e-5 on 1 of 4,096 word-embedding entries, full fine-tuning, inductor)
TOL_TRAINED = {"aot_eager": TOL["aot_eager"], "inductor": dict(rtol=1e-4, atol=1e-4)}
METHODS = ["full", "lora", "ia3", "propulsion", "lora_dash", "id3", "id3_in_backward"]
BACKENDS = ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _method_cfg(case: str) -> dict:
    name = "id3" if case.startswith("id3") else case
    cfg = yaml.safe_load((ROOT / "conf" / "method" / f"{name}.yaml").read_text())
    cfg.pop("lr_grid", None)  # a preset's study grid, not a method option
    for key in ("dropout", "lora_dropout", "module_dropout", "rank_dropout", "vera_dropout"):
        if key in cfg:  # dropout draws differ between compiled and eager: compare without it
            cfg[key] = 0.0
    if name in ("pafi", "random_mask"):
        cfg.update(budget=300)
    if name == "lora_dash":
        cfg.update(t=DASH_T, s=2, svd_cache=False)
    if name == "id3":
        cfg.update(budget=300, T=STEPS, in_backward=case == "id3_in_backward")
    return cfg


def _batches():
    g = torch.Generator().manual_seed(7)
    train = [(torch.randint(0, 128, (4, 12), generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(STEPS)]
    return train, torch.randint(0, 128, (3, 12), generator=g)  # evaluation: another batch size


def _train(case: str, backend: str | None) -> dict:
    """3 steps + 1 evaluation; what the comparison needs, and the compile figures when compiled."""
    from transformers import BertForSequenceClassification, TrainerControl, TrainerState

    from bench.run.training import compile_stats
    from methods import MethodContext, get_method

    cfg = _method_cfg(case)
    method = get_method(cfg["name"])
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1, hidden_dropout_prob=0.0,
                                                           attention_probs_dropout_prob=0.0))
    # the model sets this itself at its first forward, which would cost every method one recompile
    model.config.problem_type = "single_label_classification"
    ctx = MethodContext(task_type="seq_cls", task_name="sst2", model_type="bert", head_modules=["classifier"],
                        total_steps=STEPS, num_labels=2)
    model = method.apply(model, cfg, ctx)
    train_cfg = dict(lr=1e-2, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                     max_grad_norm=1.0, grad_accum=1, precision="fp32")
    opt = method.create_optimizer(model, cfg, ctx, train_cfg)
    if opt is None:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    clips = not getattr(opt, "handles_grad_clipping", False)
    callbacks = method.callbacks(model, cfg, ctx)
    if backend is not None:
        compile_stats(reset=True)
    run = torch.compile(model, backend=backend) if backend is not None else model
    state = TrainerState()
    train, eval_ids = _batches()
    model.train()
    losses = []
    for ids, labels in train:
        loss = run(input_ids=ids, labels=labels).loss
        loss.backward()
        if clips:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        state.global_step += 1
        for cb in callbacks:
            cb.on_step_end(None, state, TrainerControl(), model=model)
    model.eval()
    with torch.no_grad():
        logits = run(input_ids=eval_ids).logits
    out = {"losses": torch.stack(losses), "logits": logits,
           "trained": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}}
    if cfg["name"] == "id3":
        out["masks"] = [opt.selected_indices(p) for p in opt.selective_params]
    if cfg["name"] == "lora_dash":
        from methods.lora_dash import dash_layers, is_switched

        assert is_switched(model)
        out["dash"] = {n: (m.lora_dash_index["default"].clone(), m.lora_dash_U["default"].clone(),
                           m.lora_dash_Vh["default"].clone(), m.lora_dash_d["default"].detach().clone())
                       for n, m in dash_layers(model)}
    if backend is not None:
        out["compile"] = compile_stats()
    return out


@functools.lru_cache(maxsize=None)
def _eager(case: str) -> dict:  # shared by both backends
    return _train(case, None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", METHODS)
def test_compiled_training_matches_eager(case, backend):
    eager, compiled = _eager(case), _train(case, backend)
    tol = TOL[backend]
    torch.testing.assert_close(compiled["losses"], eager["losses"], **tol)
    torch.testing.assert_close(compiled["logits"], eager["logits"], **tol)
    assert compiled["trained"].keys() == eager["trained"].keys()
    for name, value in eager["trained"].items():
        torch.testing.assert_close(compiled["trained"][name], value, **TOL_TRAINED[backend], msg=name)
    if "masks" in eager:  # ID3: the very same entries selected
        assert sum(m.numel() for m in eager["masks"]) == 300
        for a, b in zip(compiled["masks"], eager["masks"]):
            assert torch.equal(a, b)
    if "dash" in eager:  # LoRA-Dash: switched at t=2, the same directions, d trained at step 3
        assert compiled["dash"].keys() == eager["dash"].keys() and eager["dash"]
        for name, (idx, U, Vh, d) in eager["dash"].items():
            cidx, cU, cVh, cd = compiled["dash"][name]
            assert torch.equal(cidx, idx) and (idx >= 0).all(), name
            torch.testing.assert_close(cU, U, **tol)
            torch.testing.assert_close(cVh, Vh, **tol)
            torch.testing.assert_close(cd, d, **tol)
            assert d.abs().sum() > 0  # d trained after the switch, compiled as eager
    stats = compiled["compile"]
    # training graph + evaluation graph (+ LoRA-Dash: the graph after the switch); nothing falls back to eager
    assert stats["recompiles"] == (2 if case == "lora_dash" else 1), stats
    assert stats["frames"] == stats["recompiles"] + 1, stats
    assert stats["graph_breaks"] == 0, stats


# every other method of methods.available() (issue 23's contract: compiled equals eager where compile is supported);
# prefix tuning cannot take a BERT model (one-line refusal, tests/test_method_contract.py), `peft` is the generic
# method the presets are made of
NEW_METHODS = ["adalora", "adapter_parallel", "adapter_series", "bitfit", "dora", "fourierft", "loha", "lokr",
               "milora", "oft", "pafi", "pissa", "prompt_tuning", "random_mask", "vera"]


def test_the_compile_contract_covers_every_method():
    from methods import available

    assert set(available()) == set(METHODS) - {"id3_in_backward"} | set(NEW_METHODS) | {"prefix_tuning", "peft"}


@pytest.mark.parametrize("case", NEW_METHODS)
def test_compiled_training_matches_eager_every_method(case):
    """aot_eager: the same losses, logits and trained tensors as eager (graph breaks allowed: peft code that dynamo
    cannot trace falls back to eager for that piece, which changes no number)."""
    eager, compiled = _train(case, None), _train(case, "aot_eager")
    tol = TOL["aot_eager"]
    torch.testing.assert_close(compiled["losses"], eager["losses"], **tol)
    torch.testing.assert_close(compiled["logits"], eager["logits"], **tol)
    assert compiled["trained"].keys() == eager["trained"].keys() and eager["trained"]
    for name, value in eager["trained"].items():
        torch.testing.assert_close(compiled["trained"][name], value, **TOL_TRAINED["aot_eager"], msg=name)
    assert compiled["compile"]["frames"] >= 1


def test_runner_compiled_run_records_its_compilation(glue_dir, tmp_path):
    """The harness path (train.compile=true through the Trainer's torch_compile): LoRA-Dash switches inside the run,
    the losses equal the eager run's, evaluation runs compiled, the record says what was compiled."""
    from conftest import compose_cfg

    from bench.run import runner

    recs = {}
    for compiled in ("false", "true"):
        cfg = compose_cfg(["method=lora_dash", "method.t=2", "method.dropout=0", "task=sst2", "model=tiny-bert",
                           "train.max_steps=4", "train.logging_steps=1", f"train.compile={compiled}",
                           "train.compile_backend=aot_eager", "data.max_train_samples=32", "data.max_eval_samples=16",
                           "train.progress=false", f"data_dir={glue_dir}", f"results_dir={tmp_path}/{compiled}",
                           f"cache_dir={tmp_path}/cache"])
        recs[compiled] = runner.run(cfg)
    eager, comp = recs["false"], recs["true"]
    assert "compile" not in eager
    assert comp["method_state"]["switched"] and comp["method_state"]["switch_step"] == 2
    le = [v for _, v in eager["train"]["loss_curve"]]
    lc = [v for _, v in comp["train"]["loss_curve"]]
    assert len(le) == len(lc) >= 4
    torch.testing.assert_close(torch.tensor(lc), torch.tensor(le), rtol=1e-5, atol=1e-6)
    assert comp["main_score"] == pytest.approx(eager["main_score"])
    stats = comp["compile"]
    assert stats["backend"] == "aot_eager" and stats["graph_breaks"] == 0
    # train, the switch, evaluation (+ shape changes of the last, smaller batches): bounded well below dynamo's limit
    assert 2 <= stats["recompiles"] <= 6 and stats["frames"] == stats["recompiles"] + 1, stats


def test_config_hash_eager_as_before_compiled_apart():
    """An eager run hashes as if the compile keys did not exist (records written before they did still match,
    so sweeps resume and tables find them); a compiled run is a different run (other dropout draws)."""
    from bench.records import store as records

    base = {"seed": 1, "method": {"name": "lora"}, "train": {"lr": 1e-3, "epochs": 3}}
    eager = {**base, "train": {**base["train"], "compile": False, "compile_backend": "inductor", "compile_mode": None}}
    compiled = {**base, "train": {**eager["train"], "compile": True}}
    aot = {**base, "train": {**compiled["train"], "compile_backend": "aot_eager"}}
    assert records.config_hash(eager) == records.config_hash(base)
    assert records.config_hash(compiled) != records.config_hash(base)
    assert records.config_hash(aot) != records.config_hash(compiled)
