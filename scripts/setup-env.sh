#!/usr/bin/env bash
# Creates (or reuses) .venv with nanofmt installed editable plus the extras named in $1.
# torch is pinned first: the pin takes the CPU build that lies on this machine's disk, while an
# unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-dev}
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[$extras]"
