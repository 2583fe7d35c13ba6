#!/usr/bin/env bash
# The full check, as CI runs it: spec drift, lint, types, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh dev,fuzz
. .venv/bin/activate
python spec/gen.py --check
ruff check .
mypy
python -m pytest -q -p no:cacheprovider "$@"
