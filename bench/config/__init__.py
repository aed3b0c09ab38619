"""Configuration, below every command: composing conf/ (compose), the command line's overrides
(overrides), the names of conf/'s groups and the line for an unknown one (names), the identity of one
run - its config, hash and record path (identity) - and a study's protocol: lr grid, per-method
settings, the choice on dev (study)."""
