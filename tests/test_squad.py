"""SQuAD v1.1 / v2.0: official scoring, pre/post-processing (oracle logits on real examples), every method on the QA head."""

import json
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_cli

from bench.config.compose import compose
from bench.errors import BenchError
from bench.tasks import squad_metrics as SM
from bench.tasks.data import TaskData, subsample
from bench.tasks.families import get_family
from bench.tasks.squad import QASettings, answer_token_span, nbest_spans, train_features

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BENCH_DATA_DIR", ROOT.parent / "shared" / "data"))
SQUAD_DEV = DATA / "squad" / "squad" / "validation.parquet"
# The one SQuAD v1.1 dev question (of 10,570) whose gold answers all fall inside a WordPiece token of the
# MiniLM (bert-base-uncased) vocabulary: gold "four" is the first part of the single token "fourth", so no
# token span equals it and even perfect logits predict "fourth" (EM 0, F1 0).
UNALIGNED_ID = "56dfa1d34a1a83140091ebd4"


# ------------------------------------------------------------------------------------------------
# official scoring on hand cases
# ------------------------------------------------------------------------------------------------
def test_normalisation_follows_the_official_rules():
    assert SM.normalize_answer("The  Cat-sat, on\ta mat!") == "catsat on mat"  # punctuation dropped, not spaced
    assert SM.normalize_answer("An apple and THE pear.") == "apple and pear"
    assert SM.normalize_answer("theory of anything") == "theory of anything"  # articles only as whole words
    assert SM.normalize_answer("  ") == ""


def test_exact_match_and_f1_hand_cases():
    assert SM.exact_match("Denver Broncos", "the denver broncos.") == 1.0
    assert SM.exact_match("Denver", "Denver Broncos") == 0.0
    # pred tokens [cat sat on mat], gold [cat on mat]: precision 3/4, recall 1
    assert SM.token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(2 * 0.75 / 1.75)
    # multiset overlap: x x y vs x y y share one x and one y
    assert SM.token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert SM.token_f1("dog", "cat") == 0.0
    # both sides normalise to nothing: v2.0 says match, v1.1's script gives F1 0 (EM still 1)
    assert SM.token_f1("the", "a", empty_matches_empty=True) == 1.0
    assert SM.token_f1("the", "a", empty_matches_empty=False) == 0.0
    assert SM.example_scores("the", ["a"], v2=False) == (1.0, 0.0)
    # the max over gold answers, EM and F1 each on its own
    em, f1 = SM.example_scores("Broncos", ["Denver Broncos", "the Broncos!"], v2=False)
    assert (em, f1) == (1.0, 1.0)
    em, f1 = SM.example_scores("Denver", ["Denver Broncos", "Carolina"], v2=False)
    assert em == 0.0 and f1 == pytest.approx(2 / 3)


def test_v1_scores_are_fractions_averaged_over_examples():
    refs = {"a": ["Denver Broncos"], "b": ["Santa Clara"], "c": ["1990"]}
    s = SM.score_v1({"a": "Denver Broncos", "b": "Clara", "c": "wrong"}, refs)
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert SM.score_v1({}, refs)["f1"] == 0.0  # a missing prediction scores 0


def test_v2_empty_prediction_means_no_answer_and_breakdown():
    refs = {"h1": ["Paris"], "h2": ["Rome", "the Rome"], "n1": [], "n2": ["the"]}  # n2: normalises to nothing
    preds = {"h1": "Paris", "h2": "", "n1": "", "n2": "something"}
    s = SM.score_v2(preds, refs)
    assert s["HasAns_total"] == 2 and s["NoAns_total"] == 2
    assert s["HasAns_exact_match"] == 0.5 and s["HasAns_f1"] == 0.5  # "" on an answerable question scores 0
    assert s["NoAns_exact_match"] == 0.5 and s["NoAns_f1"] == 0.5  # "" right, "something" wrong
    assert s["exact_match"] == 0.5 and s["f1"] == 0.5
    assert SM.gold_answers_v2(["the", " a "]) == [""]


