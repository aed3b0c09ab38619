"""Records -> tables: `python -m bench table [experiment=<name>] [results_dir=...] [key=value ...]`.

One job per module:

* bench.analysis.table.frame: records -> one pandas DataFrame (load_records, also for the study table and plots) and
  the per-cell statistics (cell_stats: a groupby over (row, task));
* bench.analysis.table.protocol: which runs a table holds - the experiment / paper protocol matched by config hash
  (configs composed by bench.config.compose, as `bench run` composes them), or every ok record;
* bench.analysis.table.model: the table model (rows of cells holding numbers) and its Markdown, LaTeX and CSV renderers;
* bench.analysis.table.render: a paper / records table as that model (build), its header and gap lines;
* here: the command (records loaded once, then the study table or the paper / records table).

Records store metrics as fractions; tables print them x100, mean +- sample std over seeds.
Output: Markdown, LaTeX and CSV under ``+tables_dir=...`` (default: <results_dir>/../tables); a study
(an experiment with ``study.lr_grid``) goes through bench.analysis.study_table / bench.analysis.study_report instead.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from bench.analysis import stats
from bench.analysis.table.frame import cell_stats, flat_csv, load_records
from bench.analysis.table.model import to_latex, to_markdown
from bench.analysis.table.protocol import REPO_ROOT, select, split_filters
from bench.analysis.table.render import build, gap_lines, header_lines
from bench.errors import BenchError

STUDY_ONLY_KEYS = ("reference", "n_boot")  # `bench table` options of a study table, not config keys


def _error(e: BenchError) -> None:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str]) -> None:
    from bench.analysis import study_table
    from bench.config.compose import compose

    _, rest = split_filters(argv)
    study_opts = [a for a in rest if a.split("=", 1)[0] in STUDY_ONLY_KEYS]
    rest = [a for a in rest if a not in study_opts]
    try:
        cfg = compose(rest)
        if study_table.is_study(cfg):
            return _study_main(argv, cfg)
        if study_opts:
            raise BenchError(f"{', '.join(study_opts)} apply to study tables only (an experiment with study.lr_grid)")
        df = load_records(cfg.results_dir)  # read once: the table's runs and runs.csv
        sel = select(argv, cfg.results_dir, df=df)
    except BenchError as e:
        _error(e)
    out_dir = Path(cfg.get("tables_dir") or Path(cfg.results_dir).parent / "tables")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = sel.meta.get("experiment") or "summary"
    if not df.empty:
        flat_csv(df).to_csv(out_dir / "runs.csv", index=False)
    if not sel.rows or (sel.runs.empty and sel.mode != "experiment"):
        print(f"no ok records under {cfg.results_dir} for this table; run `python -m bench run ...` first")
        for line in gap_lines(sel):
            print(line)
        return
    table = build(sel, cell_stats(sel))  # the table model: Markdown, LaTeX and CSV render from it
    head = header_lines(sel)
    gaps = [*provenance_lines(sel.runs), *gap_lines(sel)]
    md = to_markdown(table)
    (out_dir / f"{stem}.md").write_text("\n\n".join(["\n".join(head), md, "\n".join(gaps)]).rstrip() + "\n")
    (out_dir / f"{stem}.tex").write_text(to_latex(table, caption=" ".join(head[:2])) + "\n")
    table.csv().to_csv(out_dir / f"{stem}.csv", index=False)
    print("\n".join(head))
    print()
    print(md)
    if gaps:
        print()
        print("\n".join(gaps))
    print(f"\nwrote {out_dir}/{stem}.md, {stem}.tex, {stem}.csv, runs.csv ({len(df)} records read)")


def provenance_lines(runs) -> list[str]:
    """A warning per cell whose records read different data; a note when runs.csv's step times and memory come
    from different hardware (its hardware column says which)."""
    from bench.records.provenance import mixed_data_lines, mixed_hardware_note

    if runs.empty or "record" not in runs:
        return []
    lines = mixed_data_lines(zip(runs["row"], runs["task"], runs["record"]))
    note = mixed_hardware_note(runs["record"], "step times and memory of runs.csv")
    return [*lines, *([note] if note else [])]


def _study_main(argv: list[str], cfg) -> None:
    from bench.analysis import study_report, study_table

    n_boot = int(next((a.split("=", 1)[1] for a in argv if a.startswith("n_boot=")), stats.N_BOOT))
    if not Path(str(cfg.results_dir)).is_file():
        # the committed records first, as `bench run` does: a fresh checkout rebuilds the summary, and a results
        # folder that lost records (deleted, another machine) cannot shrink the committed records.jsonl.gz
        from bench.records.store import restore_experiment

        restore_experiment(cfg.results_dir, cfg.get("experiment_name"))
    st = study_table.build(argv, cfg.results_dir, n_boot=n_boot)
    out_dir = Path(cfg.get("tables_dir") or REPO_ROOT / "results" / "studies" / st.name)
    command = "python -m bench table " + " ".join(shlex.quote(a) for a in argv)
    if st.runs.empty:
        print(f"no records of study {st.name!r} under {cfg.results_dir}; run `python -m bench run -m experiment={st.name}`")
        return
    paths = study_report.write(st, cfg.results_dir, out_dir, command)
    print((out_dir / "summary.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
