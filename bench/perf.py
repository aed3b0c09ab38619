"""`python -m bench perf`: the cost of every method side by side, in one command, on one model and batch.

    python -m bench perf model=minilm task=sst2 method=full,lora,ia3 [perf.steps=20 perf.warmup=3 ...]

For each method (plus the pseudo-method ``frozen``, the floor): median training-step time, peak memory,
optimizer-state bytes, trainable parameters, eval throughput, and the ratios of the step time to the frozen
floor and to full fine-tuning. One table on stdout, one JSON record (+ Markdown) under ``perf.results_dir``.

How it measures (docs/perf.md says how to read the numbers):
- One worker process per method (``python -m bench.perf --worker``), so each method's peak memory is its own
  process's. The worker builds the model through the task family (the same code path as ``bench run``),
  applies the method through the registry, and creates the optimizer the way a run does
  (``method.create_optimizer`` or the Trainer's own AdamW with its weight-decay groups).
- The batch is synthetic: batch_size x seq_len random token ids at a FIXED length (every method sees the same
  shapes; the step time of a transformer does not depend on which token ids it sees). Labels: random classes
  (seq_cls), random start/end positions (qa), labels = input_ids (causal_lm).
- A training step = forward + backward + gradient clipping (train.max_grad_norm, as the Trainer) + optimizer
  step + zero_grad, under train.precision autocast, with train.gradient_checkpointing when set.
- Alternation: the workers stay alive and the parent asks each in turn for a block of steps, R rounds, the
  order rotating every round; so load drift from other processes hits every method alike. The median is over
  all timed steps of a method. ``perf.keep_alive=false`` instead starts one short worker per method and round
  (memory of one model at a time; peak memory is then the max over its rounds).
- Method callbacks (e.g. LoRA-Dash's switch) are driven between steps with the Trainer's callback events and
  are not timed. ``perf.method_overrides`` moves phase switches into the warm-up, so the timed steps measure
  the phase a method spends most of its run in (LoRA-Dash: after the switch).
- The frozen floor: every weight frozen, the input-embedding output requiring grad, so backward runs through
  every layer without computing any weight gradient: the least a method that trains inside the network pays.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import resource
import selectors
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from bench.errors import BenchError

FLOOR = "frozen"

# The `perf:` group: merged over the composed root config (conf/config.yaml stays as it is).
PERF_DEFAULTS: dict[str, Any] = {
    "steps": 20,  # timed training steps per method (after warm-up)
    "warmup": 3,  # untimed training steps per worker first (allocator, autotuning, phase switches)
    "rounds": None,  # alternation rounds; the steps are split over them (null = one step per turn; 2 without keep_alive)
    "batch_size": 16,  # training batch (synthetic, fixed length)
    "seq_len": 128,  # tokens per example
    "eval_batch_size": None,  # null = train.eval_batch_size
    "eval_steps": 5,  # timed eval batches per method (forward under no_grad), alternated like the steps
    "threads": None,  # torch threads per worker (null = train.num_threads, else torch's default)
    "floor": True,  # add the frozen floor
    "keep_alive": True,  # true: one worker per method for the whole benchmark; false: one per method and round
    "isolate": True,  # false: every "worker" runs inside this process (tests / debugging; memory is then shared)
    "results_dir": "results/perf",  # JSON + Markdown record go here (null = do not write)
    "device": "auto",  # auto | cpu | cuda
    "timeout_s": 1800,  # longest a worker may take to answer one command
    "seed": None,  # null = the root seed
    # per-method overrides applied when composing that method (only methods that are listed get them)
    "method_overrides": {"lora_dash": {"t": 1}},  # LoRA-Dash switches in the warm-up: time the post-switch phase
}


# ================================================================================================
# configuration
# ================================================================================================
def parse_argv(argv: list[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(methods, perf overrides, method.* overrides, other Hydra overrides)."""
    methods: list[str] = []
    perf_ov, method_ov, rest = [], [], []
    for arg in argv:
        if arg in ("-m", "--multirun"):
            continue  # perf runs several methods anyway
        if "=" not in arg:
            raise BenchError(f"perf takes key=value overrides (got {arg!r}); e.g. python -m bench perf method=full,lora")
        key, value = arg.split("=", 1)
        bare = key.lstrip("+")
        if bare == "method":
            methods += [m.strip() for m in value.strip("[]").split(",") if m.strip()]
        elif bare.startswith("perf."):
            perf_ov.append(f"{bare}={value}")
        elif bare.startswith("method."):
            method_ov.append(f"{bare[len('method.'):]}={value}")
        else:
            rest.append(arg)
    return methods, perf_ov, method_ov, rest


