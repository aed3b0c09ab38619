"""Length-grouped batches (task.group_by_length): the same rows every epoch as plain shuffling, the same batches for
every method at a seed, and GLUE evaluation sorted by length but scored back in row order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

from bench.run.checkpoint import SeededLengthGroupedSampler
from bench.tasks.data import example_lengths


def _lengths(n=500, seed=0):
    return np.random.default_rng(seed).integers(2, 60, size=n).tolist()


def test_every_epoch_is_a_permutation_of_all_rows():
    lengths = _lengths()
    s = SeededLengthGroupedSampler(lengths, batch_size=16, seed=3)
    orders = []
    for epoch in range(3):
        s.set_epoch(epoch)
        order = list(s)
        assert sorted(order) == list(range(len(lengths)))  # each row once, as a shuffled epoch
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]  # a new order each epoch


def test_batches_are_grouped_by_length():
    lengths = _lengths(1600)
    s = SeededLengthGroupedSampler(lengths, batch_size=32, seed=1)
    order = list(s)

    def pad(idx):
        return sum(max(lengths[i] for i in b) * len(b) for b in (idx[k:k + 32] for k in range(0, len(idx), 32)))

    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)).tolist()
    assert pad(order) < 0.75 * pad(shuffled)  # far less padding than plain shuffling


def test_order_depends_on_seed_and_epoch_only():
    lengths = _lengths()
    a = SeededLengthGroupedSampler(lengths, 16, seed=5)
    torch.manual_seed(0)
    first = list(a)
    torch.rand(1000)  # a method's set-up drawing from the global generator (LoRA init, a random mask, ...)
    b = SeededLengthGroupedSampler(lengths, 16, seed=5)
    assert list(b) == first
    assert list(SeededLengthGroupedSampler(lengths, 16, seed=6)) != first


def _trainer(tmp_path, model_seed, group):
    from transformers import BertConfig, BertForSequenceClassification

    from bench.run.training import make_trainer
    from conftest import compose_cfg

    cfg = compose_cfg(["task=sst2", "model=tiny-bert", f"task.group_by_length={str(group).lower()}",
                       "train.batch_size=8", "seed=4"])
    torch.manual_seed(model_seed)  # other methods draw other amounts from the global generator before training
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32))
    rng = np.random.default_rng(0)
    rows = [{"input_ids": [1] * int(n), "attention_mask": [1] * int(n), "labels": i}
            for i, n in enumerate(rng.integers(2, 40, size=96))]
    ds = Dataset.from_list(rows)

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        for k, r in enumerate(batch):
            ids[k, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
        return {"input_ids": ids, "labels": torch.tensor([r["labels"] for r in batch])}

    return make_trainer(cfg, model, ds, collate, [], None, tmp_path), ds


def _epoch_rows(trainer, epoch):
    loader = trainer.get_train_dataloader()
    loader.set_epoch(epoch)
    return [b["labels"].tolist() for b in loader]


def test_trainer_uses_it_and_two_methods_see_the_same_batches(tmp_path):
    t1, ds = _trainer(tmp_path / "a", model_seed=0, group=True)
    t2, _ = _trainer(tmp_path / "b", model_seed=123, group=True)
    for epoch in (0, 1):
        b1, b2 = _epoch_rows(t1, epoch), _epoch_rows(t2, epoch)
        assert b1 == b2
        assert sorted(i for b in b1 for i in b) == list(range(len(ds)))
    assert _epoch_rows(t1, 0) != _epoch_rows(t1, 1)
    plain, _ = _trainer(tmp_path / "c", model_seed=0, group=False)
    assert sorted(i for b in _epoch_rows(plain, 0) for i in b) == list(range(len(ds)))


def test_example_lengths_reads_a_length_column_or_input_ids():
    assert example_lengths(Dataset.from_dict({"input_ids": [[1, 2], [3]], "length": [7, 9]})) == [7, 9]
    assert example_lengths(Dataset.from_dict({"input_ids": [[1, 2], [3]]}).with_format("torch")) == [2, 1]


@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_glue_evaluation_sorted_by_length_scores_rows_in_order(glue_dir, tmp_path, task):
    """Length-sorted evaluation batches give the unsorted evaluation's predictions, row for row (fp32)."""
    from test_glue import family_for

    preds = {}
    for group in (False, True):
        cfg, fam = family_for(task, glue_dir, tmp_path / str(group))
        cfg.task.group_by_length = group
        cfg.train.eval_batch_size = 4
        data = fam.load_data()
        tok = fam.load_tokenizer()
        torch.manual_seed(0)
        model = fam.build_model(tok)
        ds = fam._tokenize(data.evals["default"], tok)
        preds[group] = fam.predict(model, ds, tok)
    lengths = example_lengths(ds)
    assert lengths != sorted(lengths)  # the fixture's rows are not already in length order
    np.testing.assert_allclose(preds[True][0], preds[False][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(preds[True][1], preds[False][1])
