"""GLUE: single-sentence and sentence-pair classification (and STS-B regression)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from bench.errors import BenchError
from bench.models.build import build_meta, build_model, set_pooling
from bench.tasks import metrics as M
from bench.tasks.base import TaskFamily
from bench.tasks.data import TaskData


def metric_key(name: str, alias: str) -> str:
    return name if alias in ("", "default") else f"{name}_{alias}"


class GlueFamily(TaskFamily):
    task_type = "seq_cls"

    def required_columns(self) -> list[str]:
        return list(self.task.text_fields) + [self.task.label_field]

    def load_data(self) -> TaskData:
        from bench.tasks.data import load_task_data

        # a dev split carved from train keeps the class balance of train
        data = load_task_data(self.cfg, self.required_columns(),
                              stratify_field=None if self.is_regression else self.task.label_field)
        for alias, ds in {"train": data.train, **data.evals}.items():
            self.check_labels(np.asarray(ds[self.task.label_field]), alias, data.info["sources"].get(
                "train" if alias in ("train", "dev") else f"eval:{alias}", ""))
        return data

    def check_labels(self, labels: np.ndarray, split: str, source: str) -> None:
        """Labels the task can learn from: classes in 0..num_labels-1, regression targets that are numbers."""
        t = self.task
        if self.is_regression:
            bad = int(np.isnan(labels.astype(float)).sum())
            if bad:
                raise BenchError(f"task {t.name}: {bad} {split} row(s) from {source} have a NaN target; drop or fix them")
            return
        outside = sorted(set(np.unique(labels).tolist()) - set(range(int(t.num_labels))))
        if outside:
            raise BenchError(
                f"task {t.name}: {split} labels {outside[:5]} from {source} are outside the task's classes "
                f"0..{int(t.num_labels) - 1} (num_labels={t.num_labels}); fix the data or set task.num_labels"
            )

    def validate(self) -> None:
        t = self.task
        if not 1 <= len(t.text_fields) <= 2:
            raise BenchError(f"task {t.name}: text_fields must name one or two columns (got {list(t.text_fields)})")
        keys = {metric_key(m, a) for m in t.metrics for a in t.eval_splits}
        if t.main_metric not in keys:
            raise BenchError(f"task {t.name}: main_metric {t.main_metric!r} is not one of {sorted(keys)}")

    @property
    def is_regression(self) -> bool:
        return int(self.task.num_labels) == 1

    def head_kwargs(self) -> dict:
        kw = {"num_labels": int(self.task.num_labels)}
        if self.is_regression:
            kw["problem_type"] = "regression"
        return kw

    def build_model(self, tokenizer):
        model = build_model(self.cfg.model, self.task_type, tokenizer, **self.head_kwargs())
        model = set_pooling(model, self.cfg.model.get("pooling", "cls"))
        if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return model

    def build_meta(self):
        model = build_meta(self.cfg.model, self.task_type, **self.head_kwargs())
        return set_pooling(model, self.cfg.model.get("pooling", "cls"))  # mean pooling drops the pooler's weights

    def _tokenize(self, ds, tokenizer):
        fields = list(self.task.text_fields)
        max_length = int(self.task.max_length)
        label_field = self.task.label_field
        regression = self.is_regression

        def fn(batch):
            texts = [batch[f] for f in fields]
            enc = tokenizer(*texts, truncation=True, max_length=max_length)
            labels = batch[label_field]
            enc["labels"] = [float(x) for x in labels] if regression else [int(x) for x in labels]
            return enc

        tag = f"glue|{'/'.join(fields)}|{max_length}|{regression}"
        out = self.cached_map(ds, fn, tokenizer, tag, batched=True, remove_columns=ds.column_names)
        return out.with_format("torch")

    def train_dataset(self, data: TaskData, tokenizer):
        return self._tokenize(data.train, tokenizer)

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    @torch.no_grad()
    def predict(self, model, ds, tokenizer) -> tuple[np.ndarray, np.ndarray]:
        model.eval()
        bs = int(self.cfg.train.eval_batch_size)
        order = None
        if self.task.get("group_by_length"):  # batches of similar length (little padding), scored back in row order
            from bench.tasks.data import example_lengths

            order = np.argsort(example_lengths(ds), kind="stable")
            ds = ds.select(order.tolist())
        loader = DataLoader(ds, batch_size=bs, collate_fn=self.collator(tokenizer))
        device = next(model.parameters()).device
        preds, labels = [], []
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            y = batch.pop("labels")
            logits = model(**batch).logits.float()
            preds.append(logits.squeeze(-1).cpu() if self.is_regression else logits.argmax(-1).cpu())
            labels.append(y.cpu())
        pred, label = torch.cat(preds).numpy(), torch.cat(labels).numpy()
        if order is not None:
            back = np.empty_like(order)
            back[order] = np.arange(len(order))
            pred, label = pred[back], label[back]
        return pred, label

    def evaluate(self, model, data: TaskData, tokenizer, out_dir: Path | None = None) -> dict:
        was_training = model.training
        out: dict = {}
        cache = self.__dict__.setdefault("_eval_tokenized", {})
        self.last_predictions = {}
        for alias, ds in data.evals.items():
            if alias not in cache:
                cache[alias] = self._tokenize(ds, tokenizer)
            tok = cache[alias]
            preds, labels = self.predict(model, tok, tokenizer)
            self.last_predictions[alias] = {"pred": preds, "label": labels}
            for name, value in M.compute(list(self.task.metrics), preds, labels).items():
                out[metric_key(name, alias)] = value
        model.train(was_training)
        return out
