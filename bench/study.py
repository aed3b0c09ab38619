"""The fair-comparison protocol of a study: one learning-rate grid per method, chosen on dev.

An experiment declares ``study.lr_grid`` (method name -> list of learning rates, the same length for every
method) and sweeps ``study.lr_index``. ``train.lr`` then comes from the grid, so the record says both the
index and the value. Two stages (docs/protocol.md):

1. tuning: every grid entry runs with the ``study.tune_seeds`` (default: seed 1);
2. reporting: the other seeds run only at the entry whose mean dev score over the tuning seeds is highest.
   A job of a reporting seed at another entry is skipped; ``study.lr_index=tuned`` picks that entry itself.

The reported split is never looked at: the choice reads the dev score of each tuning record (the score of
the epoch that train.selection chose, itself chosen on dev).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from bench import records
from bench.errors import BenchError

TUNED = "tuned"


class TuningIncomplete(BenchError):
    """A reporting-seed job ran before the tuning runs of its cell finished."""


class NotChosen(Exception):
    """This grid entry is not the one chosen on dev: the job is skipped, no record is written."""


def grid_problems(grid: Any, methods: list[str]) -> list[str]:
    """Everything wrong with a study's lr grid for the given methods (empty list = fine)."""
    if not grid:
        return []
    grid = OmegaConf.to_container(grid) if isinstance(grid, DictConfig) else dict(grid)
    out = []
    missing = [m for m in methods if m not in grid]
    if missing:
        out.append(f"study.lr_grid has no learning rates for method(s) {missing}; add e.g. "
                   f"study.lr_grid.{missing[0]}=[1e-4,3e-4,1e-3] (every method needs a grid of the same size)")
    # the methods compared (all of them when none are named) need grids of one size
    sizes = {m: len(v) if isinstance(v, (list, tuple)) else None for m, v in grid.items() if not methods or m in methods}
    bad = [m for m, n in sizes.items() if not n]
    if bad:
        out.append(f"study.lr_grid entries must be non-empty lists of learning rates (not for {bad})")
    elif len(set(sizes.values())) > 1:
        out.append(f"study.lr_grid sizes differ across methods {sizes}: an equal tuning budget needs the same "
                   "number of learning rates for every method")
    for m, v in grid.items():
        if isinstance(v, (list, tuple)) and any(not isinstance(x, (int, float)) or x <= 0 for x in v):
            out.append(f"study.lr_grid.{m} must hold positive numbers (got {list(v)})")
    return out


def _dev_score(rec: dict) -> Optional[float]:
    sel = rec.get("selection") or {}
    return sel.get("dev_score")


def choose_index(dev_scores: dict[int, list[float]]) -> int:
    """The grid entry with the best mean dev score (ties: the lower index)."""
    return max(sorted(dev_scores), key=lambda i: sum(dev_scores[i]) / len(dev_scores[i]))


def tuned_index(config: dict, results_dir: str | Path) -> tuple[int, dict]:
    """The entry chosen on dev by the tuning seeds' records of this cell (same config but seed and lr)."""
    st = config["study"]
    grid = st["lr_grid"][config["method"]["name"]]
    scores: dict[int, list[float]] = {}
    missing = []
    for i, lr in enumerate(grid):
        for s in st["tune_seeds"]:
            cand = grid_config(config, s, i)
            path = records.record_path(results_dir, cand, records.config_hash(cand))
            rec = records.read_record(path)
            score = _dev_score(rec) if rec and rec.get("status") == "ok" else None
            if score is None:
                missing.append(f"seed {s} lr {lr} ({path.name})")
            else:
                scores.setdefault(i, []).append(float(score))
    if missing:
        raise TuningIncomplete(
            f"the lr for {config['method']['name']} on {config['task']['name']} is chosen on dev by the tuning "
            f"runs, and {len(missing)} of them have no ok record with a dev score yet ({missing[0]}"
            f"{', ...' if len(missing) > 1 else ''}); run the tuning seeds {list(st['tune_seeds'])} first "
            "(the study's sweep runs them first when it runs in order; rerunning it resumes)"
        )
    idx = choose_index(scores)
    return idx, {"index": idx, "lr": float(grid[idx]), "tune_seeds": list(st["tune_seeds"]),
                 "dev_means": {str(grid[i]): sum(v) / len(v) for i, v in scores.items()}}


