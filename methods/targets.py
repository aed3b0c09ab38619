"""Default target modules per architecture (transformers ``config.model_type``).

Values are regex fragments matched against the end of a module's qualified name, so that
BERT's attention output (``attention.output.dense``) and FFN output (``layer.N.output.dense``)
are told apart.
"""

from __future__ import annotations

import re

_BERT_LIKE = {
    "q": r"attention\.self\.query",
    "k": r"attention\.self\.key",
    "v": r"attention\.self\.value",
    "o": r"attention\.output\.dense",
    "in": r"intermediate\.dense",
    "out": r"layer\.\d+\.output\.dense",
}
_BERT_LIKE.update(up=_BERT_LIKE["in"], down=_BERT_LIKE["out"])  # the FFN's up / down projections, as Llama names them
ROLES: dict[str, dict[str, str]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "deberta-v2": {
        "q": r"attention\.self\.query_proj",
        "k": r"attention\.self\.key_proj",
        "v": r"attention\.self\.value_proj",
        "o": r"attention\.output\.dense",
        "in": r"intermediate\.dense",
        "out": r"layer\.\d+\.output\.dense",
        "up": r"intermediate\.dense",
        "down": r"layer\.\d+\.output\.dense",
    },
    "llama": {
        "q": r"self_attn\.q_proj",
        "k": r"self_attn\.k_proj",
        "v": r"self_attn\.v_proj",
        "o": r"self_attn\.o_proj",
        "gate": r"mlp\.gate_proj",
        "up": r"mlp\.up_proj",
        "down": r"mlp\.down_proj",
        "in": r"mlp\.up_proj",  # BERT's roles on Llama: the FFN's input (up) and output (down) projections
        "out": r"mlp\.down_proj",
    },
}
ROLES["deberta"] = ROLES["deberta-v2"]


def target_regex(model_type: str, roles: list[str]) -> str:
    """A peft-style ``target_modules`` regex (full match) for roles such as ["q", "v"]."""
    if model_type not in ROLES:
        raise KeyError(
            f"no target-module table for model_type {model_type!r} (known: {sorted(ROLES)}); "
            "set the method's target_modules explicitly"
        )
    table = ROLES[model_type]
    missing = [r for r in roles if r not in table]
    if missing:
        raise KeyError(f"roles {missing} unknown for {model_type!r}; known roles: {sorted(table)}")
    return r".*\.(?:" + "|".join(table[r] for r in roles) + r")$"


def resolve_targets(model_type: str, target_modules, target_roles) -> object:
    """Explicit ``target_modules`` (list or regex) win; otherwise roles are looked up per architecture."""
    if target_modules:
        return list(target_modules) if not isinstance(target_modules, str) else target_modules
    return target_regex(model_type, list(target_roles))


def matches_peft_pattern(patterns, key: str) -> bool:
    """peft's matching rules: a string is a full regex match; a list matches the name or a '.<entry>' suffix."""
    if not patterns:
        return False
    if isinstance(patterns, str):
        return re.fullmatch(patterns, key) is not None
    return key in patterns or any(key.endswith(f".{p}") for p in patterns)


def under_modules_to_save(config, key: str) -> bool:
    return any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", key) for m in (config.modules_to_save or []))
