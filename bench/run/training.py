"""What `bench run`, `bench perf` and `bench params` share (through bench.run.runner.RunSetup): the method's context,
the method applied to the model and counted, the Trainer. Run and perf build the same Trainer here, so `bench perf`
times exactly the optimizer step a run trains with (the Trainer's own `training_step`, clipping, optimizer step,
scheduler step and `zero_grad`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from bench.errors import BenchError


def method_context(model, task_type: str, cfg: Optional[DictConfig] = None, *, total_steps: Optional[int] = None,
                   seed: Optional[int] = None, heads: Optional[list[str]] = None, cache_dir: Optional[str] = None):
    """The one `methods.MethodContext` factory: what a method may know, filled in from the model and the config.

    Without cfg (scripts, tests) the task is unnamed, the seed 0 and the cache the method's default."""
    from bench.models.build import head_modules
    from bench.tasks.data import default_cache_dir
    from methods import MethodContext
    from methods.base import task_trains_head

    task = cfg.task if cfg is not None else {}
    if cache_dir is None and cfg is not None:
        cache_dir = str(default_cache_dir(cfg.cache_dir) / "methods")
    if seed is None:
        seed = int(cfg.seed) if cfg is not None else 0
    return MethodContext(
        task_type=task_type,
        task_name=str(task.get("name") or ""),
        model_type=model.config.model_type,
        head_modules=head_modules(model) if heads is None else list(heads),
        train_head=task_trains_head(task_type),
        total_steps=total_steps,
        seed=int(seed),
        num_labels=task.get("num_labels"),
        **({"cache_dir": cache_dir} if cache_dir is not None else {}),
    )


def enable_gradient_checkpointing(model) -> None:
    """Gradient checkpointing on the backbone (through peft wrappers), non-reentrant, inputs requiring grad."""
    target = model
    while not hasattr(target, "gradient_checkpointing_enable") and hasattr(target, "base_model"):
        target = target.base_model
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def method_options(cfg: DictConfig) -> dict:
    """The method's options as the method receives them (plain dict), for a run and for `bench params` alike: a
    method over a base method (ID3's method.base) gets the base's YAML defaults under the given method.base_cfg."""
    mcfg = OmegaConf.to_container(cfg.method, resolve=True)
    if mcfg.get("base"):
        mcfg["base_cfg"] = {**base_method_defaults(mcfg["base"]), **(mcfg.get("base_cfg") or {})}
    return mcfg


def base_method_defaults(name: str) -> dict:
    """conf/method/<name>.yaml as a dict ({} when there is none: the method's own validation then says what is
    missing). methods/ reads no config file: a method wrapping another (ID3's method.base) gets them from here."""
    from bench.config.compose import CONF_DIR

    file = CONF_DIR / "method" / f"{name}.yaml"
    if not file.is_file():
        return {}
    return dict(OmegaConf.to_container(OmegaConf.load(file), resolve=True) or {})


META_CACHE_DIR = "/nonexistent-bench-params-cache"  # a method applied on the meta device caches nothing


@dataclass
class Applied:
    """The model after the method, and what was needed to get there."""

    model: Any
    ctx: Any  # methods.MethodContext
    mcfg: dict  # the method's config as a plain dict
    params: dict  # bench.models.params.count_parameters of the model, plus head_modules


def apply_method(cfg: DictConfig, method, model, task_type: str, total_steps: int,
                 seed: Optional[int] = None, meta: bool = False) -> Applied:
    """Apply the method to the freshly built model as a run does: context, seeded init, gradient checkpointing
    (train.gradient_checkpointing), parameter counts (head apart, the untouched model's total).

    meta=True (`bench params`): the model lives on the meta device and so do the method's new tensors; the method
    may cache nothing derived from shapes (its cache folder does not exist) and nothing runs, so gradient
    checkpointing, which changes no count, is left off."""
    import contextlib

    import torch
    from transformers import set_seed

    from bench.models.build import head_modules
    from bench.models.params import count_parameters
    from methods import MethodConfigError

    heads = head_modules(model)
    base_total = count_parameters(model)["total"]
    ctx = method_context(model, task_type, cfg, total_steps=total_steps, seed=seed, heads=heads,
                         cache_dir=META_CACHE_DIR if meta else None)
    mcfg = method_options(cfg)
    set_seed(ctx.seed)  # the method's own initialisation is seeded too
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = method.apply(model, mcfg, ctx)
    except MethodConfigError as e:  # a setting that only the model's shapes can refute (e.g. LoRA-Dash s > rank)
        raise BenchError(str(e)) from None
    if cfg.train.gradient_checkpointing and not meta:
        enable_gradient_checkpointing(model)
    params = count_parameters(model, heads, base_total, method.trainable_parameters(model, mcfg))
    params["head_modules"] = heads
    return Applied(model, ctx, mcfg, params)


