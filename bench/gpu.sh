#!/usr/bin/env bash
# Every GPU measurement in bench/README.md, from one script, on one NVIDIA GPU:
#   kernels    tests/test_kernels.py compiled with Triton (float32 and bfloat16)
#   attention  bench/attention.py: pallas vs xla vs cudnn, L = 512..8192, T5-base / -large heads
#   tune       pallas block sizes per length (forward+backward)
#   train      bench/train_step.py: bf16 training step, t5_1_1 small / base vs HF transformers
#   decode     bench/decode.py: greedy and beam-4 at batch 1 / 32 / 128 vs HF generate
#
#   bash bench/gpu.sh                     # all sections; results in bench/gpu_results/
#   bash bench/gpu.sh kernels attention   # some sections
#   OUT=/tmp/r PEAK_TFLOPS=989 bash bench/gpu.sh train
#
# Needs jax with CUDA, flax, optax, gin-config, torch with CUDA and transformers (no seqio or
# TensorFlow: nothing here reads data). Each section writes OUT/<name>.md (the table) and
# OUT/<name>.log (stderr, per-measurement JSON).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/gpu_results}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
peak=${PEAK_TFLOPS:-989}  # H100 SXM dense bf16
py=${PYTHON:-python3}

run() {  # run NAME COMMAND...: table to OUT/NAME.md, stderr to OUT/NAME.log
  local name=$1
  shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" >"$out/$name.md" 2>"$out/$name.log"
  echo "   exit $? after $((SECONDS - start)) s"
  tail -n 25 "$out/$name.md"
}

kernels() {
  run kernels $py -m pytest -q -p no:cacheprovider tests/test_kernels.py
}

attention() {  # T5-base (12 heads) and T5-large (16 heads), 16k tokens per batch, d_kv 64
  for heads in ${ATTN_HEADS:-12 16}; do
    run "attention_h${heads}" $py bench/attention.py --tokens 16384 --heads "$heads" \
      --peak_tflops "$peak" --block_q "${BLOCK_Q:-128}" --block_k "${BLOCK_K:-64}"
    run "attention_h${heads}_causal" $py bench/attention.py --tokens 16384 --heads "$heads" \
      --causal --peak_tflops "$peak" --block_q "${BLOCK_Q:-128}" --block_k "${BLOCK_K:-64}"
  done
}

tune() {
  run tune $py bench/attention.py --tokens 16384 --heads 12 --peak_tflops "$peak" \
    --lengths "${TUNE_LENGTHS:-512,1024,2048,4096,8192}" \
    --tune "${TUNE_BLOCKS:-64x32,64x64,128x32,128x64,64x128,128x128}"
}

train() {
  run train_small $py bench/train_step.py --model t5_1_1_small --batch 128 --dtype bfloat16 \
    --impls xla,cudnn,pallas --hf_attn sdpa --peak_tflops "$peak" --block_q 64 --block_k 64
  run train_base $py bench/train_step.py --model t5_1_1_base --batch 128 --dtype bfloat16 \
    --impls xla,pallas --hf_attn sdpa --peak_tflops "$peak" --block_q 64 --block_k 64
  run train_base_long $py bench/train_step.py --model t5_1_1_base --batch 32 --inputs 1024 \
    --targets 256 --dtype bfloat16 --impls xla,pallas --hf_attn sdpa --peak_tflops "$peak" \
    --block_q 64 --block_k 64
}

decode() {
  run decode_base $py bench/decode.py --model t5_1_1_base --dtype bfloat16 --batch 1,32,128 \
    --input_len 128 --max_new_tokens 64 --repeats 3
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$py -c "import jax, torch, transformers; print('jax', jax.__version__, jax.devices(), \
'torch', torch.__version__, 'transformers', transformers.__version__)"
for section in "${@:-kernels attention tune train decode}"; do
  for s in $section; do "$s"; done
done
