"""Cost figures every run records: step time, throughput, peak memory, harness overhead."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time

import torch
from transformers import TrainerCallback


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def memory_figures() -> dict:
    out = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return out


def optimizer_state_bytes(optimizer) -> int:
    if optimizer is None:
        return 0
    total = 0
    seen = set()
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v) and id(v) not in seen:
                seen.add(id(v))
                total += v.numel() * v.element_size()
    return total


def process_start() -> float | None:
    """This process's start as a time.perf_counter() value (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, ticks since boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
        return time.perf_counter() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return None


_process_start_claimed = False


def startup_origin(run_start: float) -> float:
    """Where a run's startup is counted from: the process start for the first run of a process (imports are the
    harness's cost too), the run's own start for later runs of a sweep in the same process."""
    global _process_start_claimed
    if _process_start_claimed:
        return run_start
    _process_start_claimed = True
    start = process_start()
    return min(start, run_start) if start is not None else run_start


class CostCallback(TrainerCallback):
    """Times each optimizer step (forward + backward + optimizer) apart from everything else.

    Between on_step_begin and on_step_end the Trainer runs forward, backward, clipping and the
    optimizer; data loading, logging and evaluation fall outside, so wall - sum(steps) is the
    harness's own overhead.
    """

    def __init__(self, run_start: float):
        self.run_start = run_start  # when this run began (runner.run); startup_s counts from startup_origin()
        self.startup_from = startup_origin(run_start)
        self.step_times: list[float] = []
        self.loss_curve: list[tuple[int, float]] = []
        self.eval_seconds = 0.0
        self.first_step_at: float | None = None
        self.train_start: float | None = None
        self.train_end: float | None = None
        self._t = 0.0
        self.optimizer = None
        self.prior_wall = 0.0  # training wall time of earlier segments of a resumed run
        self.segments = 1

    # a checkpoint keeps the curve and times so far; a resumed run continues them (bench/run/checkpoint.py)
    def state_dict(self) -> dict:
        now = time.perf_counter()
        return {"step_times": list(self.step_times), "loss_curve": [list(x) for x in self.loss_curve],
                "eval_seconds": self.eval_seconds, "segments": self.segments,
                "train_wall_s": self.prior_wall + (now - self.train_start if self.train_start else 0.0)}

    def load_state_dict(self, d: dict) -> None:
        self.step_times = list(d["step_times"])
        self.loss_curve = [(int(s), float(v)) for s, v in d["loss_curve"]]
        self.eval_seconds = float(d["eval_seconds"])
        self.prior_wall = float(d["train_wall_s"])
        self.segments = int(d.get("segments", 1)) + 1

    def on_train_begin(self, args, state, control, **kw):
        self.train_start = time.perf_counter()
        self.optimizer = kw.get("optimizer")

    def on_step_begin(self, args, state, control, **kw):
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.step_times.append(time.perf_counter() - self._t)

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.loss_curve.append((int(state.global_step), float(logs["loss"])))

    def on_train_end(self, args, state, control, **kw):
        self.train_end = time.perf_counter()

    def summary(self, samples_per_step: int) -> dict:
        wall = self.prior_wall + (self.train_end or time.perf_counter()) - (self.train_start or self.run_start)
        steps = len(self.step_times)
        in_steps = sum(self.step_times)
        # skip the first steps (allocator / autotuning warm-up) for the median when there are enough
        timed = self.step_times[2:] if steps > 4 else self.step_times
        return {
            "steps": steps,
            "train_wall_s": round(wall, 3),
            "step_time_median_s": round(statistics.median(timed), 5) if timed else None,
            "step_time_mean_s": round(in_steps / steps, 5) if steps else None,
            "samples_per_s": round(steps * samples_per_step / wall, 3) if wall > 0 else None,
            "eval_in_train_s": round(self.eval_seconds, 3),
            "overhead_s": round(wall - in_steps - self.eval_seconds, 3),
            "overhead_frac": round((wall - in_steps - self.eval_seconds) / wall, 4) if wall > 0 else None,
            "startup_s": round(self.first_step_at - self.startup_from, 3) if self.first_step_at else None,
            "optimizer_state_bytes": optimizer_state_bytes(self.optimizer),
            **({"segments": self.segments} if self.segments > 1 else {}),
        }
