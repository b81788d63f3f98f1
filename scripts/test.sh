#!/usr/bin/env bash
# Set up everything the test suite needs (idempotent: a second run takes seconds), then run the whole suite.
# CPU-only: torch is pinned by constraints.txt, so no CUDA wheel is ever pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
# The real-browser test drives Debian's chromium through playwright (no browser download).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the browser test will be skipped"
fi
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False
# Test files are spread over one process per core (pytest-xdist; at most 4, a file's tests stay together so its
# fixtures are built once); tests/conftest.py gives each process one torch thread. CAUSALVQ_TEST_WORKERS=0 runs
# the suite in this process.
exec python -m pytest -q -n "${CAUSALVQ_TEST_WORKERS:-auto}" --maxprocesses 4 --dist loadfile "$@"
