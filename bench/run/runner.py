"""One run as a recipe read top to bottom: setup -> train -> evaluate -> record.

``setup`` (a RunSetup: the settled config, its identity, the method, the task family) is also where `bench perf`
and `bench params` start, so the three build the same model with the same method."""

from __future__ import annotations

import math
import shutil
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from bench.config.identity import RunIdentity, run_identity
from bench.errors import BenchError
from bench.records import store as records
from bench.run import forgetting
from bench.run.cost import CostCallback, memory_figures
from bench.run.training import compile_stats
from bench.run.validate import check_results_dir, validate_config
from bench.tasks.data import DEV_ALIAS, default_cache_dir

PROCESS_START = time.perf_counter()


def dev_metric_key(main_key: str, task: Any) -> str:
    """The dev-split key of the task's main metric: its name without the reported alias, plus _dev."""
    for alias in sorted(task.eval_splits, key=len, reverse=True):
        if alias != "default" and main_key.endswith("_" + alias):
            return f"{main_key[: -len(alias) - 1]}_{DEV_ALIAS}"
    return f"{main_key}_{DEV_ALIAS}"


def steps_per_epoch(n_train: int, t: DictConfig) -> int:
    return max(1, math.ceil(math.ceil(n_train / int(t.batch_size)) / int(t.grad_accum)))


def optimizer_steps(n_train: int, t: DictConfig) -> int:
    if t.max_steps is not None:
        return int(t.max_steps)
    return int(math.ceil(steps_per_epoch(n_train, t) * float(t.epochs)))


# ------------------------------------------------------------------------------------------------
# setup: what `bench run`, `bench perf` and `bench params` all start from
# ------------------------------------------------------------------------------------------------
def plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def resolve_method(cfg: DictConfig):
    from methods import MethodConfigError, get_method
    from methods.registry import UnknownMethodError

    try:
        mcfg = plain(cfg.method)
        method = get_method(cfg.method.name, mcfg)  # the config tells a peft preset from a user's folder
        method.validate(mcfg)
    except (UnknownMethodError, MethodConfigError) as e:
        raise BenchError(str(e)) from e
    return method


@dataclass
class RunSetup:
    """A configuration made ready to train, to time or to count: everything before the data and the weights.

    `bench run`, each `bench perf` worker and `bench params` start here (``setup``), so each settles the config,
    resolves the method and the task family, builds the model with its head and applies the method the same way."""

    cfg: DictConfig  # settled in place: train.precision resolved, the study's settings and train.lr applied
    identity: RunIdentity  # the config as the record stores it, its hash, the record's path
    device: str  # where it trains (bench.records.hardware.train_device), for train.precision=auto
    precision: dict  # the record's block: requested, resolved, why
    lr_choice: Optional[dict] = None  # how the study chose train.lr (None without a grid)
    method: Any = None  # methods.Method, once checked
    family: Any = None  # its bench.tasks family (TaskFamily), once checked

    def check(self, method=None) -> RunSetup:
        """Every check that reads no data and no weights: the config's values, the method and its options (the
        registered one, or ``method`` as given), the task family and its task. Keeps the method and the family."""
        from bench.tasks.families import get_family

        validate_config(self.cfg)
        self.method = resolve_method(self.cfg) if method is None else method
        self.family = get_family(self.cfg.task.family)(self.cfg, default_cache_dir(self.cfg.cache_dir))
        self.family.validate()
        forgetting.check(self.cfg, self.family)
        return self

    @property
    def task_type(self) -> str:
        return self.family.task_type

    def build_model(self, tokenizer=None, meta: bool = False):
        """The task family's model with its head, before the method; meta=True: on the meta device, from the
        architecture alone (no weight read or allocated, no tokenizer)."""
        return self.family.build_meta() if meta else self.family.build_model(tokenizer)

    def apply_method(self, model, total_steps: int, seed: Optional[int] = None, meta: bool = False):
        """The method applied to the freshly built model, its parameters counted (bench.run.training.Applied)."""
        from bench.run import training

        return training.apply_method(self.cfg, self.method, model, self.task_type, total_steps, seed, meta=meta)