def test_best_null_threshold_is_what_applying_it_scores():
    rng = np.random.default_rng(0)
    ids = [f"q{i}" for i in range(60)]
    refs = {q: (["alpha beta"] if i % 3 else []) for i, q in enumerate(ids)}
    spans = {q: rng.choice(["alpha beta", "alpha", "gamma"]) for q in ids}
    diffs = {q: float(rng.normal()) for q in ids}
    best, t = SM.best_null_threshold(spans, diffs, refs, "f1")
    assert SM.score_v2(SM.apply_null_threshold(spans, diffs, t), refs)["f1"] == pytest.approx(best)
    for cand in [-10.0, *diffs.values(), 10.0]:  # no threshold does better
        assert SM.score_v2(SM.apply_null_threshold(spans, diffs, cand), refs)["f1"] <= best + 1e-12
    # hand case: answering q1 (right) and q3 (right) but not q2 / q4 (unanswerable) is the optimum
    refs = {"q1": ["x"], "q2": [], "q3": ["y"], "q4": []}
    spans = {"q1": "x", "q2": "junk", "q3": "y", "q4": "junk"}
    best, t = SM.best_null_threshold(spans, {"q1": -5.0, "q2": 4.0, "q3": 3.0, "q4": 10.0}, refs, "exact_match")
    assert best == 1.0 and 3.0 <= t < 4.0


# ------------------------------------------------------------------------------------------------
# pre/post-processing building blocks
# ------------------------------------------------------------------------------------------------
def test_answer_token_span_inside_and_outside_the_window():
    offsets = [(0, 0), (0, 5), (6, 11), (12, 14), (15, 20), (0, 0)]  # [CLS] hello world is great [SEP]
    assert answer_token_span(offsets, 1, 4, 6, 14) == (2, 3)  # "world is"
    assert answer_token_span(offsets, 1, 4, 7, 10) == (2, 2)  # inside one token -> that token
    assert answer_token_span(offsets, 2, 4, 0, 5) is None  # starts before the window
    assert answer_token_span(offsets, 1, 3, 12, 20) is None  # ends after the window


def brute_force_best(start, end, lo, hi, max_len):
    pairs = [(start[a] + end[b], a, b) for a in range(lo, hi + 1) for b in range(a, min(hi, a + max_len - 1) + 1)]
    return max(pairs)


@pytest.mark.parametrize("max_len", [1, 3, 30])
def test_nbest_spans_finds_the_best_valid_span(max_len):
    gen = torch.Generator().manual_seed(max_len)
    start, end = torch.randn(6, 20, generator=gen), torch.randn(6, 20, generator=gen)
    start[:, 0] = end[:, 0] = 50.0  # CLS is outside the context: never part of a span
    ctx_start = torch.tensor([1, 1, 5, 8, 2, 10])
    ctx_end = torch.tensor([19, 10, 12, 8, 15, 17])
    # n_best = the window length makes the n-best search exhaustive: it must match brute force
    scores, s, e = nbest_spans(start, end, ctx_start, ctx_end, n_best=20, max_answer_length=max_len)
    for b in range(6):
        best, a, z = brute_force_best(start[b].tolist(), end[b].tolist(), int(ctx_start[b]), int(ctx_end[b]), max_len)
        assert (s[b, 0], e[b, 0]) == (a, z) and scores[b, 0] == pytest.approx(best)
        valid = np.isfinite(scores[b])
        assert np.all(e[b][valid] >= s[b][valid]) and np.all(e[b][valid] - s[b][valid] < max_len)
        assert np.all(s[b][valid] >= int(ctx_start[b])) and np.all(e[b][valid] <= int(ctx_end[b]))
        assert np.all(np.diff(scores[b][valid]) <= 0)  # ranked
    # the pair with the highest raw score is invalid (end before start): the best valid one wins
    start, end = torch.full((1, 10), -5.0), torch.full((1, 10), -5.0)
    start[0, 7], end[0, 3] = 9.0, 9.0
    start[0, 2], end[0, 6] = 8.0, 1.0
    scores, s, e = nbest_spans(start, end, torch.tensor([1]), torch.tensor([8]), n_best=3, max_answer_length=30)
    assert (s[0, 0], e[0, 0]) == (2, 3) and scores[0, 0] == pytest.approx(17.0)


def test_bad_task_settings_are_rejected_with_a_fix():
    cfg = compose(["task=squad", "model=tiny-bert", "task.doc_stride=400"])
    with pytest.raises(BenchError, match="doc_stride"):
        get_family("squad")(cfg, Path("/tmp")).validate()
    cfg = compose(["task=squad_v2", "model=tiny-bert", "task.null_threshold=maybe"])
    with pytest.raises(BenchError, match="null_threshold"):
        get_family("squad")(cfg, Path("/tmp")).validate()
    cfg = compose(["task=squad", "model=tiny-bert", "task.main_metric=HasAns_f1"])  # a v2-only metric on v1
    with pytest.raises(BenchError, match="main_metric"):
        get_family("squad")(cfg, Path("/tmp")).validate()
    for task in ("squad", "squad_v2"):
        cfg = compose([f"task={task}", "model=tiny-bert"])
        get_family(cfg.task.family)(cfg, Path("/tmp")).validate()
        assert cfg.task.main_metric == "f1" and cfg.task.group_field == "title"


