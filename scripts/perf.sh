#!/usr/bin/env bash
# The standard cost measurements (docs/perf.md says how to read them).
#
#   scripts/perf.sh                 # MiniLM (SST-2 head, batch 16 x 128) then SmolLM2-135M (causal LM)
#   scripts/perf.sh minilm          # one of them
#   scripts/perf.sh smollm2 perf.threads=2 perf.steps=30    # extra overrides go to every measurement
#
# Every method plus the frozen floor, alternated in one command per model; records in results/perf/.
# Run it on a quiet machine: other processes on the same cores make every number (and ratio) noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
METHODS=${METHODS:-full,lora,ia3,propulsion,lora_dash,id3}

which=all
if [[ $# -gt 0 && $1 != *=* ]]; then which=$1; shift; fi

minilm() {
  "$PY" -m bench perf model=minilm task=sst2 method="$METHODS" \
    perf.batch_size=16 perf.seq_len=128 perf.steps=20 perf.warmup=3 "$@"
}

# SmolLM2 as a causal LM (labels = input ids): a smaller batch, and one model in memory at a time
# (keep_alive=false: one short worker per method and round, so 7 x 135M models never sit in RAM together);
# eval at batch 8 (at the default 64 x 128 one forward pass makes 1.6 GB of logits over the 49k vocabulary).
smollm2() {
  "$PY" -m bench perf model=smollm2 task=gsm8k method="$METHODS" \
    perf.batch_size=4 perf.seq_len=128 perf.steps=10 perf.warmup=2 perf.rounds=2 perf.keep_alive=false \
    perf.eval_batch_size=8 perf.eval_steps=2 "$@"
}

case $which in
  minilm) minilm "$@" ;;
  smollm2) smollm2 "$@" ;;
  all) minilm "$@"; smollm2 "$@" ;;
  *) echo "usage: scripts/perf.sh [minilm|smollm2|all] [key=value ...]" >&2; exit 2 ;;
esac