def setup(cfg: DictConfig, device: Optional[str] = None, choose_lr: bool = True, check: bool = True,
          method=None) -> RunSetup:
    """Settle ``cfg`` in place as the run trains it and identify it; with check=True also check it (RunSetup.check).

    Settling: train.precision=auto resolved for ``device`` (default: where this process trains), the study's
    per-method and per-task settings merged, train.lr taken from the study's grid. choose_lr=True (a run) resolves
    study.lr_index as the study's protocol says, reading its tuning records: raises bench.config.study.NotChosen for a
    grid entry this seed does not run. choose_lr=False (perf, params) reads no record and leaves cfg.train.lr alone; the
    identity's config still takes train.lr from an integer study.lr_index. ``method``: a method object to use instead
    of the registered one (perf's frozen floor)."""
    from bench.config import study
    from bench.records import hardware

    device = device or hardware.train_device()
    precision = hardware.apply_precision(cfg, device)  # before hashing: an auto run hashes as its resolved value
    lr_choice = study.resolve(cfg) if choose_lr else None  # the record says which entry and why
    s = RunSetup(cfg, run_identity(cfg), device, precision, lr_choice)
    return s.check(method) if check else s


# ------------------------------------------------------------------------------------------------
# the run: setup -> train -> evaluate -> record
# ------------------------------------------------------------------------------------------------
def run(cfg: DictConfig, overrides: Optional[list[str]] = None, sweep: bool = False) -> dict:
    """Train and evaluate one configuration; returns the written record."""
    run_start = time.perf_counter()
    from bench.config import study

    # a study's committed records first (a fresh checkout has no results/runs/): its sweep resumes, not reruns
    records.restore_experiment(cfg.results_dir, cfg.get("experiment_name"))
    try:
        s = setup(cfg, check=False)
    except study.NotChosen as e:
        print(f"[bench] skip: {e}")
        return {"skipped": "not the lr chosen on dev"}
    path, chash = s.identity.path, s.identity.hash
    if not cfg.force and records.completed(path, chash):
        print(f"[bench] skip: {path.name} already has an ok record with this config hash (force=true reruns)")
        return {**(records.read_record(path) or {}), "skipped": "already done"}

    check_results_dir(cfg.results_dir)  # nowhere to write even a failed record: stop here
    try:
        s.check()
    except BenchError as e:
        if sweep:  # a sweep keeps a record of every job, also of one whose input was invalid
            records.write_record(path, records.precheck_failure(s.identity.config, chash, overrides,
                                                                f"BenchError: {e}"))
            e.record_path = str(path)  # type: ignore[attr-defined]  (the sweep's summary names it)
        raise

    from bench.records import hardware

    warning = hardware.bf16_warning(str(cfg.train.precision), s.device)
    if warning:  # the user asked for bf16: say what it costs on this CPU, then train as asked
        print(warning, file=sys.stderr)

    from contextlib import ExitStack

    from bench.run import locks as claims

    with ExitStack() as held:
        if cfg.get("claim", "skip") != "off":
            try:
                stale = held.enter_context(claims.claim(path, wait=cfg.get("claim") == "wait"))
            except claims.ClaimHeld as e:
                print(f"[bench] skip: {e}")
                return {"skipped": "claimed by another process", "claim": e.holder}
            except claims.NoLocking as e:
                raise BenchError(str(e)) from None
            if not cfg.force and records.completed(path, chash):  # the holder we waited for finished it
                print(f"[bench] skip: {path.name} was finished by another process while this one waited")
                return {**(records.read_record(path) or {}), "skipped": "already done"}
        else:
            stale = None
        record = _claimed_run(s, overrides, sweep, run_start, stale)
    _print_summary(record)
    return record


def _claimed_run(s: RunSetup, overrides, sweep: bool, run_start: float, stale) -> dict:
    """The record of the run, begun, filled by training and evaluation, and written whatever happens."""
    cfg, path = s.cfg, s.identity.path
    record: dict[str, Any] = records.record_head(s.identity.config, s.identity.hash, overrides, "running")
    record.update(git=records.git_info(), versions=records.package_versions(), started_at=records.now())
    record["precision"] = s.precision  # requested (auto or explicit), resolved (what trained and was hashed), why
    if s.lr_choice is not None:
        record["study"] = s.lr_choice
    if stale:
        record["claim_taken_over"] = stale
    try:
        _train_and_evaluate(s, record, run_start)
        record["status"] = "ok"
    except BaseException as e:  # record the failure, then let the caller decide
        # a signal / Ctrl-C / submitit's requeue exit: not a failure of the run, which a rerun continues
        record["status"] = "interrupted" if isinstance(e, (SystemExit, KeyboardInterrupt)) else "failed"
        record["error"] = f"{type(e).__name__}: {e}"
        if record["status"] == "interrupted":
            record["resume_hint"] = ("rerun the same command: it resumes from the newest checkpoint" if
                                     cfg.train.get("save_every") else "rerun the same command (no train.save_every: "
                                     "it starts again from step 0)")
        record["traceback"] = traceback.format_exc(limit=20)
        if isinstance(e, BenchError) and "params" not in record:
            # bad input found before training: nothing ran, so keep no record unless in a sweep
            record["failed_before_training"] = True
        e.record_path = str(path)  # type: ignore[attr-defined]
        raise
    finally:
        record["finished_at"] = records.now()
        record["wall_s"] = round(time.perf_counter() - run_start, 3)
        record["device"] = records.device_info()
        record["memory"] = memory_figures()
        if record["status"] == "ok" or not record.get("failed_before_training") or sweep:
            records.write_record(path, record)
            record["path"] = str(path)
    return record


