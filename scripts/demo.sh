#!/usr/bin/env bash
# The main job on the embedded defaults: SemanticFL, a federation of 10 ResNet-10
# clients on Dirichlet-split Fashion-MNIST in Flower's simulation engine, guided
# by the shipped diffusion model (its class anchors are computed before round 1).
# Extra arguments go to the launcher, e.g.  scripts/demo.sh --run-config "method='fedavg'"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec python -m deploy.local_sim "$@"