def perf_options(perf_overrides: list[str]) -> DictConfig:
    base = OmegaConf.create({"perf": PERF_DEFAULTS})
    given = OmegaConf.from_dotlist(perf_overrides) if perf_overrides else OmegaConf.create({})
    unknown = [k for k in given.get("perf", {}) if k not in PERF_DEFAULTS]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, list(PERF_DEFAULTS), n=1)
            hints.append(f"perf.{k}" + (f" (did you mean perf.{close[0]}?)" if close else ""))
        raise BenchError(f"unknown perf option(s): {', '.join(hints)}. Options: "
                         + ", ".join(f"perf.{k}" for k in PERF_DEFAULTS))
    p = OmegaConf.merge(base, given).perf
    problems = []
    for key in ("steps", "batch_size", "seq_len", "eval_steps", "timeout_s"):
        if not (isinstance(p[key], int) and p[key] >= 1):
            problems.append(f"perf.{key} must be a positive integer (got {p[key]!r}); e.g. perf.{key}={PERF_DEFAULTS[key]}")
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


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    from bench.cli import CONF_DIR

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except HydraException as e:
        raise BenchError(str(e).splitlines()[0]) from e


def method_configs(methods: list[str], method_ov: list[str], rest: list[str], p: DictConfig) -> dict[str, dict]:
    """name -> the fully composed config (plain dict) for that method; `frozen` reuses the first one's."""
    from methods import available

    known = available()
    for m in methods:
        if m != FLOOR and m not in known:
            close = difflib.get_close_matches(m, known + [FLOOR], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise BenchError(f"Unknown method {m!r}.{hint} Valid: {', '.join(known)} (and the floor {FLOOR!r}).")
    given = OmegaConf.from_dotlist(method_ov) if method_ov else OmegaConf.create({})
    used: set[str] = set()
    out: dict[str, dict] = {}
    for m in [x for x in methods if x != FLOOR]:
        cfg = _compose([f"method={m}", *rest])
        OmegaConf.set_struct(cfg, False)
        preset = p.method_overrides.get(m) if p.method_overrides else None
        for key, value in (preset or {}).items():
            cfg.method[key] = value
        for key, value in given.items():  # method.<key>=v reaches every listed method that has <key>
            if key in cfg.method:
                cfg.method[key] = value
                used.add(str(key))
        container = OmegaConf.to_container(cfg, resolve=True)
        container.pop("hydra", None)
        out[m] = container
    unused = [k for k in given if k not in used]
    if unused:
        raise BenchError(f"no listed method has the option(s) {', '.join('method.' + str(k) for k in unused)}")
    if FLOOR in methods:
        base = _compose(rest)
        container = OmegaConf.to_container(base, resolve=True)
        container.pop("hydra", None)
        container["method"] = {"name": FLOOR}
        out[FLOOR] = container
    return {m: out[m] for m in methods}


# ================================================================================================
# the worker: one method, one model, kept in one process
# ================================================================================================
def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def apply_frozen_floor(model):
    """Freeze every weight; make the input-embedding output require grad, so backward reaches every layer."""
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings()

    def require_grad(module, inputs, output):
        output.requires_grad_(True)

    emb.register_forward_hook(require_grad)
    return model


def synthetic_batch(task_type: str, vocab_size: int, batch: int, seq_len: int, num_labels: Optional[int],
                    regression: bool, seed: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    low = 1000 if vocab_size > 4000 else min(5, vocab_size - 1)  # keep clear of the special tokens
    ids = torch.randint(low, vocab_size, (batch, seq_len), generator=gen)
    out = {"input_ids": ids, "attention_mask": torch.ones(batch, seq_len, dtype=torch.long)}
    if task_type == "seq_cls":
        if regression:
            out["labels"] = torch.rand(batch, generator=gen) * 5
        else:
            out["labels"] = torch.randint(0, int(num_labels or 2), (batch,), generator=gen)
    elif task_type == "qa":
        start = torch.randint(1, seq_len - 1, (batch,), generator=gen)
        out["start_positions"] = start
        out["end_positions"] = torch.clamp(start + torch.randint(0, 8, (batch,), generator=gen), max=seq_len - 1)
    elif task_type == "causal_lm":
        out["labels"] = ids.clone()
    else:
        raise BenchError(f"perf has no synthetic batch for task type {task_type!r}")
    return out


class Session:
    """One method's model, optimizer and batches; answers train / eval / report."""

    def __init__(self, cfg: dict, p: dict):
        t0 = time.perf_counter()
        self.started = t0
        import torch
        from transformers import TrainerControl, TrainerState, set_seed

        from bench.data import default_cache_dir
        from bench.models import head_modules
        from bench.params import count_parameters
        from bench.tasks import get_family
        from methods import MethodContext

        self.cfg = OmegaConf.create(cfg)
        self.p = p
        self.name = cfg["method"]["name"]
        t = self.cfg.train
        threads = p.get("threads") or t.get("num_threads")
        if threads:
            torch.set_num_threads(int(threads))
        seed = int(p.get("seed") if p.get("seed") is not None else self.cfg.seed)
        self.device = self._device(p.get("device", "auto"))
        self.precision = t.precision
        if self.precision == "fp16" and self.device.type != "cuda":
            raise BenchError("train.precision=fp16 needs a GPU; on CPU use train.precision=bf16 or fp32")
        set_seed(seed)

        family = get_family(self.cfg.task.family)(self.cfg, default_cache_dir(self.cfg.cache_dir))
        family.validate()
        tokenizer = family.load_tokenizer()
        model = family.build_model(tokenizer)
        self.task_type = family.task_type
        heads = head_modules(model)
        base_total = count_parameters(model)["total"]
        max_pos = getattr(model.config, "max_position_embeddings", None)
        if max_pos and int(p["seq_len"]) > int(max_pos):
            raise BenchError(f"perf.seq_len={p['seq_len']} exceeds the model's {max_pos} positions; "
                             f"e.g. perf.seq_len={min(128, int(max_pos))}")
        total_steps = int(p["warmup"]) + int(p["steps"])
        mcfg = OmegaConf.to_container(self.cfg.method, resolve=True)
        self.ctx = MethodContext(
            task_type=family.task_type,
            task_name=self.cfg.task.name,
            model_type=model.config.model_type,
            head_modules=heads,
            train_head=family.task_type != "causal_lm",
            total_steps=total_steps,
            seed=seed,
            cache_dir=str(default_cache_dir(self.cfg.cache_dir) / "methods"),
            num_labels=self.cfg.task.get("num_labels"),
        )
        set_seed(seed)
        self.method = None
        if self.name == FLOOR:
            model = apply_frozen_floor(model)
        else:
            from bench.runner import resolve_method

            self.method = resolve_method(self.cfg)
            model = self.method.apply(model, mcfg, self.ctx)
        if t.gradient_checkpointing:
            from bench.runner import _enable_gradient_checkpointing

            _enable_gradient_checkpointing(model)
        model.to(self.device)
        model.train()
        self.model = model
        self.mcfg = mcfg
        trainable_override = self.method.trainable_parameters(model, mcfg) if self.method else None
        self.params = count_parameters(model, heads, base_total, trainable_override)
        self.trainable = [q for q in model.parameters() if q.requires_grad]
        self.args = self._training_args()
        self.optimizer = None
        if self.method is not None:
            self.optimizer = self.method.create_optimizer(model, mcfg, self.ctx, OmegaConf.to_container(t, resolve=True))
            if self.optimizer is None and self.trainable:
                self.optimizer = self._trainer_adamw(model)
        self.scaler = None
        if self.precision == "fp16":
            self.scaler = torch.amp.GradScaler("cuda")
        self.callbacks = self.method.callbacks(model, mcfg, self.ctx) if self.method else []
        self.state, self.control = TrainerState(), TrainerControl()
        self.state.max_steps = total_steps
        self.callback_s = 0.0
        self._event("on_train_begin")

        vocab = int(model.config.vocab_size)
        regression = self.cfg.task.get("num_labels") == 1
        bs, sl = int(p["batch_size"]), int(p["seq_len"])
        ebs = int(p.get("eval_batch_size") or t.eval_batch_size)
        self.eval_batch_size = ebs
        to = lambda b: {k: v.to(self.device) for k, v in b.items()}  # noqa: E731
        self.batch = to(synthetic_batch(self.task_type, vocab, bs, sl, self.cfg.task.get("num_labels"), regression, seed))
        self.eval_batch = to(synthetic_batch(self.task_type, vocab, ebs, sl, self.cfg.task.get("num_labels"),
                                             regression, seed + 1))
        self.rss_after_build_mb = (_status_kib("VmRSS") or 0) / 1024
        self.peak_reset = _reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.build_s = time.perf_counter() - t0
        self.train_peak_kib = 0
        self.cuda_train_peak = 0
        self.steps_done = 0
        self.warmup_times: list[float] = []
        self.step_times: list[float] = []
        self.eval_times: list[float] = []
        self.eval_warm = False

    # --- pieces -----------------------------------------------------------------------------------
    @staticmethod
    def _device(choice: str):
        import torch

        if choice == "cuda" and not torch.cuda.is_available():
            raise BenchError("perf.device=cuda but torch sees no GPU here; use perf.device=auto or cpu")
        if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        return torch.device("cuda")

    def _training_args(self):
        import torch
        from transformers import TrainingArguments

        t = self.cfg.train
        return TrainingArguments(
            output_dir=tempfile.gettempdir(),
            learning_rate=float(t.lr),
            weight_decay=float(t.weight_decay),
            adam_beta1=float(t.adam_beta1),
            adam_beta2=float(t.adam_beta2),
            adam_epsilon=float(t.adam_epsilon),
            max_grad_norm=float(t.max_grad_norm),
            per_device_train_batch_size=int(self.p["batch_size"]),
            report_to="none",
            bf16=t.precision == "bf16",
            fp16=t.precision == "fp16",
            use_cpu=self.device.type != "cuda" or not torch.cuda.is_available(),
        )

    def _trainer_adamw(self, model):
        """The optimizer `Trainer.create_optimizer` would build: its class/kwargs and weight-decay groups."""
        from transformers import Trainer

        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        decay = set(Trainer.get_decay_parameter_names(None, model))
        named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
        groups = [
            {"params": [q for n, q in named if n in decay], "weight_decay": self.args.weight_decay},
            {"params": [q for n, q in named if n not in decay], "weight_decay": 0.0},
        ]
        return cls([g for g in groups if g["params"]], **kwargs)

    def _event(self, name: str) -> None:
        if not self.callbacks:
            return
        t0 = time.perf_counter()
        for cb in self.callbacks:
            getattr(cb, name)(self.args, self.state, self.control, model=self.model, optimizer=self.optimizer,
                              lr_scheduler=None, processing_class=None, train_dataloader=None)
        self.callback_s += time.perf_counter() - t0

    def _autocast(self):
        import contextlib

        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize()

    def step(self) -> tuple[float, float]:
        """One training step, timed: forward, backward, clipping, optimizer step, zero_grad. (wall s, CPU s)"""
        import torch

        self._event("on_step_begin")
        self._sync()
        c0 = time.process_time()
        t0 = time.perf_counter()
        with self._autocast():
            loss = self.model(**self.batch).loss
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.optimizer is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            clips_itself = getattr(self.optimizer, "handles_grad_clipping", False)  # ID3 in backward mode
            if self.args.max_grad_norm and self.args.max_grad_norm > 0 and not clips_itself:
                torch.nn.utils.clip_grad_norm_(self.trainable, self.args.max_grad_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        self.model.zero_grad(set_to_none=True)
        self._sync()
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
        self.steps_done += 1
        self.state.global_step = self.steps_done
        self._event("on_step_end")
        return dt, cpu

    # --- commands ---------------------------------------------------------------------------------
    def train(self, n: int, timed: bool = True) -> tuple[list[float], list[float]]:
        """n steps; (wall times, CPU times). The training peak memory is read after each timed call."""
        pairs = [self.step() for _ in range(int(n))]
        times, cpu = [w for w, _ in pairs], [c for _, c in pairs]
        (self.step_times if timed else self.warmup_times).extend(times)
        if timed:  # the training peak: read now, before any evaluation batch can raise it
            self.train_peak_kib = max(self.train_peak_kib, _status_kib("VmHWM") or 0)
            if self.device.type == "cuda":
                import torch

                self.cuda_train_peak = max(self.cuda_train_peak, torch.cuda.max_memory_allocated())
        return times, cpu

    def evaluate(self, n: int, timed: bool = True) -> list[float]:
        """n forward passes of the eval batch under no_grad (the first call runs one more, untimed)."""
        import torch

        self.model.eval()
        times = []
        with torch.no_grad():
            for _ in range(int(n) + (0 if self.eval_warm else 1)):
                self._sync()
                t0 = time.perf_counter()
                with self._autocast():
                    self.model(**{k: v for k, v in self.eval_batch.items() if k in ("input_ids", "attention_mask")})
                self._sync()
                times.append(time.perf_counter() - t0)
        if not self.eval_warm:
            times, self.eval_warm = times[1:], True
        self.model.train()
        if timed:
            self.eval_times.extend(times)
        return times

    def report(self) -> dict:
        import torch

        from bench.cost import optimizer_state_bytes, peak_rss_mb

        memory = {
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_after_build_mb": round(self.rss_after_build_mb, 1),
            "train_peak_rss_mb": round(self.train_peak_kib / 1024, 1) if self.peak_reset and self.train_peak_kib
            else None,
        }
        if self.device.type == "cuda":
            memory["cuda_max_allocated_mb"] = round(self.cuda_train_peak / 2**20, 1)
            memory["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        state = {}
        if self.method is not None:
            try:
                state = self.method.record_state(self.model, self.mcfg)
            except Exception as e:  # noqa: BLE001 - a record_state bug must not hide the timings
                state = {"error": f"{type(e).__name__}: {e}"}
        return {
            "params": self.params,
            "optimizer": type(self.optimizer).__name__ if self.optimizer is not None else None,
            "optimizer_state_bytes": optimizer_state_bytes(self.optimizer),
            "memory": memory,
            "build_s": round(self.build_s, 3),
            "callback_s": round(self.callback_s, 4),
            "threads": torch.get_num_threads(),
            "device": str(self.device),
            "eval_batch_size": self.eval_batch_size,
            "method_state": state,
        }


def worker_main() -> None:
    """`python -m bench.perf --worker`: JSON lines in on stdin, JSON lines out on the original stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj, default=str) + "\n")
        proto.flush()

    session = None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            reply = handle(session, msg)
            if msg["cmd"] == "init":
                session, reply = reply, {"ok": True, "build_s": round(reply.build_s, 3)}
            send({"ok": True, **reply})
        except BaseException as e:  # noqa: BLE001 - the parent records the failure and goes on
            import traceback

            send({"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)})
        if msg["cmd"] == "exit":
            break


def handle(session: Optional[Session], msg: dict):
    cmd = msg["cmd"]
    if cmd == "init":
        return Session(msg["cfg"], msg["perf"])
    if cmd == "exit":
        return {}
    if session is None:
        raise RuntimeError("no session")
    if cmd == "train":
        times, cpu = session.train(msg["n"], msg.get("timed", True))
        return {"times": times, "cpu_times": cpu}
    if cmd == "eval":
        return {"times": session.evaluate(msg["n"], msg.get("timed", True))}
    if cmd == "report":
        return session.report()
    raise ValueError(f"unknown command {cmd!r}")


# ================================================================================================
# the parent: workers, alternation, aggregation
# ================================================================================================
class WorkerFailed(RuntimeError):
    pass


class SubprocessWorker:
    def __init__(self, name: str, timeout_s: float, log_dir: Path):
        self.name = name
        self.timeout_s = timeout_s
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.perf", "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True, bufsize=1, cwd=root, env=env,
        )
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)

    def send(self, msg: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise WorkerFailed(f"worker exited ({e}); {self._tail()}") from e

    def recv(self) -> dict:
        if not self.sel.select(timeout=self.timeout_s):
            self.close(kill=True)
            raise WorkerFailed(f"no answer within perf.timeout_s={self.timeout_s} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise WorkerFailed(f"worker exited with code {self.proc.returncode}; {self._tail()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise WorkerFailed(reply.get("error", "unknown error") + "\n" + reply.get("traceback", ""))
        return reply

    def call(self, msg: dict) -> dict:
        self.send(msg)
        return self.recv()

    def _tail(self) -> str:
        try:
            self._log.flush()
            text = self.log_path.read_text()[-1500:]
        except OSError:
            text = ""
        return f"its log ends with:\n{text}" if text else "its log is empty"

    def close(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            if not kill:
                try:
                    self.call({"cmd": "exit"})
                except Exception:  # noqa: BLE001
                    pass
            try:
                self.proc.wait(timeout=5 if not kill else 0.1)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.sel.close()
        self._log.close()


class InProcessWorker:
    """perf.isolate=false: the same commands in this process (for tests; memory figures are then shared)."""

    def __init__(self, name: str, *_):
        self.name = name
        self.session: Optional[Session] = None
        self._pending: Optional[dict] = None

    def send(self, msg: dict) -> None:
        self._pending = msg

    def recv(self) -> dict:
        msg, self._pending = self._pending, None
        return self.call(msg)

    def call(self, msg: dict) -> dict:
        try:
            reply = handle(self.session, msg)
        except Exception as e:  # noqa: BLE001 - as a subprocess worker's failure: recorded, the others go on
            raise WorkerFailed(f"{type(e).__name__}: {e}") from e
        if msg["cmd"] == "init":
            self.session = reply
            return {"ok": True, "build_s": round(reply.build_s, 3)}
        return {"ok": True, **reply}

    def close(self, kill: bool = False) -> None:
        self.session = None


def n_rounds(p: DictConfig) -> int:
    if p.rounds:
        return int(p.rounds)
    return int(p.steps) if p.keep_alive else min(2, int(p.steps))


def split_steps(steps: int, rounds: int) -> list[int]:
    """steps spread over rounds as evenly as possible (earlier rounds take the remainder)."""
    base, extra = divmod(steps, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


def rotated(names: list[str], shift: int) -> list[str]:
    k = shift % len(names) if names else 0
    return names[k:] + names[:k]


def run_benchmark(configs: dict[str, dict], p: DictConfig, log=None) -> dict[str, dict]:
    """Drive the workers; returns name -> raw results (times, report, status)."""
    log = log or (lambda msg: print(msg, flush=True))
    pd = OmegaConf.to_container(p, resolve=True)
    names = list(configs)
    rounds = n_rounds(p)
    train_blocks = split_steps(int(p.steps), rounds)
    eval_rounds = min(int(p.eval_steps), rounds)
    eval_blocks = split_steps(int(p.eval_steps), eval_rounds)
    results: dict[str, dict] = {n: {"status": "ok", "step_times": [], "step_cpu_times": [], "eval_times": [],
                                   "warmup_times": [], "reports": []} for n in names}
    log_dir = Path(tempfile.mkdtemp(prefix="bench-perf-"))
    factory = SubprocessWorker if p.isolate else InProcessWorker

    def fail(name: str, e: BaseException, worker=None) -> None:
        results[name]["status"] = "failed"
        results[name]["error"] = str(e).strip()
        log(f"[perf] {name}: FAILED: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
        if worker is not None:
            worker.close(kill=True)

    def start(names_now: list[str]) -> dict:
        workers = {}
        for n in names_now:  # all start at once (startup is not timed)
            if results[n]["status"] == "ok":
                workers[n] = factory(n, float(p.timeout_s), log_dir)
        # the first builds alone, so one-time caches (converted weights, tokenizer files) are written once;
        # the others then build side by side
        order = list(workers)
        for batch in (order[:1], order[1:]):
            for n in batch:
                try:
                    workers[n].send({"cmd": "init", "cfg": configs[n], "perf": pd})
                except WorkerFailed as e:
                    fail(n, e, workers.pop(n))
            for n in batch:
                if n not in workers:
                    continue
                try:
                    results[n]["build_s"] = workers[n].recv()["build_s"]
                    if p.keep_alive:
                        log(f"[perf] {n}: built in {results[n]['build_s']:.1f} s")
                except WorkerFailed as e:
                    fail(n, e, workers.pop(n))
        for n, w in list(workers.items()):
            try:
                if p.warmup:
                    results[n]["warmup_times"] += w.call({"cmd": "train", "n": int(p.warmup), "timed": False})["times"]
            except WorkerFailed as e:
                fail(n, e, w)
                workers.pop(n)
        return workers

    def finish(workers: dict) -> None:
        for n, w in workers.items():
            try:
                results[n]["reports"].append(w.call({"cmd": "report"}))
            except WorkerFailed as e:
                fail(n, e, w)
                continue
            w.close()

    def turn(workers: dict, n: str, cmd: str, k: int) -> None:
        if n not in workers or k <= 0:
            return
        try:
            reply = workers[n].call({"cmd": cmd, "n": k})
            results[n]["step_times" if cmd == "train" else "eval_times"] += reply["times"]
            results[n]["step_cpu_times"] += reply.get("cpu_times", [])
        except WorkerFailed as e:
            fail(n, e, workers.pop(n))

    try:
        if p.keep_alive:
            log(f"[perf] starting {len(names)} workers: {', '.join(names)}")
            workers = start(names)
            every = max(1, math.ceil(rounds / 10))
            for r, k in enumerate(train_blocks):
                for n in rotated(names, r):
                    turn(workers, n, "train", k)
                if (r + 1) % every == 0 or r + 1 == rounds:
                    log(f"[perf] round {r + 1}/{rounds}: " + ", ".join(
                        f"{n} {statistics.median(results[n]['step_times']):.3f}s" for n in names
                        if results[n]["step_times"]))
            for r, k in enumerate(eval_blocks):
                for n in rotated(names, r):
                    turn(workers, n, "eval", k)
            finish(workers)
        else:
            for r in range(rounds):
                for n in rotated(names, r):
                    workers = start([n])
                    turn(workers, n, "train", train_blocks[r])
                    turn(workers, n, "eval", eval_blocks[r] if r < eval_rounds else 0)
                    finish(workers)
                log(f"[perf] round {r + 1}/{rounds} done")
    finally:
        keep_logs = p.isolate and any(r["status"] != "ok" for r in results.values())
        for n in names:
            results[n]["log"] = str(log_dir / f"{n}.log") if keep_logs else None
        if not keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
    return results


# ================================================================================================
# aggregation and output
# ================================================================================================
def _median(xs: list[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def _quantile(xs: list[float], q: float) -> Optional[float]:
    if not xs:
        return None
    s = sorted(xs)
    i = (len(s) - 1) * q
    lo, hi = math.floor(i), math.ceil(i)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


def summarize(raw: dict[str, dict], p: DictConfig) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, r in raw.items():
        rep = _merge_reports(r["reports"])
        med = _median(r["step_times"])
        # CPU time of the worker process per step: robust to other processes' load (on a GPU it is host time only)
        on_gpu = str(rep.get("device", "cpu")).startswith("cuda")
        cmed = None if on_gpu else _median(r["step_cpu_times"])
        emed = _median(r["eval_times"])
        row = {
            "status": r["status"] if rep or r["status"] != "ok" else "failed",
            "step_time_median_s": round(med, 5) if med else None,
            "step_time_p25_s": round(_quantile(r["step_times"], 0.25), 5) if r["step_times"] else None,
            "step_time_p75_s": round(_quantile(r["step_times"], 0.75), 5) if r["step_times"] else None,
            "timed_steps": len(r["step_times"]),
            "step_cpu_median_s": round(cmed, 5) if cmed else None,
            "train_samples_per_s": round(int(p.batch_size) / med, 2) if med else None,
            "eval_batch_time_median_s": round(emed, 5) if emed else None,
            "timed_eval_batches": len(r["eval_times"]),
            "step_times_s": [round(x, 5) for x in r["step_times"]],
            "step_cpu_times_s": [round(x, 5) for x in r["step_cpu_times"]],
            "warmup_times_s": [round(x, 5) for x in r["warmup_times"]],
            "eval_times_s": [round(x, 5) for x in r["eval_times"]],
            "build_s": r.get("build_s"),
            "worker_log": r.get("log"),
        }
        if rep:
            row.update(rep)
            if emed:
                row["eval_examples_per_s"] = round(rep["eval_batch_size"] / emed, 2)
        if r.get("error"):
            row["error"] = r["error"]
        out[name] = row
    for ref, suffix in ((FLOOR, "frozen"), ("full", "full")):
        for time_key, ratio_key in (("step_time_median_s", f"ratio_to_{suffix}"),
                                    ("step_cpu_median_s", f"cpu_ratio_to_{suffix}")):
            ref_t = out.get(ref, {}).get(time_key)
            for row in out.values():
                t = row.get(time_key)
                row[ratio_key] = round(t / ref_t, 3) if (t and ref_t) else None
    return out


def _merge_reports(reports: list[dict]) -> dict:
    """One method's reports (one per worker: several when perf.keep_alive=false): peaks are the max."""
    if not reports:
        return {}
    out = {k: v for k, v in reports[-1].items() if k != "ok"}
    mem: dict = {}
    for rep in reports:
        for k, v in rep["memory"].items():
            if v is not None:
                mem[k] = max(mem.get(k, v), v)
            else:
                mem.setdefault(k, None)
    out["memory"] = mem
    out["optimizer_state_bytes"] = max(rep["optimizer_state_bytes"] for rep in reports)
    return out


def _fmt(v, spec: str = "", none: str = "-") -> str:
    if v is None:
        return none
    return format(v, spec)


def table_rows(summary: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    cuda = any("cuda_max_allocated_mb" in (r.get("memory") or {}) for r in summary.values())
    cpu = any(r.get("step_cpu_median_s") for r in summary.values())
    header = ["method", "trainable", "opt state MB", "step s (median)", "p25-p75", "x frozen", "x full"]
    if cpu:
        header += ["CPU s/step", "x frozen (CPU)", "x full (CPU)"]
    header += ["train ex/s", "eval ex/s", "peak RSS MB", "train peak RSS MB"]
    if cuda:
        header.append("CUDA max alloc MB")
    rows = []
    for name, r in summary.items():
        if r["status"] != "ok":
            rows.append([name, "FAILED: " + (r.get("error") or "").splitlines()[0][:90]] + [""] * (len(header) - 2))
            continue
        mem = r.get("memory") or {}
        p = r.get("params") or {}
        row = [
            name,
            _fmt(p.get("trainable"), ","),
            _fmt(r["optimizer_state_bytes"] / 2**20 if r.get("optimizer_state_bytes") is not None else None, ".2f"),
            _fmt(r.get("step_time_median_s"), ".4f"),
            f"{_fmt(r.get('step_time_p25_s'), '.4f')}-{_fmt(r.get('step_time_p75_s'), '.4f')}",
            _fmt(r.get("ratio_to_frozen"), ".3f"),
            _fmt(r.get("ratio_to_full"), ".3f"),
        ]
        if cpu:
            row += [_fmt(r.get("step_cpu_median_s"), ".4f"), _fmt(r.get("cpu_ratio_to_frozen"), ".3f"),
                    _fmt(r.get("cpu_ratio_to_full"), ".3f")]
        row += [
            _fmt(r.get("train_samples_per_s"), ".1f"),
            _fmt(r.get("eval_examples_per_s"), ".1f"),
            _fmt(mem.get("peak_rss_mb"), ".0f"),
            _fmt(mem.get("train_peak_rss_mb"), ".0f"),
        ]
        if cuda:
            row.append(_fmt(mem.get("cuda_max_allocated_mb"), ".0f"))
        rows.append(row)
    return header, rows


def markdown_table(summary: dict[str, dict]) -> str:
    header, rows = table_rows(summary)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(summary: dict[str, dict]) -> str:
    header, rows = table_rows(summary)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def main(argv: list[str]) -> dict:
    from bench import records

    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        print("options (perf.<key>=value):")
        for k, v in PERF_DEFAULTS.items():
            print(f"  perf.{k}={v}")
        return {}
    try:
        methods, perf_ov, method_ov, rest = parse_argv(argv)
        p = perf_options(perf_ov)
        if not methods:
            from methods import available

            methods = available()
        methods = list(dict.fromkeys(methods))
        if p.floor and FLOOR not in methods:
            methods = [FLOOR, *methods]
        configs = method_configs(methods, method_ov, rest, p)
        first = next(iter(configs.values()))
        if first["train"]["precision"] not in ("fp32", "bf16", "fp16"):
            raise BenchError(f"train.precision must be fp32 | bf16 | fp16 (got {first['train']['precision']!r})")
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)

    t0 = time.perf_counter()
    print(f"[perf] model={first['model']['name']} task={first['task']['name']} batch {p.batch_size} x {p.seq_len}, "
          f"{p.warmup} warm-up + {p.steps} timed steps in {n_rounds(p)} rounds, precision "
          f"{first['train']['precision']}, gradient checkpointing {first['train']['gradient_checkpointing']}")
    raw = run_benchmark(configs, p)
    summary = summarize(raw, p)
    record = {
        "schema": 1,
        "kind": "perf",
        "model": first["model"]["name"],
        "task": first["task"]["name"],
        "methods": list(configs),
        "perf": OmegaConf.to_container(p, resolve=True),
        "batch_size": int(p.batch_size),
        "seq_len": int(p.seq_len),
        "eval_batch_size": int(p.eval_batch_size or first["train"]["eval_batch_size"]),
        "precision": first["train"]["precision"],
        "gradient_checkpointing": bool(first["train"]["gradient_checkpointing"]),
        "command": "python -m bench perf " + " ".join(shlex.quote(a) for a in argv),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - t0, 2),
        "git": records.git_info(),
        "versions": records.package_versions(),
        "device": records.device_info(),
        "method_configs": {n: c["method"] for n, c in configs.items()},
        "results": summary,
    }
    print(text_table(summary))
    if p.results_dir:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(p.results_dir) / f"perf__{record['model']}__{record['task']}__{stamp}.json"
        records.write_json_atomic(path, record)
        path.with_suffix(".md").write_text(
            f"# bench perf: {record['model']} / {record['task']}, batch {p.batch_size} x {p.seq_len}\n\n"
            f"`{record['command']}` ({record['created_at']})\n\n{markdown_table(summary)}\n"
        )
        record["path"] = str(path)
        print(f"[perf] record: {path}")
    return record


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        worker_main()
    else:
        main(sys.argv[1:])