def _train_and_evaluate(s: RunSetup, record: dict, run_start: float) -> None:
    """The run's body, into ``record``: train, evaluate, record what was chosen and what it cost."""
    trained = _train(s, record, run_start)
    scored = _evaluate(s, trained, record)
    _record_results(s, trained, scored, record)


@dataclass
class _Trained:
    """What training leaves for evaluation and the record."""

    data: Any  # bench.tasks.data.TaskData
    tokenizer: Any
    model: Any  # the method applied
    mcfg: dict
    trainer: Any
    total_steps: int
    cost: CostCallback
    cost_summary: dict
    history: list  # every evaluation so far: epoch, step, metrics
    history_preds: list  # per-example predictions of each (kept for the chosen one only)
    forget: Any  # bench.run.forgetting.Probe or None
    ckpt_root: Path
    artifact_dir: Path


def _train(s: RunSetup, record: dict, run_start: float) -> _Trained:
    """data -> model -> method -> Trainer (resumed from a checkpoint of this config when there is one) -> steps."""
    import torch
    from transformers import set_seed

    from bench.run import checkpoint, training

    cfg, family, method, chash = s.cfg, s.family, s.method, s.identity.hash
    artifact_dir = s.identity.path.with_suffix("")
    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(int(t.num_threads))
    set_seed(int(cfg.seed))

    data = family.load_data()
    record["data"] = data.info
    tokenizer = family.load_tokenizer()
    forget = forgetting.Probe(cfg, tokenizer) if t.get("forgetting") else None  # the generic-text sample, read now
    model = s.build_model(tokenizer)
    # the tokenized train set is what the Trainer steps over (QA: one feature per window, not per example)
    train_ds = family.train_dataset(data, tokenizer)
    record["data"]["tokenized_cache_hit"] = getattr(family, "last_cache_hit", None)
    total_steps = optimizer_steps(len(train_ds), t)
    applied = s.apply_method(model, total_steps)
    model, ctx, mcfg = applied.model, applied.ctx, applied.mcfg
    record["params"] = applied.params
    if record["params"]["trainable"] == 0:
        raise BenchError(f"method {cfg.method.name!r} left no trainable parameter on this model; check its targets")

    cost = CostCallback(run_start)
    history: list[dict] = []
    history_preds: list = []
    method_callbacks = method.callbacks(model, mcfg, ctx)
    callbacks = [cost, *method_callbacks]
    epoch_eval = None
    if t.eval_strategy == "epoch":
        epoch_eval = _EpochEval(family, data, tokenizer, history, cost, history_preds)
        callbacks.append(epoch_eval)
    # what a checkpoint keeps beyond the Trainer's own state (bench/run/checkpoint.py)
    parts = {"cost": cost, **({"epoch_eval": epoch_eval} if epoch_eval else {}),
             **{f"method.{i}": cb for i, cb in enumerate(method_callbacks) if hasattr(cb, "state_dict")}}
    harness = checkpoint.HarnessState(parts, chash, epoch_eval, steps_per_epoch=steps_per_epoch(len(train_ds), t))
    callbacks.append(harness)
    optimizer = method.create_optimizer(model, mcfg, ctx, plain(t))
    ckpt_root = artifact_dir / "checkpoints"
    trainer = training.make_trainer(cfg, model, train_ds, family.collator(tokenizer), callbacks, optimizer, ckpt_root)
    from bench.run import trackers

    if trackers.where(trainer):  # train.report_to: where the Trainer's tracker writes
        record["logging"] = trackers.where(trainer)
    resume_from, skipped = checkpoint.find_resume(ckpt_root, chash)
    if resume_from is not None:
        blob = harness.restore(resume_from)
        record["resume"] = {"from_step": blob["step"], "checkpoint": str(resume_from), "skipped": skipped,
                            "train_wall_s_before": round(cost.prior_wall, 3)}
        print(f"[bench] resuming from {resume_from} (optimizer step {blob['step']})")
    elif skipped:
        record["resume"] = {"from_step": 0, "checkpoint": None, "skipped": skipped}
    if t.get("compile"):
        compile_stats(reset=True)  # this run's compiled graphs only (a sweep worker may have compiled others)
        if epoch_eval is not None:
            epoch_eval.trainer = trainer  # evaluates through the Trainer's compiled module
    if forget is not None:
        forget.before(model)  # as training starts: the method applied, nothing trained
    if t.max_steps is None or int(t.max_steps) > 0:  # train.max_steps=0: evaluation only
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    cost_summary = cost.summary(int(t.batch_size) * int(t.grad_accum))
    if t.get("save_every"):
        cost_summary["checkpoints_saved"] = harness.saved
        cost_summary["checkpoint_s"] = round(harness.seconds, 3)
    return _Trained(data, tokenizer, model, mcfg, trainer, total_steps, cost, cost_summary, history, history_preds,
                    forget, ckpt_root, artifact_dir)


