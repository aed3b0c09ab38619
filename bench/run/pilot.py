"""`python -m bench pilot experiment=<pilot>`: the pilot that sets each task's training budget for a study.

A pilot experiment (conf/experiment/glue_pilot_cpu.yaml) sweeps `train.epochs` over a few budgets for two
reference methods (full fine-tuning and LoRA), one seed, each budget a run of that length. This command

1. checks that every task of the pilot has a training split it can read (nothing is trained otherwise);
2. runs the pilot's missing runs through `bench run -m` (resumable: done configs are skipped by hash;
   `pilot.run=false` only reads what is there);
3. applies the budget rule (docs/protocol.md#8-the-pilot): a task's budget is the smallest budget at which every
   pilot method's dev score is within `pilot.tolerance` (0.01: one point of accuracy, 0.01 MCC / Pearson) of its
   best pilot dev score. When that budget is the largest one tried, the curve may still be rising: the budget is
   "not settled" and the command that adds the next budget (twice the largest) is printed;
4. writes pilot.md, pilot.png (dev score against budget, one panel per task), pilot.csv, budgets.yaml (the
   `study.task_cfg` block for the study) and the pilot's records (records.jsonl.gz) to
   results/studies/<experiment name>/pilot/, with a cost plan of the study from the pilot's measured run times.
   Those committed records are written back to the results folder first (restore), so a pilot spread over several
   sessions resumes where it stopped.

Only dev scores choose anything; the reported split's scores are shown beside them for information.
"""

from __future__ import annotations

import gzip
import json
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from bench.errors import BenchError

OWN = ("run", "tolerance", "out", "cap_hours", "methods", "lrs", "seeds", "extensions", "jobs")
DEFAULTS: dict[str, Any] = {"run": True, "tolerance": 0.01, "out": None, "cap_hours": 8.0, "methods": 6, "lrs": 4,
                            "seeds": 5, "extensions": 1, "jobs": 2}


@dataclass
class Point:
    task: str
    method: str
    budget: float
    hash: str
    path: Path
    record: Optional[dict] = None

    @property
    def dev(self) -> Optional[float]:
        sel = (self.record or {}).get("selection") or {}
        return sel.get("dev_score")

    @property
    def reported(self) -> Optional[float]:
        return (self.record or {}).get("main_score")


@dataclass
class Budget:
    task: str
    budget: Optional[float]
    settled: bool
    why: str
    best: dict = field(default_factory=dict)  # method -> (best dev score, at budget)


def choose_budget(curves: dict[str, dict[float, float]], tolerance: float) -> Budget:
    """The budget rule on dev-score curves {method: {budget: dev score}} (one task). Budgets missing for some
    method are not candidates. Returns the smallest budget at which every method is within `tolerance` of its best
    score; settled=False when that is the largest budget tried (the curve may still rise) or nothing is known."""
    methods = sorted(curves)
    if not methods or any(not curves[m] for m in methods):
        return Budget("", None, False, "no pilot scores yet for " + ", ".join(m for m in methods if not curves[m]))
    common = sorted(set.intersection(*(set(curves[m]) for m in methods)))
    if not common:
        return Budget("", None, False, "no budget has a score for every method")
    best = {m: max(((s, b) for b, s in curves[m].items() if b in common), key=lambda x: (x[0], -x[1]))
            for m in methods}
    chosen = next((b for b in common if all(curves[m][b] >= best[m][0] - tolerance for m in methods)), None)
    if chosen is None:  # the methods peak at different budgets and no budget has them all near their best
        chosen = min(common, key=lambda b: max(best[m][0] - curves[m][b] for m in methods))
        return Budget("", chosen, False, f"no budget has every method within {tolerance:g} of its best (they peak "
                                         f"at different budgets); {_fmt(chosen)} has the smallest shortfall", best)
    if chosen == common[-1]:
        lagging = [m for m in methods if any(curves[m][x] < best[m][0] - tolerance for x in common[:-1])]
        if len(common) == 1:
            why = f"only budget {_fmt(chosen)} was tried: add larger budgets"
        else:
            why = (f"the largest budget tried ({_fmt(chosen)} epochs) is the first within {tolerance:g} of the best "
                   f"for {', '.join(lagging)}: the curve may still rise; add {_fmt(2 * chosen)} epochs")
        return Budget("", chosen, False, why, best)
    return Budget("", chosen, True, f"every method within {tolerance:g} of its best pilot dev score at "
                                    f"{_fmt(chosen)} epoch(s)", best)


