"""`bench perf`'s command line: its options (the Hydra group conf/perf/) and one config per method, settled as a run
settles it (bench.run.runner.setup without its checks: a worker checks its own method, so one bad method is one failed
row)."""

from __future__ import annotations

import functools

from omegaconf import DictConfig, OmegaConf

from bench.config.compose import compose
from bench.config.overrides import method_overrides_for, split_overrides
from bench.errors import BenchError
from registry import did_you_mean

FLOOR = "frozen"  # the pseudo-method of the frozen floor (bench/perf/session.py), not in the registry
GROUP = "+perf=default"  # conf/perf/default.yaml, added to the root config only when perf composes it


def parse_argv(argv: list[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(methods, perf.* overrides, method.* overrides, the other overrides) through the one splitter."""
    split = split_overrides(argv, "perf", own=("perf",))
    return split.methods, split.own["perf"], split.method, split.rest


@functools.lru_cache(maxsize=1)
def defaults() -> DictConfig:
    """conf/perf/default.yaml as composed (for messages and --help)."""
    return compose([GROUP]).perf


def perf_options(perf_overrides: list[str]) -> DictConfig:
    """conf/perf/default.yaml with the perf.* overrides, checked (one line per problem, with what to type)."""
    try:
        p = compose([GROUP, *perf_overrides]).perf
    except BenchError:
        known = list(defaults())
        given = [o.split("=", 1)[0].split(".", 1)[1].split(".")[0] for o in perf_overrides]
        unknown = [k for k in dict.fromkeys(given) if k not in known]
        if not unknown:
            raise
        hints = [f"perf.{k}{did_you_mean(k, known, ' (did you mean perf.{}?)')}" for k in unknown]
        raise BenchError(f"unknown perf option(s): {', '.join(hints)}. Options: "
                         + ", ".join(f"perf.{k}" for k in known)) from None
    problems = []
    for key in ("steps", "batch_size", "seq_len", "eval_steps", "timeout_s"):
        if not (isinstance(p[key], int) and p[key] >= 1):
            problems.append(f"perf.{key} must be a positive integer (got {p[key]!r}); "
                            f"e.g. perf.{key}={defaults()[key]}")
    if not (isinstance(p.warmup, int) and p.warmup >= 0):
        problems.append(f"perf.warmup must be an integer >= 0 (got {p.warmup!r}); e.g. perf.warmup=3")
    for key in ("rounds", "eval_batch_size", "threads"):
        if p[key] is not None and not (isinstance(p[key], int) and p[key] >= 1):
            problems.append(f"perf.{key} must be a positive integer or null (got {p[key]!r})")
    if p.rounds is not None and isinstance(p.rounds, int) and isinstance(p.steps, int) and p.rounds > p.steps:
        problems.append(f"perf.rounds ({p.rounds}) cannot exceed perf.steps ({p.steps}): each round times >= 1 step")
    if p.device not in ("auto", "cpu", "cuda"):
        problems.append(f"perf.device must be auto | cpu | cuda (got {p.device!r})")
    if problems:
        raise BenchError("Invalid perf options:\n  - " + "\n  - ".join(problems))
    return p


def method_configs(methods: list[str], method_ov: list[str], rest: list[str], p: DictConfig) -> dict[str, dict]:
    """name -> the fully composed config (plain dict) for that method; `frozen` gets the root config's.

    method.<key>=v reaches every listed method that has <key> (+method.<key>=v adds it to all); perf.method_overrides
    sets a method's keys that the command line leaves alone."""
    from bench.run.runner import setup
    from methods import available

    known = available()
    for m in methods:
        if m != FLOOR and m not in known:
            hint = did_you_mean(m, known + [FLOOR], " Did you mean {!r}?")
            raise BenchError(f"Unknown method {m!r}.{hint} Valid: {', '.join(known)} (and the floor {FLOOR!r}).")
    used: set[str] = set()
    out: dict[str, dict] = {}
    for m in [x for x in methods if x != FLOOR]:
        cfg = compose([f"method={m}", *rest])
        applicable, _ = method_overrides_for(cfg.method, method_ov)
        if applicable:
            cfg = compose([f"method={m}", *rest, *applicable])
        given = {o.split("=", 1)[0].lstrip("+~").split(".")[1] for o in applicable}
        used |= set(applicable)
        OmegaConf.set_struct(cfg, False)
        for key, value in ((p.method_overrides or {}).get(m) or {}).items():
            if key not in given:
                cfg.method[key] = value
        out[m] = setup(cfg, choose_lr=False, check=False).identity.config  # as the run settles it
    unused = [o.split("=", 1)[0].lstrip("+~") for o in method_ov if o not in used]
    if unused:
        raise BenchError(f"no listed method has the option(s) {', '.join(unused)}")
    if FLOOR in methods:
        container = setup(compose(rest), choose_lr=False, check=False).identity.config
        container["method"] = {"name": FLOOR}
        out[FLOOR] = container
    return {m: out[m] for m in methods}