@dataclass
class _Scored:
    """The final evaluation and the one chosen among all of them."""

    final: dict  # the final evaluation's metrics
    eval_s: float
    chosen_i: int  # index into the history of evaluations
    main_key: str
    sel_key: str  # the metric that chose (dev when there is a dev split)
    dev_key: Optional[str]


def _evaluate(s: RunSetup, tr: _Trained, record: dict) -> _Scored:
    """The final evaluation (through the compiled module with train.compile), then the evaluation kept: the last,
    or with train.selection=best the best on dev (on the reported split only when there is no dev split)."""
    cfg, family, t = s.cfg, s.family, s.cfg.train
    t0 = time.perf_counter()
    final = family.evaluate(_eval_model(tr.trainer, tr.model), tr.data, tr.tokenizer, out_dir=tr.artifact_dir)
    if t.get("compile"):  # train.compile: what was compiled, how often, and how long it took
        record["compile"] = {"backend": t.get("compile_backend") or "inductor", "mode": t.get("compile_mode"),
                             **compile_stats()}
    eval_s = time.perf_counter() - t0
    if tr.forget is not None:
        record["forgetting"] = tr.forget.after(tr.model)
    final_preds = getattr(family, "last_predictions", None)
    history, state = tr.history, tr.trainer.state
    if not history or history[-1]["step"] != state.global_step:
        history.append({"epoch": state.epoch, "step": state.global_step, "metrics": final})
        tr.history_preds.append(final_preds)
    main_key = cfg.task.main_metric
    dev_key = dev_metric_key(main_key, cfg.task) if DEV_ALIAS in tr.data.evals else None
    if dev_key is not None and dev_key not in final:
        raise BenchError(f"the dev split was scored but its key {dev_key!r} is not among the metrics {sorted(final)}")
    sel_key = dev_key or main_key
    best_i = max(range(len(history)), key=lambda i: history[i]["metrics"][sel_key])
    chosen_i = best_i if t.selection == "best" else len(history) - 1
    return _Scored(final, eval_s, chosen_i, main_key, sel_key, dev_key)


