"""`python -m bench params model=<m> method=<x>[,<y>...] [task=<t>] [method.<key>=...]`

Trainable and total parameters at paper scale, without downloading weights: the model is built from an
embedded architecture config (bench/arch.py) on the meta device, each method's real ``apply`` runs on it,
and bench.params.count_parameters - the counter every record uses - counts it. Shared weights count once;
the task head is reported apart.
"""

from __future__ import annotations

import sys
from typing import Any

from bench.errors import BenchError

FAMILY_TASK_TYPES = {"glue": "seq_cls", "squad": "qa", "reasoning": "causal_lm"}


def task_type_for(cfg, explicit_task: bool) -> str:
    """The task family's model type; a decoder-only model with no task= given is counted as a causal LM."""
    from bench.arch import is_decoder

    if not explicit_task and is_decoder(cfg.model):
        return "causal_lm"
    family = cfg.task.get("family", "glue")
    try:
        from bench.tasks import get_family

        return get_family(family).task_type
    except BenchError:
        if family in FAMILY_TASK_TYPES:
            return FAMILY_TASK_TYPES[family]
        raise


def count_for(cfg, task_type: str, total_steps: int = 1000) -> dict[str, Any]:
    """Build the model on the meta device, apply the configured method, count. One row of the table."""
    import torch

    from bench.models import build_meta, head_modules
    from bench.params import count_parameters
    from bench.runner import resolve_method
    from bench.training import method_context, method_options

    method = resolve_method(cfg)
    head_kwargs: dict[str, Any] = {}
    if task_type == "seq_cls":
        n = int(cfg.task.get("num_labels") or 2)
        head_kwargs["num_labels"] = n
        if n == 1:
            head_kwargs["problem_type"] = "regression"
    model = build_meta(cfg.model, task_type, **head_kwargs)
    heads = head_modules(model)
    base_total = count_parameters(model)["total"]
    # total_steps: only schedules depend on it (ID3's B/T), never a count; nothing may be cached from shapes
    ctx = method_context(model, task_type, cfg, total_steps=total_steps, heads=heads,
                         cache_dir="/nonexistent-bench-params-cache")
    mcfg = method_options(cfg)  # as a run gives them (ID3's method.base: the base's defaults too)
    with torch.device("meta"):  # new adapter tensors live on meta too
        model = method.apply(model, mcfg, ctx)
    counts = count_parameters(model, heads, base_total, method.trainable_parameters(model, mcfg))
    counts["head_modules"] = heads
    return counts


def params_table(argv: list[str]):
    """The rows of `bench params` as a pandas DataFrame (one row per method)."""
    import pandas as pd

    from bench.config.compose import CONF_DIR, compose
    from bench.config.overrides import method_overrides_for, split_overrides
    from bench.cli import check_group_names, unknown_names_message

    methods, method_keys, _, rest = split_overrides(argv, "params")
    check_group_names(rest)  # task=rtee, model=minlm: the did-you-mean line
    known = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
    explicit_task = any(a.split("=", 1)[0] == "task" for a in rest)
    if not methods:
        methods = [str(compose(rest).method.name)]
    unknown = [m for m in methods if m not in known]
    if unknown and len(unknown) == len(methods):
        raise BenchError(unknown_names_message("method", methods, known))
    rows = []
    heads = None
    for m in methods:
        if m not in known:
            rows.append({"method": m, "error": f"no conf/method/{m}.yaml (known: {', '.join(known)})"})
            continue
        base = compose([*rest, f"method={m}"])
        applicable, skipped = method_overrides_for(base.method, method_keys)
        cfg = compose([*rest, f"method={m}", *applicable]) if applicable else base
        task_type = task_type_for(cfg, explicit_task)
        from methods import MethodConfigError

        try:
            c = count_for(cfg, task_type)
        except (BenchError, MethodConfigError) as e:
            rows.append({"method": m, "error": str(e)})
            continue
        heads = c["head_modules"]
        rows.append(
            {
                "method": m,
                "trainable (method)": c["trainable_method"],
                "trainable (head)": c["trainable_head"],
                "trainable": c["trainable"],
                "total": c["total"],
                "trainable %": c["trainable_pct"],
                "options": ", ".join(o.lstrip("+") for o in applicable),
                "ignored": ", ".join(skipped),
            }
        )
    info = {"model": str(base.model.name), "task": str(base.task.name), "task_type": task_type, "heads": heads}
    return pd.DataFrame(rows), info


def format_table(df) -> str:
    from tabulate import tabulate

    shown = df.copy()
    for col in ("trainable (method)", "trainable (head)", "trainable", "total"):
        if col in shown:
            shown[col] = shown[col].map(lambda v: "-" if v != v else f"{int(v):,}")
    if "trainable %" in shown:
        shown["trainable %"] = shown["trainable %"].map(lambda v: "-" if v != v else f"{v:.4f}")
    for col in ("options", "ignored", "error"):
        if col in shown and not shown[col].fillna("").astype(bool).any():
            shown = shown.drop(columns=col)
    return tabulate(shown.fillna(""), headers="keys", tablefmt="github", showindex=False, disable_numparse=True)


def main(argv: list[str]) -> None:
    try:
        df, info = params_table(argv)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    task = "causal LM head" if info["task_type"] == "causal_lm" else f"{info['task_type']}, task {info['task']}"
    print(f"model {info['model']} ({task}; head modules {info['heads']}), counted on the meta device, no weights read")
    print(format_table(df))
