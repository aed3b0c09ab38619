"""`python -m bench report`: one self-contained HTML page of the results (bench/report/command.py).

sources.py reads the records, run_view.py turns one record into what the page shows of a run, gather.py builds
the tables and the gaps (through bench.analysis), figures.py the plotly figures, render.py fills the jinja2
template (templates/) with everything inlined."""
