#!/usr/bin/env bash
# The main job on its built-in default: build a small real model, convert it to Nano, load the
# Nano folder through transformers, generate, and show sizes and quality.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh convert
. .venv/bin/activate
nanofmt demo "$@"
