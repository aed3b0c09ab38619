"""peft-bench: the harness. Packages, top to bottom (each imports only those below it):
report, perf, analysis, run, tasks, models, config, records; cli.py dispatches the commands."""
