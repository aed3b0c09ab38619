"""peft-bench: the harness (CLI, task families, training, records, tables)."""