def make_trainer(cfg: DictConfig, model, train_ds, collator, callbacks: list, optimizer, output_dir: Path,
                 use_cpu: Optional[bool] = None):
    """The Trainer of a run (bench/run/checkpoint.py's CheckpointTrainer) with the run's TrainingArguments.

    optimizer: the method's own, or None for the Trainer's AdamW with its weight-decay groups. An optimizer that
    clips during its own step (ID3 in backward mode: `handles_grad_clipping`) takes train.max_grad_norm itself.
    use_cpu: None = the CPU only where torch sees no GPU."""
    import torch
    from transformers import TrainingArguments

    from bench.run import checkpoint
    from bench.run import trackers

    t = cfg.train
    trainer_clips = not getattr(optimizer, "handles_grad_clipping", False)
    warmup = float(t.warmup_steps) if float(t.warmup_steps) > 0 else float(t.warmup_ratio)
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=int(t.batch_size),
        per_device_eval_batch_size=int(t.eval_batch_size),
        gradient_accumulation_steps=int(t.grad_accum),
        learning_rate=float(t.lr),
        num_train_epochs=float(t.epochs) if t.epochs is not None else 1.0,
        max_steps=int(t.max_steps) if t.max_steps is not None else -1,
        warmup_steps=warmup,
        lr_scheduler_type=t.scheduler,
        weight_decay=float(t.weight_decay),
        max_grad_norm=float(t.max_grad_norm) if trainer_clips else 0.0,
        adam_beta1=float(t.adam_beta1),
        adam_beta2=float(t.adam_beta2),
        adam_epsilon=float(t.adam_epsilon),
        logging_steps=int(t.logging_steps),
        logging_first_step=True,
        save_strategy="steps" if t.get("save_every") else "no",
        save_steps=int(t.save_every) if t.get("save_every") else 500,
        save_total_limit=int(t.get("save_keep") or 2),
        eval_strategy="no",
        **trackers.trainer_args(cfg, output_dir),  # train.report_to (bench/run/trackers.py)
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
        disable_tqdm=not t.progress,
        remove_unused_columns=False,
        # tasks may ask for length-grouped batches (little padding); they give a 'length' column
        train_sampling_strategy="group_by_length" if cfg.task.get("group_by_length") else "random",
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        torch_compile=bool(t.get("compile", False)),
        # set only with train.compile: a backend or mode given to TrainingArguments turns compilation on by itself
        **({"torch_compile_backend": t.get("compile_backend") or "inductor", "torch_compile_mode": t.get("compile_mode")}
           if t.get("compile") else {}),
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available() if use_cpu is None else bool(use_cpu),
    )
    trainer = checkpoint.CheckpointTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        data_collator=collator,
        callbacks=callbacks,
        optimizers=(optimizer, None) if optimizer is not None else (None, None),
    )
    trackers.attach(trainer, output_dir)
    return trainer


def compile_stats(reset: bool = False) -> dict:
    """torch.compile's work in this process since the last reset: forward frames compiled, recompiles among them
    (a frame compiled again after a guard failed: grad mode for evaluation, a changed shape, LoRA-Dash's switch),
    graph breaks, and compile seconds. ``reset=True`` clears dynamo's caches and these figures first."""
    import torch
    from torch._dynamo import utils as dynamo_utils

    if reset:
        torch._dynamo.reset()
        dynamo_utils.clear_compilation_metrics()
        dynamo_utils.counters.clear()
        return {}
    metrics = dynamo_utils.get_compilation_metrics()
    frames = [m for m in metrics if m.co_name is not None and m.has_guarded_code]
    return {
        "frames": len(frames),
        "recompiles": sum(1 for m in frames if m.cache_size),
        "graph_breaks": int(sum(dynamo_utils.counters["graph_break"].values())),
        "compile_s": round(sum(m.entire_frame_compile_time_s or 0.0 for m in metrics), 3),
    }
