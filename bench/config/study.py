"""The fair-comparison protocol of a study: one learning-rate grid per method, chosen on dev.

An experiment declares ``study.lr_grid`` (method name -> list of learning rates, the same length for every
method) and sweeps ``study.lr_index``. ``train.lr`` then comes from the grid, so the record says both the
index and the value. Two stages (docs/protocol.md):

1. tuning: every grid entry runs with the ``study.tune_seeds`` (default: seed 1);
2. reporting: the other seeds run only at the entry whose mean dev score over the tuning seeds is highest.
   A job of a reporting seed at another entry is skipped; ``study.lr_index=tuned`` picks that entry itself.

The reported split is never looked at: the choice reads the dev score of each tuning record (the score of
the epoch that train.selection chose, itself chosen on dev).

Grid extension (``study.max_extensions``, default 0): when the entry chosen on dev sits at an edge of the grid,
the grid is extended one step that way (the grid's own ratio: index -1 is grid[0] / ratio, index n is
grid[-1] * ratio) and the choice is made again, up to max_extensions steps. The sweep lists the extension indices
(-1 and n for one extension); a tuning job at an extension index runs only when the choice so far sits at that edge
and is skipped otherwise (``walk`` decides, for the sweep and for the tables alike). Every method has the same
maximum, so the tuning budget stays equal (docs/protocol.md#9-grid-extension).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from bench.errors import BenchError
from bench.records import store as records

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


def lr_at(grid: list[float], index: int) -> float:
    """Entry `index` of an increasing, log-spaced grid, continued past its ends with the grid's own spacing: the
    ratio P = grid[i + 2] / grid[i] repeats every two entries (a 1-3-10 grid [3e-4, 1e-3, 3e-3] continues with 1e-4
    below and 1e-2 above; an exactly geometric grid with ratio r continues by r)."""
    grid = [float(x) for x in grid]
    n = len(grid)
    if 0 <= index < n:
        return grid[index]
    period = (grid[1] / grid[0]) ** 2 if n == 2 else grid[2] / grid[0]
    if index < 0:
        return float(f"{lr_at(grid, index + 2) / period:.12g}")
    return float(f"{lr_at(grid, index - 2) * period:.12g}")


def extension_problems(grid: Any, max_extensions: Any) -> list[str]:
    """What forbids extending these grids (empty = fine): a negative / non-integer maximum, a grid too short,
    not increasing or not log-spaced (every grid[i + 2] / grid[i] the same: the step beyond an edge repeats it)."""
    try:
        ok = int(max_extensions) == max_extensions and int(max_extensions) >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        return [f"study.max_extensions must be a whole number >= 0 (got {max_extensions!r})"]
    if not max_extensions or not grid:
        return []
    grid = OmegaConf.to_container(grid) if isinstance(grid, DictConfig) else dict(grid)
    out = []
    for m, v in grid.items():
        v = [float(x) for x in v]
        periods = [b / a for a, b in zip(v, v[2:])]
        if len(v) < 2 or any(b <= a for a, b in zip(v, v[1:])) or any(abs(p / periods[0] - 1) > 0.02 for p in periods):
            out.append(f"study.lr_grid.{m}={v} is not increasing and log-spaced: grid extension (study.max_extensions="
                       f"{max_extensions}) continues the grid's own spacing; give e.g. [1e-4, 3e-4, 1e-3, 3e-3]")
    return out


def walk(scores: dict[int, float], n: int, max_extensions: int) -> tuple[Optional[int], list[int], Optional[int]]:
    """The choice on dev with grid extension, from the mean dev score of each entry that has one.

    Starts from the n grid entries; while the best entry (ties: the lower index) is at an edge of the entries so
    far and that edge may still move (at most max_extensions steps beyond the grid), the next entry beyond it is
    needed. Returns (chosen index or None, the entries the choice is made over, the next entry needed or None);
    chosen is None while a base entry lacks a score or an extension is needed.
    """
    entries = list(range(n))
    if any(i not in scores for i in entries):
        return None, entries, None
    while True:
        chosen = max(sorted(entries), key=lambda i: scores[i])
        lo, hi = min(entries), max(entries)
        if chosen == lo and lo > -max_extensions:
            nxt = lo - 1
        elif chosen == hi and hi < n - 1 + max_extensions:
            nxt = hi + 1
        else:
            return chosen, sorted(entries), None
        if nxt not in scores:
            return None, sorted(entries), nxt
        entries.append(nxt)


def at_unextendable_edge(chosen: int, entries: list[int], n: int, max_extensions: int) -> bool:
    """The chosen entry sits at an edge of its entries that the declared maximum does not let move further."""
    return chosen in (min(entries), max(entries)) and (chosen <= -max_extensions or chosen >= n - 1 + max_extensions)


def _dev_score(rec: dict) -> Optional[float]:
    sel = rec.get("selection") or {}
    return sel.get("dev_score")


def choose_index(dev_scores: dict[int, list[float]]) -> int:
    """The grid entry with the best mean dev score (ties: the lower index)."""
    return max(sorted(dev_scores), key=lambda i: sum(dev_scores[i]) / len(dev_scores[i]))


def tuned_index(config: dict, results_dir: str | Path) -> tuple[int, dict]:
    """The entry chosen on dev by the tuning seeds' records of this cell (same config but seed and lr), with the
    grid extended where the choice sits at an edge (walk)."""
    st = config["study"]
    grid = st["lr_grid"][config["method"]["name"]]
    n, ext = len(grid), int(st.get("max_extensions") or 0)
    scores, missing = tuning_scores(config, results_dir)
    chosen, entries, needed = walk(scores, n, ext)
    if chosen is None and needed is None:
        miss = [m for i, m in missing if 0 <= i < n]
        raise TuningIncomplete(
            f"the lr for {config['method']['name']} on {config['task']['name']} is chosen on dev by the tuning "
            f"runs, and {len(miss)} of them have no ok record with a dev score yet ({miss[0]}"
            f"{', ...' if len(miss) > 1 else ''}); run the tuning seeds {list(st['tune_seeds'])} first "
            "(the study's sweep runs them first when it runs in order; rerunning it resumes)"
        )
    if chosen is None:
        raise TuningIncomplete(
            f"the lr for {config['method']['name']} on {config['task']['name']} sits at an edge of its grid, which "
            f"is extended to lr {lr_at(grid, needed):g} (study.lr_index={needed}); its tuning runs come first "
            "(rerunning the study's sweep runs them)")
    info = {"index": chosen, "lr": lr_at(grid, chosen), "tune_seeds": list(st["tune_seeds"]),
            "dev_means": {str(lr_at(grid, i)): scores[i] for i in entries}}
    if ext:
        info.update(extended=any(i < 0 or i >= n for i in entries), entries=entries)
    return chosen, info


def tuning_scores(config: dict, results_dir: str | Path) -> tuple[dict[int, float], list[tuple[int, str]]]:
    """Mean dev score over the tuning seeds of every grid entry (extensions included) whose tuning records are all
    there, and the (index, description) of each tuning run without one."""
    st = config["study"]
    grid = st["lr_grid"][config["method"]["name"]]
    n, ext = len(grid), int(st.get("max_extensions") or 0)
    scores: dict[int, float] = {}
    missing: list[tuple[int, str]] = []
    for i in range(-ext, n + ext):
        got = []
        for s in st["tune_seeds"]:
            cand = grid_config(config, s, i)
            path = records.record_path(results_dir, cand, records.config_hash(cand))
            rec = records.read_record(path)
            score = _dev_score(rec) if rec and rec.get("status") == "ok" else None
            if score is None:
                missing.append((i, f"seed {s} lr {lr_at(grid, i):g} ({path.name})"))
            else:
                got.append(float(score))
        if len(got) == len(st["tune_seeds"]):
            scores[i] = sum(got) / len(got)
    return scores, missing


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
        unset = [f"{section}.{key}" for section in extra for key in extra[section]
                 if OmegaConf.is_missing(extra[section], key)]
        if unset:  # a budget the pilot has not set yet: a run now would train at the root value instead
            raise BenchError(f"study.task_cfg.{cfg.task.name} leaves {', '.join(unset)} unset (???): this study takes "
                             "it from its pilot (`python -m bench pilot experiment=<pilot>` writes budgets.yaml); set "
                             f"it in the experiment or give study.task_cfg.{cfg.task.name}.{unset[0]}=<value>")
        with open_dict(cfg):
            for section in extra:
                cfg[section] = OmegaConf.merge(cfg[section], extra[section])


def grid_config(config: dict, seed: int, index: int) -> dict:
    """The resolved config (a plain dict, after apply_method_cfg) of one grid entry and seed, as a run hashes it."""
    c = copy.deepcopy(config)
    c["seed"] = int(seed)
    c["study"]["lr_index"] = int(index)
    c["train"]["lr"] = lr_at(c["study"]["lr_grid"][c["method"]["name"]], index)
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
    n = len(grid)
    ext_problems = extension_problems(st.lr_grid, st.get("max_extensions") or 0)
    if ext_problems:
        raise BenchError("; ".join(ext_problems))
    ext = int(st.get("max_extensions") or 0)
    span = f"0..{n - 1}" if not ext else f"{-ext}..{n - 1 + ext} (the grid's {n} entries and up to {ext} extension(s) " \
                                        "each way)"
    idx = st.get("lr_index")
    if idx is None:
        raise BenchError(f"this study chooses train.lr from study.lr_grid: sweep study.lr_index={span} "
                         "(or study.lr_index=tuned for a reporting seed)")
    if idx != TUNED and isinstance(idx, int) and not -ext <= idx < n + ext and (ext or idx in (-1, n)):
        raise BenchError(f"study.lr_index={idx} is beyond the grid of {method} extended by study.max_extensions={ext} "
                         f"(entries {span}): the maximum is the same for every method; raise study.max_extensions "
                         "for the whole study, not for one run")
    if idx != TUNED and not (isinstance(idx, int) and -ext <= idx < n + ext):
        raise BenchError(f"study.lr_index must be an integer in {span} or 'tuned' (got {idx!r})")
    how: dict = {"tune_seeds": tune_seeds, "grid": grid}
    if int(cfg.seed) in tune_seeds:
        if idx == TUNED:
            raise BenchError(f"seed {cfg.seed} is a tuning seed: it runs every grid entry (study.lr_index={span})")
        how["stage"] = "tune"
        if idx < 0 or idx >= n:  # an extension: only when the choice so far sits at this edge
            probe = OmegaConf.to_container(cfg, resolve=True)
            probe.pop("hydra", None)
            scores, _ = tuning_scores(probe, cfg.results_dir)
            chosen, entries, needed = walk(scores, n, ext)
            if chosen is None and needed is None:
                raise TuningIncomplete(f"grid extension lr {lr_at(grid, idx):g} (index {idx}) of {method} on "
                                       f"{cfg.task.name} runs only if the grid's own entries choose an edge; their "
                                       "tuning runs come first (rerunning the study's sweep runs them)")
            if needed is not None and needed != idx and (needed < 0) == (idx < 0) and abs(needed) < abs(idx):
                raise TuningIncomplete(f"grid extension index {idx} of {method} on {cfg.task.name} waits for "
                                       f"index {needed} (lr {lr_at(grid, needed):g}) to run first")
            if needed != idx:
                at = "none" if chosen is None else f"{chosen} (lr {lr_at(grid, chosen):g})"
                raise NotChosen(f"grid extension lr {lr_at(grid, idx):g} (index {idx}) is not needed for {method} on "
                                f"{cfg.task.name}: the choice on dev over entries {entries} is index {at}, not at "
                                "that edge")
            how["extension"] = True
    else:
        probe = OmegaConf.to_container(cfg, resolve=True)
        probe.pop("hydra", None)
        chosen, info = tuned_index(probe, cfg.results_dir)
        how.update(stage="report", chosen_on_dev=info)
        if idx == TUNED:
            idx = chosen
        elif idx != chosen:
            raise NotChosen(f"lr {lr_at(grid, idx):g} (index {idx}) is not the entry chosen on dev for {method} on "
                            f"{cfg.task.name} (index {chosen}, lr {lr_at(grid, chosen):g}, by seeds {tune_seeds})")
    lr = lr_at(grid, int(idx))
    with open_dict(cfg):
        cfg.study.lr_index = int(idx)
        cfg.train.lr = lr
    how["index"], how["lr"] = int(idx), lr
    return how
