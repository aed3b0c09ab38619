"""Task families: each turns a task config into data, a model with the right head, and metrics."""

from __future__ import annotations

from bench.errors import BenchError
from registry import Registry

# family name -> "module:Class", imported on first use; a new kind of task is one module plus one line here.
FAMILIES: Registry[type] = Registry(
    "task family",
    {
        "glue": "bench.tasks.glue:GlueFamily",
        "squad": "bench.tasks.squad:SquadFamily",
        "reasoning": "bench.tasks.reasoning:ReasoningFamily",
    },
    error=BenchError,
    unknown="Unknown task family {name!r}.{hint} Known: {known}.",
)


def get_family(name: str):
    return FAMILIES.get(name)
