#!/usr/bin/env bash
# The docker-compose demo end to end (see docs/deploy.md section 4):
#   sudo deploy/compose/demo.sh [--kill-node] [--online] [--help]
# Runs `python -m deploy.compose_demo` with the repository's venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "demo.sh: no venv at $ROOT/.venv: run scripts/bootstrap.sh first" >&2; exit 2; }
cd "$ROOT"
exec "$PY" -m deploy.compose_demo "$@"
