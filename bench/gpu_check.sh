#!/usr/bin/env bash
# GPU checks, one short call where a CUDA GPU is lent: 2:4 semi-structured matmul speed-up of
# pruned SmolLM2 linears, batched perplexity throughput, CoreInfer decode.  Each prints a table;
# without a CUDA GPU the script says so and exits 0 at once.
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
run bench/sparse24_bench.py --tokens 16 256 4096 --repeats 30
run bench/prune_bench.py --perplexity-only --device cuda --dtype float16 --windows 64 \
    --seqlen 512 --batch-size 8
run bench/decode_bench.py --device cuda --dtype float16 --prompt 64 --new 64 --repeats 3
exit $status
