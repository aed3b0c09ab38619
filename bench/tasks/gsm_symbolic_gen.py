"""GSM-symbolic problems from reasoning-gym: seeded, reproducible, train and test disjoint (``task.source: reasoning_gym``).

Rows come in the GSM8K schema (question, answer = worked solution ending '#### <n>'), so the task's
templates are GSM8K's. The test set is drawn from another seed range and drops any question seen in train.
"""

from __future__ import annotations

import hashlib
from typing import Any

from bench.errors import BenchError

#: the test set's seed is offset by this much, so its per-example seeds (seed + index) never meet the train set's
TEST_SEED_OFFSET = 1_000_003


def gsm_symbolic_rows(seed: int, size: int, dataset: str = "gsm_symbolic") -> list[dict]:
    """``size`` generated problems in the GSM8K schema: question, answer = worked solution ending '#### <n>'."""
    try:
        import reasoning_gym
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BenchError("task gsm_symbolic needs the reasoning-gym package: `pip install reasoning-gym`") from e
    ds = reasoning_gym.create_dataset(dataset, seed=int(seed), size=int(size))
    return [{"question": ds[i]["question"], "answer": ds[i]["metadata"]["answer_cot"]} for i in range(len(ds))]


def gsm_symbolic_splits(seed: int, train_size: int, test_size: int, dataset: str = "gsm_symbolic"):
    """(train_rows, test_rows, info): test drawn from another seed range, questions seen in train removed."""
    if int(train_size) >= TEST_SEED_OFFSET:
        raise BenchError(f"task.generator.train_size must be < {TEST_SEED_OFFSET} (got {train_size})")
    train = gsm_symbolic_rows(seed, train_size, dataset)
    seen = {r["question"] for r in train}
    test, dropped = [], 0
    for r in gsm_symbolic_rows(int(seed) + TEST_SEED_OFFSET, test_size, dataset):
        if r["question"] in seen:
            dropped += 1
            continue
        seen.add(r["question"])
        test.append(r)
    info = {
        "generator": f"reasoning_gym:{dataset}",
        "seed_train": int(seed),
        "seed_test": int(seed) + TEST_SEED_OFFSET,
        "test_dropped_overlap": dropped,
    }
    return train, test, info


def _dataset_from_rows(rows: list[dict], fingerprint_tag: str):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    ds._fingerprint = hashlib.sha256(fingerprint_tag.encode()).hexdigest()[:16]
    return ds


def generated_splits(task: Any) -> tuple[Any, dict, dict]:
    """(train dataset, {eval alias: test dataset}, info) of a ``source: reasoning_gym`` task config."""
    g = task.generator
    train_rows, test_rows, gen_info = gsm_symbolic_splits(
        int(g.seed), int(g.train_size), int(g.test_size), str(g.get("dataset", "gsm_symbolic"))
    )
    tag = f"{gen_info['generator']}|{g.seed}|{g.train_size}|{g.test_size}"
    test = _dataset_from_rows(test_rows, tag + "|test")
    sources = {"train": f"{gen_info['generator']} seed {gen_info['seed_train']}"}
    for alias in task.eval_splits:
        sources[f"eval:{alias}"] = f"{gen_info['generator']} seed {gen_info['seed_test']} (disjoint from train)"
    info = {"data_dir": None, "sources": sources, "carved": None, "generated": gen_info}
    return _dataset_from_rows(train_rows, tag + "|train"), {a: test for a in task.eval_splits}, info
