#!/usr/bin/env bash
# Build gpu-bundle/ (ignored): what scripts/gpu_check.sh installs on a bare GPU
# machine with no network. Run it here, where PyPI is reachable:
#
#   scripts/gpu_bundle.sh [--dest gpu-bundle] [--train 6000] [--test 2000]
#
# Python 3.12 x86-64 wheels of flwr and diffusers and what they need (minus
# what the GPU machine already has), a Fashion-MNIST subset, and MANIFEST.json.
# Fails when the checkout plus the bundle would not fit in 64 MiB.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec python -m benchmarks.gpu_bundle "$@"
