"""Validation of a run's config: every bad input is caught here, before any model or data is touched; one message
that says what to write instead (bench.errors.BenchError)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from bench.errors import BenchError


def problem_message(problems: list[str]) -> str:
    """One line for one problem; a list for several."""
    if len(problems) == 1:
        return f"Invalid configuration: {problems[0]}"
    return "Invalid configuration:\n  - " + "\n  - ".join(problems)


NUMERIC_TRAIN_KEYS = ("lr", "batch_size", "eval_batch_size", "grad_accum", "epochs", "max_steps", "warmup_steps",
                      "warmup_ratio", "weight_decay", "max_grad_norm", "adam_beta1", "adam_beta2", "adam_epsilon",
                      "logging_steps", "save_every", "save_keep")


DEFAULT_HINTS = {"lr": "1e-4", "batch_size": 16, "eval_batch_size": 64, "grad_accum": 1, "epochs": 3, "max_steps": 200,
                 "warmup_steps": 0, "warmup_ratio": 0.06, "weight_decay": 0.01, "max_grad_norm": 1.0}


def validate_config(cfg: DictConfig) -> None:
    t = cfg.train
    problems = []
    for key in NUMERIC_TRAIN_KEYS:  # values that are not numbers at all, before any comparison
        v = t.get(key)
        if v is None or isinstance(v, bool):
            continue
        try:
            float(v)
        except (TypeError, ValueError):
            problems.append(f"train.{key} must be a number (got {v!r}); e.g. train.{key}={DEFAULT_HINTS.get(key, 1)}")
    if problems:
        raise BenchError(problem_message(problems))
    if not (t.lr is not None and float(t.lr) > 0):
        problems.append(f"train.lr must be > 0 (got {t.lr}); e.g. train.lr=1e-4")
    for key in ("batch_size", "eval_batch_size", "grad_accum"):
        if not (t[key] is not None and int(t[key]) >= 1):
            problems.append(f"train.{key} must be a positive integer (got {t[key]}); e.g. train.{key}=16")
    if t.max_steps is None and not (t.epochs is not None and float(t.epochs) > 0):
        problems.append(f"train.epochs must be > 0 when train.max_steps is null (got {t.epochs})")
    if t.max_steps is not None and int(t.max_steps) < 0:
        problems.append(f"train.max_steps must be >= 0 or null (got {t.max_steps}; 0 evaluates without training)")
    if float(t.weight_decay) < 0:
        problems.append(f"train.weight_decay must be >= 0 (got {t.weight_decay})")
    if float(t.warmup_steps) < 0 or not 0 <= float(t.warmup_ratio) < 1:
        problems.append("train.warmup_steps must be >= 0 and train.warmup_ratio in [0, 1)")
    if t.eval_strategy not in ("end", "epoch"):
        problems.append(f"train.eval_strategy must be end | epoch (got {t.eval_strategy!r})")
    if t.selection not in ("last", "best"):
        problems.append(f"train.selection must be last | best (got {t.selection!r})")
    if t.selection == "best" and t.eval_strategy != "epoch":
        problems.append("train.selection=best needs train.eval_strategy=epoch (there is nothing to choose from)")
    if t.precision not in ("fp32", "bf16", "fp16", "auto"):
        problems.append(f"train.precision must be fp32 | bf16 | fp16 | auto (got {t.precision!r}); "
                        "e.g. train.precision=auto (bf16 where the device has bf16 units, else fp32)")
    if t.get("save_every") is not None:
        every, log = int(t.save_every), int(t.logging_steps)
        if every < 1:
            problems.append(f"train.save_every must be >= 1 optimizer steps or null (got {t.save_every})")
        elif every % log:
            # the Trainer's logged loss is a mean since the last log: a checkpoint between two logs would make the
            # resumed run's next logged value a mean over fewer steps than the uninterrupted run's
            problems.append(f"train.save_every={every} must be a multiple of train.logging_steps={log} "
                            f"(e.g. train.save_every={max(log, every // log * log)})")
        if int(t.get("save_keep") or 0) < 1:
            problems.append(f"train.save_keep must be >= 1 (got {t.get('save_keep')}): the newest checkpoints kept")
    from bench.run import trackers

    problems += trackers.problems(t.get("report_to"))  # train.report_to: a known tracker whose package is installed
    if cfg.get("claim", "skip") not in ("skip", "wait", "off"):
        problems.append(f"claim must be skip | wait | off (got {cfg.get('claim')!r})")
    for key in ("max_train_samples", "max_eval_samples"):
        v = cfg.data.get(key)
        if v is not None and int(v) < 1:
            problems.append(f"data.{key} must be a positive integer or null (got {v})")
    if problems:
        raise BenchError(problem_message(problems))


def check_results_dir(results_dir) -> None:
    """The results folder exists (or can be made) and takes a file: else one message, before any training."""
    p = Path(results_dir)
    for parent in [p, *p.parents]:
        if parent.exists() and not parent.is_dir():
            raise BenchError(f"results_dir={results_dir} lies under {parent}, which is a file, not a folder; "
                             "choose another results_dir=<folder>")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise BenchError(f"results_dir={results_dir} cannot be written ({e.strerror or type(e).__name__}); "
                         "choose a writable results_dir=<folder> or fix its permissions") from None
