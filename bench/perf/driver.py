"""The parent: start the workers, alternate them round by round, write the record."""

from __future__ import annotations

import math
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bench.perf.options import FLOOR, method_configs, parse_argv, perf_options
from bench.perf.report import markdown_table, summarize, text_table
from bench.perf.worker import InProcessWorker, SubprocessWorker, WorkerFailed


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
    options = OmegaConf.to_container(p, resolve=True)
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
                    workers[n].send({"cmd": "init", "cfg": configs[n], "perf": options})
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
        if p.warmup:  # side by side too (untimed; with train.compile every worker compiles here)
            for n in list(workers):
                try:
                    workers[n].send({"cmd": "train", "n": int(p.warmup), "timed": False})
                except WorkerFailed as e:
                    fail(n, e, workers.pop(n))
            for n in list(workers):
                try:
                    results[n]["warmup_times"] += workers[n].recv()["times"]
                except WorkerFailed as e:
                    fail(n, e, workers.pop(n))
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
                        f"{n} {np.median(results[n]['step_times']):.3f}s" for n in names
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


def print_help() -> None:
    from bench.perf.options import defaults

    print(sys.modules["bench.perf"].__doc__)  # the package's usage (imported before this module, never by it)
    print("options (perf.<key>=value; conf/perf/default.yaml):")
    for k, v in defaults().items():
        print(f"  perf.{k}={v}")


def main(argv: list[str]) -> dict:
    from bench.config.compose import compose
    from bench.errors import BenchError
    from bench.perf.session import pick_device
    from bench.records import hardware, store as records

    if any(a in ("-h", "--help", "help") for a in argv):
        print_help()
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
        # as typed (the configs hold it resolved for the training device; perf.device may be another one)
        requested = str(compose(rest).train.precision)
        if requested not in hardware.PRECISIONS:
            raise BenchError(f"train.precision must be {' | '.join(hardware.PRECISIONS)} (got {requested!r}); "
                             "e.g. train.precision=auto")
        device = pick_device(str(p.get("device", "auto"))).type
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    precision, why = hardware.resolve_precision(requested, device)  # auto: what this device computes fast
    for c in configs.values():
        c["train"]["precision"] = precision

    t0 = time.perf_counter()
    compiled = bool(first["train"].get("compile", False))
    print(f"[perf] hardware: {hardware.capability_line(device)}")
    print(f"[perf] model={first['model']['name']} task={first['task']['name']} batch {p.batch_size} x {p.seq_len}, "
          f"{p.warmup} warm-up + {p.steps} timed steps in {n_rounds(p)} rounds, precision "
          f"{precision}{f' ({why})' if requested == 'auto' else ''}, gradient checkpointing "
          f"{first['train']['gradient_checkpointing']}, torch.compile {compiled}")
    warning = hardware.bf16_warning(precision, device)
    if warning:
        print(warning.replace("[bench]", "[perf]", 1))
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
        "precision": precision,
        "precision_requested": requested,
        "gradient_checkpointing": bool(first["train"]["gradient_checkpointing"]),
        "compile": compiled,
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
    late = [n for n, r in summary.items() if (r.get("compile") or {}).get("frames_in_timed_steps")]
    if late:
        print(f"[perf] warning: torch.compile compiled during timed steps of {', '.join(late)} "
              "(raise perf.warmup): their step times include compilation")
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