def test_training_part_is_carved_from_validation_disjoint_by_article(tmp_path, monkeypatch):
    if not SQUAD_DEV.is_file():
        pytest.skip(f"SQuAD v1.1 validation not found at {SQUAD_DEV}")
    monkeypatch.setattr("bench.tasks.data.hub_reachable", lambda: False)
    cfg = compose(["task=squad", "model=tiny-bert", f"data_dir={DATA}", "data.max_eval_samples=300"])
    data = get_family("squad")(cfg, tmp_path).load_data()
    assert data.info["carved"]["from"] == "validation" and data.info["carved"]["group_field"] == "title"
    assert "train split unavailable" in data.info["carve_reason"]
    assert not set(data.train["title"]) & set(data.evals["default"]["title"])  # no article on both sides
    assert not set(data.train["context"]) & set(data.evals["default"]["context"])
    assert data.info["train_size"] + data.info["eval_sizes_full"]["default"] == 10570
    # squad_v2 without any source: one message naming the folder to fill
    cfg = compose(["task=squad_v2", "model=tiny-bert", f"data_dir={tmp_path}"])
    with pytest.raises(BenchError, match="squad/squad_v2"):
        get_family("squad")(cfg, tmp_path).load_data()


# ------------------------------------------------------------------------------------------------
# oracle: logits that point at the gold spans, through the real pre/post-processing
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from bench.models.build import load_tokenizer

    return load_tokenizer(compose(["model=minilm"]).model)


@pytest.fixture(scope="module")
def squad_dev():
    if not SQUAD_DEV.is_file():
        pytest.skip(f"SQuAD v1.1 validation not found at {SQUAD_DEV} (set BENCH_DATA_DIR)")
    import datasets

    ds = datasets.load_dataset("parquet", data_files={"validation": str(SQUAD_DEV)}, split="validation")
    picked = subsample(ds, 200, 0)
    extra = ds.filter(lambda r: r["id"] == UNALIGNED_ID)
    return datasets.concatenate_datasets([picked, extra])


