"""Figures from the workers' raw times (numpy) and the table (pandas): one row per method."""

from __future__ import annotations

from typing import Optional

import numpy as np
from omegaconf import DictConfig

from bench.perf.options import FLOOR


def _median(xs: list[float]) -> Optional[float]:
    return float(np.median(xs)) if xs else None


def _quantile(xs: list[float], q: float) -> Optional[float]:
    return float(np.quantile(xs, q)) if xs else None  # linear interpolation between order statistics


def _r(x: Optional[float], digits: int = 5) -> Optional[float]:
    return round(x, digits) if x is not None else None


def summarize(raw: dict[str, dict], p: DictConfig) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, r in raw.items():
        rep = merge_reports(r["reports"])
        med = _median(r["step_times"])
        # CPU time of the worker process per step: robust to other processes' load (on a GPU it is host time only)
        on_gpu = str(rep.get("device", "cpu")).startswith("cuda")
        cmed = None if on_gpu else _median(r["step_cpu_times"])
        emed = _median(r["eval_times"])
        warm = r["warmup_times"]
        row = {
            "status": r["status"] if rep or r["status"] != "ok" else "failed",
            "step_time_median_s": _r(med) or None,
            "step_time_p25_s": _r(_quantile(r["step_times"], 0.25)),
            "step_time_p75_s": _r(_quantile(r["step_times"], 0.75)),
            "timed_steps": len(r["step_times"]),
            "step_cpu_median_s": _r(cmed) or None,
            "train_samples_per_s": round(int(p.batch_size) / med, 2) if med else None,
            "eval_batch_time_median_s": _r(emed) or None,
            "timed_eval_batches": len(r["eval_times"]),
            "step_times_s": [round(x, 5) for x in r["step_times"]],
            "step_cpu_times_s": [round(x, 5) for x in r["step_cpu_times"]],
            "warmup_times_s": [round(x, 5) for x in warm],
            "eval_times_s": [round(x, 5) for x in r["eval_times"]],
            # the first step of a worker (compilation with train.compile, allocator and autotuning warm-up) and
            # what the whole warm-up took beyond as many steady steps: reported apart from the step time
            "first_step_s": _r(warm[0] if warm else (r["step_times"][0] if r["step_times"] else None), 3),
            "warmup_excess_s": _r(float(np.sum(warm) - len(warm) * med), 3) if (warm and med) else None,
            "build_s": r.get("build_s"),
            "worker_log": r.get("log"),
        }
        if rep:
            row.update(rep)
            if emed:
                row["eval_examples_per_s"] = round(rep["eval_batch_size"] / emed, 2)
            if rep.get("compile"):
                row["compile_s"] = rep["compile"]["compile_s"]
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


def merge_reports(reports: list[dict]) -> dict:
    """One method's reports (one per worker: several when perf.keep_alive=false): peaks are the max, compile
    figures the sum (each short worker compiles again)."""
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
    if all(rep.get("compile") for rep in reports):
        out["compile"] = {k: round(sum(rep["compile"][k] for rep in reports), 3) for k in reports[-1]["compile"]}
    return out


def frame(summary: dict[str, dict]):
    """The table as a pandas DataFrame of display strings (one row per method; a failed one says why)."""
    import pandas as pd

    cuda = any("cuda_max_allocated_mb" in (r.get("memory") or {}) for r in summary.values())
    cpu = any(r.get("step_cpu_median_s") for r in summary.values())
    compiled = any(r.get("compile_s") is not None for r in summary.values())

    def fmt(v, spec: str = "") -> str:
        return "-" if v is None else format(v, spec)

    rows = []
    for name, r in summary.items():
        if r["status"] != "ok":
            rows.append({"method": name, "trainable": "FAILED: " + (r.get("error") or "").splitlines()[0][:90]})
            continue
        mem, params = r.get("memory") or {}, r.get("params") or {}
        opt = r.get("optimizer_state_bytes")
        row = {
            "method": name,
            "trainable": fmt(params.get("trainable"), ","),
            "opt state MB": fmt(opt / 2**20 if opt is not None else None, ".2f"),
            "step s (median)": fmt(r.get("step_time_median_s"), ".4f"),
            "p25-p75": f"{fmt(r.get('step_time_p25_s'), '.4f')}-{fmt(r.get('step_time_p75_s'), '.4f')}",
            "x frozen": fmt(r.get("ratio_to_frozen"), ".3f"),
            "x full": fmt(r.get("ratio_to_full"), ".3f"),
        }
        if cpu:
            row |= {"CPU s/step": fmt(r.get("step_cpu_median_s"), ".4f"),
                    "x frozen (CPU)": fmt(r.get("cpu_ratio_to_frozen"), ".3f"),
                    "x full (CPU)": fmt(r.get("cpu_ratio_to_full"), ".3f")}
        row |= {"first step s": fmt(r.get("first_step_s"), ".2f"),
                "warm-up extra s": fmt(r.get("warmup_excess_s"), ".2f")}
        if compiled:
            row |= {"compile s (dynamo)": fmt(r.get("compile_s"), ".1f")}
        row |= {
            "train ex/s": fmt(r.get("train_samples_per_s"), ".1f"),
            "eval ex/s": fmt(r.get("eval_examples_per_s"), ".1f"),
            "peak RSS MB": fmt(mem.get("peak_rss_mb"), ".0f"),
            "train peak RSS MB": fmt(mem.get("train_peak_rss_mb"), ".0f"),
        }
        if cuda:
            row["CUDA max alloc MB"] = fmt(mem.get("cuda_max_allocated_mb"), ".0f")
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.fillna("")


def markdown_table(summary: dict[str, dict]) -> str:
    return frame(summary).to_markdown(index=False, disable_numparse=True)


def text_table(summary: dict[str, dict]) -> str:
    return frame(summary).to_string(index=False)