def _fmt(x: float) -> str:
    return f"{x:g}"


def _options(argv: list[str]) -> tuple[dict, list[str]]:
    opts = dict(DEFAULTS)
    rest = []
    for a in argv:
        key = a.split("=", 1)[0]
        if key.startswith("pilot."):
            name = key[len("pilot."):]
            if name not in OWN or "=" not in a:
                raise BenchError(f"unknown pilot option {a!r}; the pilot's options: "
                                 + ", ".join(f"pilot.{k}={DEFAULTS[k]}" for k in OWN))
            value = a.split("=", 1)[1]
            base = DEFAULTS[name]
            try:
                if isinstance(base, bool):
                    if value.lower() not in ("true", "false"):
                        raise ValueError(value)
                    opts[name] = value.lower() == "true"
                elif isinstance(base, int) and not isinstance(base, bool):
                    opts[name] = int(value)
                elif isinstance(base, float):
                    opts[name] = float(value)
                else:
                    opts[name] = value
            except ValueError:
                raise BenchError(f"pilot.{name}={value!r} is not a {type(base).__name__} "
                                 f"(e.g. pilot.{name}={base})") from None
        elif a in ("-m", "--multirun"):
            continue
        else:
            rest.append(a)
    if not any(a.split("=", 1)[0] == "experiment" for a in rest):
        raise BenchError("the pilot reads an experiment's sweep: python -m bench pilot experiment=glue_pilot_cpu "
                         "[task=...] [model=...]")
    return opts, rest


def plan(rest: list[str]) -> tuple[Any, list[Point], list[str]]:
    """(root config, the pilot's points, its tasks) from the experiment and command-line overrides."""
    from bench.config.compose import compose
    from bench.config.identity import run_identity
    from bench.config.overrides import first_values, sweep_lists

    points: list[Point] = []
    root = compose(first_values(rest), hydra=True)
    lists = sweep_lists(rest, root.hydra.sweeper.get("params"))
    if "train.epochs" not in lists:
        raise BenchError("a pilot sweeps train.epochs (e.g. hydra.sweeper.params: {train.epochs: 1,2,4}); "
                         f"{root.get('experiment_name')} does not")
    budgets = sorted(float(b) for b in lists["train.epochs"])
    tasks = lists.get("task", [str(root.task.name)])
    methods = lists.get("method", [str(root.method.name)])
    seed = int(lists.get("seed", [root.seed])[0])
    fixed = [o for o in first_values(rest)
             if o.split("=", 1)[0].lstrip("+~") not in ("task", "method", "train.epochs", "seed")]
    for task in tasks:
        for method in methods:
            for b in budgets:
                cfg = compose([*fixed, f"task={task}", f"method={method}", f"train.epochs={_fmt(b)}",
                               f"seed={seed}", *(["study.lr_index=0"] if root.study.get("lr_grid") else [])])
                identity = run_identity(cfg)  # study.lr_index=0 with a grid: its lr
                points.append(Point(task, str(identity.config["method"]["name"]), b, identity.hash, identity.path))
    return root, points, tasks


