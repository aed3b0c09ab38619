"""`python -m bench perf`: the cost of every method side by side, in one command, on one model and batch.

    python -m bench perf model=minilm task=sst2 method=full,lora,ia3 [perf.steps=20 train.compile=true ...]

For each method (plus the pseudo-method ``frozen``, the floor): median training-step time, peak memory,
optimizer-state bytes, trainable parameters, eval throughput, first-step (compile) time, and the ratios of the
step time to the frozen floor and to full fine-tuning. One table on stdout, one JSON record (+ Markdown) under
``perf.results_dir``. docs/perf.md says how to read the numbers.

- options.py  the command line: the options (Hydra group conf/perf/), one composed config per method
- session.py  one method in one process: the run's Trainer, driven step by step; its step is the Trainer's own
- worker.py   the JSON-lines protocol between the parent and a worker process (``python -m bench.perf --worker``)
- driver.py   the parent: workers built, warmed up, alternated round by round; the record written
- report.py   medians and quantiles (numpy), ratios, the table (pandas)"""