def apply_method_cfg(cfg: DictConfig) -> None:
    """Per-method settings of the study (e.g. LoRA-Dash's switch step scaled to the run) and per-task settings
    (study.task_cfg: a task's budget set by the pilot, its train subsample): part of the hash."""
    st = cfg.get("study")
    if st is None:
        return
    if st.get("method_cfg") and cfg.method.name in st.method_cfg:
        with open_dict(cfg):
            cfg.method = OmegaConf.merge(cfg.method, st.method_cfg[cfg.method.name])
    task_cfg = st.get("task_cfg")
    if task_cfg and cfg.task.name in task_cfg:
        extra = task_cfg[cfg.task.name]
        wrong = [k for k in extra if k not in ("train", "data", "task", "model")]
        if wrong:
            raise BenchError(f"study.task_cfg.{cfg.task.name} may set train / data / task / model keys, not {wrong}")
        with open_dict(cfg):
            for section in extra:
                cfg[section] = OmegaConf.merge(cfg[section], extra[section])


def grid_config(config: dict, seed: int, index: int) -> dict:
    """The resolved config (a plain dict, after apply_method_cfg) of one grid entry and seed, as a run hashes it."""
    c = copy.deepcopy(config)
    c["seed"] = int(seed)
    c["study"]["lr_index"] = int(index)
    c["train"]["lr"] = float(c["study"]["lr_grid"][c["method"]["name"]][index])
    return c


def resolve(cfg: DictConfig) -> Optional[dict]:
    """Set train.lr from the study's grid (in place). Returns how the lr was chosen, or None without a grid.

    Raises BenchError on a bad grid / index, TuningIncomplete, or NotChosen (skip this job).
    """
    st = cfg.get("study")
    apply_method_cfg(cfg)
    if st is None or not st.get("lr_grid"):
        if st is not None and st.get("lr_index") is not None:
            raise BenchError("study.lr_index is set but study.lr_grid is not; give the grid or drop the index")
        return None
    method = cfg.method.name
    problems = grid_problems(st.lr_grid, [method])
    if problems:
        raise BenchError("; ".join(problems))
    grid = list(st.lr_grid[method])
    tune_seeds = [int(s) for s in st.tune_seeds]
    if not tune_seeds:
        raise BenchError("study.tune_seeds must name at least one seed (e.g. study.tune_seeds=[1])")
    idx = st.get("lr_index")
    if idx is None:
        raise BenchError(f"this study chooses train.lr from study.lr_grid: sweep study.lr_index=0..{len(grid) - 1} "
                         "(or study.lr_index=tuned for a reporting seed)")
    if idx != TUNED and not (isinstance(idx, int) and 0 <= idx < len(grid)):
        raise BenchError(f"study.lr_index must be an integer in 0..{len(grid) - 1} or 'tuned' (got {idx!r})")
    how: dict = {"tune_seeds": tune_seeds, "grid": grid}
    if int(cfg.seed) in tune_seeds:
        if idx == TUNED:
            raise BenchError(f"seed {cfg.seed} is a tuning seed: it runs every grid entry (study.lr_index=0..{len(grid) - 1})")
        how["stage"] = "tune"
    else:
        probe = OmegaConf.to_container(cfg, resolve=True)
        probe.pop("hydra", None)
        chosen, info = tuned_index(probe, cfg.results_dir)
        how.update(stage="report", chosen_on_dev=info)
        if idx == TUNED:
            idx = chosen
        elif idx != chosen:
            raise NotChosen(f"lr {grid[idx]} (index {idx}) is not the entry chosen on dev for {method} on "
                            f"{cfg.task.name} (index {chosen}, lr {grid[chosen]}, by seeds {tune_seeds})")
    with open_dict(cfg):
        cfg.study.lr_index = int(idx)
        cfg.train.lr = float(grid[idx])
    how["index"], how["lr"] = int(idx), float(grid[idx])
    return how
