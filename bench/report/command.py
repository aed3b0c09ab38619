"""`python -m bench report [experiment=<name>] [results_dir=...] [report_dir=...] [perf_dir=...] [key=value ...]`

Writes one self-contained HTML page, <report_dir>/index.html (default: results/report/index.html for the default
results_dir=results/runs, i.e. a `report` folder beside the results), from the same records and with the same
table as `python -m bench table` given the same arguments: a study (experiment with study.lr_grid), a paper
experiment, or every record (no experiment; method= / task= / model= / seed= filter). results_dir= may also
name a study's records.jsonl.gz. perf_dir= is where `bench perf` records are looked for (default: results_dir).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from bench.analysis import stats
from bench.errors import BenchError
from registry import did_you_mean

REPORT_KEYS = ("report_dir", "perf_dir", "n_boot")


def _options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    opts, rest = {}, []
    for a in argv:
        key, _, value = a.partition("=")
        if key.lstrip("+") in REPORT_KEYS:
            opts[key.lstrip("+")] = value
        else:
            rest.append(a)
    return opts, rest


def _check_experiment(argv: list[str]) -> None:
    from bench.config.compose import CONF_DIR

    for a in argv:
        key, _, name = a.partition("=")
        if key == "experiment" and name not in ("", "null"):
            known = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
            if name not in known:
                hint = did_you_mean(name, known, " Did you mean experiment={}?")
                raise BenchError(f"unknown experiment {name!r}.{hint} Known: {', '.join(known)}")


def _compose(argv: list[str]):
    from bench.analysis.table.protocol import FILTER_KEYS
    from bench.config.compose import compose

    # filters (method=lora,ia3 ...) and the study table's own options are not config overrides
    rest = [a for a in argv if a.split("=", 1)[0] not in (*FILTER_KEYS, "reference")]
    try:
        return compose(rest)
    except BenchError as e:
        raise BenchError(str(e).strip().splitlines()[0]) from None


def build(argv: list[str]) -> tuple[Path, object]:
    """Gather, draw, render and write; returns (the page's path, the gathered report)."""
    from bench.analysis import study_table
    from bench.report import figures, gather, render, sources

    opts, argv = _options(argv)
    _check_experiment(argv)
    cfg = _compose(argv)
    results = Path(str(cfg.results_dir))
    if not results.exists():
        raise BenchError(f"no results at {results}: run `python -m bench run ...` first, or point results_dir= at a "
                         "results folder (or a study's records.jsonl.gz)")
    try:
        n_boot = int(opts.get("n_boot") or stats.N_BOOT)
    except ValueError:
        raise BenchError(f"n_boot must be an integer (got {opts['n_boot']!r}); e.g. n_boot={stats.N_BOOT}") from None
    recs = sources.read(results)
    if study_table.is_study(cfg):
        report = gather.from_study(argv, results, recs, n_boot=n_boot)
    elif results.is_file():
        raise BenchError(f"results_dir={results} is a file: a records file is read for a study "
                         "(experiment=<study>); otherwise give the results folder")
    else:
        report = gather.from_table(argv, results, recs)
    perf_dir = opts.get("perf_dir") or (results if results.is_dir() else None)
    if opts.get("perf_dir") and not Path(perf_dir).is_dir():
        raise BenchError(f"perf_dir={perf_dir} is not a folder; give the folder `bench perf` wrote its records to")
    gather.add_sources(report, recs, sources.perf_records(perf_dir))
    gather.add_provenance(report)
    given = [*argv, *(f"{k}={v}" for k, v in opts.items())]
    command = "python -m bench report " + " ".join(shlex.quote(a) for a in given)
    html = render.render(report, figures.build(report), command)
    out = Path(opts.get("report_dir") or results.parent / "report") / "index.html"
    try:
        return render.write(html, out), report
    except OSError as e:
        raise BenchError(f"cannot write {out} ({e.strerror or type(e).__name__}); choose a writable "
                         "report_dir=<folder>") from None


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return
    t0 = time.perf_counter()
    try:
        path, report = build(argv)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    for p in report.problems:
        print(f"[report] {p}")
    gaps = f"{len(report.failed)} failed, {len(report.missing)} missing, {len(report.unreadable)} unreadable"
    print(f"[report] {len(report.rows)} rows x {len(report.tasks)} tasks, {len(report.runs)} runs ({gaps}), "
          f"{len(report.perf)} perf record(s)")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - t0:.1f} s); open it in a "
          "browser (self-contained, works offline)")
