"""`python -m bench <command> [key=value ...]`: one entry point, Hydra overrides everywhere."""

from __future__ import annotations

import shlex
import sys

from bench.config.compose import CONF_DIR
from bench.config.names import check_group_names
from registry import did_you_mean

USAGE = """usage: python -m bench <command> [key=value ...]

commands:
  run      fine-tune one configuration and write one result record
           python -m bench run method=lora task=rte train.max_steps=20
           python -m bench run -m method=lora,ia3 task=sst2,rte seed=1,2     (a sweep)
  table    read the records into pandas tables (CSV + Markdown):  python -m bench table [results_dir=...]
  params   trainable / total parameters without weights:          python -m bench params model=roberta-base method=lora,propulsion
  perf     time / memory of methods side by side:                  python -m bench perf method=full,lora,ia3
  plot     PNG figures from the records:                           python -m bench plot
  report   one self-contained HTML page (tables, Pareto view, runs): python -m bench report [experiment=<name>]
  pilot    run a pilot and set each task's training budget:     python -m bench pilot experiment=glue_pilot_cpu

Config groups (conf/): method, task, model, train, experiment. Any key can be overridden: train.lr=1e-4,
method.r=16, data.max_train_samples=500, data_dir=../shared/data (or BENCH_DATA_DIR), results_dir=...
"""


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _run_command(argv: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from bench.errors import BenchError, DataUnavailable

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def app(cfg):
        hc = HydraConfig.get()
        overrides = list(hc.overrides.task)
        if hc.mode != RunMode.MULTIRUN:
            try:
                return job(cfg, overrides, sweep=False)
            except BenchError as e:
                _fail(str(e))
        try:
            rec = job(cfg, overrides, sweep=True)
        except Exception as e:  # noqa: BLE001 - recorded by the runner; the sweep goes on and counts it
            error = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
            print(f"[bench] run failed (the sweep goes on): {error}", file=sys.stderr)
            sweep_status.report("failed", overrides, path=getattr(e, "record_path", None), error=error)
            return None
        status = "skipped" if rec.get("skipped") or not rec.get("status") else rec["status"]
        sweep_status.report(status if status in ("ok", "skipped") else "failed", overrides, path=rec.get("path"))
        return rec

    def job(cfg, overrides, sweep):
        from bench.run import runner  # torch, transformers, peft: ~5 s, not paid by a misspelt name

        try:
            return runner.run(cfg, overrides, sweep=sweep)
        except DataUnavailable as e:
            fallback = cfg.get("offline_fallback")
            if not fallback:
                raise
            print(f"[bench] {cfg.task.name} data cannot be reached ({str(e).split(':')[0]}); "
                  f"running the offline task instead: {fallback}")
            from hydra import compose as hydra_compose

            extra = shlex.split(fallback)
            keys = {o.split("=", 1)[0].lstrip("+~") for o in extra}
            kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in keys | {"offline_fallback"}]
            new_cfg = hydra_compose(config_name="config", overrides=kept + extra + ["offline_fallback=null"])
            return runner.run(new_cfg, kept + extra, sweep=sweep)

    from bench.run import sweep_status

    try:
        check_group_names(argv)  # method=lroa: the did-you-mean line, exit 2 (not Hydra's option list)
    except BenchError as e:
        _fail(str(e))
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if multirun:
        from bench.run.preflight import check_sweep

        try:
            check_sweep([a for a in argv if a not in ("-m", "--multirun")])
        except BenchError as e:
            _fail(str(e))
        status_dir = sweep_status.start()
    sys.argv = ["bench", *argv]
    try:
        app()
    finally:
        if multirun:
            failed = sweep_status.finish(status_dir)
    if multirun and failed:
        raise SystemExit(1)


def _simple(module: str):
    def call(argv: list[str]) -> None:
        import importlib

        importlib.import_module(module).main(argv)

    return call


COMMANDS = {
    "run": _run_command,
    "table": _simple("bench.analysis.table.command"),
    "params": _simple("bench.perf.paramtable"),
    "perf": _simple("bench.perf.driver"),
    "plot": _simple("bench.analysis.plot"),
    "report": _simple("bench.report.command"),
    "pilot": _simple("bench.run.pilot"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        hint = did_you_mean(cmd, COMMANDS, " Did you mean {!r}?")
        _fail(f"unknown command {cmd!r}.{hint} Commands: {', '.join(COMMANDS)}.\n\n{USAGE}")
    from bench.errors import BenchError

    try:
        COMMANDS[cmd](rest)
    except BenchError as e:
        _fail(str(e))
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("bench."):
            _fail(f"command {cmd!r} is not available in this version ({e.name} missing)")
        raise
