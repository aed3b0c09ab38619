#!/usr/bin/env bash
# The GPU checks, in one script: the CUDA tests (bf16 runs of every method, CUDA memory in the record, merges on the
# GPU), then `bench perf` in bf16, eager and compiled (train.compile=true), on random-initialised models of realistic
# shapes built from config (no download): an encoder of BERT-base's shape at batch 32 x 256 (model=bert-base-random,
# SST-2 head) and decoders of SmolLM2-135M's and a ~1B Llama's shape at batch 8 x 512 (model=smollm2-random,
# model=llama-1b-random; causal LM, labels = input ids). Every method and the frozen floor alternated in one command
# per model and mode: the step-time and memory ratios of issue 14, compile time reported apart from the steps.
#   bash scripts/gpu_check.sh                          # .venv/bin/python; records and logs under results/gpu/
#   PY=python3 OUT=/some/dir bash scripts/gpu_check.sh
#   MODELS="bert-base-random" MODES=eager TESTS=0 bash scripts/gpu_check.sh   # a subset (fits a short device lease)
#   SMOKE=1 bash scripts/gpu_check.sh                  # dry run on the CPU: the same commands with the models shrunk
#       to 1 small layer, batch 2 x 16, 1 timed step, compile backend aot_eager, no GPU tests: checks the script and
#       every method at these model types; measures nothing (records under results/perf/gpu_check_smoke/, git-ignored)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SMOKE=${SMOKE:-0}
if [[ $SMOKE == 1 ]]; then OUT=${OUT:-results/perf/gpu_check_smoke}; else OUT=${OUT:-results/gpu}; fi
TESTS=${TESTS:-1}
METHODS=${METHODS:-full,lora,ia3,propulsion,lora_dash,id3}
MODELS=${MODELS:-bert-base-random smollm2-random llama-1b-random}
MODES=${MODES:-eager compiled}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [[ $SMOKE == 1 ]]; then
  RUN=(perf.device=cpu perf.threads=1 perf.steps=1 perf.warmup=2 perf.eval_steps=1 perf.eval_batch_size=2)
  ENCODER=(perf.batch_size=2 perf.seq_len=16)
  DECODER=(perf.batch_size=2 perf.seq_len=16)
  SHRINK=(++model.config.num_hidden_layers=1 ++model.config.hidden_size=32 ++model.config.intermediate_size=64
          ++model.config.num_attention_heads=2)
  SHRINK_DECODER=(++model.config.num_key_value_heads=1)  # the vocabulary stays: ID3's budget needs its entries
  COMPILE=(train.compile=true train.compile_backend=aot_eager)
else
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
  # warm-up 5: compilation happens in the first two steps (the second: transformers sets config.problem_type)
  RUN=(perf.device=cuda perf.steps=40 perf.warmup=5)
  ENCODER=(perf.batch_size=32 perf.seq_len=256)
  DECODER=(perf.batch_size=8 perf.seq_len=512 perf.eval_batch_size=8)  # eval 64 x 512 x 128k logits is 8 GB a worker
  SHRINK=()
  SHRINK_DECODER=()
  COMPILE=(train.compile=true)
fi
mkdir -p "$OUT"
rc=0
if [[ $SMOKE != 1 && $TESTS == 1 ]]; then
  "$PY" -m pytest -q -m gpu -n 6 -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" || rc=1
fi
for model in $MODELS; do
  case $model in
    bert-base-random) shape=("${ENCODER[@]}") task=sst2 shrink=("${SHRINK[@]}") ;;
    *) shape=("${DECODER[@]}") task=gsm8k shrink=("${SHRINK[@]}" "${SHRINK_DECODER[@]}") ;;
  esac
  for mode in $MODES; do
    extra=()
    [[ $mode == compiled ]] && extra=("${COMPILE[@]}")
    echo "[gpu_check] $model $mode"
    "$PY" -m bench perf model="$model" task=$task method="$METHODS" train.precision=bf16 "${RUN[@]}" "${shape[@]}" \
      ${shrink[@]+"${shrink[@]}"} ${extra[@]+"${extra[@]}"} "perf.results_dir=$OUT" 2>&1 | tee "$OUT/perf_${model}_${mode}.log"
    [[ ${PIPESTATUS[0]} == 0 ]] || rc=1
    # a method that failed inside perf is recorded in its row, not in the exit code: count it here
    grep -q "FAILED" "$OUT/perf_${model}_${mode}.log" && rc=1
  done
done
exit $rc
