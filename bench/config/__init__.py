"""Configuration, below every command: composing conf/ (bench.config.compose), the command line's overrides
(bench.config.overrides) and the identity of one run - its config, hash and record path (bench.config.identity)."""
