"""Result records: one JSON file per run, written atomically; its shape (RunRecord); the config hash."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, TypedDict, Union, get_args, get_origin, get_type_hints

# Keys that change where things are read or written, not what is computed.
NON_SEMANTIC_KEYS = ("results_dir", "data_dir", "cache_dir", "force", "offline_fallback", "save_adapter", "tag",
                     "claim")
# checkpointing changes nothing computed (a resumed run equals an uninterrupted one: tests/test_checkpoint.py)
NON_SEMANTIC_TRAIN_KEYS = ("progress", "num_threads", "logging_steps", "eval_batch_size", "save_every", "save_keep",
                           "keep_checkpoints", "report_to")  # report_to: where the Trainer also logs
# torch.compile switches: an eager run (compile=false) hashes as if the keys did not exist, so records written before
# they were added still match; a compiled run keeps all three in its hash (compiled dropout draws other random
# numbers than eager, so a compiled run is a different run, not a resumable copy of the eager one)
COMPILE_TRAIN_KEYS = ("compile", "compile_backend", "compile_mode")
# Keys added after records existed, as "section.key": value. At that value a key is left out of the hash (the run
# computes what it computed before the key existed), so committed records still match; at any other value it is
# hashed. Add a new semantic key here with its do-nothing value, and note it in CHANGELOG.md.
HASH_NEUTRAL_DEFAULTS: dict[str, Any] = {
    "task.group_by_length": False,  # GLUE tasks gained it on 2026-12-07 (length-grouped batches)
    "study.task_cfg": {},  # per-task study settings, 2026-12-07
    "study.max_extensions": 0,  # lr grid extension, 2026-12-07
    "task.eval_mode": "generate",  # reasoning tasks: generate (as before) | loglikelihood (multiple choice), issue 25
    "train.forgetting": False,  # the before / after loss on generic text (bench/run/forgetting.py), issue 25
}
# Blocks that act only in one mode, as "section.key": ("switch key in that section", the value that turns them on):
# under any other switch value they are left out of the hash (the task's log-likelihood templates change nothing
# a generating run computes).
MODE_ONLY_KEYS: dict[str, tuple[str, Any]] = {"task.loglikelihood": ("eval_mode", "loglikelihood")}
PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "hydra-core", "numpy", "scikit-learn", "scipy")
REPO_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------
# the record's shape
# ------------------------------------------------------------------------------------------------
# The number every run record carries in "schema". Bump it only when a key changes meaning or goes away (a new
# optional key needs no bump: readers ignore what they do not know), and say why in CHANGELOG.md.
SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "interrupted")  # "running" lives only in memory: a record is written when a run ends


class RecordHead(TypedDict):
    """The keys every run record starts with, in this order (bench.records.store.record_head builds them)."""

    schema: int  # SCHEMA_VERSION
    status: str  # ok | failed | interrupted
    method: str
    task: str
    model: str
    seed: int
    tag: Any  # free-form label from the command line (null when none)
    config_hash: str  # config_hash(config): the run's identity (bench.config.identity)
    config: dict  # the resolved config that trained
    overrides: list  # the command line's overrides, as typed


class RunRecord(RecordHead, total=False):
    """One run's JSON file. Which of these keys a record must have depends on its status (RUN_KEYS, OK_KEYS,
    FAILED_KEYS, PRECHECK_KEYS: record_problems checks them); the others appear when their feature was on."""

    # once the run started (the claim held)
    git: dict  # commit, dirty
    versions: dict  # python and the packages of PACKAGES
    started_at: str
    precision: dict  # requested, resolved, why (records before train.precision=auto lack it)
    study: dict  # how the study chose train.lr (bench.config.study.resolve)
    claim_taken_over: dict  # the stale claim this run took over (bench.run.locks)
    # what was trained and scored (status ok)
    data: dict  # sizes, subsamples, tokenized_cache_hit
    params: dict  # bench.models.params.count_parameters + head_modules
    logging: dict  # train.report_to: where the Trainer's tracker wrote
    resume: dict  # the checkpoint a rerun continued from
    compile: dict  # train.compile: frames, recompiles, graph breaks, compile seconds
    forgetting: dict  # train.forgetting: the generic-text loss before and after
    metrics: dict  # the chosen evaluation's metrics
    metrics_last: dict  # the final evaluation's metrics
    main_metric: str
    main_score: float
    selection: dict  # which evaluation was chosen, on which split
    predictions: dict  # per-example predictions of the chosen evaluation (bench.records.predictions)
    eval_history: list  # every evaluation: epoch, step, metrics
    train: dict  # the cost figures, loss curve, steps
    eval: dict  # evaluation seconds and speed
    method_state: dict  # the method's own account (Method.record_state)
    adapter_path: str  # save_adapter=true
    checkpoints: str  # train.keep_checkpoints=true: the folder kept
    # how it ended
    error: str  # failed / interrupted: "<ExceptionType>: message"
    traceback: str
    resume_hint: str  # interrupted: how to continue
    failed_before_training: bool  # bad input found before any training (kept only in a sweep)
    finished_at: str
    wall_s: float
    device: dict  # device_info()
    memory: dict  # bench.run.cost.memory_figures
    notes: list  # corrections made to a committed record after its run, one line each


RUN_KEYS = ("git", "versions", "started_at", "finished_at", "wall_s", "device", "memory")
OK_KEYS = ("data", "params", "metrics", "metrics_last", "main_metric", "main_score", "selection", "eval_history",
           "train", "eval", "method_state")
FAILED_KEYS = ("error", "traceback")
PRECHECK_KEYS = ("error", "failed_before_training", "finished_at")  # a sweep's job whose input was invalid


def record_head(config: dict, chash: str, overrides, status: str) -> dict:
    """The first keys of a run record, from the config that trains (its resolved, hashed dict)."""
    return RecordHead(schema=SCHEMA_VERSION, status=status, method=config["method"]["name"],
                      task=config["task"]["name"], model=config["model"]["name"], seed=int(config["seed"]),
                      tag=config.get("tag"), config_hash=chash, config=config, overrides=list(overrides or []))


def precheck_failure(config: dict, chash: str, overrides, error: str) -> dict:
    """The record of a sweep's job whose input was invalid: nothing trained (status failed); ``error`` as the record
    says it ("BenchError: <message>")."""
    return RunRecord(**record_head(config, chash, overrides, "failed"), error=error, failed_before_training=True,
                     finished_at=now())


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if get_origin(hint) is Union:
        return any(_type_ok(value, h) for h in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, get_origin(hint) or hint)


def record_problems(rec: Any) -> list[str]:
    """Everything that makes ``rec`` not a run record of this schema (empty list = valid): a key the status needs
    is missing, a key is not declared in RunRecord, or a value has the wrong type."""
    if not isinstance(rec, dict):
        return [f"a record is a JSON object, not {type(rec).__name__}"]
    hints = get_type_hints(RunRecord)
    status = rec.get("status")
    need = list(RecordHead.__annotations__)
    if rec.get("failed_before_training") and "started_at" not in rec:
        need += PRECHECK_KEYS
    else:
        need += RUN_KEYS + (OK_KEYS if status == "ok" else FAILED_KEYS)
    out = [f"missing key {k!r} (status {status})" for k in need if k not in rec]
    out += [f"unknown key {k!r} (declare it in bench.records.store.RunRecord)" for k in rec if k not in hints]
    out += [f"{k}={rec[k]!r:.60} is not {getattr(hints[k], '__name__', hints[k])}" for k in rec
            if k in hints and not _type_ok(rec[k], hints[k])]
    if rec.get("schema") != SCHEMA_VERSION:
        out.append(f"schema {rec.get('schema')!r} is not {SCHEMA_VERSION}")
    if status not in STATUSES:
        out.append(f"status {status!r} is not one of {', '.join(STATUSES)}")
    return out


def write_record(path: Path, rec: dict) -> None:
    """Write a run record (atomically). One whose shape is off is still written - it holds the run's results -
    with one line on stderr naming the problem (a harness bug: tests/test_records.py checks every writer)."""
    problems = record_problems(rec)
    if problems:
        import sys

        print(f"[bench] warning: {Path(path).name} does not match bench.records.store.RunRecord: {'; '.join(problems)}",
              file=sys.stderr)
    write_json_atomic(path, rec)


def semantic_config(cfg: dict) -> dict:
    out = {k: v for k, v in cfg.items() if k not in NON_SEMANTIC_KEYS and k != "hydra"}
    if isinstance(out.get("train"), dict):
        train = {k: v for k, v in out["train"].items() if k not in NON_SEMANTIC_TRAIN_KEYS}
        if not train.get("compile"):
            train = {k: v for k, v in train.items() if k not in COMPILE_TRAIN_KEYS}
        out["train"] = train
    for dotted, (switch, on) in MODE_ONLY_KEYS.items():
        section, key = dotted.split(".", 1)
        node = out.get(section)
        if isinstance(node, dict) and key in node and node.get(switch) != on:
            out[section] = {k: v for k, v in node.items() if k != key}
    for dotted, neutral in HASH_NEUTRAL_DEFAULTS.items():
        section, key = dotted.split(".", 1)
        node = out.get(section)
        if isinstance(node, dict) and key in node and node[key] == neutral:
            out[section] = {k: v for k, v in node.items() if k != key}
    return out


def config_hash(cfg: dict) -> str:
    """sha256 of the config minus paths and switches that do not change the result."""
    blob = json.dumps(semantic_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def record_path(results_dir: str | Path, cfg: dict, chash: str) -> Path:
    model = cfg["model"]["name"]
    name = f"{cfg['task']['name']}__{cfg['method']['name']}__{model}__seed{cfg['seed']}__{chash}.json"
    return Path(results_dir) / name


def is_record_file(path: Path, root: str | Path) -> bool:
    """Not a checkpoint's own JSON (under an artifact folder's checkpoints/) nor anything in a hidden folder."""
    parts = Path(path).relative_to(root).parts[:-1]
    return not any(p.startswith(".") or p == "checkpoints" or p.startswith("checkpoint-") for p in parts)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a shared results folder needs others to read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def read_record(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def completed(path: Path, chash: str) -> bool:
    rec = read_record(path)
    return bool(rec and rec.get("status") == "ok" and rec.get("config_hash") == chash)


def committed_path(experiment_name: str) -> Path:
    """Where `bench table` commits an experiment's records (results/studies/<name>/records.jsonl.gz)."""
    return REPO_ROOT / "results" / "studies" / str(experiment_name) / "records.jsonl.gz"


