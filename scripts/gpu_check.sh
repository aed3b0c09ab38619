#!/usr/bin/env bash
# The GPU checks, in one script: the CUDA tests (bf16 runs of every method, CUDA memory in the record, merges on the
# GPU), then `bench perf` in bf16 on two random-initialised BERT shapes built from config (MiniLM's: 6 x 384; and
# BERT-base's: 12 x 768): the step-time and memory ratios of every method on a GPU.
#   bash scripts/gpu_check.sh              # uses .venv/bin/python; output under results/gpu/
#   PY=python3 OUT=/some/dir bash scripts/gpu_check.sh
set -uo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
rc=0
"$PY" -m pytest -q -m gpu -n 6 -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" || rc=1
METHODS=full,lora,ia3,propulsion,lora_dash,id3
COMMON=(task=sst2 method=$METHODS train.precision=bf16 perf.device=cuda perf.steps=40 perf.warmup=5 "perf.results_dir=$OUT")
"$PY" -m bench perf model=tiny-bert model.config.hidden_size=384 model.config.num_hidden_layers=6 \
  model.config.num_attention_heads=12 model.config.intermediate_size=1536 "${COMMON[@]}" 2>&1 | tee "$OUT/perf_minilm_shape.log" || rc=1
"$PY" -m bench perf model=tiny-bert model.config.hidden_size=768 model.config.num_hidden_layers=12 \
  model.config.num_attention_heads=12 model.config.intermediate_size=3072 "${COMMON[@]}" 2>&1 | tee "$OUT/perf_bert_base_shape.log" || rc=1
exit $rc
