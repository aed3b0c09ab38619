"""One method's model, Trainer and batches, kept in one process: the steps it times are the Trainer's own.

The model, its head and the method come from the same code as `bench run`: its setup (`bench.run.runner.setup`: the
config checked, the method and the task family resolved; the family builds the model, `RunSetup.apply_method`
applies the method), and `bench.run.training.make_trainer` builds the run's Trainer with the method's optimizer or the
Trainer's AdamW. `Trainer.train()` runs in a thread of this process; two callbacks
around the method's own hold its loop before each step until the session grants steps, and clock each step from
the Trainer's `on_step_begin` to its `on_step_end`: `training_step` (forward + backward under the run's autocast),
clipping, the optimizer step, the scheduler step and `zero_grad`, exactly as a run trains. The method's callbacks
run between steps, as in a run, but outside the clock.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf
from transformers import TrainerCallback

from bench.errors import BenchError
from bench.perf.options import FLOOR
from bench.run.training import compile_stats
from methods.base import Method


class FrozenFloor(Method):
    """The floor (not registered): every weight frozen, the input-embedding output requiring grad, so backward
    reaches every layer but computes no weight gradient. Its Trainer's AdamW holds no parameter.

    The output requires grad by adding a zero scalar that does (made on the training device, outside the model):
    torch.compile traces that without a graph break, which `output.requires_grad_()` in a hook is not."""

    name = FLOOR

    def __init__(self, device: torch.device = torch.device("cpu")):
        self.anchor = torch.zeros((), device=device, requires_grad=True)

    def apply(self, model, cfg, ctx):
        for p in model.parameters():
            p.requires_grad_(False)
        model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output + self.anchor)
        return model


def synthetic_batch(task_type: str, vocab_size: int, batch: int, seq_len: int, num_labels: Optional[int],
                    regression: bool, seed: int) -> dict:
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


class Rows(torch.utils.data.Dataset):
    """n training examples: the rows of one synthetic batch over and over (every step sees the same shapes)."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n
        self.size = len(batch["input_ids"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:  # iteration stops here (the length-grouped sampler iterates the dataset)
            raise IndexError(i)
        return {k: v[i % self.size] for k, v in self.batch.items()}


def status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Closed(Exception):
    """Raised inside the Trainer's loop to end it when the session closes."""


class Pacer:
    """Grants the Trainer's loop steps one block at a time and clocks them (wall and process CPU time)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cond = threading.Condition()
        self.granted = 0
        self.parked = False
        self.finished = False
        self.closed = False
        self.error: Optional[BaseException] = None
        self.sink: list[tuple[float, float]] = []
        self.callback_s = 0.0
        self._mark = self._t0 = self._c0 = 0.0
        pacer = self

        class First(TrainerCallback):  # before the method's callbacks
            def on_train_begin(self, args, state, control, **kw):
                pacer._mark = time.perf_counter()

            def on_step_begin(self, args, state, control, **kw):
                pacer._await_grant()
                pacer._mark = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                pacer._stop_clock()
                pacer._mark = time.perf_counter()

        class Last(TrainerCallback):  # after them
            def on_train_begin(self, args, state, control, **kw):
                pacer.callback_s += time.perf_counter() - pacer._mark

            def on_step_begin(self, args, state, control, **kw):
                pacer.callback_s += time.perf_counter() - pacer._mark
                pacer._start_clock()

            def on_step_end(self, args, state, control, **kw):
                pacer.callback_s += time.perf_counter() - pacer._mark

        self.first, self.last = First(), Last()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _start_clock(self) -> None:
        self._sync()
        self._c0, self._t0 = time.process_time(), time.perf_counter()

    def _stop_clock(self) -> None:
        self._sync()
        self.sink.append((time.perf_counter() - self._t0, time.process_time() - self._c0))

    def _await_grant(self) -> None:
        with self.cond:
            while self.granted == 0 and not self.closed:
                self.parked = True
                self.cond.notify_all()
                self.cond.wait()
            self.parked = False
            if self.closed:
                raise _Closed()
            self.granted -= 1

    def run(self, trainer) -> None:
        """The thread's body: the Trainer's own loop."""
        try:
            trainer.train()
        except _Closed:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the session's caller
            self.error = e
        finally:
            with self.cond:
                self.finished = True
                self.cond.notify_all()

    def wait_parked(self) -> None:
        with self.cond:
            self.cond.wait_for(lambda: (self.parked and self.granted == 0) or self.finished)
        if self.error is not None:
            raise self.error

    def steps(self, n: int) -> list[tuple[float, float]]:
        """Let the loop run n steps; their (wall s, CPU s), once it waits before the next one again."""
        self.sink = []
        with self.cond:
            if self.finished:
                raise RuntimeError("the Trainer's loop has ended; no more steps")
            self.granted += n
            self.cond.notify_all()
        self.wait_parked()
        if len(self.sink) != n:
            raise RuntimeError(f"the Trainer's loop ended after {len(self.sink)} of {n} steps")
        return self.sink

    def close(self, thread: threading.Thread) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        thread.join(timeout=60)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise BenchError("perf.device=cuda but torch sees no GPU here; use perf.device=auto or cpu")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


class Session:
    """One method's model, Trainer and batches; answers train / eval / report."""

    def __init__(self, cfg: dict, p: dict):
        t0 = time.perf_counter()
        from transformers import default_data_collator, set_seed

        from bench.run import training
        from bench.run.runner import plain, setup

        self.cfg = OmegaConf.create(cfg)
        self.p = p
        self.name = cfg["method"]["name"]
        t = self.cfg.train
        threads = p.get("threads") or t.get("num_threads")
        if threads:
            torch.set_num_threads(int(threads))
        seed = int(p.get("seed") if p.get("seed") is not None else self.cfg.seed)
        self.device = pick_device(p.get("device", "auto"))
        self.precision = t.precision
        if self.precision == "fp16" and self.device.type != "cuda":
            raise BenchError("train.precision=fp16 needs a GPU; on CPU use train.precision=bf16 or fp32")
        self.compiled = bool(t.get("compile", False))
        set_seed(seed)

        # the run's setup (the config is already settled by bench.perf.options; this checks it and resolves the
        # method and the task family), then the run's model and method application
        s = setup(self.cfg, device=self.device.type, choose_lr=False,
                  method=FrozenFloor(self.device) if self.name == FLOOR else None)
        model = s.build_model(s.family.load_tokenizer())
        self.task_type = s.task_type
        max_pos = getattr(model.config, "max_position_embeddings", None)
        if max_pos and int(p["seq_len"]) > int(max_pos):
            raise BenchError(f"perf.seq_len={p['seq_len']} exceeds the model's {max_pos} positions; "
                             f"e.g. perf.seq_len={min(128, int(max_pos))}")
        total_steps = int(p["warmup"]) + int(p["steps"])
        self.method = s.method
        applied = s.apply_method(model, total_steps, seed=seed)
        self.model, self.ctx, self.mcfg, self.params = applied.model, applied.ctx, applied.mcfg, applied.params
        self.trainable = [q for q in self.model.parameters() if q.requires_grad]
        callbacks = self.method.callbacks(self.model, self.mcfg, self.ctx)
        optimizer = self.method.create_optimizer(self.model, self.mcfg, self.ctx, plain(t))

        vocab = int(model.config.vocab_size)
        labels = self.cfg.task.get("num_labels")
        bs, sl = int(p["batch_size"]), int(p["seq_len"])
        self.eval_batch_size = int(p.get("eval_batch_size") or t.eval_batch_size)
        batch = synthetic_batch(self.task_type, vocab, bs, sl, labels, labels == 1, seed)
        self.eval_batch = {k: v.to(self.device) for k, v in synthetic_batch(
            self.task_type, vocab, self.eval_batch_size, sl, labels, labels == 1, seed + 1).items()
            if k in ("input_ids", "attention_mask")}
        # the run's Trainer, on perf's batch for perf's number of steps; each step one optimizer step; no lr warm-up
        # (perf's few steps would all fall into it, near lr 0: LoRA's B would stay 0 before LoRA-Dash's switch)
        run_cfg = OmegaConf.merge(self.cfg, {"seed": seed, "train": {
            "batch_size": bs, "eval_batch_size": self.eval_batch_size, "grad_accum": 1, "max_steps": total_steps,
            "warmup_steps": 0, "warmup_ratio": 0.0, "save_every": None, "progress": False, "report_to": "none"}})
        self.pacer = Pacer(self.device)
        self.trainer = training.make_trainer(
            run_cfg, self.model, Rows(batch, bs * total_steps), default_data_collator,
            [self.pacer.first, *callbacks, self.pacer.last], optimizer,
            Path(tempfile.gettempdir()) / "bench-perf-trainer", use_cpu=self.device.type == "cpu")
        self._thread = threading.Thread(target=self.pacer.run, args=(self.trainer,), daemon=True,
                                        name=f"perf-{self.name}")
        self.compile_at_start = compile_stats() if self.compiled else None
        self._thread.start()
        self.pacer.wait_parked()  # set up, first batch in hand, waiting before step 1

        self.rss_after_build_mb = (status_kib("VmRSS") or 0) / 1024
        self.peak_reset = reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.build_s = time.perf_counter() - t0
        self.train_peak_kib = 0
        self.cuda_train_peak = 0
        self.warmup_times: list[float] = []
        self.step_times: list[float] = []
        self.eval_times: list[float] = []
        self.eval_warm = False
        self.compile_in_timed = {"frames": 0, "compile_s": 0.0}

    @property
    def optimizer(self):
        """The optimizer the Trainer steps (unwrapped from accelerate's); None when it holds no parameter."""
        opt = getattr(self.trainer.optimizer, "optimizer", self.trainer.optimizer)
        if opt is None or not any(g["params"] for g in opt.param_groups):
            return None
        return opt

    # --- commands ---------------------------------------------------------------------------------
    def train(self, n: int, timed: bool = True) -> tuple[list[float], list[float]]:
        """n of the Trainer's steps; (wall times, CPU times). The training peak memory is read after each timed call."""
        before = compile_stats() if timed and self.compiled else None
        pairs = self.pacer.steps(int(n))
        if before is not None:  # compilation inside timed steps (a recompile there would inflate them)
            after = compile_stats()
            self.compile_in_timed["frames"] += after["frames"] - before["frames"]
            self.compile_in_timed["compile_s"] += after["compile_s"] - before["compile_s"]
        times, cpu = [w for w, _ in pairs], [c for _, c in pairs]
        (self.step_times if timed else self.warmup_times).extend(times)
        if timed:  # the training peak: read now, before any evaluation batch can raise it
            self.train_peak_kib = max(self.train_peak_kib, status_kib("VmHWM") or 0)
            if self.device.type == "cuda":
                self.cuda_train_peak = max(self.cuda_train_peak, torch.cuda.max_memory_allocated())
        return times, cpu

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def evaluate(self, n: int, timed: bool = True) -> list[float]:
        """n forward passes of the eval batch under no_grad, through the module the Trainer trains (compiled with
        train.compile); the first call runs one more, untimed."""
        module = self.trainer.model_wrapped
        self.model.eval()
        times = []
        with torch.no_grad():
            for _ in range(int(n) + (0 if self.eval_warm else 1)):
                self.pacer._sync()
                t0 = time.perf_counter()
                with self._autocast():
                    module(**self.eval_batch)
                self.pacer._sync()
                times.append(time.perf_counter() - t0)
        if not self.eval_warm:
            times, self.eval_warm = times[1:], True
        self.model.train()
        if timed:
            self.eval_times.extend(times)
        return times

    def report(self) -> dict:
        from bench.run.cost import optimizer_state_bytes, peak_rss_mb

        memory = {
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_after_build_mb": round(self.rss_after_build_mb, 1),
            "train_peak_rss_mb": round(self.train_peak_kib / 1024, 1) if self.peak_reset and self.train_peak_kib
            else None,
        }
        if self.device.type == "cuda":
            memory["cuda_max_allocated_mb"] = round(self.cuda_train_peak / 2**20, 1)
            memory["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        try:
            state = self.method.record_state(self.model, self.mcfg)
        except Exception as e:  # noqa: BLE001 - a record_state bug must not hide the timings
            state = {"error": f"{type(e).__name__}: {e}"}
        out = {
            "params": self.params,
            "optimizer": type(self.optimizer).__name__ if self.optimizer is not None else None,
            "optimizer_state_bytes": optimizer_state_bytes(self.optimizer),
            "memory": memory,
            "build_s": round(self.build_s, 3),
            "callback_s": round(self.pacer.callback_s, 4),
            "threads": torch.get_num_threads(),
            "device": str(self.device),
            "eval_batch_size": self.eval_batch_size,
            "method_state": state,
            "compiled": self.compiled,
        }
        if self.compiled:  # this session's compilation (the figures of bench.run.training.compile_stats, as
                           # differences)
            now = compile_stats()
            out["compile"] = {**{k: round(now[k] - self.compile_at_start[k], 3) for k in now},
                              "frames_in_timed_steps": self.compile_in_timed["frames"],
                              "compile_s_in_timed_steps": round(self.compile_in_timed["compile_s"], 3)}
        return out

    def close(self) -> None:
        self.pacer.close(self._thread)
