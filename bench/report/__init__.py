"""`python -m bench report`: one self-contained HTML page of the results (bench/report/command.py).

sources.py reads the records, runs.py turns one record into what the page shows of a run, gather.py builds the
tables and the gaps (through bench.table / bench.study_table / bench.study_report), figures.py the plotly
figures, render.py fills the jinja2 template (templates/) with everything inlined. trackers.py is the other
side of reporting: `train.report_to=tensorboard|wandb|mlflow` handed to the Trainer.
"""

from __future__ import annotations


def main(argv: list[str]) -> None:
    from bench.report.command import main as _main

    _main(argv)