def check_train_splits(root: Any, tasks: list[str], rest: list[str]) -> None:
    """Every task of the pilot must have a training split that can be read here: else one message, no run."""
    from bench.config.compose import compose
    from bench.config.overrides import first_values
    from bench.tasks.data import load_split

    problems = []
    for task in tasks:
        t = compose([*[o for o in first_values(rest) if not o.startswith("task=")], f"task={task}"]).task
        split = t.get("train_split")
        if not split:
            problems.append(f"task {task} has no train split (train_split: null): the pilot trains on train; "
                            "give the task one (or data.carve_train_from=<split>) or leave it out")
            continue
        try:
            load_split(t, split, root.get("data_dir"))
        except BenchError as e:
            problems.append(f"task {task}: the pilot trains on its {split!r} split, which cannot be read here "
                            f"({str(e).split('. Fix')[0]}); leave it out, or carve a train split with "
                            "data.carve_train_from=validation")
    if problems:
        raise BenchError("; ".join(problems))


def run_missing(rest: list[str], points: list[Point], tasks: list[str]) -> None:
    from bench.records import store as records

    for p in points:
        p.record = records.read_record(p.path) if p.path.is_file() else None
    missing_tasks = sorted({p.task for p in points if not _ok(p)}, key=tasks.index)
    if not missing_tasks:
        return
    cmd = [sys.executable, "-m", "bench", "run", "-m",
           *[o for o in rest if not o.startswith("task=")], f"task={','.join(missing_tasks)}"]
    n = sum(not _ok(p) for p in points)
    print(f"[pilot] {n} pilot run(s) to do; running: python -m bench run -m "
          f"{' '.join(shlex.quote(c) for c in cmd[5:])}", flush=True)
    subprocess.run(cmd, check=False)


def _ok(p: Point) -> bool:
    return bool(p.record and p.record.get("status") == "ok" and p.record.get("config_hash") == p.hash)


def chance_level(rec: dict) -> float:
    """The dev score of predicting the majority class (accuracy), else 0 (MCC, Pearson / Spearman, F1 of a
    constant negative prediction)."""
    metric = str(rec.get("main_metric") or "")
    dev = ((rec.get("data") or {}).get("dev") or {})
    counts = dev.get("class_counts") or {}
    if metric.startswith("accuracy") and counts:
        return max(counts.values()) / sum(counts.values())
    return 0.0


def analyse(points: list[Point], tasks: list[str], opts: dict) -> tuple[list[Budget], list[dict]]:
    rows = []
    budgets = []
    for task in tasks:
        mine = [p for p in points if p.task == task]
        curves: dict[str, dict[float, float]] = {}
        for p in mine:
            curves.setdefault(p.method, {})
            if _ok(p) and p.dev is not None:
                curves[p.method][p.budget] = float(p.dev)
            rec = p.record if _ok(p) else {}
            train = (rec or {}).get("train") or {}
            rows.append({"task": task, "method": p.method, "epochs": p.budget,
                         "dev": p.dev if _ok(p) else None, "reported": p.reported if _ok(p) else None,
                         "metric": (rec or {}).get("main_metric"), "chance_dev": chance_level(rec) if rec else None,
                         "steps": train.get("steps"), "step_median_s": train.get("step_time_median_s"),
                         "wall_s": (rec or {}).get("wall_s"), "hash": p.hash, "done": _ok(p)})
        b = choose_budget(curves, float(opts["tolerance"]))
        b.task = task
        chance = next((r["chance_dev"] for r in rows if r["task"] == task and r["chance_dev"] is not None), None)
        flat = [m for m, c in sorted(curves.items()) if c and chance is not None
                and max(c.values()) <= chance + float(opts["tolerance"])]
        if flat:  # the rule then rests on the other method(s) alone: say so
            b.why += (f"; {', '.join(flat)} never leave(s) chance on dev ({chance:.3f}) at any budget tried: "
                      "that method's lr may be wrong for this task")
        budgets.append(b)
    return budgets, rows


