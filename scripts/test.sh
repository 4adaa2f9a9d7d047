#!/usr/bin/env bash
# The test suite: unit tests and real Flower simulations, offline. Extra
# arguments go to pytest, e.g.  scripts/test.sh -m "not integration"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec python -m pytest "$@"
