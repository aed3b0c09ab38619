"""Models: building and loading them (build), embedded architectures for offline counts (arch), causal
LMs from GGUF (llm), the parameter counter (params), whether the hub answers (hub)."""
