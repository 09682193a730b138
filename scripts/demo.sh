#!/usr/bin/env bash
# Set everything up, then run the main job: `microgrid demo` (arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/microgrid demo "$@"