def _record_results(s: RunSetup, tr: _Trained, sc: _Scored, record: dict) -> None:
    """Into the record: the chosen evaluation, the history, the cost, the method's state; then what stays on disk
    (the adapter with save_adapter, checkpoints with train.keep_checkpoints)."""
    cfg, t, method = s.cfg, s.cfg.train, s.method
    chosen = tr.history[sc.chosen_i]
    record["metrics"] = chosen["metrics"]
    record["metrics_last"] = sc.final
    record["main_metric"] = sc.main_key
    record["main_score"] = chosen["metrics"][sc.main_key]
    record["selection"] = {
        "protocol": t.selection, "epoch": chosen["epoch"], "step": chosen["step"],
        # which split chose the epoch: dev whenever there is one, never the reported split when there is
        "chosen_on": ("dev" if sc.dev_key else "reported split (no dev split)") if t.selection == "best" else "last",
        "metric": sc.sel_key if t.selection == "best" else None,
        "dev_metric": sc.dev_key,
        "dev_score": chosen["metrics"][sc.dev_key] if sc.dev_key else None,
    }
    if tr.history_preds[sc.chosen_i]:
        from bench.records.predictions import encode_splits

        # per-example predictions of the chosen evaluation, every split: paired tests need no rerun
        record["predictions"] = encode_splits(tr.history_preds[sc.chosen_i])
    record["eval_history"] = tr.history
    record["train"] = {
        **tr.cost_summary,
        "loss_curve": tr.cost.loss_curve,
        "final_loss": tr.cost.loss_curve[-1][1] if tr.cost.loss_curve else None,
        "epochs": tr.trainer.state.epoch,
        "planned_steps": tr.total_steps,
    }
    n_eval = sum(record["data"].get("eval_sizes", {}).values()) or None
    record["eval"] = {"wall_s": round(sc.eval_s, 3),
                      "examples_per_s": round(n_eval / sc.eval_s, 2) if n_eval else None}
    record["method_state"] = method.record_state(tr.model, tr.mcfg)
    if cfg.get("save_adapter"):
        method.save(tr.model, tr.mcfg, str(tr.artifact_dir / "adapter"))
        record["adapter_path"] = str(tr.artifact_dir / "adapter")
    if not t.get("keep_checkpoints"):
        shutil.rmtree(tr.ckpt_root, ignore_errors=True)  # the record is complete: the run needs no resume any more
    elif tr.ckpt_root.is_dir():
        record["checkpoints"] = str(tr.ckpt_root)
    try:
        tr.artifact_dir.rmdir()  # only when nothing was kept there (no adapter, no predictions file)
    except OSError:
        pass


class _EpochEval(TrainerCallback):
    """Evaluate after every epoch; the runner picks the last or the best (train.selection)."""

    def __init__(self, family, data, tokenizer, history, cost, history_preds):
        self.family, self.data, self.tokenizer, self.history, self.cost = family, data, tokenizer, history, cost
        self.history_preds = history_preds

    trainer = None  # set with train.compile: evaluate through the Trainer's compiled module

    def on_epoch_end(self, args, state, control, model=None, **kw):
        t0 = time.perf_counter()
        if self.trainer is not None:
            model = _eval_model(self.trainer, model)
        with _rng_untouched():  # evaluating must not move training's random streams (same run with or without it,
            metrics = self.family.evaluate(model, self.data, self.tokenizer)  # and a resume stays exact)
        self.cost.eval_seconds += time.perf_counter() - t0
        self.history.append({"epoch": state.epoch, "step": state.global_step, "metrics": metrics})
        self.history_preds.append(getattr(self.family, "last_predictions", None))

    # kept in checkpoints: a resumed run still chooses among every epoch's evaluation
    def state_dict(self) -> dict:
        from bench.records.predictions import encode_splits

        return {"history": self.history, "preds": [encode_splits(p) if p else None for p in self.history_preds]}

    def load_state_dict(self, d: dict) -> None:
        from bench.records.predictions import decode_splits

        self.history[:] = d["history"]
        self.history_preds[:] = [{a: {"pred": v["pred"], "label": v["label"]} for a, v in decode_splits(p).items()}
                                 if p else None for p in d["preds"]]


def _eval_model(trainer, model):
    """The module to evaluate: with train.compile the Trainer's compiled wrapper of ``model`` (same parameters), so
    evaluation runs the compiled forward too; else ``model``. Generation (``model.generate``) stays eager."""
    import torch

    wrapped = getattr(trainer, "model_wrapped", None)
    if isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule) and wrapped._orig_mod is model:
        return wrapped
    return model


@contextmanager
def _rng_untouched():
    """Restore Python's, numpy's and torch's (CPU and CUDA) random states after the block."""
    import random

    import numpy as np
    import torch

    py, npy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def _print_summary(record: dict) -> None:
    p = record.get("params", {})
    tr = record.get("train", {})
    score = record.get("main_score")
    print(
        f"[bench] {record['status']}: {record['method']} on {record['task']} ({record['model']}, seed {record['seed']})"
        f" | {record.get('main_metric')}={score:.4f}" if score is not None else
        f"[bench] {record['status']}: {record['method']} on {record['task']} ({record['model']}, seed {record['seed']})",
        end="",
    )
    if p:
        print(f" | trainable {p['trainable']:,} / {p['total']:,} ({p['trainable_pct']:.3f}%)", end="")
    if tr:
        print(f" | {tr.get('steps')} steps, {tr.get('samples_per_s')} samples/s", end="")
    print(f" | {record.get('wall_s')} s" + (f" -> {record['path']}" if record.get("path") else ""))