def cost_plan(budgets: list[Budget], rows: list[dict], opts: dict) -> list[dict]:
    """Estimated wall time of the study per task: runs x the pilot's measured wall time of a run at that budget
    (mean over the pilot's methods), divided by the parallel jobs. Runs = methods x (lrs + extensions) + methods x
    (seeds - 1): every tuning entry, an extension for each method (an upper bound), the other seeds at the chosen
    entry."""
    out = []
    runs = int(opts["methods"]) * (int(opts["lrs"]) + int(opts["extensions"]) + int(opts["seeds"]) - 1)
    for b in budgets:
        walls = [r["wall_s"] for r in rows if r["task"] == b.task and r["epochs"] == b.budget and r["wall_s"]]
        run_s = sum(walls) / len(walls) if walls else None
        steps = [r["step_median_s"] for r in rows if r["task"] == b.task and r["step_median_s"]]
        out.append({"task": b.task, "epochs": b.budget, "run_s": run_s, "runs": runs,
                    "step_s": sorted(steps)[len(steps) // 2] if steps else None,
                    "hours": run_s * runs / int(opts["jobs"]) / 3600 if run_s else None})
    return out


def _num(x: Optional[float], nd: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def render(name: str, budgets: list[Budget], rows: list[dict], costs: list[dict], opts: dict) -> str:
    lines = [f"# Pilot `{name}`: training budget per task", "",
             "Rebuilt by `python -m bench pilot experiment=" + name + "` from the pilot's records. Dev score (the "
             "dev split carved from train; the epoch chosen on dev within each run) against the training budget, "
             "one seed; each budget is a run of that length. **Budget rule**: the smallest budget at which every "
             f"pilot method is within {opts['tolerance']:g} of its best pilot dev score; when that is the largest "
             "budget tried, the budget is not settled (the curve may still rise). The reported split (GLUE "
             "validation) is shown for information and chooses nothing.", "",
             "| task | method | epochs | dev | reported | chance (dev) | steps | step s (median) | run s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['method']} | {_fmt(r['epochs'])} | {_num(r['dev'])} | "
                     f"{_num(r['reported'])} | {_num(r['chance_dev'])} | {r['steps'] or '-'} | "
                     f"{_num(r['step_median_s'])} | {_num(r['wall_s'], 0)} |")
    lines += ["", "## Budgets", "", "| task | budget (epochs) | settled | why | best dev per method |",
              "|---|---:|---|---|---|"]
    for b in budgets:
        best = ", ".join(f"{m} {_num(s)} @ {_fmt(at)}" for m, (s, at) in sorted(b.best.items()))
        lines.append(f"| {b.task} | {_fmt(b.budget) if b.budget else '-'} | {'yes' if b.settled else '**no**'} | "
                     f"{b.why} | {best or '-'} |")
    lines += ["", "## Cost of the study at these budgets", "",
              f"{opts['methods']} methods x ({opts['lrs']} lrs + {opts['extensions']} extension + "
              f"{opts['seeds'] - 1} more seeds) per task, {opts['jobs']} jobs in parallel; a run's time is the "
              "pilot's measured wall time at that budget (mean of its methods; the machine's load at the time "
              "is in it).", "", "| task | epochs | run s | runs | step s | hours |", "|---|---:|---:|---:|---:|---:|"]
    total = 0.0
    for c in costs:
        total += c["hours"] or 0.0
        lines.append(f"| {c['task']} | {_fmt(c['epochs']) if c['epochs'] else '-'} | {_num(c['run_s'], 0)} | "
                     f"{c['runs']} | {_num(c['step_s'])} | {_num(c['hours'], 2)} |")
    cap = float(opts["cap_hours"])
    lines += ["", f"Total: {total:.2f} h against a cap of {cap:g} h: "
              + ("fits." if total <= cap else "**over the cap**: fewer rows, lrs or seeds, or a smaller budget, "
                 "and the study must say so."), ""]
    return "\n".join(lines)


def figure(path: Path, budgets: list[Budget], rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [b.task for b in budgets]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.0), squeeze=False)
    for ax, b in zip(axes[0], budgets):
        mine = [r for r in rows if r["task"] == b.task]
        for method in sorted({r["method"] for r in mine}):
            pts = sorted((r["epochs"], r["dev"]) for r in mine if r["method"] == method and r["dev"] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        chance = [r["chance_dev"] for r in mine if r["chance_dev"] is not None]
        if chance:
            ax.axhline(chance[0], color="grey", ls="--", lw=1, label="chance")
        if b.budget:
            ax.axvline(b.budget, color="black", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ticks = sorted({r["epochs"] for r in mine})
        ax.set_xticks(ticks, [_fmt(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(f"{b.task}{'' if b.settled else ' (not settled)'}", fontsize=9)
        ax.set_xlabel("epochs")
        metric = next((r["metric"] for r in mine if r["metric"]), "score")
        ax.set_ylabel(f"dev {metric}", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, name: str, points: list[Point], budgets: list[Budget], rows: list[dict],
          costs: list[dict], opts: dict) -> None:
    import pandas as pd
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    (out / "pilot.md").write_text(render(name, budgets, rows, costs, opts))
    pd.DataFrame(rows).to_csv(out / "pilot.csv", index=False)
    figure(out / "pilot.png", budgets, rows)
    task_cfg = {b.task: {"train": {"epochs": b.budget}} for b in budgets if b.budget}
    (out / "budgets.yaml").write_text(
        "# study.task_cfg from the pilot's budget rule (bench pilot); settled: "
        + ", ".join(f"{b.task}={'yes' if b.settled else 'no'}" for b in budgets) + "\n"
        + yaml.safe_dump({"study": {"task_cfg": task_cfg}}, sort_keys=False))
    recs = sorted((p for p in points if _ok(p)), key=lambda p: p.path.name)
    with gzip.open(out / "records.jsonl.gz", "wt") as f:
        for p in recs:
            f.write(json.dumps(p.record, sort_keys=True, default=str) + "\n")


def restore(points: list[Point], committed: Path) -> int:
    """Write the committed pilot records (records.jsonl.gz beside pilot.md) that the results folder lacks back to
    where a run writes them, so the pilot's sweep resumes by config hash on a fresh checkout (results/runs/ is not
    committed). Only records of this pilot's expected configs, ok, with their own hash; returns how many."""
    from bench.records import store as records

    n = 0
    for folder in sorted({p.path.parent for p in points}):  # one folder: the pilot's results_dir
        hashes = {p.hash for p in points if p.path.parent == folder}
        n += records.restore(committed, folder, accept=lambda r, h=hashes: r.get("config_hash") in h)
    return n


def main(argv: list[str]) -> None:
    opts, rest = _options(argv)
    root, points, tasks = plan(rest)
    name = str(root.get("experiment_name") or "pilot")
    out = Path(opts["out"] or Path("results/studies") / name / "pilot")
    restored = restore(points, out / "records.jsonl.gz")
    if restored:
        print(f"[pilot] restored {restored} committed pilot record(s) from {out / 'records.jsonl.gz'}")
    if opts["run"]:
        check_train_splits(root, tasks, rest)
        run_missing(rest, points, tasks)
    from bench.records import store as records

    for p in points:
        p.record = records.read_record(p.path) if p.path.is_file() else None
    budgets, rows = analyse(points, tasks, opts)
    costs = cost_plan(budgets, rows, opts)
    write(out, name, points, budgets, rows, costs, opts)
    done = sum(_ok(p) for p in points)
    print(f"[pilot] {done} of {len(points)} pilot runs have records; wrote {out}/pilot.md, pilot.png, budgets.yaml")
    for b in budgets:
        print(f"[pilot] {b.task}: " + (f"{_fmt(b.budget)} epoch(s)" if b.budget else "no budget yet")
              + ("" if b.settled else " (not settled)") + f" - {b.why}")