class OracleQA(nn.Module):
    """start / end logits of 10 at the gold tokens of each window (CLS when the answer is not in it).

    Gold tokens come from the tokenizer's own char_to_token, independently of the code under test;
    windows are recognised by their input ids. Unanswerable (v2) windows also get a weak span (3 + 3)
    so that the null score (10 + 10) has something to beat.
    """

    def __init__(self, examples, tokenizer, max_length, stride):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.gold: dict = {}
        self.n_windows: dict = {}
        self.unaligned: list = []
        for ex in examples:
            enc = tokenizer(ex["question"].lstrip(), ex["context"], truncation="only_second", max_length=max_length,
                            stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
            self.n_windows[ex["id"]] = len(enc["input_ids"])
            texts, starts = ex["answers"]["text"], ex["answers"]["answer_start"]
            aligned = False
            for i, ids in enumerate(enc["input_ids"]):
                span = None
                if len(texts):
                    a, z = int(starts[0]), int(starts[0]) + len(texts[0])
                    s, e = enc.char_to_token(i, a, sequence_index=1), enc.char_to_token(i, z - 1, sequence_index=1)
                    if s is not None and e is not None:
                        span = (s, e)
                        off = enc["offset_mapping"][i]
                        aligned |= ex["context"][off[s][0]:off[e][1]] == texts[0]
                first_ctx = enc.sequence_ids(i).index(1)
                self.gold[tuple(ids)] = span or first_ctx
            if len(texts) and not aligned:
                self.unaligned.append(ex["id"])

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        bsz, length = input_ids.shape
        start, end = torch.zeros(bsz, length), torch.zeros(bsz, length)
        for b in range(bsz):
            n = int(attention_mask[b].sum())
            target = self.gold[tuple(input_ids[b, :n].tolist())]
            if isinstance(target, tuple):
                start[b, target[0]] = end[b, target[1]] = 10.0
            else:  # no answer in this window: the null (CLS) wins, plus a weak one-token span
                start[b, 0] = end[b, 0] = 10.0
                start[b, target] = end[b, target] = 3.0
        return types.SimpleNamespace(start_logits=start, end_logits=end)


def squad_family(tmp_path, task="squad", extra=()):
    cfg = compose([f"task={task}", "model=minilm", "train.progress=false", "train.eval_batch_size=16",
                   f"cache_dir={tmp_path}/cache", *extra])
    fam = get_family(cfg.task.family)(cfg, tmp_path / "cache")
    fam.validate()
    return cfg, fam


def per_example(out_dir: Path, examples, v2: bool):
    preds = json.loads((out_dir / "predictions.json").read_text())
    assert set(preds) == set(examples["id"])
    return {ex["id"]: SM.example_scores(preds[ex["id"]], ex["answers"]["text"], v2) for ex in examples}, preds


@pytest.mark.parametrize("max_length,stride", [(384, 128), (64, 16)], ids=["default-windows", "short-windows"])
def test_oracle_logits_recover_the_gold_answers(squad_dev, tokenizer, tmp_path, max_length, stride):
    cfg, fam = squad_family(tmp_path, extra=[f"task.max_length={max_length}", f"task.doc_stride={stride}", "task.max_query_length=40"])
    oracle = OracleQA(squad_dev, tokenizer, max_length, stride)
    data = TaskData(train=None, evals={"default": squad_dev}, info={})
    metrics = fam.evaluate(oracle, data, tokenizer, out_dir=tmp_path / "preds")
    scores, preds = per_example(tmp_path / "preds", squad_dev, v2=False)
    # the one known example whose gold answer is not a token span (see UNALIGNED_ID), and only it
    assert oracle.unaligned == [UNALIGNED_ID]
    assert preds[UNALIGNED_ID] == "fourth"
    for qid, (em, f1) in scores.items():
        if qid not in oracle.unaligned:
            assert (em, f1) == (1.0, 1.0), (qid, preds[qid])
    n = len(squad_dev)
    assert metrics["exact_match"] == pytest.approx((n - 1) / n)
    assert metrics["f1"] == pytest.approx((n - 1) / n)
    windows = np.array(list(oracle.n_windows.values()))
    assert data.info["eval_features"]["default"] == windows.sum()
    if max_length == 64:  # long contexts: many windows per example, the answer still comes back
        assert (windows > 1).mean() > 0.9 and windows.max() >= 10


def test_training_labels_point_at_the_answer_or_cls(squad_dev, tokenizer):
    s = QASettings(max_length=64, doc_stride=16, max_query_length=40)
    rows = squad_dev.select(range(40))[:]
    feats = train_features(rows, tokenizer, s)
    enc = tokenizer([q.lstrip() for q in rows["question"]], rows["context"], truncation="only_second", max_length=64,
                    stride=16, return_overflowing_tokens=True, return_offsets_mapping=True)
    assert feats["input_ids"] == enc["input_ids"]
    n_cls = 0
    for i, (st, en) in enumerate(zip(feats["start_positions"], feats["end_positions"])):
        ex = enc["overflow_to_sample_mapping"][i]
        a = rows["answers"][ex]["answer_start"][0]
        text = rows["answers"][ex]["text"][0]
        ts, te = enc.char_to_token(i, a, sequence_index=1), enc.char_to_token(i, a + len(text) - 1, sequence_index=1)
        if ts is None or te is None:
            assert st == en == 0  # CLS
            n_cls += 1
        else:
            assert (st, en) == (ts, te)
            off = enc["offset_mapping"][i]
            assert SM.normalize_answer(rows["context"][ex][off[st][0]:off[en][1]]) == SM.normalize_answer(text)
    assert 0 < n_cls < len(feats["input_ids"])


# ------------------------------------------------------------------------------------------------
# v2: unanswerable questions
# ------------------------------------------------------------------------------------------------
def v2_examples():
    import datasets

    long_ctx = " ".join(f"Sentence number {i} talks about nothing in particular." for i in range(40))
    long_ctx += " The treasure is buried under the old oak tree."
    rows = [
        ("a1", "Where is Paris?", "Paris is the capital of France.", ["France"]),
        ("a2", "Where is the treasure?", long_ctx, ["under the old oak tree"]),
        ("n1", "Who painted the Mona Lisa?", "Paris is the capital of France.", []),
        ("n2", "What is the colour of the treasure?", long_ctx, []),
    ]
    data = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for qid, q, c, answers in rows:
        data["id"].append(qid)
        data["title"].append("t")
        data["context"].append(c)
        data["question"].append(q)
        data["answers"].append({"text": answers, "answer_start": [c.index(a) for a in answers]})
    return datasets.Dataset.from_dict(data)


def test_v2_unanswerable_questions_get_empty_predictions(tokenizer, tmp_path):
    ds = v2_examples()
    extra = ["task.max_length=64", "task.doc_stride=16", "task.max_query_length=40"]
    oracle = OracleQA(ds, tokenizer, 64, 16)
    assert oracle.n_windows["a2"] > 2  # the answer sits in a late window of a long context
    _, fam = squad_family(tmp_path, "squad_v2", extra)
    data = TaskData(train=None, evals={"default": ds}, info={})
    m = fam.evaluate(oracle, data, tokenizer, out_dir=tmp_path / "p")
    _, preds = per_example(tmp_path / "p", ds, v2=True)
    assert preds == {"a1": "France", "a2": "under the old oak tree", "n1": "", "n2": ""}
    assert m["HasAns_f1"] == m["NoAns_f1"] == m["f1"] == m["exact_match"] == 1.0
    assert m["null_threshold"] == 0.0 and m["null_threshold_tuned_on_eval"] == 0
    odds = json.loads((tmp_path / "p" / "null_odds.json").read_text())
    assert odds["n1"] > 0 > odds["a1"]
    # a threshold above every null-minus-span gap answers everything: NoAns all wrong
    _, fam = squad_family(tmp_path, "squad_v2", [*extra, "task.null_threshold=100"])
    m = fam.evaluate(oracle, data, tokenizer)
    assert m["NoAns_exact_match"] == 0.0 and m["HasAns_exact_match"] == 1.0 and m["best_f1"] == 1.0
    _, fam = squad_family(tmp_path, "squad_v2", [*extra, "task.null_threshold=best"])
    m = fam.evaluate(oracle, data, tokenizer)
    assert m["f1"] == 1.0 and m["null_threshold_tuned_on_eval"] == 1
    assert m["null_threshold"] == m["best_f1_thresh"]


def test_v2_training_labels_unanswerable_at_cls(tokenizer):
    ds = v2_examples()
    feats = train_features(ds[:], tokenizer, QASettings(v2=True, max_length=64, doc_stride=16, max_query_length=40))
    enc = tokenizer([q.lstrip() for q in ds["question"]], list(ds["context"]), truncation="only_second",
                    max_length=64, stride=16, return_overflowing_tokens=True)
    per_ex = {}
    for i, ex in enumerate(enc["overflow_to_sample_mapping"]):
        per_ex.setdefault(ds[ex]["id"], []).append((feats["start_positions"][i], feats["end_positions"][i]))
    assert all(p == (0, 0) for p in per_ex["n1"] + per_ex["n2"])
    assert sum(p != (0, 0) for p in per_ex["a2"]) >= 1 and per_ex["a1"][0] != (0, 0)


# ------------------------------------------------------------------------------------------------
# every method on the QA head
# ------------------------------------------------------------------------------------------------
# Propulsion's default (the authors' protocol, train_head=auto) keeps head weights frozen and trains only the
# z scale of its 2 outputs; method.train_head=true trains the QA head densely.
HEAD_ONLY_SCALED = {"propulsion"}
ENCODER_REFUSED = {"prefix_tuning"}  # peft's prefix tuning needs past_key_values, which BERT's forward does not take


def method_names():
    from methods import available

    return available()


@pytest.mark.parametrize("name", method_names())
def test_every_method_trains_the_qa_head_and_counts_it_apart(name):
    from transformers import BertConfig, BertForQuestionAnswering

    from bench.models.build import head_modules
    from bench.models.params import count_parameters
    from bench.run.runner import plain
    from methods import MethodConfigError, MethodContext, get_method

    if not (ROOT / "conf" / "method" / f"{name}.yaml").is_file():
        pytest.skip(f"conf/method/{name}.yaml not written yet")
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=64))
    heads = head_modules(model)
    assert heads == ["qa_outputs"]
    head_size = sum(p.numel() for p in model.qa_outputs.parameters())
    base_total = count_parameters(model)["total"]
    # ID3's default budget (320K) is above this tiny model's entries, which ID3 refuses: a tenth of them
    extra = ["method.budget=0.1"] if name in ("id3", "pafi", "random_mask") else []
    mcfg = plain(compose([f"method={name}", "task=squad", *extra]).method)
    method = get_method(name)
    method.validate(mcfg)
    ctx = MethodContext(task_type="qa", task_name="squad", model_type="bert", head_modules=heads, train_head=True,
                        total_steps=4, seed=0, cache_dir="/tmp/bench-test-methods")
    if name in ENCODER_REFUSED:  # the method cannot take an encoder: one line, no model
        with pytest.raises(MethodConfigError, match="past_key_values"):
            method.apply(model, mcfg, ctx)
        return
    model = method.apply(model, mcfg, ctx)
    counts = count_parameters(model, heads, base_total, method.trainable_parameters(model, mcfg))
    trained_in_head = {id(p): p.numel() for n, p in model.named_parameters() if "qa_outputs" in n and p.requires_grad}
    assert counts["trainable_head"] == sum(trained_in_head.values()) > 0  # counted apart from the method's own
    if name in HEAD_ONLY_SCALED:
        assert counts["trainable_head"] < head_size
    else:
        assert counts["trainable_head"] == head_size  # the randomly initialised QA head trains densely
    assert counts["total"] == base_total
    ids = torch.randint(5, 100, (2, 12))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), start_positions=torch.tensor([1, 3]),
                end_positions=torch.tensor([2, 5]))
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "qa_outputs" in n and p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_run_on_real_squad_writes_a_record(tmp_path):
    if not SQUAD_DEV.is_file():
        pytest.skip(f"SQuAD v1.1 validation not found at {SQUAD_DEV}")
    args = ["run", "method=lora", "task=squad", "model=tiny-bert", f"data_dir={DATA}", f"results_dir={tmp_path}/runs",
            f"cache_dir={tmp_path}/cache", "train.max_steps=2", "train.batch_size=4", "data.max_train_samples=16",
            "data.max_eval_samples=12", "train.progress=false", "task.max_length=128", "task.doc_stride=32"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = list((tmp_path / "runs").glob("squad__lora__tiny-bert__*.json"))
    rec = json.loads(path.read_text())
    assert rec["status"] == "ok" and rec["main_metric"] == "f1"
    assert 0.0 <= rec["metrics"]["exact_match"] <= rec["metrics"]["f1"] <= 1.0
    assert rec["data"]["carved"]["group_field"] == "title" and rec["data"]["carved"]["from"] == "validation"
    assert rec["data"]["eval_sizes"] == {"default": 12} and rec["data"]["train_features"] >= 16
    assert rec["params"]["head_modules"] == ["qa_outputs"] and rec["params"]["trainable_head"] == 2 * 32 + 2
    preds = json.loads((path.with_suffix("") / "predictions.json").read_text())
    assert len(preds) == 12


@pytest.mark.slow
def test_cli_run_on_squad_v2_shaped_parquet(tmp_path):
    """squad_v2 through the CLI from parquet files in the hub schema (<dir>/squad/squad_v2/<split>.parquet)."""
    ds = v2_examples()
    folder = tmp_path / "data" / "squad" / "squad_v2"
    folder.mkdir(parents=True)
    ds.to_parquet(str(folder / "train.parquet"))
    ds.to_parquet(str(folder / "validation.parquet"))
    args = ["run", "method=ia3", "task=squad_v2", "model=tiny-bert", f"data_dir={tmp_path}/data",
            f"results_dir={tmp_path}/runs", f"cache_dir={tmp_path}/cache", "train.epochs=1", "train.batch_size=4",
            "train.progress=false", "task.max_length=64", "task.doc_stride=16", "task.max_query_length=40"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = list((tmp_path / "runs").glob("squad_v2__ia3__tiny-bert__*.json"))
    rec = json.loads(path.read_text())
    assert rec["status"] == "ok" and rec["data"]["carved"] is None  # a train split exists: nothing carved
    # one epoch steps over the windows (features), not the examples; methods are told that step count
    feats = rec["data"]["train_features"]
    assert feats > len(ds) and rec["train"]["planned_steps"] == rec["train"]["steps"] == -(-feats // 4)
    m = rec["metrics"]
    assert {"HasAns_f1", "NoAns_f1", "best_f1", "null_threshold"} <= set(m) and m["HasAns_total"] == m["NoAns_total"] == 2
    preds = json.loads((path.with_suffix("") / "predictions.json").read_text())
    odds = json.loads((path.with_suffix("") / "null_odds.json").read_text())
    assert set(preds) == set(odds) == set(ds["id"])
    assert all((preds[q] == "") == (odds[q] > m["null_threshold"]) for q in preds)
