"""Result records: one JSON file per run, written atomically; the config hash that identifies a run."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

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
    "train.forgetting": False,  # the before / after loss on generic text (bench/forgetting.py), issue 25
}
# Blocks that act only in one mode, as "section.key": ("switch key in that section", the value that turns them on):
# under any other switch value they are left out of the hash (the task's log-likelihood templates change nothing
# a generating run computes).
MODE_ONLY_KEYS: dict[str, tuple[str, Any]] = {"task.loglikelihood": ("eval_mode", "loglikelihood")}
PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "hydra-core", "numpy", "scikit-learn", "scipy")
REPO_ROOT = Path(__file__).resolve().parents[1]


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
    """Where the run computed: the platform, threads, the CPU's model and speed flags, the GPU (bench.hardware)."""
    import torch

    from bench import hardware

    info = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        **hardware.cpu_info(),
        **hardware.gpu_info(),
    }
    return info
