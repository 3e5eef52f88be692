#!/usr/bin/env bash
# GPU checks, one short call where a CUDA GPU is lent: the Llama-2-7B shape (random weights,
# written there) pruned a block at a time by Wanda, SparseGPT and SparseLLM with per-block time,
# peak GPU memory against the memory plan and perplexity throughput; the 2:4 semi-structured
# matmul speed-up of pruned linears.  Each prints a table; without a CUDA GPU the script says so
# and exits 0 at once.  The device machine has torch and transformers only: carry the wheels of
# safetensors and accelerate (the engine's other imports) with the call.
#     bash bench/gpu_check.sh          (PYTHON=... to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
then
  echo "gpu_check: no CUDA GPU visible to $PYTHON; nothing to check"
  exit 0
fi
status=0
run() { echo; echo "== $*"; timeout 240 "$PYTHON" "$@" || { echo "(failed: $?)"; status=1; }; }
run bench/scale_bench.py --shape llama-2-7b --dtype bfloat16 --device cuda \
    --methods wanda,sparsegpt,sparsellm --samples 16 --seqlen 2048 --windows 16 \
    --ppl-seqlen 2048 --batch-size 4 --blocks 4 --keep "${TMPDIR:-/tmp}/sparsebench-scale"
run bench/sparse24_bench.py --tokens 16 256 4096 --repeats 30
exit $status