def restore(source: str | Path, results_dir: str | Path, accept=None) -> int:
    """Write each ok record of a committed records.jsonl.gz that ``results_dir`` lacks back where its run writes it
    (results/runs/ is not committed), so a sweep resumes by config hash on a fresh checkout instead of rerunning what
    is done. A record whose stored config no longer hashes to its name is not restored; ``accept(record)`` may narrow
    the set further. Returns how many records were written."""
    import gzip

    source = Path(source)
    if not source.is_file():
        return 0
    n = 0
    with gzip.open(source, "rt") as f:
        for line in f:
            rec = json.loads(line)
            cfg = rec.get("config") or {}
            if rec.get("status") != "ok" or not cfg or (accept is not None and not accept(rec)):
                continue
            chash = rec.get("config_hash")
            if config_hash(cfg) != chash:
                continue
            path = record_path(results_dir, cfg, chash)
            if completed(path, chash):
                continue
            write_json_atomic(path, rec)
            n += 1
    return n


_RESTORED: set = set()


def restore_experiment(results_dir: str | Path, experiment_name: Any) -> int:
    """Once per process: restore the committed records of ``experiment_name`` (its own runs only) into
    ``results_dir``; says how many in one line."""
    if not experiment_name:
        return 0
    key = (str(Path(results_dir).resolve()), str(experiment_name))
    if key in _RESTORED:
        return 0
    _RESTORED.add(key)
    source = committed_path(experiment_name)
    n = restore(source, results_dir, accept=lambda r: (r.get("config") or {}).get("experiment_name") == experiment_name)
    if n:
        print(f"[bench] restored {n} committed record(s) of {experiment_name} from {source} into {results_dir}")
    return n


def git_info() -> dict:
    def git(*args):
        # --no-optional-locks: `git status` must not take .git/index.lock (a run killed mid-call would leave a
        # stale lock, and parallel jobs would make the user's own `git commit` fail)
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict:
    """Where the run computed: the platform, threads, the CPU's model and speed flags, the GPU
    (bench.records.hardware)."""
    import torch

    from bench.records import hardware

    info = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        **hardware.cpu_info(),
        **hardware.gpu_info(),
    }
    return info
