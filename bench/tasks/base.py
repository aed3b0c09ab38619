"""The interface of a task family, as the runner uses it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

from torch import nn

from bench.tasks.data import TaskData


class TaskFamily:
    """One kind of task (classification, extractive QA, generation). Subclasses fill in the hooks."""

    task_type: str = ""  # "seq_cls" | "qa" | "causal_lm" (methods.MethodContext.task_type)

    def __init__(self, cfg: Any, cache_dir: Path):
        self.cfg = cfg
        self.task = cfg.task
        self.cache_dir = cache_dir

    # --- data -----------------------------------------------------------------------------------
    def required_columns(self) -> list[str]:
        raise NotImplementedError

    def validate(self) -> None:
        """Task-config checks before anything heavy happens."""

    def load_data(self) -> TaskData:
        from bench.tasks.data import load_task_data

        return load_task_data(self.cfg, self.required_columns())

    # --- model ----------------------------------------------------------------------------------
    def build_model(self, tokenizer) -> nn.Module:
        raise NotImplementedError

    def build_meta(self) -> nn.Module:
        """The model build_model builds, with the same head, on the meta device from its architecture alone (no
        weight read or allocated): what `bench params` counts. A family whose build_model changes the architecture
        beyond the transformers class (GLUE's mean pooling) does the same here."""
        from bench.models.build import build_meta

        return build_meta(self.cfg.model, self.task_type)

    def load_tokenizer(self):
        from bench.models.build import load_tokenizer

        return load_tokenizer(self.cfg.model)

    # --- training -------------------------------------------------------------------------------
    def train_dataset(self, data: TaskData, tokenizer):
        raise NotImplementedError

    def collator(self, tokenizer) -> Callable:
        raise NotImplementedError

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, data: TaskData, tokenizer, out_dir: Path | None = None) -> dict:
        """Flat metrics dict; keys include the task's main_metric."""
        raise NotImplementedError

    # --- helpers --------------------------------------------------------------------------------
    def cached_map(self, ds, fn: Callable, tokenizer, tag: str, **map_kwargs):
        """datasets.map with a cache file keyed by data fingerprint + tokenizer + settings.

        A second run on the same task and settings reads the tokenized Arrow file instead of
        tokenizing again.
        """
        tok_id = f"{tokenizer.name_or_path}|{len(tokenizer)}|{type(tokenizer).__name__}"
        key = hashlib.sha256(f"{ds._fingerprint}|{tok_id}|{tag}".encode()).hexdigest()[:20]
        path = self.cache_dir / "tokenized" / f"{self.task.name}-{key}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.last_cache_hit = path.is_file()
        return ds.map(fn, cache_file_name=str(path), load_from_cache_file=True, desc=f"tokenize {self.task.name}", **map_kwargs)
