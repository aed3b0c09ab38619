"""Task families: each turns a task config into data, a model with the right head, and metrics."""

from __future__ import annotations

import difflib
import importlib

from bench.errors import BenchError

# family name -> "module:Class"; a new kind of task is one module plus one line here.
FAMILIES = {
    "glue": "bench.tasks.glue:GlueFamily",
    "squad": "bench.tasks.squad:SquadFamily",
    "reasoning": "bench.tasks.reasoning:ReasoningFamily",
}


def get_family(name: str):
    if name not in FAMILIES:
        close = difflib.get_close_matches(name, list(FAMILIES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise BenchError(f"Unknown task family {name!r}.{hint} Known: {', '.join(sorted(FAMILIES))}.")
    module, cls = FAMILIES[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise BenchError(f"task family {name!r} is not available in this version ({e})") from e
    return getattr(mod, cls)
