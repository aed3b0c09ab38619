"""`python -m bench params model=<m> method=<x>[,<y>...] [task=<t>] [method.<key>=...]`

Trainable and total parameters at paper scale, without downloading weights: the model is built from an
embedded architecture config (bench/models/arch.py) on the meta device, each method's real ``apply`` runs on it,
and bench.models.params.count_parameters - the counter every record uses - counts it. Shared weights count once;
the task head is reported apart.
"""

from __future__ import annotations

import sys
from typing import Any

from bench.errors import BenchError

# a decoder-only model with no task= given is counted with its LM head, as on a reasoning task: which one does not
# change a count (a causal LM has no task-sized head)
LM_TASK = "gsm8k"


def lm_task_override(rest: list[str]) -> list[str]:
    """[task=<LM_TASK>] when no task= is given, the model is decoder-only and the composed task is not a causal-LM
    task; else []."""
    from bench.config.compose import compose
    from bench.models.arch import is_decoder

    if any(a.split("=", 1)[0] == "task" for a in rest):
        return []
    cfg = compose(rest)
    return [f"task={LM_TASK}"] if is_decoder(cfg.model) and cfg.task.get("family") != "reasoning" else []


def count_for(cfg, total_steps: int = 1000) -> dict[str, Any]:
    """One row of the table: the configuration set up as a run sets it up (bench.run.runner.setup: study settings,
    checks, the registered method, the task family), the family's model with its head built on the meta device,
    the method applied there (bench.run.training.apply_method), counted. ``cfg`` is left as given.

    total_steps: only schedules depend on it (ID3's B/T), never a count."""
    import copy

    from bench.run.runner import setup

    s = setup(copy.deepcopy(cfg), choose_lr=False)
    counts = s.apply_method(s.build_model(meta=True), total_steps, meta=True).params
    return {**counts, "task_type": s.task_type}


def params_table(argv: list[str]):
    """The rows of `bench params` as a pandas DataFrame (one row per method)."""
    import pandas as pd

    from bench.config.compose import CONF_DIR, compose
    from bench.config.names import check_group_names, unknown_names_message
    from bench.config.overrides import method_overrides_for, split_overrides

    methods, method_keys, _, rest = split_overrides(argv, "params")
    check_group_names(rest)  # task=rtee, model=minlm: the did-you-mean line
    known = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
    rest = [*rest, *lm_task_override(rest)]
    if not methods:
        methods = [str(compose(rest).method.name)]
    unknown = [m for m in methods if m not in known]
    if unknown and len(unknown) == len(methods):
        raise BenchError(unknown_names_message("method", methods, known))
    rows = []
    heads = task_type = None
    for m in methods:
        if m not in known:
            rows.append({"method": m, "error": f"no conf/method/{m}.yaml (known: {', '.join(known)})"})
            continue
        base = compose([*rest, f"method={m}"])
        applicable, skipped = method_overrides_for(base.method, method_keys)
        cfg = compose([*rest, f"method={m}", *applicable]) if applicable else base
        from methods import MethodConfigError

        try:
            c = count_for(cfg)
        except (BenchError, MethodConfigError) as e:
            rows.append({"method": m, "error": str(e)})
            continue
        heads, task_type = c["head_modules"], c["task_type"]
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
    if task_type is None:  # no method could be counted: the task family still names the head
        from bench.tasks.families import get_family

        task_type = get_family(base.task.family).task_type
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
